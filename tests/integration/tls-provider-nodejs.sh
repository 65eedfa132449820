#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# Node.js (https.request) with the key reference file as its `key` and the
# openssl.cnf the project ships, unchanged: Node reads `nodejs_conf`, not
# `openssl_conf`, and the shipped file names the same section under both.
# The module is found through OPENSSL_MODULES (the shipped file leaves the
# module path commented out in its template). EC P-256 and RSA-2048, TLS 1.3
# and 1.2, against openssl s_server -Verify 1: the server verified the
# certificate and the agent signed.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_cmd python3
need_cmd node
need_provider

SHIPPED_CNF=$(cd "$(dirname "$0")/../../engine" && pwd)/mtls-agent-openssl.cnf
[ -f "$SHIPPED_CNF" ] || fail "shipped openssl.cnf template not found: $SHIPPED_CNF"
grep -q '^nodejs_conf = ' "$SHIPPED_CNF" || fail "the shipped openssl.cnf has no nodejs_conf line"

softhsm_setup tlsnode
testca_init
server_cert_setup
agent_config
agent_identity node-ec
agent_identity node-rsa
agent_start
identity_setup node-ec ec-p256
identity_setup node-rsa rsa-2048
identity_files node-ec
identity_files node-rsa
_build_libs_path

cat >"$TLS_DIR/client.js" <<'EOF'
// node client.js PORT CA CERT KEY MAXVERSION: GET / over mTLS, page on stdout.
'use strict';
const fs = require('fs');
const https = require('https');
const [port, ca, cert, key, maxVersion] = process.argv.slice(2);
const req = https.request({
  host: '127.0.0.1', port: Number(port), path: '/', method: 'GET',
  ca: fs.readFileSync(ca), cert: fs.readFileSync(cert), key: fs.readFileSync(key),
  maxVersion, agent: false,
}, (res) => {
  let body = '';
  res.setEncoding('latin1');
  res.on('data', (d) => { body += d; });
  res.on('end', () => { process.stdout.write(body); });
});
req.on('error', (e) => { console.error(`node: ${e.code || ''} ${e.message}`); process.exit(1); });
req.end();
EOF

# OPENSSL_MODULES: where "mtlsagent" (no module line) is looked up.
node_get() { # NAME MAXVERSION
	local rc=0
	env OPENSSL_CONF="$SHIPPED_CNF" OPENSSL_MODULES="$PROVIDER_DIR" MTLS_AGENT_SOCK="$SOCK" \
		timeout -k 5 "$MTLS_TLS_TIMEOUT" node "$TLS_DIR/client.js" "$S_SERVER_PORT" "$SRV_CA" \
		"$TLS_DIR/$1.chain.pem" "$TLS_DIR/$1.keyref.pem" "$2" \
		>"$TLS_DIR/page.txt" 2>"$TLS_DIR/node.err" || rc=$?
	if [ "$rc" -ne 0 ]; then
		show_log "$TLS_DIR/node.err" 20
		show_log "$S_SERVER_LOG" 20
		fail "node https.request as $1 ($2) failed (exit $rc)"
	fi
}

s_server_start
for id in node-ec node-rsa; do
	for v in TLSv1.3 TLSv1.2; do
		before=$(id_counter "$id" signatures)
		node_get "$id" "$v"
		subj=$(page_identity "$TLS_DIR/page.txt")
		assert_cn "$subj" "$id" "node $id $v: the server saw"
		assert_eq "$(page_protocol)" "$v" "node $id: protocol"
		[ "$(id_counter "$id" signatures)" -gt "$before" ] ||
			fail "node $id $v: the handshake worked but the agent made no signature"
		log "ok: node https.request as $id, $v: $(page_peer_sig)"
	done
done
s_server_stop

agent_stop
log "PASS"
