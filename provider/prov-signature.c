/*
 * Signatures (ECDSA, RSA and Ed25519) computed by the agent.
 *
 * DigestSign sends the whole message, not its hash: the agent hashes it
 * itself and its sign-policy checks that it is a TLS client CertificateVerify
 * content (TLS 1.3) or client handshake transcript (TLS 1.2). Plain sign()
 * gets a digest, which the agent accepts only under sign-policy = digest or any.
 *
 * Only what maps to a TLS SignatureScheme is accepted: SHA-256/384/512,
 * PKCS#1 v1.5 or PSS with salt length = digest length and MGF1 with the same
 * digest. Refusing a digest in digest_sign_init is how libssl learns that a
 * signature algorithm is not available for the key.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/rsa.h>

#include "common/proto.h"
#include "common/scheme.h"
#include "common/util.h"
#include "provider/prov.h"

enum sig_op { OP_NONE = 0, OP_SIGN, OP_DIGEST_SIGN };

struct sigctx {
	struct mtlsa_prov *prov;
	int key_type; /* what this implementation signs with: MTLS_AGENT_KEY_EC or _RSA */
	struct mtlsa_key *key;
	enum sig_op op;
	const struct scheme_md *md;   /* NULL: sign() infers it from the input length */
	const struct scheme_md *mgf1; /* NULL: same as md */
	int pad;		      /* RSA_PKCS1_PADDING or RSA_PKCS1_PSS_PADDING */
	int saltlen;		      /* RSA_PSS_SALTLEN_DIGEST or a byte count */
	uint8_t *msg;		      /* digest_sign_update() input, until final */
	size_t msg_len, msg_cap;
};

static void *sig_newctx(void *provctx, int key_type)
{
	struct sigctx *ctx = calloc(1, sizeof(*ctx));

	if (ctx == NULL) {
		MTLSA_RAISE(provctx, MTLSA_R_OUT_OF_MEMORY, "no memory for a signature context");
		return NULL;
	}
	ctx->prov = provctx;
	ctx->key_type = key_type;
	ctx->pad = RSA_PKCS1_PADDING;
	ctx->saltlen = RSA_PSS_SALTLEN_DIGEST;
	return ctx;
}

static void *sig_ecdsa_newctx(void *provctx, const char *propq)
{
	(void)propq;
	return sig_newctx(provctx, MTLS_AGENT_KEY_EC);
}

static void *sig_rsa_newctx(void *provctx, const char *propq)
{
	(void)propq;
	return sig_newctx(provctx, MTLS_AGENT_KEY_RSA);
}

static void *sig_ed25519_newctx(void *provctx, const char *propq)
{
	(void)propq;
	return sig_newctx(provctx, MTLS_AGENT_KEY_ED25519);
}

/* The buffered message is handshake data: wiped before it is freed. */
static void msg_free(uint8_t *msg, size_t cap)
{
	if (msg == NULL)
		return;
	wipe(msg, cap);
	free(msg);
}

static void sig_freectx(void *vctx)
{
	struct sigctx *ctx = vctx;

	if (ctx == NULL)
		return;
	msg_free(ctx->msg, ctx->msg_cap);
	mtlsa_key_free(ctx->key);
	free(ctx);
}

static void *sig_dupctx(void *vctx)
{
	const struct sigctx *src = vctx;
	struct sigctx *ctx = malloc(sizeof(*ctx));

	if (ctx == NULL) {
		MTLSA_RAISE(src->prov, MTLSA_R_OUT_OF_MEMORY, "no memory for a signature context");
		return NULL;
	}
	*ctx = *src;
	ctx->msg = NULL;
	ctx->msg_cap = 0;
	if (src->msg_len > 0) {
		if ((ctx->msg = malloc(src->msg_len)) == NULL) {
			free(ctx);
			MTLSA_RAISE(src->prov, MTLSA_R_OUT_OF_MEMORY,
				    "no memory for a signature context");
			return NULL;
		}
		memcpy(ctx->msg, src->msg, src->msg_len);
		ctx->msg_cap = src->msg_len;
	}
	if (ctx->key != NULL)
		mtlsa_key_up_ref(ctx->key);
	return ctx;
}

/* --- parameters ------------------------------------------------------------------------- */

/* A digest the agent signs with, or NULL after raising an error. */
static const struct scheme_md *md_lookup(const struct sigctx *ctx, const char *name)
{
	const struct scheme_md *md = scheme_md_by_name(name);

	if (md == NULL)
		MTLSA_RAISE(ctx->prov, MTLSA_R_UNSUPPORTED_DIGEST,
			    "digest %s not supported: the agent signs with SHA-256, SHA-384 or "
			    "SHA-512",
			    name);
	return md;
}

static int set_digest(struct sigctx *ctx, const struct scheme_md **slot, const OSSL_PARAM *p)
{
	const char *name = NULL;
	const struct scheme_md *md;

	if (!OSSL_PARAM_get_utf8_string_ptr(p, &name)) {
		MTLSA_RAISE(ctx->prov, MTLSA_R_BAD_PARAMETER, "%s must be a string", p->key);
		return 0;
	}
	if ((md = md_lookup(ctx, name)) == NULL)
		return 0;
	*slot = md;
	return 1;
}

static int set_pad_mode(struct sigctx *ctx, const OSSL_PARAM *p)
{
	const char *s = NULL;
	int mode = 0;

	if (p->data_type == OSSL_PARAM_UTF8_STRING) {
		if (!OSSL_PARAM_get_utf8_string_ptr(p, &s))
			return 0;
		if (strcasecmp(s, OSSL_PKEY_RSA_PAD_MODE_PKCSV15) == 0)
			mode = RSA_PKCS1_PADDING;
		else if (strcasecmp(s, OSSL_PKEY_RSA_PAD_MODE_PSS) == 0)
			mode = RSA_PKCS1_PSS_PADDING;
	} else if (!OSSL_PARAM_get_int(p, &mode)) {
		MTLSA_RAISE(ctx->prov, MTLSA_R_BAD_PARAMETER, "bad pad-mode parameter");
		return 0;
	}
	if (mode != RSA_PKCS1_PADDING && mode != RSA_PKCS1_PSS_PADDING) {
		if (s != NULL)
			MTLSA_RAISE(ctx->prov, MTLSA_R_UNSUPPORTED_PADDING,
				    "padding mode %s not supported: the agent signs PKCS#1 v1.5 or "
				    "PSS only",
				    s);
		else
			MTLSA_RAISE(ctx->prov, MTLSA_R_UNSUPPORTED_PADDING,
				    "padding mode %d not supported: the agent signs PKCS#1 v1.5 or "
				    "PSS only",
				    mode);
		return 0;
	}
	ctx->pad = mode;
	return 1;
}

/* The agent signs PSS with salt length = digest length, nothing else. */
static int saltlen_ok(const struct sigctx *ctx, int saltlen)
{
	return saltlen == RSA_PSS_SALTLEN_DIGEST ||
	       (ctx->md != NULL && saltlen >= 0 && (size_t)saltlen == ctx->md->len) ||
	       (ctx->md == NULL && saltlen >= 0); /* checked again when the digest is known */
}

static int set_saltlen(struct sigctx *ctx, const OSSL_PARAM *p)
{
	const char *s = NULL;
	int v;

	if (p->data_type == OSSL_PARAM_UTF8_STRING) {
		char *end;
		long l;

		if (!OSSL_PARAM_get_utf8_string_ptr(p, &s))
			return 0;
		if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST) == 0) {
			v = RSA_PSS_SALTLEN_DIGEST;
		} else if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_MAX) == 0) {
			v = RSA_PSS_SALTLEN_MAX;
		} else if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO) == 0) {
			v = RSA_PSS_SALTLEN_AUTO;
		} else {
			errno = 0;
			l = strtol(s, &end, 10);
			if (errno != 0 || end == s || *end != '\0' || l < -3 || l > 65535) {
				MTLSA_RAISE(ctx->prov, MTLSA_R_UNSUPPORTED_SALTLEN,
					    "PSS salt length \"%s\" not understood", s);
				return 0;
			}
			v = (int)l;
		}
	} else if (!OSSL_PARAM_get_int(p, &v)) {
		MTLSA_RAISE(ctx->prov, MTLSA_R_BAD_PARAMETER, "bad saltlen parameter");
		return 0;
	}
	if (!saltlen_ok(ctx, v)) {
		if (v < 0)
			MTLSA_RAISE(ctx->prov, MTLSA_R_UNSUPPORTED_SALTLEN,
				    "PSS salt length %s (%d) not supported: the agent signs with "
				    "salt length = digest length (\"digest\")",
				    s != NULL ? s : "special", v);
		else
			MTLSA_RAISE(ctx->prov, MTLSA_R_UNSUPPORTED_SALTLEN,
				    "PSS salt length %d not supported with %s: the agent signs "
				    "with salt length = digest length (\"digest\")",
				    v, ctx->md != NULL ? ctx->md->name : "this digest");
		return 0;
	}
	ctx->saltlen = v;
	return 1;
}

static int sig_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
	struct sigctx *ctx = vctx;
	const OSSL_PARAM *p;

	if (params == NULL)
		return 1;
	if (ctx->key_type == MTLS_AGENT_KEY_ED25519)
		return 1; /* PureEdDSA has no parameters */
	if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST)) != NULL &&
	    !set_digest(ctx, &ctx->md, p))
		return 0;
	if (ctx->key_type != MTLS_AGENT_KEY_RSA)
		return 1;
	if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PAD_MODE)) != NULL &&
	    !set_pad_mode(ctx, p))
		return 0;
	if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN)) != NULL &&
	    !set_saltlen(ctx, p))
		return 0;
	if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST)) != NULL &&
	    !set_digest(ctx, &ctx->mgf1, p))
		return 0;
	return 1;
}

static const OSSL_PARAM *sig_ecdsa_settable_ctx_params(void *vctx, void *provctx)
{
	static const OSSL_PARAM params[] = {
		OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
		OSSL_PARAM_END,
	};

	(void)vctx;
	(void)provctx;
	return params;
}

static const OSSL_PARAM *sig_rsa_settable_ctx_params(void *vctx, void *provctx)
{
	static const OSSL_PARAM params[] = {
		OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_PROPERTIES, NULL, 0),
		OSSL_PARAM_END,
	};

	(void)vctx;
	(void)provctx;
	return params;
}

static int sig_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
	const struct sigctx *ctx = vctx;
	OSSL_PARAM *p;
	/* DER AlgorithmIdentifier of id-Ed25519 (RFC 8410: no parameters). */
	static const uint8_t ed25519_algid[] = {0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70};

	if (ctx->key_type == MTLS_AGENT_KEY_ED25519) {
		if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_ALGORITHM_ID)) != NULL &&
		    !OSSL_PARAM_set_octet_string(p, ed25519_algid, sizeof(ed25519_algid)))
			return 0;
		return 1;
	}
	if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_ALGORITHM_ID)) != NULL &&
	    ctx->md != NULL) {
		/* RSA-PSS parameters are not worth their encoder here: left unset. */
		if (ctx->key_type == MTLS_AGENT_KEY_EC &&
		    !OSSL_PARAM_set_octet_string(p, ctx->md->ecdsa_algid,
						 sizeof(ctx->md->ecdsa_algid)))
			return 0;
		if (ctx->key_type == MTLS_AGENT_KEY_RSA && ctx->pad == RSA_PKCS1_PADDING &&
		    !OSSL_PARAM_set_octet_string(p, ctx->md->pkcs1_algid,
						 sizeof(ctx->md->pkcs1_algid)))
			return 0;
	}
	if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST)) != NULL &&
	    ctx->md != NULL && !OSSL_PARAM_set_utf8_string(p, ctx->md->name))
		return 0;
	if (ctx->key_type != MTLS_AGENT_KEY_RSA)
		return 1;
	if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PAD_MODE)) != NULL) {
		if (p->data_type == OSSL_PARAM_UTF8_STRING) {
			const char *mode = ctx->pad == RSA_PKCS1_PSS_PADDING
						   ? OSSL_PKEY_RSA_PAD_MODE_PSS
						   : OSSL_PKEY_RSA_PAD_MODE_PKCSV15;

			if (!OSSL_PARAM_set_utf8_string(p, mode))
				return 0;
		} else if (!OSSL_PARAM_set_int(p, ctx->pad)) {
			return 0;
		}
	}
	if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN)) != NULL) {
		if (p->data_type == OSSL_PARAM_UTF8_STRING) {
			char num[16];

			if (ctx->saltlen == RSA_PSS_SALTLEN_DIGEST)
				snprintf(num, sizeof(num), "%s", OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST);
			else
				snprintf(num, sizeof(num), "%d", ctx->saltlen);
			if (!OSSL_PARAM_set_utf8_string(p, num))
				return 0;
		} else if (!OSSL_PARAM_set_int(p, ctx->saltlen)) {
			return 0;
		}
	}
	if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST)) != NULL) {
		const struct scheme_md *mgf1 = ctx->mgf1 != NULL ? ctx->mgf1 : ctx->md;

		if (mgf1 != NULL && !OSSL_PARAM_set_utf8_string(p, mgf1->name))
			return 0;
	}
	return 1;
}

static const OSSL_PARAM *sig_gettable_ctx_params(void *vctx, void *provctx)
{
	static const OSSL_PARAM params[] = {
		OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
		OSSL_PARAM_END,
	};

	(void)vctx;
	(void)provctx;
	return params;
}

/* --- operations ------------------------------------------------------------------------- */

static int sig_init(struct sigctx *ctx, void *provkey, const OSSL_PARAM params[], enum sig_op op,
		    const char *mdname)
{
	struct mtlsa_key *key = provkey;

	if (key != NULL) {
		if (key->name == NULL || key->pub == NULL || key->type != ctx->key_type) {
			MTLSA_RAISE(ctx->prov, MTLSA_R_NO_KEY,
				    "not a key of this kind held by the agent");
			return 0;
		}
		mtlsa_key_up_ref(key);
		mtlsa_key_free(ctx->key);
		ctx->key = key;
	} else if (ctx->key == NULL) {
		MTLSA_RAISE(ctx->prov, MTLSA_R_NO_KEY, "no key given");
		return 0;
	}
	ctx->op = OP_NONE;
	ctx->md = NULL;
	ctx->mgf1 = NULL;
	ctx->pad = RSA_PKCS1_PADDING;
	ctx->saltlen = RSA_PSS_SALTLEN_DIGEST;
	ctx->msg_len = 0;
	if (ctx->key_type == MTLS_AGENT_KEY_ED25519) {
		/* libcrypto passes the key's mandatory digest, "", or nothing. */
		if (op != OP_DIGEST_SIGN || (mdname != NULL && mdname[0] != '\0')) {
			MTLSA_RAISE(
				ctx->prov, MTLSA_R_UNSUPPORTED_DIGEST,
				"Ed25519 signs whole messages in one shot: no digest (%s) and no "
				"pre-hashed input",
				mdname != NULL && mdname[0] != '\0' ? mdname : "sign");
			return 0;
		}
	} else if (op == OP_DIGEST_SIGN) {
		/* No digest named: OpenSSL's default for EC and RSA keys. */
		if (mdname == NULL || mdname[0] == '\0')
			mdname = "SHA256";
		if ((ctx->md = md_lookup(ctx, mdname)) == NULL)
			return 0;
	}
	if (!sig_set_ctx_params(ctx, params))
		return 0;
	ctx->op = op;
	return 1;
}

static int sig_sign_init(void *vctx, void *provkey, const OSSL_PARAM params[])
{
	return sig_init(vctx, provkey, params, OP_SIGN, NULL);
}

static int sig_digest_sign_init(void *vctx, const char *mdname, void *provkey,
				const OSSL_PARAM params[])
{
	return sig_init(vctx, provkey, params, OP_DIGEST_SIGN, mdname);
}

/* The TLS SignatureScheme, from the one table in common/scheme.c. */
static uint16_t sig_scheme(const struct sigctx *ctx)
{
	const struct scheme *s;

	if (ctx->key_type == MTLS_AGENT_KEY_ED25519)
		return MTLS_AGENT_ED25519;
	/* The agent takes any ECDSA scheme with any curve: the digest picks it. */
	if (ctx->key_type == MTLS_AGENT_KEY_EC)
		s = scheme_for_digest(MTLS_AGENT_KEY_EC, SIG_PAD_NONE, ctx->md->nid, 0);
	else
		s = scheme_for_digest(MTLS_AGENT_KEY_RSA,
				      ctx->pad == RSA_PKCS1_PSS_PADDING ? SIG_PAD_PSS
									: SIG_PAD_PKCS1,
				      ctx->md->nid, 0);
	return s != NULL ? s->code : 0;
}

/* One SIGN round trip. flags: 0 (data is the message) or MTLS_AGENT_SIGN_DIGEST. */
static int agent_sign(struct sigctx *ctx, unsigned flags, const uint8_t *data, size_t len,
		      unsigned char *sig, size_t *siglen, size_t sigsize)
{
	const struct mtlsa_key *key = ctx->key;
	uint8_t *out = NULL;
	size_t out_len = 0;
	char err[MTLSA_ERRMSG_MAX] = "";
	uint16_t scheme;
	int r;

	if (ctx->key_type == MTLS_AGENT_KEY_RSA && ctx->pad == RSA_PKCS1_PSS_PADDING) {
		if (ctx->saltlen != RSA_PSS_SALTLEN_DIGEST &&
		    (ctx->saltlen < 0 || (size_t)ctx->saltlen != ctx->md->len)) {
			MTLSA_RAISE(ctx->prov, MTLSA_R_UNSUPPORTED_SALTLEN,
				    "PSS salt length %d not supported with %s: the agent signs "
				    "with salt length = digest length (%zu)",
				    ctx->saltlen, ctx->md->name, ctx->md->len);
			return 0;
		}
		if (ctx->mgf1 != NULL && ctx->mgf1 != ctx->md) {
			MTLSA_RAISE(ctx->prov, MTLSA_R_MGF1_MISMATCH,
				    "MGF1 with %s, signature with %s: the agent uses one digest "
				    "for both",
				    ctx->mgf1->name, ctx->md->name);
			return 0;
		}
	}
	/* As OpenSSL's own signers do: a buffer for the largest signature, or no signature. */
	if (sigsize < key->max_size) {
		MTLSA_RAISE(ctx->prov, MTLSA_R_BUFFER_TOO_SMALL,
			    "signature buffer of %zu bytes, %zu needed", sigsize, key->max_size);
		return 0;
	}
	scheme = sig_scheme(ctx);
	if ((r = ctx->prov->transport->sign(ctx->prov, key->name, key->spki_hash, scheme, flags,
					    data, len, &out, &out_len, err, sizeof(err))) != 0) {
		MTLSA_RAISE(ctx->prov, -r, "%s", err);
		return 0;
	}
	mtlsa_debug("\"%s\" signed %zu bytes%s with %s: %zu-byte signature", key->name, len,
		    flags != 0 ? " (digest)" : "", mtls_agent_scheme_name(scheme), out_len);
	if (out_len > key->max_size) {
		MTLSA_RAISE(ctx->prov, -MTLS_AGENT_ERR_PROTOCOL,
			    "the agent sent a signature of %zu bytes, at most %zu expected",
			    out_len, key->max_size);
		free(out);
		return 0;
	}
	memcpy(sig, out, out_len);
	*siglen = out_len;
	free(out);
	return 1;
}

/* One-shot DigestSign: the first call (sig == NULL) asks for the size and is answered here. */
static int sig_digest_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize,
			   const unsigned char *tbs, size_t tbslen)
{
	struct sigctx *ctx = vctx;

	if (ctx->op != OP_DIGEST_SIGN) {
		MTLSA_RAISE(ctx->prov, MTLSA_R_NOT_INITIALISED, "digest_sign_init was not called");
		return 0;
	}
	if (sig == NULL) {
		*siglen = ctx->key->max_size;
		return 1;
	}
	return agent_sign(ctx, 0, tbs, tbslen, sig, siglen, sigsize);
}

/* PureEdDSA takes no parameters; it cannot stream either, so no update/final are offered. */
static const OSSL_PARAM *sig_ed25519_settable_ctx_params(void *vctx, void *provctx)
{
	static const OSSL_PARAM params[] = {OSSL_PARAM_END};

	(void)vctx;
	(void)provctx;
	return params;
}

static int sig_digest_sign_update(void *vctx, const unsigned char *data, size_t len)
{
	struct sigctx *ctx = vctx;
	uint8_t *p;
	size_t cap;

	if (ctx->op != OP_DIGEST_SIGN) {
		MTLSA_RAISE(ctx->prov, MTLSA_R_NOT_INITIALISED, "digest_sign_init was not called");
		return 0;
	}
	if (len > PROTO_MAX_SIGN_INPUT - ctx->msg_len) {
		MTLSA_RAISE(ctx->prov, MTLSA_R_MESSAGE_TOO_LONG,
			    "message over %u bytes: the agent signs at most that much",
			    PROTO_MAX_SIGN_INPUT);
		return 0;
	}
	if (ctx->msg_len + len > ctx->msg_cap) {
		cap = ctx->msg_cap > 0 ? ctx->msg_cap : 4096;
		while (cap < ctx->msg_len + len)
			cap *= 2;
		if (cap > PROTO_MAX_SIGN_INPUT)
			cap = PROTO_MAX_SIGN_INPUT;
		/* Not realloc: the old buffer is wiped. */
		if ((p = malloc(cap)) == NULL) {
			MTLSA_RAISE(ctx->prov, MTLSA_R_OUT_OF_MEMORY, "no memory for the message");
			return 0;
		}
		if (ctx->msg_len > 0)
			memcpy(p, ctx->msg, ctx->msg_len);
		msg_free(ctx->msg, ctx->msg_cap);
		ctx->msg = p;
		ctx->msg_cap = cap;
	}
	if (len > 0)
		memcpy(ctx->msg + ctx->msg_len, data, len);
	ctx->msg_len += len;
	return 1;
}

static int sig_digest_sign_final(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize)
{
	struct sigctx *ctx = vctx;

	if (ctx->op != OP_DIGEST_SIGN) {
		MTLSA_RAISE(ctx->prov, MTLSA_R_NOT_INITIALISED, "digest_sign_init was not called");
		return 0;
	}
	if (sig == NULL) {
		*siglen = ctx->key->max_size;
		return 1;
	}
	return agent_sign(ctx, 0, ctx->msg, ctx->msg_len, sig, siglen, sigsize);
}

/* Pre-hashed input: sent as a digest, signed only under sign-policy = digest or any. */
static int sig_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize,
		    const unsigned char *tbs, size_t tbslen)
{
	struct sigctx *ctx = vctx;
	const struct scheme_md *md;

	if (ctx->op != OP_SIGN) {
		MTLSA_RAISE(ctx->prov, MTLSA_R_NOT_INITIALISED, "sign_init was not called");
		return 0;
	}
	if (sig == NULL) {
		*siglen = ctx->key->max_size;
		return 1;
	}
	md = ctx->md != NULL ? ctx->md : scheme_md_by_len(tbslen);
	if (md == NULL || md->len != tbslen) {
		MTLSA_RAISE(ctx->prov, MTLSA_R_UNSUPPORTED_DIGEST,
			    "input of %zu bytes is not a %s digest: the agent signs SHA-256, "
			    "SHA-384 or SHA-512 digests",
			    tbslen, ctx->md != NULL ? ctx->md->name : "SHA-256/384/512");
		return 0;
	}
	ctx->md = md;
	return agent_sign(ctx, MTLS_AGENT_SIGN_DIGEST, tbs, tbslen, sig, siglen, sigsize);
}

const OSSL_DISPATCH mtlsa_signature_ecdsa_functions[] = {
	{OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))sig_ecdsa_newctx},
	{OSSL_FUNC_SIGNATURE_FREECTX, (void (*)(void))sig_freectx},
	{OSSL_FUNC_SIGNATURE_DUPCTX, (void (*)(void))sig_dupctx},
	{OSSL_FUNC_SIGNATURE_SIGN_INIT, (void (*)(void))sig_sign_init},
	{OSSL_FUNC_SIGNATURE_SIGN, (void (*)(void))sig_sign},
	{OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, (void (*)(void))sig_digest_sign_init},
	{OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, (void (*)(void))sig_digest_sign_update},
	{OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, (void (*)(void))sig_digest_sign_final},
	{OSSL_FUNC_SIGNATURE_DIGEST_SIGN, (void (*)(void))sig_digest_sign},
	{OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, (void (*)(void))sig_get_ctx_params},
	{OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, (void (*)(void))sig_gettable_ctx_params},
	{OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, (void (*)(void))sig_set_ctx_params},
	{OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, (void (*)(void))sig_ecdsa_settable_ctx_params},
	{0, NULL},
};

const OSSL_DISPATCH mtlsa_signature_rsa_functions[] = {
	{OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))sig_rsa_newctx},
	{OSSL_FUNC_SIGNATURE_FREECTX, (void (*)(void))sig_freectx},
	{OSSL_FUNC_SIGNATURE_DUPCTX, (void (*)(void))sig_dupctx},
	{OSSL_FUNC_SIGNATURE_SIGN_INIT, (void (*)(void))sig_sign_init},
	{OSSL_FUNC_SIGNATURE_SIGN, (void (*)(void))sig_sign},
	{OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, (void (*)(void))sig_digest_sign_init},
	{OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, (void (*)(void))sig_digest_sign_update},
	{OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, (void (*)(void))sig_digest_sign_final},
	{OSSL_FUNC_SIGNATURE_DIGEST_SIGN, (void (*)(void))sig_digest_sign},
	{OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, (void (*)(void))sig_get_ctx_params},
	{OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, (void (*)(void))sig_gettable_ctx_params},
	{OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, (void (*)(void))sig_set_ctx_params},
	{OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, (void (*)(void))sig_rsa_settable_ctx_params},
	{0, NULL},
};

const OSSL_DISPATCH mtlsa_signature_ed25519_functions[] = {
	{OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))sig_ed25519_newctx},
	{OSSL_FUNC_SIGNATURE_FREECTX, (void (*)(void))sig_freectx},
	{OSSL_FUNC_SIGNATURE_DUPCTX, (void (*)(void))sig_dupctx},
	{OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, (void (*)(void))sig_digest_sign_init},
	{OSSL_FUNC_SIGNATURE_DIGEST_SIGN, (void (*)(void))sig_digest_sign},
	{OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, (void (*)(void))sig_get_ctx_params},
	{OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, (void (*)(void))sig_gettable_ctx_params},
	{OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, (void (*)(void))sig_set_ctx_params},
	{OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, (void (*)(void))sig_ed25519_settable_ctx_params},
	{0, NULL},
};
