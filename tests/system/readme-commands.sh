#!/bin/bash
# The README's "Try it" commands in a fresh Debian 12 (minbase: no sudo, no git)
# booted with systemd as PID 1:
#   1. `./demo/run` as root, in a fresh root (packages installed by it);
#   2. the tree then configured in place (`./configure`, as older instructions said),
#      and `sudo ./demo/run` from an account with sudo: the tree is cleaned, the demo runs;
#   3. `./demo/run` from an account without root: refused with a message saying how;
#   4. with CI=1: `./.ci/run` as root (SKIP_SYSTEM=1: no container in the container).
# Prints each command's wall time and the end of its output.
# Usage: [CI=1] tests/system/readme-commands.sh   (as root; not part of make check)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
[ "${CI:-0}" != 1 ] || SYS_TIMEOUT=7200
sys_prepare
mkdir -p "$ROOT/root/src"
tar -C "$TOP" --exclude='./build*' --exclude=./.git --exclude=./autom4te.cache -cf - . |
	tar -xf - -C "$ROOT/root/src"
sys_boot

# timed NAME SCRIPT: runs SCRIPT in /root/src inside, prints wall time and the output's end.
timed() {
	local start=$SECONDS rc=0
	say "$1"
	IN_TIMEOUT=${2:-1800} sh_in "cd /root/src && $3" >"$W/out.log" 2>&1 || rc=$?
	tail -n "${TAIL:-12}" "$W/out.log"
	say "$1: exit $rc after $((SECONDS - start)) s"
	return "$rc"
}

TAIL=40 timed "./demo/run as root in a fresh root" 1800 './demo/run' || fail "./demo/run as root"
grep -q 'Subject: CN=gateway-0042\|subject=.*gateway-0042\|CN *= *gateway-0042' "$W/out.log" ||
	fail "the demo's server did not report the client certificate"
grep -E '^\[\+[0-9]+s\]' "$W/out.log" | head -n 20

sh_in 'cd /root/src && ./configure -q >/dev/null && test -f config.status'
say "the tree is now configured in place; an account with sudo runs sudo ./demo/run"
sh_in 'DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sudo >/dev/null
	useradd -m dev && echo "dev ALL=(ALL) NOPASSWD: ALL" >/etc/sudoers.d/dev && chmod 440 /etc/sudoers.d/dev'
timed "sudo ./demo/run (in-place configured tree)" 1800 'runuser -u dev -- sudo ./demo/run' ||
	fail "sudo ./demo/run"
grep -q "configured in place; cleaning it" "$W/out.log" || fail "the in-place configuration was not cleaned"
sh_in 'cd /root/src && test ! -f config.status' || fail "config.status still in the source tree"

rc=0
sh_in 'cd /root/src && chmod -R a+rX /root /root/src && runuser -u dev -- ./demo/run' >"$W/out.log" 2>&1 || rc=$?
say "./demo/run as a user without root: exit $rc: $(cat "$W/out.log")"
[ "$rc" -eq 1 ] && grep -q 'run it as root' "$W/out.log" || fail "non-root run not refused with a message"

if [ "${CI:-0}" = 1 ]; then
	TAIL=60 timed "./.ci/run as root (SKIP_SYSTEM=1)" 5400 'SKIP_SYSTEM=1 ./.ci/run' || fail "./.ci/run"
fi
say "PASS (in $((SECONDS - T0)) s)"
