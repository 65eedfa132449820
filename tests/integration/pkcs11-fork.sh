#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# mtls-agent-pkcs11.so in the situations applications put it in
# (tests/p11_client.c; identity with the default sign-policy, signing TLS 1.3
# CertificateVerify content with CKM_ECDSA_SHA256, every signature verified):
#   - a process loads the key, signs, forks 8 children that sign with the
#     parent's session and 8 that call C_Initialize afresh; none fails, and
#     the parent still signs afterwards;
#   - 8 threads sign concurrently (CKF_OS_LOCKING_OK);
#   - the agent restarts under a running client: the same session and key
#     handle sign again, and a new search returns the same handle;
#   - C_Initialize/C_Finalize argument rules (PKCS#11 2.40 section 5.4).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_cmd python3

# This build's module (not $MTLS_PKCS11_MODULE): p11_client is built with the same
# flags, so under ASan both are instrumented.
P11_MODULE=$top_builddir/pkcs11/.libs/mtls-agent-pkcs11.so
[ -f "$P11_MODULE" ] || skip "PKCS#11 module not built: $P11_MODULE"
CLIENT=$top_builddir/tests/p11_client
[ -x "$CLIENT" ] || fail "p11_client not built at $CLIENT"

softhsm_setup p11fork
testca_init
agent_config
agent_identity f-ec
agent_start
identity_setup f-ec ec-p256
export MTLS_AGENT_SOCK=$SOCK

client() {
	timeout -k 5 60 "$CLIENT" "$P11_MODULE" f-ec "$@"
}

out=$(client spec) || fail "C_Initialize/C_Finalize rules: $out"
log "ok: $out"

before=$(id_counter f-ec signatures)
out=$(client fork 8) || fail "fork test failed: $out"
assert_eq "$out" "fork: 16 children signed and verified" "fork test"
[ "$(id_counter f-ec signatures)" -ge $((before + 18)) ] ||
	fail "the agent counted fewer than 18 signatures for the fork test"
log "ok: $out (parent before and after)"

out=$(client threads 8) || fail "thread test failed: $out"
assert_eq "$out" "threads: 8 x 10 signatures verified" "thread test"
log "ok: $out"

# The agent restarts while a client holds a session and a key handle.
client restart "$WORK/restarted" >"$WORK/restart.out" 2>"$WORK/restart.err" &
cpid=$!
bg_track "$cpid"
wait_until 30 grep -q '^ready' "$WORK/restart.out" || {
	cat "$WORK/restart.err" >&2
	fail "p11_client restart did not get ready"
}
agent_stop
agent_start
touch "$WORK/restarted"
rc=0
wait "$cpid" || rc=$?
[ "$rc" -eq 0 ] || fail "after the agent restart: $(cat "$WORK/restart.err")"
log "ok: $(tail -n 1 "$WORK/restart.out")"

agent_stop
log "PASS"
