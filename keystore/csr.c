#include "config.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/log.h"
#include "common/scheme.h"
#include "keystore/csr.h"
#include "keystore/keystore.h"
#include "mtls-agent/client.h"

#define CSR_MAX_SANS 64
#define CSR_MAX_SAN_LEN 1024

static const char *ossl_reason(void)
{
	const char *r = ERR_reason_error_string(ERR_peek_last_error());

	return r != NULL ? r : "unknown reason";
}

static int add_san(GENERAL_NAMES *gens, const char *san, char *err, size_t errlen)
{
	static const struct {
		const char *prefix;
		int type;
	} kinds[] = {
		{"DNS:", GEN_DNS}, {"IP:", GEN_IPADD}, {"URI:", GEN_URI}, {"email:", GEN_EMAIL}};
	GENERAL_NAME *gen = NULL;
	ASN1_IA5STRING *ia5 = NULL;
	ASN1_OCTET_STRING *ip = NULL;
	const char *v = NULL;
	char sbuf[80];
	size_t i, len;
	int type = -1, ret = MTLS_AGENT_ERR_INVALID_ARG;

	for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		len = strlen(kinds[i].prefix);
		if (strncasecmp(san, kinds[i].prefix, len) == 0) {
			type = kinds[i].type;
			v = san + len;
			break;
		}
	}
	log_sanitize(san, sbuf, sizeof(sbuf));
	if (type < 0) {
		snprintf(err, errlen, "SAN '%s': expected DNS:, IP:, URI: or email:", sbuf);
		goto out;
	}
	len = strlen(v);
	if (len == 0 || len > CSR_MAX_SAN_LEN) {
		snprintf(err, errlen, "SAN '%s': empty or too long", sbuf);
		goto out;
	}
	if ((gen = GENERAL_NAME_new()) == NULL) {
		ret = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	if (type == GEN_IPADD) {
		if ((ip = a2i_IPADDRESS(v)) == NULL) {
			snprintf(err, errlen, "SAN '%s': not an IPv4 or IPv6 address", sbuf);
			goto out;
		}
		GENERAL_NAME_set0_value(gen, GEN_IPADD, ip);
		ip = NULL;
	} else {
		/* IA5String; these forms never contain spaces or non-ASCII. */
		for (i = 0; i < len; i++) {
			if ((unsigned char)v[i] <= 0x20 || (unsigned char)v[i] >= 0x7f) {
				snprintf(err, errlen, "SAN '%s': only printable ASCII, no spaces",
					 sbuf);
				goto out;
			}
		}
		if ((type == GEN_EMAIL && strchr(v, '@') == NULL) ||
		    (type == GEN_URI && strchr(v, ':') == NULL)) {
			snprintf(err, errlen, "SAN '%s': not a%s", sbuf,
				 type == GEN_EMAIL ? "n e-mail address" : " URI");
			goto out;
		}
		if ((ia5 = ASN1_IA5STRING_new()) == NULL ||
		    ASN1_STRING_set(ia5, v, (int)len) != 1) {
			ret = MTLS_AGENT_ERR_NOMEM;
			goto out;
		}
		GENERAL_NAME_set0_value(gen, type, ia5);
		ia5 = NULL;
	}
	if (sk_GENERAL_NAME_push(gens, gen) <= 0) {
		ret = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	gen = NULL;
	ret = 0;
out:
	ASN1_IA5STRING_free(ia5);
	ASN1_OCTET_STRING_free(ip);
	GENERAL_NAME_free(gen);
	return ret;
}

/* subjectAltName from "DNS:x"-style strings; *out stays NULL without any. */
static int parse_sans(const char *const *sans, size_t n_sans, GENERAL_NAMES **out, char *err,
		      size_t errlen)
{
	GENERAL_NAMES *gens;
	size_t i;
	int ret;

	*out = NULL;
	if (n_sans == 0)
		return 0;
	if (n_sans > CSR_MAX_SANS) {
		snprintf(err, errlen, "more than %d subject alternative names", CSR_MAX_SANS);
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	if ((gens = GENERAL_NAMES_new()) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	for (i = 0; i < n_sans; i++) {
		if (sans[i] == NULL) {
			snprintf(err, errlen, "SAN %zu is missing", i);
			GENERAL_NAMES_free(gens);
			return MTLS_AGENT_ERR_INVALID_ARG;
		}
		if ((ret = add_san(gens, sans[i], err, errlen)) != 0) {
			GENERAL_NAMES_free(gens);
			return ret;
		}
	}
	*out = gens;
	return 0;
}

static int add_extensions(X509_REQ *req, const GENERAL_NAMES *gens, char *err, size_t errlen)
{
	STACK_OF(X509_EXTENSION) *exts = NULL;
	EXTENDED_KEY_USAGE *eku = NULL;
	ASN1_BIT_STRING *ku = NULL;
	int ret = MTLS_AGENT_ERR_INTERNAL;

	if (gens != NULL && sk_GENERAL_NAME_num(gens) > 0 &&
	    X509V3_add1_i2d(&exts, NID_subject_alt_name, (void *)gens, 0, X509V3_ADD_APPEND) != 1)
		goto fail;
	if ((eku = sk_ASN1_OBJECT_new_null()) == NULL ||
	    sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_client_auth)) <= 0 ||
	    X509V3_add1_i2d(&exts, NID_ext_key_usage, eku, 0, X509V3_ADD_APPEND) != 1)
		goto fail;
	if ((ku = ASN1_BIT_STRING_new()) == NULL || ASN1_BIT_STRING_set_bit(ku, 0, 1) != 1 ||
	    X509V3_add1_i2d(&exts, NID_key_usage, ku, 1, X509V3_ADD_APPEND) != 1)
		goto fail;
	if (X509_REQ_add_extensions(req, exts) != 1)
		goto fail;
	ret = 0;
	goto out;
fail:
	snprintf(err, errlen, "cannot add request extensions (%s)", ossl_reason());
out:
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
	ASN1_BIT_STRING_free(ku);
	return ret;
}

/* Signature algorithm and the TLS scheme that makes the same signature. */
static int pick_algorithm(const struct ks_key *key, int *sig_nid, int *ptype,
			  const struct scheme **sch)
{
	const struct scheme *s = NULL;
	size_t i;

	*sch = NULL;
	*ptype = V_ASN1_UNDEF;
	switch (key->type) {
	case MTLS_AGENT_KEY_EC:
		/* The curve's TLS 1.3 scheme: P-256/SHA-256, P-384/SHA-384, P-521/SHA-512. */
		for (i = 0; (s = scheme_at(i)) != NULL; i++)
			if (s->key_type == MTLS_AGENT_KEY_EC && s->curve_nid == key->curve_nid)
				break;
		if (s == NULL ||
		    !OBJ_find_sigid_by_algs(sig_nid, s->hash_nid, NID_X9_62_id_ecPublicKey))
			return -1;
		break;
	case MTLS_AGENT_KEY_RSA:
		/* PKCS#1 v1.5 with SHA-256: what every CA accepts (NULL parameters). */
		s = scheme_by_code(MTLS_AGENT_RSA_PKCS1_SHA256);
		if (s == NULL || !OBJ_find_sigid_by_algs(sig_nid, s->hash_nid, NID_rsaEncryption))
			return -1;
		*ptype = V_ASN1_NULL;
		break;
	case MTLS_AGENT_KEY_ED25519:
		s = scheme_by_code(MTLS_AGENT_ED25519);
		*sig_nid = NID_ED25519;
		break;
	default:
		return -1;
	}
	*sch = s;
	return s != NULL ? 0 : -1;
}

int csr_build(struct keystore *ks, struct ks_key *key, const char *subject, const char *const *sans,
	      size_t n_sans, uint8_t **der, size_t *der_len, char *err, size_t errlen)
{
	X509_NAME *name = NULL;
	GENERAL_NAMES *gens = NULL;
	int ret;

	*der = NULL;
	*der_len = 0;
	if (subject == NULL || (n_sans > 0 && sans == NULL)) {
		snprintf(err, errlen, "request needs a subject");
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	if ((ret = csr_parse_subject(subject, &name, err, errlen)) == 0 &&
	    (ret = parse_sans(sans, n_sans, &gens, err, errlen)) == 0)
		ret = csr_build_name(ks, key, name, gens, der, der_len, err, errlen);
	X509_NAME_free(name);
	GENERAL_NAMES_free(gens);
	if (ret != 0)
		ERR_clear_error();
	return ret;
}

int csr_build_name(struct keystore *ks, struct ks_key *key, const X509_NAME *name,
		   const GENERAL_NAMES *sans, uint8_t **der, size_t *der_len, char *err,
		   size_t errlen)
{
	X509_REQ *req = NULL;
	X509_ALGOR *alg = NULL;
	ASN1_BIT_STRING *bs = NULL;
	const struct scheme *sch = NULL;
	unsigned char *tbs = NULL, *enc = NULL;
	uint8_t md[EVP_MAX_MD_SIZE], *sig = NULL;
	const uint8_t *in;
	size_t siglen = 0, inlen;
	int tbslen, len, sig_nid = NID_undef, ptype = V_ASN1_UNDEF, ret;

	*der = NULL;
	*der_len = 0;
	if (key == NULL || key->pub == NULL || key->ks != ks || name == NULL) {
		snprintf(err, errlen, "request needs a key of this keystore and a subject");
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	if (pick_algorithm(key, &sig_nid, &ptype, &sch) != 0) {
		snprintf(err, errlen, "no request signature algorithm for this key type");
		return MTLS_AGENT_ERR_UNSUPPORTED;
	}
	if ((req = X509_REQ_new()) == NULL) {
		ret = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	ret = MTLS_AGENT_ERR_INTERNAL;
	if (X509_REQ_set_version(req, 0) != 1 || X509_REQ_set_subject_name(req, name) != 1 ||
	    X509_REQ_set_pubkey(req, key->pub) != 1) {
		snprintf(err, errlen, "cannot build the request (%s)", ossl_reason());
		goto out;
	}
	if ((ret = add_extensions(req, sans, err, errlen)) != 0)
		goto out;

	/* Signed here, not with X509_REQ_sign: the private key is in the keystore. */
	ret = MTLS_AGENT_ERR_INTERNAL;
	if ((alg = X509_ALGOR_new()) == NULL ||
	    X509_ALGOR_set0(alg, OBJ_nid2obj(sig_nid), ptype, NULL) != 1 ||
	    X509_REQ_set1_signature_algo(req, alg) != 1 ||
	    (tbslen = i2d_re_X509_REQ_tbs(req, &tbs)) <= 0) {
		snprintf(err, errlen, "cannot encode the request (%s)", ossl_reason());
		goto out;
	}
	if (sch->hash_len != 0) {
		if (scheme_hash(sch, tbs, (size_t)tbslen, md) != 0) {
			snprintf(err, errlen, "cannot hash the request");
			goto out;
		}
		in = md;
		inlen = sch->hash_len;
	} else {
		in = tbs;
		inlen = (size_t)tbslen;
	}
	if ((ret = ks_sign(ks, key, sch, in, inlen, &sig, &siglen, err, errlen)) != 0)
		goto out;
	ret = MTLS_AGENT_ERR_INTERNAL;
	if (siglen > INT_MAX || (bs = ASN1_BIT_STRING_new()) == NULL ||
	    ASN1_BIT_STRING_set(bs, sig, (int)siglen) != 1) {
		snprintf(err, errlen, "cannot store the signature");
		goto out;
	}
	/* Every bit counts: without this the encoder drops trailing zero bytes. */
	bs->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07);
	bs->flags |= ASN1_STRING_FLAG_BITS_LEFT;
	X509_REQ_set0_signature(req, bs);
	bs = NULL;
	if (X509_REQ_verify(req, key->pub) != 1) {
		snprintf(err, errlen,
			 "the keystore's signature on the request does not verify "
			 "with the key's public half");
		ret = MTLS_AGENT_ERR_KEYSTORE;
		goto out;
	}
	if ((len = i2d_X509_REQ(req, &enc)) <= 0) {
		snprintf(err, errlen, "cannot encode the request (%s)", ossl_reason());
		goto out;
	}
	if ((*der = malloc((size_t)len)) == NULL) {
		ret = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	memcpy(*der, enc, (size_t)len);
	*der_len = (size_t)len;
	ret = 0;
out:
	if (ret != 0)
		ERR_clear_error();
	OPENSSL_free(enc);
	OPENSSL_free(tbs);
	free(sig);
	ASN1_BIT_STRING_free(bs);
	X509_ALGOR_free(alg);
	X509_REQ_free(req);
	return ret;
}
