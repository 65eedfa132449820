/*
 * OSSL_STORE loader for "agent:NAME": the identity's key (by reference, the
 * private half stays in the agent), then its certificate chain, leaf first.
 *
 *   openssl s_client -provider default -provider mtlsagent -key agent:device -cert agent:device
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/params.h>
#include <openssl/store.h>

#include "provider/prov.h"

#define URI_SCHEME "agent:"

struct storectx {
	struct mtlsa_prov *prov;
	struct mtlsa_key *key;
	struct mtls_agent_identity *ident; /* its chain */
	int expect;			   /* OSSL_STORE_INFO_* the caller wants, 0 for anything */
	size_t next;			   /* 0: the key; 1..chain_len: certificate next-1 */
};

static void store_close_ctx(struct storectx *ctx)
{
	if (ctx == NULL)
		return;
	mtlsa_key_free(ctx->key);
	mtls_agent_identity_free(ctx->ident);
	free(ctx);
}

static void *store_open(void *provctx, const char *uri)
{
	struct mtlsa_prov *prov = provctx;
	struct storectx *ctx;
	const char *name;

	if (uri == NULL || strncasecmp(uri, URI_SCHEME, strlen(URI_SCHEME)) != 0 ||
	    uri[strlen(URI_SCHEME)] == '\0') {
		MTLSA_RAISE(prov, MTLSA_R_BAD_URI, "expected agent:NAME, got \"%.128s\"",
			    uri != NULL ? uri : "");
		return NULL;
	}
	name = uri + strlen(URI_SCHEME);
	if ((ctx = calloc(1, sizeof(*ctx))) == NULL) {
		MTLSA_RAISE(prov, MTLSA_R_OUT_OF_MEMORY, "no memory for a store context");
		return NULL;
	}
	ctx->prov = prov;
	/* No key reference file here: without the agent there is nothing to load. */
	if (mtlsa_key_from_agent(prov, name, 1, &ctx->key, &ctx->ident) != 0) {
		store_close_ctx(ctx);
		return NULL;
	}
	mtlsa_debug("store: \"%s\" (%s, %d bits), %zu certificate(s)", name,
		    mtlsa_key_type_name(ctx->key), ctx->key->bits, ctx->ident->chain_len);
	return ctx;
}

/* Skips what the caller does not expect; the core filters too, this saves the work. */
static void store_skip(struct storectx *ctx)
{
	if (ctx->next == 0 && ctx->expect != 0 && ctx->expect != OSSL_STORE_INFO_PKEY &&
	    ctx->expect != OSSL_STORE_INFO_PUBKEY)
		ctx->next = 1;
	if (ctx->next > 0 && ctx->expect != 0 && ctx->expect != OSSL_STORE_INFO_CERT)
		ctx->next = ctx->ident->chain_len + 1;
}

static int store_eof(void *vctx)
{
	struct storectx *ctx = vctx;

	store_skip(ctx);
	return ctx->next > ctx->ident->chain_len;
}

static int store_load(void *vctx, OSSL_CALLBACK *object_cb, void *object_cbarg,
		      OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
	struct storectx *ctx = vctx;
	struct mtlsa_key *key = ctx->key; /* params[2] points at it until object_cb returns */
	OSSL_PARAM params[4];
	int type;

	(void)pw_cb;
	(void)pw_cbarg;
	if (store_eof(ctx))
		return 0;
	if (ctx->next++ == 0) {
		type = OSSL_OBJECT_PKEY;
		params[0] = OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type);
		params[1] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE,
							     (char *)mtlsa_key_type_name(key), 0);
		params[2] = OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &key,
							      sizeof(key));
	} else {
		const struct mtls_agent_cert *cert = &ctx->ident->chain[ctx->next - 2];

		type = OSSL_OBJECT_CERT;
		params[0] = OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type);
		params[1] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_STRUCTURE,
							     "Certificate", 0);
		params[2] = OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_DATA, cert->der,
							      cert->len);
	}
	params[3] = OSSL_PARAM_construct_end();
	return object_cb(params, object_cbarg);
}

static int store_close(void *vctx)
{
	store_close_ctx(vctx);
	return 1;
}

static const OSSL_PARAM *store_settable_ctx_params(void *provctx)
{
	static const OSSL_PARAM params[] = {
		OSSL_PARAM_int(OSSL_STORE_PARAM_EXPECT, NULL),
		OSSL_PARAM_END,
	};

	(void)provctx;
	return params;
}

static int store_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
	struct storectx *ctx = vctx;
	const OSSL_PARAM *p;
	int expect;

	if (params == NULL)
		return 1;
	if ((p = OSSL_PARAM_locate_const(params, OSSL_STORE_PARAM_EXPECT)) != NULL) {
		if (!OSSL_PARAM_get_int(p, &expect)) {
			MTLSA_RAISE(ctx->prov, MTLSA_R_BAD_PARAMETER, "bad expect parameter");
			return 0;
		}
		ctx->expect = expect;
	}
	/* Search criteria and input types do not apply: one identity, one chain. */
	return 1;
}

const OSSL_DISPATCH mtlsa_store_functions[] = {
	{OSSL_FUNC_STORE_OPEN, (void (*)(void))store_open},
	{OSSL_FUNC_STORE_SETTABLE_CTX_PARAMS, (void (*)(void))store_settable_ctx_params},
	{OSSL_FUNC_STORE_SET_CTX_PARAMS, (void (*)(void))store_set_ctx_params},
	{OSSL_FUNC_STORE_LOAD, (void (*)(void))store_load},
	{OSSL_FUNC_STORE_EOF, (void (*)(void))store_eof},
	{OSSL_FUNC_STORE_CLOSE, (void (*)(void))store_close},
	{0, NULL},
};
