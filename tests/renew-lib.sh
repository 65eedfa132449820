# shellcheck shell=bash disable=SC2034 # variables set here are read by the tests
#
# tests/renew-lib.sh: sourced after lib.sh and tls-lib.sh by the renewal tests.
#
# Starts the test CAs (tests/cmp-ca, tests/est-ca) on 127.0.0.1 with lib.sh's
# test CA (the intermediate issues, the root is the trust anchor), writes
# renewal settings for an identity, reads renewal status, and runs a curl
# loop through the provider that must never fail across renewals.

CMP_CA_BIN=${CMP_CA_BIN:-$top_builddir/tests/cmp-ca}
EST_CA_BIN=${EST_CA_BIN:-$top_builddir/tests/est-ca}
[ -x "$CMP_CA_BIN" ] || fail "test CMP CA not built: $CMP_CA_BIN"
[ -x "$EST_CA_BIN" ] || fail "test EST CA not built: $EST_CA_BIN"

CA_PID=
CA_URL=
CA_LOG=
CA_FAULTS=$WORK/ca.faults
CA_TRUST=

# cmp_ca_start [--lifetime SECONDS] [ARGS...]: the CMP test CA (issuing with the
# intermediate, the root in its chain). Sets CA_PID, CA_URL, CA_LOG, CA_TRUST.
cmp_ca_start() {
	local portfile=$WORK/cmp-ca.port
	[ -f "$CA_DIR/inter.crt" ] || fail "cmp_ca_start: call testca_init first"
	CA_LOG=$WORK/cmp-ca.log
	rm -f "$portfile"
	"$CMP_CA_BIN" --port-file "$portfile" --ca-cert "$CA_DIR/inter.crt" \
		--ca-key "$CA_DIR/inter.key" --chain "$CA_DIR/root.crt" --fault-file "$CA_FAULTS" \
		--log "$CA_LOG" "$@" </dev/null >>"$CA_LOG" 2>&1 &
	CA_PID=$!
	bg_track "$CA_PID"
	wait_until 10 test -s "$portfile" || {
		show_log "$CA_LOG"
		fail "cmp-ca did not start"
	}
	CA_URL=http://127.0.0.1:$(cat "$portfile")/pkix/
	CA_TRUST=$CA_DIR/root.crt
	log "cmp-ca on $CA_URL (pid $CA_PID)"
}

# est_ca_start [--lifetime SECONDS] [ARGS...]: the EST test CA; its TLS server
# certificate is tls-lib.sh's (call server_cert_setup first). CA_TRUST holds the
# CA root and the server CA.
est_ca_start() {
	local portfile=$WORK/est-ca.port
	[ -n "${SRV_CERT:-}" ] || fail "est_ca_start: call server_cert_setup first"
	CA_LOG=$WORK/est-ca.log
	rm -f "$portfile"
	"$EST_CA_BIN" --port-file "$portfile" --tls-cert "$SRV_CERT" --tls-key "$SRV_KEY" \
		--ca-cert "$CA_DIR/inter.crt" --ca-key "$CA_DIR/inter.key" --chain "$CA_DIR/root.crt" \
		--fault-file "$CA_FAULTS" --log "$CA_LOG" "$@" </dev/null >>"$CA_LOG" 2>&1 &
	CA_PID=$!
	bg_track "$CA_PID"
	wait_until 10 test -s "$portfile" || {
		show_log "$CA_LOG"
		fail "est-ca did not start"
	}
	CA_URL=https://127.0.0.1:$(cat "$portfile")/.well-known/est
	CA_TRUST=$WORK/est-trust.pem
	cat "$CA_DIR/root.crt" "$SRV_CA" >"$CA_TRUST"
	log "est-ca on $CA_URL (pid $CA_PID)"
}

ca_stop() {
	[ -n "$CA_PID" ] || return 0
	_stop_pid "$CA_PID"
	wait "$CA_PID" 2>/dev/null || true
	CA_PID=
}

# ca_fault KIND COUNT [ARG]: the next COUNT requests get KIND (see tests/cmp-ca.c, tests/est-ca.c).
ca_fault() {
	printf '%s\n' "$*" >"$CA_FAULTS.tmp" && mv "$CA_FAULTS.tmp" "$CA_FAULTS"
}

ca_fault_clear() { rm -f "$CA_FAULTS"; }

# renew_lines PROTO [LINE...]: the renewal settings of an identity (for agent_identity/tpm_identity).
renew_lines() {
	local proto=$1
	shift
	RENEW_LINES=("renew = $proto" "ca-url = $CA_URL" "ca-trust = $CA_TRUST" "$@")
}

# status_field NAME FIELD: one field of identity NAME from `mtls-agentctl --json status` ("" if absent).
status_field() {
	ctl --json status >"$WORK/status.json" 2>"$WORK/status.err" || {
		cat "$WORK/status.err" >&2
		fail "status failed"
	}
	python3 - "$WORK/status.json" "$1" "$2" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
for rec in doc["records"]:
    if rec["kind"] == "identity" and rec["name"] == sys.argv[2]:
        print(rec["fields"].get(sys.argv[3], ""))
PY
}

# Serial of the certificate `mtls-agentctl cert NAME` prints ("" if none).
current_serial() {
	ctl cert "$1" >"$WORK/$1.serial.pem" 2>/dev/null || return 0
	cert_serial "$WORK/$1.serial.pem"
}

# wait_new_serial NAME OLD SECONDS: waits until NAME's certificate serial is not OLD; prints it.
wait_new_serial() {
	local name=$1 old=$2 max=$3 s deadline=$((SECONDS + $3))
	while :; do
		s=$(current_serial "$name")
		if [ -n "$s" ] && [ "$s" != "$old" ]; then
			printf '%s\n' "$s"
			return 0
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			show_log "$AGENT_LOG" 30
			show_log "$CA_LOG" 20
			fail "identity $name: no new certificate within $max s (still serial '$old')"
		fi
		sleep 0.5
	done
}

# app_credentials NAME DIR: what an application is handed at start: the chain and
# a key reference of the same key generation (re-read if a renewal slipped in
# between the two reads).
app_credentials() {
	local name=$1 dir=$2 i
	for i in 1 2 3 4 5; do
		ctl cert "$name" >"$dir/chain.pem" 2>/dev/null || { sleep 0.2; continue; }
		ctl keyref "$name" -o "$dir/keyref.pem" >/dev/null 2>&1 || { sleep 0.2; continue; }
		ctl cert "$name" >"$dir/chain2.pem" 2>/dev/null || { sleep 0.2; continue; }
		cmp -s "$dir/chain.pem" "$dir/chain2.pem" && return 0
	done
	return 1
}

# curl_loop_start NAME: in the background, curl (through the provider) to the
# latest s_server over and over, each time a new process with the credentials
# read just before (the chain and a key reference, which the provider resolves
# to the identity's current key). If a renewal lands between reading the chain
# and curl loading the key, the pair does not match (as with any two files
# read one after the other); that attempt is retried once and counted in
# loop.raced, never as a success. Counts in $WORK/loop.ok / loop.fail, the
# serials the server saw in loop.serials.
curl_loop_start() {
	local name=$1 d=$WORK/loop
	mkdir -p "$d/fresh"
	: >"$d.ok"
	: >"$d.fail"
	: >"$d.raced"
	: >"$d.serials"
	rm -f "$WORK/loop.stop"
	(
		n=0
		while [ ! -e "$WORK/loop.stop" ]; do
			n=$((n + 1))
			for try in 1 2; do
				app_credentials "$name" "$d/fresh" || continue
				used=$(cert_serial "$d/fresh/chain.pem")
				if curl -sS --max-time 20 --cacert "$SRV_CA" --cert "$d/fresh/chain.pem" \
					--key "$d/fresh/keyref.pem" "https://127.0.0.1:$S_SERVER_PORT/" \
					>"$d/page" 2>"$d/err" && grep -q 'Verify return code: 0 (ok)' "$d/page"; then
					echo "$n" >>"$d.ok"
					echo "$used" >>"$d.serials"
					break
				fi
				if [ "$try" = 1 ] && [ "$(current_serial "$name")" != "$used" ]; then
					echo "$n $used $(tr '\n' ' ' <"$d/err")" >>"$d.raced"
					continue
				fi
				echo "$n try $try $(tr '\n' ' ' <"$d/err")" >>"$d.fail"
				break
			done
			sleep 0.2
		done
	) &
	LOOP_PID=$!
	bg_track "$LOOP_PID"
}

# curl_loop_stop: ends the loop; fails if any handshake failed.
curl_loop_stop() {
	touch "$WORK/loop.stop"
	wait "$LOOP_PID" 2>/dev/null || true
	LOOP_OK=$(wc -l <"$WORK/loop.ok")
	LOOP_FAIL=$(wc -l <"$WORK/loop.fail")
	LOOP_RACED=$(wc -l <"$WORK/loop.raced")
	if [ "$LOOP_FAIL" -ne 0 ]; then
		show_log "$WORK/loop.fail" 10
		show_log "$AGENT_LOG" 30
		fail "$LOOP_FAIL of $((LOOP_OK + LOOP_FAIL)) curl handshakes failed across the renewals"
	fi
	[ "$LOOP_OK" -gt 0 ] || fail "the curl loop made no handshake"
	log "curl loop: $LOOP_OK handshakes, 0 failed, $(sort -u "$WORK/loop.serials" | wc -l) distinct certificates ($LOOP_RACED retried: renewal between reading the chain and loading the key)"
}

# stime_start NAME SECONDS: one long-running client (openssl s_time -new: one
# process, credentials loaded once, a new full handshake per connection) to the
# latest s_server for SECONDS; it must keep working across a renewal with the
# certificate and key generation it loaded at start.
stime_start() {
	local name=$1 secs=$2
	mkdir -p "$WORK/stime"
	app_credentials "$name" "$WORK/stime" || fail "stime_start: cannot read $name's credentials"
	STIME_SERIAL=$(cert_serial "$WORK/stime/chain.pem")
	timeout -k 5 $((secs + 60)) openssl s_time -connect "127.0.0.1:$S_SERVER_PORT" -new -time "$secs" \
		-www / -CAfile "$SRV_CA" -cert "$WORK/stime/chain.pem" -key "$WORK/stime/keyref.pem" \
		>"$WORK/stime/out" 2>&1 </dev/null &
	STIME_PID=$!
	bg_track "$STIME_PID"
}

# stime_wait: the long-running client must end with success; prints its connection count.
stime_wait() {
	local rc=0 n
	wait "$STIME_PID" || rc=$?
	if [ "$rc" -ne 0 ]; then
		show_log "$WORK/stime/out" 20
		fail "the long-running client (s_time) failed (exit $rc): a handshake with the credentials it loaded failed"
	fi
	n=$(sed -n 's/^\([0-9][0-9]*\) connections in [0-9]* real seconds.*/\1/p' "$WORK/stime/out" | head -n 1)
	[ -n "$n" ] && [ "$n" -gt 0 ] || fail "s_time made no connection: $(cat "$WORK/stime/out")"
	printf '%s\n' "$n"
}

# Objects on the test token with label LABEL and class CLASS (privkey, pubkey), as CKA_ID hex list.
token_key_ids() { # LABEL
	pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$TOKEN_LABEL" --login --pin "$USER_PIN" \
		--list-objects --type privkey 2>/dev/null |
		awk -v want="$1" '/^Private Key Object/ {lab=""} /label:/ {sub(/.*label: */, ""); lab=$0}
			/ID:/ {sub(/.*ID: */, ""); if (lab == want) print $0}'
}

# keystore_keys NAME: one line per key generation the keystore holds for
# identity NAME, as the keystore itself shows it: PKCS#11 CKA_IDs from
# pkcs11-tool, or (tpm2, KEYSTORE_TYPE=tpm2) a SHA-256 of each block of the
# identity's TSS2 PRIVATE KEY file.
keystore_keys() {
	if [ "${KEYSTORE_TYPE:-pkcs11}" = tpm2 ]; then
		[ -f "$TPM_KEYS/$1.pem" ] || return 0
		awk -v out="$WORK/tpmblk." '/-----BEGIN TSS2 PRIVATE KEY-----/ {n++} {print > (out n)}' \
			"$TPM_KEYS/$1.pem"
		for f in "$WORK"/tpmblk.*; do
			[ -e "$f" ] || continue
			sha256sum <"$f" | cut -c1-32
			rm -f "$f"
		done
	else
		token_key_ids "$1"
	fi
}

# scheduled_renewal_scenario PROTO BOOT_REQ RENEW_REQ: with the agent started on
# an identity "gw" that has no key yet, bootstrap enrollment, then two
# renewals by the schedule alone with a new key each, a curl loop and a
# long-running client across them, the first key retired after its
# certificate expired, cert-out and post-renew. BOOT_REQ/RENEW_REQ: the
# request names in the CA log (ir/kur, simpleenroll/simplereenroll).
scheduled_renewal_scenario() {
	local proto=$1 boot_req=$2 renew_req=$3 s1 s2 s3 ids1 ids_now elapsed stime_n deadline
	# 1. Bootstrap from nothing.
	s1=$(wait_new_serial gw "" 40)
	ctl cert gw >"$WORK/c1.pem"
	cert_pubkey "$WORK/c1.pem" "$WORK/k1.pub"
	ids1=$(keystore_keys gw)
	[ "$(printf '%s\n' "$ids1" | grep -c .)" -eq 1 ] ||
		fail "after bootstrap: expected 1 key in the keystore, got: $ids1"
	grep -q "$boot_req issued serial=$s1" "$CA_LOG" || fail "the CA log shows no $boot_req for serial $s1"
	if [ "$proto" = cmp ]; then
		grep -q "certConf accepted serial=$s1" "$CA_LOG" || fail "no certConf for serial $s1"
	fi
	cmp -s "$WORK/out/gw.pem" "$WORK/c1.pem" || fail "cert-out does not hold the installed chain"
	log "bootstrapped ($boot_req): serial $s1, key $ids1"

	s_server_start
	curl_loop_start gw
	# One long-running client holding the first certificate and key until shortly before they expire.
	stime_start gw $(($(cert_not_after "$WORK/c1.pem") - $(date +%s) - 5))

	# 2. Two renewals by the schedule alone (66% of 60 s, minus up to 3 s of jitter).
	s2=$(wait_new_serial gw "$s1" 75)
	ctl cert gw >"$WORK/c2.pem"
	cert_pubkey "$WORK/c2.pem" "$WORK/k2.pub"
	cmp -s "$WORK/k1.pub" "$WORK/k2.pub" && fail "renewal 1 kept the old key"
	grep -q "$renew_req issued serial=$s2" "$CA_LOG" || fail "the CA log shows no $renew_req for serial $s2"
	elapsed=$(($(date -d "$(openssl x509 -in "$WORK/c2.pem" -noout -startdate | cut -d= -f2)" +%s) -
		$(date -d "$(openssl x509 -in "$WORK/c1.pem" -noout -startdate | cut -d= -f2)" +%s)))
	[ "$elapsed" -ge 30 ] && [ "$elapsed" -le 45 ] ||
		fail "renewal 1 came $elapsed s after issue; renew-at 66% of 60 s minus jitter is 37..40 s"
	log "renewal 1 ($renew_req): serial $s2, $elapsed s after the first certificate"

	s3=$(wait_new_serial gw "$s2" 75)
	ctl cert gw >"$WORK/c3.pem"
	cert_pubkey "$WORK/c3.pem" "$WORK/k3.pub"
	cmp -s "$WORK/k2.pub" "$WORK/k3.pub" && fail "renewal 2 kept the old key"
	cmp -s "$WORK/k1.pub" "$WORK/k3.pub" && fail "renewal 2 went back to the first key"
	grep -q "$renew_req issued serial=$s3" "$CA_LOG" || fail "the CA log shows no $renew_req for serial $s3"
	log "renewal 2 ($renew_req): serial $s3"

	# The long-running client kept the first key until shortly before its certificate expired.
	stime_n=$(stime_wait)
	log "long-running client: $stime_n handshakes with the first certificate ($STIME_SERIAL), across renewal 1"

	# 3. The first key is retired once its certificate has expired (it did before renewal 2).
	deadline=$((SECONDS + 30))
	while keystore_keys gw | grep -qx "$ids1"; do
		[ "$SECONDS" -lt "$deadline" ] || fail "key $ids1 is still in the keystore after its certificate expired"
		sleep 1
	done
	ids_now=$(keystore_keys gw)
	[ "$(printf '%s\n' "$ids_now" | grep -c .)" -le 2 ] || fail "more than 2 keys left in the keystore: $ids_now"
	assert_contains "$(cat "$AGENT_LOG")" "retired key" "agent log"
	curl_loop_stop
	[ "$(sort -u "$WORK/loop.serials" | wc -l)" -ge 2 ] ||
		fail "the curl loop saw only one certificate across two renewals"

	# 4. Status, outputs and hook. The renewal signatures (CSR, CMP protection and
	# proof of possession, the EST handshake) took the internal path: the identity's
	# sign-policy (tls-client) refused nothing, because nothing was asked of it.
	assert_eq "$(status_field gw sign-policy)" tls-client "sign-policy"
	assert_eq "$(status_field gw refused)" 0 "refused signatures"
	assert_eq "$(status_field gw failures)" 0 "status failures"
	assert_contains "$(status_field gw last-result)" "installed" "status last-result"
	[ "$(status_field gw next-renewal)" != "-" ] || fail "status shows no next renewal"
	cmp -s "$WORK/out/gw.pem" "$WORK/c3.pem" || fail "cert-out does not hold the latest chain"
	[ "$(grep -c '^gw$' "$WORK/hook.log")" -ge 3 ] ||
		fail "post-renew did not run after each enrollment: $(cat "$WORK/hook.log")"
	log "OK: bootstrap + 2 scheduled renewals over $proto, $LOOP_OK curl and $stime_n long-running handshakes without a failure, old key retired"
}

# Renewal lines for identity "gw" in the scheduled scenario (bootstrap, outputs, hook).
scenario_lines() { # PROTO BOOTSTRAP
	mkdir -p "$WORK/out"
	renew_lines "$1" "bootstrap = $2" "subject = /CN=gw/O=mtls-agent tests" "key-type = ec-p256" \
		"cert-out = $WORK/out/gw.pem" "post-renew = echo \"\$MTLS_AGENT_IDENTITY\" >>$WORK/hook.log"
}
