#!/bin/bash
# Crash safety of automated renewal (EST, keys in a SoftHSM token).
#
# 1. Deterministic: for each step of a renewal (keygen, requested, issued,
#    installed, queued) the agent is started with MTLS_AGENT_TEST_CRASH_AT=STEP,
#    a renewal is forced (mtls-agentctl renew) and the agent kills itself with
#    SIGKILL right after the step was recorded. Restarted without the variable,
#    it must reconcile: roll back (keygen, requested, issued: the kill lands
#    after the journal says "issued" but before the certificate file is
#    replaced) or complete (installed, queued), remove the journal, serve a
#    certificate whose public key is the key it signs with (a real mTLS
#    handshake through the provider to openssl s_server -Verify), and the next
#    renewal must succeed, certifying the pending key of a rolled-back attempt
#    instead of making another one.
# 2. Random: RENEW_CRASH_ROUNDS (default 25) times, a renewal is forced and the
#    agent is killed with SIGKILL a random time after it logged the request (a
#    third of the time while the EST CA delays its answer by 1 s, so that the
#    kill lands mid-request); after the restart the same invariants must hold.
#    The time is drawn from 0..RENEW_CRASH_MAX_MS ms, by default 0..400 ms or,
#    when a renewal takes longer here (a loaded machine: SoftHSM keygen, TLS),
#    0..1.25 times the slowest clean renewal of part 1, so that kills land on
#    both sides of the installation.
#
# Key invariant (renew/renew.c, agent/state.c): the token holds the current
# key (the one the certificate file names), at most one pending key (recorded
# in <state-dir>/NAME.pending, reused by the next attempt), and the old keys
# queued in <state-dir>/NAME.retire until their certificates expire (not
# during this test: certificates live 3600 s and the initial one 30 days), one
# per installed renewal. Nothing else: an interrupted attempt never leaves a
# key behind that nobody will use or delete. (More than about 60 rounds queue
# more old keys than renew/renew.c's retirement list holds (MAX_RETIRE): the
# count check then fails, rightly.)
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_tls_cmd curl
need_test_hooks
need_cmd pkcs11-tool python3
need_provider

ROUNDS=${RENEW_CRASH_ROUNDS:-25}
MAX_MS=${RENEW_CRASH_MAX_MS:-}
case "$ROUNDS" in
'' | *[!0-9]*) fail "RENEW_CRASH_ROUNDS must be a number: '$ROUNDS'" ;;
esac
case "$MAX_MS" in
*[!0-9]*) fail "RENEW_CRASH_MAX_MS must be a number: '$MAX_MS'" ;;
esac
ID=gw

testca_init
server_cert_setup
softhsm_setup crash
est_ca_start --lifetime 3600
agent_config
renew_lines est "key-type = ec-p256"
agent_identity "$ID" "${RENEW_LINES[@]}"
agent_start
# The first certificate (30 days, from lib.sh's CA): the schedule never fires on its own.
identity_setup "$ID" ec-p256 "/CN=$ID/O=mtls-agent tests"
# The provider configuration for curl only: the agent (restarted many times) must
# never inherit OPENSSL_CONF or MTLS_AGENT_SOCK.
provider_env
unset OPENSSL_CONF MTLS_AGENT_SOCK
s_server_start

JOURNAL=$STATE_DIR/$ID.renew
RETIRE=$STATE_DIR/$ID.retire
PENDING=$STATE_DIR/$ID.pending
CERT_FILE=$STATE_DIR/$ID.crt
HANDSHAKES=0
CHECKS=0
SLOWEST_MS=0 # of the clean renewals, from the agent logging the request to mtls-agentctl returning
RENEWALS=0 # certificates installed by renewals (each queues one old key)

# --- helpers -------------------------------------------------------------------------

# Public key (DER SubjectPublicKeyInfo) of the first certificate of a PEM file.
cert_spki_der() { # PEM OUT
	openssl x509 -in "$1" -noout -pubkey | openssl pkey -pubin -outform DER -out "$2" ||
		fail "cannot read the public key of $1"
}

# Public key (DER SubjectPublicKeyInfo) of the token's public key object with CKA_ID ID.
token_spki_der() { # ID OUT
	pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$TOKEN_LABEL" --login --pin "$USER_PIN" \
		--read-object --type pubkey --id "$1" -o "$WORK/tok.pub" >/dev/null 2>&1 ||
		fail "pkcs11-tool cannot read public key $1"
	# pkcs11-tool writes an EC key as SubjectPublicKeyInfo: normalise through openssl.
	openssl pkey -pubin -inform DER -in "$WORK/tok.pub" -outform DER -out "$2" 2>/dev/null ||
		fail "cannot parse public key $1 read from the token"
}

now_ms() {
	local t=${EPOCHREALTIME/./}
	printf '%s\n' $((10#$t / 1000))
}

# Byte offset of the end of the agent log (to look at what a restart logged).
log_mark() { stat -c %s "$AGENT_LOG"; }
log_since() { tail -c +$(($1 + 1)) "$AGENT_LOG"; }

# Step the journal records ("" when there is none).
journal_step() {
	[ -f "$JOURNAL" ] || return 0
	sed -n 's/^step=//p' "$JOURNAL"
}

# Waits (bounded) until reconciliation removed the journal.
wait_journal_gone() { # WHAT
	local deadline=$((SECONDS + 20))
	while [ -e "$JOURNAL" ]; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			show_log "$JOURNAL"
			fail "$1: the renewal journal $JOURNAL is still there 20 s after the restart"
		fi
		sleep 0.1
	done
}

# The agent must serve, and sign with, a matching credential (cheap: a signature
# over a TLS 1.3 CertificateVerify made by the agent verifies with the served
# certificate's key); the certificate file holds what `mtls-agentctl cert` prints.
check_credential() { # WHAT
	ctl cert "$ID" >"$WORK/cur.pem" 2>"$WORK/cur.err" || fail "$1: mtls-agentctl cert failed: $(cat "$WORK/cur.err")"
	cmp -s "$WORK/cur.pem" "$CERT_FILE" ||
		fail "$1: $CERT_FILE differs from what mtls-agentctl cert prints"
	cert_pubkey "$WORK/cur.pem" "$WORK/cur.pub"
	make_cv13 "$WORK/cv.bin"
	ctl sign "$ID" --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv.bin" --out "$WORK/cv.sig" \
		2>"$WORK/sign.err" || fail "$1: the agent cannot sign with $ID: $(cat "$WORK/sign.err")"
	verify_sig "$WORK/cur.pub" ecdsa_secp256r1_sha256 "$WORK/cv.bin" "$WORK/cv.sig" ||
		fail "$1: the agent signs with a key that is not its certificate's"
	CHECKS=$((CHECKS + 1))
}

# A real mTLS handshake: curl through the provider with the credentials an
# application gets (ctl cert + ctl keyref) to s_server -Verify; the server must
# verify the client certificate, and it must be the one the agent serves.
handshake() { # WHAT
	local d=$WORK/hs rc=0
	mkdir -p "$d"
	app_credentials "$ID" "$d" || fail "$1: cannot read $ID's credentials"
	tls_timeout env OPENSSL_CONF="$PROVIDER_CONF" MTLS_AGENT_SOCK="$SOCK" \
		curl -sS --max-time 20 --cacert "$SRV_CA" --cert "$d/chain.pem" --key "$d/keyref.pem" \
		"https://127.0.0.1:$S_SERVER_PORT/" >"$d/page" 2>"$d/err" || rc=$?
	if [ "$rc" -ne 0 ] || ! grep -q 'Verify return code: 0 (ok)' "$d/page"; then
		show_log "$d/err" 10
		show_log "$d/page" 20
		show_log "$S_SERVER_LOG" 20
		fail "$1: mTLS handshake with the agent's credential failed (curl exit $rc)"
	fi
	page_identity "$d/page" >/dev/null
	[ "$(cert_serial "$TLS_DIR/peer.pem")" = "$(cert_serial "$d/chain.pem")" ] ||
		fail "$1: the server saw certificate $(cert_serial "$TLS_DIR/peer.pem"), the agent serves $(cert_serial "$d/chain.pem")"
	HANDSHAKES=$((HANDSHAKES + 1))
}

# Checks the key invariant (see the top); sets TOKEN_IDS (sorted), CURRENT_ID and
# PENDING_ID (the pending key if it is not the current one, else "").
key_invariant() { # WHAT
	local what=$1 ids queued pend="" unq n nq k cur="" other=""
	ids=$(token_key_ids "$ID" | tr 'A-F' 'a-f' | sort)
	n=$(grep -c . <<<"$ids" || true)
	queued=
	[ ! -f "$RETIRE" ] || queued=$(awk '{print $1}' "$RETIRE" | tr 'A-F' 'a-f' | sort)
	nq=$(grep -c . <<<"$queued" || true)
	[ ! -f "$PENDING" ] || pend=$(tr -d ' \n' <"$PENDING" | tr 'A-F' 'a-f')
	for k in $queued; do
		grep -qx "$k" <<<"$ids" || fail "$what: key $k queued for retirement is not on the token"
	done
	[ "$(grep -c . <<<"$(sort -u <<<"$queued")" || true)" -eq "$nq" ] ||
		fail "$what: a key is queued twice for retirement: $(tr '\n' ' ' <"$RETIRE")"
	[ -z "$pend" ] || grep -qx "$pend" <<<"$ids" ||
		fail "$what: the pending key $pend ($PENDING) is not on the token"
	# The keys not queued for retirement: the current one and at most one pending one.
	unq=$(comm -23 <(printf '%s\n' "$ids") <(printf '%s\n' "$queued") | grep . || true)
	cert_spki_der "$CERT_FILE" "$WORK/cert.spki"
	for k in $unq; do
		token_spki_der "$k" "$WORK/key.spki"
		if cmp -s "$WORK/key.spki" "$WORK/cert.spki"; then
			[ -z "$cur" ] || fail "$what: two keys on the token match the certificate"
			cur=$k
		else
			[ -z "$other" ] || fail "$what: keys on the token that are neither current, pending nor queued for retirement: $(tr '\n' ' ' <<<"$unq") (pending: ${pend:--}, queued: $(tr '\n' ' ' <<<"$queued"))"
			other=$k
		fi
	done
	[ -n "$cur" ] || fail "$what: none of the token's keys that are not queued for retirement matches the certificate (keys: $(tr '\n' ' ' <<<"$ids"), queued: $(tr '\n' ' ' <<<"$queued"))"
	if [ -n "$other" ] && [ "$other" != "$pend" ]; then
		fail "$what: key $other is on the token but neither current, pending (${pend:--}) nor queued for retirement: nothing will use or delete it (a kill after the keystore made a key and before $PENDING recorded it, agent/state.c identity_keygen, leaves one)"
	fi
	[ "$nq" -eq "$RENEWALS" ] ||
		fail "$what: $nq key(s) queued for retirement after $RENEWALS installed renewal(s)"
	[ "$n" -eq $((1 + nq + (${#other} > 0 ? 1 : 0))) ] || fail "$what: $n keys on the token (internal error of the check)"
	assert_eq "$(status_field "$ID" generations)" "$n" "$what: status generations"
	TOKEN_IDS=$ids
	CURRENT_ID=$cur
	PENDING_ID=$other
}

# Starts `mtls-agentctl renew` in the background (RENEW_PID) and waits until the
# agent logged the request: the CLI's own start-up (a libtool wrapper in the
# build tree) must not count in the time to the kill. Sets REQ_MS.
renew_bg() { # WHAT
	local mark deadline=$((SECONDS + 20))
	mark=$(log_mark)
	ctl renew "$ID" >"$WORK/renew.out" 2>"$WORK/renew.err" &
	RENEW_PID=$!
	bg_track "$RENEW_PID"
	until log_since "$mark" | grep -q 'renewal requested by uid'; do
		if ! kill -0 "$RENEW_PID" 2>/dev/null && ! log_since "$mark" | grep -q 'renewal requested by uid'; then
			wait "$RENEW_PID" 2>/dev/null || true
			fail "$1: mtls-agentctl renew ended before the agent logged the request: $(cat "$WORK/renew.err")"
		fi
		[ "$SECONDS" -lt "$deadline" ] || fail "$1: the agent did not log the renewal request within 20 s"
		sleep 0.01
	done
	REQ_MS=$(now_ms)
}

# A clean renewal that must succeed; its duration goes into SLOWEST_MS.
timed_renew() { # WHAT
	local rc=0 ms
	renew_bg "$1"
	wait "$RENEW_PID" || rc=$?
	ms=$(($(now_ms) - REQ_MS))
	[ "$rc" -eq 0 ] || fail "$1: mtls-agentctl renew failed (exit $rc): $(cat "$WORK/renew.err")"
	[ "$ms" -le "$SLOWEST_MS" ] || SLOWEST_MS=$ms
}

# waits for the agent (killed or killing itself); sets KILL_RC.
# (stderr of the whole loop goes away: bash's "Killed" job notice is not news here)
reap_agent() { # WHAT
	local deadline=$((SECONDS + 30))
	KILL_RC=0
	{
		while kill -0 "$AGENT_PID" && [ "$SECONDS" -lt "$deadline" ]; do
			sleep 0.1
		done
		kill -0 "$AGENT_PID" || wait "$AGENT_PID" || KILL_RC=$?
	} 2>/dev/null
	kill -0 "$AGENT_PID" 2>/dev/null && fail "$1: the agent (pid $AGENT_PID) is still alive 30 s later"
	AGENT_PID=
}

# Restart after a crash; checks what reconciliation did. EXPECT: rolled-back,
# completed or "" (no journal was left: nothing to reconcile). Sets RECONCILED.
restart_and_reconcile() { # WHAT JSTEP SERIAL_BEFORE
	local what=$1 jstep=$2 s0=$3 mark s1 logtext
	mark=$(log_mark)
	agent_start
	wait_journal_gone "$what"
	s1=$(current_serial "$ID")
	logtext=$(log_since "$mark")
	RECONCILED=
	if [ -z "$jstep" ]; then
		assert_not_contains "$logtext" "interrupted" "$what: agent log after the restart"
	elif grep -qF "completed a renewal interrupted after step \"$jstep\"" <<<"$logtext"; then
		RECONCILED=completed
		[ "$s1" != "$s0" ] || fail "$what: reconciliation says completed, but the certificate is still serial $s0"
	elif grep -qF "rolled back a renewal interrupted at step \"$jstep\"" <<<"$logtext"; then
		RECONCILED=rolled-back
		[ "$s1" = "$s0" ] || fail "$what: reconciliation says rolled back, but the certificate changed from $s0 to $s1"
	else
		show_log "$AGENT_LOG" 30
		fail "$what: the agent logged neither 'completed' nor 'rolled back' for the journal at step $jstep"
	fi
	[ -n "$s1" ] || fail "$what: the agent serves no certificate after the restart"
	SERIAL_AFTER=$s1
}

# --- 1. deterministic: SIGKILL right after each step -----------------------------------------

key_invariant "initial"
check_credential "initial"
handshake "initial"
log "initial: serial $(current_serial "$ID"), key $CURRENT_ID"

declare -A OUTCOME
for step in preparing unrecorded keygen requested issued installed queued; do
	what="crash at $step"
	s0=$(current_serial "$ID")
	ids0=$TOKEN_IDS
	agent_stop
	# A temporary assignment before a function call is exported to what it runs: only this agent.
	MTLS_AGENT_TEST_CRASH_AT=$step agent_start
	rc=0
	ctl renew "$ID" >"$WORK/renew.out" 2>"$WORK/renew.err" || rc=$?
	[ "$rc" -ne 0 ] || fail "$what: mtls-agentctl renew succeeded although the agent was to die: $(cat "$WORK/renew.out")"
	reap_agent "$what"
	[ "$KILL_RC" -eq 137 ] || fail "$what: the agent exited with status $KILL_RC, not by SIGKILL (137)"
	grep -qF "MTLS_AGENT_TEST_CRASH_AT=$step: stopping with SIGKILL" "$AGENT_LOG" ||
		fail "$what: the agent died without reaching the crash point"
	jstep=$(journal_step)
	expect_jstep=$step
	[ "$step" != queued ] || expect_jstep=installed
	# "unrecorded": killed after the key was made, before it was recorded as pending.
	[ "$step" != unrecorded ] || expect_jstep=preparing
	assert_eq "$jstep" "$expect_jstep" "$what: journal step left behind"
	restart_and_reconcile "$what" "$jstep" "$s0"
	case "$step" in
	preparing | unrecorded | keygen | requested | issued) expect=rolled-back ;;
	*) expect=completed ;;
	esac
	assert_eq "$RECONCILED" "$expect" "$what: reconciliation"
	OUTCOME[$step]=$RECONCILED
	[ "$RECONCILED" = rolled-back ] || RENEWALS=$((RENEWALS + 1))
	check_credential "$what, after the restart"
	handshake "$what, after the restart"
	key_invariant "$what, after the restart"
	if [ "$step" = preparing ]; then
		[ -z "$PENDING_ID" ] || fail "$what: a pending key appeared although none was made"
		assert_eq "$TOKEN_IDS" "$ids0" "$what: keys on the token"
	elif [ "$RECONCILED" = rolled-back ]; then
		[ -n "$PENDING_ID" ] || fail "$what: no pending key kept for the next attempt"
		[ "$(comm -13 <(printf '%s\n' "$ids0") <(printf '%s\n' "$TOKEN_IDS"))" = "$PENDING_ID" ] ||
			fail "$what: the token gained other keys than the pending one"
	fi
	pending=$PENDING_ID
	ids1=$TOKEN_IDS

	# The next renewal succeeds, certifying the pending key if there is one.
	timed_renew "$what, next renewal"
	s2=$(current_serial "$ID")
	[ "$s2" != "$SERIAL_AFTER" ] || fail "$what: the renewal after the restart installed no new certificate"
	RENEWALS=$((RENEWALS + 1))
	check_credential "$what, next renewal"
	handshake "$what, next renewal"
	key_invariant "$what, next renewal"
	if [ -n "$pending" ]; then
		assert_eq "$CURRENT_ID" "$pending" "$what: the next renewal must certify the pending key"
		assert_eq "$TOKEN_IDS" "$ids1" "$what: keys on the token after the next renewal"
	else
		[ "$(comm -13 <(printf '%s\n' "$ids1") <(printf '%s\n' "$TOKEN_IDS") | grep -c .)" -eq 1 ] ||
			fail "$what: the next renewal should have added exactly one key"
	fi
	[ ! -e "$JOURNAL" ] || fail "$what: a journal is left after a successful renewal"
	log "$what: $RECONCILED (serial $s0 -> $SERIAL_AFTER), next renewal serial $s2, $(grep -c . <<<"$TOKEN_IDS") keys on the token"
done

# --- 2. random: SIGKILL at a random moment of a renewal -----------------------------------------

if [ -z "$MAX_MS" ]; then
	MAX_MS=400
	[ $((SLOWEST_MS * 5 / 4)) -le "$MAX_MS" ] || MAX_MS=$((SLOWEST_MS * 5 / 4))
fi
log "clean renewals took up to $SLOWEST_MS ms; random kills 0..$MAX_MS ms after the agent logged the request"
BEFORE=0 AFTER=0 DELAYED=0
declare -A JSTEPS
for r in $(seq 1 "$ROUNDS"); do
	what="random kill $r/$ROUNDS"
	s0=$(current_serial "$ID")
	delay=0
	if [ $((RANDOM % 3)) -eq 0 ]; then
		ca_fault delay 1 1
		delay=1
		DELAYED=$((DELAYED + 1))
	fi
	ms=$(((RANDOM * 32768 + RANDOM) % (MAX_MS + 1)))
	renew_bg "$what"
	left=$((REQ_MS + ms - $(now_ms)))
	[ "$left" -le 0 ] || sleep "$(printf '%d.%03d' $((left / 1000)) $((left % 1000)))"
	kill -KILL "$AGENT_PID" 2>/dev/null || true
	reap_agent "$what"
	wait "$RENEW_PID" 2>/dev/null || true
	ca_fault_clear
	jstep=$(journal_step)
	JSTEPS[${jstep:-none}]=$((${JSTEPS[${jstep:-none}]:-0} + 1))
	restart_and_reconcile "$what" "$jstep" "$s0"
	case "$jstep" in
	preparing | keygen | requested) [ "$RECONCILED" = rolled-back ] || fail "$what: a journal at step $jstep must be rolled back, got $RECONCILED" ;;
	installed) [ "$RECONCILED" = completed ] || fail "$what: a journal at step installed must be completed, got $RECONCILED" ;;
	esac
	if [ "$SERIAL_AFTER" = "$s0" ]; then
		BEFORE=$((BEFORE + 1))
		where=before
	else
		AFTER=$((AFTER + 1))
		RENEWALS=$((RENEWALS + 1))
		where=after
	fi
	check_credential "$what"
	key_invariant "$what"
	if [ $((r % 5)) -eq 0 ]; then
		handshake "$what"
	fi
	dtxt=
	[ "$delay" = 0 ] || dtxt=" (CA delaying)"
	log "$what: ${ms} ms$dtxt, journal ${jstep:-none}${RECONCILED:+ ($RECONCILED)}, $where install, $(grep -c . <<<"$TOKEN_IDS") keys"
done

# After all the kills: a clean renewal, a handshake, the invariant; no journal.
timed_renew "final renewal"
RENEWALS=$((RENEWALS + 1))
check_credential "final renewal"
handshake "final renewal"
key_invariant "final renewal"
[ ! -e "$JOURNAL" ] || fail "a journal is left after the final renewal"
stale=$(find "$STATE_DIR" -name '*.tmp.*' | wc -l)
[ "$stale" -eq 0 ] || fail "$stale temporary files left in the state dir after the restarts: $(find "$STATE_DIR" -name '*.tmp.*')"
agent_stop

printf 'renew-crash: %s random kills: %s before install, %s after; %s handshakes, 0 failures\n' \
	"$ROUNDS" "$BEFORE" "$AFTER" "$HANDSHAKES"
summary="renew-crash: details: kills 0..$MAX_MS ms after the request (clean renewals took up to $SLOWEST_MS ms), $DELAYED while the CA delayed; journal left at"
for s in none preparing keygen requested issued installed; do
	summary="$summary $s=${JSTEPS[$s]:-0}"
done
summary="$summary; deterministic: preparing=${OUTCOME[preparing]} unrecorded=${OUTCOME[unrecorded]} keygen=${OUTCOME[keygen]} requested=${OUTCOME[requested]} issued=${OUTCOME[issued]} installed=${OUTCOME[installed]} queued=${OUTCOME[queued]}; $HANDSHAKES handshakes, $CHECKS signature checks, 0 failures; $(grep -c . <<<"$TOKEN_IDS") keys on the token ($RENEWALS renewals installed, old keys queued until expiry); $stale stale temporary files in the state dir"
printf '%s\n' "$summary"
log "OK"
