#!/bin/bash
# renew-auth: an application allowed to make TLS handshakes with an identity's key
# must not be able to re-enroll that identity over EST (issue 12).
#
# The attack: uid nobody, allowed to use identity gw (sign-policy tls-client), does
# its own mTLS handshake to the EST CA through the provider and posts a CSR for a
# key it holds in a file to simplereenroll.
#   1. Control, no renew-auth, a CA that accepts the certificate being renewed:
#      the attack gets a certificate for the attacker's key, and `mtls-agentctl
#      check` warns (once) that allowed applications can re-enroll over EST.
#   2. renew-auth = identity:enroll (an identity no application may use, its
#      certificate from a separate enrollment CA) and the CA's policy "renewal only
#      from the enrollment credential" (est-ca --renew-from): the attack is refused
#      (403), the agent's own renewals succeed with a new key, check is quiet.
#   3. The agent refuses a renew-auth identity that applications may use (FILE:LINE).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_tls_cmd curl
need_cmd pkcs11-tool python3 setpriv
need_root
if ! id nobody >/dev/null 2>&1 || ! getent group nogroup >/dev/null; then
	skip "user nobody or group nogroup does not exist on this system"
fi
need_provider

SUBJ="/CN=gw/O=mtls-agent tests"
testca_init
MFG=$WORK/mfg-ca
testca_init "$MFG"
server_cert_setup
softhsm_setup renewauth
chmod 0755 "$WORK"

# The enrollment identity: no allow-users or allow-groups, so no application may use it.
enroll_identity() {
	printf '\n[identity "enroll"]\nkeystore = hsm\nkey = pkcs11:object=enroll\ncert = %s\n' \
		"$STATE_DIR/enroll.crt" >>"$CONF"
}

# --- 1. control: without renew-auth the attack works and check warns ---------------------------
est_ca_start --lifetime 3600
agent_config "socket-mode = 0666"
renew_lines est
agent_identity gw "allow-users = root nobody" "${RENEW_LINES[@]}"
enroll_identity
agent_start
identity_setup gw ec-p256 "$SUBJ"
# The enrollment credential comes from the manufacturer's (enrollment) CA.
assert_ok ctl keygen enroll --type ec-p256
ctl csr enroll --subject "$SUBJ" >"$WORK/enroll.csr" || fail "csr enroll failed"
testca_issue "$WORK/enroll.csr" "$WORK/enroll.chain.pem" --ca "$MFG"
assert_ok ctl import-cert enroll "$WORK/enroll.chain.pem"
identity_files gw
provider_env
chmod a+rx "$TLS_DIR" "$(dirname "$SRV_CA")"
chmod a+r "$SRV_CA" "$CA_TRUST"

NOBODY_CONF=$PROVIDER_CONF
if ! run_as_nobody test -r "$PROVIDER_MODULE"; then
	# The build tree may sit where nobody cannot read (/root): a copy nobody can load.
	mkdir -p "$WORK/nobody-mod"
	cp -L "$PROVIDER_MODULE" "$WORK/nobody-mod/mtlsagent.so"
	for d in "$top_builddir/.libs" "$top_builddir/client/.libs"; do
		[ ! -d "$d" ] || find "$d" -maxdepth 1 -name 'libmtls-agent.so*' -exec cp -L {} "$WORK/nobody-mod/" \;
	done
	chmod -R a+rX "$WORK/nobody-mod"
	NOBODY_CONF=$TLS_DIR/openssl-provider-nobody.cnf
	sed "s|^module = .*|module = $WORK/nobody-mod/mtlsagent.so|" "$PROVIDER_CONF" >"$NOBODY_CONF"
	chmod 0644 "$NOBODY_CONF"
	export LD_LIBRARY_PATH="$WORK/nobody-mod${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# The attacker's key and CSR, in files of its own; the CSR as EST wants it (base64 DER).
ATK=$WORK/attacker
mkdir -p "$ATK"
openssl_csr "$ATK/key.pem" "$ATK/req.pem" "$SUBJ"
openssl req -in "$ATK/req.pem" -outform DER | base64 -w 64 >"$ATK/req.b64"
openssl pkey -in "$ATK/key.pem" -pubout -out "$ATK/pub.pem"
chmod -R a+rX "$ATK"
chmod 0777 "$ATK" # the answer is written there by nobody

# attack: as nobody, mTLS to the EST CA with gw's chain and key reference (the provider
# signs the handshake through the agent), POST simplereenroll. Sets ATTACK_CODE.
attack() {
	local rc=0
	ATTACK_CODE=$(run_as_nobody env OPENSSL_CONF="$NOBODY_CONF" MTLS_AGENT_SOCK="$SOCK" \
		timeout -k 5 "$MTLS_TLS_TIMEOUT" curl -sS --max-time "$MTLS_TLS_TIMEOUT" \
		--cacert "$CA_TRUST" --cert "$TLS_DIR/gw.chain.pem" --key "$TLS_DIR/gw.keyref.pem" \
		-H 'Content-Type: application/pkcs10' --data-binary @"$ATK/req.b64" \
		-o "$ATK/resp.b64" -w '%{http_code}' "$CA_URL/simplereenroll" 2>"$ATK/curl.err") || rc=$?
	[ "$rc" = 0 ] || fail "attack: curl as nobody failed (exit $rc): $(cat "$ATK/curl.err")"
	log "attack: HTTP $ATTACK_CODE"
}

attack
assert_eq "$ATTACK_CODE" 200 "control: simplereenroll by an allowed application without the CA policy"
base64 -d "$ATK/resp.b64" | openssl pkcs7 -inform DER -print_certs >"$ATK/issued.pem" ||
	fail "control: the CA's answer is not a certs-only PKCS#7"
cert_pubkey "$ATK/issued.pem" "$ATK/issued-pub.pem"
cmp -s "$ATK/issued-pub.pem" "$ATK/pub.pem" ||
	fail "control: the CA did not certify the attacker's key"
log "control: the attacker got $(cert_subject "$ATK/issued.pem") for its own key"

ctl check -c "$CONF" >"$WORK/check1.out" 2>&1 || true
assert_contains "$(cat "$WORK/check1.out")" 'identity "gw" renews over EST with its own key' \
	"check without renew-auth"
assert_contains "$(cat "$WORK/check1.out")" "renew-auth = identity:NAME" "check without renew-auth"
n=$(grep -c 'can also re-enroll' "$WORK/check1.out" || true)
assert_eq "$n" 1 "number of re-enrollment warnings in check"
agent_stop
ca_stop

# --- 2. renew-auth and the CA policy ----------------------------------------------------------
est_ca_start --lifetime 3600 --renew-from "$MFG/root.crt"
chmod a+r "$CA_TRUST"
sed -i -e "s|^ca-url = .*|ca-url = $CA_URL|" \
	-e "/^\[identity \"gw\"\]/a renew-auth = identity:enroll" "$CONF"
agent_start
attack
assert_eq "$ATTACK_CODE" 403 "simplereenroll by an allowed application under renew-auth and the CA policy"
grep -q 'simplereenroll forbidden: renewal only from the enrollment credential' "$CA_LOG" ||
	fail "the CA log shows no refusal of the attack"

old=$(current_serial gw)
old_keys=$(keystore_keys gw | sort)
for round in 1 2; do
	out=$(ctl renew gw 2>&1) || {
		show_log "$AGENT_LOG" 30
		show_log "$CA_LOG" 10
		fail "renewal $round with renew-auth failed: $out"
	}
	new=$(current_serial gw)
	[ -n "$new" ] && [ "$new" != "$old" ] || fail "renewal $round: serial still $old"
	old=$new
done
new_keys=$(keystore_keys gw | sort)
[ "$(comm -13 <(printf '%s\n' "$old_keys") <(printf '%s\n' "$new_keys") | wc -l)" -ge 1 ] ||
	fail "renewals with renew-auth did not rotate the key"
n=$(grep -c 'simplereenroll issued' "$CA_LOG" || true)
[ "$n" -ge 3 ] || fail "the CA issued $n re-enrollments, expected the control's and two of the agent's"
# The certificate served works in a TLS handshake.
identity_files gw
s_server_start
assert_cn "$(https_get_identity --cert "$TLS_DIR/gw.chain.pem" --key "$TLS_DIR/gw.keyref.pem")" gw \
	"after renewals with renew-auth the server saw"
s_server_stop
# And the attack still fails with the new certificate.
attack
assert_eq "$ATTACK_CODE" 403 "the attack after renewal"
ctl check -c "$CONF" >"$WORK/check2.out" 2>&1 || true
assert_not_contains "$(cat "$WORK/check2.out")" "can also re-enroll" "check with renew-auth"
agent_stop
ca_stop

# --- CMP: a KUR must be signed with the certificate it updates (RFC 9483), so with renew-auth
# the renewal is an IR signed by the enrollment credential, for gw's subject and new key.
cmp_ca_start --lifetime 3600 --client-trust "$MFG/chain.pem"
sed -i -e "s|^renew = est|renew = cmp|" -e "s|^ca-url = .*|ca-url = $CA_URL|" \
	-e "s|^ca-trust = .*|ca-trust = $CA_TRUST|" "$CONF"
agent_start
old=$(current_serial gw)
out=$(ctl renew gw 2>&1) || {
	show_log "$AGENT_LOG" 20
	show_log "$CA_LOG" 10
	fail "CMP renewal with renew-auth failed: $out"
}
new=$(current_serial gw)
[ -n "$new" ] && [ "$new" != "$old" ] || fail "CMP renewal with renew-auth: serial still $old"
grep -q 'ir issued serial=.*CN=gw' "$CA_LOG" || fail "the CMP CA issued no IR for gw: $(tail -n 5 "$CA_LOG")"
! grep -q 'kur ' "$CA_LOG" || fail "the agent sent a KUR (signed by gw's own key) despite renew-auth"
identity_files gw
s_server_start
assert_cn "$(https_get_identity --cert "$TLS_DIR/gw.chain.pem" --key "$TLS_DIR/gw.keyref.pem")" gw \
	"after a CMP renewal with renew-auth the server saw"
s_server_stop
agent_stop
ca_stop

# --- 3. a renew-auth identity usable by applications is refused at load -----------------------
sed -i "/^\[identity \"enroll\"\]/a allow-groups = nogroup" "$CONF"
line=$(line_of "$CONF" "renew-auth = identity:enroll")
rc=0
"$MTLS_AGENT" -n -c "$CONF" >"$WORK/load.out" 2>&1 || rc=$?
[ "$rc" != 0 ] || fail "the agent accepted a renew-auth identity with allow-groups"
assert_contains "$(cat "$WORK/load.out")" "$CONF:$line: identity \"gw\": renew-auth identity \"enroll\" is usable by applications (allow-groups" \
	"load error"
log "ok"
