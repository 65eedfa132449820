#!/bin/bash
# Prints the path of a cached tarball of a fresh Debian 12 root (debootstrap
# --variant=minbase, from the host's apt mirror), making it first if it is missing:
# what tests/system/run.sh boots. Only what a booted minimal system needs is added
# (systemd as init, dbus); everything else comes from the packages under test and
# the test's own apt-get inside the container.
#   MTLS_CI_CACHE   cache directory (default /var/cache/mtls-agent-ci)
set -euo pipefail
CACHE=${MTLS_CI_CACHE:-/var/cache/mtls-agent-ci}
TARBALL=$CACHE/bookworm-minbase-systemd.tar.gz
if [ -s "$TARBALL" ]; then
	echo "$TARBALL"
	exit 0
fi
command -v debootstrap >/dev/null || {
	echo "make-root.sh: debootstrap is not installed" >&2
	exit 77
}
# The mirror the host uses (deb822 sources first, then a classic sources.list).
MIRROR=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)\/*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
[ -n "$MIRROR" ] || MIRROR=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
mkdir -p "$CACHE"
ROOT=$(mktemp -d "$CACHE/root.XXXXXX")
chmod 755 "$ROOT" # "/" of the system to be
trap 'rm -rf "$ROOT" "$ROOT.log"' EXIT
echo "make-root.sh: debootstrap --variant=minbase bookworm from $MIRROR (once; cached as $TARBALL)" >&2
timeout 900 debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus \
	bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || {
	tail -n 30 "$ROOT.log" >&2
	exit 1
}
rm -f "$ROOT.log"
# The host's apt sources (bookworm, -updates, -security), so that apt inside sees
# the same archive as CI.
rm -f "$ROOT/etc/apt/sources.list"
cp /etc/apt/sources.list.d/*.sources "$ROOT/etc/apt/sources.list.d/" 2>/dev/null ||
	cp /etc/apt/sources.list "$ROOT/etc/apt/sources.list"
echo mtls-test >"$ROOT/etc/hostname"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -czf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
echo "$TARBALL"
