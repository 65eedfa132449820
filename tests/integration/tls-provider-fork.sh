#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# Fork through the provider: a Python (ssl module, system OpenSSL 3) process
# loads the key reference file through openssl.cnf, completes one mTLS
# handshake, then forks 8 children that each complete their own against
# openssl s_server -Verify 1 -verify_return_error, EC and RSA. Every child
# must get the server's page with the verified client certificate; the
# agent must have signed for each handshake.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_cmd python3
need_provider

softhsm_setup tlsfork
testca_init
server_cert_setup
agent_config
agent_identity fk-ec
agent_identity fk-rsa
agent_start
identity_setup fk-ec ec-p256
identity_setup fk-rsa rsa-2048
identity_files fk-ec
identity_files fk-rsa

cat >"$TLS_DIR/fork.py" <<'EOF'
# python3 fork.py PORT CA CERT KEY N
import os, socket, ssl, sys

port, ca, cert, key, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)  # the key reference file, decoded by the provider


def get():
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            t.sendall(b"GET / HTTP/1.0\r\n\r\n")
            page = b""
            while True:
                d = t.recv(65536)
                if not d:
                    break
                page += d
    return page


def verified(page):
    return b"Client certificate" in page and b"Verify return code: 0 (ok)" in page


if not verified(get()):
    sys.exit("parent: no verified client certificate on the page")
pids = []
for i in range(n):
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if verified(get()) else 3)
        except Exception as e:  # one line for the log, then a failing status
            print(f"child {i}: {e}", file=sys.stderr)
            os._exit(4)
    pids.append(pid)
bad = sum(1 for pid in pids if os.waitpid(pid, 0)[1] != 0)
print(f"{n - bad} of {n} children completed mTLS")
sys.exit(1 if bad else 0)
EOF

provider_env
s_server_start
for id in fk-ec fk-rsa; do
	before=$(id_counter "$id" signatures)
	rc=0
	out=$(timeout -k 5 120 python3 "$TLS_DIR/fork.py" "$S_SERVER_PORT" "$SRV_CA" \
		"$TLS_DIR/$id.chain.pem" "$TLS_DIR/$id.keyref.pem" 8 2>"$TLS_DIR/fork.err") || rc=$?
	if [ "$rc" -ne 0 ]; then
		show_log "$TLS_DIR/fork.err" 20
		show_log "$S_SERVER_LOG" 20
		fail "$id: fork test failed (exit $rc): $out"
	fi
	assert_eq "$out" "8 of 8 children completed mTLS" "$id fork test"
	after=$(id_counter "$id" signatures)
	[ "$after" -ge $((before + 9)) ] ||
		fail "$id: 9 handshakes but the agent counted $((after - before)) signatures"
	log "ok: $id: parent + 8 forked children completed mTLS ($((after - before)) signatures)"
done
s_server_stop

agent_stop
log "PASS"
