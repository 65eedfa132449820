#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# curl with a key in the agent (provider "mtlsagent" + key reference file)
# against nginx with ssl_verify_client on: nginx must report
# $ssl_client_verify = SUCCESS and the identity's subject DN and serial, for an
# EC and an RSA identity, over TLS 1.3 and TLS 1.2; nginx must refuse the same
# client when it trusts only an unrelated CA.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_tls_cmd curl nginx
need_cmd python3
need_provider

softhsm_setup tlsnginx
testca_init
server_cert_setup
agent_config
agent_identity gw-ec
agent_identity gw-rsa
agent_start
identity_setup gw-ec ec-p256 "/CN=gw-ec/O=mtls-agent tests/OU=nginx"
identity_setup gw-rsa rsa-2048 "/CN=gw-rsa/O=mtls-agent tests/OU=nginx"
identity_files gw-ec
identity_files gw-rsa
provider_env
nginx_start

for id in gw-ec gw-rsa; do
	want_dn=$(cert_subject "$TLS_DIR/$id.chain.pem")
	want_serial=$(cert_serial "$TLS_DIR/$id.chain.pem")
	for v in 1.3 1.2; do
		before=$(id_counter "$id" signatures)
		got=$(nginx_get_identity --cert "$TLS_DIR/$id.chain.pem" --key "$TLS_DIR/$id.keyref.pem" --tls-max "$v")
		IFS='|' read -r dn serial proto <<<"$got"
		assert_eq "$dn" "$want_dn" "$id TLS $v: \$ssl_client_s_dn"
		assert_cn "$dn" "$id" "$id TLS $v: \$ssl_client_s_dn"
		assert_eq "$(printf '%s' "$serial" | tr 'a-f' 'A-F')" "$want_serial" "$id TLS $v: \$ssl_client_serial"
		assert_eq "$proto" "TLSv$v" "$id TLS $v: \$ssl_protocol"
		[ "$(id_counter "$id" signatures)" -gt "$before" ] ||
			fail "$id TLS $v: nginx accepted the client but the agent made no signature"
		log "ok: $id TLS $v: SUCCESS $dn"
	done
done
assert_eq "$(grep -vc '^SUCCESS|' "$NGINX_ACCESS_LOG" || true)" 0 "requests nginx did not verify"
nginx_stop

# nginx trusting only an unrelated CA: the same client is refused.
nginx_start --client-ca "$OTHER_CA"
for id in gw-ec gw-rsa; do
	n0=$(nginx_requests)
	if nginx_get --cert "$TLS_DIR/$id.chain.pem" --key "$TLS_DIR/$id.keyref.pem"; then
		fail "$id: nginx trusting only the unrelated CA answered: $(cat "$TLS_DIR/nginx.out")"
	fi
	line=$(nginx_logged_request "$n0" '^FAILED') ||
		fail "$id: nginx access log for a client of an untrusted CA: not FAILED: $line"
	log "ok: $id refused by nginx trusting another CA: $CURL_ERR"
done
nginx_stop

agent_stop
log "PASS"
