# shellcheck shell=bash
# Sourced first, before lib.sh, by a test whose servers bind every interface (openssl cmp
# -port, openssl ocsp -port): the test re-executes itself in a private network namespace
# (unshare -n) with only loopback up, or skips (77) saying why. NETNS_FOR names the server.
if [ -z "${MTLS_IN_NETNS:-}" ]; then
	if ! command -v unshare >/dev/null 2>&1 || ! unshare -n true 2>/dev/null; then
		printf '\n%s: *** SKIP *** cannot make a network namespace (unshare -n), needed to contain %s\n' \
			"$(basename "$0" .sh)" "${NETNS_FOR:-a server on every interface}" >&2
		exit 77
	fi
	exec unshare -n env MTLS_IN_NETNS=1 bash "$0" "$@"
fi
ip link set lo up
