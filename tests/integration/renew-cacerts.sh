#!/bin/bash
# CA certificate refresh over EST (issue 10; RFC 7030 §4.1.3 /cacerts). The
# EST test CA answers enrollments with the issued certificate alone
# (--leaf-only), so the chain the agent installs comes from /cacerts:
#  1. the CA issues with its first intermediate: chain = leaf + intermediate 1;
#  2. the CA changes to a second intermediate under the same root: the next
#     renewal installs leaf + intermediate 2, and it verifies against the root;
#  3. root key update: the CA moves to a new root whose link certificate
#     (NewWithOld: the new root's name and key, issued by the old root) is in
#     /cacerts: the agent keeps the new root in <state-dir>/gw.ca-next and
#     installs leaf + intermediate 3, which verifies against the new root;
#  4. a CA offering a root whose "link" is not signed by any anchor in force:
#     refused, the renewal fails, nothing replaced, ca-next unchanged;
#  5. a rogue root whose link is signed by an intermediate under the old root
#     (the holder of any intermediate key): the link must be issued directly
#     by an anchor in force, so it is refused and nothing is written;
#  6. the old root removed from ca-trust: the new root it vouched for (its
#     link is kept in <state-dir>/gw.ca-links) is no longer trusted either.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_cmd pkcs11-tool python3

testca_init
server_cert_setup
softhsm_setup cacerts
D=$CA_DIR
ORG="/O=mtls-agent tests"
ca_sign() { # CSR OUT CA_CERT CA_KEY EXTENSIONS SERIAL
	openssl x509 -req -in "$1" -out "$2" -CA "$3" -CAkey "$4" -extfile "$D/ca.cnf" -extensions "$5" \
		-set_serial "$6" -days 3650 -sha256 2>>"$WORK/pki.log"
}
new_key_csr() { # NAME SUBJECT
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$D/$1.key" \
		-out "$D/$1.csr" -subj "$2" 2>>"$WORK/pki.log"
}
self_signed() { # NAME SUBJECT KEY
	openssl req -x509 -new -key "$3" -out "$D/$1.crt" -subj "$2" -config "$D/ca.cnf" \
		-extensions v3_root -days 3650 -sha256 2>>"$WORK/pki.log"
}
root1_subject=$(openssl x509 -in "$D/root.crt" -noout -subject -nameopt compat | sed 's/^subject=//')
{
	# 2: a second intermediate under the same root.
	new_key_csr inter2 "/CN=mtls-agent test intermediate 2$ORG"
	ca_sign "$D/inter2.csr" "$D/inter2.crt" "$D/root.crt" "$D/root.key" v3_inter 21
	# 3: a new root, its link certificate from the old root, an intermediate under it.
	new_key_csr root2 "/CN=mtls-agent test root 2$ORG"
	self_signed root2 "/CN=mtls-agent test root 2$ORG" "$D/root2.key"
	ca_sign "$D/root2.csr" "$D/root2-by-root1.crt" "$D/root.crt" "$D/root.key" v3_root 22
	new_key_csr inter3 "/CN=mtls-agent test intermediate 3$ORG"
	ca_sign "$D/inter3.csr" "$D/inter3.crt" "$D/root2.crt" "$D/root2.key" v3_inter 23
	# 4: a rogue root whose "link" claims the old root as issuer but is signed by itself.
	new_key_csr root3 "/CN=mtls-agent test root 3$ORG"
	self_signed root3 "/CN=mtls-agent test root 3$ORG" "$D/root3.key"
	self_signed fake-root1 "$root1_subject" "$D/root3.key"
	ca_sign "$D/root3.csr" "$D/root3-by-fake.crt" "$D/fake-root1.crt" "$D/root3.key" v3_root 24
	new_key_csr inter4 "/CN=mtls-agent test intermediate 4$ORG"
	ca_sign "$D/inter4.csr" "$D/inter4.crt" "$D/root3.crt" "$D/root3.key" v3_inter 25
	# 5: a rogue root whose link is signed by intermediate 1 (under the old root).
	new_key_csr root5 "/CN=mtls-agent test rogue root 5$ORG"
	self_signed root5 "/CN=mtls-agent test rogue root 5$ORG" "$D/root5.key"
	ca_sign "$D/root5.csr" "$D/root5-by-inter1.crt" "$D/inter.crt" "$D/inter.key" v3_root 26
	new_key_csr inter5 "/CN=mtls-agent test intermediate 5$ORG"
	ca_sign "$D/inter5.csr" "$D/inter5.crt" "$D/root5.crt" "$D/root5.key" v3_inter 27
} || {
	cat "$WORK/pki.log" >&2
	fail "cannot make the test PKI"
}
cat "$D/inter3.crt" "$D/root2.crt" "$D/root2-by-root1.crt" "$D/root.crt" >"$D/cacerts3.pem"
cat "$D/inter4.crt" "$D/root3.crt" "$D/root3-by-fake.crt" >"$D/cacerts4.pem"
cat "$D/inter5.crt" "$D/root5.crt" "$D/root5-by-inter1.crt" "$D/inter.crt" >"$D/cacerts5.pem"
# The rogue link does verify to the old root through intermediate 1: only
# "issued directly by an anchor" tells it apart.
openssl verify -CAfile "$D/root.crt" -untrusted "$D/inter.crt" "$D/root5-by-inter1.crt" >/dev/null 2>&1 ||
	fail "test PKI: the rogue link does not verify through intermediate 1"
# Like a real CA across its own changes, the test CA keeps accepting the
# certificates it issued before (EST simplereenroll authenticates with them).
cat "$D/inter.crt" "$D/inter2.crt" "$D/inter3.crt" >"$D/client-anchors.pem"

# est_ca_as CA_CERT CA_KEY [ARGS...]: (re)starts the EST test CA on the same port.
est_ca_as() {
	local cert=$1 key=$2 port=()
	shift 2
	ca_stop
	[ -z "$CA_PORT" ] || port=(--port "$CA_PORT")
	_ca_spawn est-ca "$EST_CA_BIN" --tls-cert "$SRV_CERT" --tls-key "$SRV_KEY" --ca-cert "$cert" \
		--ca-key "$key" --lifetime 3600 --leaf-only 1 --client-ca "$D/client-anchors.pem" "${port[@]}" "$@"
	CA_URL=https://127.0.0.1:$CA_PORT/.well-known/est
}
est_ca_as "$D/inter.crt" "$D/inter.key" --chain "$D/root.crt"
CA_TRUST=$WORK/est-trust.pem
cat "$D/root.crt" "$SRV_CA" >"$CA_TRUST"
agent_config
renew_lines est
agent_identity gw "${RENEW_LINES[@]}"
agent_start
identity_setup gw ec-p256

# chain_issuer_is N CERT: certificate N (0: leaf) of gw's installed chain is CERT.
installed_nth() { # N OUT
	ctl cert gw | awk -v n="$1" '/BEGIN CERT/ {i++} i == n + 1' >"$2"
}
check_chain() { # WHAT INTER ROOT
	local what=$1 inter=$2 root=$3
	ctl cert gw >"$WORK/chain.pem"
	[ "$(grep -c 'BEGIN CERTIFICATE' "$WORK/chain.pem")" -eq 2 ] ||
		fail "$what: expected leaf + intermediate, the chain holds $(grep -c 'BEGIN CERTIFICATE' "$WORK/chain.pem") certificates"
	installed_nth 1 "$WORK/second.pem"
	cmp -s <(openssl x509 -in "$WORK/second.pem" -outform DER) <(openssl x509 -in "$inter" -outform DER) ||
		fail "$what: the installed intermediate is not $(basename "$inter")"
	openssl verify -CAfile "$root" -untrusted "$WORK/chain.pem" "$WORK/chain.pem" >"$WORK/verify.out" 2>&1 ||
		fail "$what: the installed chain does not verify against $(basename "$root"): $(cat "$WORK/verify.out")"
}

# 1. First intermediate.
assert_ok ctl renew gw
check_chain "intermediate 1" "$D/inter.crt" "$D/root.crt"
grep -q "cacerts served" "$CA_LOG" || fail "the agent did not fetch /cacerts"
log "1: leaf-only answer, chain completed from /cacerts with intermediate 1"

# 2. The CA changes its intermediate between two renewals.
est_ca_as "$D/inter2.crt" "$D/inter2.key" --chain "$D/root.crt"
assert_ok ctl renew gw
check_chain "intermediate 2" "$D/inter2.crt" "$D/root.crt"
[ ! -e "$STATE_DIR/gw.ca-next" ] || fail "a successor anchor was kept although the root did not change"
log "2: the CA's new intermediate is installed and the chain verifies"

# 3. Root key update with a link certificate.
est_ca_as "$D/inter3.crt" "$D/inter3.key" --cacerts "$D/cacerts3.pem"
assert_ok ctl renew gw
check_chain "new root" "$D/inter3.crt" "$D/root2.crt"
[ -s "$STATE_DIR/gw.ca-next" ] || fail "the new root was not kept in the state dir"
cmp -s <(openssl x509 -in "$STATE_DIR/gw.ca-next" -outform DER) <(openssl x509 -in "$D/root2.crt" -outform DER) ||
	fail "gw.ca-next does not hold the new root"
assert_contains "$(cat "$AGENT_LOG")" "accepted the new CA root" "agent log"
log "3: new root accepted through its link certificate; chain verifies against it"

# 4. A root that does not chain from any anchor in force is refused.
cp "$STATE_DIR/gw.crt" "$WORK/before.crt"
cp "$STATE_DIR/gw.ca-next" "$WORK/ca-next.before"
est_ca_as "$D/inter4.crt" "$D/inter4.key" --cacerts "$D/cacerts4.pem"
assert_fails ctl renew gw
assert_contains "$LAST_ERR" "does not verify" "renew with an untrusted root"
assert_contains "$(cat "$AGENT_LOG")" "refused the new CA root" "agent log"
cmp -s "$STATE_DIR/gw.crt" "$WORK/before.crt" || fail "the certificate file changed"
cmp -s "$STATE_DIR/gw.ca-next" "$WORK/ca-next.before" || fail "the untrusted root was kept"
log "4: untrusted root refused: $LAST_ERR"

# 5. A root whose link an intermediate signed: refused, nothing written.
cp "$STATE_DIR/gw.ca-links" "$WORK/ca-links.before"
refusals_before=$(grep -c "refused the new CA root" "$AGENT_LOG")
est_ca_as "$D/inter5.crt" "$D/inter5.key" --cacerts "$D/cacerts5.pem"
assert_fails ctl renew gw
assert_contains "$LAST_ERR" "does not verify" "renew with a root linked by an intermediate"
[ "$(grep -c "refused the new CA root" "$AGENT_LOG")" -gt "$refusals_before" ] ||
	fail "the agent did not refuse the root whose link an intermediate signed"
grep -q "refused the new CA root.*rogue root 5" "$AGENT_LOG" || fail "the refusal does not name the rogue root"
cmp -s "$STATE_DIR/gw.crt" "$WORK/before.crt" || fail "the certificate file changed"
cmp -s "$STATE_DIR/gw.ca-next" "$WORK/ca-next.before" || fail "the root linked by an intermediate was kept"
cmp -s "$STATE_DIR/gw.ca-links" "$WORK/ca-links.before" || fail "ca-links changed"
! grep -q "rogue root 5" <(openssl crl2pkcs7 -nocrl -certfile "$STATE_DIR/gw.trust" | openssl pkcs7 -print_certs) ||
	fail "the root linked by an intermediate reached gw.trust"
log "5: root linked by an intermediate refused: $LAST_ERR"

# 6. The old root leaves ca-trust: the new root it vouched for goes with it.
est_ca_as "$D/inter3.crt" "$D/inter3.key" --cacerts "$D/cacerts3.pem"
cp "$CA_TRUST" "$WORK/est-trust.full"
cp "$SRV_CA" "$CA_TRUST"
untrusted_before=$(grep -c "is no longer trusted" "$AGENT_LOG" || true)
assert_fails ctl renew gw
assert_contains "$LAST_ERR" "does not verify" "renew after the old root left ca-trust"
assert_fails ctl renew gw
# One warning says it, not one per load of the anchors.
assert_eq "$(($(grep -c "is no longer trusted" "$AGENT_LOG") - untrusted_before))" 1 \
	"warnings that the new root is no longer trusted, after two renewals"
cmp -s "$STATE_DIR/gw.crt" "$WORK/before.crt" || fail "the certificate file changed"
[ ! -e "$STATE_DIR/gw.trust" ] ||
	! grep -q "test root 2" <(openssl crl2pkcs7 -nocrl -certfile "$STATE_DIR/gw.trust" | openssl pkcs7 -print_certs) ||
	fail "gw.trust still holds the new root after the old root left ca-trust"
# Back in ca-trust: the kept link vouches for the new root again.
cp "$WORK/est-trust.full" "$CA_TRUST"
assert_ok ctl renew gw
check_chain "new root again" "$D/inter3.crt" "$D/root2.crt"
log "6: the new root is trusted exactly while the root that issued its link is in ca-trust"

# 7. The operator replaces the old root by the new one in ca-trust: nothing is "no longer
# trusted", and renewal goes on under the new root.
untrusted_before=$(grep -c "is no longer trusted" "$AGENT_LOG")
cat "$SRV_CA" "$D/root2.crt" >"$CA_TRUST"
assert_ok ctl renew gw
check_chain "new root in ca-trust" "$D/inter3.crt" "$D/root2.crt"
assert_ok ctl renew gw
assert_eq "$(grep -c "is no longer trusted" "$AGENT_LOG")" "$untrusted_before" \
	"warnings that a root is no longer trusted, with the new root in ca-trust itself"
log "7: the new root put into ca-trust itself: renewals go on, no warning"
agent_stop
ca_stop
