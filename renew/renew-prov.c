#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/provider.h>
#include <openssl/store.h>

#include "renew/renew-prov.h"
#include "agent/sign.h"
#include "common/log.h"
#include "common/scheme.h"
#include "common/util.h"
#include "provider/prov.h"
#include "mtls-agent/client.h"

#define INTERNAL_PROV_NAME "mtlsagent-internal"

static pthread_mutex_t rt_lock = PTHREAD_MUTEX_INITIALIZER;
static struct runtime *resolve_rt;
static OSSL_LIB_CTX *libctx;
static OSSL_PROVIDER *prov_default, *prov_internal;

/*
 * Key names inside the private context are "IDENTITY/SPKIHASH" (hex): the
 * generation is part of the name, so a key loaded for a renewal keeps
 * naming the same hardware key whatever the identity's current key becomes.
 */
static int resolve(const char *name, struct runtime **rt_out, struct identity_rt **id_out,
		   struct ks_key **key_out, char *err, size_t errlen)
{
	char ident[256], hex[2 * 32 + 1];
	const char *slash = strrchr(name, '/');
	uint8_t hash[32];
	struct identity_rt *id;
	struct runtime *rt;
	struct ks_key *key;
	size_t i;

	if (slash == NULL || (size_t)(slash - name) >= sizeof(ident) || strlen(slash + 1) != 64) {
		snprintf(err, errlen, "bad internal key name");
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	memcpy(ident, name, (size_t)(slash - name));
	ident[slash - name] = '\0';
	for (i = 0; i < 32; i++) {
		unsigned v;

		if (sscanf(slash + 1 + 2 * i, "%2x", &v) != 1) {
			snprintf(err, errlen, "bad internal key name");
			return MTLS_AGENT_ERR_INVALID_ARG;
		}
		hash[i] = (uint8_t)v;
	}
	pthread_mutex_lock(&rt_lock);
	rt = resolve_rt;
	if (rt != NULL)
		runtime_ref(rt);
	pthread_mutex_unlock(&rt_lock);
	if (rt == NULL || (id = runtime_identity(rt, ident)) == NULL) {
		snprintf(err, errlen, "identity \"%s\" is not configured", ident);
		runtime_unref(rt);
		return MTLS_AGENT_ERR_NOT_FOUND;
	}
	pthread_mutex_lock(&id->lock);
	key = identity_key_by_hash(id, hash);
	pthread_mutex_unlock(&id->lock);
	if (key == NULL) {
		hex_encode(hash, 8, hex);
		snprintf(err, errlen, "identity \"%s\" no longer holds key %s...", ident, hex);
		runtime_unref(rt);
		return MTLS_AGENT_ERR_KEY_GONE;
	}
	*rt_out = rt;
	*id_out = id;
	*key_out = key;
	return 0;
}

static int internal_get_identity(struct mtlsa_prov *prov, const char *name,
				 struct mtls_agent_identity **out, char *err, size_t errlen)
{
	struct mtls_agent_identity *rec;
	struct identity_rt *id;
	struct runtime *rt;
	struct ks_key *key;
	int r;

	(void)prov;
	*out = NULL;
	if ((r = resolve(name, &rt, &id, &key, err, errlen)) != 0)
		return r;
	if ((rec = calloc(1, sizeof(*rec))) == NULL || (rec->name = strdup(name)) == NULL ||
	    (rec->spki = malloc(key->spki_len)) == NULL) {
		mtls_agent_identity_free(rec);
		runtime_unref(rt);
		snprintf(err, errlen, "out of memory");
		return MTLS_AGENT_ERR_NOMEM;
	}
	memcpy(rec->spki, key->spki, key->spki_len);
	rec->spki_len = key->spki_len;
	rec->key_type = key->type;
	rec->key_bits = key->bits;
	runtime_unref(rt);
	*out = rec;
	return 0;
}

static int internal_sign(struct mtlsa_prov *prov, const char *name, const uint8_t *spki_hash,
			 uint16_t code, unsigned flags, const uint8_t *data, size_t len,
			 uint8_t **sig, size_t *siglen, char *err, size_t errlen)
{
	const struct scheme *scheme = scheme_by_code(code);
	struct identity_rt *id;
	struct runtime *rt;
	struct ks_key *key;
	int r;

	(void)prov;
	if (scheme == NULL) {
		snprintf(err, errlen, "unknown signature scheme 0x%04x", code);
		return MTLS_AGENT_ERR_SCHEME;
	}
	if ((r = resolve(name, &rt, &id, &key, err, errlen)) != 0)
		return r;
	/* resolve() found the key by this hash; the check keeps the selector's meaning explicit. */
	if (memcmp(key->spki_hash, spki_hash, 32) != 0) {
		snprintf(err, errlen, "identity \"%s\" no longer holds the requested key",
			 id->cfg->name);
		runtime_unref(rt);
		return MTLS_AGENT_ERR_KEY_GONE;
	}
	r = identity_sign(id, key, scheme, flags, data, len, SIGN_RENEWAL, sig, siglen, NULL, NULL,
			  err, errlen);
	runtime_unref(rt);
	return r;
}

static const struct mtlsa_transport internal_transport = {
	.get_identity = internal_get_identity,
	.sign = internal_sign,
};

int renew_prov_init(char *err, size_t errlen)
{
	if (libctx != NULL)
		return 0;
	mtlsa_set_internal_transport(&internal_transport);
	if ((libctx = OSSL_LIB_CTX_new()) == NULL ||
	    !OSSL_PROVIDER_add_builtin(libctx, INTERNAL_PROV_NAME, mtlsa_internal_provider_init) ||
	    (prov_default = OSSL_PROVIDER_load(libctx, "default")) == NULL ||
	    (prov_internal = OSSL_PROVIDER_load(libctx, INTERNAL_PROV_NAME)) == NULL ||
	    /*
	     * Everything not explicitly ours (verifying the CA's signatures, hashing,
	     * TLS) prefers OpenSSL's default provider; keystore keys still sign with
	     * ours, because libcrypto falls back to the key's own provider.
	     */
	    !EVP_set_default_properties(libctx, "?provider=default")) {
		snprintf(err, errlen, "cannot set up the renewal key provider");
		renew_prov_cleanup();
		return -1;
	}
	return 0;
}

void renew_prov_cleanup(void)
{
	renew_prov_set_runtime(NULL);
	if (prov_internal != NULL)
		OSSL_PROVIDER_unload(prov_internal);
	if (prov_default != NULL)
		OSSL_PROVIDER_unload(prov_default);
	OSSL_LIB_CTX_free(libctx);
	prov_internal = prov_default = NULL;
	libctx = NULL;
}

OSSL_LIB_CTX *renew_prov_libctx(void)
{
	return libctx;
}

void renew_prov_set_runtime(struct runtime *rt)
{
	struct runtime *old;

	if (rt != NULL)
		runtime_ref(rt);
	pthread_mutex_lock(&rt_lock);
	old = resolve_rt;
	resolve_rt = rt;
	pthread_mutex_unlock(&rt_lock);
	runtime_unref(old);
}

EVP_PKEY *renew_prov_key(struct identity_rt *id, struct ks_key *key, char *err, size_t errlen)
{
	char uri[300], hex[2 * 32 + 1];
	OSSL_STORE_CTX *store;
	OSSL_STORE_INFO *info;
	EVP_PKEY *pkey = NULL;

	if (libctx == NULL) {
		snprintf(err, errlen, "the renewal key provider is not set up");
		return NULL;
	}
	hex_encode(key->spki_hash, 32, hex);
	snprintf(uri, sizeof(uri), "agent:%s/%s", id->cfg->name, hex);
	store = OSSL_STORE_open_ex(uri, libctx, "provider=" MTLSA_PROV_NAME, NULL, NULL, NULL, NULL,
				   NULL);
	if (store != NULL) {
		OSSL_STORE_expect(store, OSSL_STORE_INFO_PKEY);
		while (pkey == NULL && !OSSL_STORE_eof(store)) {
			if ((info = OSSL_STORE_load(store)) == NULL)
				break;
			if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
				pkey = OSSL_STORE_INFO_get1_PKEY(info);
			OSSL_STORE_INFO_free(info);
		}
		OSSL_STORE_close(store);
	}
	if (pkey == NULL) {
		unsigned long e = ERR_peek_last_error();

		snprintf(err, errlen, "identity \"%s\": cannot use its key for renewal: %s",
			 id->cfg->name,
			 e != 0 && ERR_reason_error_string(e) != NULL ? ERR_reason_error_string(e)
								      : "no key");
	}
	ERR_clear_error();
	return pkey;
}
