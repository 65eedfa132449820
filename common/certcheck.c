#include "config.h"

#include <stdio.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/certcheck.h"
#include "mtls-agent/client.h"

int certcheck_parse_chain(const uint8_t *data, size_t len, STACK_OF(X509) * *chain, char *err,
			  size_t errlen)
{
	STACK_OF(X509) *sk = NULL;
	const unsigned char *p = data;
	BIO *bio = NULL;
	X509 *x = NULL;
	int ret = MTLS_AGENT_ERR_CERT;

	*chain = NULL;
	if (len == 0 || len > INT32_MAX) {
		snprintf(err, errlen, "no certificate data");
		return MTLS_AGENT_ERR_CERT;
	}
	if ((sk = sk_X509_new_null()) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	if (len > 0 && data[0] == 0x30) {
		/* DER: exactly one certificate, nothing after it. */
		if ((x = d2i_X509(NULL, &p, (long)len)) == NULL || p != data + len) {
			snprintf(err, errlen, "not a valid DER certificate");
			goto out;
		}
		if (!sk_X509_push(sk, x))
			goto out;
		x = NULL;
	} else {
		if ((bio = BIO_new_mem_buf(data, (int)len)) == NULL)
			goto out;
		while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
			if (!sk_X509_push(sk, x))
				goto out;
			x = NULL;
		}
		ERR_clear_error();
		if (sk_X509_num(sk) == 0) {
			snprintf(err, errlen, "no PEM certificate found");
			goto out;
		}
	}
	*chain = sk;
	sk = NULL;
	ret = 0;
out:
	ERR_clear_error();
	X509_free(x);
	BIO_free(bio);
	sk_X509_pop_free(sk, X509_free);
	return ret;
}

unsigned certcheck_flaws(X509 *cert, time_t now)
{
	/* X509_get_extension_flags() caches the parsed extensions. */
	uint32_t flags = X509_get_extension_flags(cert);
	unsigned flaws = 0;

	if ((flags & EXFLAG_INVALID) != 0)
		flaws |= CERTCHECK_BAD_EXTENSIONS;
	if ((flags & EXFLAG_XKUSAGE) == 0 ||
	    (X509_get_extended_key_usage(cert) & XKU_SSL_CLIENT) == 0)
		flaws |= CERTCHECK_NO_CLIENT_AUTH;
	if ((flags & EXFLAG_KUSAGE) == 0 || (X509_get_key_usage(cert) & KU_DIGITAL_SIGNATURE) == 0)
		flaws |= CERTCHECK_NO_DIGITAL_SIGNATURE;
	if (X509_cmp_time(X509_get0_notBefore(cert), &now) > 0)
		flaws |= CERTCHECK_NOT_YET_VALID;
	if (X509_cmp_time(X509_get0_notAfter(cert), &now) < 0)
		flaws |= CERTCHECK_EXPIRED;
	return flaws;
}

int certcheck_leaf(X509 *leaf, time_t now, char *err, size_t errlen)
{
	static const struct {
		unsigned flaw;
		const char *why;
	} reasons[] = {
		{CERTCHECK_BAD_EXTENSIONS, "certificate has invalid extensions"},
		{CERTCHECK_NO_CLIENT_AUTH, "certificate lacks the clientAuth extended key usage"},
		{CERTCHECK_NO_DIGITAL_SIGNATURE,
		 "certificate lacks the digitalSignature key usage"},
		{CERTCHECK_NOT_YET_VALID, "certificate is not valid yet"},
		{CERTCHECK_EXPIRED, "certificate has expired"},
	};
	unsigned flaws = certcheck_flaws(leaf, now);
	size_t i;

	for (i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
		if ((flaws & reasons[i].flaw) != 0) {
			snprintf(err, errlen, "%s", reasons[i].why);
			return MTLS_AGENT_ERR_CERT;
		}
	}
	return 0;
}

int certcheck_issued_by(X509 *subject, X509 *issuer)
{
	EVP_PKEY *issuer_key;
	int ok;

	ok = X509_check_issued(issuer, subject) == X509_V_OK &&
	     (issuer_key = X509_get0_pubkey(issuer)) != NULL &&
	     X509_verify(subject, issuer_key) == 1;
	ERR_clear_error();
	return ok;
}

int certcheck_chain_order(STACK_OF(X509) * chain, char *err, size_t errlen)
{
	int i, n = sk_X509_num(chain);

	for (i = 0; i + 1 < n; i++) {
		if (!certcheck_issued_by(sk_X509_value(chain, i), sk_X509_value(chain, i + 1))) {
			snprintf(
				err, errlen,
				"chain out of order: certificate %d is not issued by certificate %d",
				i + 1, i + 2);
			return MTLS_AGENT_ERR_CERT;
		}
	}
	return 0;
}

int certcheck_spki(X509 *cert, uint8_t **der, size_t *len)
{
	unsigned char *p = NULL;
	int n;

	*der = NULL;
	*len = 0;
	if ((n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &p)) <= 0)
		return MTLS_AGENT_ERR_CERT;
	*der = p;
	*len = (size_t)n;
	return 0;
}

static time_t asn1_epoch(const ASN1_TIME *t)
{
	struct tm tm;

	memset(&tm, 0, sizeof(tm));
	if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return timegm(&tm);
}

time_t certcheck_not_before(X509 *cert)
{
	return asn1_epoch(X509_get0_notBefore(cert));
}

time_t certcheck_not_after(X509 *cert)
{
	return asn1_epoch(X509_get0_notAfter(cert));
}

STACK_OF(X509) * certcheck_chain_rest(STACK_OF(X509) * chain)
{
	STACK_OF(X509) *rest = sk_X509_new_null();
	int i;

	for (i = 1; rest != NULL && i < sk_X509_num(chain); i++) {
		if (!sk_X509_push(rest, sk_X509_value(chain, i))) {
			sk_X509_free(rest);
			return NULL;
		}
	}
	return rest;
}
