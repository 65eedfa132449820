/*
 * PKCS#11 objects made from the agent's identity records: the attributes
 * every object carries, computed once per listing from the public key and
 * the certificates. Nothing here is secret: the private-key object is a
 * name and a public key, its sensitive attributes do not exist.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "pkcs11/p11.h"

void p11_debug(const char *fmt, ...)
{
	const char *dbg = getenv("MTLS_AGENT_DEBUG");
	char line[1024];
	va_list ap;

	if (dbg == NULL || dbg[0] == '\0' || strcmp(dbg, "0") == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "mtls-agent-pkcs11: %s\n", line);
}

void p11_object_free(struct p11_object *obj)
{
	size_t i;

	if (obj == NULL)
		return;
	for (i = 0; i < obj->n_attrs; i++)
		free(obj->attrs[i].value);
	free(obj->attrs);
	free(obj->name);
	free(obj);
}

const struct p11_attr *p11_object_attr(const struct p11_object *obj, CK_ATTRIBUTE_TYPE type)
{
	size_t i;

	for (i = 0; i < obj->n_attrs; i++)
		if (obj->attrs[i].type == type)
			return &obj->attrs[i];
	return NULL;
}

/* --- building ------------------------------------------------------------------------- */

static int add_bytes(struct p11_object *obj, CK_ATTRIBUTE_TYPE type, const void *v, size_t len)
{
	struct p11_attr *a;

	if ((a = realloc(obj->attrs, (obj->n_attrs + 1) * sizeof(*a))) == NULL)
		return -1;
	obj->attrs = a;
	a = &obj->attrs[obj->n_attrs];
	a->type = type;
	a->len = (CK_ULONG)len;
	/* malloc(0) may return NULL: keep one byte so that "empty" is not "failed". */
	if ((a->value = malloc(len > 0 ? len : 1)) == NULL)
		return -1;
	if (len > 0)
		memcpy(a->value, v, len);
	obj->n_attrs++;
	return 0;
}

static int add_bool(struct p11_object *obj, CK_ATTRIBUTE_TYPE type, int v)
{
	CK_BBOOL b = v ? CK_TRUE : CK_FALSE;

	return add_bytes(obj, type, &b, sizeof(b));
}

static int add_ulong(struct p11_object *obj, CK_ATTRIBUTE_TYPE type, CK_ULONG v)
{
	return add_bytes(obj, type, &v, sizeof(v));
}

static int add_i2d_name(struct p11_object *obj, CK_ATTRIBUTE_TYPE type, const X509_NAME *name)
{
	unsigned char *der = NULL;
	int len = i2d_X509_NAME(name, &der), r;

	if (len <= 0)
		return -1;
	r = add_bytes(obj, type, der, (size_t)len);
	OPENSSL_free(der);
	return r;
}

static struct p11_object *object_new(CK_OBJECT_CLASS cls, const char *name, const uint8_t *id,
				     const uint8_t *value, size_t value_len)
{
	struct p11_object *obj = calloc(1, sizeof(*obj));
	EVP_MD_CTX *md;
	int ok;

	if (obj == NULL || (obj->name = strdup(name)) == NULL) {
		free(obj);
		return NULL;
	}
	obj->cls = cls;
	/* Identity: class, label and the public key or certificate itself. */
	md = EVP_MD_CTX_new();
	ok = md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) &&
	     EVP_DigestUpdate(md, &cls, sizeof(cls)) &&
	     EVP_DigestUpdate(md, name, strlen(name) + 1) &&
	     EVP_DigestUpdate(md, value, value_len) && EVP_DigestFinal_ex(md, obj->key, NULL);
	EVP_MD_CTX_free(md);
	if (!ok || add_ulong(obj, CKA_CLASS, cls) != 0 || add_bool(obj, CKA_TOKEN, 1) != 0 ||
	    add_bool(obj, CKA_PRIVATE, 0) != 0 || add_bool(obj, CKA_MODIFIABLE, 0) != 0 ||
	    add_bool(obj, CKA_COPYABLE, 0) != 0 || add_bool(obj, CKA_DESTROYABLE, 0) != 0 ||
	    add_bytes(obj, CKA_LABEL, name, strlen(name)) != 0 ||
	    add_bytes(obj, CKA_ID, id, MTLS_AGENT_SPKI_HASH_LEN) != 0) {
		p11_object_free(obj);
		return NULL;
	}
	return obj;
}

/* The public values PKCS#11 shows for a key, on both key objects. */
static int add_public_values(struct p11_object *obj, EVP_PKEY *pk, int key_type, int with_bits)
{
	unsigned char *der = NULL, buf[512];
	size_t len = 0;
	int r = -1;

	switch (key_type) {
	case MTLS_AGENT_KEY_RSA: {
		BIGNUM *n = NULL, *e = NULL;
		int nlen, elen;

		if (EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_N, &n) &&
		    EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_E, &e) &&
		    (nlen = BN_num_bytes(n)) <= (int)sizeof(buf) && BN_bn2bin(n, buf) == nlen &&
		    add_bytes(obj, CKA_MODULUS, buf, (size_t)nlen) == 0 &&
		    (elen = BN_num_bytes(e)) <= (int)sizeof(buf) && BN_bn2bin(e, buf) == elen &&
		    add_bytes(obj, CKA_PUBLIC_EXPONENT, buf, (size_t)elen) == 0 &&
		    (!with_bits || add_ulong(obj, CKA_MODULUS_BITS, (CK_ULONG)BN_num_bits(n)) == 0))
			r = 0;
		BN_free(n);
		BN_free(e);
		return r;
	}
	case MTLS_AGENT_KEY_EC: {
		char group[64];
		ASN1_OBJECT *oid = NULL;
		ASN1_OCTET_STRING *pt = NULL;
		int dlen;

		if (!EVP_PKEY_get_group_name(pk, group, sizeof(group), NULL) ||
		    (oid = OBJ_txt2obj(group, 0)) == NULL ||
		    (dlen = i2d_ASN1_OBJECT(oid, &der)) <= 0 ||
		    add_bytes(obj, CKA_EC_PARAMS, der, (size_t)dlen) != 0)
			goto ec_out;
		OPENSSL_free(der);
		der = NULL;
		/* CKA_EC_POINT: the uncompressed point, DER OCTET STRING (PKCS#11 2.40). */
		if (!EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, buf,
						     sizeof(buf), &len) ||
		    (pt = ASN1_OCTET_STRING_new()) == NULL ||
		    !ASN1_OCTET_STRING_set(pt, buf, (int)len) ||
		    (dlen = i2d_ASN1_OCTET_STRING(pt, &der)) <= 0 ||
		    add_bytes(obj, CKA_EC_POINT, der, (size_t)dlen) != 0)
			goto ec_out;
		r = 0;
	ec_out:
		OPENSSL_free(der);
		ASN1_OCTET_STRING_free(pt);
		ASN1_OBJECT_free(oid);
		return r;
	}
	case MTLS_AGENT_KEY_ED25519: {
		/* PKCS#11 3.0: CKA_EC_PARAMS may be the curve OID (id-Ed25519). */
		static const uint8_t oid_ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
		uint8_t point[2 + 32];

		len = 32;
		if (!EVP_PKEY_get_raw_public_key(pk, point + 2, &len) || len != 32)
			return -1;
		point[0] = 0x04; /* OCTET STRING */
		point[1] = 32;
		if (add_bytes(obj, CKA_EC_PARAMS, oid_ed25519, sizeof(oid_ed25519)) != 0 ||
		    add_bytes(obj, CKA_EC_POINT, point, sizeof(point)) != 0)
			return -1;
		return 0;
	}
	}
	return -1;
}

static int add_key_common(struct p11_object *obj, const struct mtls_agent_identity *id,
			  const X509 *leaf)
{
	CK_KEY_TYPE kt = id->key_type == MTLS_AGENT_KEY_RSA  ? CKK_RSA
			 : id->key_type == MTLS_AGENT_KEY_EC ? CKK_EC
							     : CKK_EC_EDWARDS;
	CK_MECHANISM_TYPE mechs[16];
	size_t n = p11_sign_mechanisms(id->key_type, mechs, sizeof(mechs) / sizeof(mechs[0]));

	if (add_ulong(obj, CKA_KEY_TYPE, kt) != 0 || add_bool(obj, CKA_LOCAL, 1) != 0 ||
	    add_bool(obj, CKA_DERIVE, 0) != 0 || add_bytes(obj, CKA_START_DATE, "", 0) != 0 ||
	    add_bytes(obj, CKA_END_DATE, "", 0) != 0 ||
	    add_ulong(obj, CKA_KEY_GEN_MECHANISM, CK_UNAVAILABLE_INFORMATION) != 0 ||
	    add_bytes(obj, CKA_ALLOWED_MECHANISMS, mechs, n * sizeof(mechs[0])) != 0 ||
	    add_bytes(obj, CKA_PUBLIC_KEY_INFO, id->spki, id->spki_len) != 0)
		return -1;
	if (leaf != NULL && add_i2d_name(obj, CKA_SUBJECT, X509_get_subject_name(leaf)) != 0)
		return -1;
	return 0;
}

static struct p11_object *key_object(const struct mtls_agent_identity *id, EVP_PKEY *pk,
				     const uint8_t *spki_hash, const X509 *leaf, int private)
{
	struct p11_object *obj;
	int ok;

	obj = object_new(private ? CKO_PRIVATE_KEY : CKO_PUBLIC_KEY, id->name, spki_hash, id->spki,
			 id->spki_len);
	if (obj == NULL)
		return NULL;
	memcpy(obj->spki_hash, spki_hash, MTLS_AGENT_SPKI_HASH_LEN);
	obj->key_type = id->key_type;
	obj->bits = (unsigned)EVP_PKEY_get_bits(pk);
	ok = add_key_common(obj, id, leaf) == 0 &&
	     add_public_values(obj, pk, id->key_type, !private) == 0;
	if (ok && private)
		/* Sign only; the private half never leaves the agent's hardware. */
		ok = add_bool(obj, CKA_SIGN, 1) == 0 && add_bool(obj, CKA_SIGN_RECOVER, 0) == 0 &&
		     add_bool(obj, CKA_DECRYPT, 0) == 0 && add_bool(obj, CKA_UNWRAP, 0) == 0 &&
		     add_bool(obj, CKA_SENSITIVE, 1) == 0 &&
		     add_bool(obj, CKA_ALWAYS_SENSITIVE, 1) == 0 &&
		     add_bool(obj, CKA_EXTRACTABLE, 0) == 0 &&
		     add_bool(obj, CKA_NEVER_EXTRACTABLE, 1) == 0 &&
		     add_bool(obj, CKA_ALWAYS_AUTHENTICATE, 0) == 0 &&
		     add_bool(obj, CKA_WRAP_WITH_TRUSTED, 0) == 0;
	else if (ok)
		ok = add_bool(obj, CKA_VERIFY, 1) == 0 &&
		     add_bool(obj, CKA_VERIFY_RECOVER, 0) == 0 &&
		     add_bool(obj, CKA_ENCRYPT, 0) == 0 && add_bool(obj, CKA_WRAP, 0) == 0 &&
		     add_bool(obj, CKA_TRUSTED, 0) == 0;
	if (!ok) {
		p11_object_free(obj);
		return NULL;
	}
	return obj;
}

/*
 * The leaf is labelled with the identity name and carries the key's CKA_ID;
 * the rest of the chain is labelled NAME:caN (N from 1) with the hash of its
 * own public key as CKA_ID. One certificate per label is what programs that
 * pair keys and certificates expect (Java's SunPKCS11 KeyStore names an entry
 * by its certificate's label; object=NAME;type=cert must find the leaf).
 */
static struct p11_object *cert_object(const struct mtls_agent_identity *id, size_t i, X509 *x,
				      const uint8_t *key_id)
{
	const struct mtls_agent_cert *c = &id->chain[i];
	char label[300];
	unsigned char *spki = NULL, *serial = NULL;
	uint8_t own_id[SHA256_DIGEST_LENGTH];
	struct p11_object *obj = NULL;
	int spki_len, serial_len, ok;

	if ((spki_len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &spki)) <= 0)
		goto out;
	SHA256(spki, (size_t)spki_len, own_id);
	if (i == 0)
		snprintf(label, sizeof(label), "%s", id->name);
	else
		snprintf(label, sizeof(label), "%s:ca%zu", id->name, i);
	obj = object_new(CKO_CERTIFICATE, label, i == 0 && key_id != NULL ? key_id : own_id, c->der,
			 c->len);
	if (obj == NULL)
		goto out;
	serial_len = i2d_ASN1_INTEGER(X509_get0_serialNumber(x), &serial);
	ok = serial_len > 0 && add_ulong(obj, CKA_CERTIFICATE_TYPE, CKC_X_509) == 0 &&
	     add_bool(obj, CKA_TRUSTED, 0) == 0 &&
	     /* 1: token user (the leaf), 2: authority (the rest of the chain). */
	     add_ulong(obj, CKA_CERTIFICATE_CATEGORY, i == 0 ? 1 : 2) == 0 &&
	     add_ulong(obj, CKA_JAVA_MIDP_SECURITY_DOMAIN, 0) == 0 &&
	     add_bytes(obj, CKA_START_DATE, "", 0) == 0 &&
	     add_bytes(obj, CKA_END_DATE, "", 0) == 0 && add_bytes(obj, CKA_URL, "", 0) == 0 &&
	     add_i2d_name(obj, CKA_SUBJECT, X509_get_subject_name(x)) == 0 &&
	     add_i2d_name(obj, CKA_ISSUER, X509_get_issuer_name(x)) == 0 &&
	     add_bytes(obj, CKA_SERIAL_NUMBER, serial, (size_t)serial_len) == 0 &&
	     add_bytes(obj, CKA_PUBLIC_KEY_INFO, spki, (size_t)spki_len) == 0 &&
	     add_bytes(obj, CKA_VALUE, c->der, c->len) == 0;
	if (!ok) {
		p11_object_free(obj);
		obj = NULL;
	}
out:
	OPENSSL_free(spki);
	OPENSSL_free(serial);
	return obj;
}

int p11_objects_from_identity(const struct mtls_agent_identity *id,
			      void (*add)(struct p11_object *obj, void *arg), void *arg)
{
	uint8_t spki_hash[MTLS_AGENT_SPKI_HASH_LEN];
	struct p11_object *priv = NULL, *pub = NULL;
	X509 **certs = NULL;
	EVP_PKEY *pk = NULL;
	const unsigned char *p;
	size_t i, n_certs = 0;
	int r = -1;

	if (id->chain_len > 0 && (certs = calloc(id->chain_len, sizeof(*certs))) == NULL)
		return -1;
	for (i = 0; i < id->chain_len; i++) {
		p = id->chain[i].der;
		if ((certs[i] = d2i_X509(NULL, &p, (long)id->chain[i].len)) == NULL) {
			p11_debug("identity \"%s\": certificate %zu cannot be parsed", id->name, i);
			goto out;
		}
		n_certs++;
	}
	if (id->key_type != MTLS_AGENT_KEY_NONE && id->spki_len > 0) {
		p = id->spki;
		if ((pk = d2i_PUBKEY(NULL, &p, (long)id->spki_len)) == NULL) {
			p11_debug("identity \"%s\": public key cannot be parsed", id->name);
			goto out;
		}
		SHA256(id->spki, id->spki_len, spki_hash);
		priv = key_object(id, pk, spki_hash, n_certs > 0 ? certs[0] : NULL, 1);
		pub = key_object(id, pk, spki_hash, n_certs > 0 ? certs[0] : NULL, 0);
		if (priv == NULL || pub == NULL) {
			p11_debug("identity \"%s\": no memory or unusable key", id->name);
			goto out;
		}
	}
	/* Everything built: hand over, private key first (what a search by label finds first). */
	if (priv != NULL) {
		add(priv, arg);
		add(pub, arg);
		priv = pub = NULL;
	}
	for (i = 0; i < n_certs; i++) {
		struct p11_object *c = cert_object(id, i, certs[i], pk != NULL ? spki_hash : NULL);

		if (c == NULL) {
			p11_debug("identity \"%s\": certificate %zu: no memory", id->name, i);
			goto out;
		}
		add(c, arg);
	}
	r = 0;
out:
	p11_object_free(priv);
	p11_object_free(pub);
	for (i = 0; i < n_certs; i++)
		X509_free(certs[i]);
	free(certs);
	EVP_PKEY_free(pk);
	return r;
}
