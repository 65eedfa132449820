#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# The real-client matrix with identities whose keys live in a (private,
# simulated) TPM: unmodified curl and mosquitto_pub/sub, given the identity's
# key reference file through the OpenSSL provider "mtlsagent", do mutual TLS
# against openssl s_server -Verify 1, nginx (ssl_verify_client on) and a
# mosquitto broker (require_certificate true), over TLS 1.3 and 1.2, with an
# EC P-256 key and an RSA-2048 key (RSA-PSS by default, PKCS#1 v1.5 when the
# server forces it). Each handshake must present the identity's certificate,
# verified by the server, signed in the TPM (the identity's counter grows).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../tpm-lib.sh
. "$(dirname "$0")/../tpm-lib.sh"
need_tls_cmd curl nginx mosquitto mosquitto_pub mosquitto_sub
need_cmd python3
need_provider

testca_init
server_cert_setup
swtpm_start
tpm_agent_config
tpm_identity tpm-ec
tpm_identity tpm-rsa
agent_start
identity_setup tpm-ec ec-p256
identity_setup tpm-rsa rsa-2048
identity_files tpm-ec
identity_files tpm-rsa
provider_env

signed() { # ID BEFORE WHAT
	[ "$(id_counter "$1" signatures)" -gt "$2" ] ||
		fail "$3: the handshake worked but the agent made no signature for $1"
}

# --- openssl s_server -Verify 1 --------------------------------------------------------------
# get ID PROTOCOL SIG_ERE [CURL_ARGS...]
get() {
	local id=$1 proto=$2 sig=$3 before subj what
	shift 3
	what="s_server $id ${*:-(defaults)}"
	before=$(id_counter "$id" signatures)
	subj=$(https_get_identity --cert "$TLS_DIR/$id.chain.pem" --key "$TLS_DIR/$id.keyref.pem" "$@")
	assert_cn "$subj" "$id" "$what: the server saw"
	assert_eq "$(cert_serial "$TLS_DIR/peer.pem")" "$(cert_serial "$TLS_DIR/$id.chain.pem")" \
		"$what: serial of the certificate the server saw"
	assert_eq "$(page_protocol)" "$proto" "$what: protocol"
	assert_match "$(page_peer_sig)" "$sig" "$what: client signature the server saw"
	signed "$id" "$before" "$what"
	log "ok: $what: $proto, $(page_peer_sig)"
}

s_server_start
get tpm-ec TLSv1.3 '^ECDSA SHA256$'
get tpm-ec TLSv1.2 '^ECDSA SHA(256|384|512)$' --tls-max 1.2
get tpm-rsa TLSv1.3 '^RSA-PSS SHA(256|384|512)$'
get tpm-rsa TLSv1.3 '^RSA-PSS SHA(256|384|512)$' --tls13-ciphers TLS_AES_256_GCM_SHA384
get tpm-rsa TLSv1.2 '^RSA-PSS SHA(256|384|512)$' --tls-max 1.2
s_server_stop

# PKCS#1 v1.5, forced by the server (TLS 1.2 only: TLS 1.3 forbids it in CertificateVerify).
s_server_start -client_sigalgs RSA+SHA256
get tpm-rsa TLSv1.2 '^RSA SHA256$' --tls-max 1.2
s_server_stop
s_server_start -client_sigalgs rsa_pss_rsae_sha384
get tpm-rsa TLSv1.3 '^RSA-PSS SHA384$'
s_server_stop

# --- nginx, ssl_verify_client on ---------------------------------------------------------------
nginx_start
for id in tpm-ec tpm-rsa; do
	want_serial=$(cert_serial "$TLS_DIR/$id.chain.pem")
	for v in 1.3 1.2; do
		before=$(id_counter "$id" signatures)
		got=$(nginx_get_identity --cert "$TLS_DIR/$id.chain.pem" --key "$TLS_DIR/$id.keyref.pem" --tls-max "$v")
		IFS='|' read -r dn serial proto <<<"$got"
		assert_cn "$dn" "$id" "nginx $id TLS $v: \$ssl_client_s_dn"
		assert_eq "$(printf '%s' "$serial" | tr 'a-f' 'A-F')" "$want_serial" "nginx $id TLS $v: serial"
		assert_eq "$proto" "TLSv$v" "nginx $id TLS $v: \$ssl_protocol"
		signed "$id" "$before" "nginx $id TLS $v"
		log "ok: nginx $id TLS $v: SUCCESS $dn"
	done
done
assert_eq "$(grep -vc '^SUCCESS|' "$NGINX_ACCESS_LOG" || true)" 0 "requests nginx did not verify"
nginx_stop

# --- mosquitto, require_certificate true ----------------------------------------------------------
mosquitto_start
EC=(--cert "$TLS_DIR/tpm-ec.chain.pem" --key "$TLS_DIR/tpm-ec.keyref.pem")
RSA=(--cert "$TLS_DIR/tpm-rsa.chain.pem" --key "$TLS_DIR/tpm-rsa.keyref.pem")
for v in tlsv1.3 tlsv1.2; do
	ec_before=$(id_counter tpm-ec signatures)
	rsa_before=$(id_counter tpm-rsa signatures)
	mqtt_roundtrip "${EC[@]}" --tls-version "$v" -- "${RSA[@]}" --tls-version "$v"
	assert_eq "$MQTT_PUB_USER" tpm-ec "mqtt $v: the broker's username for the publisher"
	assert_eq "$MQTT_SUB_USER" tpm-rsa "mqtt $v: the broker's username for the subscriber"
	signed tpm-ec "$ec_before" "mqtt $v publisher"
	signed tpm-rsa "$rsa_before" "mqtt $v subscriber"
	log "ok: mqtt $v: tpm-ec -> broker -> tpm-rsa"
done
mosquitto_stop

# --- control: a server trusting only another CA refuses the same TPM client ------------------------
s_server_start --client-ca "$OTHER_CA"
if s_server_get --cert "$TLS_DIR/tpm-ec.chain.pem" --key "$TLS_DIR/tpm-ec.keyref.pem"; then
	fail "a server trusting only the unrelated CA accepted tpm-ec"
fi
s_server_stop

agent_stop
swtpm_stop
log "PASS"
