/*
 * Re-protecting a PBM-protected CMP request with a high iteration count.
 *
 * OpenSSL 3.0's CMP client MACs its requests (IR with a shared secret, and
 * the certConf/pollReq that follow) with PasswordBasedMac at a fixed
 * iterationCount of 500 and offers no setter, nor setters for a message's
 * protectionAlg and protection. A captured request lets anyone guess the
 * secret offline at 500 hashes a guess. So the transfer callback hands each
 * request's DER to cmp_pbm_reprotect(), which decodes it with templates of
 * our own for the parts of RFC 4210 5.1 it touches (the module is EXPLICIT
 * TAGS; RFC 9480 keeps the header's fields), puts fresh PBMParameter with
 * CMP_PBM_ITERATIONS into protectionAlg, recomputes the MAC over
 * ProtectedPart with OpenSSL's own OSSL_CRMF_pbm_new(), and re-encodes. The
 * body and extraCerts stay opaque (ANY, certificates keep their encoding);
 * the result is checked to differ from the input only in protectionAlg's
 * parameters and the protection bits.
 */
#include "config.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <openssl/asn1t.h>
#include <openssl/crmf.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "renew/cmp-pbm.h"

/* clang-format off */
/* The ASN.1 templates: clang-format does not know the macros. */

/* InfoTypeAndValue ::= SEQUENCE { infoType OBJECT IDENTIFIER, infoValue ANY OPTIONAL } */
typedef struct {
	ASN1_OBJECT *info_type;
	ASN1_TYPE *info_value;
} PKIX_ITAV;

ASN1_SEQUENCE(PKIX_ITAV) = {
	ASN1_SIMPLE(PKIX_ITAV, info_type, ASN1_OBJECT),
	ASN1_OPT(PKIX_ITAV, info_value, ASN1_ANY),
} static_ASN1_SEQUENCE_END(PKIX_ITAV)

/* PKIHeader (RFC 4210 5.1.1, RFC 9480 2.3; the module has EXPLICIT TAGS). */
typedef struct {
	ASN1_INTEGER *pvno;
	GENERAL_NAME *sender;
	GENERAL_NAME *recipient;
	ASN1_GENERALIZEDTIME *message_time;   /* [0] */
	X509_ALGOR *protection_alg;           /* [1] */
	ASN1_OCTET_STRING *sender_kid;        /* [2] KeyIdentifier */
	ASN1_OCTET_STRING *recip_kid;         /* [3] KeyIdentifier */
	ASN1_OCTET_STRING *transaction_id;    /* [4] */
	ASN1_OCTET_STRING *sender_nonce;      /* [5] */
	ASN1_OCTET_STRING *recip_nonce;       /* [6] */
	STACK_OF(ASN1_UTF8STRING) *free_text; /* [7] PKIFreeText */
	STACK_OF(PKIX_ITAV) *general_info;    /* [8] */
} PKIX_HEADER;

ASN1_SEQUENCE(PKIX_HEADER) = {
	ASN1_SIMPLE(PKIX_HEADER, pvno, ASN1_INTEGER),
	ASN1_SIMPLE(PKIX_HEADER, sender, GENERAL_NAME),
	ASN1_SIMPLE(PKIX_HEADER, recipient, GENERAL_NAME),
	ASN1_EXP_OPT(PKIX_HEADER, message_time, ASN1_GENERALIZEDTIME, 0),
	ASN1_EXP_OPT(PKIX_HEADER, protection_alg, X509_ALGOR, 1),
	ASN1_EXP_OPT(PKIX_HEADER, sender_kid, ASN1_OCTET_STRING, 2),
	ASN1_EXP_OPT(PKIX_HEADER, recip_kid, ASN1_OCTET_STRING, 3),
	ASN1_EXP_OPT(PKIX_HEADER, transaction_id, ASN1_OCTET_STRING, 4),
	ASN1_EXP_OPT(PKIX_HEADER, sender_nonce, ASN1_OCTET_STRING, 5),
	ASN1_EXP_OPT(PKIX_HEADER, recip_nonce, ASN1_OCTET_STRING, 6),
	ASN1_EXP_SEQUENCE_OF_OPT(PKIX_HEADER, free_text, ASN1_UTF8STRING, 7),
	ASN1_EXP_SEQUENCE_OF_OPT(PKIX_HEADER, general_info, PKIX_ITAV, 8),
} static_ASN1_SEQUENCE_END(PKIX_HEADER)

/*
 * PKIMessage (RFC 4210 5.1). The body (a CHOICE of [n] EXPLICIT alternatives)
 * is kept as ANY: its encoding is carried through unchanged.
 */
typedef struct {
	PKIX_HEADER *header;
	ASN1_TYPE *body;
	ASN1_BIT_STRING *protection; /* [0] PKIProtection */
	STACK_OF(X509) *extra_certs; /* [1] */
} PKIX_MESSAGE;

ASN1_SEQUENCE(PKIX_MESSAGE) = {
	ASN1_SIMPLE(PKIX_MESSAGE, header, PKIX_HEADER),
	ASN1_SIMPLE(PKIX_MESSAGE, body, ASN1_ANY),
	ASN1_EXP_OPT(PKIX_MESSAGE, protection, ASN1_BIT_STRING, 0),
	ASN1_EXP_SEQUENCE_OF_OPT(PKIX_MESSAGE, extra_certs, X509, 1),
} static_ASN1_SEQUENCE_END(PKIX_MESSAGE)

/* ProtectedPart ::= SEQUENCE { header PKIHeader, body PKIBody } (5.1.3): what the MAC covers. */
typedef struct {
	PKIX_HEADER *header;
	ASN1_TYPE *body;
} PKIX_PROTECTED_PART;

ASN1_SEQUENCE(PKIX_PROTECTED_PART) = {
	ASN1_SIMPLE(PKIX_PROTECTED_PART, header, PKIX_HEADER),
	ASN1_SIMPLE(PKIX_PROTECTED_PART, body, ASN1_ANY),
} static_ASN1_SEQUENCE_END(PKIX_PROTECTED_PART)

/*
 * PBMParameter (RFC 4210 5.1.3.1), read only: OpenSSL's OSSL_CRMF_PBMPARAMETER
 * is opaque, and the owf and mac the client chose are kept.
 */
typedef struct {
	ASN1_OCTET_STRING *salt;
	X509_ALGOR *owf;
	ASN1_INTEGER *iteration_count;
	X509_ALGOR *mac;
} PKIX_PBM_PARAMETER;

ASN1_SEQUENCE(PKIX_PBM_PARAMETER) = {
	ASN1_SIMPLE(PKIX_PBM_PARAMETER, salt, ASN1_OCTET_STRING),
	ASN1_SIMPLE(PKIX_PBM_PARAMETER, owf, X509_ALGOR),
	ASN1_SIMPLE(PKIX_PBM_PARAMETER, iteration_count, ASN1_INTEGER),
	ASN1_SIMPLE(PKIX_PBM_PARAMETER, mac, X509_ALGOR),
} static_ASN1_SEQUENCE_END(PKIX_PBM_PARAMETER)

static void *decode(const ASN1_ITEM *it, const unsigned char *der, size_t len);
/* clang-format on */

/* A whole DER object of the item's type, nothing after it. */
static void *decode(const ASN1_ITEM *it, const unsigned char *der, size_t len)
{
	const unsigned char *p = der;
	ASN1_VALUE *v;

	if (len == 0 || len > LONG_MAX)
		return NULL;
	v = ASN1_item_d2i(NULL, &p, (long)len, it);
	if (v != NULL && p != der + len) {
		ASN1_item_free(v, it);
		v = NULL;
	}
	return v;
}

static PKIX_MESSAGE *decode_msg(const unsigned char *der, size_t len)
{
	return decode(ASN1_ITEM_rptr(PKIX_MESSAGE), der, len);
}

static void free_msg(PKIX_MESSAGE *m)
{
	ASN1_item_free((ASN1_VALUE *)m, ASN1_ITEM_rptr(PKIX_MESSAGE));
}

/* The PBMParameter of a PBM-protected message; NULL if it is not one. */
static PKIX_PBM_PARAMETER *pbm_param(const PKIX_MESSAGE *m)
{
	const X509_ALGOR *alg = m->header->protection_alg;
	const ASN1_OBJECT *oid;
	const void *pval;
	const ASN1_STRING *s;
	int ptype;

	if (alg == NULL)
		return NULL;
	X509_ALGOR_get0(&oid, &ptype, &pval, alg);
	if (OBJ_obj2nid(oid) != NID_id_PasswordBasedMAC || ptype != V_ASN1_SEQUENCE)
		return NULL;
	s = pval;
	return decode(ASN1_ITEM_rptr(PKIX_PBM_PARAMETER), ASN1_STRING_get0_data(s),
		      (size_t)ASN1_STRING_length(s));
}

static void free_pbm(PKIX_PBM_PARAMETER *p)
{
	ASN1_item_free((ASN1_VALUE *)p, ASN1_ITEM_rptr(PKIX_PBM_PARAMETER));
}

static int is_pbm(const PKIX_MESSAGE *m)
{
	const ASN1_OBJECT *oid;

	if (m->header->protection_alg == NULL)
		return 0;
	X509_ALGOR_get0(&oid, NULL, NULL, m->header->protection_alg);
	return OBJ_obj2nid(oid) == NID_id_PasswordBasedMAC;
}

/*
 * DER of the message without protectionAlg and protection: equal for the
 * input and the output if nothing else changed.
 */
static int encode_unprotected(PKIX_MESSAGE *m, unsigned char **out)
{
	X509_ALGOR *alg = m->header->protection_alg;
	ASN1_BIT_STRING *prot = m->protection;
	int n;

	m->header->protection_alg = NULL;
	m->protection = NULL;
	n = ASN1_item_i2d((ASN1_VALUE *)m, out, ASN1_ITEM_rptr(PKIX_MESSAGE));
	m->header->protection_alg = alg;
	m->protection = prot;
	return n;
}

/* 1 if out differs from in only where re-protection may change it. */
static int only_protection_changed(const unsigned char *in, size_t in_len, const unsigned char *out,
				   size_t out_len, int old_owf, int old_mac, long iterations)
{
	PKIX_MESSAGE *a = decode_msg(in, in_len), *b = decode_msg(out, out_len);
	PKIX_PBM_PARAMETER *pb = NULL;
	unsigned char *da = NULL, *db = NULL;
	int na = 0, nb = 0, ok = 0;

	if (a == NULL || b == NULL || !is_pbm(b) || (pb = pbm_param(b)) == NULL)
		goto done;
	na = encode_unprotected(a, &da);
	nb = encode_unprotected(b, &db);
	ok = na > 0 && na == nb && memcmp(da, db, (size_t)na) == 0 && b->protection != NULL &&
	     OBJ_obj2nid(pb->owf->algorithm) == old_owf &&
	     OBJ_obj2nid(pb->mac->algorithm) == old_mac &&
	     ASN1_INTEGER_get(pb->iteration_count) == iterations;
done:
	OPENSSL_free(da);
	OPENSSL_free(db);
	free_pbm(pb);
	free_msg(a);
	free_msg(b);
	return ok;
}

int cmp_pbm_reprotect(OSSL_LIB_CTX *libctx, const char *propq, const unsigned char *der,
		      size_t der_len, const unsigned char *secret, size_t secret_len,
		      long iterations, unsigned char **out, size_t *out_len, char *err,
		      size_t err_len)
{
	PKIX_MESSAGE *m = NULL;
	PKIX_PBM_PARAMETER *old = NULL;
	OSSL_CRMF_PBMPARAMETER *pbmp = NULL;
	PKIX_PROTECTED_PART pp;
	ASN1_STRING *param = NULL;
	unsigned char *param_der = NULL, *pp_der = NULL, *mac = NULL, *reenc = NULL;
	size_t mac_len = 0;
	int n, owf, macnid, ret = -1;
	const char *why = "out of memory";

	*out = NULL;
	*out_len = 0;
	if (iterations < 1 || iterations > CMP_PBM_ITERATIONS) {
		why = "iteration count out of range";
		goto done;
	}
	if ((m = decode_msg(der, der_len)) == NULL) {
		why = "the request is not a PKIMessage";
		goto done;
	}
	if (!is_pbm(m)) {
		ret = 0; /* signed or unprotected: not ours to change */
		goto done;
	}
	/* Our templates must carry every byte through, or the check below would be void. */
	if ((n = ASN1_item_i2d((ASN1_VALUE *)m, &reenc, ASN1_ITEM_rptr(PKIX_MESSAGE))) <= 0 ||
	    (size_t)n != der_len || memcmp(reenc, der, der_len) != 0) {
		why = "the request does not re-encode to itself";
		goto done;
	}
	OPENSSL_free(reenc);
	reenc = NULL;
	if ((old = pbm_param(m)) == NULL) {
		why = "the request's PBMParameter cannot be read";
		goto done;
	}
	owf = OBJ_obj2nid(old->owf->algorithm);
	macnid = OBJ_obj2nid(old->mac->algorithm);
	if (owf == NID_undef || macnid == NID_undef) {
		why = "the request's PBM algorithms are unknown";
		goto done;
	}
	if ((pbmp = OSSL_CRMF_pbmp_new(libctx, CMP_PBM_SALT_LEN, owf, (size_t)iterations,
				       macnid)) == NULL) {
		why = "cannot make PBMParameter";
		goto done;
	}
	if ((n = i2d_OSSL_CRMF_PBMPARAMETER(pbmp, &param_der)) <= 0 ||
	    (param = ASN1_STRING_new()) == NULL)
		goto done;
	ASN1_STRING_set0(param, param_der, n);
	param_der = NULL;
	if (!X509_ALGOR_set0(m->header->protection_alg, OBJ_nid2obj(NID_id_PasswordBasedMAC),
			     V_ASN1_SEQUENCE, param))
		goto done;
	param = NULL;

	/* The MAC covers DER(ProtectedPart) with the new protectionAlg in the header. */
	pp.header = m->header;
	pp.body = m->body;
	if ((n = ASN1_item_i2d((ASN1_VALUE *)&pp, &pp_der, ASN1_ITEM_rptr(PKIX_PROTECTED_PART))) <=
	    0)
		goto done;
	if (!OSSL_CRMF_pbm_new(libctx, propq, pbmp, pp_der, (size_t)n, secret, secret_len, &mac,
			       &mac_len) ||
	    mac_len > INT_MAX) {
		why = "cannot compute the PBM";
		goto done;
	}
	if (m->protection == NULL && (m->protection = ASN1_BIT_STRING_new()) == NULL)
		goto done;
	if (!ASN1_BIT_STRING_set(m->protection, mac, (int)mac_len))
		goto done;
	/* A MAC is whole octets: no trailing-zero trimming, no unused bits. */
	m->protection->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07);
	m->protection->flags |= ASN1_STRING_FLAG_BITS_LEFT;

	if ((n = ASN1_item_i2d((ASN1_VALUE *)m, &reenc, ASN1_ITEM_rptr(PKIX_MESSAGE))) <= 0)
		goto done;
	if (!only_protection_changed(der, der_len, reenc, (size_t)n, owf, macnid, iterations)) {
		why = "the re-protected request differs in more than its protection";
		goto done;
	}
	*out = reenc;
	*out_len = (size_t)n;
	reenc = NULL;
	ret = 1;
done:
	if (ret < 0 && err != NULL && err_len > 0)
		snprintf(err, err_len, "%s", why);
	OPENSSL_free(reenc);
	OPENSSL_free(pp_der);
	OPENSSL_free(mac);
	OPENSSL_free(param_der);
	ASN1_STRING_free(param);
	OSSL_CRMF_PBMPARAMETER_free(pbmp);
	free_pbm(old);
	free_msg(m);
	return ret;
}

long cmp_pbm_iterations(const unsigned char *der, size_t der_len)
{
	PKIX_MESSAGE *m = decode_msg(der, der_len);
	PKIX_PBM_PARAMETER *p = m != NULL ? pbm_param(m) : NULL;
	long n = p != NULL ? ASN1_INTEGER_get(p->iteration_count) : -1;

	free_pbm(p);
	free_msg(m);
	return n;
}
