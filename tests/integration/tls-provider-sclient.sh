#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# openssl s_client with the provider loaded on its command line and the key
# and certificate named by the provider's store URI:
#   openssl s_client -provider-path DIR -provider default -provider mtlsagent \
#       -key agent:NAME -cert agent:NAME -connect 127.0.0.1:PORT
# (no openssl.cnf naming the provider; the socket from MTLS_AGENT_SOCK), and
# with the key reference file through openssl.cnf. The server (s_server
# -Verify 1 -verify_return_error -www) must have verified the certificate
# ("Verify return code: 0 (ok)" on its page) and seen the identity, EC and
# RSA, TLS 1.3 and 1.2; the agent must have signed. An unknown identity name
# fails to load.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_cmd python3
need_provider

softhsm_setup tlssclient
testca_init
server_cert_setup
agent_config
agent_identity sc-ec
agent_identity sc-rsa
agent_start
identity_setup sc-ec ec-p256
identity_setup sc-rsa rsa-2048
identity_files sc-ec
identity_files sc-rsa
_build_libs_path
export MTLS_AGENT_SOCK=$SOCK
PROV=(-provider-path "$PROVIDER_DIR" -provider default -provider mtlsagent)

s_server_start
for id in sc-ec sc-rsa; do
	for v in -tls1_3 -tls1_2; do
		before=$(id_counter "$id" signatures)
		subj=$(s_client_identity "${PROV[@]}" -key "agent:$id" -cert "agent:$id" "$v")
		assert_cn "$subj" "$id" "$id $v (agent: URI): the server saw"
		assert_eq "$(cert_serial "$TLS_DIR/peer.pem")" "$(cert_serial "$TLS_DIR/$id.chain.pem")" \
			"$id $v (agent: URI): serial the server saw"
		assert_eq "$(page_protocol "$TLS_DIR/sclient.out")" "TLSv$(printf '%s' "${v#-tls}" | tr _ .)" "$id $v: protocol"
		[ "$(id_counter "$id" signatures)" -gt "$before" ] ||
			fail "$id $v (agent: URI): the handshake worked but the agent made no signature"
		log "ok: $id $v: -key agent:$id -cert agent:$id: $(page_peer_sig "$TLS_DIR/sclient.out")"
	done
done

# The key by URI, the certificate chain from a file.
subj=$(s_client_identity "${PROV[@]}" -key agent:sc-ec -cert "$TLS_DIR/sc-ec.chain.pem")
assert_cn "$subj" sc-ec "-key agent:sc-ec -cert FILE: the server saw"

# An identity the agent does not have: s_client cannot load the key.
if s_client_get "${PROV[@]}" -key agent:no-such-identity -cert "$TLS_DIR/sc-ec.chain.pem"; then
	grep -q '^Client certificate' "$TLS_DIR/sclient.out" &&
		fail "s_client with -key agent:no-such-identity got a verified handshake"
fi
log "ok: agent:no-such-identity: $(grep -v '^ *$' "$TLS_DIR/sclient.err" | head -n 3 | tr '\n' ' ')"

# The key reference file through openssl.cnf (no -provider options).
provider_env
for id in sc-ec sc-rsa; do
	subj=$(s_client_identity -key "$TLS_DIR/$id.keyref.pem" -cert "$TLS_DIR/$id.chain.pem")
	assert_cn "$subj" "$id" "$id (key reference file): the server saw"
	log "ok: $id: -key $id.keyref.pem (openssl.cnf)"
done
s_server_stop

agent_stop
log "PASS"
