#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# The systemd units as built (systemd/mtls-agent.service from its .in, and
# mtls-agent.socket): `systemd-analyze verify` passes with nothing on stderr;
# `systemd-analyze security` rates the service at 2.0 or better; the
# sysusers.d and tmpfiles.d entries create the user, groups and directories
# they promise (applied to a scratch root, never to this system).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

command -v systemd-analyze >/dev/null 2>&1 ||
	skip "systemd-analyze is not installed: the units are NOT verified"

SRC=${top_srcdir:-$TESTS_DIR/..}
BLD=${top_builddir:-$TESTS_DIR/..}
SERVICE=$BLD/systemd/mtls-agent.service
SOCKET_UNIT=$BLD/systemd/mtls-agent.socket
[ -f "$SERVICE" ] || fail "$SERVICE not built (make builds it from systemd/mtls-agent.service.in)"
[ -f "$SOCKET_UNIT" ] || fail "$SOCKET_UNIT not built (make builds it from systemd/mtls-agent.socket.in)"

# --- the generated unit -----------------------------------------------------------------------
if grep -n '@[a-z_]*@' "$SERVICE" "$SOCKET_UNIT"; then
	fail "unsubstituted @...@ placeholders in the built units"
fi
EXEC=$(sed -n 's/^ExecStart=//p' "$SERVICE")
assert_match "$EXEC" '^/[^ ]*/mtls-agent -f$' "ExecStart= of the generated unit"
assert_contains "$(cat "$SERVICE")" "Type=notify" "$SERVICE"

# --- systemd-analyze verify: a copy whose ExecStart is the binary just built ------------------
# (verify checks that the program exists; the installed path need not, yet).
mkdir -p "$WORK/units"
sed "s|^ExecStart=[^ ]*|ExecStart=$MTLS_AGENT|" "$SERVICE" >"$WORK/units/mtls-agent.service"
cp "$SOCKET_UNIT" "$WORK/units/mtls-agent.socket"

# Documentation= names man pages: checked when man(1) and the pages are here.
MAN_OPT=--man=no
if command -v man >/dev/null 2>&1; then
	mkdir -p "$WORK/man"
	found=1
	for page in mtls-agent.8 mtls-agent.conf.5 mtls-agentctl.1; do
		f=$(find "$BLD/man" "$SRC/man" -maxdepth 2 -name "$page" 2>/dev/null | head -n 1 || true)
		if [ -z "$f" ]; then
			found=0
			break
		fi
		mkdir -p "$WORK/man/man${page##*.}"
		cp "$f" "$WORK/man/man${page##*.}/"
	done
	if [ "$found" = 1 ]; then
		MAN_OPT=--man=yes
		export MANPATH=$WORK/man
	else
		log "man pages not built yet: Documentation= not checked"
	fi
fi

rc=0
(cd "$WORK/units" && systemd-analyze verify "$MAN_OPT" \
	"$WORK/units/mtls-agent.service" "$WORK/units/mtls-agent.socket") \
	>"$WORK/verify.out" 2>"$WORK/verify.err" || rc=$?
[ "$rc" -eq 0 ] || fail "systemd-analyze verify exited $rc: $(cat "$WORK/verify.err" "$WORK/verify.out")"
[ ! -s "$WORK/verify.err" ] || fail "systemd-analyze verify warns: $(cat "$WORK/verify.err")"
log "systemd-analyze verify $MAN_OPT: no warnings"

# --- systemd-analyze security (offline: no service manager needed) ----------------------------
rc=0
systemd-analyze security --offline=true "$WORK/units/mtls-agent.service" \
	>"$WORK/security.out" 2>"$WORK/security.err" || rc=$?
[ "$rc" -eq 0 ] || fail "systemd-analyze security exited $rc: $(cat "$WORK/security.err")"
SCORE=$(sed -n 's/.*Overall exposure level for mtls-agent.service: \([0-9.]*\).*/\1/p' "$WORK/security.out")
[ -n "$SCORE" ] || fail "no exposure level in systemd-analyze security output: $(cat "$WORK/security.out")"
log "systemd-analyze security: exposure $SCORE"
# What is still exposed ("-" under LC_ALL=C, "✗" in a UTF-8 locale).
grep -E '^(- |✗ )' "$WORK/security.out" >&2 || true
awk -v s="$SCORE" 'BEGIN { exit !(s <= 2.0) }' ||
	fail "exposure level $SCORE is over the 2.0 target"

# --- SystemCallFilter=: every system call the agent makes is allowed --------------------------
# The agent runs under strace through start-up (creating its socket, with
# socket-group), key generation, CSR, import, signing, a SIGHUP reload and
# SIGTERM; the calls it made must all be in the unit's filter as
# systemd-analyze syscall-filter expands it.
syscall_allowed() { # FILTER-LINES...: prints the allowed set, one name a line
	systemd-analyze syscall-filter 2>/dev/null | awk -v spec="$*" '
		/^@/ { g = $1; next }
		g != "" && NF > 0 && $1 !~ /^#/ { m[g] = m[g] " " $1 }
		function expand(x, out,   n, i, a) {
			if (x !~ /^@/) { out[x] = 1; return }
			n = split(m[x], a, " ")
			for (i = 1; i <= n; i++)
				expand(a[i], out)
		}
		END {
			n = split(spec, s, " ")
			for (i = 1; i <= n; i++) {
				neg = s[i] ~ /^~/
				name = s[i]; sub(/^~/, "", name)
				delete t
				expand(name, t)
				for (c in t) {
					if (neg) delete allowed[c]
					else allowed[c] = 1
				}
			}
			for (c in allowed) print c
		}'
}
if ! command -v strace >/dev/null 2>&1; then
	log "strace not installed: SystemCallFilter= not checked against the agent's calls"
elif ! strace -f -qq -o /dev/null true >/dev/null 2>&1; then
	log "strace cannot trace here (ptrace refused): SystemCallFilter= not checked"
else
	FILTER=$(sed -n 's/^SystemCallFilter=//p' "$SERVICE" | tr '\n' ' ')
	log "SystemCallFilter: $FILTER"
	# shellcheck disable=SC2086 # one word per filter item
	syscall_allowed $FILTER | sort >"$WORK/syscalls.allowed"
	[ -s "$WORK/syscalls.allowed" ] || fail "cannot expand SystemCallFilter=$FILTER"
	softhsm_setup units
	testca_init
	agent_config "socket-group = $(id -gn)"
	agent_identity dev1
	printf '=== %s: agent under strace\n' "$TEST_NAME" >>"$AGENT_LOG"
	# LeakSanitizer cannot run under ptrace (ASan builds): leaks are checked by every
	# other test; this one only collects system calls.
	ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
		strace -f -qq -o "$WORK/strace.out" "$MTLS_AGENT" -f -c "$CONF" >>"$AGENT_LOG" 2>&1 </dev/null &
	TRACER=$!
	bg_track "$TRACER"
	wait_until 30 ctl status || fail "agent under strace does not answer on $SOCK"
	AGENT_PID=$(pgrep -P "$TRACER" | head -n 1 || true)
	[ -n "$AGENT_PID" ] || fail "cannot find the agent traced by strace (pid $TRACER)"
	identity_setup dev1 ec-p256
	make_cv13 "$WORK/cv" 32
	sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"
	kill -HUP "$AGENT_PID"
	wait_until 10 grep -q 'configuration reloaded' "$AGENT_LOG" || fail "no reload under strace"
	sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"
	kill -TERM "$AGENT_PID"
	rc=0
	wait "$TRACER" || rc=$? # strace exits with the agent's status
	AGENT_PID=
	[ "$rc" -eq 0 ] || fail "agent under strace exited with status $rc after SIGTERM"
	[ ! -e "$SOCK" ] || fail "agent left its socket $SOCK behind"
	sed -nE 's/^[0-9]+ +([a-z0-9_]+)\(.*/\1/p' "$WORK/strace.out" | sort -u >"$WORK/syscalls.used"
	[ -s "$WORK/syscalls.used" ] || fail "strace recorded no system calls"
	OUTSIDE=$(comm -23 "$WORK/syscalls.used" "$WORK/syscalls.allowed" | tr '\n' ' ')
	[ -z "$OUTSIDE" ] || fail "the agent makes system calls SystemCallFilter= refuses: $OUTSIDE"
	log "SystemCallFilter: all $(wc -l <"$WORK/syscalls.used") system calls the agent made are allowed"
fi

# --- sysusers.d and tmpfiles.d, applied to a scratch root ------------------------------------
if ! command -v systemd-sysusers >/dev/null 2>&1 || ! command -v systemd-tmpfiles >/dev/null 2>&1; then
	log "systemd-sysusers/systemd-tmpfiles not installed: entries not exercised"
	log "PASS"
	exit 0
fi
ROOT=$WORK/root
mkdir -p "$ROOT/etc"
assert_ok systemd-sysusers --root="$ROOT" "$SRC/systemd/sysusers.d/mtls-agent.conf"
passwd_field() { awk -F: -v n="$1" -v f="$2" '$1 == n { print $f }' "$ROOT/etc/${3:-passwd}"; }
AUID=$(passwd_field mtls-agent 3)
AGID=$(passwd_field mtls-agent 3 group)
if [ -z "$AUID" ] || [ "$AUID" -ge 1000 ]; then
	fail "sysusers: no system user mtls-agent: $(cat "$ROOT/etc/passwd")"
fi
[ "$(passwd_field mtls-agent 4)" = "$AGID" ] || fail "sysusers: mtls-agent's primary group is not mtls-agent"
assert_match "$(passwd_field mtls-agent 7)" 'nologin$' "mtls-agent's shell"
[ -n "$(passwd_field mtls 3 group)" ] || fail "sysusers: no group mtls"
for g in tss mtls; do
	assert_match ",$(passwd_field "$g" 4 group)," ',mtls-agent,' "members of group $g"
done

if [ "$(id -u)" -ne 0 ]; then
	log "not root: tmpfiles.d ownership not exercised"
	log "PASS"
	exit 0
fi
assert_ok systemd-tmpfiles --root="$ROOT" --create "$SRC/systemd/tmpfiles.d/mtls-agent.conf"
check_dir() { # PATH MODE UID GID
	[ -d "$ROOT$1" ] || fail "tmpfiles: $1 not created"
	assert_eq "$(stat -c '%a %u %g' "$ROOT$1")" "$2 $3 $4" "mode, owner, group of $1"
}
# 0755: applications read openssl.cnf there (hsm.pin is 0600 itself).
check_dir /etc/mtls-agent 755 0 "$AGID"
check_dir /var/lib/mtls-agent 750 "$AUID" "$AGID"
check_dir /run/mtls-agent 755 "$AUID" "$AGID"

# The unit and the entries agree on what they share.
assert_contains "$(cat "$SERVICE")" "StateDirectoryMode=0750" "$SERVICE"
assert_contains "$(cat "$SERVICE")" "ConfigurationDirectoryMode=0755" "$SERVICE"
assert_contains "$(cat "$SOCKET_UNIT")" "ListenStream=/run/mtls-agent/agent.sock" "$SOCKET_UNIT"
log "PASS"
