/*
 * The scheme table in common/scheme.c: every row agrees with itself and with
 * OpenSSL (digest sizes, DER encodings) and PKCS#11 (mechanism values), and
 * each lookup finds the row it should.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

#include "common/scheme.h"
#include "mtls-agent/client.h"

/* PKCS#11 names and values, spelled independently of the table under test. */
#define CK(x)                                                                                      \
	{                                                                                          \
		x, #x                                                                              \
	}
static const struct {
	unsigned long value;
	const char *name;
} ck_names[] = {
	CK(CKM_ECDSA),
	CK(CKM_ECDSA_SHA256),
	CK(CKM_ECDSA_SHA384),
	CK(CKM_ECDSA_SHA512),
	CK(CKM_RSA_PKCS),
	CK(CKM_SHA256_RSA_PKCS),
	CK(CKM_SHA384_RSA_PKCS),
	CK(CKM_SHA512_RSA_PKCS),
	CK(CKM_RSA_PKCS_PSS),
	CK(CKM_SHA256_RSA_PKCS_PSS),
	CK(CKM_SHA384_RSA_PKCS_PSS),
	CK(CKM_SHA512_RSA_PKCS_PSS),
	CK(CKM_EDDSA),
};

static const struct {
	const char *name;
	unsigned long ckm, mgf;
} ck_hashes[] = {
	{"SHA256", CKM_SHA256, CKG_MGF1_SHA256},
	{"SHA384", CKM_SHA384, CKG_MGF1_SHA384},
	{"SHA512", CKM_SHA512, CKG_MGF1_SHA512},
};

static unsigned long ck_value(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(ck_names) / sizeof(ck_names[0]); i++)
		if (strcmp(ck_names[i].name, name) == 0)
			return ck_names[i].value;
	fail_msg("%s is not a mechanism the test knows", name);
	return 0;
}

static size_t n_schemes(void)
{
	size_t n = 0;

	while (scheme_at(n) != NULL)
		n++;
	return n;
}

static void test_digest_rows(void **state)
{
	const struct scheme_md *md;
	size_t i, j;

	(void)state;
	assert_null(scheme_md_at(SCHEME_N_HASHES));
	for (i = 0; (md = scheme_md_at(i)) != NULL; i++) {
		EVP_MD *fetched = EVP_MD_fetch(NULL, md->name, NULL);
		const EVP_MD *by_nid = EVP_get_digestbynid(md->nid);

		assert_int_equal(md->id, i);
		assert_non_null(fetched);
		assert_non_null(by_nid);
		/* The length is the digest's, so also the PSS salt length TLS 1.3 uses. */
		assert_int_equal((size_t)EVP_MD_get_size(fetched), md->len);
		assert_int_equal((size_t)EVP_MD_get_size(by_nid), md->len);
		assert_int_equal(EVP_MD_get_type(fetched), md->nid);
		/* Every alias names the same digest, here and in OpenSSL. */
		for (j = 0; md->aliases[j] != NULL; j++) {
			EVP_MD *alias = EVP_MD_fetch(NULL, md->aliases[j], NULL);

			assert_ptr_equal(scheme_md_by_name(md->aliases[j]), md);
			assert_non_null(alias);
			assert_int_equal(EVP_MD_get_type(alias), md->nid);
			EVP_MD_free(alias);
		}
		assert_ptr_equal(scheme_md_by_nid(md->nid), md);
		assert_ptr_equal(scheme_md_by_len(md->len), md);
		assert_ptr_equal(scheme_md_by_ckm(md->ckm), md);
		/* The PKCS#11 digest and MGF1 of that name. */
		for (j = 0; j < sizeof(ck_hashes) / sizeof(ck_hashes[0]); j++)
			if (strcmp(ck_hashes[j].name, md->name) == 0)
				break;
		assert_true(j < sizeof(ck_hashes) / sizeof(ck_hashes[0]));
		assert_int_equal(md->ckm, ck_hashes[j].ckm);
		assert_int_equal(md->ckg_mgf1, ck_hashes[j].mgf);
		EVP_MD_free(fetched);
	}
	assert_int_equal(i, SCHEME_N_HASHES);
	assert_null(scheme_md_by_name("SHA1"));
	assert_null(scheme_md_by_name("SHA3-256"));
	assert_null(scheme_md_by_nid(NID_sha224));
	assert_null(scheme_md_by_nid(NID_undef));
	assert_null(scheme_md_by_len(20));
	assert_null(scheme_md_by_len(0));
	assert_null(scheme_md_by_ckm(CKM_SHA_1));
	assert_ptr_equal(scheme_md_by_name("sha2-384"), scheme_md_at(SCHEME_SHA384));
}

/* The DER constants against OpenSSL's own encoders. */
static void test_digest_der(void **state)
{
	const struct scheme_md *md;
	uint8_t zeros[EVP_MAX_MD_SIZE] = {0};
	size_t i;

	(void)state;
	for (i = 0; (md = scheme_md_at(i)) != NULL; i++) {
		X509_SIG *di = X509_SIG_new();
		X509_ALGOR *alg, *a;
		ASN1_OCTET_STRING *dig;
		unsigned char *der = NULL;
		int len, sig_nid;

		/* DigestInfo ::= SEQUENCE { AlgorithmIdentifier (with NULL), OCTET STRING }. */
		assert_non_null(di);
		X509_SIG_getm(di, &alg, &dig);
		assert_int_equal(X509_ALGOR_set0(alg, OBJ_nid2obj(md->nid), V_ASN1_NULL, NULL), 1);
		assert_int_equal(ASN1_OCTET_STRING_set(dig, zeros, (int)md->len), 1);
		len = i2d_X509_SIG(di, &der);
		assert_int_equal((size_t)len, sizeof(md->digestinfo) + md->len);
		assert_memory_equal(der, md->digestinfo, sizeof(md->digestinfo));
		OPENSSL_free(der);
		X509_SIG_free(di);

		/* ecdsa-with-SHA256/384/512: no parameters (RFC 5758). */
		assert_int_equal(
			OBJ_find_sigid_by_algs(&sig_nid, md->nid, NID_X9_62_id_ecPublicKey), 1);
		der = NULL;
		assert_non_null(a = X509_ALGOR_new());
		assert_int_equal(X509_ALGOR_set0(a, OBJ_nid2obj(sig_nid), V_ASN1_UNDEF, NULL), 1);
		len = i2d_X509_ALGOR(a, &der);
		assert_int_equal((size_t)len, sizeof(md->ecdsa_algid));
		assert_memory_equal(der, md->ecdsa_algid, sizeof(md->ecdsa_algid));
		OPENSSL_free(der);
		X509_ALGOR_free(a);

		/* sha256/384/512WithRSAEncryption: NULL parameters (RFC 8017). */
		assert_int_equal(OBJ_find_sigid_by_algs(&sig_nid, md->nid, NID_rsaEncryption), 1);
		der = NULL;
		assert_non_null(a = X509_ALGOR_new());
		assert_int_equal(X509_ALGOR_set0(a, OBJ_nid2obj(sig_nid), V_ASN1_NULL, NULL), 1);
		len = i2d_X509_ALGOR(a, &der);
		assert_int_equal((size_t)len, sizeof(md->pkcs1_algid));
		assert_memory_equal(der, md->pkcs1_algid, sizeof(md->pkcs1_algid));
		OPENSSL_free(der);
		X509_ALGOR_free(a);
	}
}

static void test_scheme_rows(void **state)
{
	const struct scheme *s, *t;
	size_t i, j;

	(void)state;
	assert_int_equal(n_schemes(), 10);
	for (i = 0; (s = scheme_at(i)) != NULL; i++) {
		/* Codes, names and PKCS#11 message mechanisms are unique. */
		for (j = 0; j < i; j++) {
			t = scheme_at(j);
			assert_int_not_equal(s->code, t->code);
			assert_string_not_equal(s->name, t->name);
			assert_int_not_equal(s->ckm, t->ckm);
		}
		assert_ptr_equal(scheme_by_code(s->code), s);
		assert_ptr_equal(scheme_by_name(s->name), s);
		assert_ptr_equal(scheme_by_ckm(s->ckm), s);
		assert_string_equal(mtls_agent_scheme_name(s->code), s->name);
		assert_int_equal(mtls_agent_scheme_from_name(s->name), s->code);
		/* The mechanism names are the mechanisms. */
		assert_int_equal(s->ckm, ck_value(s->ckm_name));
		assert_int_equal(s->ckm_raw, ck_value(s->ckm_raw_name));
		if (s->key_type == MTLS_AGENT_KEY_ED25519) {
			/* PureEdDSA: no hash, no padding, the message goes to the token. */
			assert_null(s->md);
			assert_int_equal(s->hash_nid, NID_undef);
			assert_int_equal(s->hash_len, 0);
			assert_int_equal(s->pad, SIG_PAD_NONE);
			assert_int_equal(s->ckm, CKM_EDDSA);
			assert_int_equal(s->ckm_raw, CKM_EDDSA);
			continue;
		}
		/* hash_nid/hash_len are the digest row's. */
		assert_non_null(s->md);
		assert_int_equal(s->hash_nid, s->md->nid);
		assert_int_equal(s->hash_len, s->md->len);
		/* The TLS name ends in the hash ("..._sha256"); so does the PKCS#11 name. */
		assert_int_equal(atoi(s->name + strlen(s->name) - 3), (int)(8 * s->md->len));
		assert_non_null(strstr(s->ckm_name, s->md->name));
		switch (s->key_type) {
		case MTLS_AGENT_KEY_EC: {
			EC_GROUP *g = EC_GROUP_new_by_curve_name(s->curve_nid);

			assert_int_equal(s->pad, SIG_PAD_NONE);
			assert_int_equal(s->ckm_raw, CKM_ECDSA);
			assert_non_null(strstr(s->name, "ecdsa_"));
			/* TLS 1.3 binds the curve to a hash at least as long as its order. */
			assert_non_null(g);
			assert_true((size_t)EC_GROUP_get_degree(g) >= 8 * s->md->len);
			EC_GROUP_free(g);
			break;
		}
		case MTLS_AGENT_KEY_RSA:
			assert_int_equal(s->curve_nid, NID_undef);
			if (s->pad == SIG_PAD_PSS) {
				assert_non_null(strstr(s->name, "rsa_pss_rsae_"));
				assert_int_equal(s->ckm_raw, CKM_RSA_PKCS_PSS);
				assert_non_null(strstr(s->ckm_name, "_RSA_PKCS_PSS"));
				/* EMSA-PSS with salt = hash length needs 2*hLen+2 bytes. */
				assert_true(scheme_fits_key(s, MTLS_AGENT_KEY_RSA, 2048));
			} else {
				assert_int_equal(s->pad, SIG_PAD_PKCS1);
				assert_non_null(strstr(s->name, "rsa_pkcs1_"));
				assert_int_equal(s->ckm_raw, CKM_RSA_PKCS);
				assert_null(strstr(s->ckm_name, "_PSS"));
			}
			assert_false(scheme_fits_key(s, MTLS_AGENT_KEY_RSA, 1024));
			assert_false(scheme_fits_key(s, MTLS_AGENT_KEY_EC, 2048));
			break;
		default:
			fail_msg("scheme %s: unknown key type %d", s->name, s->key_type);
		}
		/* The row is what the provider and the engine find for its digest. */
		t = scheme_for_digest(s->key_type, s->pad, s->hash_nid, 0);
		assert_non_null(t);
		assert_int_equal(t->key_type, s->key_type);
		assert_int_equal(t->pad, s->pad);
		assert_ptr_equal(t->md, s->md);
		assert_ptr_equal(scheme_for_digest(s->key_type, s->pad, NID_undef, s->hash_len), t);
		if (s->key_type == MTLS_AGENT_KEY_RSA)
			assert_ptr_equal(t, s);
	}
	assert_null(scheme_by_code(0x0201)); /* rsa_pkcs1_sha1 */
	assert_null(scheme_by_ckm(CKM_RSA_PKCS));
	assert_null(scheme_for_digest(MTLS_AGENT_KEY_RSA, SIG_PAD_PSS, NID_sha224, 0));
	assert_null(scheme_for_digest(MTLS_AGENT_KEY_EC, SIG_PAD_NONE, NID_undef, 20));
	assert_null(scheme_for_digest(MTLS_AGENT_KEY_ED25519, SIG_PAD_NONE, NID_undef, 32));
}

static void test_scheme_hash(void **state)
{
	static const uint8_t msg[] = "the agent hashes CertificateVerify content";
	uint8_t got[EVP_MAX_MD_SIZE], want[EVP_MAX_MD_SIZE];
	const struct scheme *s;
	unsigned int n;
	size_t i;

	(void)state;
	for (i = 0; (s = scheme_at(i)) != NULL; i++) {
		if (s->md == NULL) {
			assert_int_equal(scheme_hash(s, msg, sizeof(msg), got), -1);
			continue;
		}
		assert_int_equal(scheme_hash(s, msg, sizeof(msg), got), 0);
		assert_int_equal(EVP_Digest(msg, sizeof(msg), want, &n,
					    EVP_get_digestbynid(s->hash_nid), NULL),
				 1);
		assert_int_equal(n, s->hash_len);
		assert_memory_equal(got, want, n);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_digest_rows),
		cmocka_unit_test(test_digest_der),
		cmocka_unit_test(test_scheme_rows),
		cmocka_unit_test(test_scheme_hash),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
