#!/bin/bash
# CMP renewal against every response shape RFC 9483 (Lightweight CMP Profile) allows,
# and refusal of the shapes and signers it does not. Keys in a SoftHSM token; the test
# CMP CA (tests/cmp-ca, OpenSSL's OSSL_CMP_SRV_CTX) is restarted on the same port with
# one shape at a time and issues 20-second certificates, so each identity renews by
# its schedule alone (KUR, a new key each time) about every 13 s.
#
# Identities: "gw" bootstraps by IR with a shared secret (a MAC-protected answer
# without caPubs); "imp" holds a leaf-only certificate obtained with
# `openssl cmp -cmd p10cr` and imported, as a user of another CA would. For each
# accepted shape both renew on schedule: the CA log shows the KUR and the certConf of
# the certificate now served, the key is new, the installed chain verifies against
# ca-trust with the intermediate the CA sent (or that the agent held). A curl loop
# through the provider handshakes with `openssl s_server -Verify` across all of it and
# must never fail.
#
# Accepted: answers signed by the issuing CA or by an RA certificate (id-kp-cmcRA);
# extraCerts as OpenSSL sends them, absent, or in reverse order; a CA willing to grant
# implicit confirmation (the agent does not ask: certConf is still exchanged); polling
# (waiting, checkAfter). Refused, with one precise message and the certificate file
# byte-identical: an RA answer without the RA certificate (nothing says who signed);
# an answer signed by another device's clientAuth certificate that chains to ca-trust,
# even one that says "notAuthorized" (no bootstrap may follow); a rejection whose
# statusString carries a newline and ESC appears escaped in the agent log.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_tls_cmd curl
need_cmd pkcs11-tool python3
need_provider

LIFE=20
testca_init
server_cert_setup
softhsm_setup shapes
(umask 077 && openssl rand -hex 32 >"$WORK/boot.secret")
PORT=$(free_port)

# signer_cert NAME EXTENSIONS: a key and certificate issued by the intermediate.
signer_cert() {
	local name=$1
	printf '[ ext ]\n%s\n' "$2" >"$WORK/$name.ext"
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/$name.key" \
		-out "$WORK/$name.csr" -subj "/CN=$name/O=mtls-agent tests" 2>"$WORK/$name.log" &&
		openssl x509 -req -in "$WORK/$name.csr" -CA "$CA_DIR/inter.crt" -CAkey "$CA_DIR/inter.key" \
			-set_serial "0x$(openssl rand -hex 8)" -days 2 -sha256 -extfile "$WORK/$name.ext" \
			-extensions ext -out "$WORK/$name.crt" 2>>"$WORK/$name.log" ||
		{ cat "$WORK/$name.log" >&2; fail "cannot make the $name certificate"; }
}
signer_cert ra "basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = 1.3.6.1.5.5.7.3.28
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid"
signer_cert device7 "basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid"

# ca_shape ARGS...: the CMP CA restarted on the same port with these switches.
ca_shape() {
	ca_stop
	cmp_ca_start --port "$PORT" --lifetime "$LIFE" --secret "boot:$WORK/boot.secret" "$@"
}

ca_shape --capubs no
mkdir -p "$WORK/out"
agent_config
renew_lines cmp "ca-timeout = 10"
agent_identity gw "${RENEW_LINES[@]}" "bootstrap = secret:boot:$WORK/boot.secret" \
	"subject = /CN=gw/O=mtls-agent tests" "key-type = ec-p256"
agent_identity imp "${RENEW_LINES[@]}" "key-type = ec-p256"
agent_start

# served_serial NAME: like current_serial, in files of its own (the curl loop uses that one).
served_serial() {
	ctl cert "$1" >"$WORK/$1.served.pem" 2>/dev/null || return 0
	cert_serial "$WORK/$1.served.pem"
}

serial_changed() { [ "$(served_serial "$1")" != "$2" ]; }

# chain_verifies NAME: the served chain is leaf + intermediate and verifies against ca-trust.
chain_verifies() {
	local f=$WORK/$1.chain.now
	ctl cert "$1" >"$f" || fail "cert $1 failed"
	assert_eq "$(count_certs "$f")" 2 "$1: certificates in the installed chain"
	openssl x509 -in "$f" -out "$f.leaf"
	openssl verify -CAfile "$CA_TRUST" -untrusted "$f" -purpose sslclient "$f.leaf" >/dev/null 2>&1 ||
		fail "$1: the installed chain does not verify against ca-trust: $(openssl verify -CAfile "$CA_TRUST" -untrusted "$f" "$f.leaf" 2>&1)"
}

# 1. IR answered with a MAC (shared secret) and no caPubs: the chain comes from extraCerts.
s=$(wait_new_serial gw "" 30)
grep -q "ir issued serial=$s " "$CA_LOG" || fail "the CA log shows no ir for serial $s"
grep -q "certConf accepted serial=$s" "$CA_LOG" || fail "no certConf for serial $s"
chain_verifies gw
log "IR (MAC-protected answer, no caPubs): serial $s"

# 2. A leaf-only certificate from `openssl cmp -cmd p10cr`, imported.
assert_ok ctl keygen imp --type ec-p256
ctl csr imp --subject "/CN=imp/O=mtls-agent tests" >"$WORK/imp.csr" || fail "csr imp failed"
_csr_to_pem "$WORK/imp.csr" "$WORK/imp.csr.pem"
timeout 30 openssl cmp -cmd p10cr -server "127.0.0.1:$PORT" -path pkix/ -ref boot \
	-secret "file:$WORK/boot.secret" -recipient "/CN=cmp-ca" -csr "$WORK/imp.csr.pem" \
	-certout "$WORK/imp.leaf.pem" >"$WORK/p10cr.log" 2>&1 || {
	show_log "$WORK/p10cr.log"
	fail "openssl cmp -cmd p10cr failed"
}
assert_eq "$(count_certs "$WORK/imp.leaf.pem")" 1 "certificates written by openssl cmp -certout"
assert_ok ctl import-cert imp "$WORK/imp.leaf.pem"
log "imp: leaf-only certificate $(cert_serial "$WORK/imp.leaf.pem") from openssl cmp -cmd p10cr"

s_server_start
provider_env
curl_loop_start gw

# shape_renews NAME ARGS...: with the CA in this shape, both identities renew on schedule.
shape_renews() {
	local shape=$1 mark id s k0 deadline
	shift
	ca_shape "$@"
	mark=$(($(wc -l <"$CA_LOG") + 1))
	for id in gw imp; do
		ctl cert "$id" >"$WORK/$id.before" || fail "cert $id failed"
		cert_pubkey "$WORK/$id.before" "$WORK/$id.before.pub"
	done
	for id in gw imp; do
		deadline=$((SECONDS + 35))
		while :; do
			s=$(served_serial "$id")
			ca_log_since "$mark" | grep -q "kur issued serial=$s " && break
			if [ "$SECONDS" -ge "$deadline" ]; then
				show_log "$AGENT_LOG" 30
				show_log "$CA_LOG" 20
				fail "$shape: $id did not renew through this CA shape within 35 s"
			fi
			sleep 0.5
		done
		ca_log_since "$mark" | grep -q "certConf accepted serial=$s" ||
			fail "$shape: $id serves $s, which the CA never saw confirmed"
		ctl cert "$id" >"$WORK/$id.after"
		cert_pubkey "$WORK/$id.after" "$WORK/$id.after.pub"
		cmp -s "$WORK/$id.before.pub" "$WORK/$id.after.pub" && fail "$shape: $id kept its key"
		chain_verifies "$id"
		k0=$s
	done
	log "$shape: gw and imp renewed (KUR, new keys; imp now $k0)"
}

shape_renews "RA-signed, extraCerts as sent; imp renews its leaf-only certificate" \
	--srv-cert "$WORK/ra.crt" --srv-key "$WORK/ra.key"
shape_renews "CA-signed, no extraCerts" --extra-certs none
shape_renews "CA-signed, extraCerts in reverse order" --extra-certs reversed
shape_renews "RA-signed, extraCerts in reverse order" \
	--srv-cert "$WORK/ra.crt" --srv-key "$WORK/ra.key" --extra-certs reversed
shape_renews "CA willing to grant implicit confirmation (not asked: certConf exchanged)" --implicit-confirm
ca_fault waiting 2 2
shape_renews "polling (waiting, checkAfter)"
ca_log_since 1 | grep -q "pollReq ready" || fail "the CA never delivered a certificate after polling"
ca_fault_clear
assert_not_contains "$(cat "$AGENT_LOG")" "passed a null parameter" "agent log"

# refused_shape NAME FRAGMENT ARGS...: right after gw renewed (through a CA that answers
# well), the CA switches to this shape (and the fault in $REFUSE_FAULT, if any); a forced
# renewal fails with FRAGMENT in its message, the certificate file stays byte-identical, no
# bootstrap follows (no IR at the CA, nothing in the agent log), nothing is confirmed.
refused_shape() {
	local shape=$1 frag=$2 mark amark s0 crt=$STATE_DIR/gw.crt
	shift 2
	ca_fault_clear
	ca_shape
	# A fresh certificate: 13 s before its renewal, 20 s before expiry.
	s0=$(served_serial gw)
	wait_until 30 serial_changed gw "$s0" || fail "$shape: gw did not renew within 30 s"
	ca_shape "$@"
	# shellcheck disable=SC2086 # REFUSE_FAULT: KIND COUNT ARG
	[ -z "${REFUSE_FAULT:-}" ] || ca_fault $REFUSE_FAULT
	mark=$(($(wc -l <"$CA_LOG") + 1))
	amark=$(($(wc -l <"$AGENT_LOG") + 1))
	cp "$crt" "$WORK/gw.crt.before"
	s0=$(served_serial gw)
	assert_fails ctl renew gw
	assert_contains "$LAST_ERR" "$frag" "$shape: mtls-agentctl renew"
	cmp -s "$crt" "$WORK/gw.crt.before" || fail "$shape: the certificate file changed"
	assert_eq "$(served_serial gw)" "$s0" "$shape: serial after the refused answer"
	sleep 2 # the agent's first automatic retry
	cmp -s "$crt" "$WORK/gw.crt.before" || fail "$shape: the certificate file changed"
	tail -n +"$amark" "$AGENT_LOG" | grep -q "trying bootstrap" &&
		fail "$shape: the agent went to bootstrap after an answer it refused"
	ca_log_since "$mark" | grep -q "ir issued" && fail "$shape: an IR followed the refused answer"
	ca_log_since "$mark" | grep -q "certConf accepted" && fail "$shape: a certificate was confirmed"
	ca_fault_clear
	log "$shape: refused: $LAST_ERR"
}

refused_shape "RA-signed without its certificate" "CMP KUR: the response's protection does not verify" \
	--srv-cert "$WORK/ra.crt" --srv-key "$WORK/ra.key" --extra-certs none
REFUSE_FAULT="reject 20 notAuthorized" refused_shape \
	"signed by another device's clientAuth certificate, saying notAuthorized" \
	"the response is signed by /CN=device7/O=mtls-agent tests, which may not answer for the CA" \
	--srv-cert "$WORK/device7.crt" --srv-key "$WORK/device7.key"

# A rejection whose statusString would forge a log line and colour the terminal.
REFUSE_FAULT="reject 20 badRequest" refused_shape "statusString with a newline and ESC" \
	"CMP KUR rejected" --status-text "$(printf 'bad request\nmtls-agent: info: FORGED line \033[31mred')"
grep -q '^mtls-agent: info: FORGED' "$AGENT_LOG" && fail "the CA's statusString forged a log line"
grep -q "$(printf '\033')" "$AGENT_LOG" && fail "an ESC from the CA reached the agent log"
grep -qF 'bad request\nmtls-agent: info: FORGED line \x1b[31mred' "$AGENT_LOG" ||
	fail "the statusString is not in the agent log, escaped: $(grep -a FORGED "$AGENT_LOG" | head -n 3)"
log "statusString logged escaped: $(grep -aoF 'bad request\nmtls-agent: info: FORGED line \x1b[31mred' "$AGENT_LOG" | head -n 1)"

# Back to a CA that answers well: the next scheduled renewal confirms.
shape_renews "after the refusals" --srv-cert "$WORK/ra.crt" --srv-key "$WORK/ra.key"
curl_loop_stop
log "OK: every RFC 9483 shape renewed, refused ones left the certificate untouched; $LOOP_OK handshakes, 0 failed"
agent_stop
ca_stop
