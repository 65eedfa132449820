#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# Certificate lifecycle through mtls-agentctl: keygen, CSR, import, the
# certificates import-cert must refuse (and leave the installed one alone),
# key rotation with a pending key, and state surviving a restart.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

softhsm_setup lifecycle
testca_init
agent_config
agent_identity dev1
agent_start

ID=dev1
INSTALLED=$STATE_DIR/$ID.crt

# --- keygen, CSR -------------------------------------------------------------------------
assert_ok ctl keygen "$ID" --type ec-p256
ctl csr "$ID" --subject "/CN=dev1/O=Test" --san DNS:dev1.example >"$WORK/csr.out" || fail "csr failed"
_csr_to_pem "$WORK/csr.out" "$WORK/csr1.pem" || fail "csr output is neither a PEM nor a DER CSR"
openssl req -in "$WORK/csr1.pem" -verify -noout 2>/dev/null || fail "CSR signature does not verify"
CSR_TEXT=$(openssl req -in "$WORK/csr1.pem" -noout -text)
assert_match "$CSR_TEXT" 'Subject: *CN *= *dev1, *O *= *Test' "CSR subject"
assert_contains "$CSR_TEXT" "TLS Web Client Authentication" "CSR extensions"
assert_contains "$CSR_TEXT" "Digital Signature" "CSR extensions"
assert_contains "$CSR_TEXT" "DNS:dev1.example" "CSR extensions"
assert_match "$CSR_TEXT" 'ASN1 OID: prime256v1|NIST CURVE: P-256' "CSR key"
openssl req -in "$WORK/csr1.pem" -noout -pubkey >"$WORK/key1.pub.pem"

# --- issue and import ---------------------------------------------------------------------
testca_issue "$WORK/csr1.pem" "$WORK/cert1.pem"
cmp -s "$WORK/key1.pub.pem" <(cert_pubkey "$WORK/cert1.pem" /dev/stdout) || fail "CA certified another key"
assert_ok ctl import-cert "$ID" "$WORK/cert1.pem"
[ -f "$INSTALLED" ] || fail "import-cert did not install $INSTALLED"
assert_eq "$(count_certs "$INSTALLED")" 2 "certificates in $INSTALLED"

# list --json: valid JSON naming the identity with the leaf's not-after (epoch or ISO 8601).
assert_ok ctl --json list
printf '%s\n' "$LAST_OUT" >"$WORK/list.json"
python3 - "$WORK/list.json" "$ID" "$(cert_not_after "$WORK/cert1.pem")" <<'PY' || fail "list --json: $(cat "$WORK/list.json")"
import json, re, sys, datetime
doc = json.load(open(sys.argv[1]))
name, epoch = sys.argv[2], int(sys.argv[3])
iso = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
def objs(x):
    if isinstance(x, dict):
        yield x
        for v in x.values(): yield from objs(v)
    elif isinstance(x, list):
        for v in x: yield from objs(v)
for o in objs(doc):
    if o.get("name") != name:
        continue
    for k, v in o.items():
        if re.fullmatch(r"not[-_ ]?after", k, re.I):
            if v == epoch or (isinstance(v, str) and v.startswith(iso)):
                sys.exit(0)
            sys.exit("identity %s: %s = %r, expected %d or %s" % (name, k, v, epoch, iso))
    sys.exit("identity %s has no not-after field" % name)
sys.exit("no identity named %s" % name)
PY

# cert prints the chain: leaf first, then the intermediate.
ctl cert "$ID" >"$WORK/chain.out" || fail "cert $ID failed"
assert_eq "$(count_certs "$WORK/chain.out")" 2 "certificates printed by cert"
cmp -s <(openssl x509 -in "$WORK/chain.out" -outform DER) <(openssl x509 -in "$WORK/cert1.pem" -outform DER) ||
	fail "cert does not print the imported leaf first"
openssl verify -CAfile "$CA_DIR/root.crt" -untrusted "$WORK/chain.out" "$WORK/chain.out" >/dev/null ||
	fail "printed chain does not verify against the test root"

make_cv13 "$WORK/cv" 32
sign_verify "$ID" ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/key1.pub.pem"

# --- refusals: each exits 1 with one line, and the installed certificate stays ----------
cp "$INSTALLED" "$WORK/installed.before"
refuse_import() { # WHAT FILE
	assert_fails ctl import-cert "$ID" "$2"
	log "refused $1: $LAST_ERR"
	cmp -s "$INSTALLED" "$WORK/installed.before" || fail "refused import ($1) changed $INSTALLED"
	ctl cert "$ID" >"$WORK/chain.now" || fail "cert failed after refused import ($1)"
	cmp -s "$WORK/chain.now" "$WORK/chain.out" || fail "refused import ($1) changed what cert prints"
}

openssl_csr "$WORK/other.key" "$WORK/other.csr" "/CN=dev1/O=Test"
testca_issue "$WORK/other.csr" "$WORK/bad-otherkey.pem"
refuse_import "certificate for another key" "$WORK/bad-otherkey.pem"

testca_issue "$WORK/csr1.pem" "$WORK/bad-noclientauth.pem" --no-clientauth
openssl x509 -in "$WORK/bad-noclientauth.pem" -noout -ext extendedKeyUsage | grep -q 'Client Authentication' &&
	fail "test CA put clientAuth into the --no-clientauth certificate"
refuse_import "certificate without clientAuth" "$WORK/bad-noclientauth.pem"

testca_issue "$WORK/csr1.pem" "$WORK/bad-nodigsig.pem" --no-digitalsig
openssl x509 -in "$WORK/bad-nodigsig.pem" -noout -ext keyUsage | grep -q 'Digital Signature' &&
	fail "test CA put digitalSignature into the --no-digitalsig certificate"
refuse_import "certificate without digitalSignature" "$WORK/bad-nodigsig.pem"

testca_issue "$WORK/csr1.pem" "$WORK/bad-expired.pem" --expired
openssl x509 -in "$WORK/bad-expired.pem" -noout -checkend 0 >/dev/null &&
	fail "test CA's --expired certificate is not expired"
refuse_import "expired certificate" "$WORK/bad-expired.pem"

head -c 2000 /dev/urandom >"$WORK/bad-garbage"
refuse_import "garbage file" "$WORK/bad-garbage"
printf -- '-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n' >"$WORK/bad-pem"
refuse_import "broken PEM" "$WORK/bad-pem"

# Still signing with the installed key after all that.
sign_verify "$ID" ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/key1.pub.pem"

# --- rotation ------------------------------------------------------------------------------
assert_ok ctl keygen "$ID" --type ec-p256
# The new key is pending: signatures still come from the old key.
make_cv13 "$WORK/cv" 32
sign_verify "$ID" ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/key1.pub.pem"
ctl cert "$ID" >"$WORK/chain.now" || fail "cert failed"
cmp -s "$WORK/chain.now" "$WORK/chain.out" || fail "keygen of a pending key changed the certificate"

ctl csr "$ID" --subject "/CN=dev1/O=Test" --san DNS:dev1.example >"$WORK/csr.out" || fail "csr failed"
_csr_to_pem "$WORK/csr.out" "$WORK/csr2.pem"
openssl req -in "$WORK/csr2.pem" -verify -noout 2>/dev/null || fail "rotation CSR does not verify"
openssl req -in "$WORK/csr2.pem" -noout -pubkey >"$WORK/key2.pub.pem"
cmp -s "$WORK/key1.pub.pem" "$WORK/key2.pub.pem" && fail "CSR after keygen is still signed by the old key"

# A certificate for the pending key that the agent must refuse leaves everything as it was.
testca_issue "$WORK/csr2.pem" "$WORK/bad2-expired.pem" --expired
refuse_import "expired certificate for the pending key" "$WORK/bad2-expired.pem"
sign_verify "$ID" ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/key1.pub.pem"

testca_issue "$WORK/csr2.pem" "$WORK/cert2.pem"
assert_ok ctl import-cert "$ID" "$WORK/cert2.pem"
cmp -s <(openssl x509 -in "$INSTALLED" -outform DER) <(openssl x509 -in "$WORK/cert2.pem" -outform DER) ||
	fail "import of the new certificate did not install it"
make_cv13 "$WORK/cv" 32
sign_verify "$ID" ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/key2.pub.pem"
if verify_sig "$WORK/key1.pub.pem" ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/sig.$ID.ecdsa_secp256r1_sha256"; then
	fail "after the switch, signatures still verify with the old key"
fi
identity_pubkey "$ID" "$WORK/key.now.pem"
cmp -s "$WORK/key.now.pem" "$WORK/key2.pub.pem" || fail "cert does not print the new certificate"

# --- restart: the state survives ------------------------------------------------------------
agent_stop
agent_start
assert_ok ctl list
assert_contains "$LAST_OUT" "$ID" "list after restart"
identity_pubkey "$ID" "$WORK/key.restart.pem"
cmp -s "$WORK/key.restart.pem" "$WORK/key2.pub.pem" || fail "after restart, cert is not the new certificate"
make_cv13 "$WORK/cv" 48
sign_verify "$ID" ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/key2.pub.pem"
agent_stop
log "PASS"
