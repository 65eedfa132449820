#!/bin/bash
# CMP trust-anchor refresh: RFC 9480 4.3 root CA key update. After each successful KUR the
# agent sends a genm (id-it-rootCaCert, value = the root in force) to the test CMP CA (keys
# in SoftHSM, forced renewals, the CA restarted on one port for each step):
#  1. a CA without the service answers the genm with an error: the renewal goes on, and
#     the agent says nothing about it above debug level;
#  2. refused shapes, each with one precise warning, the renewal itself done under the
#     old root, nothing kept (no <state-dir>/dev.ca-next), ca-trust byte-identical:
#     a. no newWithOld;  b. a newWithOld whose signature is not the old root's (a "link"
#     carrying the old root's name, signed by the new root's own key);
#  3. the rollover: newWithNew, newWithOld (signed by the old root), oldWithNew: the new
#     root is kept in dev.ca-next (ca-trust untouched);
#     (Before that, a control: the CA under the new root is refused.)
#  4. the CA moves under the new root (a new intermediate, answers signed by an RA with
#     id-kp-cmcRA under it): the KUR's answers verify only through the accepted root, the
#     renewal installs leaf + new intermediate, which verifies against the new root; the
#     next genm names the new root. A curl loop through the provider to an s_server that
#     trusts both roots never fails across all of it.
#  5. IR caPubs (bootstrap): a new root among them is kept only with its real link.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_tls_cmd curl
need_cmd python3
need_provider

testca_init
server_cert_setup
softhsm_setup rootca
PORT=$(free_port)
D=$CA_DIR
ORG="/O=mtls-agent tests"

# The new PKI: root2 (newWithNew), root2-by-root1 (newWithOld: root2's name and key, signed
# by the old root), root1-by-root2 (oldWithNew), inter2 under root2, ra2 (cmcRA) under
# inter2; and a rogue link: root2's name and key "issued" by the old root's name but signed
# by root2's key.
EXT=$WORK/pki.ext
cat >"$EXT" <<'EOF'
[ root ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ inter ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, digitalSignature, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ ra ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = 1.3.6.1.5.5.7.3.28
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
new_key_csr() { # NAME SUBJECT
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$D/$1.key" \
		-out "$D/$1.csr" -subj "$2" 2>>"$WORK/pki.log"
}
sign() { # CSR OUT ISSUER_CERT ISSUER_KEY SECTION
	openssl x509 -req -in "$1" -out "$2" -CA "$3" -CAkey "$4" -extfile "$EXT" -extensions "$5" \
		-set_serial "0x$(openssl rand -hex 8)" -days 3650 -sha256 2>>"$WORK/pki.log"
}
root1_subject=$(openssl x509 -in "$D/root.crt" -noout -subject -nameopt compat | sed 's/^subject=//')
{
	new_key_csr root2 "/CN=mtls-agent test root 2$ORG" &&
		openssl req -x509 -new -key "$D/root2.key" -out "$D/root2.crt" -subj "/CN=mtls-agent test root 2$ORG" \
			-config "$D/ca.cnf" -extensions v3_root -days 3650 -sha256 2>>"$WORK/pki.log" &&
		sign "$D/root2.csr" "$D/root2-by-root1.crt" "$D/root.crt" "$D/root.key" root &&
		openssl x509 -x509toreq -in "$D/root.crt" -signkey "$D/root.key" -out "$D/root1.csr" 2>>"$WORK/pki.log" &&
		sign "$D/root1.csr" "$D/root1-by-root2.crt" "$D/root2.crt" "$D/root2.key" root &&
		openssl req -x509 -new -key "$D/root2.key" -out "$D/fake-root1.crt" -subj "$root1_subject" \
			-config "$D/ca.cnf" -extensions v3_root -days 3650 -sha256 2>>"$WORK/pki.log" &&
		sign "$D/root2.csr" "$D/root2-by-fake.crt" "$D/fake-root1.crt" "$D/root2.key" root &&
		new_key_csr inter2 "/CN=mtls-agent test intermediate 2$ORG" &&
		sign "$D/inter2.csr" "$D/inter2.crt" "$D/root2.crt" "$D/root2.key" inter &&
		new_key_csr ra2 "/CN=mtls-agent test RA 2$ORG" &&
		sign "$D/ra2.csr" "$D/ra2.crt" "$D/inter2.crt" "$D/inter2.key" ra
} || {
	cat "$WORK/pki.log" >&2
	fail "cannot make the test PKI"
}
# The PKI is what it claims: the real link verifies under the old root, the rogue one does not.
openssl verify -CAfile "$D/root.crt" -partial_chain "$D/root2-by-root1.crt" >/dev/null 2>&1 ||
	fail "test PKI: newWithOld does not verify under the old root"
! openssl verify -CAfile "$D/root.crt" -partial_chain "$D/root2-by-fake.crt" >/dev/null 2>&1 ||
	fail "test PKI: the rogue link verifies under the old root"

# ca_as CA_CERT CA_KEY CHAIN [ARGS...]: the CMP CA on $PORT, issuing with CA_CERT. It keeps
# accepting the certificates it issued under the old intermediate (the KUR is signed so).
ca_as() {
	local cert=$1 key=$2 chain=$3
	shift 3
	ca_stop
	_ca_spawn cmp-ca "$CMP_CA_BIN" --port "$PORT" --lifetime 3600 --ca-cert "$cert" --ca-key "$key" \
		--chain "$chain" --client-trust "$D/inter.crt" "$@"
}

CA_TRUST=$WORK/ca-trust.pem
cp "$D/root.crt" "$CA_TRUST"
cp "$CA_TRUST" "$WORK/ca-trust.orig"
CA_URL=http://127.0.0.1:$PORT/pkix/
agent_config
agent_identity dev "renew = cmp" "ca-url = $CA_URL" "ca-trust = $CA_TRUST" "ca-timeout = 10"
agent_start
identity_setup dev ec-p256
NEXT=$STATE_DIR/dev.ca-next

# A relying party that has both roots (and the intermediates the client may not send).
cat "$D/root.crt" "$D/root2.crt" "$D/inter.crt" "$D/inter2.crt" >"$WORK/relying.pem"
s_server_start --client-ca "$WORK/relying.pem"
provider_env
curl_loop_start dev

# renew_ok WHAT: a forced renewal succeeds with a new serial; sets SERIAL.
SERIAL=$(current_serial dev)
renew_ok() {
	local before=$SERIAL
	assert_ok ctl renew dev
	SERIAL=$(current_serial dev)
	[ "$SERIAL" != "$before" ] || fail "$1: no new certificate"
}
# nothing_kept WHAT: no successor anchor, ca-trust untouched.
nothing_kept() {
	[ ! -e "$NEXT" ] || fail "$1: a root was kept in $NEXT"
	cmp -s "$CA_TRUST" "$WORK/ca-trust.orig" || fail "$1: ca-trust changed"
}

# 1. No root CA key update service: error answer, silence above debug level.
ca_as "$D/inter.crt" "$D/inter.key" "$D/root.crt"
camark=$(($(wc -l <"$CA_LOG") + 1))
logmark=$(($(wc -l <"$AGENT_LOG") + 1))
renew_ok "CA without the service"
ca_log_has "$camark" "genm answered with error (no --root-update)" ||
	fail "the agent sent no rootCaCert genm after the KUR"
ca_log_since "$camark" | grep -E "kur issued|certConf accepted|genm answered" | tail -n 1 | grep -q "genm answered" ||
	fail "the genm did not come after the KUR and its confirmation"
if tail -n +"$logmark" "$AGENT_LOG" | grep "root CA key update" | grep -qv -i debug; then
	show_log "$AGENT_LOG" 20
	fail "a CA without the root CA key update service caused a log line above debug level"
fi
nothing_kept "CA without the service"
log "1: CA without the service: genm answered with an error, renewal $SERIAL, nothing logged above debug"

# 2a. No newWithOld.
ca_as "$D/inter.crt" "$D/inter.key" "$D/root.crt" --root-update "$D/root2.crt,,$D/root1-by-root2.crt"
logmark=$(($(wc -l <"$AGENT_LOG") + 1))
renew_ok "no newWithOld"
grep -q "rootCaKeyUpdate answered (rootCaCert /CN=mtls-agent test root ca" "$CA_LOG" ||
	fail "the genm did not name the old root as rootCaCert"
[ "$(tail -n +"$logmark" "$AGENT_LOG" | grep -c "refused the new CA root")" -eq 1 ] ||
	fail "no newWithOld: expected exactly one refusal line"
tail -n +"$logmark" "$AGENT_LOG" | grep -q "refused the new CA root /CN=mtls-agent test root 2.*has no newWithOld" ||
	fail "no newWithOld: the refusal does not say why"
nothing_kept "no newWithOld"
log "2a: no newWithOld: refused ($(tail -n +"$logmark" "$AGENT_LOG" | grep -m1 -o 'refused the new CA root.*'))"

# 2b. A newWithOld that the old root did not sign.
ca_as "$D/inter.crt" "$D/inter.key" "$D/root.crt" --root-update "$D/root2.crt,$D/root2-by-fake.crt"
logmark=$(($(wc -l <"$AGENT_LOG") + 1))
renew_ok "rogue newWithOld"
[ "$(tail -n +"$logmark" "$AGENT_LOG" | grep -c "refused the new CA root")" -eq 1 ] ||
	fail "rogue newWithOld: expected exactly one refusal line"
tail -n +"$logmark" "$AGENT_LOG" | grep -q "refused the new CA root /CN=mtls-agent test root 2.*newWithOld is not" ||
	fail "rogue newWithOld: the refusal does not say why"
nothing_kept "rogue newWithOld"
log "2b: newWithOld not signed by the old root: refused"

# Control: with the old root alone, the CA under the new root is refused.
ca_as "$D/inter2.crt" "$D/inter2.key" "$D/root2.crt" --srv-cert "$D/ra2.crt" --srv-key "$D/ra2.key"
cp "$STATE_DIR/dev.crt" "$WORK/before.crt"
assert_fails ctl renew dev
cmp -s "$STATE_DIR/dev.crt" "$WORK/before.crt" || fail "the certificate file changed after a refused answer"
nothing_kept "the CA under the new root, before the update"
log "control: the CA under the new root is refused before the update: $LAST_ERR"

# 3. The rollover answer: the new root is kept in the state dir.
ca_as "$D/inter.crt" "$D/inter.key" "$D/root.crt" \
	--root-update "$D/root2.crt,$D/root2-by-root1.crt,$D/root1-by-root2.crt"
renew_ok "rollover announced"
[ -s "$NEXT" ] || fail "the new root was not kept in $NEXT"
cmp -s <(openssl x509 -in "$NEXT" -outform DER) <(openssl x509 -in "$D/root2.crt" -outform DER) ||
	fail "$NEXT does not hold the new root"
cmp -s "$CA_TRUST" "$WORK/ca-trust.orig" || fail "ca-trust changed"
assert_contains "$(cat "$AGENT_LOG")" "CMP root CA key update: accepted the new CA root /CN=mtls-agent test root 2" "agent log"
log "3: rollover accepted: root 2 kept in $(basename "$NEXT"), ca-trust untouched"

# 4. The CA under the new root: answers verify through the accepted root only.
ca_as "$D/inter2.crt" "$D/inter2.key" "$D/root2.crt" --srv-cert "$D/ra2.crt" --srv-key "$D/ra2.key"
camark=$(($(wc -l <"$CA_LOG") + 1))
renew_ok "the CA under the new root"
ca_log_has "$camark" "kur issued serial=$SERIAL" || fail "the CA log shows no KUR for $SERIAL"
ca_log_has "$camark" "genm answered with error" || fail "no genm after the KUR under the new root"
ctl cert dev >"$WORK/now.pem"
assert_eq "$(count_certs "$WORK/now.pem")" 2 "certificates in the installed chain"
openssl verify -CAfile "$D/root2.crt" -untrusted "$WORK/now.pem" -purpose sslclient "$WORK/now.pem" >"$WORK/verify.out" 2>&1 ||
	fail "the installed chain does not verify against the new root: $(cat "$WORK/verify.out")"
# The next genm names the new root as the one to update.
ca_as "$D/inter2.crt" "$D/inter2.key" "$D/root2.crt" --srv-cert "$D/ra2.crt" --srv-key "$D/ra2.key" \
	--root-update "$D/root2.crt"
camark=$(($(wc -l <"$CA_LOG") + 1))
renew_ok "after the update"
ca_log_has "$camark" "rootCaKeyUpdate answered (rootCaCert /CN=mtls-agent test root 2" ||
	fail "the genm after the update does not name the new root"
cmp -s "$CA_TRUST" "$WORK/ca-trust.orig" || fail "ca-trust changed"
sleep 1
curl_loop_stop
[ "$(sort -u "$WORK/loop.serials" | wc -l)" -ge 2 ] || fail "the curl loop saw only one certificate"
log "OK: renewals under the new root ($SERIAL, chain leaf + inter2 verifies against root 2); refused shapes changed nothing"
s_server_stop
agent_stop

# 5. IR caPubs (bootstrap with a shared secret; a fresh agent per CA): a new root among the
# caPubs is judged like the root CA key update: refused with a rogue link, kept with the
# real one. The IR succeeds either way.
(umask 077 && openssl rand -hex 32 >"$WORK/boot.secret")
# bootstrap_with NAME CAPUBS: a new agent whose identity NAME bootstraps (IR) from the CA
# under the old root, whose caPubs are its certificate + CAPUBS.
bootstrap_with() {
	ca_as "$D/inter.crt" "$D/inter.key" "$2" --secret "boot:$WORK/boot.secret"
	agent_config
	agent_identity "$1" "renew = cmp" "ca-url = $CA_URL" "ca-trust = $CA_TRUST" "ca-timeout = 10" \
		"bootstrap = secret:boot:$WORK/boot.secret" "subject = /CN=$1$ORG" "key-type = ec-p256"
	agent_start
	SERIAL=$(wait_new_serial "$1" "" 30)
	grep -q "ir issued serial=$SERIAL" "$CA_LOG" || fail "$1: the CA log shows no ir for $SERIAL"
	agent_stop
}
cat "$D/root.crt" "$D/root2.crt" "$D/root2-by-fake.crt" >"$WORK/capubs-rogue.pem"
bootstrap_with nr "$WORK/capubs-rogue.pem"
grep -q "identity \"nr\": CMP caPubs: refused the new CA root /CN=mtls-agent test root 2" "$AGENT_LOG" ||
	fail "caPubs with a rogue link: no refusal in the agent log"
[ ! -e "$STATE_DIR/nr.ca-next" ] || fail "caPubs with a rogue link: a root was kept"
cmp -s "$CA_TRUST" "$WORK/ca-trust.orig" || fail "ca-trust changed"
cat "$D/root.crt" "$D/root2.crt" "$D/root2-by-root1.crt" >"$WORK/capubs-good.pem"
bootstrap_with nb "$WORK/capubs-good.pem"
grep -q "identity \"nb\": CMP caPubs: accepted the new CA root /CN=mtls-agent test root 2" "$AGENT_LOG" ||
	fail "caPubs with the real link: the new root was not accepted"
cmp -s <(openssl x509 -in "$STATE_DIR/nb.ca-next" -outform DER) <(openssl x509 -in "$D/root2.crt" -outform DER) ||
	fail "nb.ca-next does not hold the new root"
cmp -s "$CA_TRUST" "$WORK/ca-trust.orig" || fail "ca-trust changed"
log "5: IR caPubs: a new root with a rogue link refused, with its real link kept (nb.ca-next)"
ca_stop
