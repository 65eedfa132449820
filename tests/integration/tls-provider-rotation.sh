#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# Key rotation under a long-running client. The client is `openssl s_time
# -new`: ONE process with ONE SSL_CTX, which loads the certificate and the key
# reference file once at start-up (SSL_CTX_use_PrivateKey_file through the
# provider) and then, for the given number of seconds, opens connection after
# connection, each a new full handshake (-new: no session resumption; nginx
# also has no session cache or tickets), each sending GET / so nginx
# (ssl_verify_client on) logs the verification result and the serial it saw.
# s_time exits non-zero as soon as one handshake fails on its side; nginx's
# access log shows any the server refused. (Repeated `openssl s_client
# -reconnect` would resume the session and sign nothing; curl builds a new
# SSL_CTX and reloads its key files for every connection, so it is not a
# client holding an old key.)
#
# Two such clients (TLS 1.3 and TLS 1.2) run while the identity gets a new key
# and certificate (keygen, csr, test CA, import-cert). Every handshake of
# theirs must succeed with the OLD certificate, also well after the import
# (the agent keeps the previous key for clients that loaded it); a client
# started afterwards with the new files presents the NEW certificate.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_tls_cmd curl nginx
need_cmd python3
need_provider
# How long each long-running client keeps handshaking.
CLIENT_SECONDS=${MTLS_ROTATION_CLIENT_SECONDS:-20}
# Handshakes each client must complete after the new certificate is imported.
AFTER_MIN=10

softhsm_setup tlsrot
testca_init
server_cert_setup
agent_config
agent_identity rot
agent_start
identity_setup rot ec-p256 "/CN=rot/O=mtls-agent tests"
identity_files rot
cp "$TLS_DIR/rot.keyref.pem" "$TLS_DIR/old.keyref.pem"
cp "$TLS_DIR/rot.chain.pem" "$TLS_DIR/old.chain.pem"
OLD_SERIAL=$(cert_serial "$TLS_DIR/old.chain.pem")
provider_env
nginx_start

# Control: the old files work.
IFS='|' read -r _ serial _ <<<"$(nginx_get_identity --cert "$TLS_DIR/old.chain.pem" --key "$TLS_DIR/old.keyref.pem")"
assert_eq "$(printf '%s' "$serial" | tr 'a-f' 'A-F')" "$OLD_SERIAL" "control: serial nginx saw"

# Requests in nginx's access log over PROTO (TLSv1.2, TLSv1.3) since line FROM (exclusive).
requests_since() { # FROM PROTO
	tail -n "+$(($1 + 1))" "$NGINX_ACCESS_LOG" | awk -F'|' -v p="$2" '$4 == p' | awk 'END { print NR }'
}
# True when each client has logged at least N requests since line FROM.
both_at_least() { # FROM N
	[ "$(requests_since "$1" TLSv1.3)" -ge "$2" ] && [ "$(requests_since "$1" TLSv1.2)" -ge "$2" ]
}
# Fails with the clients' output if either of them has exited.
clients_alive() {
	local v
	for v in 1_3 1_2; do
		kill -0 "${STIME_PID[$v]}" 2>/dev/null && continue
		show_log "$TLS_DIR/s_time.$v.out" 20
		fail "the long-running client (s_time -tls$v) ended early$1"
	done
}

start=$(nginx_requests)
declare -A STIME_PID
for v in 1_3 1_2; do
	timeout -k 5 $((CLIENT_SECONDS + 60)) openssl s_time -connect "127.0.0.1:$NGINX_PORT" -new \
		"-tls$v" -time "$CLIENT_SECONDS" -www / -CAfile "$SRV_CA" \
		-cert "$TLS_DIR/old.chain.pem" -key "$TLS_DIR/old.keyref.pem" \
		>"$TLS_DIR/s_time.$v.out" 2>&1 </dev/null &
	STIME_PID[$v]=$!
	BG_PIDS+=("$!")
done
wait_until 20 both_at_least "$start" 3 || {
	clients_alive " before the rotation"
	fail "the long-running clients made fewer than 3 handshakes each in 20 s"
}
signed_before=$(id_counter rot signatures)

# --- the rotation, while they handshake ------------------------------------------------------------
log "rotating: keygen, csr, CA, import-cert"
assert_ok ctl keygen rot --type ec-p256
ctl csr rot --subject "/CN=rot/O=mtls-agent tests" >"$WORK/rot.new.csr" || fail "csr rot failed"
testca_issue "$WORK/rot.new.csr" "$WORK/rot.new.chain.pem"
clients_alive " during the rotation (before import-cert)"
assert_ok ctl import-cert rot "$WORK/rot.new.chain.pem"
NEW_SERIAL=$(cert_serial "$WORK/rot.new.chain.pem")
[ "$NEW_SERIAL" != "$OLD_SERIAL" ] || fail "the test CA issued the same serial twice"
at_import=$(nginx_requests)
log "new certificate imported (serial $NEW_SERIAL) after $((at_import - start)) handshakes"
clients_alive " during the rotation"

wait_until $((CLIENT_SECONDS + 10)) both_at_least "$at_import" "$AFTER_MIN" || {
	clients_alive " after the import"
	fail "the long-running clients did not complete $AFTER_MIN handshakes each after the import (rotation too slow for MTLS_ROTATION_CLIENT_SECONDS=$CLIENT_SECONDS?)"
}

# --- every handshake of the long-running clients succeeded, with the old certificate ----------------
for v in 1_3 1_2; do
	rc=0
	wait "${STIME_PID[$v]}" || rc=$?
	if [ "$rc" -ne 0 ]; then
		show_log "$TLS_DIR/s_time.$v.out" 20
		fail "the long-running client (s_time -tls$v) failed (exit $rc): a handshake failed during the rotation"
	fi
done
end=$(nginx_requests)
for v in 1_3 1_2; do
	proto=TLSv${v/_/.}
	n=$(sed -n 's/^\([0-9][0-9]*\) connections in [0-9]* real seconds.*/\1/p' "$TLS_DIR/s_time.$v.out")
	[ -n "$n" ] || fail "s_time -tls$v printed no connection count: $(cat "$TLS_DIR/s_time.$v.out")"
	assert_eq "$(requests_since "$start" "$proto")" "$n" "requests nginx logged over $proto for s_time's $n connections"
	after=$(requests_since "$at_import" "$proto")
	log "s_time -tls$v: $n handshakes, $after of them after the import"
done
bad=$(tail -n "+$((start + 1))" "$NGINX_ACCESS_LOG" | head -n "$((end - start))" |
	awk -F'|' -v s="$OLD_SERIAL" 'toupper($2) != s || $1 != "SUCCESS" || $3 != "200"' | head -n 5)
[ -z "$bad" ] || fail "handshakes of the long-running clients that nginx did not verify with the old certificate (serial $OLD_SERIAL): $bad"
[ "$(id_counter rot signatures)" -gt "$signed_before" ] || fail "the agent counted no signatures for rot during the rotation"
log "agent status for rot: generations $(ctl --json status | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("records", []):
    if r.get("name") == "rot": print(r.get("fields", {}).get("generations", "?"))' || echo '?')"

# --- a client started now presents the new certificate -------------------------------------------------
identity_files rot
assert_eq "$(cert_serial "$TLS_DIR/rot.chain.pem")" "$NEW_SERIAL" "serial of the chain mtls-agentctl cert prints after the import"
cmp -s "$TLS_DIR/rot.keyref.pem" "$TLS_DIR/old.keyref.pem" && fail "mtls-agentctl keyref still prints the old public key"
for v in 1.3 1.2; do
	IFS='|' read -r dn serial proto <<<"$(nginx_get_identity --cert "$TLS_DIR/rot.chain.pem" --key "$TLS_DIR/rot.keyref.pem" --tls-max "$v")"
	assert_cn "$dn" rot "new client TLS $v: \$ssl_client_s_dn"
	assert_eq "$(printf '%s' "$serial" | tr 'a-f' 'A-F')" "$NEW_SERIAL" "new client TLS $v: serial nginx saw"
	assert_eq "$proto" "TLSv$v" "new client TLS $v: protocol"
done
# common/keyref.h: while the agent runs, the provider takes the identity's
# CURRENT key from the agent, so a new process given the old key reference
# file and the new certificate works too.
IFS='|' read -r _ serial _ <<<"$(nginx_get_identity --cert "$TLS_DIR/rot.chain.pem" --key "$TLS_DIR/old.keyref.pem")"
assert_eq "$(printf '%s' "$serial" | tr 'a-f' 'A-F')" "$NEW_SERIAL" "old key reference file + new certificate: serial nginx saw"
nginx_stop
agent_stop
log "PASS"
