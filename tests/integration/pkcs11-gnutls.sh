#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# mtls-agent-pkcs11.so with programs that speak PKCS#11 (GnuTLS), against
# openssl s_server -Verify 1 -verify_return_error on 127.0.0.1:
#   - p11tool and pkcs11-tool list the token "mtls-agent" and, per identity,
#     a private key (sign only, sensitive, not extractable), a public key and
#     the certificate chain, labelled with the identity name and with
#     CKA_ID = SHA-256 of the SubjectPublicKeyInfo;
#   - gnutls-cli --x509keyfile 'pkcs11:token=mtls-agent;object=NAME' and
#     wget --private-key with the same URI (as a non-root user allowed to use
#     the identities, the module found through its p11-kit user config)
#     complete mTLS with EC P-256 and RSA-2048 identities under
#     sign-policy = digest (TLS 1.3; gnutls-cli also TLS 1.2 with PKCS#1 v1.5,
#     i.e. CKM_RSA_PKCS with a DigestInfo); the server verified the
#     certificate and the agent signed;
#   - gnutls-cli with an Ed25519 identity under the default policy (CKM_EDDSA
#     carries the whole CertificateVerify content);
#   - a tls-client identity refuses raw-digest signing (CKM_ECDSA) with an
#     error that names the policy, while its digest-level twin signs a digest
#     that verifies; an arbitrary message is refused under both;
#   - a uid the identities do not allow (nobody) sees no objects and cannot sign.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_cmd python3
need_cmd gnutls-cli
need_cmd p11tool
need_cmd pkcs11-tool
need_cmd wget
need_cmd setpriv

P11_MODULE=${MTLS_PKCS11_MODULE:-$top_builddir/pkcs11/.libs/mtls-agent-pkcs11.so}
[ -f "$P11_MODULE" ] || skip "PKCS#11 module not built: $P11_MODULE (set MTLS_PKCS11_MODULE)"
# A copy every uid can read (the build tree may be under /root).
mkdir -p "$WORK/p11"
cp "$P11_MODULE" "$WORK/p11/mtls-agent-pkcs11.so"
chmod -R a+rX "$WORK/p11"
chmod a+x "$WORK"
MOD=$WORK/p11/mtls-agent-pkcs11.so

softhsm_setup p11gnutls
testca_init
server_cert_setup
agent_config "socket-mode = 0666"
agent_identity p-ec "sign-policy = digest" "allow-users = root daemon"
agent_identity p-rsa "sign-policy = digest" "allow-users = root daemon"
agent_identity p-tls
agent_identity p-ed
# An identity root administers but may not use: the token must not show it to root.
agent_identity p-other "allow-users = daemon"
agent_start
identity_setup p-ec ec-p256
identity_setup p-rsa rsa-2048
identity_setup p-tls ec-p256
identity_setup p-ed ed25519
IDENTITY_SETUP_NO_CERT=1 identity_setup p-other ec-p256
for id in p-ec p-rsa p-tls p-ed; do
	identity_files "$id"
done
export MTLS_AGENT_SOCK=$SOCK
# Nothing of OpenSSL's configuration reaches GnuTLS; keep the environment plain anyway.
unset OPENSSL_CONF OPENSSL_ENGINES

# --- listing --------------------------------------------------------------------------------
p11tool --provider "$MOD" --list-all 'pkcs11:token=mtls-agent' >"$WORK/p11tool.out" 2>"$WORK/p11tool.err" || {
	cat "$WORK/p11tool.err" >&2
	fail "p11tool --list-all failed"
}
for id in p-ec p-rsa p-tls; do
	assert_contains "$(cat "$WORK/p11tool.out")" "object=$id;type=private" "p11tool --list-all"
	assert_contains "$(cat "$WORK/p11tool.out")" "object=$id;type=public" "p11tool --list-all"
	assert_contains "$(cat "$WORK/p11tool.out")" "object=$id;type=cert" "p11tool --list-all"
done
# CKA_ID of an identity's key objects: SHA-256 of the certified public key (DER SPKI), hex.
p11_id() { # NAME
	openssl pkey -pubin -in "$WORK/$1.pub.pem" -outform DER | openssl dgst -sha256 -hex | sed 's/.*= //'
}
want_id=$(p11_id p-ec)
got_id=$(sed -n 's/.*URL: pkcs11:.*;id=\([^;]*\);object=p-ec;type=private.*/\1/p' "$WORK/p11tool.out" | head -n 1 | tr -d '%' | tr 'A-F' 'a-f')
assert_eq "$got_id" "$want_id" "CKA_ID of p-ec's private key"
# root is an administrator (LIST shows it every identity) but not allowed to use p-other.
assert_contains "$(ctl list)" "p-other" "mtls-agentctl list as the administrator"
assert_not_contains "$(cat "$WORK/p11tool.out")" "object=p-other" "p11tool --list-all as root"
pkcs11-tool --module "$MOD" -O >"$WORK/p11-O.out" 2>&1 || {
	cat "$WORK/p11-O.out" >&2
	fail "pkcs11-tool -O failed"
}
assert_contains "$(cat "$WORK/p11-O.out")" "Private Key Object; EC" "pkcs11-tool -O"
assert_contains "$(cat "$WORK/p11-O.out")" "Private Key Object; RSA" "pkcs11-tool -O"
assert_contains "$(cat "$WORK/p11-O.out")" "Certificate Object" "pkcs11-tool -O"
assert_contains "$(cat "$WORK/p11-O.out")" "label:      p-rsa" "pkcs11-tool -O"
# Sign only, never extractable: pkcs11-tool prints the usage and access flags.
sed -n '/Private Key Object; EC/,/^$/p' "$WORK/p11-O.out" >"$WORK/p11-priv.txt"
assert_contains "$(cat "$WORK/p11-priv.txt")" "sign" "private key usage"
assert_not_contains "$(cat "$WORK/p11-priv.txt")" "decrypt" "private key usage"
assert_contains "$(cat "$WORK/p11-priv.txt")" "sensitive" "private key access"
assert_contains "$(cat "$WORK/p11-priv.txt")" "never extractable" "private key access"
log "ok: p11tool/pkcs11-tool list 3 identities (private key, public key, certificate each)"
# The software SHA-2 digests (Java's PSS parameters need the token to list them).
printf 'digest me' >"$WORK/h.in"
assert_ok pkcs11-tool --module "$MOD" --hash -m SHA256 -i "$WORK/h.in" -o "$WORK/h.out"
assert_eq "$(od -An -tx1 "$WORK/h.out" | tr -d ' \n')" "$(openssl dgst -sha256 -hex "$WORK/h.in" | sed 's/.*= //')" \
	"C_Digest SHA-256"

# --- gnutls-cli and wget against s_server -Verify 1 -----------------------------------------
# wget has no --provider option: p11-kit finds the module through the user's
# config, which p11-kit ignores for root, so wget runs as daemon (allowed to
# use p-ec and p-rsa), with ~/.config/pkcs11/modules/mtls-agent.module.
run_as daemon daemon true
P11_HOME=$WORK/home-daemon
mkdir -p "$P11_HOME/.config/pkcs11/modules"
printf 'module: %s\n' "$MOD" >"$P11_HOME/.config/pkcs11/modules/mtls-agent.module"
chmod -R a+rX "$P11_HOME" "$TLS_DIR"

s_server_start
for id in p-ec p-rsa; do
	uri="pkcs11:token=mtls-agent;object=$id"
	before=$(id_counter "$id" signatures)
	rc=0
	printf 'GET / HTTP/1.0\r\n\r\n' |
		tls_timeout gnutls-cli --provider "$MOD" --x509cafile "$SRV_CA" \
			--x509certfile "$TLS_DIR/$id.chain.pem" --x509keyfile "$uri" \
			-p "$S_SERVER_PORT" 127.0.0.1 >"$TLS_DIR/gnutls-cli.out" 2>"$TLS_DIR/gnutls-cli.err" || rc=$?
	grep -q '^Client certificate' "$TLS_DIR/gnutls-cli.out" || {
		show_log "$TLS_DIR/gnutls-cli.err" 30
		show_log "$S_SERVER_LOG" 20
		fail "gnutls-cli with $uri: no verified client certificate on the server's page (exit $rc)"
	}
	subj=$(page_identity "$TLS_DIR/gnutls-cli.out")
	assert_cn "$subj" "$id" "gnutls-cli $id: the server saw"
	[ "$(id_counter "$id" signatures)" -gt "$before" ] ||
		fail "gnutls-cli $id: handshake worked but the agent made no signature"
	log "ok: gnutls-cli --x509keyfile '$uri': $(page_protocol "$TLS_DIR/gnutls-cli.out") $(page_peer_sig "$TLS_DIR/gnutls-cli.out")"

	before=$(id_counter "$id" signatures)
	rc=0
	run_as daemon daemon env MTLS_AGENT_SOCK="$SOCK" timeout -k 5 "$MTLS_TLS_TIMEOUT" \
		wget -q --tries=1 -O "$P11_HOME/wget.page" --ca-certificate="$SRV_CA" \
		--certificate="$TLS_DIR/$id.chain.pem" --private-key="$uri" \
		"https://127.0.0.1:$S_SERVER_PORT/" 2>"$TLS_DIR/wget.err" || rc=$?
	if [ "$rc" -ne 0 ]; then
		show_log "$TLS_DIR/wget.err" 20
		show_log "$S_SERVER_LOG" 20
		fail "wget --private-key '$uri' failed (exit $rc)"
	fi
	subj=$(page_identity "$P11_HOME/wget.page")
	assert_cn "$subj" "$id" "wget $id: the server saw"
	[ "$(id_counter "$id" signatures)" -gt "$before" ] ||
		fail "wget $id: handshake worked but the agent made no signature"
	log "ok: wget --private-key '$uri': $(page_protocol "$P11_HOME/wget.page") $(page_peer_sig "$P11_HOME/wget.page")"
done
s_server_stop

# TLS 1.2 with PKCS#1 v1.5 for RSA: CKM_RSA_PKCS with a SHA-256 DigestInfo.
s_server_start -tls1_2 -client_sigalgs RSA+SHA256:ECDSA+SHA256
for id in p-ec p-rsa; do
	uri="pkcs11:token=mtls-agent;object=$id"
	before=$(id_counter "$id" signatures)
	rc=0
	printf 'GET / HTTP/1.0\r\n\r\n' |
		tls_timeout gnutls-cli --provider "$MOD" --x509cafile "$SRV_CA" \
			--x509certfile "$TLS_DIR/$id.chain.pem" --x509keyfile "$uri" \
			-p "$S_SERVER_PORT" 127.0.0.1 >"$TLS_DIR/gnutls-cli.out" 2>"$TLS_DIR/gnutls-cli.err" || rc=$?
	grep -q '^Client certificate' "$TLS_DIR/gnutls-cli.out" || {
		show_log "$TLS_DIR/gnutls-cli.err" 30
		show_log "$S_SERVER_LOG" 20
		fail "gnutls-cli (TLS 1.2) with $uri: no verified client certificate (exit $rc)"
	}
	assert_cn "$(page_identity "$TLS_DIR/gnutls-cli.out")" "$id" "gnutls-cli $id TLS 1.2: the server saw"
	assert_eq "$(page_protocol "$TLS_DIR/gnutls-cli.out")" TLSv1.2 "gnutls-cli $id: protocol"
	[ "$(id_counter "$id" signatures)" -gt "$before" ] ||
		fail "gnutls-cli $id TLS 1.2: handshake worked but the agent made no signature"
	log "ok: gnutls-cli --x509keyfile '$uri': TLSv1.2 $(page_peer_sig "$TLS_DIR/gnutls-cli.out")"
done
s_server_stop
s_server_start

# Ed25519 under the default policy: CKM_EDDSA carries the whole TLS 1.3
# CertificateVerify content, which tls-client admits.
uri="pkcs11:token=mtls-agent;object=p-ed"
before=$(id_counter p-ed signatures)
rc=0
printf 'GET / HTTP/1.0\r\n\r\n' |
	tls_timeout gnutls-cli --provider "$MOD" --x509cafile "$SRV_CA" \
		--x509certfile "$TLS_DIR/p-ed.chain.pem" --x509keyfile "$uri" \
		-p "$S_SERVER_PORT" 127.0.0.1 >"$TLS_DIR/gnutls-cli.out" 2>"$TLS_DIR/gnutls-cli.err" || rc=$?
grep -q '^Client certificate' "$TLS_DIR/gnutls-cli.out" || {
	show_log "$TLS_DIR/gnutls-cli.err" 30
	show_log "$S_SERVER_LOG" 20
	fail "gnutls-cli with $uri: no verified client certificate on the server's page (exit $rc)"
}
assert_cn "$(page_identity "$TLS_DIR/gnutls-cli.out")" p-ed "gnutls-cli p-ed: the server saw"
grep -qx 'Peer signature type: ed25519' "$TLS_DIR/gnutls-cli.out" ||
	fail "gnutls-cli p-ed: the server's page shows no Ed25519 client signature"
[ "$(id_counter p-ed signatures)" -gt "$before" ] ||
	fail "gnutls-cli p-ed: handshake worked but the agent made no signature"
log "ok: gnutls-cli --x509keyfile '$uri' (Ed25519, CKM_EDDSA, sign-policy tls-client): $(page_protocol "$TLS_DIR/gnutls-cli.out")"

# GnuTLS hands over a hash: a tls-client EC identity refuses, and gnutls-cli's
# stderr carries the module's line saying which policy would allow it.
rc=0
printf 'GET / HTTP/1.0\r\n\r\n' |
	tls_timeout gnutls-cli --provider "$MOD" --x509cafile "$SRV_CA" \
		--x509certfile "$TLS_DIR/p-tls.chain.pem" --x509keyfile "pkcs11:token=mtls-agent;object=p-tls" \
		-p "$S_SERVER_PORT" 127.0.0.1 >"$TLS_DIR/gnutls-cli.out" 2>"$TLS_DIR/gnutls-cli.err" || rc=$?
if grep -q '^Client certificate' "$TLS_DIR/gnutls-cli.out"; then
	fail "gnutls-cli with the tls-client identity p-tls got a verified client certificate"
fi
assert_contains "$(cat "$TLS_DIR/gnutls-cli.err")" "need sign-policy = digest or any" "gnutls-cli with p-tls"
log "ok: gnutls-cli with p-tls (tls-client) fails: $(grep -m1 'mtls-agent-pkcs11' "$TLS_DIR/gnutls-cli.err")"
s_server_stop

# --- sign-policy through PKCS#11 ------------------------------------------------------------
head -c 32 /dev/urandom >"$WORK/digest.bin"
rc=0
pkcs11-tool --module "$MOD" --sign -m ECDSA --id "$(p11_id p-tls)" -i "$WORK/digest.bin" -o "$WORK/sig.bin" \
	>"$WORK/sign-tls.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "CKM_ECDSA (a raw digest) was signed with the tls-client identity p-tls"
assert_contains "$(cat "$WORK/sign-tls.out")" "need sign-policy = digest or any" "CKM_ECDSA refusal for p-tls"
assert_contains "$(cat "$WORK/sign-tls.out")" 'identity "p-tls" (sign-policy tls-client)' "CKM_ECDSA refusal for p-tls"
log "ok: p-tls (tls-client) refuses CKM_ECDSA: $(grep -m1 'mtls-agent-pkcs11' "$WORK/sign-tls.out")"

assert_ok pkcs11-tool --module "$MOD" --sign -m ECDSA --id "$(p11_id p-ec)" --signature-format openssl \
	-i "$WORK/digest.bin" -o "$WORK/sig.der"
openssl pkeyutl -verify -pubin -inkey "$WORK/p-ec.pub.pem" -in "$WORK/digest.bin" \
	-sigfile "$WORK/sig.der" >/dev/null 2>&1 || fail "p-ec's CKM_ECDSA signature does not verify"
log "ok: p-ec (digest) signs a 32-byte digest with CKM_ECDSA and it verifies"

# A 20-byte "digest" is no SHA-2 hash: refused before it reaches the agent.
head -c 20 /dev/urandom >"$WORK/short.bin"
rc=0
pkcs11-tool --module "$MOD" --sign -m ECDSA --id "$(p11_id p-ec)" -i "$WORK/short.bin" -o "$WORK/sig.bin" \
	>"$WORK/sign-short.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "CKM_ECDSA signed a 20-byte input"
assert_contains "$(cat "$WORK/sign-short.out")" "not 20 bytes" "CKM_ECDSA with 20 bytes"
# A message that is no TLS handshake content: refused under tls-client and digest alike.
printf 'a certificate request, a JWT, anything' >"$WORK/msg.bin"
for id in p-tls p-ec; do
	rc=0
	pkcs11-tool --module "$MOD" --sign -m ECDSA-SHA256 --id "$(p11_id "$id")" -i "$WORK/msg.bin" \
		-o "$WORK/sig.bin" >"$WORK/sign-msg.out" 2>&1 || rc=$?
	[ "$rc" -ne 0 ] || fail "$id signed an arbitrary message with CKM_ECDSA_SHA256"
	assert_contains "$(cat "$WORK/sign-msg.out")" "neither a TLS 1.3 client CertificateVerify" "$id message refusal"
done
log "ok: arbitrary messages refused (tls-client and digest)"

# --- a uid the identities do not allow ------------------------------------------------------
run_as_nobody env MTLS_AGENT_SOCK="$SOCK" p11tool --provider "$MOD" --list-all \
	'pkcs11:token=mtls-agent' >"$WORK/nobody-list.out" 2>&1 || true
assert_not_contains "$(cat "$WORK/nobody-list.out")" "object=p-" "objects listed for nobody"
# nobody reaches the agent (the socket is 0666): the empty list is the agent's ACL.
run_as_nobody env MTLS_AGENT_SOCK="$SOCK" pkcs11-tool --module "$MOD" -T >"$WORK/nobody-T.out" 2>&1 ||
	fail "pkcs11-tool -T as nobody failed: $(cat "$WORK/nobody-T.out")"
assert_contains "$(cat "$WORK/nobody-T.out")" "mtls-agent" "token label seen by nobody"
before=$(id_counter p-ec signatures)
rc=0
run_as_nobody env MTLS_AGENT_SOCK="$SOCK" pkcs11-tool --module "$MOD" --sign -m ECDSA --id "$(p11_id p-ec)" \
	-i "$WORK/digest.bin" -o "$WORK/nobody-sig.bin" >"$WORK/nobody-sign.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "nobody signed with p-ec"
assert_eq "$(id_counter p-ec signatures)" "$before" "p-ec signatures after nobody's attempt"
log "ok: nobody sees no objects and cannot sign ($(grep -m1 -i 'error\|not found' "$WORK/nobody-sign.out" || true))"

agent_stop
log "PASS"
