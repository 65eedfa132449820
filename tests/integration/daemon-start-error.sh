#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# A daemon (no -f: it would log to syslog) that cannot start says why on stderr
# and exits 1, also where there is no syslog (/dev/log absent, as in a container
# or a minimal root); one that starts prints nothing and serves.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

softhsm_setup starterr
agent_config
agent_identity dev1

# Without syslog: where /dev/log exists, a private mount namespace puts /dev/null
# over it (connecting to it then fails as where it is absent; needs root).
no_syslog() {
	if [ -e /dev/log ] || [ -L /dev/log ]; then
		[ "$(id -u)" -eq 0 ] || skip "/dev/log exists and only root can hide it"
		unshare -m bash -c 'mount --bind /dev/null /dev/log && exec "$@"' _ "$@"
	else
		"$@"
	fi
}

# 1. The socket's directory is a regular file: the child fails after forking.
touch "$WORK/notadir"
sed "s|^socket = .*|socket = $WORK/notadir/agent.sock|" "$CONF" >"$WORK/bad.conf"
chmod 600 "$WORK/bad.conf"
rc=0
no_syslog timeout 20 "$MTLS_AGENT" -c "$WORK/bad.conf" >"$WORK/out" 2>"$WORK/err" </dev/null || rc=$?
log "failed start: exit $rc, stderr: $(cat "$WORK/err")"
assert_eq "$rc" 1 "exit status of a daemon that cannot start"
assert_contains "$(cat "$WORK/err")" "mtls-agent: error: socket directory $WORK/notadir is not a directory" \
	"stderr of a daemon that cannot start"
assert_eq "$(wc -l <"$WORK/err")" 1 "one line on stderr"

# 2. A good configuration: exit 0, nothing on stderr, the daemon serves.
rc=0
no_syslog timeout 20 "$MTLS_AGENT" -c "$CONF" >"$WORK/out" 2>"$WORK/err" </dev/null || rc=$?
assert_eq "$rc" 0 "exit status of a daemon that started"
assert_eq "$(cat "$WORK/err")" "" "stderr of a daemon that started"
assert_ok ctl status
pid=$(pgrep -f -x "$MTLS_AGENT -c $CONF" | head -n 1) || fail "no daemon process for $CONF"
bg_track "$pid"
kill -TERM "$pid"
wait_until 10 bash -c "! kill -0 $pid 2>/dev/null" || fail "daemon $pid did not stop on SIGTERM"
log "ok"
