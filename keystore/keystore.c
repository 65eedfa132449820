#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include "keystore/keystore.h"
#include "mtls-agent/client.h"

static const struct ks_backend *const backends[] = {
	&ks_pkcs11_backend,
#ifdef HAVE_TPM2
	&ks_tpm2_backend,
#endif
};

int ks_open(const struct ks_params *params, struct keystore **out, char *err, size_t errlen)
{
	size_t i;

	*out = NULL;
	for (i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
		if (params->type != NULL && strcmp(backends[i]->type, params->type) == 0)
			return backends[i]->open(params, out, err, errlen);
	snprintf(err, errlen, "keystore \"%s\": type \"%s\" is not supported by this build",
		 params->name, params->type != NULL ? params->type : "");
	return MTLS_AGENT_ERR_CONFIG;
}

void ks_close(struct keystore *ks)
{
	if (ks != NULL)
		ks->backend->close(ks);
}

int ks_same_params(const struct keystore *ks, const struct ks_params *params)
{
	if (params->type == NULL || strcmp(ks->backend->type, params->type) != 0)
		return 0;
	return ks->backend->same_params(ks, params);
}

int ks_find_keys(struct keystore *ks, const char *key_ref, struct ks_key ***keys, size_t *n,
		 char *err, size_t errlen)
{
	return ks->backend->find_keys(ks, key_ref, keys, n, err, errlen);
}

int ks_keygen(struct keystore *ks, const char *key_ref, int gen_type, struct ks_key **out,
	      char *err, size_t errlen)
{
	return ks->backend->keygen(ks, key_ref, gen_type, out, err, errlen);
}

int ks_sign(struct keystore *ks, struct ks_key *key, const struct scheme *scheme, const uint8_t *in,
	    size_t inlen, uint8_t **sig, size_t *siglen, char *err, size_t errlen)
{
	*sig = NULL;
	*siglen = 0;
	if (key->ks != ks || scheme->key_type != key->type) {
		snprintf(err, errlen, "scheme %s does not fit this key", scheme->name);
		return MTLS_AGENT_ERR_SCHEME;
	}
	if (scheme->hash_len != 0 && inlen != scheme->hash_len) {
		snprintf(err, errlen, "digest length %zu does not match %s", inlen, scheme->name);
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	return ks->backend->sign(ks, key, scheme, in, inlen, sig, siglen, err, errlen);
}

void ks_state(struct keystore *ks, char *buf, size_t len)
{
	ks->backend->state(ks, buf, len);
}

const char *ks_name(const struct keystore *ks)
{
	return ks->name;
}

uint64_t ks_reconnects(struct keystore *ks)
{
	return atomic_load(&ks->reconnects);
}

const char *ks_type(const struct keystore *ks)
{
	return ks->backend->type;
}

EVP_PKEY *ks_pkey_fromdata(const char *alg, OSSL_PARAM_BLD *bld)
{
	EVP_PKEY_CTX *ctx = NULL;
	OSSL_PARAM *params = NULL;
	EVP_PKEY *pkey = NULL;

	if ((params = OSSL_PARAM_BLD_to_param(bld)) == NULL ||
	    (ctx = EVP_PKEY_CTX_new_from_name(NULL, alg, NULL)) == NULL ||
	    EVP_PKEY_fromdata_init(ctx) != 1 ||
	    EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
		pkey = NULL;
	OSSL_PARAM_free(params);
	EVP_PKEY_CTX_free(ctx);
	return pkey;
}

int ks_key_set_public(struct ks_key *key, EVP_PKEY *pub)
{
	unsigned char *der = NULL;
	char group[64];
	int len;

	if ((len = i2d_PUBKEY(pub, &der)) <= 0) {
		EVP_PKEY_free(pub);
		return MTLS_AGENT_ERR_KEYSTORE;
	}
	if (EVP_Digest(der, (size_t)len, key->spki_hash, NULL, EVP_sha256(), NULL) != 1) {
		OPENSSL_free(der);
		EVP_PKEY_free(pub);
		return MTLS_AGENT_ERR_INTERNAL;
	}
	key->pub = pub;
	key->spki = der;
	key->spki_len = (size_t)len;
	key->bits = (unsigned)EVP_PKEY_get_bits(pub);
	key->curve_nid = NID_undef;
	switch (EVP_PKEY_get_base_id(pub)) {
	case EVP_PKEY_EC:
		key->type = MTLS_AGENT_KEY_EC;
		if (EVP_PKEY_get_utf8_string_param(pub, "group", group, sizeof(group), NULL) == 1)
			key->curve_nid = OBJ_sn2nid(group);
		break;
	case EVP_PKEY_RSA:
		key->type = MTLS_AGENT_KEY_RSA;
		break;
	case EVP_PKEY_ED25519:
		key->type = MTLS_AGENT_KEY_ED25519;
		break;
	default:
		key->type = MTLS_AGENT_KEY_NONE;
		break;
	}
	return 0;
}

void ks_key_free_public(struct ks_key *key)
{
	EVP_PKEY_free(key->pub);
	OPENSSL_free(key->spki);
	key->pub = NULL;
	key->spki = NULL;
	key->spki_len = 0;
}

int ks_ecdsa_raw_to_der(const uint8_t *raw, size_t rawlen, uint8_t **der, size_t *derlen)
{
	ECDSA_SIG *s = NULL;
	BIGNUM *r = NULL, *sv = NULL;
	unsigned char *p = NULL;
	int len, ret = MTLS_AGENT_ERR_KEYSTORE;

	*der = NULL;
	*derlen = 0;
	if (rawlen == 0 || rawlen % 2 != 0 || rawlen > 2 * 66)
		return MTLS_AGENT_ERR_KEYSTORE;
	if ((s = ECDSA_SIG_new()) == NULL ||
	    (r = BN_bin2bn(raw, (int)(rawlen / 2), NULL)) == NULL ||
	    (sv = BN_bin2bn(raw + rawlen / 2, (int)(rawlen / 2), NULL)) == NULL)
		goto out;
	if (ECDSA_SIG_set0(s, r, sv) != 1)
		goto out;
	r = sv = NULL;
	if ((len = i2d_ECDSA_SIG(s, &p)) <= 0)
		goto out;
	if ((*der = malloc((size_t)len)) == NULL) {
		ret = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	memcpy(*der, p, (size_t)len);
	*derlen = (size_t)len;
	ret = 0;
out:
	OPENSSL_free(p);
	BN_free(r);
	BN_free(sv);
	ECDSA_SIG_free(s);
	return ret;
}

int ks_purge_half(struct keystore *ks, const char *key_ref, unsigned *purged, char *err,
		  size_t errlen)
{
	*purged = 0;
	if (ks->backend->purge_half == NULL)
		return 0;
	return ks->backend->purge_half(ks, key_ref, purged, err, errlen);
}

int ks_delete(struct keystore *ks, struct ks_key *key, char *err, size_t errlen)
{
	if (key == NULL || key->ks != ks) {
		snprintf(err, errlen, "key does not belong to keystore \"%s\"", ks_name(ks));
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	if (ks->backend->delete_key == NULL) {
		snprintf(err, errlen, "keystore \"%s\" (%s) cannot delete keys", ks_name(ks),
			 ks_type(ks));
		return MTLS_AGENT_ERR_UNSUPPORTED;
	}
	return ks->backend->delete_key(ks, key, err, errlen);
}
