/*
 * libmtls-agent: client side of the mtls-agent protocol.
 *
 * An application connects to the agent's Unix socket, lists the identities it
 * may use, fetches certificate chains and asks the agent to sign TLS
 * handshake content with a key that never leaves the hardware.
 *
 * All functions return MTLS_AGENT_OK (0) or a negative mtls_agent_err code.
 * A handle may be shared between threads: requests on one handle are
 * serialised. After a failure, mtls_agent_last_error() gives a one-line
 * description (the agent's own message when it refused), valid in the
 * calling thread until its next call into the library.
 */
#ifndef MTLS_AGENT_CLIENT_H
#define MTLS_AGENT_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes. These values travel on the wire (negated) and never change. */
enum mtls_agent_err {
	MTLS_AGENT_OK = 0,
	MTLS_AGENT_ERR_INTERNAL = -1,	      /* internal error */
	MTLS_AGENT_ERR_NOMEM = -2,	      /* out of memory */
	MTLS_AGENT_ERR_TRUNCATED = -3,	      /* message incomplete */
	MTLS_AGENT_ERR_TOO_LARGE = -4,	      /* length over the limit */
	MTLS_AGENT_ERR_BAD_MESSAGE = -5,      /* malformed message */
	MTLS_AGENT_ERR_UNSUPPORTED = -6,      /* unknown operation or version */
	MTLS_AGENT_ERR_NOT_FOUND = -7,	      /* no such identity */
	MTLS_AGENT_ERR_DENIED = -8,	      /* access denied for this caller */
	MTLS_AGENT_ERR_POLICY = -9,	      /* refused by the identity's sign-policy */
	MTLS_AGENT_ERR_SCHEME = -10,	      /* signature scheme not usable with this key */
	MTLS_AGENT_ERR_KEYSTORE = -11,	      /* keystore operation failed */
	MTLS_AGENT_ERR_KEY_UNAVAILABLE = -12, /* key or token not available */
	MTLS_AGENT_ERR_PIN = -13,	      /* token login failed (wrong or locked PIN) */
	MTLS_AGENT_ERR_CERT = -14,	      /* certificate rejected */
	MTLS_AGENT_ERR_CONFIG = -15,	      /* configuration error */
	MTLS_AGENT_ERR_IO = -16,	      /* system error */
	MTLS_AGENT_ERR_CONNECT = -17,	      /* agent not reachable */
	MTLS_AGENT_ERR_PROTOCOL = -18,	      /* unexpected reply from the agent */
	MTLS_AGENT_ERR_EXISTS = -19,	      /* object already exists */
	MTLS_AGENT_ERR_BUSY = -20,	      /* too many connections or requests */
	MTLS_AGENT_ERR_INVALID_ARG = -21,     /* invalid argument */
	MTLS_AGENT_ERR_KEY_GONE = -22,	      /* the requested key generation is no longer held */
	MTLS_AGENT_ERR_RENEWAL = -23,	      /* renewal failed (CA unreachable, refused, ...) */
};
#define MTLS_AGENT_ERR_MIN (-23)

/* TLS SignatureScheme code points (RFC 8446 section 4.2.3). */
enum mtls_agent_scheme {
	MTLS_AGENT_RSA_PKCS1_SHA256 = 0x0401,
	MTLS_AGENT_RSA_PKCS1_SHA384 = 0x0501,
	MTLS_AGENT_RSA_PKCS1_SHA512 = 0x0601,
	MTLS_AGENT_ECDSA_SECP256R1_SHA256 = 0x0403,
	MTLS_AGENT_ECDSA_SECP384R1_SHA384 = 0x0503,
	MTLS_AGENT_ECDSA_SECP521R1_SHA512 = 0x0603,
	MTLS_AGENT_RSA_PSS_RSAE_SHA256 = 0x0804,
	MTLS_AGENT_RSA_PSS_RSAE_SHA384 = 0x0805,
	MTLS_AGENT_RSA_PSS_RSAE_SHA512 = 0x0806,
	MTLS_AGENT_ED25519 = 0x0807,
};

enum mtls_agent_key_type {
	MTLS_AGENT_KEY_NONE = 0,
	MTLS_AGENT_KEY_EC = 1,
	MTLS_AGENT_KEY_RSA = 2,
	MTLS_AGENT_KEY_ED25519 = 3,
};

/* Flags for mtls_agent_sign(). */
#define MTLS_AGENT_SIGN_DIGEST 0x01 /* data is a pre-computed hash (sign-policy digest or any) */

/* Length of the key-generation selector: SHA-256 of the DER SubjectPublicKeyInfo. */
#define MTLS_AGENT_SPKI_HASH_LEN 32

typedef struct mtls_agent mtls_agent;

struct mtls_agent_cert {
	uint8_t *der;
	size_t len;
};

struct mtls_agent_identity {
	char *name;
	int key_type; /* enum mtls_agent_key_type; NONE when no key yet */
	unsigned key_bits;
	uint8_t *spki; /* DER SubjectPublicKeyInfo of the current key */
	size_t spki_len;
	uint16_t *schemes; /* schemes the agent will sign with for this key */
	size_t n_schemes;
	uint64_t not_after; /* of the leaf certificate, seconds since the epoch; 0 = none */
	struct mtls_agent_cert *chain; /* leaf first */
	size_t chain_len;
};

/*
 * Connects to the agent at socket_path, or, when NULL, at $MTLS_AGENT_SOCK
 * (read with secure_getenv: ignored in setuid/setgid programs), else /run/mtls-agent/agent.sock,
 * and exchanges versions. On success *out owns a new handle. MTLS_AGENT_ERR_BUSY: the agent refused
 * the connection (too many open; mtls_agent_last_error() says which limit). MTLS_AGENT_ERR_DENIED:
 * this user may not open the socket ("permission denied on SOCKET (is USER in group G?)").
 * MTLS_AGENT_ERR_CONNECT: no agent, or a timeout (see mtls_agent_set_timeouts()).
 */
int mtls_agent_connect(const char *socket_path, mtls_agent **out);
void mtls_agent_close(mtls_agent *agent);
/* The path the handle connects to (owned by the handle). */
const char *mtls_agent_socket_path(const mtls_agent *agent);

/*
 * How long the handle waits, in milliseconds (0: without limit; at most
 * 86,400,000). connect_ms bounds connect() while the agent's listen queue is
 * full (agent stopped or overloaded); reply_ms bounds each request, from
 * sending it to the whole reply. After a timeout the call fails with
 * MTLS_AGENT_ERR_CONNECT and the next call reconnects. Applies to the calls
 * and reconnections that follow, KEYGEN and RENEW included.
 *
 * Defaults, taken by mtls_agent_connect(): MTLS_AGENT_CONNECT_TIMEOUT and
 * MTLS_AGENT_TIMEOUT from the environment, in seconds ("2", "0.5"; ignored in
 * setuid programs), else 10 s to connect and 30 s per reply; without
 * MTLS_AGENT_TIMEOUT, KEYGEN and RENEW wait without limit (a key generation
 * in a TPM or a transaction with a CA can take minutes; the agent bounds
 * those itself).
 */
int mtls_agent_set_timeouts(mtls_agent *agent, unsigned connect_ms, unsigned reply_ms);

/* Identities this caller may use. The array and its contents are the caller's. */
int mtls_agent_list(mtls_agent *agent, struct mtls_agent_identity **ids, size_t *n_ids);
/* One identity by name. */
int mtls_agent_get_identity(mtls_agent *agent, const char *name, struct mtls_agent_identity **id);
void mtls_agent_identity_free(struct mtls_agent_identity *id);
void mtls_agent_identities_free(struct mtls_agent_identity *ids, size_t n_ids);

/* Certificate chain (leaf first) of an identity. */
int mtls_agent_get_chain(mtls_agent *agent, const char *name, struct mtls_agent_cert **chain,
			 size_t *chain_len);
void mtls_agent_chain_free(struct mtls_agent_cert *chain, size_t chain_len);

/*
 * Signs data with identity `name` using TLS signature scheme `scheme`.
 * spki_hash, if not NULL, names the key generation the caller loaded
 * (MTLS_AGENT_SPKI_HASH_LEN bytes); NULL means the current key.
 * The signature is returned as TLS carries it (DER ECDSA-Sig-Value, raw
 * RSA/Ed25519 signature) in *sig, which the caller frees with free().
 */
int mtls_agent_sign(mtls_agent *agent, const char *name, uint16_t scheme, unsigned flags,
		    const uint8_t *spki_hash, const uint8_t *data, size_t data_len, uint8_t **sig,
		    size_t *sig_len);

/* Static description of an error code. */
const char *mtls_agent_strerror(int err);
/* Description of the last failure in this thread (never NULL). */
const char *mtls_agent_last_error(void);

/* Scheme names as TLS spells them ("ecdsa_secp256r1_sha256"); NULL / 0 when unknown. */
const char *mtls_agent_scheme_name(uint16_t scheme);
uint16_t mtls_agent_scheme_from_name(const char *name);

/* Agent and identity status (STATUS request). */
struct mtls_agent_status_field {
	char *key;
	char *value;
};
struct mtls_agent_status_record {
	char *kind; /* "keystore" or "identity" */
	char *name;
	struct mtls_agent_status_field *fields;
	size_t n_fields;
};
struct mtls_agent_status {
	char *agent_version;
	uint64_t uptime_seconds;
	int caller_is_admin;
	struct mtls_agent_status_record *records;
	size_t n_records;
};
int mtls_agent_status(mtls_agent *agent, struct mtls_agent_status **status);
void mtls_agent_status_free(struct mtls_agent_status *status);

/*
 * The agent's metrics in the Prometheus text exposition format, as a
 * NUL-terminated string (caller frees with free()). Administrators get
 * every series; other callers the agent-wide ones and those of the
 * identities they may use.
 */
int mtls_agent_metrics(mtls_agent *agent, char **text);

/*
 * Administrator operations (the caller must be in admin-users/admin-groups).
 * key_type: "ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519".
 * Outputs are the caller's to free().
 */
int mtls_agent_keygen(mtls_agent *agent, const char *name, const char *key_type, uint8_t **spki,
		      size_t *spki_len);
int mtls_agent_csr(mtls_agent *agent, const char *name, const char *subject,
		   const char *const *sans, size_t n_sans, uint8_t **csr_der, size_t *csr_len);
/* data: PEM chain (leaf first) or one DER certificate. */
int mtls_agent_import_cert(mtls_agent *agent, const char *name, const uint8_t *data, size_t len,
			   uint64_t *not_after);
int mtls_agent_reload(mtls_agent *agent);
/*
 * Renews the identity's certificate now (renew = cmp | est) and waits for the
 * outcome. On success *not_after is the new certificate's; *message (if not
 * NULL; the caller frees it) says what happened. On failure
 * mtls_agent_last_error() does.
 */
int mtls_agent_renew(mtls_agent *agent, const char *name, uint64_t *not_after, char **message);

#ifdef __cplusplus
}
#endif
#endif
