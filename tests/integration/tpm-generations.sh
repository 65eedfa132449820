#!/bin/bash
# TPM key generations across several renewals inside one certificate lifetime
# (CMP, 45 s certificates, three forced renewals 5 s apart):
# - after each renewal the identity's TSS2 PRIVATE KEY file holds every
#   generation so far, the new (certified) one first: a replaced key stays
#   until its certificate expires, as with a PKCS#11 token;
# - a long-running client (openssl s_time: credentials loaded once, a full
#   handshake per connection; each signature request names the first key by
#   the hash of its public key) keeps signing with it until shortly before the
#   first certificate expires;
# - once the first certificate has expired its key leaves the file, and
#   every generation whose certificate is still valid stays;
# - tpm2-openssl, reading the file, gets the key of the installed certificate.
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

LIFETIME=45
testca_init
server_cert_setup
swtpm_start
(umask 077 && printf 'boot-secret-%s\n' "$(rand_token)" >"$WORK/boot.secret")
cmp_ca_start --lifetime "$LIFETIME" --secret "boot:$WORK/boot.secret"
tpm_agent_config
# renew-at 95%: no scheduled renewal adds a generation while the test looks.
renew_lines cmp "bootstrap = secret:boot:$WORK/boot.secret" "subject = /CN=gw/O=mtls-agent tests" \
	"key-type = ec-p256" "renew-at = 95%"
tpm_identity gw "${RENEW_LINES[@]}"
# shellcheck disable=SC2034 # read by keystore_keys in renew-lib.sh
KEYSTORE_TYPE=tpm2
agent_start
provider_env

# Generation 1: the bootstrap enrollment.
s1=$(wait_new_serial gw "" 40)
mkdir -p "$WORK/gen1"
app_credentials gw "$WORK/gen1" || fail "cannot read gw's credentials"
assert_eq "$(cert_serial "$WORK/gen1/chain.pem")" "$s1" "serial of generation 1"
keystore_keys gw >"$WORK/gen1/blocks"
assert_eq "$(wc -l <"$WORK/gen1/blocks")" 1 "key file blocks after bootstrap"
head -n 1 "$WORK/gen1/blocks" >"$WORK/gen1/block"
log "generation 1: serial $s1"

s_server_start
na1=$(cert_not_after "$WORK/gen1/chain.pem")
stime_start gw $((na1 - $(date +%s) - 5))
assert_eq "$STIME_SERIAL" "$s1" "certificate the long-running client loaded"

# Generations 2..4: forced renewals inside the first certificate's lifetime.
prev=$s1
for g in 2 3 4; do
	sleep 5
	assert_ok ctl renew gw
	s=$(current_serial gw)
	[ -n "$s" ] && [ "$s" != "$prev" ] || fail "renewal $((g - 1)) brought no new certificate"
	mkdir -p "$WORK/gen$g"
	app_credentials gw "$WORK/gen$g" || fail "cannot read gw's credentials"
	assert_eq "$(cert_serial "$WORK/gen$g/chain.pem")" "$s" "serial of generation $g"
	keystore_keys gw >"$WORK/gen$g/blocks"
	# Every earlier generation is still there, plus exactly one new block, first in the file.
	assert_eq "$(wc -l <"$WORK/gen$g/blocks")" "$g" "key file blocks after renewal $((g - 1))"
	for e in $(seq 1 $((g - 1))); do
		grep -qxF -f "$WORK/gen$e/block" "$WORK/gen$g/blocks" ||
			fail "renewal $((g - 1)): generation $e (certificate valid until $(date -u -d "@$(cert_not_after "$WORK/gen$e/chain.pem")" +%T)) is gone from the key file"
	done
	cat "$WORK"/gen[1-9]/block >"$WORK/known"
	grep -vxF -f "$WORK/known" "$WORK/gen$g/blocks" >"$WORK/gen$g/block" || true
	assert_eq "$(wc -l <"$WORK/gen$g/block")" 1 "new blocks after renewal $((g - 1))"
	assert_eq "$(head -n 1 "$WORK/gen$g/blocks")" "$(cat "$WORK/gen$g/block")" \
		"first block of the key file after renewal $((g - 1)) (must be the certified key)"
	cmp -s "$WORK/gen$((g - 1))/chain.pem" "$WORK/gen$g/chain.pem" && fail "renewal $((g - 1)): same chain"
	log "generation $g: serial $s; the key file holds $g keys, the new one first"
	prev=$s
done
assert_not_contains "$(cat "$AGENT_LOG")" "uncertified dropped" "agent log"

# Not in $(...): a subshell cannot wait for s_time, which the test shell started.
stime_wait >"$WORK/stime.n"
n=$(cat "$WORK/stime.n")
log "long-running client: $n handshakes with generation 1 (serial $s1), through all 3 renewals"

# Until the first certificate expires, all 4 keys stay.
[ "$(date +%s)" -lt "$na1" ] || fail "too slow: the first certificate expired before the check"
assert_eq "$(keystore_keys gw | wc -l)" 4 "key file blocks before the first certificate expires"

# The first key is retired once its certificate has expired; the others, still valid, stay.
retired() { ! keystore_keys gw | grep -qxF -f "$WORK/gen1/block"; }
wait_until 30 retired || fail "generation 1's key is still in the key file after its certificate expired"
[ "$(date +%s)" -ge "$na1" ] || fail "generation 1's key was deleted before its certificate expired"
now=$(date +%s)
keystore_keys gw >"$WORK/blocks.after"
kept=0
for g in 2 3 4; do
	if [ "$(cert_not_after "$WORK/gen$g/chain.pem")" -gt "$now" ]; then
		grep -qxF -f "$WORK/gen$g/block" "$WORK/blocks.after" ||
			fail "generation $g's key left the key file although its certificate is still valid"
		kept=$((kept + 1))
	fi
done
[ "$kept" -ge 2 ] || fail "too slow: generations 2..4 expired before the check ($kept left valid)"
# Logged after the key file lost the block and the identity was refreshed: wait for it.
wait_until 10 grep -q "retired key" "$AGENT_LOG" || fail "agent log does not contain 'retired key'"
log "generation 1 retired after its certificate expired; $kept valid generation(s) kept"

agent_stop
# The file's first block is what other programs load: the installed certificate's key.
tss2_pubkey "$TPM_KEYS/gw.pem" "$WORK/first.pub"
cert_pubkey "$STATE_DIR/gw.crt" "$WORK/installed.pub"
cmp -s "$WORK/first.pub" "$WORK/installed.pub" ||
	fail "tpm2-openssl reads a key from $TPM_KEYS/gw.pem that is not the installed certificate's"
swtpm_stop
log "PASS"
