#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# Every key type the agent generates, every TLS signature scheme that fits it:
# the agent signs, openssl verifies with the public key of the certificate
# `mtls-agentctl cert` prints. TLS 1.3 CertificateVerify content under the
# default tls-client policy; arbitrary messages and pre-hashed digests under
# sign-policy = any; a corrupted signature must not verify.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

softhsm_setup schemes
testca_init
agent_config

# type tag:key type:schemes that must work:other ECDSA schemes (curve/hash mismatch)
TYPES="p256:ec-p256:ecdsa_secp256r1_sha256:ecdsa_secp384r1_sha384 ecdsa_secp521r1_sha512
p384:ec-p384:ecdsa_secp384r1_sha384:ecdsa_secp256r1_sha256 ecdsa_secp521r1_sha512
rsa2048:rsa-2048:rsa_pkcs1_sha256 rsa_pkcs1_sha384 rsa_pkcs1_sha512 rsa_pss_rsae_sha256 rsa_pss_rsae_sha384 rsa_pss_rsae_sha512:
rsa3072:rsa-3072:rsa_pkcs1_sha256 rsa_pkcs1_sha384 rsa_pkcs1_sha512 rsa_pss_rsae_sha256 rsa_pss_rsae_sha384 rsa_pss_rsae_sha512:
ed25519:ed25519:ed25519:"

# Schemes that never fit a key of this tag (must be refused, exit 1).
wrong_schemes() {
	case "$1" in
	p256 | p384) echo "rsa_pss_rsae_sha256 rsa_pkcs1_sha256 ed25519" ;;
	rsa*) echo "ecdsa_secp256r1_sha256 ed25519" ;;
	ed25519) echo "ecdsa_secp256r1_sha256 rsa_pss_rsae_sha256" ;;
	esac
}

while IFS=: read -r tag _ _ _; do
	agent_identity "$tag-tls"
	agent_identity "$tag-any" "sign-policy = any"
done <<<"$TYPES"
agent_start

# Arbitrary messages for the "any" identities.
printf 'hello, world\n' >"$WORK/msg-text"
head -c 1000 /dev/urandom >"$WORK/msg-random"
: >"$WORK/msg-empty"

SKIPPED=
while IFS=: read -r tag type schemes others; do
	log "=== $tag ($type)"
	ok=1
	for id in "$tag-tls" "$tag-any"; do
		rc=0
		ctl keygen "$id" --type "$type" >"$WORK/keygen.out" 2>"$WORK/keygen.err" || rc=$?
		if [ "$rc" -ne 0 ]; then
			if [ "$type" = ed25519 ]; then
				printf '\n%s: *** SKIP *** key type %s: keygen failed (exit %s): %s\n\n' \
					"$TEST_NAME" "$type" "$rc" "$(cat "$WORK/keygen.err")" >&2
				SKIPPED="$SKIPPED $type"
				ok=0
				break
			fi
			fail "keygen $id --type $type failed (exit $rc): $(cat "$WORK/keygen.err")"
		fi
		ctl csr "$id" --subject "/CN=$id/O=mtls-agent tests" >"$WORK/$id.csr" || fail "csr $id failed"
		_csr_to_pem "$WORK/$id.csr" "$WORK/$id.csr.pem" || fail "csr $id printed no CSR"
		openssl req -in "$WORK/$id.csr.pem" -verify -noout 2>/dev/null || fail "CSR of $id does not verify"
		testca_issue "$WORK/$id.csr" "$WORK/$id.chain.pem"
		assert_ok ctl import-cert "$id" "$WORK/$id.chain.pem"
		assert_ok ctl list
		assert_contains "$LAST_OUT" "$id" "list"
		identity_pubkey "$id" "$WORK/$id.pub.pem"
		cmp -s "$WORK/$id.pub.pem" <(cert_pubkey "$WORK/$id.chain.pem" /dev/stdout) ||
			fail "cert $id does not print the imported certificate"
	done
	[ "$ok" = 1 ] || continue

	tls=$tag-tls
	any=$tag-any
	for s in $schemes; do
		# TLS 1.3 client CertificateVerify content, default policy; hash length follows the
		# scheme's hash as it would with the matching cipher suite.
		case "$(scheme_hash "$s")" in sha384) hl=48 ;; sha512) hl=64 ;; *) hl=32 ;; esac
		make_cv13 "$WORK/cv" "$hl"
		sign_verify "$tls" "$s" "$WORK/cv" "$WORK/$tls.pub.pem"
		make_cv13 "$WORK/cv32" 32
		sign_verify "$tls" "$s" "$WORK/cv32" "$WORK/$tls.pub.pem"

		for m in msg-text msg-random msg-empty; do
			# OpenSSL 3.0's pkeyutl cannot verify Ed25519 over an empty message.
			[ "$s:$m" != ed25519:msg-empty ] || continue
			sign_verify "$any" "$s" "$WORK/$m" "$WORK/$any.pub.pem"
		done
		if [ "$s" = ed25519 ]; then
			# Ed25519 signs messages, never digests.
			openssl dgst -sha512 -binary "$WORK/msg-text" >"$WORK/d"
			assert_fails ctl sign "$any" --scheme ed25519 --digest --in "$WORK/d" --out "$WORK/sig"
		else
			sign_verify "$any" "$s" "$WORK/msg-random" "$WORK/$any.pub.pem" --digest
		fi
	done

	# Curve/hash combinations: TLS 1.2 allows any ECDSA hash with any curve. If the agent
	# signs one, the signature must be right; if it refuses, it must say so properly.
	for s in $others; do
		rc=0
		ctl sign "$any" --scheme "$s" --in "$WORK/msg-text" --out "$WORK/sig.x" 2>"$WORK/x.err" || rc=$?
		case "$rc" in
		0)
			verify_sig "$WORK/$any.pub.pem" "$s" "$WORK/msg-text" "$WORK/sig.x" ||
				fail "$any: $s signature does not verify"
			log "$tag: agent signs $s (verified)"
			;;
		1) log "NOTE: $tag: agent refuses $s: $(cat "$WORK/x.err")" ;;
		*) fail "$any: sign --scheme $s exited $rc: $(cat "$WORK/x.err")" ;;
		esac
	done

	for s in $(wrong_schemes "$tag"); do
		assert_fails ctl sign "$any" --scheme "$s" --in "$WORK/msg-text" --out "$WORK/sig.w"
	done

	# A corrupted signature must not verify (proves the verification can fail).
	first=${schemes%% *}
	make_cv13 "$WORK/cv" 32
	ctl sign "$tls" --scheme "$first" --in "$WORK/cv" --out "$WORK/sig.good" || fail "sign failed"
	verify_sig "$WORK/$tls.pub.pem" "$first" "$WORK/cv" "$WORK/sig.good" || fail "good signature does not verify"
	flip_last_byte "$WORK/sig.good" "$WORK/sig.bad"
	cmp -s "$WORK/sig.good" "$WORK/sig.bad" && fail "flip_last_byte changed nothing"
	if verify_sig "$WORK/$tls.pub.pem" "$first" "$WORK/cv" "$WORK/sig.bad"; then
		fail "$tls: a signature with a flipped byte verifies"
	fi
	# ... and a good signature over another message does not verify either.
	make_cv13 "$WORK/cv-other" 32
	if verify_sig "$WORK/$tls.pub.pem" "$first" "$WORK/cv-other" "$WORK/sig.good"; then
		fail "$tls: signature verifies over a different message"
	fi
done <<<"$TYPES"

agent_stop
[ -z "$SKIPPED" ] || log "key types skipped:$SKIPPED"
log "PASS"
