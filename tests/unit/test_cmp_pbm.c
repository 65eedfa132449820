/*
 * Re-protection of PBM-protected CMP requests (renew/cmp-pbm.c): requests made
 * by OpenSSL's own CMP client go in; what comes out must carry
 * CMP_PBM_ITERATIONS and verify under OpenSSL's own CMP message validation
 * (which recomputes the MAC with OSSL_CRMF_pbm_new) with the secret, and only
 * with it.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/cmp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "renew/cmp-pbm.h"

static const unsigned char SECRET[] = "boot-secret-0123456789abcdef";
#define SECRET_LEN (sizeof(SECRET) - 1)

/* The request OpenSSL's client would have sent. */
static unsigned char *sent;
static int sent_len;

static OSSL_CMP_MSG *capture(OSSL_CMP_CTX *ctx, const OSSL_CMP_MSG *req)
{
	(void)ctx;
	OPENSSL_free(sent);
	sent = NULL;
	sent_len = i2d_OSSL_CMP_MSG(req, &sent);
	return NULL; /* no answer: the transaction ends here */
}

/* An IR from OpenSSL's client; MACed with the secret unless unprotected. */
static void make_ir(int unprotected)
{
	OSSL_CMP_CTX *ctx = OSSL_CMP_CTX_new(NULL, NULL);
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509_NAME *subject = X509_NAME_new();

	assert_non_null(ctx);
	assert_non_null(key);
	assert_non_null(subject);
	assert_true(X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
					       (const unsigned char *)"gw", -1, -1, 0));
	assert_true(OSSL_CMP_CTX_set0_newPkey(ctx, 1, key));
	assert_true(OSSL_CMP_CTX_set1_subjectName(ctx, subject));
	assert_true(OSSL_CMP_CTX_set1_referenceValue(ctx, (const unsigned char *)"boot", 4));
	assert_true(OSSL_CMP_CTX_set1_secretValue(ctx, SECRET, (int)SECRET_LEN));
	assert_true(OSSL_CMP_CTX_set_option(ctx, OSSL_CMP_OPT_MAC_ALGNID, NID_hmacWithSHA256));
	assert_true(OSSL_CMP_CTX_set_option(ctx, OSSL_CMP_OPT_UNPROTECTED_SEND, unprotected));
	assert_true(OSSL_CMP_CTX_set_transfer_cb(ctx, capture));
	OPENSSL_free(sent);
	sent = NULL;
	sent_len = 0;
	assert_null(OSSL_CMP_exec_IR_ses(ctx));
	ERR_clear_error();
	assert_true(sent_len > 0);
	X509_NAME_free(subject);
	OSSL_CMP_CTX_free(ctx);
}

/* 1 if OpenSSL's CMP validation accepts der's protection with the secret given. */
static int openssl_validates(const unsigned char *der, size_t len, const unsigned char *secret,
			     size_t secret_len)
{
	const unsigned char *p = der;
	OSSL_CMP_MSG *msg = d2i_OSSL_CMP_MSG(NULL, &p, (long)len);
	OSSL_CMP_CTX *ctx = OSSL_CMP_CTX_new(NULL, NULL);
	int ok;

	assert_non_null(msg);
	assert_non_null(ctx);
	assert_true(OSSL_CMP_CTX_set1_secretValue(ctx, secret, (int)secret_len));
	ok = OSSL_CMP_validate_msg(ctx, msg);
	ERR_clear_error();
	OSSL_CMP_CTX_free(ctx);
	OSSL_CMP_MSG_free(msg);
	return ok;
}

static int body_type(const unsigned char *der, size_t len)
{
	const unsigned char *p = der;
	OSSL_CMP_MSG *msg = d2i_OSSL_CMP_MSG(NULL, &p, (long)len);
	int t;

	assert_non_null(msg);
	t = OSSL_CMP_MSG_get_bodytype(msg);
	OSSL_CMP_MSG_free(msg);
	return t;
}

static void test_ir_reprotected(void **state)
{
	unsigned char *out = NULL, *out2 = NULL;
	size_t out_len = 0, out2_len = 0;
	char err[128] = "";

	(void)state;
	make_ir(0);
	/* What OpenSSL 3.0 sends on its own, and that it verifies. */
	assert_int_equal(cmp_pbm_iterations(sent, (size_t)sent_len), 500);
	assert_true(openssl_validates(sent, (size_t)sent_len, SECRET, SECRET_LEN));

	assert_int_equal(cmp_pbm_reprotect(NULL, NULL, sent, (size_t)sent_len, SECRET, SECRET_LEN,
					   CMP_PBM_ITERATIONS, &out, &out_len, err, sizeof(err)),
			 1);
	assert_non_null(out);
	assert_int_equal(cmp_pbm_iterations(out, out_len), CMP_PBM_ITERATIONS);
	assert_int_equal(body_type(out, out_len), body_type(sent, (size_t)sent_len));
	/* Salt, count and MAC changed; OpenSSL verifies the new MAC, and only with the secret. */
	assert_true(out_len != (size_t)sent_len || memcmp(out, sent, out_len) != 0);
	assert_true(openssl_validates(out, out_len, SECRET, SECRET_LEN));
	assert_false(openssl_validates(out, out_len, (const unsigned char *)"wrong", 5));

	/* A fresh salt each time. */
	assert_int_equal(cmp_pbm_reprotect(NULL, NULL, sent, (size_t)sent_len, SECRET, SECRET_LEN,
					   CMP_PBM_ITERATIONS, &out2, &out2_len, err, sizeof(err)),
			 1);
	assert_true(out2_len != out_len || memcmp(out, out2, out_len) != 0);
	assert_true(openssl_validates(out2, out2_len, SECRET, SECRET_LEN));

	/* An already re-protected message can be re-protected again. */
	OPENSSL_free(out2);
	out2 = NULL;
	assert_int_equal(cmp_pbm_reprotect(NULL, NULL, out, out_len, SECRET, SECRET_LEN, 1000,
					   &out2, &out2_len, err, sizeof(err)),
			 1);
	assert_int_equal(cmp_pbm_iterations(out2, out2_len), 1000);
	assert_true(openssl_validates(out2, out2_len, SECRET, SECRET_LEN));
	OPENSSL_free(out);
	OPENSSL_free(out2);
}

/* OpenSSL's verifier takes at most 100000 (OSSL_CRMF_PBM_MAX_ITERATION_COUNT): refused above. */
static void test_above_max_refused(void **state)
{
	unsigned char *out = NULL;
	size_t out_len = 0;
	char err[128] = "";

	(void)state;
	make_ir(0);
	assert_int_equal(cmp_pbm_reprotect(NULL, NULL, sent, (size_t)sent_len, SECRET, SECRET_LEN,
					   CMP_PBM_ITERATIONS + 1, &out, &out_len, err,
					   sizeof(err)),
			 -1);
	assert_null(out);
	assert_string_equal(err, "iteration count out of range");
	ERR_clear_error();
}

static void test_unprotected_untouched(void **state)
{
	unsigned char *out = NULL;
	size_t out_len = 0;
	char err[128] = "";

	(void)state;
	make_ir(1);
	assert_int_equal(cmp_pbm_iterations(sent, (size_t)sent_len), -1);
	assert_int_equal(cmp_pbm_reprotect(NULL, NULL, sent, (size_t)sent_len, SECRET, SECRET_LEN,
					   CMP_PBM_ITERATIONS, &out, &out_len, err, sizeof(err)),
			 0);
	assert_null(out);
}

static void test_garbage_refused(void **state)
{
	unsigned char *out = NULL;
	size_t out_len = 0;
	char err[128] = "";

	(void)state;
	make_ir(0);
	/* Truncated, and trailing bytes: not one whole PKIMessage. */
	assert_int_equal(cmp_pbm_reprotect(NULL, NULL, sent, (size_t)sent_len - 1, SECRET,
					   SECRET_LEN, CMP_PBM_ITERATIONS, &out, &out_len, err,
					   sizeof(err)),
			 -1);
	assert_string_equal(err, "the request is not a PKIMessage");
	{
		unsigned char *longer = OPENSSL_malloc((size_t)sent_len + 1);

		assert_non_null(longer);
		memcpy(longer, sent, (size_t)sent_len);
		longer[sent_len] = 0;
		assert_int_equal(cmp_pbm_reprotect(NULL, NULL, longer, (size_t)sent_len + 1, SECRET,
						   SECRET_LEN, CMP_PBM_ITERATIONS, &out, &out_len,
						   err, sizeof(err)),
				 -1);
		OPENSSL_free(longer);
	}
	assert_null(out);
	ERR_clear_error();
}

static int teardown(void **state)
{
	(void)state;
	OPENSSL_free(sent);
	sent = NULL;
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ir_reprotected),
		cmocka_unit_test(test_above_max_refused),
		cmocka_unit_test(test_unprotected_untouched),
		cmocka_unit_test(test_garbage_refused),
	};

	return cmocka_run_group_tests(tests, NULL, teardown);
}
