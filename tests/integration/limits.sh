#!/bin/bash
# Connection limits and timeouts (issue 17, items 6 and 7; issue 14, timeouts;
# issue 15, the permission message):
#  - an agent at 1,024 descriptors (soft and hard) with more clients than that:
#    every client beyond what it can serve gets a prompt, precise refusal, also
#    once its descriptors are gone (prlimit), and the log is not flooded;
#  - the library times out instead of hanging on a stopped agent, both in
#    connect() (full listen queue) and waiting for a reply;
#  - two ordinary uids at their per-uid caps cannot lock root out (admin-reserve),
#    and refused clients print the reason, never "closed the connection";
#  - an idle connection and one whose replies are never read are closed after
#    idle-timeout, and a library client reconnects and signs;
#  - a user outside the socket's group is told so.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
need_root
need_cmd setpriv prlimit find
id nobody >/dev/null 2>&1 || skip "user nobody does not exist on this system"
for g in nogroup daemon; do
	getent group "$g" >/dev/null || skip "group $g does not exist on this system"
done

STORM_BUILT="${top_builddir:-..}/tests/conn_storm"
CLIENT="${top_builddir:-..}/tests/reconnect_client"
[ -x "$STORM_BUILT" ] || fail "conn_storm not built at $STORM_BUILT"
[ -x "$CLIENT" ] || fail "reconnect_client not built at $CLIENT"
# Other uids run the driver: a copy where they can reach it (it links no
# library of ours).
chmod 0755 "$WORK"
mkdir -p "$WORK/bin"
cp "$STORM_BUILT" "$WORK/bin/conn_storm"
chmod -R a+rX "$WORK/bin"
STORM=$WORK/bin/conn_storm

now_ms() { date +%s%3N; }

# The CLI with extra environment (timeouts), bounded.
ctl_env() { # VAR=VALUE... -- ARGS...
	local envs=()
	while [ "$1" != -- ]; do
		envs+=("$1")
		shift
	done
	shift
	timeout -k 5 "$MTLS_TEST_TIMEOUT" env "${envs[@]}" "$MTLS_AGENTCTL" -s "$SOCK" "$@"
}

# Checks the output of `conn_storm hold`: OK connections, REFUSED refusals, each
# refusal BUSY (-20) with NEEDLE in its message, in under 5 s (a stalled client
# waits 100 s and more).
check_storm() { # OUT OK REFUSED NEEDLE
	local out=$1 ok refused bad slow
	ok=$(grep -c '^ok ' "$out" || true)
	refused=$(grep -c '^refused ' "$out" || true)
	assert_eq "$ok" "$2" "connections admitted ($out)"
	assert_eq "$refused" "$3" "connections refused ($out)"
	bad=$(grep '^refused ' "$out" | grep -v -F -- "$4" | head -n 3 || true)
	[ -z "$bad" ] || fail "refusals without '$4': $bad"
	bad=$(awk '$1 == "refused" && $2 != -20' "$out" | head -n 3)
	[ -z "$bad" ] || fail "refusals with another code than BUSY (-20): $bad"
	slow=$(awk '$1 == "refused" && $3 > m { m = $3 } END { print m + 0 }' "$out")
	[ "$slow" -lt 5000 ] || fail "a refusal took $slow ms"
	log "$ok admitted, $refused refused (slowest refusal $slow ms): $(grep -m 1 '^refused ' "$out" | cut -d' ' -f4- || true)"
}

# Sockets the agent has open (listener and connections).
agent_sockets() {
	find "/proc/$AGENT_PID/fd" -lname 'socket:*' 2>/dev/null | wc -l
}

softhsm_setup limits
testca_init

# --- 1. 1,024 descriptors, 1,100 clients ------------------------------------------------------
# The agent alone runs with `ulimit -n 1024` (soft and hard): the default
# max-clients (1024) does not fit, so it lowers its cap (1024 - 64 kept for
# its own files) and says so. The clients are root (no per-uid cap to speak of).
agent_config "max-clients-per-uid = 2000"
agent_identity dev1
cat >"$WORK/agent-1024" <<EOF
#!/bin/sh
ulimit -n 1024 || exit 1
exec "$MTLS_AGENT" "\$@"
EOF
chmod 0755 "$WORK/agent-1024"
MTLS_AGENT=$WORK/agent-1024 agent_start
identity_setup dev1 ec-p256
make_cv13 "$WORK/cv" 32
assert_eq "$(awk '/^Max open files/ { print $4 }' "/proc/$AGENT_PID/limits")" 1024 "agent's descriptor limit"
assert_contains "$(cat "$AGENT_LOG")" "at most 960 connections are accepted" "agent log"

"$STORM" hold "$SOCK" 1100 "$WORK/release1" >"$WORK/storm1.out" 2>"$WORK/storm1.err" &
STORM1=$!
bg_track "$STORM1"
wait_until 120 grep -qx 'done' "$WORK/storm1.out" || fail "1,100 connections not tried within 120 s: $(tail -n 3 "$WORK/storm1.out") $(cat "$WORK/storm1.err")"
check_storm "$WORK/storm1.out" 960 140 "all that the agent's descriptor limit allows"
assert_not_contains "$(cat "$WORK/storm1.out")" "during HELLO" "refusals"
# Root too: the cap is the descriptors' (nothing is left to reserve).
assert_fails ctl status
assert_contains "$LAST_ERR" "too many connections" "status at the cap"

# Descriptors gone under the agent's feet (prlimit; as if something leaked):
# accept() fails with EMFILE, and the spare descriptor still lets the agent
# tell each client why.
prlimit --pid "$AGENT_PID" --nofile=100:1024
touch "$WORK/nohold"
"$STORM" hold "$SOCK" 30 "$WORK/nohold" >"$WORK/storm2.out" 2>"$WORK/storm2.err" ||
	fail "conn_storm failed: $(cat "$WORK/storm2.err")"
check_storm "$WORK/storm2.out" 0 30 "the agent is out of file descriptors"
prlimit --pid "$AGENT_PID" --nofile=1024:1024
touch "$WORK/release1"
wait "$STORM1" || fail "conn_storm (1,100 connections) failed: $(cat "$WORK/storm1.err")"
agent_alive || fail "agent died in the connection storm"
wait_until 10 ctl status || fail "status does not work again after the storm"
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"
# 170 refusals, logged at most once a second with a count of the rest (the
# count comes with the next tick).
wait_until 5 grep -q "more connections refused in the last" "$AGENT_LOG" || true
REFUSAL_LINES=$(log_count 'refused connection of uid|connections refused in the last')
[ "$REFUSAL_LINES" -ge 1 ] && [ "$REFUSAL_LINES" -le 30 ] ||
	fail "expected 1..30 log lines for 170 refusals, got $REFUSAL_LINES"
assert_contains "$(cat "$AGENT_LOG")" "more connections refused in the last" "agent log"

# --- 2. the library times out on a stopped agent --------------------------------------------
kill -STOP "$AGENT_PID"
t0=$(now_ms)
assert_fails ctl_env MTLS_AGENT_TIMEOUT=1 -- status
t=$(($(now_ms) - t0))
assert_contains "$LAST_ERR" "did not answer within 1 s" "status on a stopped agent"
[ "$t" -lt 10000 ] || fail "reply timeout of 1 s took $t ms"
log "reply timeout: '$LAST_ERR' after $t ms"
# A full listen queue: connect() itself would wait for ever.
"$STORM" fill "$SOCK" "$WORK/release2" >"$WORK/fill.out" 2>"$WORK/fill.err" &
FILL=$!
bg_track "$FILL"
wait_until 30 grep -q '^filled ' "$WORK/fill.out" || fail "listen queue not filled: $(cat "$WORK/fill.err")"
t0=$(now_ms)
assert_fails ctl_env MTLS_AGENT_CONNECT_TIMEOUT=0.5 -- status
t=$(($(now_ms) - t0))
assert_contains "$LAST_ERR" "did not accept the connection within 0.500 s" "connect to a full queue"
[ "$t" -lt 10000 ] || fail "connect timeout of 0.5 s took $t ms"
log "connect timeout: '$LAST_ERR' after $t ms"
# The default bounds it too (10 s), with nothing configured.
t0=$(now_ms)
assert_fails ctl status
t=$(($(now_ms) - t0))
assert_contains "$LAST_ERR" "did not accept the connection within 10 s" "connect with the default timeout"
[ "$t" -lt 30000 ] || fail "the default connect timeout (10 s) took $t ms"
log "default connect timeout after $t ms"
assert_fails ctl_env MTLS_AGENT_TIMEOUT=soon -- status
assert_contains "$LAST_ERR" 'MTLS_AGENT_TIMEOUT="soon": want seconds' "a bad MTLS_AGENT_TIMEOUT"
touch "$WORK/release2"
wait "$FILL" || fail "conn_storm fill failed: $(cat "$WORK/fill.err")"
kill -CONT "$AGENT_PID"
wait_until 10 ctl status || fail "status does not work after SIGCONT"
agent_stop

# --- the usual limits: soft 1,024, hard higher ------------------------------------------------
# The agent raises its soft limit as far as max-clients needs (1024 + 64), no further.
if [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge 1088 ]; then
	sed 's/^ulimit -n 1024 /ulimit -Sn 1024 /' "$WORK/agent-1024" >"$WORK/agent-soft1024"
	chmod 0755 "$WORK/agent-soft1024"
	MTLS_AGENT=$WORK/agent-soft1024 agent_start
	assert_eq "$(awk '/^Max open files/ { print $4 }' "/proc/$AGENT_PID/limits")" 1088 "agent's soft descriptor limit"
	assert_contains "$(cat "$AGENT_LOG")" "descriptor limit raised from 1024 to 1088 for max-clients 1024" "agent log"
	log "soft limit 1024 raised to 1088 by the agent"
	agent_stop
else
	log "NOTE: hard descriptor limit $(ulimit -Hn) < 1088: raising the soft limit not checked"
fi

# --- 3. two uids at their caps do not lock root out -------------------------------------------
# 10 connections, 5 per uid, the last 2 for administrators (root). Group
# daemon may connect; the callers below are not administrators.
write_config() { # IDLE_TIMEOUT
	agent_config "socket-mode = 0660" "socket-group = daemon" "max-clients = 10" \
		"max-clients-per-uid = 5" "admin-reserve = 2" "idle-timeout = $1"
	agent_identity dev1
}
write_config 0
agent_start
nobody_prepare
run_as 40001 daemon "$STORM" hold "$SOCK" 6 "$WORK/release3" >"$WORK/uid1.out" 2>"$WORK/uid1.err" &
U1=$!
bg_track "$U1"
wait_until 30 grep -qx 'done' "$WORK/uid1.out" || fail "uid 40001 did not finish connecting: $(cat "$WORK/uid1.err")"
check_storm "$WORK/uid1.out" 5 1 "uid 40001 has 5 connections open (max-clients-per-uid)"
run_as 40002 daemon "$STORM" hold "$SOCK" 5 "$WORK/release3" >"$WORK/uid2.out" 2>"$WORK/uid2.err" &
U2=$!
bg_track "$U2"
wait_until 30 grep -qx 'done' "$WORK/uid2.out" || fail "uid 40002 did not finish connecting: $(cat "$WORK/uid2.err")"
check_storm "$WORK/uid2.out" 3 2 "the last 2 of 10 are kept for administrators (admin-reserve)"
# Root is an administrator: served from the reserve.
assert_ok ctl status
assert_ok ctl sign dev1 --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv" --out "$WORK/sig"
verify_sig "$WORK/dev1.pub.pem" ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/sig" ||
	fail "signature made from the admin reserve does not verify"
# Anyone else is told why, every time (the refusal may reach the client
# before or after it sends HELLO).
for i in $(seq 1 20); do
	assert_fails ctl_as nobody daemon status
	assert_contains "$LAST_ERR" "too many connections or requests: connection refused: 8 connections open; the last 2 of 10 are kept for administrators" "refusal $i"
done
touch "$WORK/release3"
wait "$U1" || fail "conn_storm as uid 40001 failed: $(cat "$WORK/uid1.err")"
wait "$U2" || fail "conn_storm as uid 40002 failed: $(cat "$WORK/uid2.err")"
assert_ok ctl_as nobody daemon status

# --- 4. idle-timeout ---------------------------------------------------------------------------
write_config 2
assert_ok ctl reload
"$CLIENT" "$SOCK" dev1 "$WORK/go" >"$WORK/client.out" 2>"$WORK/client.err" &
CL=$!
bg_track "$CL"
wait_until 10 grep -q 'signed 1' "$WORK/client.out" || fail "first signature not made: $(cat "$WORK/client.err")"
n_open=$(agent_sockets)
fewer_sockets() { [ "$(agent_sockets)" -lt "$n_open" ]; }
wait_until 15 fewer_sockets ||
	fail "the idle connection was not closed within 15 s (idle-timeout = 2)"
touch "$WORK/go"
wait "$CL" || fail "client failed after its idle connection was closed: $(cat "$WORK/client.err")"
assert_contains "$(cat "$WORK/client.out")" "signed 2" "second signature after the idle close"
# Requests whose replies are never read: closed the same way.
"$STORM" noread "$SOCK" >"$WORK/noread.out" 2>"$WORK/noread.err" ||
	fail "a connection that does not read its replies was not closed: $(cat "$WORK/noread.out" "$WORK/noread.err")"
log "unread replies: $(cat "$WORK/noread.out")"
assert_ok ctl status

# --- 5. not in the socket's group ---------------------------------------------------------------
assert_fails ctl_as nobody nogroup status
assert_contains "$LAST_ERR" ": permission denied on $SOCK (is nobody in group daemon?)" "stderr"
assert_not_contains "$LAST_ERR" "not running" "stderr"
log "not in the socket's group: $LAST_ERR"
agent_alive || fail "agent died"
agent_stop
log PASS
