#!/bin/bash
# An installed certificate that has expired. Renewal (CMP KUR, EST simplereenroll) is
# authenticated by the current certificate, so it cannot be used any more:
# (a) without bootstrap configured, the agent must not go to the CA at all; status tells
#     the operator what to do (action: import a certificate or configure bootstrap) and
#     a forced renewal fails with a message saying why;
# (b) with bootstrap configured (CMP: IR protected by a shared secret; EST: simpleenroll
#     with HTTP basic credentials), the agent enrolls again on its own right after start
#     and installs a new, valid certificate for the same subject.
# Both protocols, one identity each for (a) and (b). The expired certificates are
# written over the identities' certificate files while the agent is stopped
# (import-cert refuses expired certificates; the file is read at start).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_cmd python3

testca_init
server_cert_setup
softhsm_setup expired
(
	umask 077
	printf 'boot-secret-%s\n' "$(rand_token)" >"$WORK/cmp.secret"
	rand_token >"$WORK/est.pass"
	printf 'device-%s:%s\n' "$(rand_token)" "$(cat "$WORK/est.pass")" >"$WORK/est.basic"
)
EST_USER=$(cut -d: -f1 "$WORK/est.basic")
cmp_ca_start --lifetime 3600 --secret "boot:$WORK/cmp.secret"
CMP_URL=$CA_URL CMP_LOG=$CA_LOG CMP_TRUST=$CA_TRUST
est_ca_start --lifetime 3600 --basic "$EST_USER:$WORK/est.pass"
EST_URL=$CA_URL EST_LOG=$CA_LOG EST_TRUST=$CA_TRUST

# write_config BOOTSTRAP: the four identities; bootstrap for boot-* only when BOOTSTRAP=1.
write_config() {
	local boot_est=() boot_cmp=()
	if [ "$1" = 1 ]; then
		boot_est=("bootstrap = basic:$WORK/est.basic")
		boot_cmp=("bootstrap = secret:boot:$WORK/cmp.secret")
	fi
	agent_config
	agent_identity stale-est "renew = est" "ca-url = $EST_URL" "ca-trust = $EST_TRUST" "ca-timeout = 10"
	agent_identity stale-cmp "renew = cmp" "ca-url = $CMP_URL" "ca-trust = $CMP_TRUST" "ca-timeout = 10"
	agent_identity boot-est "renew = est" "ca-url = $EST_URL" "ca-trust = $EST_TRUST" "ca-timeout = 10" \
		"sign-policy = any" "${boot_est[@]}"
	agent_identity boot-cmp "renew = cmp" "ca-url = $CMP_URL" "ca-trust = $CMP_TRUST" "ca-timeout = 10" \
		"sign-policy = any" "${boot_cmp[@]}"
}
IDS="stale-est stale-cmp boot-est boot-cmp"

# Keys, and expired certificates for them, with no bootstrap anywhere (a key without a
# certificate would be enrolled at once where bootstrap is configured).
write_config 0
agent_start
for id in $IDS; do
	assert_ok ctl keygen "$id" --type ec-p256
	ctl csr "$id" --subject "/CN=$id/O=mtls-agent tests" >"$WORK/$id.csr" || fail "csr $id failed"
	testca_issue "$WORK/$id.csr" "$WORK/$id.expired.pem" --expired
done
agent_stop
for id in $IDS; do
	cp "$WORK/$id.expired.pem" "$STATE_DIR/$id.crt"
done
write_config 1
agent_start
for id in stale-est stale-cmp; do
	[ "$(current_serial "$id")" = "$(cert_serial "$WORK/$id.expired.pem")" ] ||
		fail "$id: the agent does not serve the expired certificate written to $STATE_DIR/$id.crt"
done

# (b) Bootstrap: a new certificate on the agent's own, soon after start.
# enrollment_recorded ID: a status snapshot ($WORK/snap.json) whose last-result for ID says installed.
enrollment_recorded() {
	status_save "$WORK/snap.json"
	case "$(status_get "$WORK/snap.json" "$1" last-result)" in
	*installed*) return 0 ;;
	*) return 1 ;;
	esac
}
for id in boot-est boot-cmp; do
	old=$(cert_serial "$WORK/$id.expired.pem")
	new=$(wait_new_serial "$id" "$old" 60)
	ctl cert "$id" >"$WORK/$id.new.pem"
	now=$(date +%s)
	na=$(cert_not_after "$WORK/$id.new.pem")
	[ "$na" -ge $((now + 3500)) ] && [ "$na" -le $((now + 3700)) ] ||
		fail "$id: the new certificate ends in $((na - now)) s; the test CA gives 3600 s"
	openssl verify -CAfile "$CA_DIR/root.crt" -untrusted "$CA_DIR/inter.crt" -purpose sslclient \
		"$WORK/$id.new.pem" >/dev/null 2>&1 || fail "$id: the new certificate does not verify"
	assert_eq "$(cert_subject "$WORK/$id.new.pem")" "$(cert_subject "$WORK/$id.expired.pem")" "$id: subject"
	cert_pubkey "$WORK/$id.new.pem" "$WORK/$id.new.pub"
	sign_verify "$id" ecdsa_secp256r1_sha256 "$WORK/$id.new.pem" "$WORK/$id.new.pub"
	# The new chain is served from inside the enrollment; its result reaches status when
	# the attempt returns (after the journal and the retirement list were written, with
	# fsync): poll for it rather than read it once.
	wait_until 10 enrollment_recorded "$id" ||
		fail "$id: status last-result does not say installed: $(status_get "$WORK/snap.json" "$id" last-result)"
	assert_eq "$(status_get "$WORK/snap.json" "$id" failures)" 0 "$id: status failures"
	assert_eq "$(status_get "$WORK/snap.json" "$id" action)" "" "$id: status action after bootstrap"
	grep -qF "identity \"$id\": enrolling (" "$AGENT_LOG" || fail "$id: the agent log shows no enrollment"
	log "$id: re-enrolled on its own: serial $new, valid $((na - now)) s more"
done
grep -q "simpleenroll issued serial=$(cert_serial "$WORK/boot-est.new.pem") subject=O=mtls-agent tests,CN=boot-est" "$EST_LOG" || {
	show_log "$EST_LOG"
	fail "boot-est: the EST CA log shows no simpleenroll (bootstrap) for the new certificate"
}
grep -q "simplereenroll" "$EST_LOG" && {
	show_log "$EST_LOG"
	fail "the EST CA saw a simplereenroll: an expired certificate cannot authenticate one"
}
grep -q "ir issued serial=$(cert_serial "$WORK/boot-cmp.new.pem") subject=/CN=boot-cmp/O=mtls-agent tests" "$CMP_LOG" || {
	show_log "$CMP_LOG"
	fail "boot-cmp: the CMP CA log shows no IR (bootstrap) for the new certificate"
}
grep -q "certConf accepted serial=$(cert_serial "$WORK/boot-cmp.new.pem")" "$CMP_LOG" ||
	fail "boot-cmp: no certConf for the new certificate"
grep -qE " kur |rejected" "$CMP_LOG" && {
	show_log "$CMP_LOG"
	fail "the CMP CA saw a KUR or rejected something: the expired certificate was used"
}

# (a) No bootstrap: nothing went to the CA, status says what to do, a forced renewal
# fails saying why. (The agent had as long as the bootstraps took to do something.)
for id in stale-est stale-cmp; do
	expired=$(cert_serial "$WORK/$id.expired.pem")
	assert_eq "$(current_serial "$id")" "$expired" "$id: serial"
	status_save "$WORK/snap.json"
	action=$(status_get "$WORK/snap.json" "$id" action)
	assert_contains "$action" "expired" "$id: status action"
	assert_contains "$action" "mtls-agentctl import-cert" "$id: status action"
	assert_contains "$action" "bootstrap" "$id: status action"
	assert_eq "$(status_get "$WORK/snap.json" "$id" next-renewal)" "-" "$id: status next-renewal"
	assert_eq "$(status_get "$WORK/snap.json" "$id" last-attempt)" "-" "$id: status last-attempt"
	assert_eq "$(status_get "$WORK/snap.json" "$id" failures)" 0 "$id: status failures"
	grep -qF "identity \"$id\": enrolling" "$AGENT_LOG" && fail "$id: the agent tried to enroll without bootstrap"
	grep -qF "identity \"$id\": renewing" "$AGENT_LOG" && fail "$id: the agent tried to renew with an expired certificate"
	assert_fails ctl renew "$id"
	log "$id: forced renewal: $LAST_ERR"
	# Why (no valid certificate) and what to do (import one, or configure bootstrap).
	assert_match "$LAST_ERR" "expired|no valid certificate" "$id: mtls-agentctl renew"
	assert_contains "$LAST_ERR" "import-cert" "$id: mtls-agentctl renew"
	assert_contains "$LAST_ERR" "bootstrap" "$id: mtls-agentctl renew"
	assert_eq "$(current_serial "$id")" "$expired" "$id: serial after the forced renewal"
	status_save "$WORK/snap.json"
	assert_contains "$(status_get "$WORK/snap.json" "$id" action)" "mtls-agentctl import-cert" "$id: status action after the forced renewal"
	assert_eq "$(status_get "$WORK/snap.json" "$id" failures)" 1 "$id: status failures after the forced renewal"
	assert_eq "$(status_get "$WORK/snap.json" "$id" next-renewal)" "-" "$id: no retry may be scheduled"
done
# Neither CA ever saw anything for them.
grep -qE "stale-|unauthorized|forbidden" "$EST_LOG" && {
	show_log "$EST_LOG"
	fail "the EST CA was contacted for an identity without bootstrap"
}
grep -qE "stale-|notAuthorized|rejected" "$CMP_LOG" && {
	show_log "$CMP_LOG"
	fail "the CMP CA was contacted for an identity without bootstrap"
}
[ "$(grep -cE 'simple(re)?enroll' "$EST_LOG")" -eq 1 ] || { show_log "$EST_LOG"; fail "the EST CA saw more than the one bootstrap"; }
[ "$(grep -cE ' (ir|cr|kur|p10cr) ' "$CMP_LOG")" -eq 1 ] || { show_log "$CMP_LOG"; fail "the CMP CA saw more than the one bootstrap"; }

agent_stop
log "OK: expired certificates: without bootstrap nothing sent and the operator told what to do; with bootstrap re-enrolled over CMP (IR, secret) and EST (simpleenroll, basic)"
