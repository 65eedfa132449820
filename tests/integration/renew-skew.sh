#!/bin/bash
# Clock skew (issue 17 item 5): the agent's clock 2,500 s ahead of the CA's
# (faketime on the agent only). Every certificate the EST test CA issues
# (3600 s from the CA's now) is, by the agent's clock, 2,500 s into its life
# and past renew-at 66%: due again at once. Before the fix the agent renewed
# in a loop (75 times in 60 s, keys in the token 2 -> 92). Now:
#  - the renewals that do not move the schedule back off (3, 6, 12, ... s,
#    capped at 1 h): a bounded number of attempts in 30 s, each later one
#    further from the one before, and `status` says so (action, next-renewal);
#  - forced renewals still work, but the token holds at most 16 key
#    generations whatever the CA answers (then renewal keeps the current key).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_cmd pkcs11-tool python3
command -v faketime >/dev/null 2>&1 || skip "faketime not installed (Debian package faketime)"

SKEW=2500
OBSERVE=30
MAX_GENERATIONS=16

testca_init
server_cert_setup
softhsm_setup skew
est_ca_start --lifetime 3600

# The agent, and only the agent, runs 2,500 s ahead: libfaketime preloaded into it
# (not the faketime wrapper, which would stand between the agent and its signals).
# A sanitizer build must not insist on its runtime coming first.
LIBFAKETIME=
for f in /usr/lib/*/faketime/libfaketimeMT.so.1 /usr/lib/faketime/libfaketimeMT.so.1; do
	[ -r "$f" ] && LIBFAKETIME=$f && break
done
[ -n "$LIBFAKETIME" ] || skip "libfaketimeMT.so.1 not found (Debian package libfaketime)"
REAL_AGENT=$MTLS_AGENT
MTLS_AGENT=$WORK/agent-skewed
cat >"$MTLS_AGENT" <<EOF
#!/bin/sh
export FAKETIME="+$SKEW" LD_PRELOAD="$LIBFAKETIME\${LD_PRELOAD:+:\$LD_PRELOAD}"
export ASAN_OPTIONS="\${ASAN_OPTIONS:+\$ASAN_OPTIONS:}verify_asan_link_order=0"
exec "$REAL_AGENT" "\$@"
EOF
chmod 0755 "$MTLS_AGENT"

agent_config
renew_lines est "key-type = ec-p256"
agent_identity gw "${RENEW_LINES[@]}"
agent_start
agent_clock=$(faketime -f "+$SKEW" date +%s)
[ $((agent_clock - $(date +%s))) -ge $((SKEW - 5)) ] || fail "faketime does not shift the clock"

# A first certificate from lib.sh's CA (30 days: not due), then one from the test CA.
identity_setup gw ec-p256
s0=$(current_serial gw)
calines=$(wc -l <"$CA_LOG")
assert_ok ctl renew gw
s1=$(current_serial gw)
[ -n "$s1" ] && [ "$s1" != "$s0" ] || fail "the forced renewal brought no new certificate"
t0=$SECONDS
log "renewed by hand: serial $s1; the agent now sees it due at once; watching for $OBSERVE s"

sleep "$OBSERVE"
renewals=$(tail -n +$((calines + 1)) "$CA_LOG" | grep -c "simplereenroll issued serial=" || true)
elapsed=$((SECONDS - t0))
# The forced one, then retries at least 1, 3, 6, 12 s apart (at most 5 in 30 s), and
# a margin; before the fix it was one renewal a second or more.
[ "$renewals" -ge 2 ] || {
	show_log "$AGENT_LOG" 30
	fail "only $renewals renewal(s) in $elapsed s: the stalled identity must still be retried"
}
[ "$renewals" -le 6 ] || {
	show_log "$AGENT_LOG" 30
	fail "$renewals renewals in $elapsed s with the clock $SKEW s ahead: no backoff"
}
stalls=$(grep -c "is due for renewal again at once" "$AGENT_LOG" || true)
[ "$stalls" -ge 1 ] || fail "the agent log shows no stall"
# Each announced backoff is longer than the one before (3 s base, doubling, equal jitter).
delays=$(sed -n 's/.*backing off: next attempt in \([0-9]*\) s (stall \([0-9]*\)).*/\2 \1/p' "$AGENT_LOG")
printf '%s\n' "$delays" | awk '
	{ lo = 3 * 2 ^ ($1 - 1) / 2; if (lo < 1) lo = 1; hi = 3 * 2 ^ ($1 - 1)
	  if ($2 < int(lo) || $2 > hi) { print "stall " $1 ": " $2 " s outside [" int(lo) ", " hi "]"; bad = 1 } }
	END { exit bad }' || fail "backoff delays out of bounds: $(printf '%s; ' "$delays")"

# next-renewal is the second the next attempt is due; while that attempt runs (and in the
# moment before it starts, with the clock read after the status) it is not in the future
# yet, until the attempt ends and announces the next delay. A snapshot that fell there is
# taken again, for a few seconds: one between two attempts must show the due time ahead.
next_ahead() {
	status_save "$WORK/st.json"
	next_raw=$(status_get "$WORK/st.json" gw next-renewal)
	next=$(date -u -d "$next_raw" +%s 2>/dev/null) || { next="'$next_raw'"; return 1; }
	agent_clock=$(faketime -f "+$SKEW" date +%s)
	[ "$next" -gt "$agent_clock" ]
}
wait_until 10 next_ahead ||
	fail "status next-renewal ($next) is not in the agent's future ($agent_clock)"
action=$(status_get "$WORK/st.json" gw action)
assert_contains "$action" "renewal stalled" "status action"
keys=$(keystore_keys gw | grep -c . || true)
log "$renewals renewals in $elapsed s ($stalls stalls; delays: $(printf '%s' "$delays" | tr '\n' ',')); next in $((next - agent_clock)) s; $keys keys; status: $action"

# Forced renewals skip the backoff (an operator asked) and stall too, yet the token
# stays bounded: once it holds the cap, two more renewals keep the count.
at_cap=0
for i in $(seq 1 20); do
	assert_ok ctl renew gw
	n=$(keystore_keys gw | grep -c . || true)
	[ "$n" -le "$MAX_GENERATIONS" ] || fail "after forced renewal $i: $n keys in the token (at most $MAX_GENERATIONS)"
	[ "$n" -lt "$MAX_GENERATIONS" ] || at_cap=$((at_cap + 1))
	[ "$at_cap" -lt 3 ] || break
done
keys=$(keystore_keys gw | grep -c . || true)
[ "$at_cap" -ge 3 ] && [ "$keys" -eq "$MAX_GENERATIONS" ] ||
	fail "expected the token to reach and stay at $MAX_GENERATIONS keys, it holds $keys"
assert_contains "$(cat "$AGENT_LOG")" "renewing without a new key" "agent log"
# The certificate in force still matches the key that signs.
ctl cert gw >"$WORK/final.pem"
cert_pubkey "$WORK/final.pem" "$WORK/final.pub"
identity_pubkey gw "$WORK/final.id.pub"
cmp -s "$WORK/final.pub" "$WORK/final.id.pub" || fail "the installed certificate does not match the identity's key"
log "OK: $i forced renewals, $keys keys in the token (capped at $MAX_GENERATIONS)"
agent_stop
