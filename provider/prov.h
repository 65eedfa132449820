/*
 * OpenSSL 3 provider "mtlsagent": private interfaces shared by its parts.
 *
 * The provider offers exactly STORE ("agent:NAME"), DECODER (key reference
 * file), KEYMGMT (EC, RSA, Ed25519) and SIGNATURE (ECDSA, RSA, one-shot EdDSA). Keys are references
 * to an agent identity: the private half stays in the agent, which signs every TLS
 * CertificateVerify over its Unix socket.
 */
#ifndef MTLS_PROVIDER_PROV_H
#define MTLS_PROVIDER_PROV_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/evp.h>

#include "mtls-agent/client.h"

#define MTLSA_PROV_NAME "mtlsagent"
#define MTLSA_PROPS "provider=" MTLSA_PROV_NAME

struct mtlsa_prov;

/*
 * How a provider instance reaches the agent. Two exist: the socket (the
 * application module, prov-socket.c, the only place that connects) and the
 * agent's own in-daemon transport for certificate renewal
 * (renew/renew-prov.c), which calls the keystore directly. The key
 * management and signature code sees only this interface, so the daemon links
 * it without the socket code or OSSL_provider_init.
 *
 * get_identity and sign return 0 or a negative MTLS_AGENT_ERR_* code with one
 * line in err. get_identity fills name and spki of a calloc'ed record (freed
 * with mtls_agent_identity_free). init (may be NULL) runs once when the
 * instance is created and returns 1 or 0; teardown (may be NULL) releases
 * what init and the calls acquired.
 */
struct mtlsa_transport {
	int key_files; /* offer the DECODER for key reference files */
	int (*init)(struct mtlsa_prov *prov);
	void (*teardown)(struct mtlsa_prov *prov);
	int (*get_identity)(struct mtlsa_prov *prov, const char *name,
			    struct mtls_agent_identity **id, char *err, size_t errlen);
	int (*sign)(struct mtlsa_prov *prov, const char *name, const uint8_t *spki_hash,
		    uint16_t scheme, unsigned flags, const uint8_t *data, size_t len, uint8_t **sig,
		    size_t *siglen, char *err, size_t errlen);
};

/*
 * Creates a provider instance reaching the agent through transport: the body
 * of OSSL_provider_init for both transports.
 */
int mtlsa_provider_init(const struct mtlsa_transport *transport, const OSSL_CORE_HANDLE *handle,
			const OSSL_DISPATCH *in, const OSSL_DISPATCH **out, void **provctx);

/*
 * Provider init function for an in-process instance using transport (set
 * before OSSL_PROVIDER_add_builtin()). That instance offers no DECODER.
 */
void mtlsa_set_internal_transport(const struct mtlsa_transport *transport);
int mtlsa_internal_provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
				 const OSSL_DISPATCH **out, void **provctx);

/*
 * A string parameter of the provider's openssl.cnf section, strdup'ed; NULL
 * if it is not set, empty, or there is no memory.
 */
char *mtlsa_config_param(const struct mtlsa_prov *prov, const char *name);

/* Per-provider-instance state (the provctx OpenSSL hands back to every call). */
struct mtlsa_prov {
	const struct mtlsa_transport *transport; /* never NULL */
	const OSSL_CORE_HANDLE *handle;
	/*
	 * A library context of our own holding only OpenSSL's default provider:
	 * the public halves of our keys live there, so they can never resolve to
	 * this provider's own key management.
	 */
	OSSL_LIB_CTX *libctx;
	/* The socket transport's state (prov-socket.c); unused by the in-daemon one. */
	char *socket;	      /* config parameter `socket`, NULL if not set */
	pthread_mutex_t lock; /* guards agent while it is created */
	mtls_agent *agent;    /* shared connection, created on first use */
	OSSL_FUNC_BIO_read_ex_fn *bio_read_ex;
	OSSL_FUNC_BIO_gets_fn *bio_gets;
};

/* Reason codes 1..22 are the agent's own error codes (negated), see prov.c. */
enum mtlsa_reason {
	MTLSA_R_BAD_KEYREF = 100,
	MTLSA_R_BAD_KEY,
	MTLSA_R_UNSUPPORTED_DIGEST,
	MTLSA_R_UNSUPPORTED_PADDING,
	MTLSA_R_UNSUPPORTED_SALTLEN,
	MTLSA_R_MGF1_MISMATCH,
	MTLSA_R_BUFFER_TOO_SMALL,
	MTLSA_R_BAD_URI,
	MTLSA_R_MESSAGE_TOO_LONG,
	MTLSA_R_NOT_INITIALISED,
	MTLSA_R_BAD_PARAMETER,
	MTLSA_R_OUT_OF_MEMORY,
	MTLSA_R_NO_KEY,
};

/*
 * A key: an agent identity plus the public key of the generation that was
 * loaded. Immutable once built and shared by reference count, so EVP_PKEYs
 * duplicated across threads all point at the same object.
 */
#define MTLSA_KEY_MAGIC 0x6d746b79u /* "mtky" */
struct mtlsa_key {
	uint32_t magic;
	int refs;		 /* atomic */
	struct mtlsa_prov *prov; /* its provider: agent connection and socket path */
	char *name;		 /* identity; NULL for an empty key from keymgmt new() */
	uint8_t *spki;		 /* DER SubjectPublicKeyInfo */
	size_t spki_len;
	uint8_t spki_hash[MTLS_AGENT_SPKI_HASH_LEN]; /* the SIGN key-generation selector */
	EVP_PKEY *pub;				     /* public half, in prov->libctx */
	int type;				     /* MTLS_AGENT_KEY_EC, _RSA or _ED25519 */
	int bits;
	int security_bits;
	size_t max_size; /* largest signature: DER ECDSA or the RSA modulus */
	char group[64];	 /* EC curve name, "" for RSA */
};

/* --- prov.c -------------------------------------------------------------- */

/* Puts an error with one of our reasons on OpenSSL's error queue. */
void mtlsa_raise(const struct mtlsa_prov *prov, const char *file, int line, const char *func,
		 int reason, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
#define MTLSA_RAISE(prov, reason, ...)                                                             \
	mtlsa_raise((prov), __FILE__, __LINE__, __func__, (reason), __VA_ARGS__)
/* Debug line on stderr when MTLS_AGENT_DEBUG is set; silent otherwise. */
void mtlsa_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* --- prov-keymgmt.c ------------------------------------------------------ */

extern const OSSL_DISPATCH mtlsa_keymgmt_ec_functions[];
extern const OSSL_DISPATCH mtlsa_keymgmt_rsa_functions[];
extern const OSSL_DISPATCH mtlsa_keymgmt_ed25519_functions[];

/*
 * A key for identity `name` with public key spki. Returns NULL after raising
 * an error (bad or unsupported public key, no memory).
 */
struct mtlsa_key *mtlsa_key_new(struct mtlsa_prov *prov, const char *name, const uint8_t *spki,
				size_t spki_len);
void mtlsa_key_up_ref(struct mtlsa_key *key);
void mtlsa_key_free(struct mtlsa_key *key);
/* "EC", "RSA" or "ED25519": the OSSL_OBJECT data type and keymgmt name of the key. */
const char *mtlsa_key_type_name(const struct mtlsa_key *key);

/*
 * The identity's current key from the agent, and with ident (if not NULL)
 * its record (certificate chain). Returns 0, or a negative MTLS_AGENT_ERR_*
 * code; with raise the error is on OpenSSL's queue, without it only in the
 * debug output.
 */
int mtlsa_key_from_agent(struct mtlsa_prov *prov, const char *name, int raise,
			 struct mtlsa_key **key, struct mtls_agent_identity **ident);

/*
 * Object references between our decoder/store and our keymgmt's load(): the
 * reference is the bytes of a struct mtlsa_key pointer, valid while the
 * caller holds its own count; load() takes one more.
 */
struct mtlsa_key *mtlsa_key_from_ref(const void *ref, size_t ref_size);

/* --- prov-signature.c ---------------------------------------------------- */

extern const OSSL_DISPATCH mtlsa_signature_ecdsa_functions[];
extern const OSSL_DISPATCH mtlsa_signature_rsa_functions[];
extern const OSSL_DISPATCH mtlsa_signature_ed25519_functions[];

/* --- prov-store.c -------------------------------------------------------- */

extern const OSSL_DISPATCH mtlsa_store_functions[];

/* --- prov-decoder.c ------------------------------------------------------ */

extern const OSSL_DISPATCH mtlsa_decoder_pem2der_functions[];
extern const OSSL_DISPATCH mtlsa_decoder_ec_functions[];
extern const OSSL_DISPATCH mtlsa_decoder_rsa_functions[];
extern const OSSL_DISPATCH mtlsa_decoder_ed25519_functions[];

#endif
