#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# TPM keystore on a private swtpm: every key type the agent generates in the
# TPM (EC P-256, P-384, RSA-2048, RSA-3072) goes through keygen -> csr ->
# certificate -> import-cert, and every TLS signature scheme that fits it
# produces signatures that openssl verifies with the certified public key:
# TLS 1.3 CertificateVerify content under the default policy, arbitrary
# messages and digests under sign-policy = any. The key files are TSS2
# PRIVATE KEY PEM with the attributes the agent promises (sign only, fixedTPM,
# fixedParent, sensitiveDataOrigin, userWithAuth, noDA, no decrypt). Eight
# keys on a TPM with 3 object slots exercise the least-recently-used
# eviction, also with four clients signing at once.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tpm-lib.sh
. "$(dirname "$0")/../tpm-lib.sh"
need_cmd tpm2_print

testca_init
swtpm_start
tpm_agent_config

# tag:key type:schemes that must work:other ECDSA schemes (curve/hash mismatch)
TYPES="p256:ec-p256:ecdsa_secp256r1_sha256:ecdsa_secp384r1_sha384 ecdsa_secp521r1_sha512
p384:ec-p384:ecdsa_secp384r1_sha384:ecdsa_secp256r1_sha256 ecdsa_secp521r1_sha512
rsa2048:rsa-2048:rsa_pkcs1_sha256 rsa_pkcs1_sha384 rsa_pkcs1_sha512 rsa_pss_rsae_sha256 rsa_pss_rsae_sha384 rsa_pss_rsae_sha512:
rsa3072:rsa-3072:rsa_pkcs1_sha256 rsa_pkcs1_sha384 rsa_pkcs1_sha512 rsa_pss_rsae_sha256 rsa_pss_rsae_sha384 rsa_pss_rsae_sha512:"

wrong_schemes() {
	case "$1" in
	p256 | p384) echo "rsa_pss_rsae_sha256 rsa_pkcs1_sha256 ed25519" ;;
	rsa*) echo "ecdsa_secp256r1_sha256 ed25519" ;;
	esac
}

while IFS=: read -r tag _ _ _; do
	tpm_identity "$tag-tls"
	tpm_identity "$tag-any" "sign-policy = any"
done <<<"$TYPES"
agent_start

printf 'hello, world\n' >"$WORK/msg-text"
head -c 1000 /dev/urandom >"$WORK/msg-random"
: >"$WORK/msg-empty"

# attrs_of KEYFILE: the object attributes tpm2-tools reads from the first key of a TSS2 file.
attrs_of() {
	tpm_tools tpm2_print -t TSSPRIVKEY_OBJ "$1" >"$WORK/print.out" 2>&1 ||
		fail "tpm2_print cannot read $1: $(cat "$WORK/print.out")"
	sed -n '/^attributes:/,/raw:/s/^ *value: *//p' "$WORK/print.out"
}

while IFS=: read -r tag type schemes others; do
	log "=== $tag ($type)"
	for id in "$tag-tls" "$tag-any"; do
		assert_ok ctl keygen "$id" --type "$type"
		[ -s "$TPM_KEYS/$id.pem" ] || fail "keygen $id wrote no key file $TPM_KEYS/$id.pem"
		grep -q -- '-----BEGIN TSS2 PRIVATE KEY-----' "$TPM_KEYS/$id.pem" ||
			fail "$TPM_KEYS/$id.pem is not a TSS2 PRIVATE KEY PEM file"
		assert_eq "$(grep -c -- '-----BEGIN TSS2 PRIVATE KEY-----' "$TPM_KEYS/$id.pem")" 1 "keys in $id.pem"
		assert_eq "$(stat -c %a "$TPM_KEYS/$id.pem")" 600 "mode of $id.pem"
		ctl csr "$id" --subject "/CN=$id/O=mtls-agent tests" >"$WORK/$id.csr" || fail "csr $id failed"
		_csr_to_pem "$WORK/$id.csr" "$WORK/$id.csr.pem" || fail "csr $id printed no CSR"
		openssl req -in "$WORK/$id.csr.pem" -verify -noout 2>/dev/null || fail "CSR of $id does not verify"
		testca_issue "$WORK/$id.csr" "$WORK/$id.chain.pem"
		assert_ok ctl import-cert "$id" "$WORK/$id.chain.pem"
		identity_pubkey "$id" "$WORK/$id.pub.pem"
		cmp -s "$WORK/$id.pub.pem" <(cert_pubkey "$WORK/$id.chain.pem" /dev/stdout) ||
			fail "cert $id does not print the imported certificate"
	done

	tls=$tag-tls
	any=$tag-any
	for s in $schemes; do
		case "$(scheme_hash "$s")" in sha384) hl=48 ;; sha512) hl=64 ;; *) hl=32 ;; esac
		make_cv13 "$WORK/cv" "$hl"
		sign_verify "$tls" "$s" "$WORK/cv" "$WORK/$tls.pub.pem"
		for m in msg-text msg-random msg-empty; do
			sign_verify "$any" "$s" "$WORK/$m" "$WORK/$any.pub.pem"
		done
		sign_verify "$any" "$s" "$WORK/msg-random" "$WORK/$any.pub.pem" --digest
	done
	# TLS 1.2 pairs any ECDSA hash with any curve: the agent cuts the hash to the curve.
	for s in $others; do
		sign_verify "$any" "$s" "$WORK/msg-text" "$WORK/$any.pub.pem"
	done
	for s in $(wrong_schemes "$tag"); do
		assert_fails ctl sign "$any" --scheme "$s" --in "$WORK/msg-text" --out "$WORK/sig.w"
	done

	# The verification can fail: a flipped byte, another message.
	first=${schemes%% *}
	make_cv13 "$WORK/cv" 32
	ctl sign "$tls" --scheme "$first" --in "$WORK/cv" --out "$WORK/sig.good" || fail "sign failed"
	verify_sig "$WORK/$tls.pub.pem" "$first" "$WORK/cv" "$WORK/sig.good" || fail "good signature does not verify"
	flip_last_byte "$WORK/sig.good" "$WORK/sig.bad"
	if verify_sig "$WORK/$tls.pub.pem" "$first" "$WORK/cv" "$WORK/sig.bad"; then
		fail "$tls: a signature with a flipped byte verifies"
	fi
	make_cv13 "$WORK/cv-other" 32
	if verify_sig "$WORK/$tls.pub.pem" "$first" "$WORK/cv-other" "$WORK/sig.good"; then
		fail "$tls: signature verifies over a different message"
	fi

	# The key the TPM made is what the agent promises.
	attrs=$(attrs_of "$TPM_KEYS/$tls.pem")
	for a in sign fixedtpm fixedparent sensitivedataorigin userwithauth noda; do
		case "|$attrs|" in *"|$a|"*) ;; *) fail "$tls: key attributes '$attrs' lack $a" ;; esac
	done
	for a in decrypt restricted; do
		case "|$attrs|" in *"|$a|"*) fail "$tls: key attributes '$attrs' include $a" ;; esac
	done
	log "$tag: key attributes $attrs"
done <<<"$TYPES"

# Eight keys, three object slots: four clients at once, each on two identities of
# different types, 10 signatures each; every one must verify.
make_cv13 "$WORK/cv" 32
pids=()
for c in p256 p384 rsa2048 rsa3072; do
	(
		case "$c" in p*) s=ecdsa_secp256r1_sha256 ;; *) s=rsa_pss_rsae_sha256 ;; esac
		for i in $(seq 1 10); do
			for id in "$c-tls" "$c-any"; do
				ctl sign "$id" --scheme "$s" --in "$WORK/cv" --out "$WORK/par.$id.$i" ||
					exit 1
				verify_sig "$WORK/$id.pub.pem" "$s" "$WORK/cv" "$WORK/par.$id.$i" || exit 2
			done
		done
	) 2>"$WORK/par.$c.err" &
	pids+=($!)
done
for i in "${!pids[@]}"; do
	rc=0
	wait "${pids[$i]}" || rc=$?
	[ "$rc" -eq 0 ] || fail "parallel client $i failed (exit $rc): $(cat "$WORK"/par.*.err)"
done
log "80 signatures by 4 parallel clients over 8 keys verified"

assert_ok ctl status
assert_match "$LAST_OUT" 'keystore tpm' "status"
assert_not_contains "$LAST_OUT" "not reachable" "status"

agent_stop
# The agent flushed what it loaded: nothing stays in the TPM's object slots.
assert_eq "$(tpm_tools tpm2_getcap handles-transient | wc -l)" 0 "transient objects left after agent_stop"
swtpm_stop
log "PASS"
