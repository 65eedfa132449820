#!/bin/bash
# Clock sanity (issue 12): a gateway without an RTC starts in 1970, or years ahead,
# until NTP answers. By such a clock every certificate is expired or not yet valid.
# Under faketime the agent is started at +5 years and at 1970 with an identity that
# has a retired key (its certificate valid for 30 more days by the real clock) and a
# bootstrap credential: it keeps serving signatures, deletes no key, does not
# bootstrap, refuses `renew` saying why, and status shows the wait. Started again with
# the right clock, the schedule resumes and a renewal works.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_tls_cmd curl
need_cmd pkcs11-tool python3 faketime
need_provider

testca_init
server_cert_setup
softhsm_setup renewclock
(umask 077 && printf 'pw-%s\n' "$(rand_token)" >"$WORK/est.pass" &&
	printf 'device:%s\n' "$(cat "$WORK/est.pass")" >"$WORK/est.basic")
est_ca_start --lifetime 3600 --basic "device:$WORK/est.pass"
agent_config
renew_lines est "bootstrap = basic:$WORK/est.basic" "renew-at = 50%"
agent_identity gw "${RENEW_LINES[@]}"
# No synchronized flag from the host's systemd-timesyncd: a file of the test's own.
export MTLS_AGENT_TEST_TIMESYNC_FILE=$WORK/timesync-synchronized
agent_start
identity_setup gw ec-p256
provider_env
s_server_start

# Every private key on the test token, as CKA_ID hex (the old generation is relabelled).
token_keys() {
	pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$TOKEN_LABEL" --login --pin "$USER_PIN" \
		--list-objects --type privkey 2>/dev/null | sed -n 's/^ *ID: *//p' | sort
}

handshake() { # WHAT
	identity_files gw
	assert_cn "$(https_get_identity --cert "$TLS_DIR/gw.chain.pem" --key "$TLS_DIR/gw.keyref.pem")" gw \
		"$1: the server saw"
}

# One renewal by the right clock: the first key now waits in the retirement list for its
# 30-day certificate to expire.
assert_ok ctl renew gw
[ -s "$STATE_DIR/gw.retire" ] || fail "no retired key after a renewal"
[ -s "$STATE_DIR/clock" ] || fail "the agent did not record the clock in $STATE_DIR/clock"
keys0=$(token_keys)
[ "$(printf "%s\n" "$keys0" | wc -l)" -ge 2 ] || fail "expected at least 2 keys on the token, got: $keys0"
serial0=$(current_serial gw)
agent_stop

REAL_AGENT=$MTLS_AGENT
FAKETIME_LIB=
for f in /usr/lib/*/faketime/libfaketimeMT.so.1 /usr/lib/faketime/libfaketimeMT.so.1; do
	[ -f "$f" ] && FAKETIME_LIB=$f && break
done
[ -n "$FAKETIME_LIB" ] || skip "libfaketimeMT.so.1 not found (package faketime)"
wrong_clock() { # LABEL FAKETIME_SPEC
	local label=$1 spec=$2 enrolls waiting rc=0
	# libfaketime preloaded into the agent itself (the faketime program would stay the
	# parent and take the agent's signals); ASan tolerates a preload listed before it.
	cat >"$WORK/agent-faketime" <<EOF
#!/bin/sh
export LD_PRELOAD='$FAKETIME_LIB' FAKETIME='$spec'
export ASAN_OPTIONS="\${ASAN_OPTIONS:+\$ASAN_OPTIONS:}verify_asan_link_order=0"
exec '$REAL_AGENT' "\$@"
EOF
	chmod +x "$WORK/agent-faketime"
	MTLS_AGENT=$WORK/agent-faketime
	enrolls=$(grep -c 'simpleenroll\|simplereenroll' "$CA_LOG" || true)
	agent_start
	wait_until 20 sh -c "'$MTLS_AGENTCTL' -s '$SOCK' status | grep -q 'waiting: waiting for a good clock'" ||
		fail "$label: status shows no wait for the clock: $(ctl status 2>&1)"
	status_save "$WORK/st.json"
	waiting=$(status_get "$WORK/st.json" gw waiting)
	log "$label: status waiting: $waiting"
	assert_contains "$waiting" "no renewal, bootstrap or key deletion" "$label: status waiting"
	assert_eq "$(status_get "$WORK/st.json" gw next-renewal)" "-" "$label: next-renewal"
	# Signatures are still served (the server checks the certificate by the real clock).
	handshake "$label"
	ctl renew gw >"$WORK/renew.out" 2>&1 || rc=$?
	[ "$rc" -ne 0 ] || fail "$label: renew succeeded with a wrong clock"
	assert_contains "$(cat "$WORK/renew.out")" "renewal not attempted: waiting for a good clock" \
		"$label: renew's answer"
	sleep 3 # more than one look at the clock (every 15 s at most; the first at start)
	assert_eq "$(token_keys)" "$keys0" "$label: keys in the token"
	[ -s "$STATE_DIR/gw.retire" ] || fail "$label: the retirement list was emptied"
	assert_eq "$(grep -c 'simpleenroll\|simplereenroll' "$CA_LOG" || true)" "$enrolls" \
		"$label: enrollments at the CA"
	assert_eq "$(current_serial gw)" "$serial0" "$label: serial"
	agent_stop
	MTLS_AGENT=$REAL_AGENT
}

wrong_clock "+5 years" "+5y"
wrong_clock "1970" "@1970-01-02 00:00:00"
grep -q 'days after the last time seen' "$AGENT_LOG" || fail "no log of the clock jump ahead"
grep -q 'earlier than' "$AGENT_LOG" || fail "no log of the clock behind the floor"

# --- the right clock again: the schedule resumes ------------------------------------------------
agent_start
wait_until 20 sh -c "! '$MTLS_AGENTCTL' -s '$SOCK' status | grep -q 'waiting:'" ||
	fail "status still shows a wait with the right clock"
status_save "$WORK/st.json"
next=$(status_get "$WORK/st.json" gw next-renewal)
[ -n "$next" ] && [ "$next" != "-" ] || fail "no next renewal planned with the right clock"
assert_ok ctl renew gw
[ "$(current_serial gw)" != "$serial0" ] || fail "renewal with the right clock did not install a new certificate"
handshake "after the clock is right"
agent_stop
log "ok"
