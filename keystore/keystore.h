/*
 * Keystore: where private keys live (a PKCS#11 token or a TPM 2.0). The
 * agent talks to every backend through this interface.
 *
 * All functions return 0 or a negative MTLS_AGENT_ERR_* code; when a
 * function takes (err, errlen) it writes one human-readable line there on
 * failure (never a secret). Every function is safe to call from several
 * threads at once; ks_sign calls on one keystore run in parallel up to the
 * keystore's session count (PKCS#11) or one at a time in arrival order (TPM).
 */
#ifndef MTLS_KEYSTORE_H
#define MTLS_KEYSTORE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "common/keytype.h"
#include "common/scheme.h"

#define KS_MAX_ID 64

struct keystore;

/* One private key (one "generation" of an identity's key). Owned by its keystore. */
struct ks_key {
	struct keystore *ks;
	int type;      /* MTLS_AGENT_KEY_EC / _RSA / _ED25519 */
	unsigned bits; /* modulus bits or curve bits */
	int curve_nid; /* EC: NID of the curve; otherwise NID_undef */
	EVP_PKEY *pub; /* public half (libcrypto default provider) */
	uint8_t *spki; /* DER SubjectPublicKeyInfo */
	size_t spki_len;
	uint8_t spki_hash[32]; /* SHA-256 of spki: the wire's key-generation selector */
	uint8_t id[KS_MAX_ID]; /* backend's stable identifier (PKCS#11: CKA_ID) */
	size_t id_len;
	char *label;	/* PKCS#11: CKA_LABEL; may be NULL */
	unsigned flags; /* KS_KEY_NO_*: what the backend found this key cannot do */
	void *backend;	/* backend-private data */
};

/*
 * ks_key.flags, set by a backend (possibly after the key was first handed
 * out: read them with ks_key_fits_scheme()). A TPM that pads RSA-PSS with a
 * salt other than the hash length cannot make TLS 1.3 signatures; a TPM
 * without SHA-384/512 cannot make RSA signatures with that hash.
 */
#define KS_KEY_NO_PSS 0x1u
#define KS_KEY_NO_SHA384 0x2u
#define KS_KEY_NO_SHA512 0x4u

/* What [keystore "NAME"] says; strings are borrowed for the duration of ks_open. */
struct ks_params {
	const char *name;
	const char *type;     /* "pkcs11" */
	const char *module;   /* PKCS#11 module path */
	const char *token;    /* PKCS#11 URI (RFC 7512) or a bare token label */
	const char *pin_file; /* may be NULL when the token needs no login */
	unsigned sessions;    /* size of the session pool (>= 1) */
	const char *tcti;     /* tpm2: TCTI configuration string ("device:/dev/tpmrm0") */
	const char *srk;      /* tpm2: "handle:0x81000001" (persistent SRK), NULL: TCG template */
};

/* Key types for ks_keygen: enum ks_keygen_type, common/keytype.h. */

/*
 * Opens a keystore. Fails only for errors an operator must fix in the
 * configuration (module cannot be loaded, bad token URI, unreadable or
 * too-open PIN file). A token that is absent, or a login that fails, leaves
 * the keystore open in an error state reported by ks_state(); it is retried
 * on the next use, except a wrong PIN, which is never retried with the
 * same PIN.
 */
int ks_open(const struct ks_params *params, struct keystore **out, char *err, size_t errlen);
/* Closes the keystore and frees every ks_key it handed out. */
void ks_close(struct keystore *ks);
/* True when both keystores were opened from identical parameters (reload reuses them). */
int ks_same_params(const struct keystore *ks, const struct ks_params *params);

/*
 * All private keys matching key_ref (PKCS#11: a URI naming object= and/or
 * id=; tpm2: a TSS2 PRIVATE KEY file, one key per PEM block, or
 * handle:0x81xxxxxx), each a generation of one identity's key. *keys is a new array the
 * caller frees with free(); the keys stay owned by the keystore and stay
 * valid until ks_close. Asking again returns the same ks_key pointers for
 * the same keys. Zero keys is success with *n = 0.
 */
int ks_find_keys(struct keystore *ks, const char *key_ref, struct ks_key ***keys, size_t *n,
		 char *err, size_t errlen);

/*
 * Creates a new key pair inside the keystore that matches key_ref (PKCS#11:
 * CKA_LABEL from object=, a fresh random CKA_ID unless the URI fixes id=).
 * Private key: token, private, sensitive, non-extractable, sign only (no
 * decrypt, unwrap, derive, sign-recover). Fails with MTLS_AGENT_ERR_EXISTS if
 * key_ref fixes an id that is already used. tpm2: a child of the SRK,
 * fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, noDA, sign only,
 * empty auth; its blob is appended to the key file (written atomically), or
 * it is made persistent at the handle (MTLS_AGENT_ERR_EXISTS if taken).
 */
int ks_keygen(struct keystore *ks, const char *key_ref, int gen_type, struct ks_key **out,
	      char *err, size_t errlen);

/*
 * Signs with key. For ECDSA and RSA, `in` is the digest (scheme->hash_len
 * bytes) computed by the caller; for Ed25519 it is the whole message. RSA
 * padding is PKCS#1 v1.5 (DigestInfo built here) or PSS with salt = hash
 * length, MGF1 with the same hash. *sig (caller frees) is in TLS form: DER
 * ECDSA-Sig-Value, raw RSA/Ed25519 signature. Re-establishes sessions and
 * re-finds the key by its id after a token removal or session loss, then
 * retries once.
 */
int ks_sign(struct keystore *ks, struct ks_key *key, const struct scheme *scheme, const uint8_t *in,
	    size_t inlen, uint8_t **sig, size_t *siglen, char *err, size_t errlen);

/* One line: "ok", or what is wrong ("token 'gw' not present", "PIN locked", ...). */
void ks_state(struct keystore *ks, char *buf, size_t len);
const char *ks_name(const struct keystore *ks);
const char *ks_type(const struct keystore *ks);
uint64_t ks_reconnects(struct keystore *ks);

/* Backend vtable; keystore.c routes the functions above through it. */
struct ks_backend {
	const char *type;
	/*
	 * How many keys one key reference can hold (the current one, older ones kept
	 * until their certificates expire, keys waiting for a certificate); keygen
	 * refuses beyond it. 0: no limit of the backend's own.
	 */
	size_t max_generations;
	int (*open)(const struct ks_params *params, struct keystore **out, char *err,
		    size_t errlen);
	void (*close)(struct keystore *ks);
	int (*same_params)(const struct keystore *ks, const struct ks_params *params);
	int (*find_keys)(struct keystore *ks, const char *key_ref, struct ks_key ***keys, size_t *n,
			 char *err, size_t errlen);
	int (*keygen)(struct keystore *ks, const char *key_ref, int gen_type, struct ks_key **out,
		      char *err, size_t errlen);
	int (*sign)(struct keystore *ks, struct ks_key *key, const struct scheme *scheme,
		    const uint8_t *in, size_t inlen, uint8_t **sig, size_t *siglen, char *err,
		    size_t errlen);
	void (*state)(struct keystore *ks, char *buf, size_t len);
	/* Optional (NULL: nothing to do); see ks_activate(). */
	int (*activate)(struct keystore *ks, struct ks_key *key, char *err, size_t errlen);
	/* See ks_delete(). */
	int (*delete_key)(struct keystore *ks, struct ks_key *key, char *err, size_t errlen);
	/* Optional (NULL: nothing can be half made); see ks_purge_half(). */
	int (*purge_half)(struct keystore *ks, const char *key_ref, unsigned *purged, char *err,
			  size_t errlen);
};

/* Every backend's keystore struct starts with this header. */
struct keystore {
	const struct ks_backend *backend;
	char *name;
	/* Sessions/connections lost and re-established (metrics); backends bump it. */
	atomic_uint_fast64_t reconnects;
};

extern const struct ks_backend ks_pkcs11_backend;
#ifdef HAVE_TPM2
extern const struct ks_backend ks_tpm2_backend;
#endif

/*
 * Helpers for backends. ks_key_set_public() fills type, bits, curve_nid,
 * spki, spki_hash from pub (taking ownership of pub). ks_ecdsa_raw_to_der()
 * turns an r||s signature into a DER ECDSA-Sig-Value.
 */
int ks_key_set_public(struct ks_key *key, EVP_PKEY *pub);
/* A public key of type alg ("EC", "RSA", "ED25519") from the parameters in bld, or NULL. */
EVP_PKEY *ks_pkey_fromdata(const char *alg, OSSL_PARAM_BLD *bld);
void ks_key_free_public(struct ks_key *key);
int ks_ecdsa_raw_to_der(const uint8_t *raw, size_t rawlen, uint8_t **der, size_t *derlen);

/*
 * Whether key can sign with scheme: scheme_fits_key() plus what the backend
 * found out about the key (KS_KEY_NO_*). Use this, not scheme_fits_key(), to
 * decide which schemes to offer and to accept.
 */
static inline int ks_key_fits_scheme(const struct ks_key *key, const struct scheme *s)
{
	unsigned flags = __atomic_load_n(&key->flags, __ATOMIC_RELAXED);

	if (!scheme_fits_key(s, key->type, key->bits))
		return 0;
	/* Only RSA schemes have a padding; ECDSA hashes are cut to the curve by the backend. */
	if (s->pad == SIG_PAD_PSS && (flags & KS_KEY_NO_PSS))
		return 0;
	if (s->pad != SIG_PAD_NONE && s->md->id == SCHEME_SHA384 && (flags & KS_KEY_NO_SHA384))
		return 0;
	if (s->pad != SIG_PAD_NONE && s->md->id == SCHEME_SHA512 && (flags & KS_KEY_NO_SHA512))
		return 0;
	return 1;
}

/*
 * Tells the keystore that key now has the identity's installed certificate
 * (call it before writing the certificate file). Backends whose key
 * reference holds several generations make key the one other programs see:
 * the tpm2 backend moves key's block to the front of its TSS2 PRIVATE KEY
 * file (what tpm2-openssl loads) and keeps every other generation in its
 * order: older keys go only through ks_delete, when their certificates have
 * expired. Idempotent. Returns 0 or a negative MTLS_AGENT_ERR_* code with a
 * line in err.
 */
static inline int ks_activate(struct keystore *ks, struct ks_key *key, char *err, size_t errlen)
{
	if (ks->backend->activate == NULL || key->ks != ks)
		return 0;
	return ks->backend->activate(ks, key, err, errlen);
}

/*
 * Removes a retired key generation from the keystore for good: PKCS#11
 * destroys the private key and the public key (and a certificate object, if
 * any) with the key's CKA_ID; tpm2 drops the key's block from its TSS2
 * PRIVATE KEY file (rewritten atomically) or evicts its persistent handle.
 * Afterwards ks_find_keys no longer returns it; the ks_key itself stays
 * allocated until ks_close and ks_sign with it fails with
 * MTLS_AGENT_ERR_KEY_UNAVAILABLE. Deleting a key that is already gone is
 * success. Returns 0 or a negative MTLS_AGENT_ERR_* code with a line in err.
 */
int ks_delete(struct keystore *ks, struct ks_key *key, char *err, size_t errlen);

/*
 * After a crash inside key generation: key_ref names exactly one key (PKCS#11: object= and
 * id=) that was being generated. If no private key with that label and id exists, the
 * objects left with them (a public key without its private key) are destroyed; a complete
 * key pair is left alone. *purged counts what was destroyed. Keystores whose key creation
 * is atomic (tpm2: a key file written at once) have nothing to do. Returns 0 or a negative
 * MTLS_AGENT_ERR_* code with a line in err.
 */
int ks_purge_half(struct keystore *ks, const char *key_ref, unsigned *purged, char *err,
		  size_t errlen);

#endif
