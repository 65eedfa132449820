#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# Unclean TPM shutdowns do not lock the agent's keys out.
#
# A TPM that loses power after a dictionary-attack-protected key was used
# counts that as a failed authorization at the next start-up; after
# TPM2_PT_MAX_AUTH_FAIL of them (3 on swtpm) such keys are locked out. The
# agent makes its keys noDA, so:
# - 200 signatures in a row, with swtpm killed (-9) and restarted every 20
#   signatures (10 unclean shutdowns, more than the TPM allows), all succeed
#   and verify, and TPM2_PT_LOCKOUT_COUNTER stays 0;
# - control: a DA-protected key (made by tpm2-openssl, whose keys are not
#   noDA) used through the agent raises the counter by one per unclean
#   shutdown, until the TPM is in lockout; then the agent reports
#   TPM_RC_LOCKOUT for that key (in the error and in `status`), never
#   retrying it, while the noDA key keeps signing.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tpm-lib.sh
. "$(dirname "$0")/../tpm-lib.sh"
need_tpm2_openssl

testca_init
swtpm_start
MAX=$(tpm_tools tpm2_getcap properties-variable | sed -n 's/^TPM2_PT_MAX_AUTH_FAIL: *//p')
MAX=$(printf '%d' "$MAX")
if [ "$MAX" -lt 1 ] || [ "$MAX" -gt 9 ]; then
	fail "unexpected TPM2_PT_MAX_AUTH_FAIL $MAX"
fi
assert_eq "$(tpm_lockout_counter)" 0 "lockout counter of a new TPM"
tpm_openssl genpkey -provider tpm2 -algorithm EC -pkeyopt group:P-256 -out "$TPM_KEYS/da.pem" \
	2>"$WORK/genpkey.err" || fail "tpm2-openssl genpkey failed: $(cat "$WORK/genpkey.err")"
tss2_pubkey "$TPM_KEYS/da.pem" "$WORK/da.pub.pem"

tpm_agent_config
tpm_identity dev
tpm_identity da "sign-policy = any"
agent_start
identity_setup dev ec-p256
PID0=$AGENT_PID

# --- 200 signatures, 10 unclean shutdowns ---------------------------------------------------
make_cv13 "$WORK/cv" 32
kills=0
for i in $(seq 1 200); do
	if [ $((i % 20)) -eq 0 ]; then
		swtpm_kill9
		swtpm_start
		kills=$((kills + 1))
	fi
	assert_ok ctl sign dev --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv" --out "$WORK/noda.$i"
done
for i in $(seq 1 200); do
	verify_sig "$WORK/dev.pub.pem" ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/noda.$i" ||
		fail "signature $i does not verify"
done
assert_eq "$AGENT_PID" "$PID0" "agent pid"
agent_stop
assert_eq "$(tpm_lockout_counter)" 0 "TPM2_PT_LOCKOUT_COUNTER after $kills unclean shutdowns with noDA keys"
log "200 signatures, $kills unclean shutdowns (TPM allows $MAX): all verified, lockout counter 0"

# --- control: a DA-protected key ----------------------------------------------------------------
printf 'control\n' >"$WORK/msg"
for n in $(seq 1 "$MAX"); do
	agent_start
	sign_verify da ecdsa_secp256r1_sha256 "$WORK/msg" "$WORK/da.pub.pem"
	swtpm_kill9
	swtpm_start
	agent_stop
	assert_eq "$(tpm_lockout_counter)" "$n" "lockout counter after $n unclean shutdown(s) after using a DA-protected key"
done
[ "$(log_count 'is not noDA')" -ge 1 ] || fail "the agent did not warn that the tpm2-openssl key is not noDA"
log "control: each unclean shutdown after using a DA-protected key counted; counter at $MAX"

# The TPM is now in lockout: the DA-protected key is refused as such, the noDA key works.
agent_start
assert_fails ctl sign da --scheme ecdsa_secp256r1_sha256 --in "$WORK/msg" --out "$WORK/locked.sig"
assert_match "$LAST_ERR" 'lockout' "error for the DA-protected key in lockout"
assert_contains "$LAST_ERR" '0x921' "error for the DA-protected key in lockout"
log "in lockout: $LAST_ERR"
assert_ok ctl status
assert_match "$(sed -n '/^keystore tpm/,/^$/p' <<<"$LAST_OUT")" 'state: TPM in dictionary-attack lockout' "keystore state in lockout"
sign_verify dev ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev.pub.pem"
assert_ok ctl status
assert_match "$(sed -n '/^keystore tpm/,/^$/p' <<<"$LAST_OUT")" 'state: ok' "keystore state after a noDA signature"
agent_stop
# The refused attempt was not an authorization failure: the counter did not move.
assert_eq "$(tpm_lockout_counter)" "$MAX" "lockout counter after the refused signature"

swtpm_stop
log "PASS"
