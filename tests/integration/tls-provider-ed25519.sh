#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# An Ed25519 identity end to end through the provider, TLS 1.3, default
# sign-policy (tls-client): the agent signs the TLS 1.3 client
# CertificateVerify content with PureEdDSA.
#   - openssl s_client -key agent:NAME -cert agent:NAME (STORE) and curl with
#     the key reference file through openssl.cnf (DECODER) against
#     openssl s_server -Verify 1: the server verified the certificate and saw an
#     Ed25519 client signature; the agent's signature counter went up.
#   - openssl s_client against gnutls-serv (GnuTLS verifies the EdDSA
#     CertificateVerify), run inside `unshare -n` because gnutls-serv cannot
#     bind to 127.0.0.1 only.
#   - The engine refuses the key with a message that names the provider.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_cmd python3
need_tls_cmd curl
need_cmd gnutls-serv
need_cmd unshare
need_cmd ip
need_provider

softhsm_setup tlsed
testca_init
server_cert_setup
agent_config
agent_identity ed
agent_start
identity_setup ed ed25519
identity_files ed
_build_libs_path
export MTLS_AGENT_SOCK=$SOCK
PROV=(-provider-path "$PROVIDER_DIR" -provider default -provider mtlsagent)

# 1. openssl s_client, key and certificate from the store URI.
s_server_start -tls1_3
before=$(id_counter ed signatures)
subj=$(s_client_identity "${PROV[@]}" -key agent:ed -cert agent:ed)
assert_cn "$subj" ed "s_client -key agent:ed: the server saw"
assert_eq "$(page_protocol "$TLS_DIR/sclient.out")" TLSv1.3 "s_client agent:ed: protocol"
# s_client prints the server's signature first; the server's page says what the client used.
grep -qx 'Peer signature type: ed25519' "$TLS_DIR/sclient.out" ||
	fail "s_client agent:ed: the server's page shows no Ed25519 client signature"
[ "$(id_counter ed signatures)" -gt "$before" ] ||
	fail "s_client agent:ed: handshake worked but the agent made no signature"
log "ok: s_client -key agent:ed: Ed25519 client signature, TLS 1.3"

# 2. curl with the key reference file through openssl.cnf.
provider_env
before=$(id_counter ed signatures)
subj=$(https_get_identity --cert "$TLS_DIR/ed.chain.pem" --key "$TLS_DIR/ed.keyref.pem")
assert_cn "$subj" ed "curl --key ed.keyref.pem: the server saw"
assert_eq "$(page_protocol)" TLSv1.3 "curl ed25519: protocol"
assert_match "$(page_peer_sig)" '^ed25519' "curl ed25519: client signature"
[ "$(id_counter ed signatures)" -gt "$before" ] ||
	fail "curl ed25519: handshake worked but the agent made no signature"
log "ok: curl --key ed.keyref.pem: $(page_peer_sig)"
s_server_stop

# 3. GnuTLS as the server, in a private network namespace.
cat >"$TLS_DIR/gnutls.sh" <<'EOF'
#!/bin/bash
# $1 server cert, $2 server key, $3 client CA, $4 server CA, $5 out dir; s_client args follow.
set -u
srv_cert=$1 srv_key=$2 ca=$3 srv_ca=$4 out=$5
shift 5
ip link set lo up
env -u OPENSSL_CONF -u MTLS_AGENT_SOCK gnutls-serv --port 4433 -r --verify-client-cert \
	--x509certfile "$srv_cert" --x509keyfile "$srv_key" --x509cafile "$ca" \
	--priority 'NORMAL:-VERS-ALL:+VERS-TLS1.3' >"$out/gnutls-serv.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
	ss -ltn 2>/dev/null | grep -q ':4433 ' && break
	sleep 0.1
done
rc=0
# The echo server never closes: stdin stays open a moment, then EOF ends s_client.
{
	printf 'hello-gnutls\n'
	sleep 1
} | timeout -k 5 30 openssl s_client -connect 127.0.0.1:4433 -CAfile "$srv_ca" \
	-verify_return_error "$@" >"$out/gnutls-client.out" 2>"$out/gnutls-client.err" || rc=$?
sleep 0.3
kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
exit "$rc"
EOF
chmod +x "$TLS_DIR/gnutls.sh"
before=$(id_counter ed signatures)
rc=0
unshare -n "$TLS_DIR/gnutls.sh" "$SRV_CERT" "$SRV_KEY" "$CLIENT_CA" "$SRV_CA" "$TLS_DIR" \
	"${PROV[@]}" -key agent:ed -cert agent:ed || rc=$?
if [ "$rc" -ne 0 ]; then
	show_log "$TLS_DIR/gnutls-client.err" 20
	show_log "$TLS_DIR/gnutls-serv.log" 30
	fail "s_client with agent:ed against gnutls-serv failed (exit $rc)"
fi
# gnutls-serv reports the session and the client certificate it verified.
for want in 'Client Signature: EdDSA-Ed25519' 'Version: TLS1.3' 'CN=ed' 'certificate is trusted'; do
	grep -qi -- "$want" "$TLS_DIR/gnutls-serv.log" || {
		show_log "$TLS_DIR/gnutls-serv.log" 80
		fail "gnutls-serv log lacks '$want'"
	}
done
[ "$(id_counter ed signatures)" -gt "$before" ] ||
	fail "gnutls-serv handshake worked but the agent made no signature"
log "ok: gnutls-serv verified the Ed25519 client ($(grep -m1 -i 'trusted' "$TLS_DIR/gnutls-serv.log"))"

# 4. The engine cannot carry EdDSA: its error says to use the provider.
if [ -f "$top_builddir/engine/.libs/mtlsagent-engine.so" ]; then
	unset OPENSSL_CONF
	engine_env
	rc=0
	openssl pkey -engine mtlsagent -inform engine -in "$TLS_DIR/ed.keyref.pem" -pubout \
		>"$TLS_DIR/eng.out" 2>"$TLS_DIR/eng.err" || rc=$?
	[ "$rc" -ne 0 ] || fail "the engine loaded an Ed25519 key"
	assert_contains "$(cat "$TLS_DIR/eng.err")" "Ed25519 keys cannot be used through an engine" \
		"engine error"
	assert_contains "$(cat "$TLS_DIR/eng.err")" "mtlsagent provider" "engine error"
	log "ok: engine refuses Ed25519 and names the provider"
fi

agent_stop
log "PASS"
