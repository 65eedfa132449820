#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# The TPM goes away and comes back under a running agent:
# - swtpm stopped cleanly: signing fails at once with one clear line ("TPM
#   not reachable"), `status` shows it, the agent keeps running; swtpm started
#   again: the next signature works, same agent process;
# - swtpm killed (-9) and restarted, with the TPM's objects gone: the next
#   signature works (the agent reconnects, re-creates the SRK, reloads keys);
# - the same in the middle of a stream of signatures: every signature the
#   agent returns verifies, and the stream recovers;
# - the agent killed (-9) leaves its objects in the TPM's 3 slots; the next
#   agent flushes them and works; a clean stop leaves no object behind.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tpm-lib.sh
. "$(dirname "$0")/../tpm-lib.sh"

testca_init
swtpm_start
tpm_agent_config
tpm_identity ec
tpm_identity rsa
agent_start
identity_setup ec ec-p256
identity_setup rsa rsa-2048
PID0=$AGENT_PID

make_cv13 "$WORK/cv" 32
sign_both() {
	sign_verify ec ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/ec.pub.pem"
	sign_verify rsa rsa_pss_rsae_sha256 "$WORK/cv" "$WORK/rsa.pub.pem"
}
sign_both

# --- clean stop, start ------------------------------------------------------------------------
swtpm_stop
for i in 1 2; do
	assert_fails ctl sign ec --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv" --out "$WORK/down.sig"
	assert_match "$LAST_ERR" 'TPM not reachable' "sign while swtpm is down (try $i)"
	assert_contains "$LAST_ERR" "$TPM_TCTI" "sign while swtpm is down"
done
log "while down: $LAST_ERR"
[ ! -s "$WORK/down.sig" ] || fail "a signature was written while the TPM was down"
assert_ok ctl status
assert_match "$(sed -n '/^keystore tpm/,/^$/p' <<<"$LAST_OUT")" 'state: TPM not reachable' "keystore state while down"
agent_alive || fail "the agent died while the TPM was down"
assert_ok ctl metrics
assert_contains "$LAST_OUT" 'mtls_agent_keystore_up{keystore="tpm",type="tpm2"} 0' "keystore_up metric while down"
swtpm_start
sign_both
assert_eq "$AGENT_PID" "$PID0" "agent pid after the TPM came back"
assert_ok ctl status
assert_match "$(sed -n '/^keystore tpm/,/^$/p' <<<"$LAST_OUT")" 'state: ok' "keystore state after the TPM came back"
assert_ok ctl metrics
assert_contains "$LAST_OUT" 'mtls_agent_keystore_up{keystore="tpm",type="tpm2"} 1' "keystore_up metric after the TPM came back"
assert_contains "$LAST_OUT" 'mtls_agent_keystore_tpm_lockout{keystore="tpm"} 0' "TPM lockout metric"
[ "$(awk '$1 == "mtls_agent_keystore_reconnects_total{keystore=\"tpm\"}" { print $2 }' <<<"$LAST_OUT")" -ge 1 ] ||
	fail "no keystore reconnect counted after the TPM came back: $(grep reconnects <<<"$LAST_OUT")"
log "clean stop/start: recovered"

# --- kill -9, start: the TPM lost every transient object --------------------------------------------
swtpm_kill9
swtpm_start
sign_both
assert_eq "$AGENT_PID" "$PID0" "agent pid after swtpm was killed"
log "kill -9/start: recovered"

# --- in the middle of a stream -----------------------------------------------------------------------
N=60
# The last 10 signatures are asked for only once swtpm is back ($WORK/tpm.back): how many
# fail while it is down depends on the machine's speed (23 of 50 seen unloaded), and the
# claim is that every one after the restart works, not that the restart is fast.
rm -f "$WORK/tpm.back"
(
	for i in $(seq 1 "$N"); do
		[ "$i" -ne $((N - 9)) ] || wait_until 60 test -e "$WORK/tpm.back" || echo "$i: swtpm not back" >>"$WORK/stream.err"
		if ctl sign ec --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv" --out "$WORK/stream.$i" 2>>"$WORK/stream.err"; then
			echo "$i ok"
		else
			rm -f "$WORK/stream.$i"
			echo "$i failed"
		fi
	done >"$WORK/stream.out"
) &
STREAM=$!
bg_track "$STREAM"
stream_at() { [ -f "$WORK/stream.out" ] && [ "$(wc -l <"$WORK/stream.out")" -ge "$1" ]; }
wait_until 30 stream_at 10 || fail "the signature stream did not get going"
swtpm_kill9
sleep 0.3
swtpm_start
touch "$WORK/tpm.back"
wait "$STREAM" || fail "the signature stream failed"
ok=$(grep -c ' ok$' "$WORK/stream.out" || true)
bad=$(grep -c ' failed$' "$WORK/stream.out" || true)
assert_eq "$((ok + bad))" "$N" "signatures attempted in the stream"
for i in $(seq 1 "$N"); do
	[ -f "$WORK/stream.$i" ] || continue
	verify_sig "$WORK/ec.pub.pem" ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/stream.$i" ||
		fail "stream signature $i does not verify"
done
# After the restart every signature works again.
for i in $(seq $((N - 9)) "$N"); do
	grep -qx "$i ok" "$WORK/stream.out" || fail "stream signature $i (after the restart) failed: $(tail -n 3 "$WORK/stream.err")"
done
log "stream of $N: $ok signed (all verify), $bad refused while the TPM was down"

# --- the agent killed: its objects stay in the TPM; the next agent flushes them ------------------------
agent_kill9
stale=$(tpm_tools tpm2_getcap handles-transient | wc -l)
[ "$stale" -ge 1 ] || fail "expected objects left in the TPM by the killed agent, found none"
agent_start
sign_both
[ "$(log_count 'flushed [0-9]+ transient object')" -ge 1 ] ||
	fail "the new agent did not report flushing the stale objects"
agent_stop
assert_eq "$(tpm_tools tpm2_getcap handles-transient | wc -l)" 0 "transient objects after a clean agent stop"
log "killed agent: $stale stale object(s) flushed by the next one; none left after a clean stop"

swtpm_stop
log "PASS"
