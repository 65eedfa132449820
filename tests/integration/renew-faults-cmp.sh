#!/bin/bash
# Renewal over CMP when the CA misbehaves. An identity in a SoftHSM token holds a
# 3600 s certificate from the test CMP CA (the schedule would renew it only after
# ~40 min, so every attempt here is either forced or a retry after a failure).
# Transient faults (HTTP 500, a closed connection, garbage, a CA slower than
# ca-timeout, a rejection with failInfo badRequest): a forced KUR fails with a
# precise message, nothing is replaced, status counts the failure, and the agent
# retries on its own with backoff (full jitter, base 3 s, doubling) until it gets a
# certificate. A "waiting" answer is polled within the transaction. Bad certificates
# (for another key, from an untrusted CA, expired, with another subject, without
# clientAuth): refused with a negative certConf, the old certificate stays; cleared,
# a forced renewal succeeds.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_cmd python3 tail
PROTO='cmp'

testca_init
softhsm_setup faults
cmp_ca_start --lifetime 3600
agent_config
renew_lines cmp "ca-timeout = 5" "sign-policy = any"
agent_identity dev "${RENEW_LINES[@]}"
agent_start
agent_log_stamp_start

renew_faults_first_cert dev

# Transient faults: two failed attempts (the forced one and the first retry), then
# success. HTTP-level faults count HTTP requests: each failed KUR makes one.
T='transient error'
renew_fault_retry dev http500 2 "" "$T" "CMP KUR: HTTP 500 from $CA_URL"
renew_fault_retry dev close 2 "" "$T" "CMP KUR: Server returned nothing (no headers, no data) from $CA_URL"
renew_fault_retry dev garbage 2 "" "$T" "is not a CMP message from $CA_URL"
# The CA sleeps 8 s per request, the agent gives up after 5 s (ca-timeout); the CA, still
# busy with an abandoned request, may make a third attempt time out too. Meanwhile the old
# key still signs.
FAULT_SIGN_CHECK=1 FAULT_MAX_FAILS=3 renew_fault_retry dev delay 2 8 "$T" "CMP KUR: Timeout was reached from $CA_URL"
renew_fault_retry dev reject 2 badRequest "rejected by the CA" \
	"CMP KUR rejected: PKIStatus: rejection; PKIFailureInfo: badRequest"

# Certificates that must be refused, with a negative certConf (and garbage where a
# certificate should be).
B='bad certificate'
# The OpenSSL client itself finds the key mismatch (incorrectData); the reason must still
# reach the operator (the agent's own words, or OpenSSL's).
renew_fault_badcert dev wrongkey "$B" "~another public key|does not match our enrollment key"
renew_fault_badcert dev untrusted "$B" "does not verify against ca-trust"
renew_fault_badcert dev expired "$B" "the CA's certificate is not usable: certificate has expired"
renew_fault_badcert dev badsubject "$B" \
	"the CA's certificate has subject /CN=cmp-ca-badsubject, /CN=dev/O=mtls-agent tests was requested"
renew_fault_badcert dev noeku "$B" "the CA's certificate is not usable: certificate lacks the clientAuth"
renew_fault_badcert dev garbage "$T" "is not a CMP message from $CA_URL"

# waiting (last: see below): the CA answers the KUR "waiting" and each pollReq with
# checkAfter until 2 s have passed. The client polls within the same transaction, which
# succeeds after ~2 s, well within ca-timeout = 5 s ("the whole transaction, polling
# included", renew/enroll.h).
# Known failure: OpenSSL 3.0's poll_for_response() keeps 5 s in reserve for the last
# round trip out of OSSL_CMP_OPT_TOTAL_TIMEOUT, which the agent sets to ca-timeout:
# with ca-timeout <= 5 + checkAfter the client gives up at the first pollRep, and the
# agent reports "the CA is still processing the request" and waits 60 s.
s0=$(current_serial dev)
camark=$(($(wc -l <"$CA_LOG") + 1))
ca_fault waiting 1 2
start=$EPOCHREALTIME
rc=0
ctl renew dev >"$WORK/renew.out" 2>"$WORK/renew.err" || rc=$?
took=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
ca_log_since "$camark" >"$WORK/ca.waiting"
if [ "$rc" -ne 0 ]; then
	show_log "$WORK/ca.waiting"
	fail_later "waiting: the renewal failed after $took s instead of polling (ca-timeout = 5, checkAfter 2): $(cat "$WORK/renew.err")"
else
	s1=$(current_serial dev)
	[ -n "$s1" ] && [ "$s1" != "$s0" ] || fail "waiting: no new certificate"
	awk -v t="$took" 'BEGIN { exit !(t >= 2.0) }' || fail "waiting: the renewal took $took s; the CA held it back for 2 s"
	grep -q 'kur waiting checkAfter=' "$WORK/ca.waiting" || { show_log "$WORK/ca.waiting"; fail "waiting: the CA did not answer waiting"; }
	grep -q 'pollReq ready' "$WORK/ca.waiting" || { show_log "$WORK/ca.waiting"; fail "waiting: the CA never delivered on a pollReq"; }
	grep -q "certConf accepted serial=$s1" "$WORK/ca.waiting" || { show_log "$WORK/ca.waiting"; fail "waiting: no certConf for $s1"; }
	# One transaction: one KUR answered "waiting", the certificate delivered on a pollReq.
	[ "$(sed -n 's/.* cmp-ca: \(kur waiting\|pollReq ready\|kur issued serial=[0-9A-F]*\).*/\1/p' "$WORK/ca.waiting" | tr '\n' ' ')" = \
		"kur waiting pollReq ready kur issued serial=$s1 " ] || { show_log "$WORK/ca.waiting"; fail "waiting: not one KUR transaction delivered by polling"; }
	status_save "$WORK/snap.json"
	assert_eq "$(status_get "$WORK/snap.json" dev failures)" 0 "waiting: status failures"
	log "waiting: polled ($(grep -c pollReq "$WORK/ca.waiting") pollReq), renewed in $took s: serial $s1"
fi

fail_if_later
agent_stop
log "OK: CMP faults: transient ones retried with backoff, waiting polled, bad certificates refused with a negative certConf, nothing replaced while failing"
