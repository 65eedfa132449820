#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# mosquitto_pub and mosquitto_sub (2.0, unmodified) with keys in the agent:
# each is given its own identity's key reference file as --key and its chain
# as --cert, with the provider "mtlsagent" activated by openssl.cnf. The
# broker requires a certificate (require_certificate true) and names each
# client after its certificate's CN (use_identity_as_username true). The
# published message must arrive, the broker must have seen both identities,
# and the agent must have signed for both; TLS 1.3 and TLS 1.2; a broker
# trusting only an unrelated CA refuses the publisher.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_tls_cmd mosquitto mosquitto_pub mosquitto_sub
need_cmd python3
need_provider

softhsm_setup tlsmqtt
testca_init
server_cert_setup
agent_config
agent_identity sensor
agent_identity collector
agent_start
identity_setup sensor ec-p256
identity_setup collector rsa-2048
identity_files sensor
identity_files collector
provider_env
mosquitto_start

PUB=(--cert "$TLS_DIR/sensor.chain.pem" --key "$TLS_DIR/sensor.keyref.pem")
SUB=(--cert "$TLS_DIR/collector.chain.pem" --key "$TLS_DIR/collector.keyref.pem")

for v in tlsv1.3 tlsv1.2; do
	pub_before=$(id_counter sensor signatures)
	sub_before=$(id_counter collector signatures)
	mqtt_roundtrip "${PUB[@]}" --tls-version "$v" -- "${SUB[@]}" --tls-version "$v"
	assert_eq "$MQTT_PUB_USER" sensor "$v: the broker's username for the publisher"
	assert_eq "$MQTT_SUB_USER" collector "$v: the broker's username for the subscriber"
	[ "$(id_counter sensor signatures)" -gt "$pub_before" ] ||
		fail "$v: the publisher connected but the agent made no signature for sensor"
	[ "$(id_counter collector signatures)" -gt "$sub_before" ] ||
		fail "$v: the subscriber connected but the agent made no signature for collector"
	log "ok: $v: sensor -> broker -> collector"
done

# The roles swapped: the RSA identity publishes, the EC one subscribes.
mqtt_roundtrip "${SUB[@]}" -- "${PUB[@]}"
assert_eq "$MQTT_PUB_USER" collector "the broker's username for the publisher"
assert_eq "$MQTT_SUB_USER" sensor "the broker's username for the subscriber"
mosquitto_stop

# A broker trusting only an unrelated CA refuses the publisher.
mosquitto_start --client-ca "$OTHER_CA"
if mqtt_pub "${PUB[@]}"; then
	fail "a broker trusting only the unrelated CA accepted sensor's message"
fi
log "ok: refused by a broker trusting another CA: $(tr '\n' ' ' <"$TLS_DIR/pub.err")"
mosquitto_stop

agent_stop
log "PASS"
