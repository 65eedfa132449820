/* TLS SignatureScheme table: what each scheme means for a key and a hash. */
#ifndef MTLS_COMMON_SCHEME_H
#define MTLS_COMMON_SCHEME_H

#include <stddef.h>
#include <stdint.h>

enum sig_pad { SIG_PAD_NONE = 0, SIG_PAD_PKCS1 = 1, SIG_PAD_PSS = 2 };

/* The hashes the agent signs with: an index into the digest table. */
enum scheme_hash { SCHEME_SHA256 = 0, SCHEME_SHA384 = 1, SCHEME_SHA512 = 2, SCHEME_N_HASHES };

/*
 * One row per digest: every name the provider, the engine, the PKCS#11 module
 * and the keystores use for it. PKCS#11 values are CK_ULONGs (the header is
 * p11-kit's; this one does not need it). TPM2_ALG ids stay in ks-tpm2.c,
 * indexed by id, so common/ does not depend on tpm2-tss.
 */
struct scheme_md {
	enum scheme_hash id;
	const char *name;	 /* OpenSSL's name: "SHA256" */
	const char *aliases[5];	 /* as OpenSSL callers spell it (compare ignoring case) */
	int nid;		 /* NID_sha256 */
	size_t len;		 /* digest length in bytes; also the PSS salt length */
	unsigned long ckm;	 /* CKM_SHA256: the PKCS#11 digest, PSS hashAlg */
	unsigned long ckg_mgf1;	 /* CKG_MGF1_SHA256: the PSS mask generation function */
	uint8_t digestinfo[19];	 /* DER DigestInfo up to the hash value (PKCS#1 v1.5) */
	uint8_t ecdsa_algid[12]; /* DER AlgorithmIdentifier, ecdsa-with-SHA256/384/512 */
	uint8_t pkcs1_algid[15]; /* DER AlgorithmIdentifier, sha{256,384,512}WithRSAEncryption */
};

/* NULL when the agent does not sign with that digest. */
const struct scheme_md *scheme_md_at(size_t i); /* iteration; NULL past the end */
const struct scheme_md *scheme_md_by_name(const char *name);
const struct scheme_md *scheme_md_by_nid(int nid);
const struct scheme_md *scheme_md_by_len(size_t len);
const struct scheme_md *scheme_md_by_ckm(unsigned long ckm);

struct scheme {
	uint16_t code;	  /* TLS SignatureScheme */
	const char *name; /* "ecdsa_secp256r1_sha256" */
	int key_type;	  /* MTLS_AGENT_KEY_EC / _RSA / _ED25519 */
	int curve_nid;	  /* TLS 1.3 curve binding for ECDSA (NID_undef otherwise); informative */
	int hash_nid;	  /* NID_sha256 ...; NID_undef for Ed25519 (signs the message) */
	size_t hash_len;  /* 32/48/64; 0 for Ed25519 */
	int pad;	  /* enum sig_pad for RSA */
	const struct scheme_md *md; /* the digest row (hash_nid, hash_len); NULL for Ed25519 */
	/* PKCS#11: the mechanism that hashes and signs the message with this scheme
	 * (CKM_ECDSA_SHA256 ...), its name for messages, and the one that signs what
	 * the agent computed: a digest (CKM_ECDSA, CKM_RSA_PKCS_PSS), a DigestInfo
	 * (CKM_RSA_PKCS) or, for Ed25519, the message itself (CKM_EDDSA). */
	unsigned long ckm;
	const char *ckm_name;
	unsigned long ckm_raw;
	const char *ckm_raw_name;
};

/* NULL when the code is not one the agent knows. */
const struct scheme *scheme_by_code(uint16_t code);
const struct scheme *scheme_by_name(const char *name);
/* The scheme whose message mechanism (ckm) is this one; NULL for others. */
const struct scheme *scheme_by_ckm(unsigned long ckm);
/* Table iteration: returns NULL past the end. */
const struct scheme *scheme_at(size_t i);

/*
 * The scheme a key of key_type signs a digest with, under padding pad
 * (SIG_PAD_NONE for ECDSA and Ed25519). The digest is named by hash_nid
 * (NID_sha256 ...) or, with hash_nid NID_undef (0), by its length hash_len.
 * ECDSA takes the scheme of the matching hash whatever the curve: the agent
 * accepts any ECDSA scheme with any EC key. NULL when there is none. The
 * provider and the engine map OpenSSL's requests to codes through this.
 */
const struct scheme *scheme_for_digest(int key_type, int pad, int hash_nid, size_t hash_len);

/*
 * Whether a key of this type/size can sign with the scheme. ECDSA schemes
 * are usable by any EC key (TLS 1.2 pairs hash and algorithm freely); RSA-PSS
 * needs a modulus of at least 2*hash_len+2 bytes.
 */
int scheme_fits_key(const struct scheme *s, int key_type, unsigned key_bits);

/* Hashes msg with the scheme's hash into out (>= hash_len). Returns 0 or -1. */
int scheme_hash(const struct scheme *s, const uint8_t *msg, size_t len, uint8_t *out);

#endif
