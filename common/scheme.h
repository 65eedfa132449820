/* TLS SignatureScheme table: what each scheme means for a key and a hash. */
#ifndef MTLS_COMMON_SCHEME_H
#define MTLS_COMMON_SCHEME_H

#include <stddef.h>
#include <stdint.h>

enum sig_pad { SIG_PAD_NONE = 0, SIG_PAD_PKCS1 = 1, SIG_PAD_PSS = 2 };

struct scheme {
	uint16_t code;       /* TLS SignatureScheme */
	const char *name;    /* "ecdsa_secp256r1_sha256" */
	int key_type;        /* MTLS_AGENT_KEY_EC / _RSA / _ED25519 */
	int curve_nid;       /* TLS 1.3 curve binding for ECDSA (NID_undef otherwise); informative */
	int hash_nid;        /* NID_sha256 ...; NID_undef for Ed25519 (signs the message) */
	size_t hash_len;     /* 32/48/64; 0 for Ed25519 */
	int pad;             /* enum sig_pad for RSA */
};

/* NULL when the code is not one the agent knows. */
const struct scheme *scheme_by_code(uint16_t code);
const struct scheme *scheme_by_name(const char *name);
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
