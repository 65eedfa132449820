/*
 * Fuzz target: what the EST client does with a CA's answers (renew/enroll-est.c
 * and renew/cacerts.c), without the transfer.
 *
 * The input is an HTTP response as libcurl hands it over: header lines up to
 * the first empty line, then the body; input without an empty line is all
 * body (a raw /simpleenroll, /simplereenroll or /cacerts answer). Headers go
 * through the Retry-After handling; the body through the refusal message's
 * first line and the certs-only PKCS#7 parser; the certificates through what
 * enroll_est() (leaf first, descriptions) and cacerts_refresh() (new roots
 * and their link certificates, intermediates) do with them. The first
 * certificate of the answer stands for the anchor in force, so that an answer
 * [old root, new root, link] reaches the acceptance of a new root.
 *
 * Checks: escaped text is printable ASCII and NUL-terminated; Retry-After is
 * -1 or within 30 days; the certificates survive a round trip (re-encoded as
 * base64 certs-only PKCS#7 and parsed again: the same certificates in the
 * same order); the leaf moved first is the one asked for and nothing is lost;
 * a link accepted for a root has the root's subject and key and is not
 * self-signed; an intermediate is a CA certificate and not self-signed.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "renew/cacerts.h"
#include "renew/enroll-est.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define RETRY_AFTER_MAX_S (30L * 24 * 3600)

static EVP_PKEY *stranger; /* a key no certificate of the input can hold */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	if ((stranger = EVP_EC_gen("P-256")) == NULL)
		abort();
	return 0;
}

static void check_text(const char *s, size_t cap)
{
	size_t i, n = strnlen(s, cap);

	if (n == cap)
		abort();
	for (i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			abort();
}

/* Headers: each line (with its line end) as libcurl's header callback gets it. */
static size_t feed_headers(const char *in, size_t size)
{
	size_t pos = 0, end, body;
	long retry_after = -1;

	/* Where the body starts: after the first empty line, if any. */
	for (body = 0; body < size; body++) {
		if (body + 1 < size && in[body] == '\n' && in[body + 1] == '\n')
			break;
		if (body + 3 < size && memcmp(in + body, "\r\n\r\n", 4) == 0)
			break;
	}
	if (body >= size)
		return 0;
	body += in[body] == '\n' ? 2 : 4;
	while (pos < body) {
		for (end = pos; end < body && in[end] != '\n'; end++)
			;
		if (end < body)
			end++;
		est_header_line(in + pos, end - pos, &retry_after);
		if (retry_after < -1 || retry_after > RETRY_AFTER_MAX_S)
			abort();
		pos = end;
	}
	return body;
}

/* The certificates, base64 certs-only PKCS#7 as an EST server sends them, parsed again. */
static void round_trip(STACK_OF(X509) * certs)
{
	PKCS7 *p7 = PKCS7_new();
	unsigned char *der = NULL;
	STACK_OF(X509) * again;
	char *b64;
	int len, i;

	if (p7 == NULL || !PKCS7_set_type(p7, NID_pkcs7_signed) ||
	    !ASN1_INTEGER_set(p7->d.sign->version, 1) || !PKCS7_content_new(p7, NID_pkcs7_data))
		goto out;
	for (i = 0; i < sk_X509_num(certs); i++)
		if (!PKCS7_add_certificate(p7, sk_X509_value(certs, i)))
			goto out;
	if ((len = i2d_PKCS7(p7, &der)) <= 0)
		goto out; /* a certificate OpenSSL reads but cannot write: not ours to judge */
	if ((b64 = malloc((size_t)len / 3 * 4 + 8)) == NULL)
		goto out;
	len = EVP_EncodeBlock((unsigned char *)b64, der, len);
	again = est_parse_certs_only(b64, (size_t)len);
	if (again == NULL || sk_X509_num(again) != sk_X509_num(certs))
		abort();
	for (i = 0; i < sk_X509_num(certs); i++)
		if (X509_cmp(sk_X509_value(again, i), sk_X509_value(certs, i)) != 0)
			abort();
	sk_X509_pop_free(again, X509_free);
	free(b64);
out:
	OPENSSL_free(der);
	PKCS7_free(p7);
	ERR_clear_error();
}

static void enrollment(STACK_OF(X509) * certs)
{
	char described[256];
	EVP_PKEY *want;
	X509 *last;
	int i, n = sk_X509_num(certs);

	for (i = 0; i < n; i++) {
		est_describe_cert(sk_X509_value(certs, i), described, sizeof(described));
		if (strnlen(described, sizeof(described)) == sizeof(described))
			abort();
	}
	if (est_put_leaf_first(certs, stranger) != 0 || sk_X509_num(certs) != n)
		abort();
	/* The CSR's key is the last certificate's: it must come first, nothing lost. */
	last = sk_X509_value(certs, n - 1);
	if ((want = X509_get0_pubkey(last)) == NULL) {
		ERR_clear_error();
		return;
	}
	if (est_put_leaf_first(certs, want) != 1 || sk_X509_num(certs) != n ||
	    EVP_PKEY_eq(X509_get0_pubkey(sk_X509_value(certs, 0)), want) != 1)
		abort();
	ERR_clear_error();
}

static void cacerts(STACK_OF(X509) * certs)
{
	STACK_OF(X509) *anchors = sk_X509_new_null(), *inter = sk_X509_new_null();
	X509 *root, *link;
	int i;

	if (anchors == NULL || inter == NULL || !sk_X509_push(anchors, sk_X509_value(certs, 0)))
		goto out;
	for (i = 0; i < sk_X509_num(certs); i++) {
		root = sk_X509_value(certs, i);
		if (!cacerts_is_new_root(root, anchors))
			continue;
		if ((link = cacerts_find_link(certs, anchors, root, 0)) == NULL)
			continue;
		if (X509_self_signed(link, 0) == 1 ||
		    X509_NAME_cmp(X509_get_subject_name(link), X509_get_subject_name(root)) != 0 ||
		    EVP_PKEY_eq(X509_get0_pubkey(link), X509_get0_pubkey(root)) != 1)
			abort();
	}
	cacerts_add_intermediates(certs, inter);
	for (i = 0; i < sk_X509_num(inter); i++)
		if (X509_self_signed(sk_X509_value(inter, i), 0) == 1 ||
		    X509_check_ca(sk_X509_value(inter, i)) == 0)
			abort();
out:
	sk_X509_free(anchors);
	sk_X509_pop_free(inter, X509_free);
	ERR_clear_error();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char line[256], *in;
	STACK_OF(X509) * certs;
	size_t body;

	/* A copy of exactly size bytes, so ASan sees any read past the end. */
	if ((in = malloc(size > 0 ? size : 1)) == NULL)
		return 0;
	memcpy(in, data, size);
	body = feed_headers(in, size);
	est_body_first_line(in + body, size - body, line, sizeof(line));
	check_text(line, sizeof(line));
	if ((certs = est_parse_certs_only(in + body, size - body)) != NULL) {
		if (sk_X509_num(certs) <= 0)
			abort();
		round_trip(certs);
		cacerts(certs);
		enrollment(certs);
	}
	sk_X509_pop_free(certs, X509_free);
	free(in);
	return 0;
}
