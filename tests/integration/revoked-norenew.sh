#!/bin/bash
# Revocation awareness without renewal (renew = none, no ca-trust): the certificates are
# imported, issued by the test CA's intermediate with an OCSP responder (AIA) and a CRL
# distribution point on loopback, and recorded in the `openssl ocsp -index` database.
#  - dev (leaf + intermediate): good (ocsp), then revoked after `openssl ca -revoke`
#    within a few 2 s intervals: status, check and the metric say so, one error in the
#    log says to import a new certificate, handshakes through the provider go on with
#    the revoked certificate, nothing enrolls; a new certificate imported is good again;
#    answers are verified with the issuer in the installed chain alone: a forged one or
#    one from a responder certified without OCSP signing is unknown, a delegated one good;
#  - bare (leaf only, no ca-trust): the issuer is nowhere to be found: unknown, never good;
#  - quiet (revocation-check = off): no request at all to its responder; after a reload
#    with revocation-check = auto, the request comes (the worker follows reloads).
# `openssl ocsp -port` binds every interface, so the test runs in its own network
# namespace (unshare -n) with only loopback up.
set -eu
export NETNS_FOR="openssl ocsp -port"
# shellcheck source=../netns.sh
. "$(dirname "$0")/../netns.sh"
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_tls_cmd curl
need_cmd python3
need_provider

# issue NAME OCSP_URL CRL_URL [leaf-only]: a key in the token, a certificate for it from
# the CA (revocation_issue), imported; $WORK/NAME.pem holds what was imported.
issue() {
	local name=$1
	shift
	ctl csr "$name" --subject "/CN=$name/O=mtls-agent tests" >"$WORK/$name.csr" ||
		fail "csr $name failed"
	revocation_issue "$WORK/$name.csr" "$WORK/$name.pem" "$@"
	assert_ok ctl import-cert "$name" "$WORK/$name.pem"
}

# no_revocation_line NAME: whether status shows no revocation line for NAME.
no_revocation_line() { [ -z "$(status_field "$1" revocation)" ]; }

testca_init
server_cert_setup
softhsm_setup revnone
revocation_setup
revocation_crl
ocsp_port=$(free_port)
crl_port=$(free_port)
ocsp_url="http://127.0.0.1:$ocsp_port/"
crl_url="http://127.0.0.1:$crl_port/inter.crl"
ocsp_start "$ocsp_port"
crl_server_start "$crl_port"

agent_config "metrics-listen = $WORK/metrics.sock"
agent_identity dev "revocation-interval = 2s"
agent_identity bare "revocation-interval = 2s"
agent_identity quiet "revocation-interval = 2s" "revocation-check = off"
agent_start
provider_env
s_server_start
for name in dev bare quiet; do assert_ok ctl keygen "$name" --type ec-p256; done
issue dev "$ocsp_url" "$crl_url"
issue bare "$ocsp_url" "$crl_url" leaf-only
# quiet's responder and CRL are the CRL server's, under names of their own: its log shows
# every request for them.
issue quiet "http://127.0.0.1:$crl_port/quiet-ocsp" "http://127.0.0.1:$crl_port/quiet.crl"
ocsp_knows "$ocsp_port" "$WORK/dev.pem"
s1=$(cert_serial "$WORK/dev.pem")

# 1. Good, from the responder, verified with the issuer in the installed chain alone.
v=$(wait_revocation dev "^good \(ocsp," 15)
log "dev (serial $s1): revocation $v"
assert_eq "$(revocation_metric dev good)" 1 "mtls_agent_revocation_state good (dev)"
assert_eq "$(handshake_ok dev)" "$s1" "serial the server saw"
assert_eq "$(status_field dev renew)" "" "status renew of an identity that does not renew"
assert_eq "$(status_field dev next-renewal)" "" "status next-renewal of an identity that does not renew"

# 1b. Only the issuer or a responder it delegated to (its certificate, with OCSP signing)
# may answer: a signer with the issuer's name and a key of its own, or one the issuer
# certified without OCSP signing, is a warning, never "good".
revocation_rogue
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=responder" \
	-keyout "$WORK/rev/resp.key" -out "$WORK/rev/resp.csr" 2>/dev/null || fail "responder key"
for eku in OCSPSigning clientAuth; do
	printf 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\nextendedKeyUsage = %s\n' \
		"$eku" >"$WORK/rev/resp-$eku.ext"
	openssl x509 -req -in "$WORK/rev/resp.csr" -CA "$CA_DIR/inter.crt" -CAkey "$CA_DIR/inter.key" \
		-set_serial "0x$(openssl rand -hex 8)" -days 1 -extfile "$WORK/rev/resp-$eku.ext" \
		-out "$WORK/rev/resp-$eku.crt" 2>/dev/null || fail "responder certificate ($eku)"
done
# The CRL would answer in the responder's place (auto): down meanwhile.
pid_stop CRL_PID
pid_stop OCSP_PID
ocsp_start "$ocsp_port" "$WORK/rev/rogue.crt" "$WORK/rev/rogue.key"
v=$(wait_revocation dev "^unknown \(bad response: signature not by the issuing CA" 10)
log "dev, forged answer: revocation $v"
pid_stop OCSP_PID
ocsp_start "$ocsp_port" "$WORK/rev/resp-clientAuth.crt" "$WORK/rev/resp.key"
sleep 3 # more than one interval: still not good
v=$(wait_revocation dev "^unknown \(bad response: signature not by the issuing CA" 10)
log "dev, responder certified without OCSP signing: revocation $v"
pid_stop OCSP_PID
ocsp_start "$ocsp_port" "$WORK/rev/resp-OCSPSigning.crt" "$WORK/rev/resp.key"
v=$(wait_revocation dev "^good \(ocsp," 10)
log "dev, delegated responder: revocation $v"
pid_stop OCSP_PID
ocsp_start "$ocsp_port"
crl_server_start "$crl_port"
assert_eq "$(handshake_ok dev)" "$s1" "serial the server saw after the forged answers"

# 2. A leaf-only chain and no ca-trust: no issuer to verify an answer with.
v=$(wait_revocation bare "^unknown \(the certificate's issuer is neither in its chain nor an anchor; " 15)
log "bare: revocation $v"
assert_eq "$(revocation_metric bare unknown)" 1 "mtls_agent_revocation_state unknown (bare)"

# 3. revocation-check = off: several intervals without a request or a status line.
sleep 5
assert_eq "$(status_field quiet revocation)" "" "status revocation with revocation-check = off"
if grep -q quiet "$WORK/crl-http.log"; then
	fail "revocation-check = off, yet quiet's sources were asked: $(grep quiet "$WORK/crl-http.log")"
fi
log "quiet (revocation-check = off): no request in 5 s"

# 4. Revoked: noticed within a few intervals, shown, served on, nothing enrolls.
revocation_revoke "$WORK/dev.pem" keyCompromise
for i in 1 2 3; do ocsp_revoked "$ocsp_port" "$WORK/dev.pem" && break; done
ocsp_revoked "$ocsp_port" "$WORK/dev.pem" || fail "openssl ocsp does not report the revocation"
t0=$SECONDS
v=$(wait_revocation dev "^revoked \(keyCompromise, revoked [0-9T:-]+Z; ocsp," 12)
seen=$((SECONDS - t0))
log "dev revoked: noticed within $seen s (interval 2 s): $v"
check=$(ctl check 2>&1 || true)
assert_contains "$check" "certificate revoked (keyCompromise" "check"
assert_contains "$check" "no renewal is configured: import a new certificate" "check"
assert_not_contains "$check" "re-enrolling" "check"
assert_eq "$(revocation_metric dev revoked)" 1 "mtls_agent_revocation_state revoked (dev)"
sleep 5 # more checks, each still revoked: the error stays one line
assert_eq "$(log_count "certificate serial $s1 is REVOKED: .*no renewal is configured: import a new certificate")" 1 \
	"errors logged for the revocation"
assert_eq "$(handshake_ok dev)" "$s1" "serial the server saw with the certificate revoked"
assert_eq "$(current_serial dev)" "$s1" "serial served after the revocation"
assert_eq "$(log_count "enrolling|renewing|renewal failed")" 0 "enrollment or renewal lines in the log"
agent_alive || fail "the agent died"

# 5. The operator imports a new certificate for the key: good again.
issue dev "$ocsp_url" "$crl_url"
ocsp_knows "$ocsp_port" "$WORK/dev.pem"
s2=$(cert_serial "$WORK/dev.pem")
v=$(wait_revocation dev "^good \(ocsp," 15)
log "dev after import (serial $s2): revocation $v"
assert_eq "$(handshake_ok dev)" "$s2" "serial the server saw after the import"

# 6. A reload turns quiet's check on: its worker starts and asks its (absent) responder,
# then the CRL server, which has neither: unknown, a warning, the certificate still served.
sed -i 's/^revocation-check = off$/revocation-check = auto/' "$CONF"
ctl reload >/dev/null || fail "reload failed"
v=$(wait_revocation quiet "^unknown \(" 15)
log "quiet after the reload: revocation $v"
grep -q 'POST /quiet-ocsp' "$WORK/crl-http.log" ||
	fail "no OCSP request for quiet after the reload: $(cat "$WORK/crl-http.log")"
# And off again: the status line goes with the check.
sed -i 's/^revocation-check = auto$/revocation-check = off/' "$CONF"
ctl reload >/dev/null || fail "reload failed"
wait_until 10 no_revocation_line quiet ||
	fail "status still shows a revocation line for quiet after revocation-check = off"
agent_stop
log "OK: renew = none: good, unknown without an issuer, off asks nothing, revoked noticed in $seen s and served on, good after an import"
