#!/bin/bash
# CMP renewal against every response shape RFC 9483 (Lightweight CMP Profile) allows.
# Keys in a SoftHSM token; the test CMP CA (tests/cmp-ca, OpenSSL's OSSL_CMP_SRV_CTX) is
# restarted on the same port with one shape at a time and issues 24-second certificates,
# so each identity renews by its schedule alone (KUR, a new key each time) about every
# 15 s. (Refused shapes: renew-cmp-refused.sh.)
#
# Identities: "gw" bootstraps by IR with a shared secret (a MAC-protected answer
# without caPubs); "imp" holds a leaf-only certificate obtained with
# `openssl cmp -cmd p10cr` and imported, as a user of another CA would (before the fix
# of issue 10 its every KUR failed with "passed a null parameter"). For each shape both
# renew on schedule: the CA log shows the KUR and the certConf of the certificate now
# served, the key is new, the installed chain verifies against ca-trust with the
# intermediate the CA sent (or that the agent held). A curl loop through the provider
# handshakes with `openssl s_server -Verify` across all of it and must never fail.
#
# Shapes: answers signed by the issuing CA or by an RA certificate (id-kp-cmcRA);
# extraCerts as OpenSSL sends them, absent, or in reverse order; a CA willing to grant
# implicit confirmation (the agent does not ask: certConf is still exchanged); polling
# (waiting, checkAfter).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_tls_cmd curl
need_cmd pkcs11-tool python3
need_provider

LIFE=24
testca_init
server_cert_setup
softhsm_setup shapes
shapes_setup

ca_shape --capubs no
agent_config
renew_lines cmp "ca-timeout = 10"
agent_identity gw "${RENEW_LINES[@]}" "bootstrap = secret:boot:$WORK/boot.secret" \
	"subject = /CN=gw/O=mtls-agent tests" "key-type = ec-p256"
agent_identity imp "${RENEW_LINES[@]}" "key-type = ec-p256"
agent_start

# 1. IR answered with a MAC (shared secret) and no caPubs: the chain comes from extraCerts.
s=$(wait_new_serial gw "" 30)
grep -q "ir issued serial=$s " "$CA_LOG" || fail "the CA log shows no ir for serial $s"
grep -q "certConf accepted serial=$s" "$CA_LOG" || fail "no certConf for serial $s"
chain_verifies gw
log "IR (MAC-protected answer, no caPubs): serial $s"

# 2. A leaf-only certificate from `openssl cmp -cmd p10cr`, imported. It lasts 60 s: its
# first renewal comes while the first shape is served, whatever the machine's load.
LIFE=60 ca_shape --capubs no
assert_ok ctl keygen imp --type ec-p256
ctl csr imp --subject "/CN=imp/O=mtls-agent tests" >"$WORK/imp.csr" || fail "csr imp failed"
_csr_to_pem "$WORK/imp.csr" "$WORK/imp.csr.pem"
timeout 30 openssl cmp -cmd p10cr -server "127.0.0.1:$SHAPE_PORT" -path pkix/ -ref boot \
	-secret "file:$WORK/boot.secret" -recipient "/CN=cmp-ca" -csr "$WORK/imp.csr.pem" \
	-certout "$WORK/imp.leaf.pem" >"$WORK/p10cr.log" 2>&1 || {
	show_log "$WORK/p10cr.log"
	fail "openssl cmp -cmd p10cr failed"
}
assert_eq "$(count_certs "$WORK/imp.leaf.pem")" 1 "certificates written by openssl cmp -certout"
assert_ok ctl import-cert imp "$WORK/imp.leaf.pem"
log "imp: leaf-only certificate $(cert_serial "$WORK/imp.leaf.pem") from openssl cmp -cmd p10cr"

s_server_start
provider_env
curl_loop_start gw

export SHAPE_IDS="gw imp"
SHAPE_WAIT=70 shape_renews "RA-signed, extraCerts as sent; imp renews its leaf-only certificate" \
	--srv-cert "$WORK/ra.crt" --srv-key "$WORK/ra.key"
shape_renews "CA-signed, no extraCerts" --extra-certs none
shape_renews "CA-signed, extraCerts in reverse order" --extra-certs reversed
shape_renews "RA-signed, extraCerts in reverse order" \
	--srv-cert "$WORK/ra.crt" --srv-key "$WORK/ra.key" --extra-certs reversed
shape_renews "CA willing to grant implicit confirmation (not asked: certConf exchanged)" --implicit-confirm
ca_fault waiting 2 2
shape_renews "polling (waiting, checkAfter)"
ca_log_since 1 | grep -q "pollReq ready" || fail "the CA never delivered a certificate after polling"
ca_fault_clear
assert_not_contains "$(cat "$AGENT_LOG")" "passed a null parameter" "agent log"
curl_loop_stop
log "OK: every RFC 9483 response shape renewed on schedule; $LOOP_OK handshakes, 0 failed"
agent_stop
ca_stop
