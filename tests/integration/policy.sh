#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# sign-policy: tls-client (the default) signs only a TLS 1.3 client
# CertificateVerify content or a TLS 1.2 client handshake transcript;
# tls13-client only the former; any signs anything, digests included.
# Every refusal exits 1 with one stderr line naming the sign-policy, and
# (when pkcs11-spy is available) never reaches the token.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

softhsm_setup policy
HAVE_SPY=0
if spy_setup; then HAVE_SPY=1; else log "NOTE: pkcs11-spy not found: keystore call counts not checked"; fi
testca_init
agent_config
agent_identity tls
agent_identity tls13 "sign-policy = tls13-client"
agent_identity any "sign-policy = any"
agent_start
for id in tls tls13 any; do
	identity_setup "$id" ec-p256
done
S=ecdsa_secp256r1_sha256
V=$WORK/vectors
mkdir -p "$V"

# The first element inside the outermost SEQUENCE of a DER file (the TBS part
# of a certificate or CSR), cut with openssl asn1parse -strparse.
der_first_child() { # IN_DER OUT
	local off
	off=$(openssl asn1parse -inform DER -in "$1" | sed -n 2p | cut -d: -f1 | tr -d ' ')
	openssl asn1parse -inform DER -in "$1" -strparse "$off" -noout -out "$2" >/dev/null ||
		fail "cannot cut the first element of $1"
}

size() { stat -c %s "$1"; }

# --- vectors that must be refused under tls-client -------------------------------------------
openssl_csr "$WORK/x.key" "$WORK/x.csr" "/CN=attacker/O=Test"
openssl req -in "$WORK/x.csr" -outform DER -out "$V/csr.der"
der_first_child "$V/csr.der" "$V/csr-tbs.der"
openssl x509 -in "$WORK/tls.chain.pem" -outform DER -out "$V/leaf.der"
openssl x509 -in "$CA_DIR/inter.crt" -outform DER -out "$V/inter.der"
der_first_child "$V/leaf.der" "$V/x509-tbs.der"
openssl asn1parse -inform DER -in "$V/x509-tbs.der" >/dev/null || fail "x509 TBS vector is not DER"
[ "$(head -c 1 "$V/x509-tbs.der" | od -An -tx1 | tr -d ' ')" = 30 ] || fail "x509 TBS vector is not a SEQUENCE"
openssl dgst -sha256 -binary "$V/csr.der" >"$V/digest32"
make_cv13 "$V/server-cv" 32 server
make_cv13 "$V/sp63" 32 client 63
make_cv13 "$V/sp65" 32 client 65
make_cv13 "$V/nozero" 32 client 64 none
make_cv13 "$V/h31" 31
make_cv13 "$V/h33" 33
make_cv13 "$V/h0" 0
printf '%s' 'eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJkZXZpY2UiLCJpYXQiOjE3MDAwMDAwMDB9' >"$V/jws"
# TLS 1.2 transcripts that are not a client's transcript up to ClientKeyExchange.
make_tls12_transcript "$V/tls12" "$V/inter.der" "$V/leaf.der"
head -c $(($(size "$V/tls12") - 1)) "$V/tls12" >"$V/tls12-truncated"
# without ClientKeyExchange: 4-byte header + 66-byte body at the end
head -c $(($(size "$V/tls12") - 70)) "$V/tls12" >"$V/tls12-no-cke"
# starting at ServerHello: drop the ClientHello (4-byte header + body)
CH_LEN=$(( $(od -An -tu1 -j1 -N3 "$V/tls12" | awk '{print $1 * 65536 + $2 * 256 + $3}') + 4 ))
tail -c +$((CH_LEN + 1)) "$V/tls12" >"$V/tls12-no-ch"

u32() { u16 $(($1 >> 16)); u16 "$1"; }

# Forgeries the old header-tiling check signed: the client-authentication
# order of handshake headers over bodies of the caller's choosing ...
{ u16 0x0303; nonzero_bytes 60; } >"$V/hello-body"
nonzero_bytes 200 >"$V/free-body"
{
	hs_msg 1 "$V/hello-body"; hs_msg 2 "$V/hello-body"; hs_msg 11 "$V/free-body"
	hs_msg 12 "$V/free-body"; hs_msg 13 "$V/free-body"; printf '\016\000\000\000'
	hs_msg 11 "$V/free-body"; hs_msg 16 "$V/free-body"
} >"$V/tiled"
# ... an IKEv2 InitiatorSignedOctets string (RFC 7296 2.15) whose initiator SPI
# is chosen to start like a ClientHello: IKE_SA_INIT header, SA, KE, Nonce,
# then the responder's nonce and prf(SK_pi, IDi') ...
{
	u8 1; u24 0x120; u16 0x0303; u16 0xaabb; head -c 8 /dev/zero
	u8 33; u8 0x20; u8 34; u8 8; u32 0; u32 $((28 + 48 + 72 + 36))
	u8 34; u8 0; u16 48; u8 0; u8 0; u16 44; u8 1; u8 1; u8 0; u8 4
	u8 3; u8 0; u16 12; u8 1; u8 0; u16 12; u16 0x800e; u16 256
	u8 3; u8 0; u16 8; u8 2; u8 0; u16 5; u8 3; u8 0; u16 8; u8 3; u8 0; u16 12
	u8 0; u8 0; u16 8; u8 4; u8 0; u16 19
	u8 40; u8 0; u16 72; u16 19; u16 0; nonzero_bytes 64
	u8 0; u8 0; u16 36; nonzero_bytes 32
	nonzero_bytes 32; nonzero_bytes 32
} >"$V/ikev2"
# ... and a real transcript with one byte after its ClientKeyExchange.
{ cat "$V/tls12"; u8 0; } >"$V/tls12-trailing"

# Lengths are what the names say.
assert_eq "$(size "$V/server-cv")" 130 "server CV length"
assert_eq "$(size "$V/sp63")" 129 "63-space CV length"
assert_eq "$(size "$V/sp65")" 131 "65-space CV length"
assert_eq "$(size "$V/nozero")" 129 "CV without 0x00 length"
assert_eq "$(size "$V/h31")" 129 "CV with 31-byte hash length"
assert_eq "$(size "$V/h33")" 131 "CV with 33-byte hash length"
assert_eq "$(size "$V/h0")" 98 "CV without hash length"
assert_eq "$(size "$V/digest32")" 32 "digest length"
assert_eq "$(head -c 1 "$V/tiled" | od -An -tu1 | tr -d ' ')" 1 "tiled forgery starts like a ClientHello"
assert_eq "$(size "$V/ikev2")" $((28 + 48 + 72 + 36 + 64)) "IKEv2 octets length"
assert_eq "$(od -An -tu1 -j1 -N3 "$V/tls12-no-ch" | tr -s ' ')" "$(od -An -tu1 -j$((CH_LEN + 1)) -N3 "$V/tls12" | tr -s ' ')" "transcript cut"
assert_eq "$(head -c 1 "$V/tls12-no-ch" | od -An -tu1 | tr -d ' ')" 2 "transcript without ClientHello starts with ServerHello"
assert_eq "$(tail -c 70 "$V/tls12" | head -c 1 | od -An -tu1 | tr -d ' ')" 16 "ClientKeyExchange type"

SIGNS_BEFORE=0
[ "$HAVE_SPY" = 0 ] || SIGNS_BEFORE=$(spy_count C_SignInit)

refused() { # IDENTITY VECTOR [--digest]
	assert_fails ctl sign "$1" --scheme "$S" ${3:+"$3"} --in "$2" --out "$WORK/sig.refused"
	assert_contains "$LAST_ERR" "sign-policy" "refusal of $(basename "$2") by $1"
	[ ! -s "$WORK/sig.refused" ] || fail "refused request wrote a signature"
}

for vec in csr.der csr-tbs.der x509-tbs.der server-cv sp63 sp65 nozero h31 h33 h0 jws \
	tls12-truncated tls12-no-cke tls12-no-ch tiled ikev2 tls12-trailing; do
	refused tls "$V/$vec"
	refused tls13 "$V/$vec"
done
refused tls "$V/digest32" --digest
refused tls13 "$V/digest32" --digest
refused tls13 "$V/tls12"

if [ "$HAVE_SPY" = 1 ]; then
	assert_eq "$(spy_count C_SignInit)" "$SIGNS_BEFORE" "C_SignInit calls caused by refused requests"
fi

# --- accepted ----------------------------------------------------------------------------------
for hl in 32 48 64; do
	make_cv13 "$V/cv$hl" "$hl"
	assert_eq "$(size "$V/cv$hl")" $((98 + hl)) "client CV length"
	sign_verify tls "$S" "$V/cv$hl" "$WORK/tls.pub.pem"
	sign_verify tls13 "$S" "$V/cv$hl" "$WORK/tls13.pub.pem"
	sign_verify any "$S" "$V/cv$hl" "$WORK/any.pub.pem"
done
sign_verify tls "$S" "$V/tls12" "$WORK/tls.pub.pem"
# Real TLS 1.2 and DTLS 1.2 transcripts from three stacks (tests/vectors/tls12).
for vec in ossl-tls gnutls-cli-tls go-cli-tls gnutls-serv-dtls ossl-dtls; do
	sign_verify tls "$S" "${top_srcdir:-$(dirname "$0")/../..}/tests/vectors/tls12/$vec.bin" "$WORK/tls.pub.pem"
done
sign_verify any "$S" "$V/tls12" "$WORK/any.pub.pem"

# sign-policy = any: the DER blobs, the JWS and a digest.
for vec in csr.der x509-tbs.der jws server-cv; do
	sign_verify any "$S" "$V/$vec" "$WORK/any.pub.pem"
done
sign_verify any "$S" "$V/csr.der" "$WORK/any.pub.pem" --digest

# The refusals were counted and logged, and the agent is still serving.
assert_ok ctl status
agent_alive || fail "agent died"
[ "$(log_count 'sign-policy|policy')" -gt 0 ] || fail "agent log does not mention the policy refusals"
agent_stop
log "PASS"
