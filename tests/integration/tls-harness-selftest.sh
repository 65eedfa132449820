#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# The TLS harness itself (tests/tls-lib.sh), with ordinary key files instead of
# the agent: openssl s_server, nginx and mosquitto must accept a client
# certificate from the test CA through curl, openssl s_client/s_time and
# mosquitto_pub/sub, report the identity they saw, and refuse a client whose
# CA they do not trust. If this test fails, the tls-provider-*/tls-engine
# tests say nothing about the agent.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_tls_cmd curl nginx mosquitto mosquitto_pub mosquitto_sub
need_cmd python3

testca_init
server_cert_setup
file_client_cert alice ec-p256
file_client_cert bob ec-p384
file_client_cert carol rsa-2048
file_client_cert eve ec-p256 --ca "$OTHER_CA_DIR"
ALICE=(--cert "$TLS_DIR/alice.chain.pem" --key "$TLS_DIR/alice.key")
CAROL=(--cert "$TLS_DIR/carol.chain.pem" --key "$TLS_DIR/carol.key")
EVE=(--cert "$TLS_DIR/eve.chain.pem" --key "$TLS_DIR/eve.key")

# The server certificate verifies for 127.0.0.1 and localhost, as a server certificate.
openssl verify -CAfile "$SRV_CA" -purpose sslserver -verify_ip 127.0.0.1 "$SRV_CERT" >/dev/null ||
	fail "server certificate does not verify for IP 127.0.0.1"
openssl verify -CAfile "$SRV_CA" -purpose sslserver -verify_hostname localhost "$SRV_CERT" >/dev/null ||
	fail "server certificate does not verify for localhost"
openssl verify -CAfile "$OTHER_CA_DIR/root.crt" -untrusted "$OTHER_CA_DIR/inter.crt" "$TLS_DIR/eve.chain.pem" >/dev/null ||
	fail "eve's certificate does not verify against the unrelated CA"
if openssl verify -CAfile "$CA_DIR/root.crt" -untrusted "$CA_DIR/inter.crt" "$TLS_DIR/eve.chain.pem" >/dev/null 2>&1; then
	fail "the unrelated CA is not unrelated: eve verifies against the test CA"
fi

# --- openssl s_server + curl ----------------------------------------------------------------
s_server_start
subj=$(https_get_identity "${ALICE[@]}")
assert_cn "$subj" alice "s_server (TLS 1.3) saw"
assert_eq "$(page_protocol)" TLSv1.3 "protocol"
assert_eq "$(page_peer_sig)" "ECDSA SHA256" "client signature"
assert_eq "$(cert_serial "$TLS_DIR/peer.pem")" "$(cert_serial "$TLS_DIR/alice.chain.pem")" "serial the server saw"

subj=$(https_get_identity "${ALICE[@]}" --tls13-ciphers TLS_AES_256_GCM_SHA384)
assert_eq "$(page_cipher)" TLS_AES_256_GCM_SHA384 "cipher suite with --tls13-ciphers"
subj=$(https_get_identity "${ALICE[@]}" --tls-max 1.2)
assert_cn "$subj" alice "s_server (TLS 1.2) saw"
assert_eq "$(page_protocol)" TLSv1.2 "protocol with --tls-max 1.2"

subj=$(https_get_identity --cert "$TLS_DIR/bob.chain.pem" --key "$TLS_DIR/bob.key")
assert_cn "$subj" bob "s_server saw"
assert_eq "$(page_peer_sig)" "ECDSA SHA384" "client signature (P-384)"

subj=$(https_get_identity "${CAROL[@]}")
assert_cn "$subj" carol "s_server saw"
assert_match "$(page_peer_sig)" '^RSA-PSS SHA(256|384|512)$' "client signature (RSA, TLS 1.3)"

# No client certificate: refused.
if s_server_get; then fail "s_server -Verify 1 accepted a client without a certificate"; fi
log "no client certificate: curl: $CURL_ERR"

s_server_start -client_sigalgs RSA+SHA256
subj=$(https_get_identity "${CAROL[@]}" --tls-max 1.2)
assert_cn "$subj" carol "s_server (RSA+SHA256) saw"
assert_eq "$(page_peer_sig)" "RSA SHA256" "client signature with -client_sigalgs RSA+SHA256"
assert_eq "$(page_protocol)" TLSv1.2 "protocol"
s_server_stop

s_server_start -client_sigalgs rsa_pss_rsae_sha384
subj=$(https_get_identity "${CAROL[@]}")
assert_cn "$subj" carol "s_server (rsa_pss_rsae_sha384) saw"
assert_eq "$(page_peer_sig)" "RSA-PSS SHA384" "client signature with -client_sigalgs rsa_pss_rsae_sha384"
subj=$(https_get_identity "${CAROL[@]}" --tls-max 1.2)
assert_eq "$(page_peer_sig)" "RSA-PSS SHA384" "client signature with -client_sigalgs rsa_pss_rsae_sha384, TLS 1.2"
s_server_stop

# --- openssl s_client -------------------------------------------------------------------------
s_server_start
subj=$(s_client_identity -cert "$TLS_DIR/alice.chain.pem" -key "$TLS_DIR/alice.key")
assert_cn "$subj" alice "s_server saw (s_client)"
subj=$(s_client_identity -cert "$TLS_DIR/carol.chain.pem" -key "$TLS_DIR/carol.key" -tls1_2)
assert_cn "$subj" carol "s_server saw (s_client -tls1_2)"
assert_eq "$(page_protocol "$TLS_DIR/sclient.out")" TLSv1.2 "protocol (s_client -tls1_2)"

# --- negative: the server trusts only the unrelated CA ----------------------------------------
s_server_start --client-ca "$OTHER_CA"
for v in 1.3 1.2; do
	if s_server_get "${ALICE[@]}" --tls-max "$v"; then
		fail "a server trusting only the unrelated CA accepted alice (TLS $v)"
	fi
	log "untrusted client CA (TLS $v): curl: $CURL_ERR"
done
if s_client_get -cert "$TLS_DIR/alice.chain.pem" -key "$TLS_DIR/alice.key" &&
	grep -q '^Client certificate' "$TLS_DIR/sclient.out"; then
	fail "a server trusting only the unrelated CA served alice (s_client)"
fi
grep -qiE 'verify error|certificate verify failed|unknown ca|unable to get' "$S_SERVER_LOG" ||
	fail "s_server logged no verification error for alice: $(cat "$S_SERVER_LOG")"
# ... while a client of that CA gets through (so the refusal was the CA).
subj=$(https_get_identity "${EVE[@]}")
assert_cn "$subj" eve "server trusting the unrelated CA saw"
s_server_stop

# --- nginx -----------------------------------------------------------------------------------------
nginx_start
id=$(nginx_get_identity "${ALICE[@]}")
IFS='|' read -r dn serial proto <<<"$id"
assert_cn "$dn" alice "nginx saw"
assert_eq "$serial" "$(cert_serial "$TLS_DIR/alice.chain.pem")" "serial nginx saw"
assert_eq "$proto" TLSv1.3 "protocol nginx saw"
id=$(nginx_get_identity "${CAROL[@]}" --tls-max 1.2)
IFS='|' read -r dn serial proto <<<"$id"
assert_cn "$dn" carol "nginx saw"
assert_eq "$proto" TLSv1.2 "protocol nginx saw with --tls-max 1.2"
n0=$(nginx_requests)
if nginx_get "${EVE[@]}"; then fail "nginx accepted eve, whose CA it does not trust"; fi
line=$(nginx_logged_request "$n0" '^FAILED:.*\|400\|') || fail "nginx access log for eve: not a FAILED 400: $line"
if nginx_get; then fail "nginx accepted a client without a certificate"; fi

# s_time: one process, one SSL_CTX, a new full handshake per connection (what
# tls-provider-rotation.sh relies on); nginx logs each request.
before=$(nginx_requests)
rc=0
tls_timeout openssl s_time -connect "127.0.0.1:$NGINX_PORT" -new -time 2 -www / \
	-cert "$TLS_DIR/alice.chain.pem" -key "$TLS_DIR/alice.key" -CAfile "$SRV_CA" \
	>"$TLS_DIR/s_time.out" 2>&1 || rc=$?
[ "$rc" -eq 0 ] || fail "s_time failed (exit $rc): $(tail -n 5 "$TLS_DIR/s_time.out")"
n=$(sed -n 's/^\([0-9][0-9]*\) connections in [0-9]* real seconds.*/\1/p' "$TLS_DIR/s_time.out")
[ "${n:-0}" -ge 2 ] || fail "s_time made fewer than 2 connections: $(cat "$TLS_DIR/s_time.out")"
after=$(nginx_requests)
assert_eq "$((after - before))" "$n" "requests nginx logged for s_time's $n connections"
bad=$(tail -n "$n" "$NGINX_ACCESS_LOG" | grep -vc '^SUCCESS|.*|200|' || true)
assert_eq "$bad" 0 "s_time requests nginx did not verify"
log "s_time: $n handshakes in one process, all verified by nginx"
nginx_stop

# --- mosquitto -----------------------------------------------------------------------------------
mosquitto_start
mqtt_roundtrip "${ALICE[@]}" -- --cert "$TLS_DIR/bob.chain.pem" --key "$TLS_DIR/bob.key"
assert_eq "$MQTT_PUB_USER" alice "broker's username for the publisher"
assert_eq "$MQTT_SUB_USER" bob "broker's username for the subscriber"
mqtt_roundtrip "${CAROL[@]}" --tls-version tlsv1.2 -- "${ALICE[@]}" --tls-version tlsv1.3
assert_eq "$MQTT_PUB_USER" carol "broker's username for the publisher"
if mqtt_pub "${EVE[@]}"; then fail "mosquitto accepted eve, whose CA it does not trust"; fi
log "mosquitto refused eve: $(tr '\n' ' ' <"$TLS_DIR/pub.err")"
if mqtt_pub; then fail "mosquitto accepted a client without a certificate"; fi
mosquitto_stop

# --- helpers the agent tests use ---------------------------------------------------------------
softhsm_setup tlsself
agent_config
agent_identity dev
agent_start
identity_setup dev ec-p256
identity_files dev
cmp -s "$TLS_DIR/dev.chain.pem" "$WORK/dev.chain.pem" || fail "identity_files: chain differs from the imported one"
assert_eq "$(id_counter dev signatures)" 0 "signatures before any"
make_cv13 "$WORK/cv" 32
sign_verify dev ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev.pub.pem"
assert_eq "$(id_counter dev signatures)" 1 "signatures after one"
assert_eq "$(id_counter dev refused)" 0 "refusals"
agent_stop
log "PASS"
