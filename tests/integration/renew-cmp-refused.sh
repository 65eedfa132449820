#!/bin/bash
# CMP answers the agent must refuse (RFC 9483; issue 10), each with one precise message, the
# certificate file byte-identical, no certificate confirmed, and no bootstrap after it
# although bootstrap is configured: an RA answer without the RA certificate in extraCerts
# (nothing says who signed); an answer signed by another device's clientAuth certificate
# that chains to ca-trust, saying "notAuthorized" (a rejection from a signer that may not
# answer for the CA never leads to bootstrap); a rejection whose statusString carries a
# newline and ESC, which must appear escaped in the agent log (it must not forge a log
# line). Then a CA that answers well: the next scheduled renewal is confirmed; and the
# control: the genuine CA's own certRevoked does lead to bootstrap (an IR). Keys in
# SoftHSM; the test CMP CA restarted on one port per shape, 24-second certificates.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_cmd pkcs11-tool python3

LIFE=24
testca_init
softhsm_setup refused
shapes_setup
ca_shape
agent_config
renew_lines cmp "ca-timeout = 10"
agent_identity gw "${RENEW_LINES[@]}" "bootstrap = secret:boot:$WORK/boot.secret" \
	"subject = /CN=gw/O=mtls-agent tests" "key-type = ec-p256"
agent_start
s=$(wait_new_serial gw "" 30)
log "gw enrolled: serial $s"

# refused_shape NAME FRAGMENT ARGS...: right after gw renewed (through a CA that answers
# well), the CA switches to this shape (and the fault in $REFUSE_FAULT, if any); a forced
# renewal fails with FRAGMENT in its message, the certificate file stays byte-identical, no
# bootstrap follows (no IR at the CA, nothing in the agent log), nothing is confirmed.
refused_shape() {
	local shape=$1 frag=$2 mark amark s0 crt=$STATE_DIR/gw.crt
	shift 2
	ca_fault_clear
	ca_shape
	# A fresh certificate: 15 s before its renewal, 24 s before expiry.
	s0=$(served_serial gw)
	wait_until 30 serial_changed gw "$s0" || fail "$shape: gw did not renew within 30 s"
	ca_shape "$@"
	# shellcheck disable=SC2086 # REFUSE_FAULT: KIND COUNT ARG
	[ -z "${REFUSE_FAULT:-}" ] || ca_fault $REFUSE_FAULT
	mark=$(($(wc -l <"$CA_LOG") + 1))
	amark=$(($(wc -l <"$AGENT_LOG") + 1))
	cp "$crt" "$WORK/gw.crt.before"
	s0=$(served_serial gw)
	assert_fails ctl renew gw
	assert_contains "$LAST_ERR" "$frag" "$shape: mtls-agentctl renew"
	cmp -s "$crt" "$WORK/gw.crt.before" || fail "$shape: the certificate file changed"
	assert_eq "$(served_serial gw)" "$s0" "$shape: serial after the refused answer"
	sleep 2 # the agent's first automatic retry
	cmp -s "$crt" "$WORK/gw.crt.before" || fail "$shape: the certificate file changed"
	tail -n +"$amark" "$AGENT_LOG" | grep -q "trying bootstrap" &&
		fail "$shape: the agent went to bootstrap after an answer it refused"
	ca_log_since "$mark" | grep -q "ir issued" && fail "$shape: an IR followed the refused answer"
	ca_log_since "$mark" | grep -q "certConf accepted" && fail "$shape: a certificate was confirmed"
	ca_fault_clear
	log "$shape: refused: $LAST_ERR"
}

refused_shape "RA-signed without its certificate" "CMP KUR: the response's protection does not verify" \
	--srv-cert "$WORK/ra.crt" --srv-key "$WORK/ra.key" --extra-certs none
REFUSE_FAULT="reject 20 notAuthorized" refused_shape \
	"signed by another device's clientAuth certificate, saying notAuthorized" \
	"the response is signed by /CN=device7/O=mtls-agent tests, which may not answer for the CA" \
	--srv-cert "$WORK/device7.crt" --srv-key "$WORK/device7.key"

# A rejection whose statusString would forge a log line and colour the terminal.
REFUSE_FAULT="reject 20 badRequest" refused_shape "statusString with a newline and ESC" \
	"CMP KUR rejected" --status-text "$(printf 'bad request\nmtls-agent: info: FORGED line \033[31mred')"
grep -q '^mtls-agent: info: FORGED' "$AGENT_LOG" && fail "the CA's statusString forged a log line"
grep -q "$(printf '\033')" "$AGENT_LOG" && fail "an ESC from the CA reached the agent log"
grep -qF 'bad request\nmtls-agent: info: FORGED line \x1b[31mred' "$AGENT_LOG" ||
	fail "the statusString is not in the agent log, escaped: $(grep -a FORGED "$AGENT_LOG" | head -n 3)"
log "statusString logged escaped: $(grep -aoF 'bad request\nmtls-agent: info: FORGED line \x1b[31mred' "$AGENT_LOG" | head -n 1)"

# Back to a CA that answers well: the next scheduled renewal confirms.
shape_renews "after the refusals" --srv-cert "$WORK/ra.crt" --srv-key "$WORK/ra.key"

# The control: the genuine CA itself rejects the KUR as certRevoked (RFC 9483 4.1: the
# credential is no longer accepted). That answer, and only such a one, leads to bootstrap:
# an IR with the shared secret and a new certificate.
ca_shape --srv-cert "$WORK/ra.crt" --srv-key "$WORK/ra.key"
ca_fault reject 1 certRevoked
mark=$(($(wc -l <"$CA_LOG") + 1))
amark=$(($(wc -l <"$AGENT_LOG") + 1))
s0=$(served_serial gw)
ctl renew gw >/dev/null 2>&1 || true # the KUR fails; the bootstrap follows on its own
wait_until 30 serial_changed gw "$s0" || {
	show_log "$AGENT_LOG" 20
	fail "certRevoked from the CA: no new certificate by bootstrap within 30 s"
}
s=$(served_serial gw)
ca_log_since "$mark" | grep -q "kur rejected failInfo=certRevoked" || fail "the CA log shows no rejected KUR"
ca_log_since "$mark" | grep -q "ir issued serial=$s " || fail "certRevoked: $s did not come from an IR"
tail -n +"$amark" "$AGENT_LOG" | grep -q "trying bootstrap" || fail "certRevoked: the agent log does not say it bootstraps"
chain_verifies gw
log "control: the CA's own certRevoked led to bootstrap (IR, serial $s)"
log "OK: refused shapes left the certificate untouched, no bootstrap, CA text escaped; the CA's own refusal bootstraps"
agent_stop
ca_stop
