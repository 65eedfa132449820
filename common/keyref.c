#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/asn1t.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "common/keyref.h"
#include "mtls-agent/client.h"

typedef struct {
	ASN1_INTEGER *version;
	ASN1_UTF8STRING *identity;
	ASN1_OCTET_STRING *public_key;
} MTLS_KEYREF;

ASN1_SEQUENCE(MTLS_KEYREF) =
	{
		ASN1_SIMPLE(MTLS_KEYREF, version, ASN1_INTEGER),
		ASN1_SIMPLE(MTLS_KEYREF, identity, ASN1_UTF8STRING),
		ASN1_SIMPLE(MTLS_KEYREF, public_key, ASN1_OCTET_STRING),
} static_ASN1_SEQUENCE_END(MTLS_KEYREF)

		IMPLEMENT_STATIC_ASN1_ALLOC_FUNCTIONS(MTLS_KEYREF)
			IMPLEMENT_STATIC_ASN1_ENCODE_FUNCTIONS(MTLS_KEYREF)

#define KEYREF_VERSION 1
#define KEYREF_MAX_NAME 128

				int keyref_encode_der(const char *identity, const uint8_t *spki,
						      size_t spki_len, uint8_t **der,
						      size_t *der_len)
{
	MTLS_KEYREF *kr = NULL;
	unsigned char *p = NULL;
	int len, ret = MTLS_AGENT_ERR_INTERNAL;

	*der = NULL;
	*der_len = 0;
	if (identity == NULL || strlen(identity) == 0 || strlen(identity) > KEYREF_MAX_NAME ||
	    spki == NULL || spki_len == 0 || spki_len > 65536)
		return MTLS_AGENT_ERR_INVALID_ARG;
	if ((kr = MTLS_KEYREF_new()) == NULL ||
	    ASN1_INTEGER_set(kr->version, KEYREF_VERSION) != 1 ||
	    ASN1_STRING_set(kr->identity, identity, (int)strlen(identity)) != 1 ||
	    ASN1_OCTET_STRING_set(kr->public_key, spki, (int)spki_len) != 1)
		goto out;
	if ((len = i2d_MTLS_KEYREF(kr, &p)) <= 0)
		goto out;
	if ((*der = malloc((size_t)len)) == NULL) {
		ret = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	memcpy(*der, p, (size_t)len);
	*der_len = (size_t)len;
	ret = 0;
out:
	OPENSSL_free(p);
	MTLS_KEYREF_free(kr);
	return ret;
}

int keyref_encode_pem(const char *identity, const uint8_t *spki, size_t spki_len, char **pem,
		      size_t *pem_len)
{
	uint8_t *der = NULL;
	size_t der_len = 0;
	BIO *bio = NULL;
	char *data;
	long n;
	int r;

	*pem = NULL;
	*pem_len = 0;
	if ((r = keyref_encode_der(identity, spki, spki_len, &der, &der_len)) != 0)
		return r;
	r = MTLS_AGENT_ERR_INTERNAL;
	if ((bio = BIO_new(BIO_s_mem())) == NULL ||
	    PEM_write_bio(bio, KEYREF_PEM_LABEL, "", der, (long)der_len) <= 0)
		goto out;
	n = BIO_get_mem_data(bio, &data);
	if (n <= 0 || (*pem = malloc((size_t)n + 1)) == NULL)
		goto out;
	memcpy(*pem, data, (size_t)n);
	(*pem)[n] = '\0';
	*pem_len = (size_t)n;
	r = 0;
out:
	BIO_free(bio);
	free(der);
	return r;
}

int keyref_is_pem(const uint8_t *data, size_t len)
{
	static const char marker[] = "-----BEGIN " KEYREF_PEM_LABEL "-----";
	size_t m = sizeof(marker) - 1, i;

	for (i = 0; len >= m && i <= len - m; i++)
		if (data[i] == '-' && memcmp(data + i, marker, m) == 0)
			return 1;
	return 0;
}

int keyref_decode(const uint8_t *data, size_t len, char **identity, uint8_t **spki,
		  size_t *spki_len)
{
	unsigned char *der = NULL;
	const unsigned char *p;
	char *name = NULL, *header = NULL;
	long der_len = 0;
	MTLS_KEYREF *kr = NULL;
	BIO *bio = NULL;
	int ret = MTLS_AGENT_ERR_BAD_MESSAGE, n;

	*identity = NULL;
	*spki = NULL;
	*spki_len = 0;
	if (len == 0 || len > 1024 * 1024)
		return MTLS_AGENT_ERR_BAD_MESSAGE;
	/* Called inside OpenSSL's decoder chains: leave the caller's error queue alone. */
	ERR_set_mark();
	if (keyref_is_pem(data, len)) {
		/* PEM_read_bio returns the next block whatever its label: skip to ours. */
		if ((bio = BIO_new_mem_buf(data, (int)len)) == NULL) {
			ret = MTLS_AGENT_ERR_NOMEM;
			goto out;
		}
		for (;;) {
			OPENSSL_free(name);
			OPENSSL_free(header);
			OPENSSL_free(der);
			name = header = NULL;
			der = NULL;
			if (PEM_read_bio(bio, &name, &header, &der, &der_len) != 1)
				goto out;
			if (strcmp(name, KEYREF_PEM_LABEL) == 0)
				break;
		}
		p = der;
	} else {
		p = data;
		der_len = (long)len;
	}
	{
		const unsigned char *start = p;
		if ((kr = d2i_MTLS_KEYREF(NULL, &p, der_len)) == NULL || p != start + der_len)
			goto out;
	}
	if (ASN1_INTEGER_get(kr->version) != KEYREF_VERSION) {
		ret = MTLS_AGENT_ERR_UNSUPPORTED;
		goto out;
	}
	n = ASN1_STRING_length(kr->identity);
	if (n <= 0 || n > KEYREF_MAX_NAME ||
	    memchr(ASN1_STRING_get0_data(kr->identity), '\0', (size_t)n) != NULL ||
	    ASN1_STRING_length(kr->public_key) <= 0)
		goto out;
	if ((*identity = strndup((const char *)ASN1_STRING_get0_data(kr->identity), (size_t)n)) ==
		    NULL ||
	    (*spki = malloc((size_t)ASN1_STRING_length(kr->public_key))) == NULL) {
		free(*identity);
		*identity = NULL;
		ret = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	*spki_len = (size_t)ASN1_STRING_length(kr->public_key);
	memcpy(*spki, ASN1_STRING_get0_data(kr->public_key), *spki_len);
	ret = 0;
out:
	ERR_pop_to_mark();
	MTLS_KEYREF_free(kr);
	OPENSSL_free(name);
	OPENSSL_free(header);
	OPENSSL_free(der);
	BIO_free(bio);
	return ret;
}
