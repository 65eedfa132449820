#!/bin/bash
# Crash soak of automated renewal (issues 12 and 17): SIGKILLs at random moments of
# forced renewals; after each restart the agent must have reconciled and hold a
# complete, consistent credential.
#
# Cells: SOAK_BACKEND=pkcs11 (SoftHSM token, RSA-2048 keys: a kill inside
# C_GenerateKeyPair can leave a public key without its private key, and such half
# pairs fill a real token's slots) or tpm (swtpm, EC P-256 keys in the identity's
# TSS2 PRIVATE KEY file); SOAK_PROTO=est or cmp. Every renewal ends with
# renew-verify (one mTLS connection with the new credential to openssl s_server),
# so every step of the journal (agent/renew.c) can be hit.
#
# SOAK_KILLS times (default 30; `make soak` runs the whole matrix with more) one of:
#   point     the agent is started with MTLS_AGENT_TEST_CRASH_AT=P (agent/testhook.c)
#             for a random crash point P of the protocol (preparing, unrecorded, keygen,
#             requested, verifying, issued, [CMP: confirming, confirmed], installed,
#             queued) and kills itself there during a forced renewal;
#   inside    MTLS_AGENT_TEST_CRASH_AT=keygen-inside: a timer started when the key
#             generation starts kills the agent 0..D ms later (D: one clean renewal), so
#             the kill lands inside the keystore's key generation or anywhere after it;
#   external  a SIGKILL from outside 0..1.25 D ms after the agent logged the renewal
#             request (a quarter of the time while the CA delays its answer by 1 s).
# A crash point the renewal does not pass (a pending key is reused: no key generation)
# ends with a kill from outside after the renewal; it is counted as "not reached".
# SOAK_MODES (default "point inside external") restricts the modes.
#
# Before the restart the certificate file must be present, parse and be unexpired.
# After it (journal gone, CMP: no staged certificate left):
#   - the served certificate is the certificate file, unexpired, and the agent signs with
#     its key (a TLS 1.3 CertificateVerify signed through mtls-agentctl verifies with the
#     certificate's public key); every SOAK_HANDSHAKE_EVERY (default 10) kills, a real
#     mTLS handshake through the provider to openssl s_server -Verify 1;
#   - the keystore holds exactly current + pending + queued for retirement: no other
#     private key, every public key with its private key (PKCS#11: no half pairs), every
#     key queued for retirement whose certificate has not expired still present (TPM: a
#     block of the key file), the current key the certificate's (TPM: the first block),
#     the key of the certificate file the kill left still present, `status` generations
#     equal to that count; PKCS#11: in SoftHSM's token directory, object files PKCS#11
#     does not show, empty ones and lock files without object are counted (SoftHSM's
#     debris, out of any PKCS#11 application's reach);
#   - a journal step before the installation was rolled back (same serial), one after
#     it was completed (new serial);
#   - the served certificate is the initial one or one the CA issued (EST), confirmed
#     by the CA (CMP: "certConf accepted" in tests/cmp-ca.c's log).
# Figures at the end (and after each kill in the log): kills per mode and crash point,
# journal steps at the kill, roll-backs/completions, restarts, handshakes, keys.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"

BACKEND=${SOAK_BACKEND:-pkcs11}
PROTO=${SOAK_PROTO:-est}
KILLS=${SOAK_KILLS:-30}
HS_EVERY=${SOAK_HANDSHAKE_EVERY:-10}
MODES=${SOAK_MODES:-point inside external}
# Short certificates (SoftHSM 120 s, swtpm 45 s): old keys leave the keystore during the
# soak (retirement is part of what a kill may interrupt). A TSS2 key file holds at most 8
# generations (keystore/ks-tpm2.c); at this test's renewal rate it fills, and renewals then
# certify the current key again, whose interruptions must be reconciled like any other
# (renew/renew.c renewal_installed). renew-at 99% and a clean renewal between
# kills once the certificate is half through its life keep the schedule quiet: a renewal
# the agent starts by itself after a restart would race the checks.
if [ "${SOAK_BACKEND:-pkcs11}" = tpm ]; then
	LIFETIME=${SOAK_LIFETIME:-45}
else
	LIFETIME=${SOAK_LIFETIME:-120}
fi
case "$KILLS$HS_EVERY$LIFETIME" in
'' | *[!0-9]*) fail "SOAK_KILLS, SOAK_HANDSHAKE_EVERY, SOAK_LIFETIME must be numbers" ;;
esac
[ "$HS_EVERY" -gt 0 ] || fail "SOAK_HANDSHAKE_EVERY must be at least 1"
for m in $MODES; do
	case "$m" in point | inside | external) ;; *) fail "SOAK_MODES: unknown mode '$m'" ;; esac
done
read -r -a MODE_LIST <<<"$MODES"
[ "${#MODE_LIST[@]}" -gt 0 ] || fail "SOAK_MODES is empty"

case "$BACKEND" in
pkcs11)
	KEY_TYPE=rsa-2048
	SCHEME=rsa_pss_rsae_sha256
	need_cmd pkcs11-tool
	;;
tpm)
	KEY_TYPE=ec-p256
	SCHEME=ecdsa_secp256r1_sha256
	# shellcheck source=../tpm-lib.sh
	. "$(dirname "$0")/../tpm-lib.sh"
	;;
*) fail "SOAK_BACKEND must be pkcs11 or tpm, not '$BACKEND'" ;;
esac
case "$PROTO" in
est) POINTS=(preparing unrecorded keygen requested verifying issued installed queued) ;;
cmp) POINTS=(preparing unrecorded keygen requested verifying issued confirming confirmed installed queued) ;;
*) fail "SOAK_PROTO must be est or cmp, not '$PROTO'" ;;
esac
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_tls_cmd curl
need_cmd python3
need_provider
need_test_hooks
log "cell $BACKEND/$PROTO: $KILLS kills ($MODES), handshake every $HS_EVERY, certificates of $LIFETIME s"

ID=gw
T_START=$SECONDS
testca_init
server_cert_setup
# The server every renewal must reach with its new credential (renew-verify), and the
# one the handshakes of this test go to.
s_server_start
case "$BACKEND" in
pkcs11) softhsm_setup keygencrash ;;
tpm) swtpm_start ;;
esac
case "$PROTO" in
est) est_ca_start --lifetime "$LIFETIME" ;;
cmp)
	cmp_ca_start --lifetime "$LIFETIME"
	# renew-verify checks s_server's certificate against ca-trust.
	cat "$CA_DIR/root.crt" "$SRV_CA" >"$WORK/cmp-trust.pem"
	CA_TRUST=$WORK/cmp-trust.pem
	;;
esac
EXTRA=("key-type = $KEY_TYPE" "renew-at = 99%" "ca-timeout = 10"
	"renew-verify = https://127.0.0.1:$S_SERVER_PORT/")
[ "$PROTO" != cmp ] || EXTRA+=("sign-policy = any")
if [ "$BACKEND" = tpm ]; then
	tpm_agent_config
	renew_lines "$PROTO" "${EXTRA[@]}"
	tpm_identity "$ID" "${RENEW_LINES[@]}"
else
	agent_config
	renew_lines "$PROTO" "${EXTRA[@]}"
	agent_identity "$ID" "${RENEW_LINES[@]}"
fi
agent_start
# The first certificate (30 days, from lib.sh's CA, not the renewal CA's log).
identity_setup "$ID" "$KEY_TYPE"
INITIAL_SERIAL=$(current_serial "$ID")
# The provider configuration for the handshakes only: the agent (restarted many times)
# must not inherit OPENSSL_CONF or MTLS_AGENT_SOCK.
provider_env
unset OPENSSL_CONF MTLS_AGENT_SOCK

JOURNAL=$STATE_DIR/$ID.renew
RETIRE=$STATE_DIR/$ID.retire
PENDING=$STATE_DIR/$ID.pending
STAGED=$STATE_DIR/$ID.issued
CERT_FILE=$STATE_DIR/$ID.crt

# --- the keystore as the keystore itself shows it ------------------------------------------

# SHA-256 of the DER SubjectPublicKeyInfo of a certificate (PEM, first one).
cert_fp() { # PEM
	openssl x509 -in "$1" -noout -pubkey 2>/dev/null | openssl pkey -pubin -outform DER 2>/dev/null |
		sha256sum | cut -c1-64
}

# Keys of the identity, "ID FP" per line into $WORK/keys.txt (ID: lowercase hex of the keystore's key id; FP:
# cert_fp of its public key). PKCS#11: the token's private keys (a public key without
# its private key fails here); TPM: the blocks of the key file, in file order, the id
# computed as keystore/ks-tpm2.c's public_id (SHA-256 of the marshalled TPM2B_PUBLIC,
# 20 bytes).
declare -A FP_CACHE
keystore_fps() {
	if [ "$BACKEND" = tpm ]; then
		[ -f "$TPM_KEYS/$ID.pem" ] || fail "the TSS2 key file $TPM_KEYS/$ID.pem is missing"
		python3 - "$TPM_KEYS/$ID.pem" >"$WORK/keys.txt" <<'PY' || fail "the TSS2 key file $TPM_KEYS/$ID.pem does not parse"
import base64, hashlib, re, struct, sys
text = open(sys.argv[1]).read()
blocks = re.findall(r"-----BEGIN TSS2 PRIVATE KEY-----(.*?)-----END TSS2 PRIVATE KEY-----", text, re.S)
if not blocks:
    sys.exit("no TSS2 PRIVATE KEY block")
def tlv(b, i):
    tag = b[i]; n = b[i + 1]; i += 2
    if n & 0x80:
        k = n & 0x7f; n = int.from_bytes(b[i:i + k], "big"); i += k
    return tag, b[i:i + n], i + n
spki_p256 = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
for blk in blocks:
    der = base64.b64decode("".join(blk.split()))
    tag, seq, _ = tlv(der, 0)
    assert tag == 0x30
    i, pub = 0, None
    while i < len(seq):
        tag, val, i = tlv(seq, i)
        if tag == 0x04:
            pub = val
            break
    assert pub is not None, "no public part"
    kid = hashlib.sha256(pub).digest()[:20].hex()
    p = 2  # TPM2B_PUBLIC: size, then TPMT_PUBLIC
    typ, _name, _attr = struct.unpack(">HHI", pub[p:p + 8]); p += 8
    n, = struct.unpack(">H", pub[p:p + 2]); p += 2 + n  # authPolicy
    assert typ == 0x0023, "not an ECC key (type 0x%04x)" % typ
    sym, = struct.unpack(">H", pub[p:p + 2]); p += 2
    if sym != 0x0010:
        p += 4
    sch, = struct.unpack(">H", pub[p:p + 2]); p += 2
    if sch != 0x0010:
        p += 2 + (2 if sch == 0x001a else 0)  # hashAlg (ECDAA: and count)
    curve, kdf = struct.unpack(">HH", pub[p:p + 4]); p += 4
    if kdf != 0x0010:
        p += 2
    assert curve == 0x0003, "not P-256 (curve 0x%04x)" % curve
    n, = struct.unpack(">H", pub[p:p + 2]); x = pub[p + 2:p + 2 + n]; p += 2 + n
    n, = struct.unpack(">H", pub[p:p + 2]); y = pub[p + 2:p + 2 + n]
    pt = b"\x04" + x.rjust(32, b"\0") + y.rjust(32, b"\0")
    print(kid, hashlib.sha256(spki_p256 + pt).hexdigest())
PY
		return 0
	fi
	local k priv pub t
	: >"$WORK/keys.txt"
	# Two listings: a retirement between them (private key first, then the public key)
	# shows a half pair for an instant; one that stays is debris.
	for t in 1 2 3 4 5; do
		priv=$(token_ids privkey)
		pub=$(token_ids pubkey)
		[ "$pub" != "$priv" ] || break
		[ "$t" -lt 5 ] || {
			show_log "$AGENT_LOG" 30
			fail "$WHAT: public keys on the token differ from the private keys: half pairs left: $(comm -3 <(printf '%s\n' "$pub") <(printf '%s\n' "$priv") | tr '\n' ' ')"
		}
		sleep 0.3
	done
	for k in $priv; do
		if [ -z "${FP_CACHE[$k]:-}" ]; then
			pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$TOKEN_LABEL" --login --pin "$USER_PIN" \
				--read-object --type pubkey --id "$k" -o "$WORK/tok.pub" >/dev/null 2>&1 ||
				fail "$WHAT: pkcs11-tool cannot read public key $k"
			FP_CACHE[$k]=$(openssl pkey -pubin -inform DER -in "$WORK/tok.pub" -outform DER 2>/dev/null |
				sha256sum | cut -c1-64)
		fi
		printf '%s %s\n' "$k" "${FP_CACHE[$k]}" >>"$WORK/keys.txt"
	done
}

# The token's files (SoftHSM's file store): two object files per key pair besides
# token.object. A kill inside SoftHSM's object creation can leave an empty object file,
# an object file SoftHSM does not load, or a lock file without its object; PKCS#11 does
# not show them, so no agent can remove them (issue 12 found 68 empty files after 500
# kills). Counted for the figures (the first occurrence of each is logged), not failed on.
EMPTY_MAX=0 ORPHAN_LOCKS=0 EXTRA_FILES=0 EXTRA_MAX=0
token_files_ok() {
	local dir n e l f
	dir=$(dirname "$(find "$WORK/softhsm/tokens" -name token.object | head -n 1)")
	n=$(find "$dir" -name '*.object' ! -name token.object ! -empty | wc -l)
	# Fewer files than objects: SoftHSM rewrites an object file in place (a key the
	# agent touches while this looks); not counted.
	EXTRA_FILES=$((n - 2 * NKEYS))
	if [ "$EXTRA_FILES" -gt "$EXTRA_MAX" ]; then
		EXTRA_MAX=$EXTRA_FILES
		log "$WHAT: $n non-empty object files in the token directory for $NKEYS key pairs (SoftHSM debris): $(cd "$dir" && ls -l --time-style=+%T -- *.object | awk '{print $5, $6, $7}' | tr '\n' ';')"
	fi
	e=$(find "$dir" -name '*.object' -empty | wc -l)
	if [ "$e" -gt "$EMPTY_MAX" ]; then
		EMPTY_MAX=$e
		log "$WHAT: $e empty object files in the token directory (SoftHSM debris)"
	fi
	l=0
	for f in "$dir"/*.lock; do
		[ -e "${f%.lock}.object" ] || l=$((l + 1))
	done
	ORPHAN_LOCKS=$l
	TOKEN_EMPTY=$e
}

# Objects of class CLASS (privkey, pubkey) on the token, one CKA_ID (lowercase) per line, sorted.
token_ids() { # CLASS
	pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$TOKEN_LABEL" --login --pin "$USER_PIN" \
		--list-objects --type "$1" 2>/dev/null | sed -n 's/^ *ID: *//p' | tr 'A-F' 'a-f' | sort
}

# --- checks ---------------------------------------------------------------------------

# The certificate file as it is: present, a certificate, not expired. Sets FILE_FP.
cert_file_ok() {
	[ -s "$CERT_FILE" ] || fail "$WHAT: the certificate file $CERT_FILE is missing or empty"
	openssl x509 -in "$CERT_FILE" -noout -checkend 0 >/dev/null 2>&1 ||
		fail "$WHAT: the certificate file $CERT_FILE does not parse or has expired"
	FILE_FP=$(cert_fp "$CERT_FILE")
}

# The served certificate is the file's and the agent signs with its key.
credential_ok() {
	ctl cert "$ID" >"$WORK/cur.pem" 2>"$WORK/cur.err" ||
		fail "$WHAT: mtls-agentctl cert failed: $(cat "$WORK/cur.err")"
	cmp -s "$WORK/cur.pem" "$CERT_FILE" || fail "$WHAT: $CERT_FILE differs from what mtls-agentctl cert prints"
	cert_file_ok
	cert_pubkey "$WORK/cur.pem" "$WORK/cur.pub"
	make_cv13 "$WORK/cv.bin"
	ctl sign "$ID" --scheme "$SCHEME" --in "$WORK/cv.bin" --out "$WORK/cv.sig" 2>"$WORK/sign.err" ||
		fail "$WHAT: the agent cannot sign with $ID: $(cat "$WORK/sign.err")"
	verify_sig "$WORK/cur.pub" "$SCHEME" "$WORK/cv.bin" "$WORK/cv.sig" ||
		fail "$WHAT: the agent signs with a key that is not its certificate's"
	SIGCHECKS=$((SIGCHECKS + 1))
}

# The keystore holds current + pending + queued for retirement, nothing else, nothing
# lost. Sets NKEYS, NQUEUED, HAS_PENDING.
keystore_ok() { # FP_OF_THE_FILE_THE_KILL_LEFT
	local left=$1 lines ids now k na cur="" other="" pend="" first="" nq=0 fp n
	# The retirement queue before the keystore: a retirement between the two reads then
	# shows as a queued key already gone, never as a key nobody knows.
	: >"$WORK/retire.snap"
	[ ! -s "$RETIRE" ] || cp "$RETIRE" "$WORK/retire.snap"
	keystore_fps
	lines=$(cat "$WORK/keys.txt")
	ids=$(cut -d' ' -f1 <<<"$lines" | grep . | sort)
	[ "$(sort -u <<<"$ids")" = "$ids" ] || fail "$WHAT: a key is twice in the keystore: $(tr '\n' ' ' <<<"$ids")"
	now=$(date +%s)
	declare -A queued=()
	if [ -s "$WORK/retire.snap" ]; then
		while read -r k na; do
			[ -n "$k" ] || continue
			[ -z "${queued[$k]:-}" ] || fail "$WHAT: key $k is queued twice for retirement"
			queued[$k]=1
			if grep -qx "$k" <<<"$ids"; then
				nq=$((nq + 1))
			elif [ "$na" -gt "$((now + 1))" ]; then
				fail "$WHAT: key $k queued for retirement until $na (its certificate is valid) is gone from the keystore: a credential was lost"
			fi
		done <"$WORK/retire.snap"
	fi
	[ ! -s "$PENDING" ] || pend=$(tr -d ' \n' <"$PENDING")
	[ -z "$pend" ] || grep -qx "$pend" <<<"$ids" || fail "$WHAT: the pending key $pend is not in the keystore"
	fp=$(cert_fp "$CERT_FILE")
	while read -r k f; do
		[ -n "$k" ] || continue
		[ -n "$first" ] || first=$k
		[ -z "${queued[$k]:-}" ] || continue
		if [ "$f" = "$fp" ]; then
			[ -z "$cur" ] || fail "$WHAT: two keys match the certificate"
			cur=$k
		elif [ "$k" = "$pend" ]; then
			other=$k
		else
			show_log "$AGENT_LOG" 30
			fail "$WHAT: key $k is in the keystore but neither current, pending (${pend:--}) nor queued for retirement: nothing will use or delete it (keys: $(tr '\n' ' ' <<<"$ids"))"
		fi
	done <<<"$lines"
	[ -n "$cur" ] || fail "$WHAT: no key in the keystore (outside the retirement queue) matches the certificate (keys: $(tr '\n' ' ' <<<"$ids"))"
	[ "$BACKEND" != tpm ] || [ "$first" = "$cur" ] ||
		fail "$WHAT: the first block of the TSS2 key file ($first) is not the current key ($cur): other tools would load the wrong key"
	[ -z "$left" ] || grep -q " $left\$" <<<"$lines" ||
		fail "$WHAT: the key of the certificate file the kill left is gone from the keystore"
	NKEYS=$(grep -c . <<<"$ids")
	[ "$BACKEND" != pkcs11 ] || token_files_ok
	[ "$NKEYS" -eq $((1 + nq + (${#other} > 0 ? 1 : 0))) ] || fail "$WHAT: $NKEYS keys (internal error of the check)"
	# The agent's own count; a retirement that ran meanwhile changes both: look again.
	local g t
	n=$NKEYS
	for t in 1 2 3 4 5; do
		g=$(status_field "$ID" generations)
		[ "$g" != "$n" ] || break
		[ "$t" -lt 5 ] || fail "$WHAT: status generations: $g, keys in the keystore: $n"
		sleep 0.3
		keystore_fps
		n=$(grep -c . "$WORK/keys.txt" || true)
	done
	NQUEUED=$nq
	HAS_PENDING=$((${#other} > 0 ? 1 : 0))
}

# The served certificate came from the CA the way the protocol requires.
ca_saw_ok() { # SERIAL
	[ "$1" != "$INITIAL_SERIAL" ] || return 0
	if [ "$PROTO" = cmp ]; then
		grep -q "certConf accepted serial=$1\$" "$CA_LOG" ||
			fail "$WHAT: the agent serves certificate $1, which the CA did not see confirmed (no certConf accepted in $CA_LOG)"
	else
		grep -q "issued serial=$1 " "$CA_LOG" || fail "$WHAT: the agent serves certificate $1, which the CA never issued"
	fi
}

# A real mTLS handshake through the provider to s_server -Verify 1 with the credential
# an application is given; the server must have seen the certificate the agent serves.
handshake() {
	local d=$WORK/hs rc=0
	mkdir -p "$d"
	HS_TRIED=$((HS_TRIED + 1))
	app_credentials "$ID" "$d" || fail "$WHAT: cannot read $ID's credentials"
	OPENSSL_CONF=$PROVIDER_CONF MTLS_AGENT_SOCK=$SOCK s_server_get --cert "$d/chain.pem" --key "$d/keyref.pem" || rc=$?
	if [ "$rc" -ne 0 ] || ! grep -q 'Verify return code: 0 (ok)' "$TLS_DIR/page.txt"; then
		HS_FAILED=$((HS_FAILED + 1))
		show_log "$S_SERVER_LOG" 20
		fail "$WHAT: mTLS handshake $HS_TRIED with the agent's credential failed (curl exit $rc: $CURL_ERR)"
	fi
	page_identity "$TLS_DIR/page.txt" >/dev/null
	[ "$(cert_serial "$TLS_DIR/peer.pem")" = "$(cert_serial "$d/chain.pem")" ] ||
		fail "$WHAT: the server saw certificate $(cert_serial "$TLS_DIR/peer.pem"), the agent serves $(cert_serial "$d/chain.pem")"
}

# --- kills ---------------------------------------------------------------------------

now_ms() {
	local t=${EPOCHREALTIME/./}
	printf '%s\n' $((10#$t / 1000))
}
log_mark() { stat -c %s "$AGENT_LOG"; }
log_since() { tail -c +$(($1 + 1)) "$AGENT_LOG"; }

# Waits (bounded) for the agent to die, then SIGKILLs it; it must end by SIGKILL.
reap_agent() { # MAX_MS
	local deadline=$(($(now_ms) + $1)) rc=0
	while kill -0 "$AGENT_PID" 2>/dev/null && [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.02; done
	if kill -0 "$AGENT_PID" 2>/dev/null; then
		kill -KILL "$AGENT_PID" 2>/dev/null || true
	fi
	{ wait "$AGENT_PID" || rc=$?; } 2>/dev/null
	AGENT_PID=
	[ "$rc" -eq 137 ] || fail "$WHAT: the agent exited with $rc, not by SIGKILL"
}

# `mtls-agentctl renew` in the background; returns once the agent logged the request.
renew_bg() {
	local mark deadline=$((SECONDS + 20))
	mark=$(log_mark)
	ctl renew "$ID" >"$WORK/renew.out" 2>"$WORK/renew.err" &
	RENEW_PID=$!
	bg_track "$RENEW_PID"
	until log_since "$mark" | grep -q 'renewal requested by uid'; do
		kill -0 "$RENEW_PID" 2>/dev/null || log_since "$mark" | grep -q 'renewal requested by uid' ||
			fail "$WHAT: mtls-agentctl renew ended before the agent logged the request: $(cat "$WORK/renew.err")"
		[ "$SECONDS" -lt "$deadline" ] || fail "$WHAT: the agent did not log the renewal request within 20 s"
		sleep 0.01
	done
}

RESTARTS=0 REFRESHES=0 CAPPED=0 SIGCHECKS=0 HS_TRIED=0 HS_FAILED=0 INSIDE=0 DELAYED=0 NOKILL_FAIL=0
# How long a clean renewal takes here: the random delays are spread over it.
WHAT="clean renewal"
t0=$(now_ms)
assert_ok ctl renew "$ID"
ms=$(($(now_ms) - t0))
CLEAN_MS=$ms
DELAY_MS=${SOAK_DELAY_MS:-$((ms > 50 ? ms : 50))}
EXT_MS=$((DELAY_MS * 5 / 4))
log "one renewal took $ms ms; keygen-inside timer 0..$DELAY_MS ms, external kills 0..$EXT_MS ms after the request"
credential_ok
keystore_ok ""
handshake

declare -A LANDED JSTEPS OUTCOMES
for i in $(seq 1 "$KILLS"); do
	WHAT="kill $i/$KILLS"
	s0=$(current_serial "$ID")
	mode=${MODE_LIST[$((RANDOM % ${#MODE_LIST[@]}))]}
	mark=$(log_mark)
	case "$mode" in
	point | inside)
		if [ "$mode" = point ]; then
			at=${POINTS[$((RANDOM % ${#POINTS[@]}))]}
		else
			at=keygen-inside
		fi
		agent_stop
		MTLS_AGENT_TEST_CRASH_DELAY_MS=$DELAY_MS MTLS_AGENT_TEST_CRASH_AT=$at agent_start
		rc=0
		ctl renew "$ID" >"$WORK/renew.out" 2>&1 || rc=$?
		# A renewal that passed no such point: the keygen-inside timer may still fire.
		wait_ms=300
		[ "$at" != keygen-inside ] || wait_ms=$((DELAY_MS + 500))
		reap_agent "$wait_ms"
		if log_since "$mark" | grep -qF "MTLS_AGENT_TEST_CRASH_AT=$at: stopping with SIGKILL"; then
			key="$mode $at"
		else
			key="$mode $at (not reached)"
			[ "$rc" -eq 0 ] || NOKILL_FAIL=$((NOKILL_FAIL + 1))
		fi
		;;
	external)
		at=
		if [ $((RANDOM % 4)) -eq 0 ]; then
			ca_fault delay 1 1
			DELAYED=$((DELAYED + 1))
		fi
		ms=$(((RANDOM * 32768 + RANDOM) % (EXT_MS + 1)))
		t0=$(now_ms)
		renew_bg
		left=$((t0 + ms - $(now_ms)))
		[ "$left" -le 0 ] || sleep "$(printf '%d.%03d' $((left / 1000)) $((left % 1000)))"
		reap_agent 0
		wait "$RENEW_PID" 2>/dev/null || true
		ca_fault_clear
		key="external"
		;;
	esac
	LANDED[$key]=$((${LANDED[$key]:-0} + 1))
	jstep=
	[ ! -s "$JOURNAL" ] || jstep=$(sed -n 's/^step=//p' "$JOURNAL")
	JSTEPS[${jstep:-none}]=$((${JSTEPS[${jstep:-none}]:-0} + 1))
	# Inside the key generation: the timer fired while the journal still said "preparing".
	if [ "$key" = "inside keygen-inside" ] && [ "$jstep" = preparing ]; then
		INSIDE=$((INSIDE + 1))
	fi

	# What the kill left, then the restart.
	cert_file_ok
	left_fp=$FILE_FP
	mark=$(log_mark)
	agent_start
	RESTARTS=$((RESTARTS + 1))
	wait_until 20 test ! -e "$JOURNAL" || fail "$WHAT: the journal (step $jstep) was not reconciled within 20 s"
	[ ! -e "$STAGED" ] || fail "$WHAT: the staged certificate $STAGED is still there after the restart"
	s1=$(current_serial "$ID")
	[ -n "$s1" ] || fail "$WHAT: the agent serves no certificate after the restart"
	if [ "$s1" = "$s0" ]; then outcome=kept; else outcome=new; fi
	case "$jstep" in
	preparing | keygen | requested | verifying | confirming | issued)
		# EST "issued": a kill after the certificate file was replaced, before the journal
		# said "installed" (its new version was still a temporary file), is completed.
		if [ "$jstep.$PROTO.$outcome" = issued.est.new ]; then
			log_since "$mark" | grep -qF "completed a renewal interrupted after step \"issued\"" ||
				fail "$WHAT: the certificate changed from $s0 to $s1 with the journal at step issued, but the agent did not log completing it"
		else
			[ "$outcome" = kept ] || fail "$WHAT: a journal at step $jstep must be rolled back, but the certificate changed from $s0 to $s1"
			log_since "$mark" | grep -qF "rolled back a renewal interrupted at step \"$jstep\"" ||
				fail "$WHAT: the agent did not log rolling back the journal at step $jstep"
		fi
		;;
	confirmed | installed)
		[ "$outcome" = new ] || fail "$WHAT: a journal at step $jstep must be completed, but the certificate is still $s0"
		;;
	esac
	OUTCOMES["${jstep:-none} -> $outcome"]=$((${OUTCOMES["${jstep:-none} -> $outcome"]:-0} + 1))
	credential_ok
	keystore_ok "$left_fp"
	ca_saw_ok "$s1"
	[ $((i % HS_EVERY)) -ne 0 ] || handshake
	log "$WHAT: $key, journal ${jstep:-none}, certificate $outcome ($s1), $NKEYS keys ($NQUEUED queued, $HAS_PENDING pending)"
	# Kills that land before the installation keep the old certificate: a clean renewal
	# once it is half through its life, so that the schedule never starts one by itself
	# (renew-at 99%) while the checks look.
	if ! openssl x509 -in "$CERT_FILE" -noout -checkend $((LIFETIME / 2)) >/dev/null 2>&1; then
		if ctl renew "$ID" >"$WORK/refresh.out" 2>&1; then
			REFRESHES=$((REFRESHES + 1))
		elif grep -q 'no new key until one is retired' "$WORK/refresh.out"; then
			# The TSS2 key file is full (the old keys' certificates are still valid):
			# no renewal now; counted, the old credential must stay in service.
			CAPPED=$((CAPPED + 1))
		else
			fail "$WHAT: the clean renewal after the kill failed: $(cat "$WORK/refresh.out")"
		fi
		credential_ok
		keystore_ok ""
	fi
done

WHAT="after the soak"
# A full TSS2 key file refuses a new key until an old one retires (within one lifetime).
deadline=$((SECONDS + LIFETIME + 30))
until ctl renew "$ID" >"$WORK/final.out" 2>&1; do
	grep -q 'no new key until one is retired' "$WORK/final.out" && [ "$SECONDS" -lt "$deadline" ] ||
		fail "$WHAT: the clean renewal failed: $(cat "$WORK/final.out")"
	CAPPED=$((CAPPED + 1))
	sleep 2
done
credential_ok
keystore_ok ""
ca_saw_ok "$(current_serial "$ID")"
handshake
[ ! -e "$JOURNAL" ] || fail "a journal is left after the final renewal"
stale=$(find "$STATE_DIR" -name '*.tmp.*' | wc -l)
[ "$stale" -eq 0 ] || fail "$stale temporary files left in the state dir: $(find "$STATE_DIR" -name '*.tmp.*')"

# A kill between the retirement's destroying a private key and its public key (agent/renew.c
# retire_due, keystore/ks-pkcs11.c destroy_key_objects) leaves the public key alone; the
# retirement entry stays. The next retirement pass must remove it (the soak found such a
# lone public key 30 kills in, once the first certificates had expired). The state such a
# kill leaves is made here by hand: an old key's certificate expired, its private key gone.
if [ "$BACKEND" = pkcs11 ]; then
	WHAT="retirement interrupted after the private key"
	agent_stop
	old=$(cut -d' ' -f1 "$RETIRE" | head -n 1)
	[ -n "$old" ] || fail "$WHAT: no key queued for retirement"
	awk -v k="$old" '$1 == k {$2 = 1} {print}' "$RETIRE" >"$RETIRE.new" && mv "$RETIRE.new" "$RETIRE"
	pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$TOKEN_LABEL" --login --pin "$USER_PIN" \
		--delete-object --type privkey --id "$old" >/dev/null 2>&1 || fail "$WHAT: cannot delete private key $old"
	token_ids pubkey | grep -qx "$old" || fail "$WHAT: the public key $old is not there to begin with"
	agent_start
	wait_until 20 sh -c "! grep -q '^$old ' '$RETIRE'" || fail "$WHAT: the retirement entry of $old stays"
	token_ids pubkey | grep -qx "$old" && fail "$WHAT: the public key $old is left on the token without its private key"
	grep -q "removed 1 object(s) of key ${old:0:16}... that an interrupted retirement left" "$AGENT_LOG" ||
		fail "$WHAT: the agent did not log removing the lone public key"
	credential_ok
	keystore_ok ""
	log "$WHAT: the lone public key $old was removed"
fi
agent_stop
[ "$BACKEND" != tpm ] || swtpm_stop
purged=$(grep -c 'that an interrupted key generation left without its private key' "$AGENT_LOG" || true)

# Figures (docs/SOAK.md).
{
	printf 'SOAK %s/%s: %d kills, %d restarts, %d clean renewals between kills (certificate half through its life; %d refused: key file full), wall %d s (one clean renewal %d ms, certificates of %d s)\n' \
		"$BACKEND" "$PROTO" "$KILLS" "$RESTARTS" "$REFRESHES" "$CAPPED" $((SECONDS - T_START)) "$CLEAN_MS" "$LIFETIME"
	for k in "${!LANDED[@]}"; do printf 'SOAK %s/%s: landed %s: %d\n' "$BACKEND" "$PROTO" "$k" "${LANDED[$k]}"; done | sort
	for k in "${!JSTEPS[@]}"; do printf 'SOAK %s/%s: journal at kill %s: %d\n' "$BACKEND" "$PROTO" "$k" "${JSTEPS[$k]}"; done | sort
	for k in "${!OUTCOMES[@]}"; do printf 'SOAK %s/%s: outcome %s: %d\n' "$BACKEND" "$PROTO" "$k" "${OUTCOMES[$k]}"; done | sort
	printf 'SOAK %s/%s: %d kills inside key generation (journal at preparing), %d half pairs removed, %d CA-delayed external kills, %d not-reached kills whose renewal had failed\n' \
		"$BACKEND" "$PROTO" "$INSIDE" "$purged" "$DELAYED" "$NOKILL_FAIL"
	printf 'SOAK %s/%s: %d handshakes, %d failed; %d signature checks; 0 invariant violations\n' \
		"$BACKEND" "$PROTO" "$HS_TRIED" "$HS_FAILED" "$SIGCHECKS"
	printf 'SOAK %s/%s: final keystore: %d keys (%d queued for retirement, %d pending)\n' \
		"$BACKEND" "$PROTO" "$NKEYS" "$NQUEUED" "$HAS_PENDING"
	if [ "$BACKEND" = pkcs11 ]; then
		printf 'SOAK %s/%s: token directory: %d key pairs; object files PKCS#11 does not show: %d at the end, at most %d; empty object files: %d at the end, at most %d; lock files without object: %d\n' \
			"$BACKEND" "$PROTO" "$NKEYS" "$EXTRA_FILES" "$EXTRA_MAX" "$TOKEN_EMPTY" "$EMPTY_MAX" "$ORPHAN_LOCKS"
	else
		printf 'SOAK %s/%s: key file: %d TSS2 PRIVATE KEY blocks\n' "$BACKEND" "$PROTO" "$NKEYS"
	fi
} >&2
# SoftHSM's RSA key generation takes long enough to be hit; an EC key in swtpm rarely is.
if [ "$BACKEND" = pkcs11 ] && [ "$KILLS" -ge 30 ] && [ "${LANDED[inside keygen-inside]:-0}" -ge 10 ]; then
	[ "$INSIDE" -gt 0 ] || fail "no kill landed inside key generation: the soak proves less than it says (timer 0..$DELAY_MS ms)"
fi
log "ok"
