/*
 * Fuzz target: the provider's DECODER for key reference files
 * (provider/prov-decoder.c), driven the way applications drive it: through
 * OSSL_DECODER on a library context holding OpenSSL's default provider and
 * ours. This covers what keyref_fuzzer does not: the line-by-line PEM
 * scanner on the core BIO (read_our_pem), the DER pre-check
 * (looks_like_keyref_der), the public key checks of mtlsa_key_new and the
 * hand-over to our key management.
 *
 * The agent is replaced by a transport that knows one identity, "current",
 * with a key of its own (the "the agent's key differs from the file" path);
 * every other name is missing, as when the agent does not hold it.
 *
 * Checks: a DER input our decoder turns into a key is one keyref_decode()
 * accepts; a key from our provider has a public half of the file's key, or
 * of the agent's for "current".
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <openssl/x509.h>

#include "common/keyref.h"
#include "provider/prov.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static OSSL_LIB_CTX *libctx;
static OSSL_PROVIDER *prov_ours;
static uint8_t *agent_spki;
static int agent_spki_len;
/*
 * One decoder context per input type (any, PEM, DER), made once: building one
 * costs more than most decodes. Each decode writes its key into decoded.
 */
static EVP_PKEY *decoded;
static OSSL_DECODER_CTX *dctx[3];

static int fuzz_get_identity(struct mtlsa_prov *prov, const char *name,
			     struct mtls_agent_identity **out, char *err, size_t errlen)
{
	struct mtls_agent_identity *rec;

	(void)prov;
	*out = NULL;
	if (strcmp(name, "current") != 0) {
		snprintf(err, errlen, "no identity \"%.64s\"", name);
		return MTLS_AGENT_ERR_NOT_FOUND;
	}
	if ((rec = calloc(1, sizeof(*rec))) == NULL || (rec->name = strdup(name)) == NULL ||
	    (rec->spki = malloc((size_t)agent_spki_len)) == NULL) {
		mtls_agent_identity_free(rec);
		snprintf(err, errlen, "out of memory");
		return MTLS_AGENT_ERR_NOMEM;
	}
	memcpy(rec->spki, agent_spki, (size_t)agent_spki_len);
	rec->spki_len = (size_t)agent_spki_len;
	rec->key_type = MTLS_AGENT_KEY_EC;
	rec->key_bits = 256;
	*out = rec;
	return 0;
}

static int fuzz_sign(struct mtlsa_prov *prov, const char *name, const uint8_t *spki_hash,
		     uint16_t scheme, unsigned flags, const uint8_t *data, size_t len,
		     uint8_t **sig, size_t *siglen, char *err, size_t errlen)
{
	(void)prov;
	(void)name;
	(void)spki_hash;
	(void)scheme;
	(void)flags;
	(void)data;
	(void)len;
	*sig = NULL;
	*siglen = 0;
	snprintf(err, errlen, "the fuzz transport does not sign");
	return MTLS_AGENT_ERR_UNSUPPORTED;
}

static const struct mtlsa_transport fuzz_transport = {
	.key_files = 1,
	.get_identity = fuzz_get_identity,
	.sign = fuzz_sign,
};

static int fuzz_provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
			      const OSSL_DISPATCH **out, void **provctx)
{
	return mtlsa_provider_init(&fuzz_transport, handle, in, out, provctx);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const char *const input_types[] = {NULL, "PEM", "DER"};
	EVP_PKEY *k;
	int i;

	(void)argc;
	(void)argv;
	if ((k = EVP_EC_gen("P-256")) == NULL ||
	    (agent_spki_len = i2d_PUBKEY(k, &agent_spki)) <= 0 ||
	    (libctx = OSSL_LIB_CTX_new()) == NULL ||
	    !OSSL_PROVIDER_add_builtin(libctx, MTLSA_PROV_NAME, fuzz_provider_init) ||
	    OSSL_PROVIDER_load(libctx, "default") == NULL ||
	    (prov_ours = OSSL_PROVIDER_load(libctx, MTLSA_PROV_NAME)) == NULL)
		abort();
	EVP_PKEY_free(k);
	for (i = 0; i < 3; i++)
		if ((dctx[i] = OSSL_DECODER_CTX_new_for_pkey(&decoded, input_types[i], NULL, NULL,
							     OSSL_KEYMGMT_SELECT_KEYPAIR, libctx,
							     NULL)) == NULL)
			abort();
	return 0;
}

/* The DER SubjectPublicKeyInfo of pkey's public half (OPENSSL_free it), or NULL. */
static uint8_t *pub_der(EVP_PKEY *pkey, int *len)
{
	uint8_t *der = NULL;

	*len = i2d_PUBKEY(pkey, &der);
	return *len > 0 ? der : NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	EVP_PKEY *pkey;
	const unsigned char *p;
	uint8_t *copy, *spki = NULL, *der = NULL;
	size_t len, spki_len = 0;
	char *name = NULL;
	int i, der_len = 0;

	if ((copy = malloc(size > 0 ? size : 1)) == NULL)
		return 0;
	memcpy(copy, data, size);
	for (i = 0; i < 3; i++) {
		/* As applications ask: any input type; PEM for PEM text; DER for a SEQUENCE. */
		if ((i == 1 && (size == 0 || copy[0] != '-')) ||
		    (i == 2 && (size == 0 || copy[0] != 0x30)))
			continue;
		p = copy;
		len = size;
		decoded = NULL;
		(void)OSSL_DECODER_from_data(dctx[i], &p, &len);
		pkey = decoded;
		decoded = NULL;
		if (pkey != NULL && EVP_PKEY_get0_provider(pkey) == prov_ours) {
			if (keyref_decode(copy, size, &name, &spki, &spki_len) == 0) {
				/* The file's key, unless the agent holds another for the name. */
				if ((der = pub_der(pkey, &der_len)) == NULL)
					abort();
				if (strcmp(name, "current") == 0
					    ? (der_len != agent_spki_len ||
					       memcmp(der, agent_spki, (size_t)der_len) != 0)
					    : ((size_t)der_len != spki_len ||
					       memcmp(der, spki, spki_len) != 0))
					abort();
			} else if (copy[0] == 0x30) {
				/* Our DER decoder took what the key reference parser refuses. */
				abort();
			}
			OPENSSL_free(der);
			free(name);
			free(spki);
			der = NULL;
			name = NULL;
			spki = NULL;
		}
		EVP_PKEY_free(pkey);
		ERR_clear_error();
	}
	free(copy);
	return 0;
}
