/*
 * Enrollers: one interface in front of the protocols that obtain a
 * certificate from a CA (CMP with OpenSSL's client, EST with libcurl).
 *
 * The renewal engine (renew/renew.c) hands an enroller the keys as
 * EVP_PKEYs whose signing happens inside the keystore (renew/renew-prov.c),
 * and callbacks. The enroller runs one transaction and, when the CA issued a
 * certificate, calls stage() with the chain: stage() verifies it and keeps it
 * aside, serving nothing new yet (for CMP this is inside the certConf
 * callback, so a refused certificate is answered with a negative
 * confirmation). Once the CA has acknowledged it (CMP: pkiConf after our
 * certConf, or implicit confirmation; EST: the answer itself), the enroller
 * calls install(), which makes it the identity's certificate. An enroller
 * never installs anything itself.
 */
#ifndef MTLS_AGENT_ENROLL_H
#define MTLS_AGENT_ENROLL_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

/* How a transaction ended; the scheduler's reaction depends on it. */
enum enroll_outcome {
	ENROLL_OK = 0,
	ENROLL_TRANSIENT,      /* network error, timeout, HTTP 5xx, garbage: retry with backoff */
	ENROLL_WAIT,	       /* the CA asked to come back later: retry_after is set */
	ENROLL_REJECTED,       /* the CA refused the request (PKIStatus rejection, HTTP 4xx) */
	ENROLL_NOT_AUTHORIZED, /* our credential was not accepted (expired, unknown, 401/403) */
	ENROLL_BAD_CERT,       /* the CA answered with a certificate commit() refused */
	ENROLL_LOCAL,	       /* a local problem: configuration, keystore, files, memory */
};
const char *enroll_outcome_name(int outcome);

enum enroll_kind {
	ENROLL_RENEW = 0, /* CMP KUR / EST simplereenroll, authenticated by the current key */
	ENROLL_BOOTSTRAP, /* CMP IR / EST simpleenroll, authenticated by the bootstrap credential */
};

/* Confirmation steps reported through progress() (CMP only). */
enum enroll_step {
	ENROLL_STEP_CONFIRMING = 1, /* certConf is about to leave: the CA may confirm from now on */
	ENROLL_STEP_CONFIRMED,	    /* pkiConf arrived (or implicit confirmation): install now */
};

struct enroll_request {
	int kind;		/* enum enroll_kind */
	const char *url;	/* ca-url: CMP http(s)://host:port/path, EST
				   https://host/.well-known/est[/label] */
	const char *trust_file; /* ca-trust: PEM trust anchors (CA responses, TLS server, chain) */
	OSSL_LIB_CTX *libctx;	/* the library context the keys live in */
	unsigned timeout_s;	/* bound for the whole transaction, polling included */

	/* ENROLL_RENEW: the credential being renewed (key in the keystore, chain leaf first). */
	EVP_PKEY *cur_key;
	STACK_OF(X509) * cur_chain;

	/*
	 * ENROLL_RENEW with renew-auth (EST): the TLS client key and chain of simplereenroll
	 * instead of cur_key. NULL: the current credential authenticates itself. (CMP: a KUR
	 * must be signed by the certificate it updates, so renew-auth makes the renewal an
	 * ENROLL_BOOTSTRAP IR with boot_key; renew/renew.c.)
	 */
	EVP_PKEY *auth_key;
	STACK_OF(X509) * auth_chain;

	/* The key to certify (proof of possession, CSR). Equal to cur_key when not rotating. */
	EVP_PKEY *new_key;
	const X509_NAME *subject; /* the subject to request */
	const uint8_t *csr_der;	  /* PKCS#10 request signed by new_key (EST, CMP P10CR) */
	size_t csr_len;

	/* ENROLL_BOOTSTRAP credentials: exactly one of the three is set. */
	const char *secret_ref; /* CMP: PBM reference value (sender KID) ... */
	const uint8_t *secret;	/* ... and the shared secret */
	size_t secret_len;
	const char *basic_user; /* EST: HTTP basic authentication */
	const char *basic_pass;
	EVP_PKEY *boot_key; /* a manufacturer identity's key and chain */
	STACK_OF(X509) * boot_chain;

	/*
	 * Who may answer for the CA (CMP, signature-protected responses; the
	 * signer must chain to trust_file in any case): a certificate in
	 * signer_file (ca-signer), one with extendedKeyUsage id-kp-cmcRA or
	 * id-kp-cmcCA (RFC 6402; RFC 9483 3.5), or the issuer of own_chain's leaf
	 * (the identity's own certificate, even expired or during bootstrap; may
	 * be NULL). signer_name (ca-sender), if set, must be the sender field of
	 * every response.
	 */
	const char *signer_file;
	const X509_NAME *signer_name;
	STACK_OF(X509) * own_chain;
	/*
	 * CMP: ask for implicit confirmation (RFC 9483 4.1.1): a CA that grants it
	 * takes the certificate as confirmed with no certConf, so install() follows
	 * the answer at once, and a certificate the agent refuses cannot be
	 * refused to the CA. Otherwise certConf/pkiConf.
	 */
	int implicit_confirm;

	/*
	 * Called once with the issued chain (leaf first, then whatever other
	 * certificates the CA sent or we hold). Returns 0 when the certificate was
	 * verified and staged (recorded, not yet served); otherwise writes one
	 * line to err and the enroller reports ENROLL_BAD_CERT (or ENROLL_LOCAL
	 * when local is set).
	 */
	int (*stage)(void *arg, STACK_OF(X509) * chain, int *local, char *err, size_t errlen);
	/* CMP: enum enroll_step as the confirmation goes; may be NULL. */
	void (*progress)(void *arg, int step);
	/* Makes the staged certificate current. 0, or -1 with one line in err (ENROLL_LOCAL). */
	int (*install)(void *arg, char *err, size_t errlen);
	/*
	 * CMP IR: called after install() with the ip's caPubs, if any (the
	 * callee judges them; renew/cacerts.c). May be NULL.
	 */
	void (*ca_pubs)(void *arg, STACK_OF(X509) * certs);
	void *commit_arg;
};

struct enroll_result {
	int outcome;	  /* enum enroll_outcome */
	long retry_after; /* seconds the CA asked us to wait (checkAfter, Retry-After), -1 if none
			   */
	char msg[512];	  /* one line for the log and status: what happened */
};

/*
 * The agent is stopping: transfers in progress end at once (libcurl's
 * progress callback checks it). Set by renew_stop().
 */
void enroll_set_stopping(int stopping);
/* For CURLOPT_XFERINFOFUNCTION: non-zero aborts the transfer. */
int enroll_curl_progress(void *arg, long long dltotal, long long dlnow, long long ultotal,
			 long long ulnow);

/* Run one transaction. Return 0 on ENROLL_OK, -1 otherwise; res is always filled. */
int enroll_cmp(const struct enroll_request *req, struct enroll_result *res);
int enroll_est(const struct enroll_request *req, struct enroll_result *res);

/*
 * CMP root CA key update (RFC 9480 4.3): a genm with id-it-rootCaCert (value
 * old_root, or none when NULL), protected like req's KUR (req->kind must be
 * ENROLL_RENEW), its genp verified like any response. 1: the CA sent a
 * RootCaKeyUpdateContent, *new_with_new set and *new_with_old when present
 * (caller frees; not yet judged); 0: no update offered or no such service (a
 * CA without it answers with an error: err says what, for the debug log);
 * -1: a bad answer (unauthorized signer, bad protection, undecodable
 * content), err says why. err is escaped for the log (it may quote the CA).
 */
int enroll_cmp_root_update(const struct enroll_request *req, X509 *old_root, X509 **new_with_new,
			   X509 **new_with_old, char *err, size_t errlen);

#endif
