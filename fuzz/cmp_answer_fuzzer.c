/*
 * Fuzz target: what the CMP client does with a CA's answer (renew/enroll-cmp.c)
 * once OpenSSL has parsed it. OpenSSL itself is not the target: the input must
 * be a PKIMessage that d2i_OSSL_CMP_MSG() accepts, as cmp_transfer() requires;
 * everything after that is ours.
 *
 * OpenSSL 3.0 has no getters for the body of a message, so the parts that its
 * CMP client hands our callbacks (the issued certificate, extraCerts, caPubs,
 * the PKIStatusInfo of the first response or of an error message) are taken
 * from the message's DER here with a template of the RFC 4210 structures
 * that matter. They then go through our code: the path candidates passed to
 * stage() (cmp_candidate_chain), the check of who may sign for the CA
 * (cmp_signer_may_answer, each extraCert against the issued certificate), and
 * the outcome and message of a rejection with the CA's status text
 * (cmp_rejected, OpenSSL's rendering of the PKIStatusInfo as
 * OSSL_CMP_CTX_snprint_PKIStatus gives it).
 *
 * Checks: the candidates are the certificate, then every extraCert and caPub,
 * in order; the message is printable ASCII (the CA's text escaped) and the
 * outcome follows the failInfo bits.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/asn1t.h>
#include <openssl/cmp.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include "renew/enroll-cmp.h"
#include "renew/enroll.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/*
 * PKIStatusInfo ::= SEQUENCE { status INTEGER, statusString PKIFreeText OPTIONAL,
 *                              failInfo BIT STRING OPTIONAL }
 */
typedef struct {
	ASN1_INTEGER *status;
	STACK_OF(ASN1_UTF8STRING) * text;
	ASN1_BIT_STRING *fail;
} FZ_PKISI;

/* CertOrEncCert ::= CHOICE { certificate [0] CMPCertificate, encryptedCert [1] EncryptedValue } */
typedef struct {
	int type;
	union {
		X509 *cert;
		ASN1_TYPE *enc;
	} value;
} FZ_CERTORENC;

/* CertifiedKeyPair ::= SEQUENCE { certOrEncCert, privateKey [0], publicationInfo [1] } */
typedef struct {
	FZ_CERTORENC *coe;
	ASN1_TYPE *priv;
	ASN1_TYPE *pubinfo;
} FZ_CKP;

/* CertResponse ::= SEQUENCE { certReqId, status, certifiedKeyPair OPTIONAL, rspInfo OPTIONAL } */
typedef struct {
	ASN1_INTEGER *id;
	FZ_PKISI *si;
	FZ_CKP *ckp;
	ASN1_OCTET_STRING *rsp;
} FZ_CERTRESP;

/* CertRepMessage ::= SEQUENCE { caPubs [1] OPTIONAL, response SEQUENCE OF CertResponse } */
typedef struct {
	STACK_OF(X509) * capubs;
	OPENSSL_STACK *resp; /* of FZ_CERTRESP */
} FZ_CERTREP;

/* ErrorMsgContent ::= SEQUENCE { pKIStatusInfo, errorCode OPTIONAL, errorDetails OPTIONAL } */
typedef struct {
	FZ_PKISI *si;
	ASN1_INTEGER *code;
	STACK_OF(ASN1_UTF8STRING) * details;
} FZ_ERRMSG;

/* PKIMessage ::= SEQUENCE { header, body, protection [0] OPTIONAL, extraCerts [1] OPTIONAL } */
typedef struct {
	ASN1_TYPE *header;
	ASN1_TYPE *body; /* V_ASN1_OTHER: the whole [n] EXPLICIT element */
	ASN1_BIT_STRING *prot;
	STACK_OF(X509) * extra;
} FZ_MSG;

/* clang-format off */
ASN1_SEQUENCE(FZ_PKISI) = {
	ASN1_SIMPLE(FZ_PKISI, status, ASN1_INTEGER),
	ASN1_SEQUENCE_OF_OPT(FZ_PKISI, text, ASN1_UTF8STRING),
	ASN1_OPT(FZ_PKISI, fail, ASN1_BIT_STRING),
} static_ASN1_SEQUENCE_END(FZ_PKISI)

ASN1_CHOICE(FZ_CERTORENC) = {
	ASN1_EXP(FZ_CERTORENC, value.cert, X509, 0),
	ASN1_EXP(FZ_CERTORENC, value.enc, ASN1_ANY, 1),
} static_ASN1_CHOICE_END(FZ_CERTORENC)

ASN1_SEQUENCE(FZ_CKP) = {
	ASN1_SIMPLE(FZ_CKP, coe, FZ_CERTORENC),
	ASN1_EXP_OPT(FZ_CKP, priv, ASN1_ANY, 0),
	ASN1_EXP_OPT(FZ_CKP, pubinfo, ASN1_ANY, 1),
} static_ASN1_SEQUENCE_END(FZ_CKP)

ASN1_SEQUENCE(FZ_CERTRESP) = {
	ASN1_SIMPLE(FZ_CERTRESP, id, ASN1_INTEGER),
	ASN1_SIMPLE(FZ_CERTRESP, si, FZ_PKISI),
	ASN1_OPT(FZ_CERTRESP, ckp, FZ_CKP),
	ASN1_OPT(FZ_CERTRESP, rsp, ASN1_OCTET_STRING),
} static_ASN1_SEQUENCE_END(FZ_CERTRESP)

ASN1_SEQUENCE(FZ_CERTREP) = {
	ASN1_EXP_SEQUENCE_OF_OPT(FZ_CERTREP, capubs, X509, 1),
	ASN1_SEQUENCE_OF(FZ_CERTREP, resp, FZ_CERTRESP),
} static_ASN1_SEQUENCE_END(FZ_CERTREP)

ASN1_SEQUENCE(FZ_ERRMSG) = {
	ASN1_SIMPLE(FZ_ERRMSG, si, FZ_PKISI),
	ASN1_OPT(FZ_ERRMSG, code, ASN1_INTEGER),
	ASN1_SEQUENCE_OF_OPT(FZ_ERRMSG, details, ASN1_UTF8STRING),
} static_ASN1_SEQUENCE_END(FZ_ERRMSG)

ASN1_SEQUENCE(FZ_MSG) = {
	ASN1_SIMPLE(FZ_MSG, header, ASN1_ANY),
	ASN1_SIMPLE(FZ_MSG, body, ASN1_ANY),
	ASN1_EXP_OPT(FZ_MSG, prot, ASN1_BIT_STRING, 0),
	ASN1_EXP_SEQUENCE_OF_OPT(FZ_MSG, extra, X509, 1),
} static_ASN1_SEQUENCE_END(FZ_MSG)
/* clang-format on */

/* PKIBody choices (RFC 4210 5.1.2) whose content this target follows. */
#define BODY_IP 1
#define BODY_CP 3
#define BODY_KUP 8
#define BODY_ERROR 23

/* failInfo bits (OpenSSL's OSSL_CMP_PKIFAILUREINFO_*), as in enroll-cmp.c. */
#define AUTH_BITS                                                                                  \
	((1 << OSSL_CMP_PKIFAILUREINFO_notAuthorized) |                                            \
	 (1 << OSSL_CMP_PKIFAILUREINFO_signerNotTrusted) |                                         \
	 (1 << OSSL_CMP_PKIFAILUREINFO_certRevoked) | (1 << OSSL_CMP_PKIFAILUREINFO_badCertId))
#define BUSY_BITS                                                                                  \
	((1 << OSSL_CMP_PKIFAILUREINFO_systemUnavail) |                                            \
	 (1 << OSSL_CMP_PKIFAILUREINFO_timeNotAvailable) |                                         \
	 (1 << OSSL_CMP_PKIFAILUREINFO_transactionIdInUse))

														int LLVMFuzzerInitialize(
															int *argc,
															char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

/* The failInfo bits as OSSL_CMP_CTX_get_failInfoCode() gives them. */
static int fail_info_code(const ASN1_BIT_STRING *fail)
{
	int i, code = 0;

	for (i = 0; i <= OSSL_CMP_PKIFAILUREINFO_MAX; i++)
		if (ASN1_BIT_STRING_get_bit(fail, i))
			code |= 1 << i;
	return code;
}

/* The rejection message for si, through OpenSSL's rendering and our cmp_rejected(). */
static void rejection(FZ_PKISI *si)
{
	struct enroll_result res;
	OSSL_CMP_PKISI *osi = NULL;
	unsigned char *der = NULL;
	const unsigned char *p;
	char text[256];
	const char *status = NULL;
	int len, fi, want;
	size_t i, n;

	if ((len = ASN1_item_i2d((ASN1_VALUE *)si, &der, ASN1_ITEM_rptr(FZ_PKISI))) <= 0)
		return;
	p = der;
	if ((osi = d2i_OSSL_CMP_PKISI(NULL, &p, len)) != NULL)
		status = OSSL_CMP_snprint_PKIStatusInfo(osi, text, sizeof(text));
	fi = fail_info_code(si->fail);
	memset(&res, 0, sizeof(res));
	cmp_rejected("KUR", status, fi, &res);
	want = (fi & AUTH_BITS) != 0   ? ENROLL_NOT_AUTHORIZED
	       : (fi & BUSY_BITS) != 0 ? ENROLL_TRANSIENT
				       : ENROLL_REJECTED;
	if (res.outcome != want)
		abort();
	n = strnlen(res.msg, sizeof(res.msg));
	if (n == 0 || n == sizeof(res.msg))
		abort();
	for (i = 0; i < n; i++)
		if ((unsigned char)res.msg[i] < 0x20 || (unsigned char)res.msg[i] > 0x7e)
			abort();
	OSSL_CMP_PKISI_free(osi);
	OPENSSL_free(der);
}

/* The issued certificate with what came along: path candidates and signer checks. */
static void issued(X509 *cert, STACK_OF(X509) * extra, STACK_OF(X509) * capubs)
{
	STACK_OF(X509) *own = sk_X509_new_null(), *pins = sk_X509_new_null(), *chain, *mine;
	int i, n_extra = sk_X509_num(extra), n_capubs = sk_X509_num(capubs);

	if (own == NULL || pins == NULL)
		goto out;
	if ((chain = cmp_candidate_chain(cert, extra, capubs, own)) == NULL)
		goto out;
	if (sk_X509_num(chain) != 1 + (n_extra > 0 ? n_extra : 0) + (n_capubs > 0 ? n_capubs : 0) ||
	    sk_X509_value(chain, 0) != cert)
		abort();
	for (i = 0; i < n_extra; i++)
		if (sk_X509_value(chain, 1 + i) != sk_X509_value(extra, i))
			abort();
	for (i = 0; i < n_capubs; i++)
		if (sk_X509_value(chain, 1 + (n_extra > 0 ? n_extra : 0) + i) !=
		    sk_X509_value(capubs, i))
			abort();
	/* Each certificate sent along, as the signer of the answer, with this leaf as ours. */
	if ((mine = sk_X509_new_null()) != NULL && sk_X509_push(mine, cert)) {
		for (i = 0; i < sk_X509_num(chain); i++)
			(void)cmp_signer_may_answer(sk_X509_value(chain, i), pins, mine);
		/* A pinned signer is always accepted. */
		if (n_extra > 0 && sk_X509_push(pins, sk_X509_value(extra, 0)) &&
		    cmp_signer_may_answer(sk_X509_value(extra, 0), pins, mine) != 1)
			abort();
	}
	sk_X509_free(mine);
	sk_X509_pop_free(chain, X509_free);
out:
	sk_X509_free(own);
	sk_X509_free(pins);
	ERR_clear_error();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	OSSL_CMP_MSG *msg;
	FZ_MSG *m = NULL;
	FZ_CERTREP *rep = NULL;
	FZ_ERRMSG *err = NULL;
	FZ_CERTRESP *resp;
	unsigned char *der = NULL;
	const unsigned char *p, *content;
	long clen;
	int len, type, tag, cls, i;

	p = data;
	if ((msg = d2i_OSSL_CMP_MSG(NULL, &p, (long)size)) == NULL)
		goto out;
	type = OSSL_CMP_MSG_get_bodytype(msg);
	/* OpenSSL's own encoding of what it parsed: the structures its client works on. */
	if ((len = i2d_OSSL_CMP_MSG(msg, &der)) <= 0)
		goto out;
	p = der;
	m = (FZ_MSG *)ASN1_item_d2i(NULL, &p, len, ASN1_ITEM_rptr(FZ_MSG));
	if (m == NULL || m->body == NULL || m->body->type != V_ASN1_OTHER)
		goto out;
	content = m->body->value.asn1_string->data;
	if (ASN1_get_object(&content, &clen, &tag, &cls, m->body->value.asn1_string->length) &
		    0x80 ||
	    cls != V_ASN1_CONTEXT_SPECIFIC || tag != type)
		goto out;
	if (type == BODY_IP || type == BODY_CP || type == BODY_KUP) {
		rep = (FZ_CERTREP *)ASN1_item_d2i(NULL, &content, clen, ASN1_ITEM_rptr(FZ_CERTREP));
		if (rep == NULL)
			goto out;
		for (i = 0; i < OPENSSL_sk_num(rep->resp) && i < 4; i++) {
			resp = OPENSSL_sk_value(rep->resp, i);
			rejection(resp->si);
			if (resp->ckp != NULL && resp->ckp->coe->type == 0)
				issued(resp->ckp->coe->value.cert, m->extra, rep->capubs);
		}
	} else if (type == BODY_ERROR) {
		err = (FZ_ERRMSG *)ASN1_item_d2i(NULL, &content, clen, ASN1_ITEM_rptr(FZ_ERRMSG));
		if (err != NULL)
			rejection(err->si);
	}
out:
	ASN1_item_free((ASN1_VALUE *)err, ASN1_ITEM_rptr(FZ_ERRMSG));
	ASN1_item_free((ASN1_VALUE *)rep, ASN1_ITEM_rptr(FZ_CERTREP));
	ASN1_item_free((ASN1_VALUE *)m, ASN1_ITEM_rptr(FZ_MSG));
	OPENSSL_free(der);
	OSSL_CMP_MSG_free(msg);
	ERR_clear_error();
	return 0;
}
