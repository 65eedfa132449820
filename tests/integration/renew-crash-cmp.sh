#!/bin/bash
# CMP: a certificate is served only once the CA has confirmed it (issue 17, item 4).
# The agent verifies the CA's certificate in the certConf callback and stages it
# (<state-dir>/NAME.issued, journal step "issued"), sends certConf (journal
# "confirming" just before it leaves), and installs only after the CA's pkiConf
# (journal "confirmed", then "installed"). The agent kills itself (SIGKILL,
# MTLS_AGENT_TEST_CRASH_AT) at each of these points during a forced KUR; restarted:
#   issued, confirming (certConf not yet sent): the old certificate is served and the
#     CA's log shows no certConf for the certificate it issued (nothing confirmed and
#     unused);
#   confirmed (pkiConf received, not yet installed): the confirmed certificate is
#     installed at start-up (the CA's log shows its certConf; it is what is served);
# the journal and the staged file are gone, the agent signs with the key of the
# certificate it serves, and the next renewal is confirmed and installed.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_cmd python3 pkcs11-tool

testca_init
softhsm_setup crashcmp
cmp_ca_start --lifetime 3600
agent_config
renew_lines cmp "ca-timeout = 10" "sign-policy = any"
agent_identity dev "${RENEW_LINES[@]}"
agent_start
identity_setup dev ec-p256
JOURNAL=$STATE_DIR/dev.renew
STAGED=$STATE_DIR/dev.issued
printf 'message for a signature check\n' >"$WORK/msg"

# The agent signs with the key of the certificate it serves.
check_pair() { # WHAT
	ctl cert dev >"$WORK/now.pem" || fail "$1: cert failed"
	cert_pubkey "$WORK/now.pem" "$WORK/now.pub"
	sign_verify dev ecdsa_secp256r1_sha256 "$WORK/msg" "$WORK/now.pub"
}

for step in issued confirming confirmed; do
	s0=$(current_serial dev)
	agent_stop
	camark=$(($(wc -l <"$CA_LOG") + 1))
	# A temporary assignment before a function call is exported to what it runs: only this agent.
	MTLS_AGENT_TEST_CRASH_AT=$step agent_start
	ctl renew dev >"$WORK/renew.out" 2>&1 && fail "$step: renew succeeded although the agent was to die"
	deadline=$((SECONDS + 20))
	while kill -0 "$AGENT_PID" 2>/dev/null; do
		[ "$SECONDS" -lt "$deadline" ] || fail "$step: the agent is still alive"
		sleep 0.1
	done
	wait "$AGENT_PID" 2>/dev/null || true
	AGENT_PID=
	grep -qF "MTLS_AGENT_TEST_CRASH_AT=$step: stopping with SIGKILL" "$AGENT_LOG" ||
		fail "$step: the agent died without reaching the crash point"
	assert_eq "$(sed -n 's/^step=//p' "$JOURNAL")" "$step" "$step: journal step after the kill"
	[ -s "$STAGED" ] || fail "$step: no staged certificate $STAGED"
	x=$(ca_log_since "$camark" | sed -n 's/.* kur issued serial=\([0-9A-F]*\) .*/\1/p' | head -n 1)
	[ -n "$x" ] || fail "$step: the CA log shows no certificate issued"
	assert_eq "$(cert_serial "$STAGED")" "$x" "$step: serial of the staged certificate"

	mark=$(wc -l <"$AGENT_LOG")
	agent_start
	wait_until 20 test ! -e "$JOURNAL" || fail "$step: the journal is still there after the restart"
	[ ! -e "$STAGED" ] || fail "$step: the staged certificate is still there after the restart"
	s1=$(current_serial dev)
	if [ "$step" = confirmed ]; then
		assert_eq "$s1" "$x" "$step: served serial after the restart (the CA confirmed $x)"
		ca_log_since "$camark" | grep -q "certConf accepted serial=$x" ||
			fail "$step: the CA's log shows no certConf for $x"
		tail -n +"$mark" "$AGENT_LOG" | grep -q "installed the certificate the CA had confirmed" ||
			fail "$step: the agent did not log installing the confirmed certificate"
	else
		assert_eq "$s1" "$s0" "$step: served serial after the restart (the old one)"
		ca_log_since "$camark" | grep -q "certConf" &&
			fail "$step: the CA got a certConf for $x, which is not in use: $(ca_log_since "$camark" | grep certConf)"
		tail -n +"$mark" "$AGENT_LOG" | grep -qF "rolled back a renewal interrupted at step \"$step\"" ||
			fail "$step: the agent did not log the roll-back"
	fi
	check_pair "$step"

	# The next renewal is confirmed, then installed.
	camark=$(($(wc -l <"$CA_LOG") + 1))
	assert_ok ctl renew dev
	s2=$(current_serial dev)
	[ "$s2" != "$s1" ] || fail "$step: the renewal after the restart brought no new certificate"
	ca_log_since "$camark" | grep -q "certConf accepted serial=$s2" ||
		fail "$step: the next renewal ($s2) was not confirmed to the CA"
	check_pair "$step, next renewal"
	log "crash at $step: $([ "$step" = confirmed ] && echo "confirmed $x installed at start-up" || echo "old $s0 kept, $x never confirmed"); next renewal $s2 confirmed"
done
log "OK: a certificate is served only after the CA confirmed it"
agent_stop
