#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# Unmodified curl does mTLS with a key in the agent: the OpenSSL provider
# "mtlsagent" is activated by an openssl.cnf (default first, then mtlsagent)
# and curl is given the identity's key reference file (mtls-agentctl keyref)
# as its ordinary --key. Against openssl s_server -Verify 1 (the server must
# verify the chain), for EC P-256, EC P-384 and RSA-2048, TLS 1.3 and 1.2; for
# RSA also PKCS#1 (server -client_sigalgs RSA+SHA256) and PSS with SHA-384
# (-client_sigalgs rsa_pss_rsae_sha384). Each handshake must present the
# identity's certificate, verified by the server, and be signed by the agent
# (its signature counter grows). A server that trusts only another CA refuses
# the same client.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_tls_cmd curl
need_cmd python3
need_provider

softhsm_setup tlscurl
testca_init
server_cert_setup
agent_config
IDS="p256 p384 rsa2048"
for id in $IDS; do
	agent_identity "$id"
done
agent_start
identity_setup p256 ec-p256
identity_setup p384 ec-p384
identity_setup rsa2048 rsa-2048
for id in $IDS; do
	identity_files "$id"
done
provider_env

# get ID EXPECTED_PROTOCOL EXPECTED_SIG_ERE [CURL_ARGS...]: one handshake with
# ID's key reference file; the server must have seen and verified ID's
# certificate, over EXPECTED_PROTOCOL, signed as EXPECTED_SIG_ERE ("TYPE
# DIGEST"), and the agent must have made the signature.
get() {
	local id=$1 proto=$2 sig=$3 before subj
	shift 3
	before=$(id_counter "$id" signatures)
	subj=$(https_get_identity --cert "$TLS_DIR/$id.chain.pem" --key "$TLS_DIR/$id.keyref.pem" "$@")
	assert_cn "$subj" "$id" "$id ${*:-(defaults)}: the server saw"
	assert_eq "$(cert_serial "$TLS_DIR/peer.pem")" "$(cert_serial "$TLS_DIR/$id.chain.pem")" \
		"$id ${*:-(defaults)}: serial of the certificate the server saw"
	assert_eq "$(page_protocol)" "$proto" "$id ${*:-(defaults)}: protocol"
	assert_match "$(page_peer_sig)" "$sig" "$id ${*:-(defaults)}: client signature the server saw"
	[ "$(id_counter "$id" signatures)" -gt "$before" ] ||
		fail "$id ${*:-(defaults)}: the handshake worked but the agent made no signature"
	log "ok: $id ${*:-(defaults)}: $proto, $(page_peer_sig)"
}

# --- TLS 1.3 and 1.2, default server ---------------------------------------------------------
s_server_start
get p256 TLSv1.3 '^ECDSA SHA256$'
get p256 TLSv1.2 '^ECDSA SHA(256|384|512)$' --tls-max 1.2
# TLS_AES_256_GCM_SHA384: the CertificateVerify content carries a 48-byte transcript hash.
get p256 TLSv1.3 '^ECDSA SHA256$' --tls13-ciphers TLS_AES_256_GCM_SHA384
assert_eq "$(page_cipher)" TLS_AES_256_GCM_SHA384 "cipher suite"
get p384 TLSv1.3 '^ECDSA SHA384$'
get p384 TLSv1.2 '^ECDSA SHA(256|384|512)$' --tls-max 1.2
get rsa2048 TLSv1.3 '^RSA-PSS SHA(256|384|512)$'
get rsa2048 TLSv1.3 '^RSA-PSS SHA(256|384|512)$' --tls13-ciphers TLS_AES_256_GCM_SHA384
assert_eq "$(page_cipher)" TLS_AES_256_GCM_SHA384 "cipher suite"
# OpenSSL signs with RSA-PSS in TLS 1.2 too unless the server asks otherwise.
get rsa2048 TLSv1.2 '^RSA-PSS SHA(256|384|512)$' --tls-max 1.2
s_server_stop

# --- RSA PKCS#1 v1.5 (TLS 1.2 only: TLS 1.3 forbids it in CertificateVerify) ---------------------
s_server_start -client_sigalgs RSA+SHA256
get rsa2048 TLSv1.2 '^RSA SHA256$' --tls-max 1.2
s_server_stop

# --- RSA-PSS with SHA-384 ----------------------------------------------------------------------------
s_server_start -client_sigalgs rsa_pss_rsae_sha384
get rsa2048 TLSv1.3 '^RSA-PSS SHA384$'
get rsa2048 TLSv1.2 '^RSA-PSS SHA384$' --tls-max 1.2
s_server_stop

# --- a server that trusts only an unrelated CA refuses the client ------------------------------------
s_server_start --client-ca "$OTHER_CA"
for id in p256 rsa2048; do
	for v in 1.3 1.2; do
		if s_server_get --cert "$TLS_DIR/$id.chain.pem" --key "$TLS_DIR/$id.keyref.pem" --tls-max "$v"; then
			fail "$id: a server trusting only the unrelated CA accepted the handshake (TLS $v)"
		fi
		log "ok: $id refused by a server trusting another CA (TLS $v): $CURL_ERR"
	done
done
grep -qiE 'verify error|unable to get|unknown ca' "$S_SERVER_LOG" ||
	fail "the server trusting another CA logged no verification error: $(cat "$S_SERVER_LOG")"
s_server_stop

agent_stop
log "PASS"
