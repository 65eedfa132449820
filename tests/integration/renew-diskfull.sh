#!/bin/bash
# A full disk right after key generation (issue 17 item 8). The state dir is
# a small tmpfs (in a private mount namespace) filled so that exactly one page
# is left: the renewal journal takes it, the new key is made in the token
# (SoftHSM, elsewhere), then the record of the new key as pending cannot be
# written. Before the fix that key stayed in the token for good, used and
# deleted by nothing. Now: the renewal fails with the reason, the token holds
# only the key in use (the new one was deleted again), the certificate is
# untouched; the retries make no more keys; after the disk has room and the
# agent restarts, there is no orphan and a renewal works.
set -eu
if [ -z "${MTLS_TEST_MNTNS:-}" ]; then
	[ "$(id -u)" = 0 ] || { echo "SKIP: needs root to mount a tmpfs" >&2; exit 77; }
	command -v unshare >/dev/null 2>&1 || { echo "SKIP: unshare not installed (util-linux)" >&2; exit 77; }
	unshare -m --propagation private true 2>/dev/null ||
		{ echo "SKIP: cannot make a private mount namespace here" >&2; exit 77; }
	MTLS_TEST_MNTNS=1 exec unshare -m --propagation private "$0" "$@"
fi
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_cmd pkcs11-tool python3 mount umount dd

testca_init
server_cert_setup
softhsm_setup diskfull
est_ca_start --lifetime 3600
agent_config
mount -t tmpfs -o size=64k,mode=0700 tmpfs "$STATE_DIR" || skip "cannot mount a tmpfs"
# Detached first, so that lib.sh's clean-up can remove the work directory.
trap 'rc=$?; set +e; umount -l "$STATE_DIR" 2>/dev/null; (exit $rc); _cleanup' EXIT
renew_lines est "key-type = ec-p256"
agent_identity gw "${RENEW_LINES[@]}"
agent_start
identity_setup gw ec-p256
assert_ok ctl renew gw
keys0=$(keystore_keys gw)
s0=$(current_serial gw)
cp "$STATE_DIR/gw.crt" "$WORK/before.crt"
log "renewed once: serial $s0; token keys: $(printf '%s' "$keys0" | tr '\n' ' ')"

# Exactly one free page: a one-byte file holds it while the filler takes the rest.
echo x >"$STATE_DIR/slot"
dd if=/dev/zero of="$STATE_DIR/fill" bs=4k 2>/dev/null || true
rm -f "$STATE_DIR/slot"
echo probe >"$STATE_DIR/probe" || fail "no page left free for the journal"
rm -f "$STATE_DIR/probe"

assert_fails ctl renew gw
[ "$(keystore_keys gw)" = "$keys0" ] ||
	fail "the token holds other keys after the failed keygen: $(keystore_keys gw | tr '\n' ' ') (before: $keys0)"
assert_contains "$LAST_ERR" "No space left on device" "mtls-agentctl renew"
assert_contains "$LAST_ERR" "the new key was deleted again" "mtls-agentctl renew"
cmp -s "$STATE_DIR/gw.crt" "$WORK/before.crt" || fail "the certificate file changed"
[ ! -e "$STATE_DIR/gw.pending" ] || fail "a pending record exists although it could not be written"
log "full disk: $LAST_ERR"

# The automatic retries (full-jitter backoff: 1..3 s, then 1..6 s ...) fail the same way
# and leave no key behind. The token is read right after a retry's failure is logged (the
# key it made is deleted before that line, and the next attempt is at least 1 s later): a
# read at a fixed time could fall inside an attempt, between its keygen and its deletion.
failures() { grep -c "the new key was deleted again" "$AGENT_LOG" || true; }
retried() { [ "$(failures)" -ge 2 ]; }
wait_until 30 retried || fail "expected the agent to retry on its own, saw $(failures) failure(s)"
[ "$(keystore_keys gw)" = "$keys0" ] || fail "retries left keys in the token: $(keystore_keys gw | tr '\n' ' ')"
n=$(failures)
log "$n failed attempts, token unchanged"

# Room again; a restart finds no orphan, and renewal works.
agent_stop
rm -f "$STATE_DIR/fill"
agent_start
[ "$(keystore_keys gw)" = "$keys0" ] || fail "after the restart: $(keystore_keys gw | tr '\n' ' ')"
[ ! -e "$STATE_DIR/gw.renew" ] || fail "a renewal journal is left: $(cat "$STATE_DIR/gw.renew")"
assert_ok ctl renew gw
s1=$(current_serial gw)
[ -n "$s1" ] && [ "$s1" != "$s0" ] || fail "no new certificate after the disk had room again"
keys1=$(keystore_keys gw)
[ "$(printf '%s\n' "$keys1" | grep -c .)" -eq $(($(printf '%s\n' "$keys0" | grep -c .) + 1)) ] ||
	fail "expected the keys from before and one new key: $(printf '%s' "$keys1" | tr '\n' ' ')"
log "OK: no orphan key; after a restart with room, serial $s1"
agent_stop
