#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# The OpenSSL engine "mtlsagent", found by ENGINE_by_id through
# OPENSSL_ENGINES (no openssl.cnf), for tools that already say --engine.
# The engine sees only digests, so it needs sign-policy = any:
#   curl --engine mtlsagent --key-type ENG --key NAME --cert CHAIN
#   curl --engine mtlsagent --cert-type ENG --cert NAME --key-type ENG --key NAME
#   mosquitto_pub/sub --tls-engine mtlsagent --keyform engine --key KEYREF_FILE --cert CHAIN
#   openssl s_client -engine mtlsagent -keyform engine -key NAME -cert CHAIN
# EC and RSA (PSS, and PKCS#1 when the server asks for it), TLS 1.3 and 1.2,
# each verified by the server and signed by the agent. An identity with the
# default sign-policy fails through the engine with a message that names
# sign-policy, and the agent signs nothing for it.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_tls_cmd curl mosquitto mosquitto_pub mosquitto_sub
need_cmd python3
need_engine

softhsm_setup tlsengine
testca_init
server_cert_setup
agent_config
agent_identity eng-ec "sign-policy = any"
agent_identity eng-rsa "sign-policy = any"
agent_identity eng-default
agent_start
identity_setup eng-ec ec-p256
identity_setup eng-rsa rsa-2048
identity_setup eng-default ec-p256
for id in eng-ec eng-rsa eng-default; do
	identity_files "$id"
done
engine_env

# signed_by ID BEFORE WHAT: the agent's signature counter for ID grew since BEFORE.
signed_by() {
	[ "$(id_counter "$1" signatures)" -gt "$2" ] || fail "$3: the handshake worked but the agent made no signature for $1"
}

# --- curl --key-type ENG ----------------------------------------------------------------------------
s_server_start
for id in eng-ec eng-rsa; do
	for v in 1.3 1.2; do
		before=$(id_counter "$id" signatures)
		subj=$(https_get_identity --engine mtlsagent --key-type ENG --key "$id" \
			--cert "$TLS_DIR/$id.chain.pem" --tls-max "$v")
		assert_cn "$subj" "$id" "curl --key-type ENG $id TLS $v: the server saw"
		assert_eq "$(page_protocol)" "TLSv$v" "curl --key-type ENG $id TLS $v: protocol"
		case "$id" in
		*-rsa) sig='^RSA-PSS SHA(256|384|512)$' ;; # OpenSSL's choice unless the server asks for PKCS#1
		*) sig='^ECDSA SHA256$' ;;
		esac
		assert_match "$(page_peer_sig)" "$sig" "curl --key-type ENG $id TLS $v: client signature"
		signed_by "$id" "$before" "curl --key-type ENG $id TLS $v"
		log "ok: curl --engine --key-type ENG --key $id, TLS $v: $(page_peer_sig)"
	done
done

# --- curl --cert-type ENG (LOAD_CERT_CTRL) -------------------------------------------------------------
for id in eng-ec eng-rsa; do
	before=$(id_counter "$id" signatures)
	subj=$(https_get_identity --engine mtlsagent --cert-type ENG --cert "$id" --key-type ENG --key "$id")
	assert_cn "$subj" "$id" "curl --cert-type ENG $id: the server saw"
	assert_eq "$(cert_serial "$TLS_DIR/peer.pem")" "$(cert_serial "$TLS_DIR/$id.chain.pem")" \
		"curl --cert-type ENG $id: serial the server saw"
	signed_by "$id" "$before" "curl --cert-type ENG $id"
	log "ok: curl --engine --cert-type ENG --cert $id"
done

# --- openssl s_client -engine -keyform engine --------------------------------------------------------------
for id in eng-ec eng-rsa; do
	before=$(id_counter "$id" signatures)
	subj=$(s_client_identity -engine mtlsagent -keyform engine -key "$id" -cert "$TLS_DIR/$id.chain.pem")
	assert_cn "$subj" "$id" "s_client -engine $id: the server saw"
	signed_by "$id" "$before" "s_client -engine $id"
	log "ok: openssl s_client -engine mtlsagent -keyform engine -key $id"
done
s_server_stop

# --- RSA PKCS#1 v1.5 through the engine (RSA_METHOD, DigestInfo) ------------------------------------------
s_server_start -client_sigalgs RSA+SHA256
subj=$(https_get_identity --engine mtlsagent --key-type ENG --key eng-rsa --cert "$TLS_DIR/eng-rsa.chain.pem" --tls-max 1.2)
assert_cn "$subj" eng-rsa "curl --key-type ENG eng-rsa, PKCS#1: the server saw"
assert_eq "$(page_peer_sig)" "RSA SHA256" "curl --key-type ENG eng-rsa with -client_sigalgs RSA+SHA256: client signature"
s_server_stop
s_server_start -client_sigalgs rsa_pss_rsae_sha384
subj=$(https_get_identity --engine mtlsagent --key-type ENG --key eng-rsa --cert "$TLS_DIR/eng-rsa.chain.pem")
assert_cn "$subj" eng-rsa "curl --key-type ENG eng-rsa, PSS SHA-384: the server saw"
assert_eq "$(page_peer_sig)" "RSA-PSS SHA384" "curl --key-type ENG eng-rsa with -client_sigalgs rsa_pss_rsae_sha384: client signature"
s_server_stop

# --- mosquitto --tls-engine --keyform engine --key KEYREF_FILE -------------------------------------------
mosquitto_start
pub_before=$(id_counter eng-ec signatures)
sub_before=$(id_counter eng-rsa signatures)
mqtt_roundtrip --tls-engine mtlsagent --keyform engine --key "$TLS_DIR/eng-ec.keyref.pem" \
	--cert "$TLS_DIR/eng-ec.chain.pem" -- \
	--tls-engine mtlsagent --keyform engine --key "$TLS_DIR/eng-rsa.keyref.pem" \
	--cert "$TLS_DIR/eng-rsa.chain.pem"
assert_eq "$MQTT_PUB_USER" eng-ec "the broker's username for the publisher (engine)"
assert_eq "$MQTT_SUB_USER" eng-rsa "the broker's username for the subscriber (engine)"
signed_by eng-ec "$pub_before" "mosquitto_pub --tls-engine"
signed_by eng-rsa "$sub_before" "mosquitto_sub --tls-engine"
log "ok: mosquitto_pub/sub --tls-engine mtlsagent --keyform engine"
mosquitto_stop

# --- the default sign-policy refuses the engine -----------------------------------------------------------
s_server_start
signed=$(id_counter eng-default signatures)
if s_server_get --engine mtlsagent --key-type ENG --key eng-default --cert "$TLS_DIR/eng-default.chain.pem"; then
	fail "curl through the engine completed a handshake with eng-default (sign-policy tls-client)"
fi
log "ok: curl --engine with eng-default refused: $CURL_ERR"
if s_client_get -engine mtlsagent -keyform engine -key eng-default -cert "$TLS_DIR/eng-default.chain.pem" &&
	grep -q '^Client certificate' "$TLS_DIR/sclient.out"; then
	fail "s_client through the engine completed a handshake with eng-default (sign-policy tls-client)"
fi
grep -qi 'sign-policy' "$TLS_DIR/sclient.err" "$TLS_DIR/sclient.out" ||
	fail "s_client through the engine with eng-default failed without mentioning sign-policy: $(cat "$TLS_DIR/sclient.err")"
log "ok: s_client -engine with eng-default: $(grep -hi 'sign-policy' "$TLS_DIR/sclient.err" "$TLS_DIR/sclient.out" | head -n 1)"
assert_eq "$(id_counter eng-default signatures)" "$signed" "agent signatures for eng-default through the engine"
s_server_stop

agent_stop
log "PASS"
