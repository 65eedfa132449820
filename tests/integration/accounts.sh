#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# An account named in allow-users that is deleted: `reload` keeps serving
# the other identities and users, the deleted account's uid is refused (it
# could be handed to the next account created), the agent logs the problem
# as an error with FILE:LINE, `mtls-agentctl check` shows it, and a restart
# with the same file works.
#
# The account lives only in a private copy of /etc/passwd bind-mounted in a
# private mount namespace (unshare -m), so the host's accounts are untouched.
set -eu
if [ -z "${MTLS_ACCOUNTS_NS:-}" ]; then
	[ "$(id -u)" = 0 ] || { echo "accounts: SKIP: needs root" >&2; exit 77; }
	command -v unshare >/dev/null || { echo "accounts: SKIP: unshare missing" >&2; exit 77; }
	MTLS_ACCOUNTS_NS=1 exec unshare -m --propagation private bash "$0" "$@"
fi
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
need_root
need_cmd setpriv mount

USER_NAME=mtlsgone
USER_UID=47011
grep -q "^$USER_NAME:" /etc/passwd && fail "$USER_NAME already exists on this host"
getent passwd "$USER_UID" >/dev/null && skip "uid $USER_UID is taken on this host"
cp /etc/passwd "$WORK/passwd"
chmod 0644 "$WORK/passwd"
printf '%s:x:%s:65534:mtls-agent test account:/nonexistent:/usr/sbin/nologin\n' "$USER_NAME" "$USER_UID" >>"$WORK/passwd"
mount --bind "$WORK/passwd" /etc/passwd
assert_eq "$(id -u "$USER_NAME")" "$USER_UID" "test account in the private /etc/passwd"

softhsm_setup accounts
testca_init
agent_config "socket-mode = 0666"
agent_identity shared "allow-users = root $USER_NAME nobody"
agent_identity other "allow-users = root nobody"
chmod 0755 "$WORK"
agent_start
identity_setup shared ec-p256
identity_setup other ec-p256
nobody_prepare
PUB=$WORK/pub
mkdir -p "$PUB"
chmod 0777 "$PUB"
make_cv13 "$PUB/cv" 32
chmod 0644 "$PUB/cv"

sign_as() { # UID ID OUT
	run_as "$1" 65534 timeout -k 5 "$MTLS_TEST_TIMEOUT" "${NOBODY_CTL[@]}" -s "$SOCK" \
		sign "$2" --scheme ecdsa_secp256r1_sha256 --in "$PUB/cv" --out "$3"
}

sign_as "$USER_UID" shared "$PUB/sig.before" || fail "$USER_NAME could not sign before its deletion"
verify_sig "$WORK/shared.pub.pem" ecdsa_secp256r1_sha256 "$PUB/cv" "$PUB/sig.before" ||
	fail "signature for $USER_NAME does not verify"

# Delete the account: rewrite the bind-mounted file in place (a rename would
# replace the name, not the mounted file).
grep -v "^$USER_NAME:" "$WORK/passwd" >"$WORK/passwd.new"
cat "$WORK/passwd.new" >"$WORK/passwd"
id "$USER_NAME" >/dev/null 2>&1 && fail "$USER_NAME still resolves after the deletion"

assert_ok ctl reload
LINE=$(line_of "$CONF" "allow-users = root $USER_NAME nobody")
wait_until 10 grep -q "$CONF:$LINE: unknown user \"$USER_NAME\"" "$AGENT_LOG" ||
	fail "the agent did not log the missing account with FILE:LINE"
grep "unknown user \"$USER_NAME\"" "$AGENT_LOG" | grep -qi error || fail "the missing account is not logged as an error"

# The others keep being served; the stale uid is refused.
sign_verify shared ecdsa_secp256r1_sha256 "$PUB/cv" "$WORK/shared.pub.pem"
sign_verify other ecdsa_secp256r1_sha256 "$PUB/cv" "$WORK/other.pub.pem"
nobody_ctl sign shared --scheme ecdsa_secp256r1_sha256 --in "$PUB/cv" --out "$PUB/sig.nobody" ||
	fail "nobody (still listed) lost access to shared after the reload"
rm -f "$PUB/sig.after"
if sign_as "$USER_UID" shared "$PUB/sig.after" 2>"$WORK/err"; then
	fail "the deleted account's uid $USER_UID still signs with shared"
fi
[ ! -s "$PUB/sig.after" ] || fail "a refused sign wrote a signature"
assert_match "$(cat "$WORK/err")" 'denied|not allowed' "refusal of uid $USER_UID"
log "ok: uid $USER_UID refused after reload: $(cat "$WORK/err")"

# check shows it.
ctl check -c "$CONF" >"$WORK/check.out" 2>&1 || true
grep -q "unknown user \"$USER_NAME\"" "$WORK/check.out" || {
	cat "$WORK/check.out" >&2
	fail "mtls-agentctl check does not show the missing account"
}

# A restart with the same file works.
agent_stop
agent_start
sign_verify other ecdsa_secp256r1_sha256 "$PUB/cv" "$WORK/other.pub.pem"
agent_stop
log "PASS"
