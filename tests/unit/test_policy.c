/* Sign-policy checker: positive and negative vectors, truncation and bit flips. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "agent/conf.h"
#include "agent/policy.h"
#include "mtls-agent/client.h"

static size_t make_cv(uint8_t *out, const char *context, size_t spaces, int nul, size_t hash_len)
{
	size_t n = 0;

	memset(out, 0x20, spaces);
	n += spaces;
	memcpy(out + n, context, strlen(context));
	n += strlen(context);
	if (nul)
		out[n++] = 0;
	memset(out + n, 0xa5, hash_len);
	return n + hash_len;
}

static int allowed(int policy, const uint8_t *p, size_t n, int digest)
{
	const char *reason;
	int r = policy_check(policy, p, n, digest, &reason);

	if (r != 0)
		assert_non_null(reason);
	return r == 0;
}

static const char client_ctx[] = "TLS 1.3, client CertificateVerify";

static void test_tls13_client_cv(void **state)
{
	uint8_t m[256];
	size_t n, h;

	(void)state;
	for (h = 0; h <= 80; h++) {
		n = make_cv(m, client_ctx, 64, 1, h);
		int ok = h == 32 || h == 48 || h == 64;
		assert_int_equal(allowed(POLICY_TLS_CLIENT, m, n, 0), ok);
		assert_int_equal(allowed(POLICY_TLS13_CLIENT, m, n, 0), ok);
		assert_true(allowed(POLICY_ANY, m, n, 0));
	}
}

static void test_tls13_negatives(void **state)
{
	uint8_t m[256];
	size_t n;

	(void)state;
	n = make_cv(m, "TLS 1.3, server CertificateVerify", 64, 1, 32);
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
	n = make_cv(m, client_ctx, 63, 1, 32);
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
	n = make_cv(m, client_ctx, 65, 1, 32);
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
	n = make_cv(m, client_ctx, 64, 0, 32);
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
	/* 0x00 replaced by another byte, same length. */
	n = make_cv(m, client_ctx, 64, 1, 32);
	m[97] = 0x01;
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
	/* A tab among the spaces. */
	n = make_cv(m, client_ctx, 64, 1, 32);
	m[10] = '\t';
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
	/* Lower-case context. */
	n = make_cv(m, "tls 1.3, client CertificateVerify", 64, 1, 32);
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
}

static void test_digest_only_under_any(void **state)
{
	uint8_t d[32];

	(void)state;
	memset(d, 7, sizeof(d));
	assert_false(allowed(POLICY_TLS_CLIENT, d, sizeof(d), 1));
	assert_false(allowed(POLICY_TLS13_CLIENT, d, sizeof(d), 1));
	assert_true(allowed(POLICY_ANY, d, sizeof(d), 1));
	assert_true(allowed(POLICY_DIGEST, d, sizeof(d), 1));
	/* Even a valid CV content is refused when flagged as a digest. */
	{
		uint8_t m[256];
		size_t n = make_cv(m, client_ctx, 64, 1, 32);
		assert_false(allowed(POLICY_TLS_CLIENT, m, n, 1));
	}
}

/* `digest`: tls-client for messages, plus digests; never an arbitrary message. */
static void test_digest_level(void **state)
{
	uint8_t m[256], junk[130];
	size_t n = make_cv(m, client_ctx, 64, 1, 48);

	(void)state;
	assert_true(allowed(POLICY_DIGEST, m, n, 0));
	memset(junk, 0x30, sizeof(junk));
	assert_false(allowed(POLICY_DIGEST, junk, sizeof(junk), 0));
	n = make_cv(m, "TLS 1.3, server CertificateVerify", 64, 1, 32);
	assert_false(allowed(POLICY_DIGEST, m, n, 0));
}

static size_t put_hs(uint8_t *out, uint8_t type, size_t body_len)
{
	out[0] = type;
	out[1] = (uint8_t)(body_len >> 16);
	out[2] = (uint8_t)(body_len >> 8);
	out[3] = (uint8_t)body_len;
	memset(out + 4, 0x42, body_len);
	if (type == 1 || type == 2) {
		out[4] = 3;
		out[5] = 3;
	}
	return 4 + body_len;
}

static size_t make_transcript(uint8_t *out, const uint8_t *types, size_t n)
{
	size_t i, len = 0;

	for (i = 0; i < n; i++)
		len += put_hs(out + len, types[i], 20 + i);
	return len;
}

static void test_tls12_transcripts(void **state)
{
	static const uint8_t full[] = {1, 2, 11, 12, 13, 14, 11, 16};
	static const uint8_t rsa_kx[] = {1, 2, 11, 13, 14, 11, 16};
	static const uint8_t stapled[] = {1, 2, 11, 22, 12, 13, 14, 11, 16};
	static const uint8_t no_cr[] = {1, 2, 11, 12, 14, 11, 16};
	static const uint8_t no_cke[] = {1, 2, 11, 12, 13, 14, 11};
	static const uint8_t extra[] = {1, 2, 11, 12, 13, 14, 11, 16, 15};
	static const uint8_t server_first[] = {2, 11, 12, 13, 14, 11, 16};
	static const uint8_t twice[] = {1, 2, 11, 12, 13, 14, 11, 16, 1};
	uint8_t m[1024];
	size_t n, cut;
	const char *reason;

	(void)state;
	n = make_transcript(m, full, sizeof(full));
	assert_true(allowed(POLICY_TLS_CLIENT, m, n, 0));
	assert_false(allowed(POLICY_TLS13_CLIENT, m, n, 0));
	/* Every truncation of a valid transcript is refused. */
	for (cut = 0; cut < n; cut++)
		assert_false(policy_is_tls12_client_transcript(m, cut, &reason));
	/* A length byte off by one either way is refused. */
	m[3]++;
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
	m[3] -= 2;
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));

	n = make_transcript(m, rsa_kx, sizeof(rsa_kx));
	assert_true(allowed(POLICY_TLS_CLIENT, m, n, 0));
	n = make_transcript(m, stapled, sizeof(stapled));
	assert_true(allowed(POLICY_TLS_CLIENT, m, n, 0));
	n = make_transcript(m, no_cr, sizeof(no_cr));
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
	n = make_transcript(m, no_cke, sizeof(no_cke));
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
	n = make_transcript(m, extra, sizeof(extra));
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
	n = make_transcript(m, server_first, sizeof(server_first));
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
	n = make_transcript(m, twice, sizeof(twice));
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
	/* A ClientHello whose version is not TLS. */
	n = make_transcript(m, full, sizeof(full));
	m[4] = 0x30;
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
}

static void test_other_content_refused(void **state)
{
	/* A DER SEQUENCE (CSR / X.509 TBS shape), a JWS header, empty input. */
	static const uint8_t der[] = {0x30, 0x82, 0x01, 0x0a, 0x02, 0x01, 0x00, 0x30, 0x00};
	static const char jws[] = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0";

	(void)state;
	assert_false(allowed(POLICY_TLS_CLIENT, der, sizeof(der), 0));
	assert_false(allowed(POLICY_TLS_CLIENT, (const uint8_t *)jws, strlen(jws), 0));
	assert_false(allowed(POLICY_TLS_CLIENT, (const uint8_t *)"", 0, 0));
	assert_true(allowed(POLICY_ANY, der, sizeof(der), 0));
}

static void test_bit_flips_never_widen(void **state)
{
	uint8_t m[256], c[256];
	size_t n, i, bit, accepted = 0;

	(void)state;
	n = make_cv(m, client_ctx, 64, 1, 32);
	/* Flips in the fixed prefix must all be refused; flips in the hash are fine. */
	for (i = 0; i < n; i++) {
		for (bit = 0; bit < 8; bit++) {
			memcpy(c, m, n);
			c[i] ^= (uint8_t)(1u << bit);
			if (allowed(POLICY_TLS13_CLIENT, c, n, 0)) {
				assert_true(i >= TLS13_CV_PREFIX_LEN);
				accepted++;
			}
		}
	}
	assert_int_equal(accepted, 32 * 8);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tls13_client_cv),
		cmocka_unit_test(test_tls13_negatives),
		cmocka_unit_test(test_digest_only_under_any),
		cmocka_unit_test(test_digest_level),
		cmocka_unit_test(test_tls12_transcripts),
		cmocka_unit_test(test_other_content_refused),
		cmocka_unit_test(test_bit_flips_never_widen),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
