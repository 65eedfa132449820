#include "config.h"

/* TSS2 PRIVATE KEY files: see tpm2-keyfile.h. */

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1t.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>

#include <tss2/tss2_mu.h>

#include "keystore/tpm2-keyfile.h"
#include "mtls-agent/client.h"

#define OID_LOADABLE_KEY "2.23.133.10.1.3"

/*
 * TPMKey ::= SEQUENCE {
 *	type		OBJECT IDENTIFIER,	-- 2.23.133.10.1.3: loadable key
 *	emptyAuth	[0] EXPLICIT BOOLEAN OPTIONAL,
 *	parent		INTEGER,		-- 0x40000001: SRK from the template
 *	pubkey		OCTET STRING,		-- TPM2B_PUBLIC
 *	privkey		OCTET STRING		-- TPM2B_PRIVATE
 * }
 * Files with the optional policy or secret fields of the full draft
 * (policy-bound or importable keys) fail to parse: they are not supported.
 */
typedef struct {
	ASN1_OBJECT *type;
	ASN1_BOOLEAN empty_auth;
	ASN1_INTEGER *parent;
	ASN1_OCTET_STRING *pubkey;
	ASN1_OCTET_STRING *privkey;
} TSS2_KEY_FILE;

/* clang-format off */
ASN1_SEQUENCE(TSS2_KEY_FILE) = {
	ASN1_SIMPLE(TSS2_KEY_FILE, type, ASN1_OBJECT),
	ASN1_EXP_OPT(TSS2_KEY_FILE, empty_auth, ASN1_BOOLEAN, 0),
	ASN1_SIMPLE(TSS2_KEY_FILE, parent, ASN1_INTEGER),
	ASN1_SIMPLE(TSS2_KEY_FILE, pubkey, ASN1_OCTET_STRING),
	ASN1_SIMPLE(TSS2_KEY_FILE, privkey, ASN1_OCTET_STRING),
} static_ASN1_SEQUENCE_END(TSS2_KEY_FILE)

static const char *blob_from_der(const uint8_t *der, long len, struct tpm_blob *blob);
/* clang-format on */

/* One DER TPMKey into blob; NULL or a reason. */
static const char *blob_from_der(const uint8_t *der, long len, struct tpm_blob *blob)
{
	const unsigned char *p = der;
	TSS2_KEY_FILE *k;
	const char *why = NULL;
	uint64_t parent = 0;
	size_t off;
	char oid[64];

	memset(blob, 0, sizeof(*blob));
	k = (TSS2_KEY_FILE *)ASN1_item_d2i(NULL, &p, len, ASN1_ITEM_rptr(TSS2_KEY_FILE));
	if (k == NULL || p != der + len) {
		why = "not a TSS2 loadable key (or one with a policy or an import secret, which "
		      "the agent does not support)";
		goto out;
	}
	if (OBJ_obj2txt(oid, sizeof(oid), k->type, 1) <= 0 || strcmp(oid, OID_LOADABLE_KEY) != 0) {
		why = "key type is not 2.23.133.10.1.3 (loadable key)";
		goto out;
	}
	/*
	 * The agent holds no key passwords. Trying an empty one on a key that has
	 * a password would count towards the TPM's dictionary-attack lockout.
	 */
	if (k->empty_auth <= 0) {
		why = "the key has a password (emptyAuth is not TRUE); the agent uses only keys "
		      "without one";
		goto out;
	}
	if (ASN1_INTEGER_get_uint64(&parent, k->parent) != 1 || parent > UINT32_MAX) {
		why = "bad parent handle";
		goto out;
	}
	/* tpm2-openssl reads parent 0 as the owner hierarchy too. */
	blob->parent = parent == 0 ? TPM2_RH_OWNER : (TPM2_HANDLE)parent;
	if (blob->parent != TPM2_RH_OWNER &&
	    (blob->parent >> TPM2_HR_SHIFT) != TPM2_HT_PERSISTENT) {
		why = "parent is neither the owner hierarchy (0x40000001) nor a persistent handle";
		goto out;
	}
	off = 0;
	if (Tss2_MU_TPM2B_PUBLIC_Unmarshal(k->pubkey->data, (size_t)k->pubkey->length, &off,
					   &blob->pub) != TSS2_RC_SUCCESS ||
	    off != (size_t)k->pubkey->length ||
	    /* tss2-mu does not hold the size field to what it read */
	    (size_t)blob->pub.size + 2 != off) {
		why = "bad TPM2B_PUBLIC";
		goto out;
	}
	off = 0;
	if (Tss2_MU_TPM2B_PRIVATE_Unmarshal(k->privkey->data, (size_t)k->privkey->length, &off,
					    &blob->priv) != TSS2_RC_SUCCESS ||
	    off != (size_t)k->privkey->length || blob->priv.size == 0) {
		why = "bad TPM2B_PRIVATE";
		goto out;
	}
out:
	ASN1_item_free((ASN1_VALUE *)k, ASN1_ITEM_rptr(TSS2_KEY_FILE));
	return why;
}

/* DER TPMKey of blob (OPENSSL_free it), length or -1. */
static int blob_to_der(const struct tpm_blob *blob, unsigned char **der)
{
	uint8_t pub[sizeof(TPM2B_PUBLIC)], priv[sizeof(TPM2B_PRIVATE)];
	size_t publen = 0, privlen = 0;
	TSS2_KEY_FILE *k = NULL;
	int len = -1;

	*der = NULL;
	if (Tss2_MU_TPM2B_PUBLIC_Marshal(&blob->pub, pub, sizeof(pub), &publen) != 0 ||
	    Tss2_MU_TPM2B_PRIVATE_Marshal(&blob->priv, priv, sizeof(priv), &privlen) != 0)
		goto out;
	if ((k = (TSS2_KEY_FILE *)ASN1_item_new(ASN1_ITEM_rptr(TSS2_KEY_FILE))) == NULL)
		goto out;
	ASN1_OBJECT_free(k->type);
	if ((k->type = OBJ_txt2obj(OID_LOADABLE_KEY, 1)) == NULL)
		goto out;
	k->empty_auth = 0xff; /* TRUE: tpm2-openssl asks for a password otherwise */
	if (ASN1_INTEGER_set_uint64(k->parent, blob->parent) != 1 ||
	    ASN1_OCTET_STRING_set(k->pubkey, pub, (int)publen) != 1 ||
	    ASN1_OCTET_STRING_set(k->privkey, priv, (int)privlen) != 1)
		goto out;
	len = ASN1_item_i2d((ASN1_VALUE *)k, der, ASN1_ITEM_rptr(TSS2_KEY_FILE));
out:
	ASN1_item_free((ASN1_VALUE *)k, ASN1_ITEM_rptr(TSS2_KEY_FILE));
	return len;
}

int tpm2_keyfile_decode(const uint8_t *data, size_t len, const char *name, struct tpm_blob **blobs,
			size_t *n, char *err, size_t errlen)
{
	struct tpm_blob *arr = NULL;
	char *pname = NULL, *header = NULL;
	unsigned char *der = NULL;
	const char *why;
	size_t cnt = 0;
	long dlen = 0;
	BIO *bio = NULL;
	unsigned long e;
	int ret;

	*blobs = NULL;
	*n = 0;
	if (len == 0)
		return 0;
	if (len > INT_MAX) {
		snprintf(err, errlen, "key file %s is too large", name);
		return MTLS_AGENT_ERR_KEYSTORE;
	}
	if ((arr = calloc(TPM2_KEYFILE_MAX_BLOCKS, sizeof(*arr))) == NULL ||
	    (bio = BIO_new_mem_buf(data, (int)len)) == NULL) {
		ret = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	ERR_set_mark();
	while (PEM_read_bio(bio, &pname, &header, &der, &dlen) == 1) {
		if (strcmp(pname, TPM2_KEYFILE_LABEL) != 0) {
			snprintf(err, errlen,
				 "key file %s: a '%.40s' PEM block where only '%s' "
				 "blocks belong",
				 name, pname, TPM2_KEYFILE_LABEL);
			ret = MTLS_AGENT_ERR_KEYSTORE;
			goto out_mark;
		}
		if (cnt == TPM2_KEYFILE_MAX_BLOCKS) {
			snprintf(err, errlen, "key file %s: more than %d keys", name,
				 TPM2_KEYFILE_MAX_BLOCKS);
			ret = MTLS_AGENT_ERR_KEYSTORE;
			goto out_mark;
		}
		if ((why = blob_from_der(der, dlen, &arr[cnt])) != NULL) {
			snprintf(err, errlen, "key file %s, key %zu: %s", name, cnt + 1, why);
			ret = MTLS_AGENT_ERR_KEYSTORE;
			goto out_mark;
		}
		cnt++;
		OPENSSL_free(pname);
		OPENSSL_free(header);
		OPENSSL_free(der);
		pname = header = NULL;
		der = NULL;
	}
	/* The loop ends at the end of the data (no start line) or at a broken block. */
	e = ERR_peek_last_error();
	if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) != PEM_R_NO_START_LINE) {
		snprintf(err, errlen, "key file %s: malformed PEM after key %zu", name, cnt);
		ret = MTLS_AGENT_ERR_KEYSTORE;
		goto out_mark;
	}
	if (cnt == 0) {
		snprintf(err, errlen, "key file %s holds no '%s' block", name, TPM2_KEYFILE_LABEL);
		ret = MTLS_AGENT_ERR_KEYSTORE;
		goto out_mark;
	}
	*blobs = arr;
	*n = cnt;
	arr = NULL;
	ret = 0;
out_mark:
	ERR_pop_to_mark();
out:
	OPENSSL_free(pname);
	OPENSSL_free(header);
	OPENSSL_free(der);
	BIO_free(bio);
	if (arr != NULL) {
		OPENSSL_cleanse(arr, TPM2_KEYFILE_MAX_BLOCKS * sizeof(*arr));
		free(arr);
	}
	return ret;
}

int tpm2_keyfile_encode(const struct tpm_blob *blobs, size_t n, const char *name, char **pem,
			size_t *len, char *err, size_t errlen)
{
	unsigned char *der = NULL;
	BIO *bio = NULL;
	char *data;
	long dlen;
	size_t i;
	int dl, ret = MTLS_AGENT_ERR_INTERNAL;

	*pem = NULL;
	*len = 0;
	if ((bio = BIO_new(BIO_s_mem())) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	for (i = 0; i < n; i++) {
		if ((dl = blob_to_der(&blobs[i], &der)) <= 0 ||
		    PEM_write_bio(bio, TPM2_KEYFILE_LABEL, "", der, dl) <= 0) {
			snprintf(err, errlen, "cannot encode key %zu for %s", i + 1, name);
			goto out;
		}
		OPENSSL_free(der);
		der = NULL;
	}
	dlen = BIO_get_mem_data(bio, &data);
	if (dlen < 0 || (*pem = malloc((size_t)dlen + 1)) == NULL) {
		ret = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	memcpy(*pem, data, (size_t)dlen);
	(*pem)[dlen] = '\0';
	*len = (size_t)dlen;
	ret = 0;
out:
	OPENSSL_free(der);
	BIO_free(bio);
	return ret;
}
