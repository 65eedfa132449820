#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# A wrong PIN in the pin file: the agent starts, reports the keystore's
# problem in status, refuses to sign with a clear error, and never retries the
# wrong PIN (C_Login is called once, counted with pkcs11-spy; the agent log
# shows one login failure). Fixing the file and reloading recovers.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

softhsm_setup pin
HAVE_SPY=0
if spy_setup; then HAVE_SPY=1; else log "NOTE: pkcs11-spy not found: C_Login calls counted from the agent log only"; fi
testca_init
agent_config
agent_identity dev1
agent_start
identity_setup dev1 ec-p256
agent_stop

# --- wrong PIN -------------------------------------------------------------------------------------
write_pin_file "${USER_PIN}9"
: >"$SPY_LOG"
LOG_START=$(wc -l <"$AGENT_LOG")
agent_start
make_cv13 "$WORK/cv" 32
for attempt in 1 2; do
	assert_fails ctl sign dev1 --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv" --out "$WORK/sig"
	assert_match "$LAST_ERR" 'pin|login' "sign with a wrong PIN (attempt $attempt)"
	[ ! -s "$WORK/sig" ] || fail "sign with a wrong PIN wrote a signature"
done
# What status must say about the keystore (its state field), and must stop saying once fixed.
WRONG_PIN_ERE='(wrong|incorrect|bad|invalid).{0,20}pin|pin.{0,20}(wrong|incorrect|invalid|locked)|login.{0,20}fail'
assert_ok ctl status
assert_match "$LAST_OUT" "$WRONG_PIN_ERE" "status with a wrong PIN"
log "status with a wrong PIN: $(printf '%s\n' "$LAST_OUT" | grep -i pin | head -n 3)"
agent_alive || fail "agent died with a wrong PIN"

if [ "$HAVE_SPY" = 1 ]; then
	assert_eq "$(spy_count C_Login)" 1 "C_Login calls with a wrong PIN after start and two sign attempts"
	grep -q CKR_PIN_INCORRECT "$SPY_LOG" || fail "the token never answered CKR_PIN_INCORRECT"
fi
# The token's refusal is logged once (a retry would log it again); derived state lines
# ("wrong PIN ...; not retried") are not login failures.
LOGIN_FAIL_ERE='CKR_PIN_INCORRECT|login[^;]*(fail|refused|incorrect)|(refused|rejected) the PIN'
LOGIN_FAILURES=$(tail -n +$((LOG_START + 1)) "$AGENT_LOG" | grep -ciE "$LOGIN_FAIL_ERE" || true)
assert_eq "$LOGIN_FAILURES" 1 "login failure lines (/$LOGIN_FAIL_ERE/) in the agent log after start and two sign attempts"
grep -qF -- "${USER_PIN}9" "$AGENT_LOG" && fail "the agent log contains the PIN"

# --- fix the PIN, reload --------------------------------------------------------------------------
write_pin_file "$USER_PIN"
assert_ok ctl reload
make_cv13 "$WORK/cv" 32
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"
assert_ok ctl status
if grep -qiE "$WRONG_PIN_ERE" <<<"$LAST_OUT"; then
	fail "status still reports a wrong PIN after the fix: $LAST_OUT"
fi
grep -qF -- "$USER_PIN" "$AGENT_LOG" && fail "the agent log contains the PIN"
agent_stop
log "PASS"
