#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# Configuration reload (SIGHUP and `mtls-agentctl reload`), `mtls-agent -n`
# config checking with FILE:LINE messages, the pin-file permission check,
# clean shutdown on SIGTERM, --version and usage errors.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

softhsm_setup reload
testca_init
agent_config
agent_identity dev1
cp "$CONF" "$WORK/good.conf"

# --- command line --------------------------------------------------------------------------
assert_ok timeout 10 "$MTLS_AGENT" --version
assert_match "$LAST_OUT$LAST_ERR" '[0-9]+\.[0-9]+' "mtls-agent --version"
assert_usage_error timeout 10 "$MTLS_AGENT" --no-such-option
assert_usage_error timeout 10 "$MTLS_AGENTCTL" --no-such-option
assert_usage_error timeout 10 "$MTLS_AGENTCTL" -s "$SOCK" no-such-command
assert_usage_error timeout 10 "$MTLS_AGENTCTL" -s "$SOCK" sign

# --- mtls-agent -n ------------------------------------------------------------------------------
assert_ok timeout 10 "$MTLS_AGENT" -n -c "$CONF"

# bad_conf NAME: a copy of the good config in $WORK/NAME.conf
bad_conf() { cp "$WORK/good.conf" "$WORK/$1.conf"; printf '%s\n' "$WORK/$1.conf"; }

# check_bad FILE ERE_FOR_LINE: -n exits 1 with one line "FILE:LINE: ..."
check_bad() {
	assert_fails timeout 10 "$MTLS_AGENT" -n -c "$1"
	assert_match "$LAST_ERR" "$(printf '%s' "$1" | sed 's/[.[\*^$]/\\&/g'):($2): " "-n -c $(basename "$1")"
	log "-n $(basename "$1"): $LAST_ERR"
}

f=$(bad_conf unknown-key)
sed -i "/^\[identity \"dev1\"\]$/a no-such-key = 1" "$f"
check_bad "$f" "$(line_of "$f" 'no-such-key = 1')"

f=$(bad_conf unknown-agent-key)
sed -i "/^\[agent\]$/a sockett = $WORK/x.sock" "$f"
check_bad "$f" "$(line_of "$f" "sockett = $WORK/x.sock")"

f=$(bad_conf socket-mode)
sed -i "/^\[agent\]$/a socket-mode = 0999" "$f"
check_bad "$f" "$(line_of "$f" 'socket-mode = 0999')"

f=$(bad_conf socket-mode-word)
sed -i "/^\[agent\]$/a socket-mode = rw-rw----" "$f"
check_bad "$f" "$(line_of "$f" 'socket-mode = rw-rw----')"

f=$(bad_conf bad-policy)
sed -i "/^\[identity \"dev1\"\]$/a sign-policy = everything" "$f"
check_bad "$f" "$(line_of "$f" 'sign-policy = everything')"

f=$(bad_conf missing-keystore)
sed -i 's/^keystore = hsm$/keystore = nosuch/' "$f"
check_bad "$f" "$(line_of "$f" 'keystore = nosuch')|$(line_of "$f" '[identity "dev1"]')"

# An account that does not exist is left out of its list, with an error naming
# FILE:LINE; the rest of the file loads (accounts.sh: a deleted account at reload).
f=$(bad_conf unknown-user)
sed -i 's/^allow-users = root$/allow-users = root no-such-user-xyz/' "$f"
assert_ok timeout 10 "$MTLS_AGENT" -n -c "$f"
assert_match "$LAST_ERR" "$(printf '%s' "$f" | sed 's/[.[\*^$]/\\&/g'):$(line_of "$f" 'allow-users = root no-such-user-xyz'): unknown user \"no-such-user-xyz\": left out" \
	"-n -c $(basename "$f")"

f=$(bad_conf bad-section)
printf '\n[frobnicate]\nx = 1\n' >>"$f"
check_bad "$f" "$(line_of "$f" '[frobnicate]')"

# A missing file is an error too (no line to name).
assert_fails timeout 10 "$MTLS_AGENT" -n -c "$WORK/no-such.conf"
assert_contains "$LAST_ERR" "$WORK/no-such.conf" "-n on a missing file"

# A group/world-readable pin file is refused, by -n and at start, with a clear message.
chmod 0644 "$PIN_FILE"
assert_fails timeout 10 "$MTLS_AGENT" -n -c "$CONF"
assert_match "$LAST_ERR" 'pin' "-n with pin file mode 0644"
rc=0
timeout -k 5 15 "$MTLS_AGENT" -f -c "$CONF" >"$WORK/start.out" 2>"$WORK/start.err" </dev/null || rc=$?
[ "$rc" -eq 1 ] || fail "agent with a 0644 pin file must exit 1 at start, got $rc: $(cat "$WORK/start.err")"
assert_match "$(cat "$WORK/start.err")" "pin" "start with pin file mode 0644"
[ ! -e "$SOCK" ] || fail "agent refusing to start left a socket behind"
chmod 0600 "$PIN_FILE"

# --- SIGHUP with a good, changed config ------------------------------------------------------------
agent_start
PID=$AGENT_PID
identity_setup dev1 ec-p256
make_cv13 "$WORK/cv" 32
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"

agent_identity dev2 "sign-policy = any"
cp "$CONF" "$WORK/good2.conf"
assert_ok timeout 10 "$MTLS_AGENT" -n -c "$CONF"
kill -HUP "$PID"
list_has() { ctl list >"$WORK/list.now" 2>/dev/null && grep -q -- "$1" "$WORK/list.now"; }
wait_until 10 list_has dev2 || fail "dev2 not listed within 10 s of SIGHUP"
kill -0 "$PID" 2>/dev/null || fail "agent (pid $PID) is gone after SIGHUP"
make_cv13 "$WORK/cv" 32
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"
identity_setup dev2 ec-p256
sign_verify dev2 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev2.pub.pem"

# --- SIGHUP with a broken config: the old one stays in force -------------------------------------
printf '\n[identity "dev3"]\nkeystore = hsm\nkey = pkcs11:object=dev3\nbogus-key = yes\n' >>"$CONF"
BAD_LINE=$(line_of "$CONF" 'bogus-key = yes')
kill -HUP "$PID"
log_has() { grep -qF -- "$1" "$AGENT_LOG"; }
wait_until 10 log_has "$CONF:$BAD_LINE:" || fail "agent log does not show '$CONF:$BAD_LINE:' after SIGHUP with a broken config"
agent_alive || fail "agent died on SIGHUP with a broken config"
assert_ok ctl list
assert_contains "$LAST_OUT" dev2 "list after a failed reload"
assert_not_contains "$LAST_OUT" dev3 "list after a failed reload"
make_cv13 "$WORK/cv" 32
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"
sign_verify dev2 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev2.pub.pem"

# --- mtls-agentctl reload ---------------------------------------------------------------------------
assert_fails ctl reload
assert_contains "$LAST_ERR" "$CONF:$BAD_LINE:" "reload with a broken config"
agent_alive || fail "agent died on a refused reload"
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"

# Back to a good config without dev2: reload applies it synchronously.
cp "$WORK/good.conf" "$CONF"
assert_ok ctl reload
assert_ok ctl list
assert_contains "$LAST_OUT" dev1 "list after reload"
assert_not_contains "$LAST_OUT" dev2 "list after reload removed dev2"
assert_fails ctl sign dev2 --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv" --out "$WORK/sig"
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"
kill -0 "$PID" 2>/dev/null || fail "agent (pid $PID) is gone after reload"

# --- SIGTERM removes the socket (checked by agent_stop) ---------------------------------------
agent_stop
log "PASS"
