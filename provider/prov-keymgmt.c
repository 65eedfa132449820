/*
 * Key management for keys held by the agent (EC, RSA and Ed25519).
 *
 * A key is a name and a public key; everything OpenSSL asks about it is
 * answered locally from the public half, which lives in the provider's own
 * library context (default provider only). The private half never leaves the
 * agent: an export that asks for it is refused, which is also what makes
 * libcrypto pick this provider's signature implementation for the key.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/sha.h>

#include "common/util.h"
#include "provider/prov.h"

/* --- key objects ------------------------------------------------------------------------ */

/* The public key as a default-provider EVP_PKEY (not a legacy one: its params must answer). */
static EVP_PKEY *pubkey_from_spki(struct mtlsa_prov *prov, const uint8_t *spki, size_t len)
{
	OSSL_DECODER_CTX *dctx;
	EVP_PKEY *pk = NULL;
	const unsigned char *p = spki;
	size_t left = len;

	dctx = OSSL_DECODER_CTX_new_for_pkey(&pk, "DER", "SubjectPublicKeyInfo", NULL,
					     EVP_PKEY_PUBLIC_KEY, prov->libctx, NULL);
	if (dctx == NULL)
		return NULL;
	if (!OSSL_DECODER_from_data(dctx, &p, &left) || left != 0) {
		EVP_PKEY_free(pk);
		pk = NULL;
	}
	OSSL_DECODER_CTX_free(dctx);
	return pk;
}

static struct mtlsa_key *key_alloc(struct mtlsa_prov *prov)
{
	struct mtlsa_key *key = calloc(1, sizeof(*key));

	if (key == NULL) {
		MTLSA_RAISE(prov, MTLSA_R_OUT_OF_MEMORY, "no memory for a key");
		return NULL;
	}
	key->magic = MTLSA_KEY_MAGIC;
	key->refs = 1;
	key->prov = prov;
	return key;
}

struct mtlsa_key *mtlsa_key_new(struct mtlsa_prov *prov, const char *name, const uint8_t *spki,
				size_t spki_len)
{
	struct mtlsa_key *key;

	if ((key = key_alloc(prov)) == NULL)
		return NULL;
	if ((key->name = strdup(name)) == NULL || (key->spki = malloc(spki_len)) == NULL) {
		MTLSA_RAISE(prov, MTLSA_R_OUT_OF_MEMORY, "no memory for a key");
		goto fail;
	}
	memcpy(key->spki, spki, spki_len);
	key->spki_len = spki_len;
	SHA256(spki, spki_len, key->spki_hash);

	ERR_set_mark();
	key->pub = pubkey_from_spki(prov, spki, spki_len);
	ERR_pop_to_mark();
	if (key->pub == NULL) {
		MTLSA_RAISE(prov, MTLSA_R_BAD_KEY,
			    "public key of identity \"%s\" cannot be decoded", name);
		goto fail;
	}
	if (EVP_PKEY_is_a(key->pub, "EC")) {
		key->type = MTLS_AGENT_KEY_EC;
		if (!EVP_PKEY_get_group_name(key->pub, key->group, sizeof(key->group), NULL)) {
			MTLSA_RAISE(prov, MTLSA_R_BAD_KEY,
				    "EC key of identity \"%s\" has no named curve", name);
			goto fail;
		}
	} else if (EVP_PKEY_is_a(key->pub, "RSA")) {
		key->type = MTLS_AGENT_KEY_RSA;
	} else if (EVP_PKEY_is_a(key->pub, "ED25519")) {
		key->type = MTLS_AGENT_KEY_ED25519;
	} else {
		MTLSA_RAISE(prov, MTLSA_R_BAD_KEY,
			    "key type %s of identity \"%s\" is not supported (EC, RSA and "
			    "Ed25519 are)",
			    EVP_PKEY_get0_type_name(key->pub), name);
		goto fail;
	}
	key->bits = EVP_PKEY_get_bits(key->pub);
	key->security_bits = EVP_PKEY_get_security_bits(key->pub);
	if (key->bits <= 0 || EVP_PKEY_get_size(key->pub) <= 0) {
		MTLSA_RAISE(prov, MTLSA_R_BAD_KEY, "public key of identity \"%s\" has no size",
			    name);
		goto fail;
	}
	key->max_size = (size_t)EVP_PKEY_get_size(key->pub);
	return key;
fail:
	mtlsa_key_free(key);
	return NULL;
}

void mtlsa_key_up_ref(struct mtlsa_key *key)
{
	__atomic_add_fetch(&key->refs, 1, __ATOMIC_RELAXED);
}

void mtlsa_key_free(struct mtlsa_key *key)
{
	if (key == NULL || __atomic_sub_fetch(&key->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	EVP_PKEY_free(key->pub);
	free(key->spki);
	free(key->name);
	free(key);
}

const char *mtlsa_key_type_name(const struct mtlsa_key *key)
{
	switch (key->type) {
	case MTLS_AGENT_KEY_EC:
		return "EC";
	case MTLS_AGENT_KEY_ED25519:
		return "ED25519";
	}
	return "RSA";
}

struct mtlsa_key *mtlsa_key_from_ref(const void *ref, size_t ref_size)
{
	struct mtlsa_key *key;

	if (ref == NULL || ref_size != sizeof(key))
		return NULL;
	memcpy(&key, ref, sizeof(key));
	if (key == NULL || key->magic != MTLSA_KEY_MAGIC || key->name == NULL)
		return NULL;
	return key;
}

int mtlsa_key_from_agent(struct mtlsa_prov *prov, const char *name, int raise,
			 struct mtlsa_key **key, struct mtls_agent_identity **ident)
{
	struct mtls_agent_identity *id = NULL;
	char err[MTLSA_ERRMSG_MAX] = "";
	int r;

	*key = NULL;
	if (ident != NULL)
		*ident = NULL;
	if ((r = prov->transport->get_identity(prov, name, &id, err, sizeof(err))) != 0) {
		if (raise)
			MTLSA_RAISE(prov, -r, "%s", err);
		else
			mtlsa_debug("identity \"%s\" from the agent: %s", name, err);
		return r;
	}
	if (id->key_type == MTLS_AGENT_KEY_NONE || id->spki_len == 0) {
		if (raise)
			MTLSA_RAISE(prov, MTLSA_R_NO_KEY, "identity \"%s\" has no key yet", name);
		else
			mtlsa_debug("identity \"%s\" has no key yet", name);
		mtls_agent_identity_free(id);
		return MTLS_AGENT_ERR_KEY_UNAVAILABLE;
	}
	if (!raise)
		ERR_set_mark();
	*key = mtlsa_key_new(prov, name, id->spki, id->spki_len);
	if (!raise)
		ERR_pop_to_mark();
	if (*key == NULL) {
		mtls_agent_identity_free(id);
		return MTLS_AGENT_ERR_PROTOCOL;
	}
	if (ident != NULL)
		*ident = id;
	else
		mtls_agent_identity_free(id);
	return 0;
}

/* --- KEYMGMT ---------------------------------------------------------------------------- */

static void *km_new(void *provctx)
{
	/* An empty key: nothing can be imported into it, but OpenSSL may ask for one. */
	return key_alloc(provctx);
}

static void km_free(void *keydata)
{
	mtlsa_key_free(keydata);
}

static void *km_load(const void *reference, size_t reference_sz)
{
	struct mtlsa_key *key = mtlsa_key_from_ref(reference, reference_sz);

	if (key != NULL)
		mtlsa_key_up_ref(key);
	return key;
}

/* Keys are immutable, so a duplicate is one more reference to the same object. */
static void *km_dup(const void *keydata, int selection)
{
	struct mtlsa_key *key = (struct mtlsa_key *)keydata;

	(void)selection;
	if (key == NULL)
		return NULL;
	mtlsa_key_up_ref(key);
	return key;
}

static int km_has(const void *keydata, int selection)
{
	const struct mtlsa_key *key = keydata;

	if (key == NULL)
		return 0;
	/* The private half is there: in the agent. */
	if ((selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0 && key->pub == NULL)
		return 0;
	return 1;
}

static int km_match(const void *keydata1, const void *keydata2, int selection)
{
	const struct mtlsa_key *a = keydata1, *b = keydata2;

	if (a == NULL || b == NULL || a->pub == NULL || b->pub == NULL)
		return 0;
	if ((selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0)
		return a->spki_len == b->spki_len && memcmp(a->spki, b->spki, a->spki_len) == 0;
	if ((selection & OSSL_KEYMGMT_SELECT_ALL_PARAMETERS) != 0)
		return EVP_PKEY_parameters_eq(a->pub, b->pub) == 1;
	return 1;
}

/* Answered locally: the size and group are what libssl needs to pick a signature scheme. */
static int km_get_params(void *keydata, OSSL_PARAM params[])
{
	const struct mtlsa_key *key = keydata;
	OSSL_PARAM *p;

	if (key == NULL || key->pub == NULL)
		return 0;
	/* Public values (curve point, modulus, default digest, ...) from the public half. */
	if (!EVP_PKEY_get_params(key->pub, params))
		return 0;
	if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_BITS)) != NULL &&
	    !OSSL_PARAM_set_int(p, key->bits))
		return 0;
	if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_SECURITY_BITS)) != NULL &&
	    !OSSL_PARAM_set_int(p, key->security_bits))
		return 0;
	if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_MAX_SIZE)) != NULL &&
	    !OSSL_PARAM_set_int(p, (int)key->max_size))
		return 0;
	if (key->type == MTLS_AGENT_KEY_EC &&
	    (p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_GROUP_NAME)) != NULL &&
	    !OSSL_PARAM_set_utf8_string(p, key->group))
		return 0;
	return 1;
}

static const OSSL_PARAM *km_ec_gettable_params(void *provctx)
{
	static const OSSL_PARAM params[] = {
		OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
		OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
		OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
		OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_FIELD_TYPE, NULL, 0),
		OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
		OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
		OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_X, NULL, 0),
		OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_Y, NULL, 0),
		OSSL_PARAM_END,
	};

	(void)provctx;
	return params;
}

static const OSSL_PARAM *km_rsa_gettable_params(void *provctx)
{
	static const OSSL_PARAM params[] = {
		OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
		OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
		OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
		OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
		OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
		OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
		OSSL_PARAM_END,
	};

	(void)provctx;
	return params;
}

static const OSSL_PARAM *km_ed25519_gettable_params(void *provctx)
{
	static const OSSL_PARAM params[] = {
		OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
		OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
		OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
		OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_MANDATORY_DIGEST, NULL, 0),
		OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
		OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
		OSSL_PARAM_END,
	};

	(void)provctx;
	return params;
}

/*
 * Public key and domain parameters only (SSL_CTX_check_private_key compares
 * public halves this way). Exporting "successfully" without the private key
 * would make libcrypto sign with the default provider and fail.
 */
static int km_export(void *keydata, int selection, OSSL_CALLBACK *param_cb, void *cbarg)
{
	const struct mtlsa_key *key = keydata;

	if (key == NULL || key->pub == NULL)
		return 0;
	if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0) {
		mtlsa_debug("export of \"%s\" with the private key refused", key->name);
		return 0;
	}
	return EVP_PKEY_export(key->pub, selection, param_cb, cbarg);
}

static const OSSL_PARAM *km_ec_export_types(int selection)
{
	static const OSSL_PARAM params[] = {
		OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
		OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
		OSSL_PARAM_int(OSSL_PKEY_PARAM_USE_COFACTOR_ECDH, NULL),
		OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
		OSSL_PARAM_END,
	};

	if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0)
		return NULL;
	return params;
}

static const OSSL_PARAM *km_rsa_export_types(int selection)
{
	static const OSSL_PARAM params[] = {
		OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
		OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
		OSSL_PARAM_END,
	};

	if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0)
		return NULL;
	return params;
}

static const OSSL_PARAM *km_ed25519_export_types(int selection)
{
	static const OSSL_PARAM params[] = {
		OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
		OSSL_PARAM_END,
	};

	if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0)
		return NULL;
	return params;
}

static const char *km_ed25519_query_operation_name(int operation_id)
{
	return operation_id == OSSL_OP_SIGNATURE ? "ED25519" : NULL;
}

static const char *km_ec_query_operation_name(int operation_id)
{
	return operation_id == OSSL_OP_SIGNATURE ? "ECDSA" : NULL;
}

static const char *km_rsa_query_operation_name(int operation_id)
{
	return operation_id == OSSL_OP_SIGNATURE ? "RSA" : NULL;
}

const OSSL_DISPATCH mtlsa_keymgmt_ec_functions[] = {
	{OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))km_new},
	{OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))km_free},
	{OSSL_FUNC_KEYMGMT_LOAD, (void (*)(void))km_load},
	{OSSL_FUNC_KEYMGMT_DUP, (void (*)(void))km_dup},
	{OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))km_has},
	{OSSL_FUNC_KEYMGMT_MATCH, (void (*)(void))km_match},
	{OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))km_get_params},
	{OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))km_ec_gettable_params},
	{OSSL_FUNC_KEYMGMT_EXPORT, (void (*)(void))km_export},
	{OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))km_ec_export_types},
	{OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))km_ec_query_operation_name},
	{0, NULL},
};

const OSSL_DISPATCH mtlsa_keymgmt_rsa_functions[] = {
	{OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))km_new},
	{OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))km_free},
	{OSSL_FUNC_KEYMGMT_LOAD, (void (*)(void))km_load},
	{OSSL_FUNC_KEYMGMT_DUP, (void (*)(void))km_dup},
	{OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))km_has},
	{OSSL_FUNC_KEYMGMT_MATCH, (void (*)(void))km_match},
	{OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))km_get_params},
	{OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))km_rsa_gettable_params},
	{OSSL_FUNC_KEYMGMT_EXPORT, (void (*)(void))km_export},
	{OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))km_rsa_export_types},
	{OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))km_rsa_query_operation_name},
	{0, NULL},
};

const OSSL_DISPATCH mtlsa_keymgmt_ed25519_functions[] = {
	{OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))km_new},
	{OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))km_free},
	{OSSL_FUNC_KEYMGMT_LOAD, (void (*)(void))km_load},
	{OSSL_FUNC_KEYMGMT_DUP, (void (*)(void))km_dup},
	{OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))km_has},
	{OSSL_FUNC_KEYMGMT_MATCH, (void (*)(void))km_match},
	{OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))km_get_params},
	{OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))km_ed25519_gettable_params},
	{OSSL_FUNC_KEYMGMT_EXPORT, (void (*)(void))km_export},
	{OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))km_ed25519_export_types},
	{OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))km_ed25519_query_operation_name},
	{0, NULL},
};
