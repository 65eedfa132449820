#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# A certificate file replaced by another tool (config management, a copy by hand)
# is noticed by the running agent at its next use, without reload, and
# re-validated: `cert`, `list` and the doctor (`check`) report the file as it is
# now. A replacement that does not parse, or is for another key, is reported and
# the certificate read before keeps serving; a removed file means no certificate;
# a file copied in where there was none is taken.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

softhsm_setup certfile
testca_init
agent_config
agent_identity dev1
agent_identity other
agent_start
identity_setup dev1 ec-p256
identity_setup other ec-p256
CRT=$STATE_DIR/dev1.crt
serial_served() { ctl cert dev1 | openssl x509 -noout -serial; }
first=$(serial_served)

# 1. Rewritten in place (cp: same inode) with a new certificate for the same key.
testca_issue "$WORK/dev1.csr" "$WORK/dev1.renewed.pem" --days 60
cp "$WORK/dev1.renewed.pem" "$CRT"
want=$(openssl x509 -in "$WORK/dev1.renewed.pem" -noout -serial)
[ "$want" != "$first" ] || fail "the CA issued the same serial twice"
assert_eq "$(serial_served)" "$want" "certificate served after cp over the file"
assert_ok ctl check dev1
log "replaced in place: $first -> $want, check: $(printf '%s' "$LAST_OUT" | tail -n 1)"

# 2. Replaced by rename with garbage: reported, the previous certificate still serves.
echo "not a certificate" >"$WORK/garbage" && mv "$WORK/garbage" "$CRT"
rc=0
ctl check dev1 >"$WORK/check.out" 2>&1 || rc=$?
log "garbage: check exit $rc: $(tr '\n' ' ' <"$WORK/check.out")"
[ "$rc" -ne 0 ] || fail "check passed with an unusable certificate file"
assert_contains "$(cat "$WORK/check.out")" "$CRT changed on disk and cannot be used" "check output"
assert_eq "$(serial_served)" "$want" "certificate served after a broken replacement"

# 3. Another identity's certificate (not one of dev1's keys): reported, not taken.
cp "$STATE_DIR/other.crt" "$WORK/other.copy" && mv "$WORK/other.copy" "$CRT"
rc=0
ctl check dev1 >"$WORK/check.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "check passed with another key's certificate"
assert_contains "$(cat "$WORK/check.out")" "a certificate for none of the identity's keys" "check output"
assert_eq "$(serial_served)" "$want" "certificate served after a foreign replacement"

# 4. Removed: no certificate.
rm -f "$CRT"
assert_fails ctl cert dev1
log "removed: $LAST_ERR"

# 5. Copied in where there was none: taken, without reload.
cp "$WORK/dev1.chain.pem" "$CRT"
assert_eq "$(serial_served)" "$first" "certificate served after copying one in"
assert_ok ctl check dev1
# The agent still signs with the identity's key.
make_cv13 "$WORK/cv" 32
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"
grep -q 'changed on disk: re-read' "$AGENT_LOG" || fail "the agent did not log the re-read"
log "ok"
