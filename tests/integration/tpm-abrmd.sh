#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# The agent behind the TPM2 access broker and resource manager (tpm2-abrmd,
# tcti = tabrmd) in front of a swtpm, on a private D-Bus bus:
# - SIGHUP reloads (the agent keeps its pid and serves), and SIGTERM stops it
#   cleanly (exit 0, socket removed): the tabrmd TCTI starts a GLib thread
#   when the keystore opens, and that thread must not receive those signals;
# - tpm2-abrmd killed (-9) and restarted, three times, under a stream of
#   signatures: each time, signing works again within seconds, without the
#   TPM being restarted (abrmd started without --flush-all, so whatever the
#   dead broker left loaded in the TPM stays there).
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

# abrmd_start: tpm2-abrmd on the private bus in front of this test's swtpm
# (no --flush-all), waits until it owns its bus name.
abrmd_start() {
	[ -z "$ABRMD_PID" ] || fail "abrmd_start: already running"
	printf '=== abrmd_start %s\n' "$(date -u +%T)" >>"$ABRMD_LOG"
	tpm2-abrmd --session --allow-root --tcti="$SWTPM_TCTI" --logger=stdout \
		>>"$ABRMD_LOG" 2>&1 </dev/null &
	ABRMD_PID=$!
	bg_track "$ABRMD_PID"
	wait_until 15 abrmd_owned || {
		show_log "$ABRMD_LOG" 20 2>/dev/null || tail -n 20 "$ABRMD_LOG" >&2
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

testca_init
swtpm_start
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
	TPM2TOOLS_TCTI=$SWTPM_TCTI timeout 20 tpm2_getcap handles-transient >&2 || true
	abrmd_start
	t0=$EPOCHREALTIME
	n=$(oks)
	wait_until 20 stream_ok_after $((n + 3)) || {
		show_log "$WORK/stream.err" 10
		show_log "$ABRMD_LOG" 20
		fail "kill $k: signing did not resume within 20 s of tpm2-abrmd's restart"
	}
	log "kill $k: signing resumed $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s after tpm2-abrmd was up again"
done
touch "$WORK/stream.stop"
wait "${STREAMS[@]}" || true
log "streams: $(oks) signed, $(grep -c '^failed$' "$WORK/stream.out" || true) failed (while the broker was down)"
assert_eq "$(swtpm_alive && echo yes)" yes "swtpm still running (never restarted)"
agent_stop
swtpm_stop
log "PASS"
