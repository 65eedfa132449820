#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# Socket activation: the agent serves the socket systemd passes it
# (LISTEN_FDS, sd_listen_fds) instead of creating one, never removes it,
# warns when it is not the configured path or mode, refuses what is not one
# listening Unix stream socket, and still works without systemd.
#
# Two ways of passing: as systemd starts a socket-activated service (bound
# and listening, fd 3, same PID; under PR_SET_MDWE where the kernel has it,
# which is what MemoryDenyWriteExecute=yes enforces), and on demand with
# Debian's systemd-socket-activate (started by the first connection).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=systemd-lib.sh
. "$(dirname "$0")/systemd-lib.sh"

softhsm_setup activation
testca_init
agent_config
agent_identity dev1

# agent_wait_ready: the agent started in the background ($AGENT_PID) answers `status`.
agent_wait_ready() {
	local rc=0
	if ! wait_until 20 ctl status; then
		kill -0 "$AGENT_PID" 2>/dev/null || { wait "$AGENT_PID" || rc=$?; }
		fail "agent (pid $AGENT_PID, exit status $rc) does not answer on $SOCK"
	fi
}

# agent_stop_passed: SIGTERM; exit 0; the socket systemd passed is still there.
agent_stop_passed() {
	local rc=0
	kill -TERM "$AGENT_PID"
	wait_until 10 sh -c "! kill -0 $AGENT_PID" || fail "agent did not exit within 10 s of SIGTERM"
	wait "$AGENT_PID" || rc=$?
	AGENT_PID=
	[ "$rc" -eq 0 ] || fail "agent exited with status $rc after SIGTERM (expected 0)"
	[ -S "$SOCK" ] || fail "agent removed the socket systemd passed it ($SOCK)"
}

# --- as systemd starts the service of mtls-agent.socket ------------------------------------
MDWE=
if mdwe_supported; then
	MDWE=--mdwe
	log "running the agent under PR_SET_MDWE (MemoryDenyWriteExecute)"
else
	log "kernel without PR_SET_MDWE: MemoryDenyWriteExecute not exercised"
fi
printf '=== passed socket %s\n' "$MDWE" >>"$AGENT_LOG"
# shellcheck disable=SC2086 # MTLS_AGENT_ARGS and MDWE are lists of words
(sd_run_passed "$SOCK" $MDWE -- "$MTLS_AGENT" -f -c "$CONF" $MTLS_AGENT_ARGS) \
	>>"$AGENT_LOG" 2>&1 </dev/null &
AGENT_PID=$!
agent_wait_ready
assert_contains "$(cat "$AGENT_LOG")" "using the socket passed by systemd ($SOCK)" "agent log"
identity_setup dev1 ec-p256
make_cv13 "$WORK/cv" 32
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"
make_cv13 "$WORK/cv48" 48
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv48" "$WORK/dev1.pub.pem"
# Signing with a passed socket under several threads at once.
SIGNERS=()
for i in 1 2 3 4 5 6 7 8; do
	ctl sign dev1 --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv" --out "$WORK/sig.$i" &
	SIGNERS+=($!)
done
for pid in "${SIGNERS[@]}"; do
	wait "$pid" || fail "a concurrent sign over the passed socket failed"
done
for i in 1 2 3 4 5 6 7 8; do
	verify_sig "$WORK/dev1.pub.pem" ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/sig.$i" ||
		fail "concurrent signature $i does not verify"
done
# The agent never touched the socket: mode as systemd made it.
assert_eq "$(stat -c %a "$SOCK")" 660 "mode of the passed socket"
agent_stop_passed
log "passed socket: served, signed, left in place"

# --- on demand: systemd-socket-activate starts the agent on the first connection ------------
if command -v systemd-socket-activate >/dev/null 2>&1; then
	rm -f "$SOCK"
	printf '=== systemd-socket-activate\n' >>"$AGENT_LOG"
	# It passes on only PATH, HOME, TERM, USER and what -E names.
	# shellcheck disable=SC2086
	systemd-socket-activate -l "$SOCK" --fdname=mtls-agent.socket \
		-E SOFTHSM2_CONF -E ASAN_OPTIONS -E LSAN_OPTIONS -E UBSAN_OPTIONS \
		"$MTLS_AGENT" -f -c "$CONF" $MTLS_AGENT_ARGS >>"$AGENT_LOG" 2>&1 </dev/null &
	ACTIVATOR=$!
	bg_track "$ACTIVATOR"
	wait_until 10 test -S "$SOCK" || fail "systemd-socket-activate did not create $SOCK"
	# The first connection starts the agent; status waits for it.
	assert_ok ctl status
	AGENT_PID=$(pgrep -P "$ACTIVATOR" | head -n 1 || true)
	[ -n "$AGENT_PID" ] || AGENT_PID=$ACTIVATOR # it may exec rather than fork
	assert_contains "$(cat "$AGENT_LOG")" "using the socket passed by systemd ($SOCK)" "agent log"
	# systemd-socket-activate makes the socket under our umask: the agent says it differs.
	if [ "$(stat -c %a "$SOCK")" != 660 ]; then
		assert_match "$(cat "$AGENT_LOG")" "$SOCK has mode [0-7]+ \\(SocketMode= in mtls-agent.socket\\), not socket-mode 0660" "agent log"
	fi
	make_cv13 "$WORK/cv" 32
	sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"
	kill -TERM "$AGENT_PID"
	wait_until 10 sh -c "! kill -0 $AGENT_PID" || fail "agent did not exit within 10 s of SIGTERM"
	wait_until 10 sh -c "! kill -0 $ACTIVATOR" || fail "systemd-socket-activate did not end with the agent"
	rc=0
	wait "$ACTIVATOR" || rc=$?
	[ "$rc" -eq 0 ] || fail "agent under systemd-socket-activate exited with status $rc after SIGTERM"
	AGENT_PID=
	[ -S "$SOCK" ] || fail "agent removed the socket systemd-socket-activate passed it"
	log "systemd-socket-activate: started on demand, signed, socket left in place"
else
	log "systemd-socket-activate not installed: on-demand start not exercised"
fi

# --- a passed socket at another path than the configuration's: served, with a warning ------
OTHER=$WORK/other.sock
printf '=== passed socket at another path\n' >>"$AGENT_LOG"
(sd_run_passed "$OTHER" -- "$MTLS_AGENT" -f -c "$CONF") >>"$AGENT_LOG" 2>&1 </dev/null &
AGENT_PID=$!
wait_until 20 timeout -k 2 5 "$MTLS_AGENTCTL" -s "$OTHER" status ||
	fail "agent does not answer on the passed socket $OTHER"
assert_match "$(cat "$AGENT_LOG")" "warning: the socket passed by systemd is $OTHER but the configuration says socket = $SOCK" "agent log"
kill -TERM "$AGENT_PID"
wait "$AGENT_PID" || fail "agent exited non-zero after SIGTERM"
AGENT_PID=
[ -S "$OTHER" ] || fail "agent removed the passed socket $OTHER"

# --- what is not one listening Unix stream socket is refused, with one clear line ----------
# start_refused WHAT CMD...: the agent must exit 1 and say why on one line.
start_refused() {
	local what=$1 rc=0
	shift
	"$@" >"$WORK/refused.out" 2>"$WORK/refused.err" </dev/null || rc=$?
	[ "$rc" -eq 1 ] || fail "$what: agent must exit 1, exited $rc: $(cat "$WORK/refused.err")"
	[ "$(awk 'END { print NR }' "$WORK/refused.err")" -eq 1 ] ||
		fail "$what: expected one line on stderr: $(cat "$WORK/refused.err")"
	assert_contains "$(cat "$WORK/refused.err")" "socket activation" "$what"
	log "$what: $(cat "$WORK/refused.err")"
}
: >"$WORK/not-a-socket"
# shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
start_refused "a regular file on fd 3" timeout -k 5 20 bash -c \
	'export LISTEN_FDS=1 LISTEN_PID=$$; exec "$@" 3<"$0"' "$WORK/not-a-socket" \
	"$MTLS_AGENT" -f -c "$CONF"
start_refused "a datagram socket on fd 3" timeout -k 5 20 python3 -c '
import fcntl, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.dup2(fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 100), 3, inheritable=True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execvp(sys.argv[2], sys.argv[2:])' "$WORK/dgram.sock" "$MTLS_AGENT" -f -c "$CONF"
rm -f "$SOCK" "$SOCK.2"
start_refused "two sockets" timeout -k 5 20 python3 "$SD_HELPER" passed "$SOCK" --fds 2 -- \
	"$MTLS_AGENT" -f -c "$CONF"
# LISTEN_PID naming another process: not for us; the agent makes its own socket.
rm -f "$SOCK"
printf '=== LISTEN_PID of another process\n' >>"$AGENT_LOG"
LISTEN_FDS=1 LISTEN_PID=1 "$MTLS_AGENT" -f -c "$CONF" >>"$AGENT_LOG" 2>&1 </dev/null 3</dev/null &
AGENT_PID=$!
agent_wait_ready
agent_stop

# --- without systemd, exactly as before: makes its socket, removes it at exit ---------------
agent_start
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"
assert_not_contains "$(tail -n 5 "$AGENT_LOG")" "passed by systemd" "agent log without LISTEN_FDS"
agent_stop
log "PASS"
