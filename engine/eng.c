/*
 * OpenSSL ENGINE "mtlsagent": the legacy route for tools that only know
 * --engine (curl --engine, mosquitto --tls-engine, openssl -engine).
 *
 * load_privkey returns a legacy EVP_PKEY that holds the real public key of an
 * agent identity (so SSL_CTX_check_private_key passes) and no private part.
 * Its private-key operations go to the agent as pre-hashed digests
 * (MTLS_AGENT_SIGN_DIGEST), which the agent signs only for identities with
 * sign-policy = digest or any:
 *
 *   EC       EC_KEY_METHOD sign / sign_sig            -> ECDSA scheme by digest length
 *   RSA      EVP_PKEY_METHOD sign (PSS and PKCS#1)    -> rsa_pss_rsae_* / rsa_pkcs1_*
 *            RSA_METHOD priv_enc, PKCS#1 DigestInfo   -> rsa_pkcs1_*
 *
 * Raw RSA (RSA_NO_PADDING) and every decryption are refused for agent keys:
 * forwarding them would turn the agent into a decryption oracle.
 *
 * Every method is a copy of OpenSSL's built-in one and falls back to it for
 * keys that are not ours: applications such as mosquitto and the openssl
 * tool call ENGINE_set_default(e, ENGINE_METHOD_ALL), after which every
 * legacy RSA/EC key in the process runs through these methods.
 *
 * The ENGINE API is deprecated in OpenSSL 3.0: OPENSSL_API_COMPAT below
 * silences the deprecation warnings for this file only.
 *
 * Lifetime: the methods, ex_data indexes and error strings are created once
 * per process and never freed, and the module pins itself in memory
 * (RTLD_NODELETE). EC_KEY_free() releases the key's ENGINE reference before
 * it calls the key method's finish and the ex_data free callbacks, so code
 * and methods must outlive the last ENGINE reference.
 */
#define OPENSSL_API_COMPAT 0x10100000L

#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "common/keyref.h"
#include "common/scheme.h"
#include "common/util.h"
#include "mtls-agent/client.h"

static const char engine_id[] = "mtlsagent";
static const char engine_name[] = "mtls-agent engine";

#define KEYREF_FILE_MAX (1024 * 1024)

/* ---------------------------------------------------------------- errors */

enum {
	R_AGENT_UNREACHABLE = 100,
	R_POLICY,
	R_DENIED,
	R_NO_IDENTITY,
	R_KEY_GONE,
	R_AGENT_ERROR,
	R_BAD_KEY_ID,
	R_BAD_PUBLIC_KEY,
	R_NO_KEY,
	R_RAW_RSA,
	R_DECRYPT,
	R_DIGEST,
	R_PSS_PARAMS,
	R_BAD_SIGNATURE,
	R_BUFFER_TOO_SMALL,
	R_NO_CERT,
	R_BAD_CERT,
	R_CTRL,
	R_INTERNAL,
};

static ERR_STRING_DATA err_lib_name[] = {
	{0, "mtlsagent engine"},
	{0, NULL},
};

static ERR_STRING_DATA err_reasons[] = {
	{ERR_PACK(0, 0, R_AGENT_UNREACHABLE), "mtls-agent not reachable"},
	{ERR_PACK(0, 0, R_POLICY), "refused by sign-policy: the engine sees only digests, set "
				   "sign-policy = digest (or any) for this identity"},
	{ERR_PACK(0, 0, R_DENIED), "mtls-agent denied access to the identity"},
	{ERR_PACK(0, 0, R_NO_IDENTITY), "no such identity in mtls-agent"},
	{ERR_PACK(0, 0, R_KEY_GONE), "mtls-agent no longer holds this key: reload key and "
				     "certificate"},
	{ERR_PACK(0, 0, R_AGENT_ERROR), "mtls-agent request failed"},
	{ERR_PACK(0, 0, R_BAD_KEY_ID), "bad key id: want NAME, agent:NAME or a key reference file"},
	{ERR_PACK(0, 0, R_BAD_PUBLIC_KEY), "unusable public key"},
	{ERR_PACK(0, 0, R_NO_KEY), "identity has no key"},
	{ERR_PACK(0, 0, R_RAW_RSA), "raw RSA and this padding are refused for agent keys"},
	{ERR_PACK(0, 0, R_DECRYPT), "agent keys never decrypt"},
	{ERR_PACK(0, 0, R_DIGEST), "unsupported digest: agent keys sign SHA-256/384/512 only"},
	{ERR_PACK(0, 0, R_PSS_PARAMS), "unsupported RSA-PSS parameters"},
	{ERR_PACK(0, 0, R_BAD_SIGNATURE), "malformed signature from mtls-agent"},
	{ERR_PACK(0, 0, R_BUFFER_TOO_SMALL), "signature buffer too small"},
	{ERR_PACK(0, 0, R_NO_CERT), "identity has no certificate"},
	{ERR_PACK(0, 0, R_BAD_CERT), "malformed certificate from mtls-agent"},
	{ERR_PACK(0, 0, R_CTRL), "bad engine control command"},
	{ERR_PACK(0, 0, R_INTERNAL), "internal error"},
	{0, NULL},
};

static int err_lib;

static void eng_raise(int line, const char *func, int reason, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void eng_raise(int line, const char *func, int reason, const char *fmt, ...)
{
	va_list ap;

	ERR_new();
	ERR_set_debug(OPENSSL_FILE, line, func);
	va_start(ap, fmt);
	ERR_vset_error(err_lib, reason, fmt, ap);
	va_end(ap);
}

#define ENG_ERR(reason, ...) eng_raise(__LINE__, __func__, (reason), __VA_ARGS__)

/* ------------------------------------------------------- engine context */

/*
 * One per ENGINE instance, shared with the keys it loaded (they hold a
 * reference, so a key outliving its ENGINE still reaches the agent).
 * The read lock is held for the length of one agent request; the write lock
 * to create or replace the handle.
 */
struct eng_ctx {
	atomic_int refs;
	pthread_rwlock_t lock;
	char *socket; /* NULL: $MTLS_AGENT_SOCK, else the library default */
	mtls_agent *agent;
};

/* What an agent key carries: ex_data on its RSA / EC_KEY. */
struct agent_key {
	atomic_int refs;
	struct eng_ctx *ctx;
	char *identity;
	uint8_t spki_hash[MTLS_AGENT_SPKI_HASH_LEN]; /* key-generation selector */
};

static struct eng_ctx *ctx_new(void)
{
	struct eng_ctx *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	if (pthread_rwlock_init(&c->lock, NULL) != 0) {
		free(c);
		return NULL;
	}
	atomic_init(&c->refs, 1);
	return c;
}

static void ctx_ref(struct eng_ctx *c)
{
	atomic_fetch_add(&c->refs, 1);
}

static void ctx_unref(struct eng_ctx *c)
{
	if (c == NULL || atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	mtls_agent_close(c->agent);
	pthread_rwlock_destroy(&c->lock);
	free(c->socket);
	free(c);
}

/*
 * Returns 0 with the read lock held and *out set, or an MTLS_AGENT_ERR_*
 * code (mtls_agent_last_error() says why) with no lock held.
 */
static int agent_acquire(struct eng_ctx *c, mtls_agent **out)
{
	mtls_agent *a;
	int r;

	for (;;) {
		if (pthread_rwlock_rdlock(&c->lock) != 0)
			return MTLS_AGENT_ERR_INTERNAL;
		if (c->agent != NULL) {
			*out = c->agent;
			return 0;
		}
		pthread_rwlock_unlock(&c->lock);
		if (pthread_rwlock_wrlock(&c->lock) != 0)
			return MTLS_AGENT_ERR_INTERNAL;
		if (c->agent == NULL) {
			r = mtls_agent_connect(c->socket, &a);
			if (r != 0) {
				pthread_rwlock_unlock(&c->lock);
				return r;
			}
			c->agent = a;
		}
		pthread_rwlock_unlock(&c->lock);
	}
}

static void agent_release(struct eng_ctx *c)
{
	pthread_rwlock_unlock(&c->lock);
}

/* Closes the handle (next use reconnects) and optionally changes the socket. */
static int ctx_reset(struct eng_ctx *c, int set_socket, const char *socket)
{
	char *s = NULL;

	if (set_socket && socket != NULL && socket[0] != '\0' && (s = strdup(socket)) == NULL)
		return 0;
	if (pthread_rwlock_wrlock(&c->lock) != 0) {
		free(s);
		return 0;
	}
	mtls_agent_close(c->agent);
	c->agent = NULL;
	if (set_socket) {
		free(c->socket);
		c->socket = s;
	}
	pthread_rwlock_unlock(&c->lock);
	return 1;
}

/* Raises the error for a failed agent request; msg is mtls_agent_last_error(). */
static void agent_fail_msg(int line, const char *func, int r, const char *identity, const char *msg)
{
	switch (r) {
	case MTLS_AGENT_ERR_POLICY:
		/* The agent's message names the identity and its policy. */
		eng_raise(line, func, R_POLICY,
			  "refused by sign-policy: %s (the engine sees only digests: set "
			  "sign-policy = digest (or any) for this identity)",
			  msg);
		break;
	case MTLS_AGENT_ERR_CONNECT:
		eng_raise(line, func, R_AGENT_UNREACHABLE, "%s", msg);
		break;
	case MTLS_AGENT_ERR_DENIED:
		eng_raise(line, func, R_DENIED, "identity \"%s\": %s", identity, msg);
		break;
	case MTLS_AGENT_ERR_NOT_FOUND:
		eng_raise(line, func, R_NO_IDENTITY, "identity \"%s\": %s", identity, msg);
		break;
	case MTLS_AGENT_ERR_KEY_GONE:
		eng_raise(line, func, R_KEY_GONE, "identity \"%s\": %s", identity, msg);
		break;
	default:
		eng_raise(line, func, R_AGENT_ERROR, "identity \"%s\": %s", identity, msg);
		break;
	}
}

#define AGENT_FAIL(r, identity)                                                                    \
	agent_fail_msg(__LINE__, __func__, (r), (identity), mtls_agent_last_error())

/* ------------------------------------------------- process-wide objects */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_ok;

static int rsa_idx = -1, ec_idx = -1, eng_idx = -1;

static RSA_METHOD *rsa_meth;
static EC_KEY_METHOD *ec_meth;
static EVP_PKEY_METHOD *pkey_rsa_meth;

/* OpenSSL's built-in implementations, for keys that are not ours. */
static int (*orig_rsa_priv_enc)(int, const unsigned char *, unsigned char *, RSA *, int);
static int (*orig_rsa_priv_dec)(int, const unsigned char *, unsigned char *, RSA *, int);
static int (*orig_ec_sign)(int, const unsigned char *, int, unsigned char *, unsigned int *,
			   const BIGNUM *, const BIGNUM *, EC_KEY *);
static int (*orig_ec_sign_setup)(EC_KEY *, BN_CTX *, BIGNUM **, BIGNUM **);
static ECDSA_SIG *(*orig_ec_sign_sig)(const unsigned char *, int, const BIGNUM *, const BIGNUM *,
				      EC_KEY *);
static int (*orig_pkey_sign_init)(EVP_PKEY_CTX *);
static int (*orig_pkey_sign)(EVP_PKEY_CTX *, unsigned char *, size_t *, const unsigned char *,
			     size_t);

static void key_unref(struct agent_key *k)
{
	if (k == NULL || atomic_fetch_sub(&k->refs, 1) != 1)
		return;
	ctx_unref(k->ctx);
	free(k->identity);
	free(k);
}

static void key_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	(void)parent;
	(void)ad;
	(void)idx;
	(void)argl;
	(void)argp;
	key_unref(ptr);
}

/* RSA/EC_KEY copies (EC_KEY_copy, RSAPrivateKey_dup ...) share the key data. */
static int key_ex_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d, int idx,
		      long argl, void *argp)
{
	struct agent_key *k = *from_d;

	(void)to;
	(void)from;
	(void)idx;
	(void)argl;
	(void)argp;
	if (k != NULL)
		atomic_fetch_add(&k->refs, 1);
	return 1;
}

static struct agent_key *rsa_key(const RSA *rsa)
{
	return rsa != NULL ? RSA_get_ex_data(rsa, rsa_idx) : NULL;
}

static struct agent_key *ec_key(const EC_KEY *ec)
{
	return ec != NULL ? EC_KEY_get_ex_data(ec, ec_idx) : NULL;
}

/*
 * Keeps this module loaded until the process exits: keys may be freed after
 * the last ENGINE reference (see the top of the file).
 */
static void pin_module(void)
{
	Dl_info info;

	if (dladdr((void *)&pin_module, &info) != 0 && info.dli_fname != NULL)
		(void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* ------------------------------------------------------------ signing */

/* Sends a digest to the agent; *sig is the caller's to free(). */
static int agent_sign_digest(const struct agent_key *k, uint16_t scheme, const uint8_t *dgst,
			     size_t dlen, uint8_t **sig, size_t *sig_len)
{
	mtls_agent *a;
	int r;

	if ((r = agent_acquire(k->ctx, &a)) == 0) {
		r = mtls_agent_sign(a, k->identity, scheme, MTLS_AGENT_SIGN_DIGEST, k->spki_hash,
				    dgst, dlen, sig, sig_len);
		agent_release(k->ctx);
	}
	if (r != 0) {
		AGENT_FAIL(r, k->identity);
		return 0;
	}
	return 1;
}

/* The agent's schemes for OpenSSL's digests, from the one table in common/scheme.c. */
static uint16_t ecdsa_scheme(size_t dlen)
{
	const struct scheme *s =
		scheme_for_digest(MTLS_AGENT_KEY_EC, SIG_PAD_NONE, NID_undef, dlen);

	return s != NULL ? s->code : 0;
}

static uint16_t rsa_scheme(int md_nid, int pss)
{
	const struct scheme *s =
		scheme_for_digest(MTLS_AGENT_KEY_RSA, pss ? SIG_PAD_PSS : SIG_PAD_PKCS1, md_nid, 0);

	return s != NULL ? s->code : 0;
}

static int md_len(int md_nid)
{
	const struct scheme_md *md = scheme_md_by_nid(md_nid);

	return md != NULL ? (int)md->len : 0;
}

/* ---------------------------------------------------------------- EC */

static ECDSA_SIG *ec_sign_sig(const unsigned char *dgst, int dlen, const BIGNUM *kinv,
			      const BIGNUM *rp, EC_KEY *ec)
{
	struct agent_key *k = ec_key(ec);
	const unsigned char *p;
	ECDSA_SIG *s = NULL;
	uint8_t *der = NULL;
	size_t der_len = 0;
	uint16_t scheme;

	if (k == NULL)
		return orig_ec_sign_sig(dgst, dlen, kinv, rp, ec);
	if (dgst == NULL || dlen <= 0 || (scheme = ecdsa_scheme((size_t)dlen)) == 0) {
		ENG_ERR(R_DIGEST, "identity \"%s\": ECDSA over a %d-byte digest", k->identity,
			dlen);
		return NULL;
	}
	if (!agent_sign_digest(k, scheme, dgst, (size_t)dlen, &der, &der_len))
		return NULL;
	p = der;
	if (der_len > LONG_MAX || (s = d2i_ECDSA_SIG(NULL, &p, (long)der_len)) == NULL ||
	    p != der + der_len) {
		ECDSA_SIG_free(s);
		s = NULL;
		ENG_ERR(R_BAD_SIGNATURE, "identity \"%s\": %zu-byte ECDSA signature", k->identity,
			der_len);
	}
	free(der);
	return s;
}

static int ec_sign(int type, const unsigned char *dgst, int dlen, unsigned char *sig,
		   unsigned int *siglen, const BIGNUM *kinv, const BIGNUM *r, EC_KEY *ec)
{
	struct agent_key *k = ec_key(ec);
	unsigned char *p = sig;
	ECDSA_SIG *s;
	int n, max;

	if (k == NULL)
		return orig_ec_sign(type, dgst, dlen, sig, siglen, kinv, r, ec);
	if ((s = ec_sign_sig(dgst, dlen, kinv, r, ec)) == NULL)
		return 0;
	n = i2d_ECDSA_SIG(s, NULL);
	max = ECDSA_size(ec);
	if (n <= 0 || max <= 0 || n > max) {
		ECDSA_SIG_free(s);
		ENG_ERR(R_BAD_SIGNATURE, "identity \"%s\": ECDSA signature does not fit the key",
			k->identity);
		return 0;
	}
	n = i2d_ECDSA_SIG(s, &p);
	ECDSA_SIG_free(s);
	if (n <= 0) {
		ENG_ERR(R_INTERNAL, "cannot encode ECDSA signature");
		return 0;
	}
	*siglen = (unsigned int)n;
	return 1;
}

/* No per-signature precomputation for agent keys: the token draws k. */
static int ec_sign_setup(EC_KEY *ec, BN_CTX *ctx, BIGNUM **kinvp, BIGNUM **rp)
{
	if (ec_key(ec) == NULL)
		return orig_ec_sign_setup(ec, ctx, kinvp, rp);
	if (kinvp != NULL)
		*kinvp = NULL;
	if (rp != NULL)
		*rp = NULL;
	return 1;
}

/* ---------------------------------------------------------------- RSA */

/* Copies an RSA signature into out, left-padded to the modulus size. */
static int rsa_put_sig(const struct agent_key *k, const uint8_t *sig, size_t sig_len,
		       unsigned char *out, size_t size)
{
	if (sig_len == 0 || sig_len > size) {
		ENG_ERR(R_BAD_SIGNATURE,
			"identity \"%s\": %zu-byte RSA signature for a %zu-byte "
			"modulus",
			k->identity, sig_len, size);
		return 0;
	}
	memset(out, 0, size - sig_len);
	memcpy(out + (size - sig_len), sig, sig_len);
	return 1;
}

/*
 * Parses a DER DigestInfo (what RSA_sign hands to priv_enc with PKCS#1
 * padding): SHA-256/384/512, parameters absent or NULL, nothing trailing.
 */
static int parse_digest_info(const unsigned char *der, int len, int *md_nid, unsigned char *dgst,
			     size_t *dlen)
{
	const unsigned char *p = der;
	const ASN1_OCTET_STRING *digest;
	const X509_ALGOR *alg;
	const ASN1_OBJECT *obj;
	X509_SIG *xs;
	int ptype, ok = 0, nid, want;

	if (len <= 0 || (xs = d2i_X509_SIG(NULL, &p, len)) == NULL)
		return 0;
	if (p != der + len)
		goto out;
	X509_SIG_get0(xs, &alg, &digest);
	X509_ALGOR_get0(&obj, &ptype, NULL, alg);
	nid = OBJ_obj2nid(obj);
	want = md_len(nid);
	if (want == 0 || (ptype != V_ASN1_NULL && ptype != V_ASN1_UNDEF) ||
	    ASN1_STRING_length(digest) != want)
		goto out;
	memcpy(dgst, ASN1_STRING_get0_data(digest), (size_t)want);
	*md_nid = nid;
	*dlen = (size_t)want;
	ok = 1;
out:
	X509_SIG_free(xs);
	return ok;
}

static int rsa_priv_enc(int flen, const unsigned char *from, unsigned char *to, RSA *rsa,
			int padding)
{
	struct agent_key *k = rsa_key(rsa);
	unsigned char dgst[EVP_MAX_MD_SIZE];
	uint8_t *sig = NULL;
	size_t dlen = 0, sig_len = 0;
	int md_nid = NID_undef, size, ok;

	if (k == NULL)
		return orig_rsa_priv_enc(flen, from, to, rsa, padding);
	if (padding != RSA_PKCS1_PADDING) {
		ENG_ERR(R_RAW_RSA,
			"identity \"%s\": RSA private operation with padding %d refused "
			"(it would be a decryption oracle)",
			k->identity, padding);
		return -1;
	}
	if (!parse_digest_info(from, flen, &md_nid, dgst, &dlen)) {
		ENG_ERR(R_DIGEST,
			"identity \"%s\": PKCS#1 input is not a SHA-256/384/512 "
			"DigestInfo",
			k->identity);
		return -1;
	}
	if ((size = RSA_size(rsa)) <= 0)
		return -1;
	if (!agent_sign_digest(k, rsa_scheme(md_nid, 0), dgst, dlen, &sig, &sig_len))
		return -1;
	ok = rsa_put_sig(k, sig, sig_len, to, (size_t)size);
	free(sig);
	return ok ? size : -1;
}

static int rsa_priv_dec(int flen, const unsigned char *from, unsigned char *to, RSA *rsa,
			int padding)
{
	struct agent_key *k = rsa_key(rsa);

	if (k == NULL)
		return orig_rsa_priv_dec(flen, from, to, rsa, padding);
	ENG_ERR(R_DECRYPT, "identity \"%s\": RSA decryption refused", k->identity);
	return -1;
}

/* ------------------------------------------------- RSA EVP_PKEY_METHOD */

static struct agent_key *pctx_key(EVP_PKEY_CTX *ctx)
{
	EVP_PKEY *pkey = EVP_PKEY_CTX_get0_pkey(ctx);

	if (pkey == NULL || EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA)
		return NULL;
	return rsa_key(EVP_PKEY_get0_RSA(pkey));
}

static int pkey_rsa_sign_init(EVP_PKEY_CTX *ctx)
{
	return orig_pkey_sign_init != NULL ? orig_pkey_sign_init(ctx) : 1;
}

static int pkey_rsa_sign(EVP_PKEY_CTX *ctx, unsigned char *sig, size_t *siglen,
			 const unsigned char *tbs, size_t tbslen)
{
	struct agent_key *k = pctx_key(ctx);
	const EVP_MD *md = NULL, *mgf1 = NULL;
	uint8_t *out = NULL;
	size_t out_len = 0;
	int pad = 0, saltlen = 0, md_nid, size, ok;
	uint16_t scheme;

	if (k == NULL)
		return orig_pkey_sign(ctx, sig, siglen, tbs, tbslen);
	if ((size = EVP_PKEY_get_size(EVP_PKEY_CTX_get0_pkey(ctx))) <= 0)
		return -1;
	if (sig == NULL) {
		*siglen = (size_t)size;
		return 1;
	}
	if (*siglen < (size_t)size) {
		ENG_ERR(R_BUFFER_TOO_SMALL, "%zu bytes for a %d-byte signature", *siglen, size);
		return -1;
	}
	if (EVP_PKEY_CTX_get_rsa_padding(ctx, &pad) <= 0 ||
	    EVP_PKEY_CTX_get_signature_md(ctx, &md) <= 0) {
		ENG_ERR(R_INTERNAL, "cannot read the RSA signature parameters");
		return -1;
	}
	if (pad != RSA_PKCS1_PADDING && pad != RSA_PKCS1_PSS_PADDING) {
		ENG_ERR(R_RAW_RSA,
			"identity \"%s\": RSA padding %d refused (only PKCS#1 v1.5 and "
			"PSS signatures)",
			k->identity, pad);
		return -1;
	}
	md_nid = md != NULL ? EVP_MD_get_type(md) : NID_undef;
	if (md_len(md_nid) == 0) {
		ENG_ERR(R_DIGEST, "identity \"%s\": RSA signature with digest %s", k->identity,
			md != NULL ? OBJ_nid2sn(md_nid) : "none");
		return -1;
	}
	if (tbslen != (size_t)md_len(md_nid)) {
		ENG_ERR(R_DIGEST, "identity \"%s\": %zu bytes to sign with %s", k->identity, tbslen,
			OBJ_nid2sn(md_nid));
		return -1;
	}
	if (pad == RSA_PKCS1_PSS_PADDING) {
		if (EVP_PKEY_CTX_get_rsa_pss_saltlen(ctx, &saltlen) <= 0 ||
		    EVP_PKEY_CTX_get_rsa_mgf1_md(ctx, &mgf1) <= 0) {
			ENG_ERR(R_INTERNAL, "cannot read the RSA-PSS parameters");
			return -1;
		}
		if (saltlen != RSA_PSS_SALTLEN_DIGEST && saltlen != md_len(md_nid)) {
			ENG_ERR(R_PSS_PARAMS,
				"identity \"%s\": PSS salt length %d (the agent uses "
				"the digest length)",
				k->identity, saltlen);
			return -1;
		}
		if (mgf1 != NULL && EVP_MD_get_type(mgf1) != md_nid) {
			ENG_ERR(R_PSS_PARAMS, "identity \"%s\": MGF1 with %s, signature with %s",
				k->identity, OBJ_nid2sn(EVP_MD_get_type(mgf1)), OBJ_nid2sn(md_nid));
			return -1;
		}
	}
	scheme = rsa_scheme(md_nid, pad == RSA_PKCS1_PSS_PADDING);
	if (!agent_sign_digest(k, scheme, tbs, tbslen, &out, &out_len))
		return -1;
	ok = rsa_put_sig(k, out, out_len, sig, (size_t)size);
	free(out);
	if (!ok)
		return -1;
	*siglen = (size_t)size;
	return 1;
}

static int pkey_meths(ENGINE *e, EVP_PKEY_METHOD **pmeth, const int **nids, int nid)
{
	static const int our_nids[] = {EVP_PKEY_RSA};

	(void)e;
	if (pmeth == NULL) {
		*nids = our_nids;
		return (int)(sizeof(our_nids) / sizeof(our_nids[0]));
	}
	if (nid == EVP_PKEY_RSA) {
		*pmeth = pkey_rsa_meth;
		return 1;
	}
	*pmeth = NULL;
	return 0;
}

/* ------------------------------------------------------- global setup */

static void global_init(void)
{
	const EVP_PKEY_METHOD *def;

	pin_module();

	if ((err_lib = ERR_get_next_error_library()) <= 0)
		return;
	err_lib_name[0].error = ERR_PACK(err_lib, 0, 0);
	ERR_load_strings(err_lib, err_lib_name);
	ERR_load_strings(err_lib, err_reasons);

	rsa_idx = RSA_get_ex_new_index(0, NULL, NULL, key_ex_dup, key_ex_free);
	ec_idx = EC_KEY_get_ex_new_index(0, NULL, NULL, key_ex_dup, key_ex_free);
	eng_idx = ENGINE_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	if (rsa_idx < 0 || ec_idx < 0 || eng_idx < 0)
		return;

	/* RSA: built-in method, private operations replaced. */
	if ((rsa_meth = RSA_meth_dup(RSA_PKCS1_OpenSSL())) == NULL)
		return;
	orig_rsa_priv_enc = RSA_meth_get_priv_enc(RSA_PKCS1_OpenSSL());
	orig_rsa_priv_dec = RSA_meth_get_priv_dec(RSA_PKCS1_OpenSSL());
	if (orig_rsa_priv_enc == NULL || orig_rsa_priv_dec == NULL ||
	    !RSA_meth_set1_name(rsa_meth, "mtls-agent RSA method") ||
	    !RSA_meth_set_priv_enc(rsa_meth, rsa_priv_enc) ||
	    !RSA_meth_set_priv_dec(rsa_meth, rsa_priv_dec))
		return;

	/* EC: built-in method, signing replaced. */
	if ((ec_meth = EC_KEY_METHOD_new(EC_KEY_OpenSSL())) == NULL)
		return;
	EC_KEY_METHOD_get_sign(EC_KEY_OpenSSL(), &orig_ec_sign, &orig_ec_sign_setup,
			       &orig_ec_sign_sig);
	if (orig_ec_sign == NULL || orig_ec_sign_setup == NULL || orig_ec_sign_sig == NULL)
		return;
	EC_KEY_METHOD_set_sign(ec_meth, ec_sign, ec_sign_setup, ec_sign_sig);

	/*
	 * RSA EVP_PKEY_METHOD for PSS (which reaches an RSA_METHOD only as raw
	 * RSA). AUTOARGLEN: EVP_PKEY_sign answers size queries itself.
	 */
	if ((def = EVP_PKEY_meth_find(EVP_PKEY_RSA)) == NULL ||
	    (pkey_rsa_meth = EVP_PKEY_meth_new(EVP_PKEY_RSA, EVP_PKEY_FLAG_AUTOARGLEN)) == NULL)
		return;
	EVP_PKEY_meth_copy(pkey_rsa_meth, def);
	EVP_PKEY_meth_get_sign(def, &orig_pkey_sign_init, &orig_pkey_sign);
	if (orig_pkey_sign == NULL)
		return;
	EVP_PKEY_meth_set_sign(pkey_rsa_meth, pkey_rsa_sign_init, pkey_rsa_sign);

	global_ok = 1;
}

/* ---------------------------------------------------------- key loading */

static struct eng_ctx *engine_ctx(ENGINE *e)
{
	struct eng_ctx *c = ENGINE_get_ex_data(e, eng_idx);

	if (c == NULL)
		ENG_ERR(R_INTERNAL, "engine not bound");
	return c;
}

/*
 * Key or certificate id: "agent:NAME", the path of a key reference file (any
 * id with a '/', or naming an existing regular file), else an identity name.
 * *spki is set only for a file.
 */
static int resolve_id(const char *id, char **name, uint8_t **spki, size_t *spki_len)
{
	struct stat st;
	uint8_t *data = NULL;
	size_t len = 0;
	int r;

	*name = NULL;
	*spki = NULL;
	*spki_len = 0;
	if (id == NULL || id[0] == '\0') {
		ENG_ERR(R_BAD_KEY_ID, "empty key id");
		return 0;
	}
	if (strncmp(id, "agent:", 6) == 0) {
		if (id[6] == '\0') {
			ENG_ERR(R_BAD_KEY_ID, "\"%s\" names no identity", id);
			return 0;
		}
		if ((*name = strdup(id + 6)) == NULL)
			goto nomem;
		return 1;
	}
	if (strchr(id, '/') == NULL && (stat(id, &st) != 0 || !S_ISREG(st.st_mode))) {
		if ((*name = strdup(id)) == NULL)
			goto nomem;
		return 1;
	}
	if (read_file(id, KEYREF_FILE_MAX, &data, &len) != 0) {
		ENG_ERR(R_BAD_KEY_ID, "cannot read key reference file %s: %s", id, strerror(errno));
		return 0;
	}
	r = keyref_decode(data, len, name, spki, spki_len);
	free(data);
	if (r != 0) {
		ENG_ERR(R_BAD_KEY_ID, "%s is not a key reference file (PEM \"%s\"): %s", id,
			KEYREF_PEM_LABEL, mtls_agent_strerror(r));
		return 0;
	}
	return 1;
nomem:
	ENG_ERR(R_INTERNAL, "out of memory");
	return 0;
}

/*
 * The identity's current public key from the agent; when the agent cannot
 * be reached, the key reference file's (file_spki may be NULL).
 */
static int identity_spki(struct eng_ctx *c, const char *name, const uint8_t *file_spki,
			 size_t file_len, uint8_t **spki, size_t *spki_len)
{
	struct mtls_agent_identity *ident = NULL;
	mtls_agent *a;
	int r;

	*spki = NULL;
	*spki_len = 0;
	if ((r = agent_acquire(c, &a)) == 0) {
		r = mtls_agent_get_identity(a, name, &ident);
		agent_release(c);
	}
	if (r == MTLS_AGENT_ERR_CONNECT && file_spki != NULL) {
		if ((*spki = malloc(file_len)) == NULL)
			goto nomem;
		memcpy(*spki, file_spki, file_len);
		*spki_len = file_len;
		return 1;
	}
	if (r != 0) {
		AGENT_FAIL(r, name);
		return 0;
	}
	if (ident->key_type == MTLS_AGENT_KEY_NONE || ident->spki == NULL || ident->spki_len == 0) {
		ENG_ERR(R_NO_KEY, "identity \"%s\" has no key yet (mtls-agentctl keygen)", name);
		mtls_agent_identity_free(ident);
		return 0;
	}
	*spki = ident->spki;
	*spki_len = ident->spki_len;
	ident->spki = NULL;
	ident->spki_len = 0;
	mtls_agent_identity_free(ident);
	return 1;
nomem:
	ENG_ERR(R_INTERNAL, "out of memory");
	return 0;
}

static struct agent_key *key_new(struct eng_ctx *c, const char *name, const uint8_t *spki,
				 size_t spki_len)
{
	struct agent_key *k = calloc(1, sizeof(*k));

	if (k == NULL || (k->identity = strdup(name)) == NULL) {
		free(k);
		ENG_ERR(R_INTERNAL, "out of memory");
		return NULL;
	}
	SHA256(spki, spki_len, k->spki_hash);
	atomic_init(&k->refs, 1);
	ctx_ref(c);
	k->ctx = c;
	return k;
}

/* Legacy RSA key with our method: n and e, no private part. k is consumed. */
static EVP_PKEY *make_rsa(ENGINE *e, const EVP_PKEY *pub, struct agent_key *k)
{
	const RSA *src = EVP_PKEY_get0_RSA(pub);
	const BIGNUM *n = NULL, *ex = NULL;
	BIGNUM *n2 = NULL, *e2 = NULL;
	EVP_PKEY *pkey = NULL;
	RSA *rsa = NULL;

	if (src == NULL || (rsa = RSA_new_method(e)) == NULL) {
		key_unref(k);
		goto fail;
	}
	if (!RSA_set_ex_data(rsa, rsa_idx, k)) {
		key_unref(k);
		goto fail;
	}
	RSA_get0_key(src, &n, &ex, NULL);
	if (n == NULL || ex == NULL || (n2 = BN_dup(n)) == NULL || (e2 = BN_dup(ex)) == NULL ||
	    !RSA_set0_key(rsa, n2, e2, NULL)) {
		BN_free(n2);
		BN_free(e2);
		goto fail;
	}
	if ((pkey = EVP_PKEY_new()) == NULL || !EVP_PKEY_assign_RSA(pkey, rsa))
		goto fail;
	rsa = NULL;
	/* PSS and PKCS#1 signing through our EVP_PKEY_METHOD. */
	if (!EVP_PKEY_set1_engine(pkey, e))
		goto fail;
	return pkey;
fail:
	RSA_free(rsa);
	EVP_PKEY_free(pkey);
	ENG_ERR(R_INTERNAL, "cannot build the RSA key");
	return NULL;
}

/* Legacy EC key with our method: group and point, no private part. k is consumed. */
static EVP_PKEY *make_ec(ENGINE *e, const EVP_PKEY *pub, struct agent_key *k)
{
	const EC_KEY *src = EVP_PKEY_get0_EC_KEY(pub);
	EVP_PKEY *pkey = NULL;
	EC_KEY *ec = NULL;

	if (src == NULL || (ec = EC_KEY_new_method(e)) == NULL) {
		key_unref(k);
		goto fail;
	}
	if (!EC_KEY_set_ex_data(ec, ec_idx, k)) {
		key_unref(k);
		goto fail;
	}
	if (EC_KEY_get0_group(src) == NULL || EC_KEY_get0_public_key(src) == NULL ||
	    !EC_KEY_set_group(ec, EC_KEY_get0_group(src)) ||
	    !EC_KEY_set_public_key(ec, EC_KEY_get0_public_key(src)))
		goto fail;
	if ((pkey = EVP_PKEY_new()) == NULL || !EVP_PKEY_assign_EC_KEY(pkey, ec))
		goto fail;
	return pkey;
fail:
	EC_KEY_free(ec);
	EVP_PKEY_free(pkey);
	ENG_ERR(R_INTERNAL, "cannot build the EC key");
	return NULL;
}

static EVP_PKEY *load_key(ENGINE *e, const char *key_id, int private)
{
	struct eng_ctx *c = engine_ctx(e);
	uint8_t *file_spki = NULL, *spki = NULL;
	size_t file_len = 0, spki_len = 0;
	const unsigned char *p;
	EVP_PKEY *pub = NULL, *pkey = NULL;
	struct agent_key *k;
	char *name = NULL;

	if (c == NULL || !resolve_id(key_id, &name, &file_spki, &file_len) ||
	    !identity_spki(c, name, file_spki, file_len, &spki, &spki_len))
		goto out;
	p = spki;
	if (spki_len > LONG_MAX || (pub = d2i_PUBKEY(NULL, &p, (long)spki_len)) == NULL ||
	    p != spki + spki_len) {
		ENG_ERR(R_BAD_PUBLIC_KEY, "identity \"%s\": malformed public key", name);
		goto out;
	}
	if (!private) {
		pkey = pub;
		pub = NULL;
		goto out;
	}
	switch (EVP_PKEY_get_base_id(pub)) {
	case EVP_PKEY_RSA:
		if ((k = key_new(c, name, spki, spki_len)) != NULL)
			pkey = make_rsa(e, pub, k);
		break;
	case EVP_PKEY_EC:
		if ((k = key_new(c, name, spki, spki_len)) != NULL)
			pkey = make_ec(e, pub, k);
		break;
	case EVP_PKEY_ED25519:
		/* OpenSSL's ENGINE API has no EdDSA key method: only a provider can sign. */
		ENG_ERR(R_BAD_PUBLIC_KEY,
			"identity \"%s\": Ed25519 keys cannot be used through "
			"an engine; load the key with the mtlsagent provider instead (OPENSSL_CONF "
			"with the shipped openssl.cnf and the key reference file, or agent:%s)",
			name, name);
		break;
	default:
		ENG_ERR(R_BAD_PUBLIC_KEY,
			"identity \"%s\": %s keys are not supported (EC, RSA "
			"and, through the provider, Ed25519 are)",
			name, OBJ_nid2sn(EVP_PKEY_get_base_id(pub)));
		break;
	}
out:
	EVP_PKEY_free(pub);
	free(spki);
	free(file_spki);
	free(name);
	return pkey;
}

static EVP_PKEY *load_privkey(ENGINE *e, const char *key_id, UI_METHOD *ui, void *cb_data)
{
	(void)ui;
	(void)cb_data;
	return load_key(e, key_id, 1);
}

static EVP_PKEY *load_pubkey(ENGINE *e, const char *key_id, UI_METHOD *ui, void *cb_data)
{
	(void)ui;
	(void)cb_data;
	return load_key(e, key_id, 0);
}

/* ---------------------------------------------------------- controls */

#define CMD_SOCKET ENGINE_CMD_BASE
#define CMD_LOAD_CERT_CTRL (ENGINE_CMD_BASE + 1)

static const ENGINE_CMD_DEFN cmd_defns[] = {
	{CMD_SOCKET, "SOCKET",
	 "Path of the mtls-agent socket (default: $MTLS_AGENT_SOCK, "
	 "else /run/mtls-agent/agent.sock)",
	 ENGINE_CMD_FLAG_STRING},
	{CMD_LOAD_CERT_CTRL, "LOAD_CERT_CTRL",
	 "Get the leaf certificate of an identity "
	 "(NAME, agent:NAME or key reference file)",
	 ENGINE_CMD_FLAG_INTERNAL},
	{0, NULL, NULL, 0},
};

/* curl's --cert-type ENG parameter block. */
struct load_cert_params {
	const char *cert_id;
	X509 *cert;
};

static int load_cert(struct eng_ctx *c, struct load_cert_params *params)
{
	struct mtls_agent_cert *chain = NULL;
	size_t chain_len = 0, spki_len = 0;
	const unsigned char *p;
	uint8_t *spki = NULL;
	char *name = NULL;
	mtls_agent *a;
	X509 *x = NULL;
	int r;

	if (params == NULL) {
		ENG_ERR(R_CTRL, "LOAD_CERT_CTRL without parameters");
		return 0;
	}
	if (!resolve_id(params->cert_id, &name, &spki, &spki_len))
		return 0;
	free(spki);
	if ((r = agent_acquire(c, &a)) == 0) {
		r = mtls_agent_get_chain(a, name, &chain, &chain_len);
		agent_release(c);
	}
	if (r != 0) {
		AGENT_FAIL(r, name);
	} else if (chain_len == 0 || chain[0].der == NULL || chain[0].len == 0) {
		ENG_ERR(R_NO_CERT, "identity \"%s\" has no certificate (mtls-agentctl import-cert)",
			name);
	} else {
		p = chain[0].der;
		if (chain[0].len > LONG_MAX ||
		    (x = d2i_X509(NULL, &p, (long)chain[0].len)) == NULL ||
		    p != chain[0].der + chain[0].len) {
			X509_free(x);
			x = NULL;
			ENG_ERR(R_BAD_CERT, "identity \"%s\"", name);
		}
	}
	mtls_agent_chain_free(chain, chain_len);
	free(name);
	if (x == NULL)
		return 0;
	params->cert = x;
	return 1;
}

static int eng_ctrl(ENGINE *e, int cmd, long i, void *p, void (*f)(void))
{
	struct eng_ctx *c = engine_ctx(e);

	(void)i;
	(void)f;
	if (c == NULL)
		return 0;
	switch (cmd) {
	case CMD_SOCKET:
		if (p == NULL || ((const char *)p)[0] == '\0') {
			ENG_ERR(R_CTRL, "SOCKET needs a path");
			return 0;
		}
		if (!ctx_reset(c, 1, p)) {
			ENG_ERR(R_INTERNAL, "cannot set the socket");
			return 0;
		}
		return 1;
	case CMD_LOAD_CERT_CTRL:
		return load_cert(c, p);
	default:
		ENG_ERR(R_CTRL, "unknown command %d", cmd);
		return 0;
	}
}

/* ---------------------------------------------------------- lifecycle */

static int eng_init(ENGINE *e)
{
	return engine_ctx(e) != NULL;
}

/* Last functional reference gone (keys hold their own): drop the connection. */
static int eng_finish(ENGINE *e)
{
	struct eng_ctx *c = ENGINE_get_ex_data(e, eng_idx);

	if (c != NULL)
		ctx_reset(c, 0, NULL);
	return 1;
}

static int eng_destroy(ENGINE *e)
{
	struct eng_ctx *c = ENGINE_get_ex_data(e, eng_idx);

	ENGINE_set_ex_data(e, eng_idx, NULL);
	ctx_unref(c);
	return 1;
}

static int bind_helper(ENGINE *e, const char *id)
{
	struct eng_ctx *c;

	if (id != NULL && strcmp(id, engine_id) != 0)
		return 0;
	if (pthread_once(&global_once, global_init) != 0 || !global_ok)
		return 0;
	if (!ENGINE_set_id(e, engine_id) || !ENGINE_set_name(e, engine_name) ||
	    !ENGINE_set_init_function(e, eng_init) || !ENGINE_set_finish_function(e, eng_finish) ||
	    !ENGINE_set_destroy_function(e, eng_destroy) ||
	    !ENGINE_set_ctrl_function(e, eng_ctrl) || !ENGINE_set_cmd_defns(e, cmd_defns) ||
	    !ENGINE_set_load_privkey_function(e, load_privkey) ||
	    !ENGINE_set_load_pubkey_function(e, load_pubkey) || !ENGINE_set_RSA(e, rsa_meth) ||
	    !ENGINE_set_EC(e, ec_meth) || !ENGINE_set_pkey_meths(e, pkey_meths))
		return 0;
	if ((c = ctx_new()) == NULL)
		return 0;
	if (!ENGINE_set_ex_data(e, eng_idx, c)) {
		ctx_unref(c);
		return 0;
	}
	return 1;
}

/* The two symbols the dynamic loader looks up; everything else stays hidden. */
#pragma GCC visibility push(default)
IMPLEMENT_DYNAMIC_BIND_FN(bind_helper)
IMPLEMENT_DYNAMIC_CHECK_FN()
#pragma GCC visibility pop
