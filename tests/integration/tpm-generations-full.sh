#!/bin/bash
# A full TSS2 key file does not stop renewal. A key file holds at most 8 keys (the current
# one, older ones kept until their certificates expire): forced renewals inside one
# 10-minute lifetime fill it, and the renewal after that
# - still gets a new certificate (the old one would otherwise run out),
# - for the current key, with one warning that says why,
# - leaves the key file as it was: 8 keys, the same current key first, no generation lost;
# - and the new certificate works: curl through the provider to s_server -Verify 1.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../tpm-lib.sh
. "$(dirname "$0")/../tpm-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_provider
need_tpm2_openssl

FULL=8 # TPM_MAX_GENERATIONS in keystore/ks-tpm2.c
testca_init
server_cert_setup
swtpm_start
(umask 077 && printf 'boot-secret-%s\n' "$(rand_token)" >"$WORK/boot.secret")
cmp_ca_start --lifetime 600 --secret "boot:$WORK/boot.secret"
tpm_agent_config
renew_lines cmp "bootstrap = secret:boot:$WORK/boot.secret" "subject = /CN=gw/O=mtls-agent tests" \
	"key-type = ec-p256" "renew-at = 95%"
tpm_identity gw "${RENEW_LINES[@]}"
# shellcheck disable=SC2034 # read by keystore_keys in renew-lib.sh
KEYSTORE_TYPE=tpm2
agent_start

prev=$(wait_new_serial gw "" 40)
n=1
while [ "$n" -lt "$FULL" ]; do
	assert_ok ctl renew gw
	s=$(current_serial gw)
	[ -n "$s" ] && [ "$s" != "$prev" ] || fail "renewal $n brought no new certificate"
	n=$((n + 1))
	assert_eq "$(keystore_keys gw | wc -l)" "$n" "keys in the key file after renewal $((n - 1))"
	prev=$s
done
assert_not_contains "$(cat "$AGENT_LOG")" "renewing without a new key" "agent log before the file is full"
log "the key file holds $FULL keys, every certificate still valid"

keystore_keys gw >"$WORK/blocks.full"
logmark=$(($(wc -l <"$AGENT_LOG") + 1))
assert_ok ctl renew gw
s=$(current_serial gw)
[ -n "$s" ] && [ "$s" != "$prev" ] || fail "the renewal with a full key file brought no new certificate"
keystore_keys gw >"$WORK/blocks.after"
cmp -s "$WORK/blocks.full" "$WORK/blocks.after" ||
	fail "the key file changed although the renewal certified the current key: $(diff "$WORK/blocks.full" "$WORK/blocks.after" | tr '\n' ' ')"
[ "$(tail -n +"$logmark" "$AGENT_LOG" | grep -c "$FULL key generations are in the keystore already; renewing without a new key")" -eq 1 ] ||
	fail "expected exactly one warning that the renewal keeps the current key: $(tail -n +"$logmark" "$AGENT_LOG")"
assert_not_contains "$(tail -n +"$logmark" "$AGENT_LOG")" "cannot make a new key" "agent log"
log "renewal $FULL: serial $s for the current key, the key file unchanged"

s_server_start
provider_env
mkdir -p "$WORK/app"
app_credentials gw "$WORK/app" || fail "cannot read gw's credentials"
assert_eq "$(cert_serial "$WORK/app/chain.pem")" "$s" "serial the application gets"
curl -sS --max-time 20 --cacert "$SRV_CA" --cert "$WORK/app/chain.pem" --key "$WORK/app/keyref.pem" \
	"https://127.0.0.1:$S_SERVER_PORT/" >"$WORK/page" 2>"$WORK/curl.err" ||
	fail "curl with the new certificate failed: $(cat "$WORK/curl.err")"
grep -q 'Verify return code: 0 (ok)' "$WORK/page" || fail "s_server did not verify the client certificate"
s_server_stop
agent_stop
# The new certificate is the current key's: the file's first block, which other programs
# load (read once the agent is gone: it holds the TPM's object slots).
tss2_pubkey "$TPM_KEYS/gw.pem" "$WORK/first.pub"
cert_pubkey "$STATE_DIR/gw.crt" "$WORK/installed.pub"
cmp -s "$WORK/first.pub" "$WORK/installed.pub" ||
	fail "the certificate of the renewal with a full key file is not for the key file's current key"
swtpm_stop
log "PASS"
