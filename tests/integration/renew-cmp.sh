#!/bin/bash
# Automated renewal over CMP with keys in a SoftHSM token. The identity starts
# with no key at all: the agent bootstraps it (IR, shared secret), gets a
# 60-second certificate from the test CMP CA, then renews it on its own
# schedule (KUR protected by the current key, proof of possession by a new
# key made in the token) twice in a row. Meanwhile curl, through the
# provider, handshakes with openssl s_server -Verify over and over (with
# fresh and with stale credentials): no handshake may fail. Each renewal
# must bring a new key; the old key must be gone from the token once its
# certificate has expired.
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

testca_init
server_cert_setup
softhsm_setup renew
(umask 077 && printf 'boot-secret-%s\n' "$(rand_token)" >"$WORK/boot.secret")
cmp_ca_start --lifetime 60 --secret "boot:$WORK/boot.secret"
agent_config
renew_lines cmp "bootstrap = secret:boot:$WORK/boot.secret" "subject = /CN=gw/O=mtls-agent tests" \
	"key-type = ec-p256" "cert-out = $WORK/out/gw.pem" "post-renew = echo \"\$MTLS_AGENT_IDENTITY\" >>$WORK/hook.log"
mkdir -p "$WORK/out"
agent_identity gw "${RENEW_LINES[@]}"
agent_start
provider_env

# 1. Bootstrap from nothing.
s1=$(wait_new_serial gw "" 30)
ctl cert gw >"$WORK/c1.pem"
cert_pubkey "$WORK/c1.pem" "$WORK/k1.pub"
ids1=$(token_key_ids gw)
[ "$(printf '%s\n' "$ids1" | grep -c .)" -eq 1 ] || fail "after bootstrap: expected 1 key on the token, got: $ids1"
grep -q "ir issued serial=$s1" "$CA_LOG" || fail "the CA log shows no IR for serial $s1"
grep -q "certConf accepted serial=$s1" "$CA_LOG" || fail "no certConf for serial $s1"
cmp -s "$WORK/out/gw.pem" "$WORK/c1.pem" || fail "cert-out does not hold the installed chain"
log "bootstrapped: serial $s1, key $ids1"

s_server_start
curl_loop_start gw
# One long-running client holding the first certificate and key until shortly before they expire.
stime_start gw $(($(cert_not_after "$WORK/c1.pem") - $(date +%s) - 5))

# 2. Two renewals by the schedule alone (66% of 60 s, minus up to 3 s of jitter).
s2=$(wait_new_serial gw "$s1" 75)
ctl cert gw >"$WORK/c2.pem"
cert_pubkey "$WORK/c2.pem" "$WORK/k2.pub"
cmp -s "$WORK/k1.pub" "$WORK/k2.pub" && fail "renewal 1 kept the old key"
grep -q "kur issued serial=$s2" "$CA_LOG" || fail "the CA log shows no KUR for serial $s2"
elapsed=$(($(date -d "$(openssl x509 -in "$WORK/c2.pem" -noout -startdate | cut -d= -f2)" +%s) -
	$(date -d "$(openssl x509 -in "$WORK/c1.pem" -noout -startdate | cut -d= -f2)" +%s)))
[ "$elapsed" -ge 30 ] && [ "$elapsed" -le 45 ] ||
	fail "renewal 1 came $elapsed s after issue; renew-at 66% of 60 s minus jitter is 37..40 s"
log "renewal 1: serial $s2, $elapsed s after the first certificate"

s3=$(wait_new_serial gw "$s2" 75)
ctl cert gw >"$WORK/c3.pem"
cert_pubkey "$WORK/c3.pem" "$WORK/k3.pub"
cmp -s "$WORK/k2.pub" "$WORK/k3.pub" && fail "renewal 2 kept the old key"
cmp -s "$WORK/k1.pub" "$WORK/k3.pub" && fail "renewal 2 went back to the first key"
grep -q "kur issued serial=$s3" "$CA_LOG" || fail "the CA log shows no KUR for serial $s3"
log "renewal 2: serial $s3"

# The long-running client kept the first key until shortly before its certificate expired.
stime_n=$(stime_wait)
log "long-running client: $stime_n handshakes with the first certificate ($STIME_SERIAL), across renewal 1"

# 3. The first key is retired once its certificate has expired (it did before renewal 2).
first_id=$ids1
deadline=$((SECONDS + 30))
while token_key_ids gw | grep -qx "$first_id"; do
	[ "$SECONDS" -lt "$deadline" ] || fail "key $first_id is still on the token after its certificate expired"
	sleep 1
done
ids_now=$(token_key_ids gw)
[ "$(printf '%s\n' "$ids_now" | grep -c .)" -le 2 ] || fail "more than 2 keys left on the token: $ids_now"
assert_contains "$(cat "$AGENT_LOG")" "retired key" "agent log"
curl_loop_stop
[ "$(sort -u "$WORK/loop.serials" | wc -l)" -ge 2 ] ||
	fail "the curl loop saw only one certificate across two renewals"

# 4. Status, outputs and hook.
assert_eq "$(status_field gw failures)" 0 "status failures"
assert_contains "$(status_field gw last-result)" "installed" "status last-result"
[ "$(status_field gw next-renewal)" != "-" ] || fail "status shows no next renewal"
cmp -s "$WORK/out/gw.pem" "$WORK/c3.pem" || fail "cert-out does not hold the latest chain"
[ "$(grep -c '^gw$' "$WORK/hook.log")" -ge 3 ] || fail "post-renew did not run after each enrollment: $(cat "$WORK/hook.log")"
agent_stop
log "OK: bootstrap + 2 scheduled renewals over CMP, $LOOP_OK handshakes without a failure, old key retired"
