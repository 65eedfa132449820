#!/bin/bash
# The client library keeps one handle across an agent restart: the first
# signature is made, the agent is killed with SIGKILL and started again, and
# the next signature on the same handle works (the library reconnects once).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

CLIENT="${top_builddir:-..}/tests/reconnect_client"
[ -x "$CLIENT" ] || fail "reconnect_client not built at $CLIENT"

softhsm_setup reconnect
testca_init
agent_config
agent_identity dev1
agent_start
identity_setup dev1 ec-p256

"$CLIENT" "$SOCK" dev1 "$WORK/go" > "$WORK/client.out" 2> "$WORK/client.err" &
client_pid=$!
wait_until 10 grep -q 'signed 1' "$WORK/client.out" || fail "first signature not made: $(cat "$WORK/client.err")"
agent_kill9
agent_start
touch "$WORK/go"
wait "$client_pid" || fail "client failed after the restart: $(cat "$WORK/client.err")"
assert_contains "$(cat "$WORK/client.out")" "signed 2" "second signature on the same handle"
agent_stop
log PASS
