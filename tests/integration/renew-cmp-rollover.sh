#!/bin/bash
# CMP: the CA rolls over to a new intermediate between two renewals (keys in SoftHSM,
# forced KURs to the test CMP CA on one port, restarted for each step).
#  1. The new intermediate signs the CA's answer itself: it has neither id-kp-cmcRA nor
#     id-kp-cmcCA and did not issue the current certificate, so the agent refuses the
#     answer (one precise message, certificate file byte-identical).
#  2. The operator pins it (ca-signer) and reloads: the renewal succeeds and the chain
#     installed is leaf + the new intermediate (taken from extraCerts), verifying against
#     ca-trust.
#     With ca-sender set, an answer whose sender name differs is refused too. With
#     implicit-confirm = yes, a CA that grants it gets no certConf; one that does not, does.
#  3. The CA moves to an intermediate under another root (an untrusted new anchor), its
#     answers signed by an RA certificate (id-kp-cmcRA) that does chain to ca-trust: the
#     certificate is refused ("does not verify against ca-trust") with a negative
#     certConf, and nothing is replaced.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_cmd python3

testca_init
testca_init "$WORK/otherca"
softhsm_setup rollover
PORT=$(free_port)

# cert_under NAME ISSUER_DIR ISSUER EXTENSIONS: a P-256 key and certificate NAME signed by
# ISSUER (ISSUER_DIR/ISSUER.crt and .key).
cert_under() {
	local name=$1 dir=$2 issuer=$3
	printf '[ ext ]\n%s\n' "$4" >"$WORK/$name.ext"
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/$name.key" \
		-out "$WORK/$name.csr" -subj "/CN=$name/O=mtls-agent tests" 2>"$WORK/$name.log" &&
		openssl x509 -req -in "$WORK/$name.csr" -CA "$dir/$issuer.crt" -CAkey "$dir/$issuer.key" \
			-set_serial "0x$(openssl rand -hex 8)" -days 30 -sha256 -extfile "$WORK/$name.ext" \
			-extensions ext -out "$WORK/$name.crt" 2>>"$WORK/$name.log" ||
		{ cat "$WORK/$name.log" >&2; fail "cannot make the $name certificate"; }
}
INTER_EXT="basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, digitalSignature, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always"
RA_EXT="basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = 1.3.6.1.5.5.7.3.28
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid"
cert_under inter2 "$CA_DIR" root "$INTER_EXT"
cert_under ra2 "$WORK" inter2 "$RA_EXT"
cert_under interB "$WORK/otherca" root "$INTER_EXT"

# ca_as CA_CERT CA_KEY CHAIN [ARGS...]: the CMP CA on $PORT, issuing with CA_CERT.
ca_as() {
	local cert=$1 key=$2 chain=$3
	shift 3
	ca_stop
	_ca_spawn cmp-ca "$CMP_CA_BIN" --port "$PORT" --lifetime 3600 --ca-cert "$cert" --ca-key "$key" \
		--chain "$chain" "$@"
	CA_URL=http://127.0.0.1:$CA_PORT/pkix/
}

CA_TRUST=$CA_DIR/root.crt
CA_URL=http://127.0.0.1:$PORT/pkix/
agent_config
agent_identity dev "renew = cmp" "ca-url = $CA_URL" "ca-trust = $CA_TRUST" "ca-timeout = 10"
agent_start
identity_setup dev ec-p256
CRT=$STATE_DIR/dev.crt
s0=$(current_serial dev)

# 1. The new intermediate answers for itself, unpinned.
ca_as "$WORK/inter2.crt" "$WORK/inter2.key" "$CA_DIR/root.crt" --client-trust "$CA_DIR/inter.crt"
cp "$CRT" "$WORK/before.crt"
assert_fails ctl renew dev
assert_contains "$LAST_ERR" "the response is signed by /CN=inter2/O=mtls-agent tests, which may not answer for the CA" "unpinned new intermediate"
cmp -s "$CRT" "$WORK/before.crt" || fail "the certificate file changed after a refused answer"
assert_eq "$(current_serial dev)" "$s0" "serial after the refused answer"
log "new intermediate, unpinned: refused: $LAST_ERR"

# 2. Pinned with ca-signer: the renewal installs leaf + the new intermediate.
printf 'ca-signer = %s\n' "$WORK/inter2.crt" >>"$CONF"
assert_ok ctl reload
camark=$(($(wc -l <"$CA_LOG") + 1))
assert_ok ctl renew dev
s1=$(current_serial dev)
[ "$s1" != "$s0" ] || fail "no new certificate after pinning the new intermediate"
ca_log_since "$camark" | grep -q "certConf accepted serial=$s1" || fail "no certConf for $s1"
ctl cert dev >"$WORK/now.pem"
assert_eq "$(count_certs "$WORK/now.pem")" 2 "certificates in the installed chain"
openssl x509 -in "$WORK/now.pem" -out "$WORK/now.leaf"
awk 'n>=1 {print} /-----END CERTIFICATE-----/ {n++}' "$WORK/now.pem" >"$WORK/now.inter"
assert_eq "$(openssl x509 -in "$WORK/now.inter" -noout -fingerprint -sha256)" \
	"$(openssl x509 -in "$WORK/inter2.crt" -noout -fingerprint -sha256)" "intermediate in the installed chain"
openssl verify -CAfile "$CA_TRUST" -untrusted "$WORK/now.inter" -purpose sslclient "$WORK/now.leaf" >/dev/null ||
	fail "the installed chain does not verify against ca-trust"
log "new intermediate pinned: serial $s1, chain leaf + inter2 verifies against the root"

# 2b. ca-sender: an answer whose sender field is not the expected name is refused; the
# right name is accepted.
printf 'ca-sender = /CN=Fleet RA/O=Example\n' >>"$CONF"
assert_ok ctl reload
cp "$CRT" "$WORK/before.crt"
assert_fails ctl renew dev
assert_contains "$LAST_ERR" "does not match expected sender" "ca-sender mismatch"
cmp -s "$CRT" "$WORK/before.crt" || fail "the certificate file changed after a refused sender"
log "ca-sender mismatch: refused: $LAST_ERR"
sed -i 's|^ca-sender = .*|ca-sender = /CN=inter2/O=mtls-agent tests|' "$CONF"
assert_ok ctl reload
assert_ok ctl renew dev
s1=$(current_serial dev)
log "ca-sender matching: renewed, serial $s1"
sed -i '/^ca-sender = /d' "$CONF"
assert_ok ctl reload

# 2c. implicit-confirm = yes: a CA that grants it gets no certConf, and the certificate is
# installed at once; a CA that does not grant it gets certConf as usual.
printf 'implicit-confirm = yes\n' >>"$CONF"
assert_ok ctl reload
ca_as "$WORK/inter2.crt" "$WORK/inter2.key" "$CA_DIR/root.crt" --implicit-confirm
camark=$(($(wc -l <"$CA_LOG") + 1))
assert_ok ctl renew dev
s1=$(current_serial dev)
ca_log_since "$camark" | grep -q "kur issued serial=$s1 " || fail "implicit confirmation: $s1 was not issued by this CA"
ca_log_since "$camark" | grep -q "certConf" && fail "implicit confirmation granted, yet a certConf was sent"
ca_as "$WORK/inter2.crt" "$WORK/inter2.key" "$CA_DIR/root.crt"
camark=$(($(wc -l <"$CA_LOG") + 1))
assert_ok ctl renew dev
s1=$(current_serial dev)
ca_log_since "$camark" | grep -q "certConf accepted serial=$s1" ||
	fail "implicit confirmation asked for, not granted: no certConf for $s1"
sed -i '/^implicit-confirm = /d' "$CONF"
assert_ok ctl reload
log "implicit-confirm: granted -> installed without certConf; not granted -> certConf/pkiConf ($s1)"

# 3. An intermediate under another root, answers signed by a trusted RA: certificate refused.
ca_as "$WORK/interB.crt" "$WORK/interB.key" "$WORK/otherca/root.crt" \
	--client-trust "$WORK/inter2.crt" --srv-cert "$WORK/ra2.crt" --srv-key "$WORK/ra2.key"
# The RA's own chain (ra2 <- inter2) is what the CA sends with its answers.
cp "$CRT" "$WORK/before.crt"
camark=$(($(wc -l <"$CA_LOG") + 1))
assert_fails ctl renew dev
assert_contains "$LAST_ERR" "does not verify against ca-trust" "certificate under an untrusted anchor"
cmp -s "$CRT" "$WORK/before.crt" || fail "the certificate file changed after a refused certificate"
bad=$(ca_log_since "$camark" | sed -n 's/.* kur issued serial=\([0-9A-F]*\) .*/\1/p' | head -n 1)
[ -n "$bad" ] || fail "the CA log shows no certificate issued under the other root"
wait_until 10 ca_log_has "$camark" "certConf rejected serial=$bad" || fail "no negative certConf for $bad"
assert_eq "$(current_serial dev)" "$s1" "serial after the refused certificate"
log "OK: untrusted new anchor refused ($LAST_ERR); rollover to a pinned intermediate installed its chain"
agent_stop
ca_stop
