#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# The agent behind the TPM2 access broker and resource manager (tpm2-abrmd,
# tcti = tabrmd) in front of a swtpm, on a private D-Bus bus:
# - SIGHUP reloads (the agent keeps its pid and serves), and SIGTERM stops it
#   cleanly (exit 0, socket removed): the tabrmd TCTI starts a GLib thread
#   when the keystore opens, and that thread must not receive those signals;
# - tpm2-abrmd killed (-9) and restarted (without --flush-all), three times,
#   under 4 streams of signatures: each time, signing works again within
#   seconds, without the TPM being restarted;
# - tpm2-abrmd killed in the middle of a command, which leaves an object
#   loaded in the TPM that no client of the next broker can flush: the agent
#   keeps signing with 2 of swtpm's 3 object slots taken that way; with all 3
#   taken it says so (error and status) and how to fix it, and recovers at
#   once when tpm2-abrmd is restarted with --flush-all.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tpm-lib.sh
. "$(dirname "$0")/../tpm-lib.sh"
need_cmd tpm2-abrmd dbus-daemon dbus-send
TCTI_DIR=
for d in /usr/lib/*-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do
	if [ -e "$d/libtss2-tcti-tabrmd.so.0" ]; then
		TCTI_DIR=$d
		break
	fi
done
[ -n "$TCTI_DIR" ] || skip "the tabrmd TCTI (libtss2-tcti-tabrmd.so.0, package libtss2-tcti-tabrmd0) is not installed"

# --- a private bus and the broker -------------------------------------------------------------------

BUS_SOCK=$WORK/bus.sock
BUS_PID=
ABRMD_PID=
ABRMD_LOG=$WORK/abrmd.log
ABRMD_NAME=com.intel.tss2.Tabrmd

bus_start() {
	cat >"$WORK/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$BUS_SOCK</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
EOF
	dbus-daemon --config-file="$WORK/bus.conf" --nofork --nopidfile >"$WORK/bus.log" 2>&1 </dev/null &
	BUS_PID=$!
	bg_track "$BUS_PID"
	wait_until 10 test -S "$BUS_SOCK" || fail "dbus-daemon did not create $BUS_SOCK"
	export DBUS_SESSION_BUS_ADDRESS=unix:path=$BUS_SOCK
	log "private D-Bus bus on $BUS_SOCK (pid $BUS_PID)"
}

abrmd_owned() {
	dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
		org.freedesktop.DBus.NameHasOwner "string:$ABRMD_NAME" 2>/dev/null | grep -q 'boolean true'
}

# abrmd_start [ARGS...]: tpm2-abrmd on the private bus in front of this test's
# swtpm (without --flush-all unless ARGS say so); waits until it owns its bus name.
abrmd_start() {
	[ -z "$ABRMD_PID" ] || fail "abrmd_start: already running"
	printf '=== abrmd_start %s\n' "$(date -u +%T)" >>"$ABRMD_LOG"
	tpm2-abrmd --session --allow-root --tcti="$SWTPM_TCTI" --logger=stdout "$@" \
		>>"$ABRMD_LOG" 2>&1 </dev/null &
	ABRMD_PID=$!
	bg_track "$ABRMD_PID"
	wait_until 15 abrmd_owned || {
		tail -n 20 "$ABRMD_LOG" >&2
		fail "tpm2-abrmd did not take its bus name within 15 s"
	}
}

abrmd_gone() { ! abrmd_owned; }

abrmd_kill9() {
	kill -KILL "$ABRMD_PID" 2>/dev/null || true
	wait "$ABRMD_PID" 2>/dev/null || true
	ABRMD_PID=
	wait_until 10 abrmd_gone || fail "the bus still lists $ABRMD_NAME after tpm2-abrmd was killed"
}

# Transient objects in the TPM, read straight from swtpm (only while no broker holds
# its connection).
leaked() {
	TPM2TOOLS_TCTI=$SWTPM_TCTI timeout -k 5 30 tpm2_getcap handles-transient >"$WORK/handles" ||
		fail "tpm2_getcap on swtpm failed"
	grep -c '^- 0x' "$WORK/handles" || true
}

# One signature that verifies.
signs() {
	ctl sign dev --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv" --out "$WORK/signs.sig" &&
		verify_sig "$WORK/dev.pub.pem" ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/signs.sig"
}

# Bytes waiting in swtpm's receive queue (its TCP server port), while it is stopped.
swtpm_has_command() {
	ss -Htn state established "sport = :$SWTPM_PORT" | awk '$1 > 0 { f = 1 } END { exit !f }'
}

since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

testca_init
swtpm_start
SWTPM_PID0=$SWTPM_PID
bus_start
SWTPM_TCTI=$TPM_TCTI
abrmd_start
TPM_TCTI="tabrmd:bus_name=$ABRMD_NAME,bus_type=session"
tpm_agent_config
tpm_identity dev
tpm_identity rsa
agent_start
identity_setup dev ec-p256
identity_setup rsa rsa-2048
assert_contains "$(cat "$AGENT_LOG")" "tcti $TPM_TCTI" "agent log"
make_cv13 "$WORK/cv" 32
sign_verify dev ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev.pub.pem"
sign_verify rsa rsa_pss_rsae_sha256 "$WORK/cv" "$WORK/rsa.pub.pem"
PID0=$AGENT_PID

# --- signals --------------------------------------------------------------------------------------------

for i in 1 2 3; do
	kill -HUP "$AGENT_PID"
	reloaded() { [ "$(log_count 'SIGHUP: reloading')" -ge "$1" ]; }
	wait_until 10 reloaded "$i" ||
		fail "SIGHUP $i: the agent did not log a reload"
	agent_alive || fail "SIGHUP $i killed the agent"
	sign_verify dev ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev.pub.pem"
done
assert_eq "$AGENT_PID" "$PID0" "agent pid after 3 SIGHUPs"
log "3 SIGHUPs: reloaded, same agent, still signing"
agent_stop
agent_start
sign_verify dev ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev.pub.pem"
log "SIGTERM: clean stop (exit 0, socket removed); started again"

# --- the broker killed under load --------------------------------------------------------------------------

# Streams of signatures (4 in parallel, so that a command is in flight when the broker
# dies), one CLI call each, until $WORK/stream.stop exists; one line per attempt in
# $WORK/stream.out: "ok" or "failed".
STREAMS=()
for j in 1 2 3 4; do
	(
		while [ ! -e "$WORK/stream.stop" ]; do
			if ctl sign dev --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv" --out "$WORK/stream.$j.sig" \
				2>>"$WORK/stream.err" &&
				verify_sig "$WORK/dev.pub.pem" ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/stream.$j.sig"; then
				echo ok
			else
				echo failed
			fi
		done >>"$WORK/stream.out"
	) &
	STREAMS+=($!)
	bg_track $!
done
oks() { grep -c '^ok$' "$WORK/stream.out" || true; }
stream_ok_after() { [ "$(oks)" -ge "$1" ]; }
wait_until 30 stream_ok_after 5 || fail "the signature stream did not get going"
for k in 1 2 3; do
	abrmd_kill9
	n=$(leaked)
	abrmd_start
	t0=$EPOCHREALTIME
	c=$(oks)
	wait_until 20 stream_ok_after $((c + 3)) || {
		tail -n 10 "$WORK/stream.err" >&2
		tail -n 20 "$ABRMD_LOG" >&2
		fail "kill $k: signing did not resume within 20 s of tpm2-abrmd's restart ($n object(s) left in the TPM)"
	}
	log "kill $k under load: $n object(s) left in the TPM; signing resumed $(since "$t0") s after tpm2-abrmd was up again"
done
touch "$WORK/stream.stop"
wait "${STREAMS[@]}" || true
log "streams: $(oks) signed, $(grep -c '^failed$' "$WORK/stream.out" || true) failed (while the broker was down)"

# --- the broker killed during a command ---------------------------------------------------------------------
# With swtpm stopped (SIGSTOP), a signature is started: tpm2-abrmd sends the TPM the
# command that loads the key and waits. Killed then, it leaves that object loaded in
# the TPM when swtpm continues, where no client of the next tpm2-abrmd can flush it.
# swtpm has 3 object slots. The agent reloads its key from a saved context (one slot,
# where loading it under its parent takes two), so it keeps signing with up to 2 such
# objects in the TPM; with 3 it reports why and what to do, and a tpm2-abrmd
# restarted with --flush-all brings signing back. swtpm is never restarted.
abrmd_kill9
abrmd_start --flush-all
wait_until 10 signs || fail "no signature after tpm2-abrmd --flush-all"
seen2=0
n=0
for k in 1 2 3 4 5 6; do
	kill -STOP "$SWTPM_PID"
	ctl sign dev --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv" --out "$WORK/inflight.sig" \
		>/dev/null 2>&1 &
	inflight=$!
	# The broker's command is in swtpm's receive queue.
	wait_until 15 swtpm_has_command || fail "kill $k: no command reached the stopped swtpm within 15 s"
	abrmd_kill9
	kill -CONT "$SWTPM_PID"
	wait "$inflight" || true
	n=$(leaked)
	abrmd_start
	[ "$n" -lt 3 ] || break
	t0=$EPOCHREALTIME
	wait_until 10 signs || {
		tail -n 20 "$AGENT_LOG" >&2
		fail "kill $k during a command: $n object(s) left in the TPM; signing did not resume within 10 s"
	}
	[ "$n" -ne 2 ] || seen2=1
	log "kill $k during a command: $n object(s) left in the TPM; signing resumed after $(since "$t0") s"
done
[ "$n" -ge 3 ] || fail "6 kills during a command left only $n object(s) in the TPM"
[ "$seen2" = 1 ] || fail "no round with exactly 2 objects left in the TPM (the case the saved contexts are for)"
assert_fails ctl sign dev --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv" --out "$WORK/full.sig"
assert_contains "$LAST_ERR" "TPM object memory full" "sign with every object slot taken"
log "all $n slots taken: $LAST_ERR"
assert_ok ctl status
assert_contains "$LAST_OUT" "restart tpm2-abrmd with --flush-all" "keystore state with every object slot taken"
abrmd_kill9
abrmd_start --flush-all
t0=$EPOCHREALTIME
wait_until 10 signs || fail "no signature within 10 s of tpm2-abrmd --flush-all"
log "tpm2-abrmd restarted with --flush-all: signing resumed after $(since "$t0") s"
assert_ok ctl status
assert_match "$(sed -n '/^keystore tpm/,/^$/p' <<<"$LAST_OUT")" 'state: ok' "keystore state after --flush-all"
assert_eq "$SWTPM_PID" "$SWTPM_PID0" "swtpm pid (never restarted)"
swtpm_alive || fail "swtpm is gone"
agent_stop
abrmd_kill9
assert_eq "$(leaked)" 0 "objects left in the TPM after a clean agent stop"
swtpm_stop
log "PASS"
