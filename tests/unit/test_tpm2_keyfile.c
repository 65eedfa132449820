/*
 * TSS2 PRIVATE KEY files (keystore/tpm2-keyfile.c), without a TPM: round
 * trips, every refusal the decoder makes, and truncated or bit-flipped
 * blocks (an error, never a crash or a key that was not in the file).
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "keystore/tpm2-keyfile.h"
#include "mtls-agent/client.h"

/* A plausible ECC P-256 signing key: the decoder checks the encoding, not the TPM's crypto. */
static void make_blob(struct tpm_blob *b, TPM2_HANDLE parent, uint8_t seed)
{
	TPMT_PUBLIC *p = &b->pub.publicArea;
	uint16_t i;

	memset(b, 0, sizeof(*b));
	b->parent = parent;
	p->type = TPM2_ALG_ECC;
	p->nameAlg = TPM2_ALG_SHA256;
	p->objectAttributes = TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_FIXEDTPM |
			      TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
			      TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA;
	p->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
	p->parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
	p->parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
	p->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
	p->unique.ecc.x.size = p->unique.ecc.y.size = 32;
	for (i = 0; i < 32; i++) {
		p->unique.ecc.x.buffer[i] = (uint8_t)(seed + i);
		p->unique.ecc.y.buffer[i] = (uint8_t)(seed ^ i);
	}
	b->priv.size = 126;
	for (i = 0; i < b->priv.size; i++)
		b->priv.buffer[i] = (uint8_t)(seed * 7 + i);
}

/* Same key: the public area (both zero-filled before they were set) and the private part. */
static int blob_eq(const struct tpm_blob *a, const struct tpm_blob *b)
{
	return a->parent == b->parent &&
	       memcmp(&a->pub.publicArea, &b->pub.publicArea, sizeof(a->pub.publicArea)) == 0 &&
	       a->priv.size == b->priv.size &&
	       memcmp(a->priv.buffer, b->priv.buffer, a->priv.size) == 0;
}

static int decode(const char *pem, size_t len, struct tpm_blob **blobs, size_t *n, char *err,
		  size_t errlen)
{
	err[0] = '\0';
	return tpm2_keyfile_decode((const uint8_t *)pem, len, "k.pem", blobs, n, err, errlen);
}

static char *encode(const struct tpm_blob *blobs, size_t n, size_t *len)
{
	char err[256], *pem = NULL;

	assert_int_equal(tpm2_keyfile_encode(blobs, n, "k.pem", &pem, len, err, sizeof(err)), 0);
	assert_non_null(pem);
	assert_int_equal(strlen(pem), *len);
	return pem;
}

static void test_round_trip(void **state)
{
	struct tpm_blob in[3], *out = NULL;
	char err[256], *pem;
	size_t len, n = 99, i;

	(void)state;
	make_blob(&in[0], TPM2_RH_OWNER, 1);
	make_blob(&in[1], 0x81000001, 2);
	make_blob(&in[2], TPM2_RH_OWNER, 3);
	pem = encode(in, 3, &len);
	assert_non_null(strstr(pem, "-----BEGIN TSS2 PRIVATE KEY-----"));
	assert_int_equal(decode(pem, len, &out, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 3);
	for (i = 0; i < 3; i++)
		assert_true(blob_eq(&in[i], &out[i]));
	free(out);
	free(pem);
}

static void test_empty_is_no_keys(void **state)
{
	struct tpm_blob *out = (struct tpm_blob *)1;
	char err[256];
	size_t n = 99;

	(void)state;
	assert_int_equal(decode("", 0, &out, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 0);
	assert_null(out);
}

/* A DER TPMKey built by hand from its parts, as PEM. */
static char *pem_of(const uint8_t *der, size_t len)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data, *out;
	long dlen;

	assert_non_null(bio);
	assert_true(PEM_write_bio(bio, "TSS2 PRIVATE KEY", "", der, (long)len) > 0);
	dlen = BIO_get_mem_data(bio, &data);
	out = calloc(1, (size_t)dlen + 1);
	assert_non_null(out);
	memcpy(out, data, (size_t)dlen);
	BIO_free(bio);
	return out;
}

/* The DER of one valid block, for the tests that alter it. */
static uint8_t *valid_der(size_t *len)
{
	struct tpm_blob b;
	char *pem, *name = NULL, *hdr = NULL;
	unsigned char *der = NULL;
	long dlen = 0;
	size_t plen;
	BIO *bio;

	make_blob(&b, TPM2_RH_OWNER, 9);
	pem = encode(&b, 1, &plen);
	bio = BIO_new_mem_buf(pem, (int)plen);
	assert_int_equal(PEM_read_bio(bio, &name, &hdr, &der, &dlen), 1);
	BIO_free(bio);
	OPENSSL_free(name);
	OPENSSL_free(hdr);
	free(pem);
	*len = (size_t)dlen;
	return der;
}

static void expect_refused(const uint8_t *der, size_t len, const char *why)
{
	struct tpm_blob *out = NULL;
	char err[256], *pem = pem_of(der, len);
	size_t n = 99;

	assert_int_equal(decode(pem, strlen(pem), &out, &n, err, sizeof(err)),
			 MTLS_AGENT_ERR_KEYSTORE);
	assert_null(out);
	assert_int_equal(n, 0);
	if (strstr(err, why) == NULL)
		fail_msg("error '%s' does not say '%s'", err, why);
	free(pem);
}

static void test_refusals(void **state)
{
	uint8_t *der, *m;
	size_t len, i;

	(void)state;
	der = valid_der(&len);
	/* Layout: 30 81 LL, 06 06 <oid>, a0 03 01 01 ff, 02 LL <parent>, 04 .. pub, 04 .. priv. */
	assert_int_equal(der[0], 0x30);
	assert_int_equal(der[3], 0x06);
	m = malloc(len);
	assert_non_null(m);

	/* emptyAuth FALSE: a key with a password. */
	memcpy(m, der, len);
	for (i = 0; i + 5 < len && memcmp(m + i, "\xa0\x03\x01\x01\xff", 5) != 0; i++)
		;
	assert_true(i + 5 < len);
	m[i + 4] = 0x00;
	expect_refused(m, len, "emptyAuth");

	/* Another object type (2.23.133.10.1.4: importable key). */
	memcpy(m, der, len);
	assert_int_equal(m[10], 0x03);
	m[10] = 0x04;
	expect_refused(m, len, "2.23.133.10.1.3");

	/* Trailing bytes inside the block. */
	{
		uint8_t *t = malloc(len + 1);

		assert_non_null(t);
		memcpy(t, der, len);
		t[len] = 0x00;
		expect_refused(t, len + 1, "not a TSS2 loadable key");
		free(t);
	}
	free(m);
	OPENSSL_free(der);
}

static void test_parent_handles(void **state)
{
	struct tpm_blob b, *out = NULL;
	char err[256], *pem;
	size_t len, n = 0;

	(void)state;
	/* An NV index is no parent. */
	make_blob(&b, 0x01000001, 4);
	pem = encode(&b, 1, &len);
	assert_int_equal(decode(pem, len, &out, &n, err, sizeof(err)), MTLS_AGENT_ERR_KEYSTORE);
	assert_non_null(strstr(err, "parent is neither"));
	free(pem);
	/* tpm2-openssl's parent 0 is the owner hierarchy. */
	make_blob(&b, 0, 5);
	pem = encode(&b, 1, &len);
	assert_int_equal(decode(pem, len, &out, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 1);
	assert_int_equal(out[0].parent, TPM2_RH_OWNER);
	free(out);
	free(pem);
}

static void test_pem_framing(void **state)
{
	struct tpm_blob b[TPM2_KEYFILE_MAX_BLOCKS + 1], *out = NULL;
	char err[256], *pem, *two;
	size_t len, n = 0, i;
	static const char other[] =
		"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n";
	static const char text[] = "not a key file\n";

	(void)state;
	/* A block with another label. */
	assert_int_equal(decode(other, strlen(other), &out, &n, err, sizeof(err)),
			 MTLS_AGENT_ERR_KEYSTORE);
	assert_non_null(strstr(err, "where only 'TSS2 PRIVATE KEY' blocks belong"));
	/* No block at all. */
	assert_int_equal(decode(text, strlen(text), &out, &n, err, sizeof(err)),
			 MTLS_AGENT_ERR_KEYSTORE);
	assert_non_null(strstr(err, "holds no"));
	/* Too many blocks. */
	for (i = 0; i <= TPM2_KEYFILE_MAX_BLOCKS; i++)
		make_blob(&b[i], TPM2_RH_OWNER, (uint8_t)i);
	pem = encode(b, TPM2_KEYFILE_MAX_BLOCKS + 1, &len);
	assert_int_equal(decode(pem, len, &out, &n, err, sizeof(err)), MTLS_AGENT_ERR_KEYSTORE);
	assert_non_null(strstr(err, "more than"));
	free(pem);
	/* A good block, then a broken one. */
	pem = encode(b, 1, &len);
	two = calloc(1, 2 * len + 1);
	assert_non_null(two);
	memcpy(two, pem, len);
	memcpy(two + len, pem, len);
	memcpy(strstr(two + len, "\n") + 1, "!!!!", 4);
	assert_int_equal(decode(two, 2 * len, &out, &n, err, sizeof(err)), MTLS_AGENT_ERR_KEYSTORE);
	assert_null(out);
	free(two);
	free(pem);
}

/* Every truncation and every single-bit flip of a valid block: no crash, no wrong key. */
static void test_truncation_and_bitflips(void **state)
{
	struct tpm_blob ref, *out = NULL;
	uint8_t *der, *m;
	char err[256], *pem;
	size_t len, cut, bit, n, ea, accepted = 0;
	int r;

	(void)state;
	der = valid_der(&len);
	make_blob(&ref, TPM2_RH_OWNER, 9);
	/* emptyAuth's value byte: any non-zero value is TRUE, so those flips change nothing. */
	for (ea = 0; ea + 5 < len && memcmp(der + ea, "\xa0\x03\x01\x01\xff", 5) != 0; ea++)
		;
	assert_true(ea + 5 < len);
	ea += 4;
	for (cut = 1; cut < len; cut++) {
		pem = pem_of(der, cut);
		n = 0;
		assert_int_equal(decode(pem, strlen(pem), &out, &n, err, sizeof(err)),
				 MTLS_AGENT_ERR_KEYSTORE);
		assert_null(out);
		free(pem);
	}
	m = malloc(len);
	assert_non_null(m);
	for (bit = 0; bit < 8 * len; bit++) {
		memcpy(m, der, len);
		m[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		pem = pem_of(m, len);
		n = 0;
		r = decode(pem, strlen(pem), &out, &n, err, sizeof(err));
		if (r == 0) {
			/* A flip in the key material itself decodes, to a key that differs. */
			assert_int_equal(n, 1);
			if (blob_eq(&out[0], &ref) && bit / 8 != ea)
				fail_msg("bit %zu flipped: decoded as the original key", bit);
			accepted++;
			free(out);
			out = NULL;
		} else {
			assert_int_equal(r, MTLS_AGENT_ERR_KEYSTORE);
			assert_non_null(strstr(err, "k.pem"));
		}
		free(pem);
	}
	/* The public point and private bytes are most of the block. */
	assert_true(accepted > 0 && accepted < 8 * len);
	free(m);
	OPENSSL_free(der);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),  cmocka_unit_test(test_empty_is_no_keys),
		cmocka_unit_test(test_refusals),    cmocka_unit_test(test_parent_handles),
		cmocka_unit_test(test_pem_framing), cmocka_unit_test(test_truncation_and_bitflips),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
