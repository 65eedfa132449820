#!/bin/bash
# Renewal over EST when the CA misbehaves. An identity in a SoftHSM token holds a
# 3600 s certificate from the test EST CA (the schedule would renew it only after
# ~40 min, so every attempt here is either forced or a retry after a failure).
# Transient faults (HTTP 500, a closed connection, garbage, a CA slower than
# ca-timeout, a 400 rejection, 202 Retry-After): a forced renewal fails with a
# precise message, nothing is replaced, status counts the failure, and the agent
# retries on its own with backoff (full jitter, base 3 s, doubling) until it gets a
# certificate. Bad certificates (for another key, from an untrusted CA, expired,
# with another subject, without clientAuth, or no certificate at all): refused,
# the old certificate stays; cleared, a forced renewal succeeds.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_cmd python3 tail
PROTO='est'

testca_init
server_cert_setup
softhsm_setup faults
est_ca_start --lifetime 3600
agent_config
renew_lines est "ca-timeout = 5" "sign-policy = any"
agent_identity dev "${RENEW_LINES[@]}"
agent_start
agent_log_stamp_start

renew_faults_first_cert dev

# Transient faults: two failed attempts (the forced one and the first retry), then success.
T='transient error'
renew_fault_retry dev http500 2 "" "$T" "HTTP 500 from $CA_URL: internal error"
renew_fault_retry dev close 2 "" "$T" "EST simplereenroll: $CA_URL: Empty reply from server"
renew_fault_retry dev garbage 2 "" "$T" "from $CA_URL is not a base64 certs-only PKCS#7"
# The CA sleeps 8 s per request, the agent gives up after 5 s (ca-timeout); the CA, still
# busy with an abandoned request, may make a third attempt time out too. Meanwhile the old
# key still signs.
FAULT_SIGN_CHECK=1 FAULT_MAX_FAILS=3 renew_fault_retry dev delay 2 8 "$T" \
	"EST simplereenroll: $CA_URL: Operation timed out after 5"
renew_fault_retry dev reject 2 "" "rejected by the CA" "HTTP 400 from $CA_URL: request rejected by policy"
# 202 with Retry-After: 2: the attempt ends waiting; the next one, at least 2 s later, succeeds.
renew_fault_retry dev waiting 1 2 "waiting for the CA" "HTTP 202 from $CA_URL, retry after 2 s" 2

# Certificates that must be refused (and garbage where a certificate should be).
B='bad certificate'
renew_fault_badcert dev wrongkey "$B" "none of the 3 certificates from $CA_URL is for the requested key"
renew_fault_badcert dev untrusted "$B" "refused: the CA's certificate does not verify against ca-trust"
renew_fault_badcert dev expired "$B" "refused: the CA's certificate is not usable: certificate has expired"
renew_fault_badcert dev badsubject "$B" \
	"refused: the CA's certificate has subject /CN=est-ca wrong subject, /CN=dev/O=mtls-agent tests was requested"
renew_fault_badcert dev noeku "$B" "refused: the CA's certificate is not usable: certificate lacks the clientAuth"
renew_fault_badcert dev garbage "$T" "from $CA_URL is not a base64 certs-only PKCS#7"

fail_if_later
agent_stop
log "OK: EST faults: transient ones retried with backoff, bad certificates refused, nothing replaced while failing"
