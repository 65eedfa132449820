# shellcheck shell=bash
# tests/system/lib.sh: sourced by tests/system/run.sh and quickstart.sh. A fresh
# Debian 12 root (make-root.sh's cached tarball) unpacked into a private dir under
# the cache, booted with `systemd-nspawn --boot` (bounded by timeout, always
# stopped on exit), and `cin`/`sh_in` to run commands inside it through nsenter.
#   sys_prepare   checks, unpacks; sets ROOT (copy files into it before booting)
#   sys_boot      boots ROOT (for at most SYS_TIMEOUT s, default 1200), waits for
#                 `systemctl is-system-running`
T0=$SECONDS

say() { printf '[system +%ss] %s\n' "$((SECONDS - T0))" "$*"; }
fail() {
	say "FAIL: $*"
	exit 1
}
skip() {
	say "SKIP: $*"
	exit 77
}

sys_prepare() {
	[ "$(id -u)" -eq 0 ] || skip "needs root (it boots a container)"
	for c in systemd-nspawn nsenter debootstrap; do
		command -v "$c" >/dev/null || skip "$c is not installed (packages systemd-container, util-linux, debootstrap)"
	done
	TARBALL=$("$HERE/make-root.sh") || exit $?
	CACHE=$(dirname "$TARBALL")
	W=$(mktemp -d "$CACHE/run.XXXXXX")
	ROOT=$W/root
	trap sys_cleanup EXIT
	say "unpacking $TARBALL"
	mkdir -p "$ROOT"
	tar -C "$ROOT" -xzf "$TARBALL"
	# The root directory itself must be 0755 (mktemp made the cached one 0700), or
	# every service that is not root fails to traverse "/".
	chmod 755 "$ROOT"
}
NSPAWN_PID=
INIT=
W=

sys_cleanup() {
	local rc=$?
	if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
		[ -z "$INIT" ] || timeout 20 nsenter -t "$INIT" -a systemctl poweroff >/dev/null 2>&1 || true
		for _ in $(seq 30); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 1; done
		kill -TERM "$NSPAWN_PID" 2>/dev/null || true
		for _ in $(seq 10); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 1; done
		kill -KILL "$NSPAWN_PID" 2>/dev/null || true
		wait "$NSPAWN_PID" 2>/dev/null || true
	fi
	if [ "$rc" -ne 0 ] && [ -s "$W/console.log" ]; then
		say "container console (last 30 lines):"
		tail -n 30 "$W/console.log"
	fi
	[ -z "$W" ] || rm -rf "$W"
}

sys_boot() {
	say "booting it: systemd-nspawn --boot"
	# The host's network (apt inside reaches the archive; s_server listens on loopback).
	timeout "${SYS_TIMEOUT:-1200}" systemd-nspawn -D "$ROOT" --boot --quiet --register=no --keep-unit \
		--machine="mtls-test-$$" >"$W/console.log" 2>&1 </dev/null &
	NSPAWN_PID=$!
	# The container's init: the child of systemd-nspawn, itself the child of timeout.
	# nspawn first forks a short-lived set-up child, which then starts init: only a
	# child already running systemd is the one (a loaded machine once caught the
	# set-up child, which was gone a moment later).
	local nspawn
	INIT=
	for _ in $(seq 240); do
		# ps fails while there is no child yet (or it just ended): not an error here.
		nspawn=$(ps -o pid= --ppid "$NSPAWN_PID" | tr -d ' ' | head -n 1) || true
		[ -z "$nspawn" ] || INIT=$(ps -o pid= --ppid "$nspawn" | tr -d ' ' | head -n 1) || true
		if [ -n "$INIT" ] && [ "$(cat "/proc/$INIT/comm" 2>/dev/null)" = systemd ]; then
			break
		fi
		INIT=
		sleep 0.5
	done
	[ -n "$INIT" ] || fail "no init process under systemd-nspawn"
	sys_wait_running
}

# cin CMD...: runs CMD inside the container (all its namespaces), clean environment.
cin() {
	timeout "${IN_TIMEOUT:-120}" nsenter -t "$INIT" -a \
		env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
		LANG=C.UTF-8 "$@"
}
# sh_in SCRIPT: runs a bash script inside.
sh_in() { cin bash -euc "$1"; }

sys_wait_running() {
	local state=
	for _ in $(seq 120); do
		state=$(cin systemctl is-system-running 2>/dev/null || true)
		case "$state" in running | degraded) break ;; esac
		sleep 1
	done
	say "PID 1 in the container: $(cin cat /proc/1/comm), system state: $state"
	case "$state" in
	running) ;;
	degraded) cin systemctl --failed --no-legend || true ;;
	*) fail "the container did not boot (state '$state')" ;;
	esac
}
