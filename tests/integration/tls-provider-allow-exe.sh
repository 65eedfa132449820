#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# allow-exe: an identity that names curl's program is used by curl and
# refused to openssl s_client run by the same uid (root), through the
# provider against s_server -Verify 1. The refusal names the rule and the
# program; the agent counts and logs it. allow-unit naming a unit the caller
# is not in refuses curl too. The caller is pinned by a pidfd (SO_PEERPIDFD
# on Linux 6.5+, else pidfd_open of the SO_PEERCRED pid).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_tls_cmd curl
need_cmd python3 realpath
need_provider

CURL_EXE=$(realpath "$(command -v curl)")
softhsm_setup allowexe
testca_init
server_cert_setup
agent_config
agent_identity viacurl "allow-exe = $CURL_EXE"
agent_identity viaunit "allow-unit = no-such-app-$$.service"
agent_start
identity_setup viacurl ec-p256
identity_setup viaunit ec-p256
identity_files viacurl
identity_files viaunit
provider_env

s_server_start
before=$(id_counter viacurl signatures)
subj=$(https_get_identity --cert "$TLS_DIR/viacurl.chain.pem" --key "$TLS_DIR/viacurl.keyref.pem")
assert_cn "$subj" viacurl "curl with allow-exe = $CURL_EXE: the server saw"
[ "$(id_counter viacurl signatures)" -gt "$before" ] || fail "curl's handshake made no signature"
log "ok: curl ($CURL_EXE) signs with viacurl"

refused_before=$(id_counter viacurl refused)
if s_client_get -key "$TLS_DIR/viacurl.keyref.pem" -cert "$TLS_DIR/viacurl.chain.pem"; then
	grep -q '^Client certificate' "$TLS_DIR/sclient.out" &&
		fail "openssl s_client got a verified handshake with an allow-exe identity that names curl"
fi
[ "$(id_counter viacurl refused)" -gt "$refused_before" ] || fail "the agent did not count a refusal for openssl"
grep -q "program $(realpath "$(command -v openssl)") (pid [0-9]*) is not in allow-exe" "$AGENT_LOG" ||
	fail "the agent log does not name openssl and allow-exe"
log "ok: openssl refused: $(grep -m1 'is not in allow-exe' "$AGENT_LOG")"
# The same refusal for the CLI, run by the same uid (root), with the rule in the error.
make_cv13 "$WORK/cv" 32
assert_fails ctl sign viacurl --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv" --out "$WORK/sig"
assert_contains "$LAST_ERR" "is not in allow-exe" "mtls-agentctl sign viacurl"

# A caller's program path is its own choice: one holding a newline and an
# escape sequence is refused, and logged escaped on one line (no forged line,
# no raw ESC for a terminal).
ctl_real=$MTLS_AGENTCTL
if [ "$(head -c 4 "$ctl_real" | od -An -c | tr -d ' ')" != '177ELF' ]; then
	for ctl_real in "$(dirname "$MTLS_AGENTCTL")/.libs/lt-mtls-agentctl" \
		"$(dirname "$MTLS_AGENTCTL")/.libs/mtls-agentctl" ""; do
		[ -z "$ctl_real" ] || [ -x "$ctl_real" ] && break
	done
	[ -n "$ctl_real" ] || fail "cannot find the real binary behind libtool wrapper $MTLS_AGENTCTL"
fi
evil_dir="$WORK/evil"$'\n'"forged line"$'\e'"[31m"
mkdir -p "$evil_dir"
cp "$ctl_real" "$evil_dir/mtls-agentctl"
assert_fails env LD_LIBRARY_PATH="$(dirname "$MTLS_AGENTCTL")/.libs" \
	"$evil_dir/mtls-agentctl" -s "$SOCK" sign viacurl --scheme ecdsa_secp256r1_sha256 \
	--in "$WORK/cv" --out "$WORK/sig"
assert_contains "$LAST_ERR" "is not in allow-exe" "the CLI from a path with a newline and ESC"
! grep -q $'\e' "$AGENT_LOG" || fail "the agent log holds a raw ESC from a caller's program path"
! grep -q '^forged line' "$AGENT_LOG" || fail "a caller's program path forged a line in the agent log"
grep -q 'refused .*evil\\*n*forged line\\*x1b\[31m/mtls-agentctl (pid [0-9]*) is not in allow-exe' \
	"$AGENT_LOG" || fail "the agent log does not show the program path escaped on one line"
log "ok: $(grep -m1 'evil.*is not in allow-exe' "$AGENT_LOG")"

# allow-unit: curl does not run in that unit.
if s_server_get --cert "$TLS_DIR/viaunit.chain.pem" --key "$TLS_DIR/viaunit.keyref.pem"; then
	grep -q '^Client certificate' "$TLS_DIR/page.txt" &&
		fail "curl outside the unit got a verified handshake with an allow-unit identity"
fi
grep -q "not one named in allow-unit" "$AGENT_LOG" || fail "the agent log does not name allow-unit"
s_server_stop
agent_stop
log "PASS"
