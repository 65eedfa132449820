/* Sign-policy checker: positive and negative vectors, truncation and bit flips. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "conf/conf.h"
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

/*
 * Real TLS 1.2 and DTLS 1.2 client transcripts (tests/vectors/tls12/): the
 * handshake messages from ClientHello to ClientKeyExchange that openssl,
 * GnuTLS and Go clients signed (or that openssl clients signed against GnuTLS
 * and Go servers), captured with `-msg` and checked against the client's
 * CertificateVerify signature when they were captured.
 */
static const char *const tls12_vectors[] = {
	"ossl-tls",	   "ossl-rsakx",	 "ossl-dhe",	    "ossl-ocsp",
	"ossl-dtls",	   "ossl-dtls-nocookie", "gnutls-cli-tls",  "gnutls-cli-tls-rsa",
	"gnutls-cli-dtls", "gnutls-cli-ocsp",	 "gnutls-serv-tls", "gnutls-serv-dtls",
	"go-cli-tls",	   "go-cli-tls-rsa",	 "go-serv-tls",	    "go-serv-tls-rsa",
	"ossl-13to12",	   "gnutls-13to12",
};
#define N_VECTORS (sizeof(tls12_vectors) / sizeof(tls12_vectors[0]))

static uint8_t *load_vector(const char *name, size_t *len)
{
	const char *srcdir = getenv("top_srcdir") ? getenv("top_srcdir") : getenv("srcdir");
	char path[4096];
	uint8_t *data;
	FILE *f;
	long n;

	snprintf(path, sizeof(path), "%s/tests/vectors/tls12/%s.bin", srcdir ? srcdir : ".", name);
	f = fopen(path, "rb");
	if (f == NULL)
		fail_msg("cannot open %s", path);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	assert_true(n > 0);
	rewind(f);
	data = malloc((size_t)n + 64);
	assert_non_null(data);
	assert_int_equal(fread(data, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*len = (size_t)n;
	return data;
}

static int is_dtls(const uint8_t *m)
{
	return m[12] == 0xfe && m[13] == 0xfd;
}

/* Offsets of the handshake messages of a valid transcript; returns their count. */
static size_t message_offsets(const uint8_t *m, size_t len, size_t *off, size_t max)
{
	size_t hdr = is_dtls(m) ? 12 : 4, pos = 0, n = 0;

	while (pos < len && n < max) {
		off[n++] = pos;
		pos += hdr + (((size_t)m[pos + 1] << 16) | ((size_t)m[pos + 2] << 8) | m[pos + 3]);
	}
	assert_int_equal(pos, len);
	return n;
}

static int tr_ok(const uint8_t *m, size_t n)
{
	const char *reason = NULL;
	int ok = policy_is_tls12_client_transcript(m, n, &reason);

	assert_non_null(reason);
	return ok;
}

static void test_real_transcripts_accepted(void **state)
{
	size_t i, n;
	uint8_t *m;

	(void)state;
	for (i = 0; i < N_VECTORS; i++) {
		m = load_vector(tls12_vectors[i], &n);
		if (!allowed(POLICY_TLS_CLIENT, m, n, 0))
			fail_msg("%s refused", tls12_vectors[i]);
		assert_false(allowed(POLICY_TLS13_CLIENT, m, n, 0));
		free(m);
	}
}

/* Every proper prefix, and anything appended, is refused. */
static void test_truncated_or_trailing(void **state)
{
	static const uint8_t extra_done[] = {14, 0, 0, 0};
	size_t i, n, cut;
	uint8_t *m;

	(void)state;
	for (i = 0; i < N_VECTORS; i++) {
		m = load_vector(tls12_vectors[i], &n);
		for (cut = 0; cut < n; cut++)
			assert_false(tr_ok(m, cut));
		for (cut = 1; cut <= 64; cut++) {
			m[n + cut - 1] = 0;
			assert_false(tr_ok(m, n + cut));
		}
		memcpy(m + n, extra_done, sizeof(extra_done));
		assert_false(tr_ok(m, n + sizeof(extra_done)));
		free(m);
	}
}

/*
 * Every length field walked: each message's length (and DTLS
 * fragment_length) one up or down, with the total kept, is refused; and
 * bit flips anywhere never make the parser read out of bounds (ASan).
 */
static void test_wrong_lengths(void **state)
{
	size_t i, n, k, nmsg, off[16], pos, bit;
	uint8_t *m;
	int d;

	(void)state;
	for (i = 0; i < N_VECTORS; i++) {
		m = load_vector(tls12_vectors[i], &n);
		nmsg = message_offsets(m, n, off, 16);
		for (k = 0; k < nmsg; k++) {
			for (d = -1; d <= 1; d += 2) {
				m[off[k] + 3] = (uint8_t)(m[off[k] + 3] + d);
				assert_false(tr_ok(m, n));
				m[off[k] + 3] = (uint8_t)(m[off[k] + 3] - d);
				if (is_dtls(m)) {
					m[off[k] + 11] = (uint8_t)(m[off[k] + 11] + d);
					assert_false(tr_ok(m, n));
					m[off[k] + 11] = (uint8_t)(m[off[k] + 11] - d);
				}
			}
			/* The inner length fields: the first bytes of each body. */
			for (pos = off[k] + (is_dtls(m) ? 12 : 4);
			     pos < off[k] + (is_dtls(m) ? 12 : 4) + 8 && pos < n; pos++) {
				for (bit = 0; bit < 8; bit++) {
					m[pos] ^= (uint8_t)(1u << bit);
					(void)tr_ok(m, n);
					m[pos] ^= (uint8_t)(1u << bit);
				}
			}
		}
		assert_true(tr_ok(m, n));
		/* Flip every bit once: never a crash; flips in length bytes refused above. */
		for (pos = 0; pos < n; pos++)
			for (bit = 0; bit < 8; bit++) {
				m[pos] ^= (uint8_t)(1u << bit);
				(void)tr_ok(m, n);
				m[pos] ^= (uint8_t)(1u << bit);
			}
		free(m);
	}
}

/*
 * The forgery the old check accepted: handshake headers tiled in the
 * client-authentication order over bodies that are the caller's bytes.
 */
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

static void test_headers_only_forgery(void **state)
{
	static const uint8_t flights[][9] = {
		{1, 2, 11, 12, 13, 14, 11, 16, 0},
		{1, 2, 11, 13, 14, 11, 16, 0, 0},
		{1, 2, 11, 22, 12, 13, 14, 11, 16},
	};
	uint8_t m[8192];
	size_t f, i, n, body;

	(void)state;
	for (f = 0; f < sizeof(flights) / sizeof(flights[0]); f++) {
		for (body = 0; body < 300; body += 7) {
			n = 0;
			for (i = 0; i < 9 && flights[f][i] != 0; i++)
				n += put_hs(m + n, flights[f][i], (i == 6 || i == 7) ? body : 40);
			assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
		}
	}
}

/*
 * IKEv2 InitiatorSignedOctets (RFC 7296 section 2.15): the IKE_SA_INIT
 * request, the responder's nonce, prf(SK_pi, IDi'). The initiator SPI is the
 * signer's choice; here it is chosen so that the octets begin like a
 * ClientHello header with a TLS version, as a forger would.
 */
static void test_ikev2_octets_refused(void **state)
{
	uint8_t m[1024];
	size_t n = 0, len_at, i;

	(void)state;
	/* IKE header: SPIi (forged prefix), SPIr = 0, next payload SA, version, IKE_SA_INIT */
	static const uint8_t spi_i[8] = {0x01, 0x00, 0x01, 0x20, 0x03, 0x03, 0xaa, 0xbb};
	memcpy(m + n, spi_i, 8);
	n += 8;
	memset(m + n, 0, 8);
	n += 8;
	m[n++] = 33;   /* next payload: SA */
	m[n++] = 0x20; /* version 2.0 */
	m[n++] = 34;   /* IKE_SA_INIT */
	m[n++] = 0x08; /* initiator */
	memset(m + n, 0, 4);
	n += 4;
	len_at = n;
	n += 4;
	/* SA payload with one proposal (ENCR_AES_CBC-256, PRF_HMAC_SHA2_256, INTEG, DH 19). */
	static const uint8_t sa[] = {34, 0, 0, 44, 0,	 0,  0, 40, 1, 1, 0, 4, 3, 0, 0, 12,
				     1,	 0, 0, 12, 0x80, 14, 1, 0,  3, 0, 0, 8, 2, 0, 0, 5,
				     3,	 0, 0, 8,  3,	 0,  0, 12, 0, 0, 0, 8, 4, 0, 0, 19};
	memcpy(m + n, sa, sizeof(sa));
	n += sizeof(sa);
	/* KE payload (DH 19, 64-byte public value), Nonce payload (32 bytes). */
	m[n++] = 40;
	m[n++] = 0;
	m[n++] = 0;
	m[n++] = 72;
	m[n++] = 0;
	m[n++] = 19;
	m[n++] = 0;
	m[n++] = 0;
	for (i = 0; i < 64; i++)
		m[n++] = (uint8_t)(i * 7);
	m[n++] = 0;
	m[n++] = 0;
	m[n++] = 0;
	m[n++] = 36;
	for (i = 0; i < 32; i++)
		m[n++] = (uint8_t)(i * 13);
	m[len_at] = 0;
	m[len_at + 1] = 0;
	m[len_at + 2] = (uint8_t)(n >> 8);
	m[len_at + 3] = (uint8_t)n;
	/* NonceRData, then MACedIDForI (SHA-256 sized). */
	for (i = 0; i < 32 + 32; i++)
		m[n++] = (uint8_t)(i * 31);
	assert_int_equal(m[0], 1);
	assert_false(allowed(POLICY_TLS_CLIENT, m, n, 0));
	assert_true(allowed(POLICY_ANY, m, n, 0));
}

/* What a server signs or hashes is not a client transcript. */
static void test_server_side_refused(void **state)
{
	size_t i, n, nmsg, off[16], hdr, l;
	uint8_t *m, *c;

	(void)state;
	for (i = 0; i < N_VECTORS; i++) {
		m = load_vector(tls12_vectors[i], &n);
		nmsg = message_offsets(m, n, off, 16);
		hdr = is_dtls(m) ? 12 : 4;
		/* Up to ServerHelloDone (no client Certificate, no key exchange). */
		assert_false(tr_ok(m, off[nmsg - 2]));
		/* Without the client's Certificate. */
		c = malloc(n);
		assert_non_null(c);
		memcpy(c, m, off[nmsg - 2]);
		memcpy(c + off[nmsg - 2], m + off[nmsg - 1], n - off[nmsg - 1]);
		assert_false(tr_ok(c, off[nmsg - 2] + n - off[nmsg - 1]));
		/* Continued with a CertificateVerify (what the server hashes for Finished). */
		memcpy(c, m, n);
		c = realloc(c, n + hdr + 8);
		assert_non_null(c);
		memset(c + n, 0, hdr + 8);
		c[n] = 15;
		c[n + 3] = 8;
		if (hdr == 12)
			c[n + 11] = 8;
		assert_false(tr_ok(c, n + hdr + 8));
		/* A ServerKeyExchange's signed params: client_random + server_random + params. */
		if (m[off[3]] == 12) {
			l = (((size_t)m[off[3] + 1] << 16) | ((size_t)m[off[3] + 2] << 8) |
			     m[off[3] + 3]);
			memcpy(c, m + off[0] + hdr + 2, 32);
			memcpy(c + 32, m + off[1] + hdr + 2, 32);
			memcpy(c + 64, m + off[3] + hdr, l);
			assert_false(allowed(POLICY_TLS_CLIENT, c, 64 + l, 0));
		}
		free(c);
		free(m);
	}
}

/* DTLS: the excluded exchange, fragments, sequence numbers, version mixing. */
static void test_dtls_forms_refused(void **state)
{
	size_t n, nmsg, off[16];
	uint8_t *m, *c;

	(void)state;
	m = load_vector("ossl-dtls", &n);
	nmsg = message_offsets(m, n, off, 16);
	assert_int_equal(nmsg, 8);
	c = malloc(n + 64);
	assert_non_null(c);
	/* A HelloVerifyRequest in the transcript. */
	memcpy(c, m, off[1]);
	static const uint8_t hvr[] = {3, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 3, 0xfe, 0xff, 0};
	memcpy(c + off[1], hvr, sizeof(hvr));
	memcpy(c + off[1] + sizeof(hvr), m + off[1], n - off[1]);
	assert_false(tr_ok(c, n + sizeof(hvr)));
	/* A fragment instead of the reassembled message. */
	memcpy(c, m, n);
	c[off[2] + 8] = 1;
	assert_false(tr_ok(c, n));
	/* message_seq skipping one on the server's side and on the client's. */
	memcpy(c, m, n);
	c[off[3] + 5]++;
	assert_false(tr_ok(c, n));
	memcpy(c, m, n);
	c[off[7] + 5]++;
	assert_false(tr_ok(c, n));
	/* A first message_seq far from 0. */
	memcpy(c, m, n);
	c[off[0] + 4] = 1;
	assert_false(tr_ok(c, n));
	/* A ServerHello that selects TLS 1.2 inside a DTLS transcript. */
	memcpy(c, m, n);
	c[off[1] + 12] = 3;
	c[off[1] + 13] = 3;
	assert_false(tr_ok(c, n));
	free(c);
	free(m);
	/* A TLS transcript whose ClientHello claims DTLS 1.2 (the framing decides). */
	m = load_vector("ossl-tls", &n);
	m[4] = 0xfe;
	m[5] = 0xfd;
	assert_false(tr_ok(m, n));
	free(m);
}

/* Hello-level consistency: what the server selects must have been offered. */
static void test_hello_consistency(void **state)
{
	size_t n, nmsg, off[16], sid, p;
	uint8_t *m;

	(void)state;
	m = load_vector("ossl-tls", &n);
	nmsg = message_offsets(m, n, off, 16);
	assert_true(nmsg >= 8);
	/* ServerHello cipher suite: after version, random, session id. */
	sid = m[off[1] + 4 + 34];
	p = off[1] + 4 + 35 + sid;
	m[p] ^= 0x40;
	assert_false(tr_ok(m, n));
	m[p] ^= 0x40;
	/* Compression: deflate (1) selected but only null offered. */
	m[p + 2] = 1;
	assert_false(tr_ok(m, n));
	m[p + 2] = 0;
	assert_true(tr_ok(m, n));
	/* A ClientHello session id of 33 bytes: the length byte says 33. */
	m[off[0] + 4 + 34] = 33;
	assert_false(tr_ok(m, n));
	free(m);
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
		cmocka_unit_test(test_real_transcripts_accepted),
		cmocka_unit_test(test_truncated_or_trailing),
		cmocka_unit_test(test_wrong_lengths),
		cmocka_unit_test(test_headers_only_forgery),
		cmocka_unit_test(test_ikev2_octets_refused),
		cmocka_unit_test(test_server_side_refused),
		cmocka_unit_test(test_dtls_forms_refused),
		cmocka_unit_test(test_hello_consistency),
		cmocka_unit_test(test_other_content_refused),
		cmocka_unit_test(test_bit_flips_never_widen),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
