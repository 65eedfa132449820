#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# sd_notify(3) as Type=notify needs it, seen on a NOTIFY_SOCKET this test
# listens on: READY=1 (with STATUS=) once the socket answers; RELOADING=1
# then READY=1 around SIGHUP and `mtls-agentctl reload`, also when the reload
# is refused (STATUS= says why); STOPPING=1 on SIGTERM; WATCHDOG=1 pings
# when WATCHDOG_USEC (and WATCHDOG_PID, if set, is the agent) ask for them.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=systemd-lib.sh
. "$(dirname "$0")/systemd-lib.sh"

softhsm_setup notify
testca_init
agent_config
agent_identity dev1
cp "$CONF" "$WORK/good.conf"

grep -q '^#define HAVE_LIBSYSTEMD 1' "${top_builddir:-$TESTS_DIR/..}/config.h" 2>/dev/null ||
	skip "built without libsystemd: the agent does not notify"

notify_listen

# --- READY=1 once serving ----------------------------------------------------------------------
printf '=== %s: start with NOTIFY_SOCKET\n' "$TEST_NAME" >>"$AGENT_LOG"
# shellcheck disable=SC2086 # MTLS_AGENT_ARGS is a list of words
NOTIFY_SOCKET=$NOTIFY_SOCK "$MTLS_AGENT" -f -c "$CONF" $MTLS_AGENT_ARGS >>"$AGENT_LOG" 2>&1 </dev/null &
AGENT_PID=$!
n=$(notify_wait 20 '(^|[|])READY=1([|]|$)') || fail "no READY=1 within 20 s: $(cat "$NOTIFY_LOG")"
line=$(notify_line "$n")
log "start: $line"
assert_match "$line" 'STATUS=Serving 1 identities on ' "READY=1 at start"
# READY means serving: the socket answers at once, no retry.
assert_ok ctl status
[ "$n" -eq 1 ] || fail "READY=1 was not the first notification: $(cat "$NOTIFY_LOG")"
identity_setup dev1 ec-p256
make_cv13 "$WORK/cv" 32
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"

# --- SIGHUP: RELOADING=1, then READY=1 ----------------------------------------------------------
agent_identity dev2
kill -HUP "$AGENT_PID"
r=$(notify_wait 10 '(^|[|])RELOADING=1([|]|$)' "$n") || fail "no RELOADING=1 after SIGHUP: $(cat "$NOTIFY_LOG")"
line=$(notify_line "$r")
log "SIGHUP: $line"
assert_match "$line" 'MONOTONIC_USEC=[0-9]+' "RELOADING=1"
n=$(notify_wait 10 '(^|[|])READY=1([|]|$)' "$r") || fail "no READY=1 after RELOADING=1: $(cat "$NOTIFY_LOG")"
line=$(notify_line "$n")
log "SIGHUP: $line"
assert_contains "$line" "STATUS=Serving 2 identities on $SOCK" "READY=1 after SIGHUP"
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"

# --- a refused reload still ends in READY=1, and STATUS= says why ---------------------------------
printf 'bogus-key = yes\n' >>"$CONF"
BAD_LINE=$(line_of "$CONF" 'bogus-key = yes')
kill -HUP "$AGENT_PID"
r=$(notify_wait 10 '(^|[|])RELOADING=1([|]|$)' "$n") || fail "no RELOADING=1 after SIGHUP with a broken config"
n=$(notify_wait 10 '(^|[|])READY=1([|]|$)' "$r") || fail "no READY=1 after a refused reload: $(cat "$NOTIFY_LOG")"
line=$(notify_line "$n")
log "refused SIGHUP: $line"
assert_contains "$line" "STATUS=Reload failed, old configuration kept: $CONF:$BAD_LINE:" "READY=1 after a refused reload"
agent_alive || fail "agent died on a refused reload"
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"

# --- mtls-agentctl reload notifies the same way ---------------------------------------------------
cp "$WORK/good.conf" "$CONF"
assert_ok ctl reload
r=$(notify_wait 10 '(^|[|])RELOADING=1([|]|$)' "$n") || fail "no RELOADING=1 after mtls-agentctl reload"
n=$(notify_wait 10 '(^|[|])READY=1([|]|$)' "$r") || fail "no READY=1 after mtls-agentctl reload"
assert_contains "$(notify_line "$n")" "STATUS=Serving 1 identities on $SOCK" "READY=1 after mtls-agentctl reload"
# No watchdog asked for, none sent.
assert_not_contains "$(cat "$NOTIFY_LOG")" "WATCHDOG=1" "notifications without WATCHDOG_USEC"

# --- SIGTERM: STOPPING=1, exit 0 ------------------------------------------------------------------
agent_stop
s=$(notify_wait 10 '(^|[|])STOPPING=1([|]|$)' "$n") || fail "no STOPPING=1 after SIGTERM: $(cat "$NOTIFY_LOG")"
log "SIGTERM: $(notify_line "$s")"

# --- WATCHDOG=1 pings at half of WATCHDOG_USEC ---------------------------------------------------
# start_watchdog USEC PID_MODE: PID_MODE "self" (WATCHDOG_PID is the agent),
# "none" (unset: any process), "other" (another process: not for us).
start_watchdog() {
	printf '=== %s: WATCHDOG_USEC=%s (%s)\n' "$TEST_NAME" "$1" "$2" >>"$AGENT_LOG"
	: >"$NOTIFY_LOG"
	# shellcheck disable=SC2016 # $$ is the exec'ed agent's pid
	NOTIFY_SOCKET=$NOTIFY_SOCK WATCHDOG_USEC=$1 PID_MODE=$2 bash -c '
		case $PID_MODE in
		self) export WATCHDOG_PID=$$ ;;
		other) export WATCHDOG_PID=1 ;;
		esac
		unset PID_MODE
		exec "$@"' _ "$MTLS_AGENT" -f -c "$CONF" >>"$AGENT_LOG" 2>&1 </dev/null &
	AGENT_PID=$!
	notify_wait 20 '(^|[|])READY=1([|]|$)' >/dev/null || fail "no READY=1 with WATCHDOG_USEC=$1"
}

# 600 ms: a ping every 300 ms (the 1 s housekeeping tick shortens to fit).
start_watchdog 600000 self
notify_wait 20 'WATCHDOG=1' >/dev/null || fail "no WATCHDOG=1 with WATCHDOG_USEC=600000"
wait_until 20 sh -c "[ \$(grep -c '^WATCHDOG=1\$' '$NOTIFY_LOG') -ge 5 ]" ||
	fail "fewer than 5 WATCHDOG=1 within 20 s at WATCHDOG_USEC=600000: $(cat "$NOTIFY_LOG")"
assert_contains "$(cat "$AGENT_LOG")" "systemd watchdog: pinging every 300 ms" "agent log"
# Pings continue through signing.
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"
agent_stop

# Without WATCHDOG_PID any process may take it (as sd_watchdog_enabled(3) says).
start_watchdog 2000000 none
notify_wait 20 'WATCHDOG=1' >/dev/null || fail "no WATCHDOG=1 with WATCHDOG_USEC=2000000 and no WATCHDOG_PID"
agent_stop

# WATCHDOG_PID naming another process: no pings.
start_watchdog 600000 other
sleep 2
assert_not_contains "$(cat "$NOTIFY_LOG")" "WATCHDOG=1" "notifications with WATCHDOG_PID of another process"
agent_stop
log "PASS"
