#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# DTLS 1.2 (CoAP/LwM2M devices) through the provider under the default
# sign-policy (tls-client): openssl s_client -dtls1_2 with -key/-cert
# agent:NAME against openssl s_server -dtls1_2 -Verify 1 -verify_return_error,
# EC and RSA, with and without the cookie exchange (-listen: the first
# ClientHello and the HelloVerifyRequest are not in the signed transcript).
# The server must have received the client's line (the handshake, with the
# certificate verified, completed) and seen the identity's certificate; the
# agent must have signed. A real DTLS transcript with a HelloVerifyRequest
# put back into it is refused through the socket.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_cmd python3
need_provider

softhsm_setup tlsdtls
testca_init
server_cert_setup
agent_config
agent_identity dtls-ec
agent_identity dtls-rsa
agent_start
identity_setup dtls-ec ec-p256
identity_setup dtls-rsa rsa-2048
identity_files dtls-ec
identity_files dtls-rsa
_build_libs_path
export MTLS_AGENT_SOCK=$SOCK
PROV=(-provider-path "$PROVIDER_DIR" -provider default -provider mtlsagent)

# dtls_roundtrip ID [S_SERVER_ARGS...]: one DTLS 1.2 handshake and one line.
N=0
dtls_roundtrip() {
	local id=$1 port log fifo pid line before rc=0
	shift
	N=$((N + 1))
	log=$TLS_DIR/dtls-server.$N.log
	fifo=$TLS_DIR/dtls-server.$N.in
	line="dtls-$(rand_token)"
	port=$(free_port)
	rm -f "$fifo"
	mkfifo "$fifo"
	# s_server ends at stdin EOF: its stdin is a FIFO held open until the client is done.
	"${CLEAN_ENV[@]}" openssl s_server -dtls1_2 -accept "127.0.0.1:$port" -naccept 1 -Verify 1 \
		-verify_return_error -CAfile "$CLIENT_CA" -cert "$SRV_CERT" -key "$SRV_KEY" "$@" \
		<"$fifo" >"$log" 2>&1 &
	pid=$!
	bg_track "$pid"
	exec 7>"$fifo"
	wait_until 10 grep -qs '^ACCEPT' "$log" || { show_log "$log"; fail "DTLS s_server did not start"; }
	before=$(id_counter "$id" signatures)
	{ printf '%s\n' "$line"; sleep 2; } |
		tls_timeout openssl s_client -dtls1_2 -connect "127.0.0.1:$port" -CAfile "$SRV_CA" \
			-verify_return_error "${PROV[@]}" -key "agent:$id" -cert "agent:$id" \
			>"$TLS_DIR/dtls-client.out" 2>"$TLS_DIR/dtls-client.err" || rc=$?
	exec 7>&-
	wait_until 10 grep -qs "^$line\$" "$log" || true
	_stop_pid "$pid"
	wait "$pid" 2>/dev/null || true
	if ! grep -q "^$line\$" "$log"; then
		show_log "$TLS_DIR/dtls-client.err" 20
		show_log "$log" 30
		fail "$id DTLS 1.2 ($*): the server did not receive the client's line (s_client exit $rc)"
	fi
	assert_contains "$(grep '^subject=' "$log")" "CN = $id" "$id DTLS 1.2: client certificate the server saw"
	assert_contains "$(cat "$TLS_DIR/dtls-client.out")" "Protocol  : DTLSv1.2" "$id: protocol"
	[ "$(id_counter "$id" signatures)" -gt "$before" ] ||
		fail "$id DTLS 1.2: the handshake worked but the agent made no signature"
	log "ok: $id DTLS 1.2 ${*:-(no cookie exchange)}: $(grep -m1 '^Peer signature type' "$TLS_DIR/dtls-client.out" || true)"
}

for id in dtls-ec dtls-rsa; do
	dtls_roundtrip "$id"
	dtls_roundtrip "$id" -listen
done

# A DTLS-shaped blob that is not a client transcript: a real one (from the
# unit vectors) with the HelloVerifyRequest put back after its ClientHello.
V=${top_srcdir:-$(dirname "$0")/../..}/tests/vectors/tls12/ossl-dtls.bin
ch_len=$(($(od -An -tu1 -j1 -N3 "$V" | awk '{print $1 * 65536 + $2 * 256 + $3}') + 12))
{
	head -c "$ch_len" "$V"
	u8 3; u24 3; u16 0; u24 0; u24 3; u16 0xfeff; u8 0
	tail -c +$((ch_len + 1)) "$V"
} >"$WORK/dtls-hvr.bin"
assert_eq "$(stat -c %s "$WORK/dtls-hvr.bin")" $(($(stat -c %s "$V") + 15)) "forged DTLS blob length"
sign_verify dtls-ec ecdsa_secp256r1_sha256 "$V" "$WORK/dtls-ec.pub.pem"
assert_fails ctl sign dtls-ec --scheme ecdsa_secp256r1_sha256 --in "$WORK/dtls-hvr.bin" --out "$WORK/sig"
assert_contains "$LAST_ERR" "HelloVerifyRequest" "refusal of a transcript holding a HelloVerifyRequest"

agent_stop
log "PASS"
