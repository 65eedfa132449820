/*
 * EST enrollment (RFC 7030 simpleenroll / simplereenroll) with libcurl.
 *
 * One CURL easy handle per call. The TLS client credential (the key being renewed, or a
 * manufacturer identity at bootstrap) is put into libcurl's SSL_CTX from the
 * CURLOPT_SSL_CTX_FUNCTION callback, so a keystore EVP_PKEY whose private half never
 * leaves its provider signs the handshake. The response's certificates are handed to the
 * request's commit() with the certificate for the CSR's key first; a response without such
 * a certificate is refused here (ENROLL_BAD_CERT) and never reaches commit().
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pkcs7.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "renew/enroll-est.h"
#include "renew/enroll.h"
#include "common/log.h"

#define EST_BODY_MAX (1024 * 1024)
#define EST_DEFAULT_TIMEOUT_S 60
#define EST_DEFAULT_RETRY_AFTER_S 60
#define EST_RETRY_AFTER_MAX_S (30L * 24 * 3600) /* a longer hint is taken as this */
#define BODY_LINE_MAX 160

/* What the SSL_CTX callback needs, and what it and the TLS message callback report. */
struct tls_setup {
	EVP_PKEY *key; /* NULL: no client certificate */
	STACK_OF(X509) * chain;
	int failed;
	char err[256];
	int fatal_alert; /* the last fatal alert the server sent, or -1 */
};

struct transfer {
	/* in */
	const char *url;
	const char *trust_file;
	unsigned timeout_s;
	const char *body; /* NULL: GET */
	size_t body_len;
	const char *user, *password;
	struct tls_setup tls;
	/* out */
	CURLcode rc;
	int setup_failed; /* rc is a local problem (option, memory), not the exchange */
	long status;
	char *resp;
	size_t resp_len;
	int resp_too_big;
	long retry_after; /* -1: no usable Retry-After */
	char curl_err[CURL_ERROR_SIZE];
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void init_curl(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* --- libcurl callbacks -------------------------------------------------------------------- */

static size_t collect_body(char *data, size_t size, size_t count, void *arg)
{
	struct transfer *t = arg;
	size_t len = size * count; /* size is always 1 */
	char *grown;

	if (len > EST_BODY_MAX - t->resp_len) {
		t->resp_too_big = 1;
		return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
	}
	grown = realloc(t->resp, t->resp_len + len + 1);
	if (grown == NULL)
		return 0;
	memcpy(grown + t->resp_len, data, len);
	t->resp = grown;
	t->resp_len += len;
	t->resp[t->resp_len] = '\0';
	return len;
}

/* Retry-After: delay-seconds or an HTTP-date (RFC 9110 10.2.3); -1 when neither. */
long est_parse_retry_after(const char *value, size_t len)
{
	char text[64], *end;
	time_t when, now;
	long seconds;

	while (len > 0 && (*value == ' ' || *value == '\t')) {
		value++;
		len--;
	}
	while (len > 0 && (value[len - 1] == '\r' || value[len - 1] == '\n' ||
			   value[len - 1] == ' ' || value[len - 1] == '\t'))
		len--;
	if (len == 0 || len >= sizeof(text))
		return -1;
	memcpy(text, value, len);
	text[len] = '\0';
	if (text[0] >= '0' && text[0] <= '9') {
		seconds = strtol(text, &end, 10);
		if (*end != '\0')
			return -1;
		return seconds > EST_RETRY_AFTER_MAX_S ? EST_RETRY_AFTER_MAX_S : seconds;
	}
	when = curl_getdate(text, NULL);
	if (when == (time_t)-1)
		return -1;
	now = time(NULL);
	if (when <= now)
		return 0;
	return when - now > EST_RETRY_AFTER_MAX_S ? EST_RETRY_AFTER_MAX_S : (long)(when - now);
}

void est_header_line(const char *data, size_t len, long *retry_after_s)
{
	static const char retry_after[] = "Retry-After:";

	/* A status line starts a new response (after a 100 Continue or a proxy's CONNECT). */
	if (len >= 5 && strncmp(data, "HTTP/", 5) == 0)
		*retry_after_s = -1;
	else if (len > sizeof(retry_after) - 1 &&
		 strncasecmp(data, retry_after, sizeof(retry_after) - 1) == 0)
		*retry_after_s = est_parse_retry_after(data + sizeof(retry_after) - 1,
						       len - (sizeof(retry_after) - 1));
}

static size_t collect_header(char *data, size_t size, size_t count, void *arg)
{
	struct transfer *t = arg;
	size_t len = size * count;

	est_header_line(data, len, &t->retry_after);
	return len;
}

/* Remembers the server's fatal alert: it tells a refused client certificate from a bad link. */
static void note_alert(int write_p, int version, int content_type, const void *buf, size_t len,
		       SSL *ssl, void *arg)
{
	const unsigned char *alert = buf;
	struct tls_setup *tls = arg;

	(void)version;
	(void)ssl;
	if (!write_p && content_type == SSL3_RT_ALERT && len >= 2 && alert[0] == SSL3_AL_FATAL)
		tls->fatal_alert = alert[1];
}

static void tls_fail(struct tls_setup *tls, const char *what)
{
	char detail[160];
	unsigned long e = ERR_peek_last_error();

	ERR_error_string_n(e, detail, sizeof(detail));
	snprintf(tls->err, sizeof(tls->err), "%s: %s", what,
		 e != 0 ? detail : "no OpenSSL error recorded");
	tls->failed = 1;
}

/*
 * Runs once per connection, after libcurl configured the SSL_CTX. SSL_CTX_use_PrivateKey
 * checks the key against the certificate set just before it (X509_check_private_key): a
 * keystore key passes as long as its provider exports the public half and the domain
 * parameters (selection 0x6) while refusing the private half.
 */
static CURLcode configure_ssl_ctx(CURL *curl, void *ssl_ctx, void *arg)
{
	struct tls_setup *tls = arg;
	SSL_CTX *ctx = ssl_ctx;
	int i;

	(void)curl;
	SSL_CTX_set_msg_callback(ctx, note_alert);
	SSL_CTX_set_msg_callback_arg(ctx, tls);
	if (tls->key == NULL)
		return CURLE_OK;
	ERR_clear_error();
	if (SSL_CTX_use_certificate(ctx, sk_X509_value(tls->chain, 0)) != 1) {
		tls_fail(tls, "client certificate not usable");
		return CURLE_SSL_CERTPROBLEM;
	}
	for (i = 1; i < sk_X509_num(tls->chain); i++) {
		if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(tls->chain, i)) != 1) {
			tls_fail(tls, "client certificate chain not usable");
			return CURLE_SSL_CERTPROBLEM;
		}
	}
	if (SSL_CTX_use_PrivateKey(ctx, tls->key) != 1) {
		tls_fail(tls, "client key does not match its certificate or cannot be compared");
		return CURLE_SSL_CERTPROBLEM;
	}
	return CURLE_OK;
}

/* --- one HTTPS exchange --------------------------------------------------------------------- */

static void run_transfer(struct transfer *t)
{
	struct curl_slist *headers = NULL, *more;
	CURLcode rc = CURLE_OK;
	CURL *curl = NULL;

	t->status = 0;
	t->retry_after = -1;
	t->tls.fatal_alert = -1;
	t->curl_err[0] = '\0';
	pthread_once(&curl_once, init_curl);
	if (curl_init_rc != CURLE_OK || (curl = curl_easy_init()) == NULL) {
		t->rc = curl_init_rc != CURLE_OK ? curl_init_rc : CURLE_FAILED_INIT;
		t->setup_failed = 1;
		return;
	}
	/* Request headers: RFC 7030 4.2.1 (Content-Transfer-Encoding for servers before
	 * RFC 8951); an empty Expect skips curl's one-second 100-continue wait. */
	if (t->body != NULL) {
		static const char *const lines[] = {
			"Content-Type: application/pkcs10",
			"Content-Transfer-Encoding: base64",
			"Accept: application/pkcs7-mime",
			"Expect:",
		};
		size_t i;

		for (i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
			more = curl_slist_append(headers, lines[i]);
			if (more == NULL) {
				rc = CURLE_OUT_OF_MEMORY;
				break;
			}
			headers = more;
		}
	}

	/* These two fail when libcurl lacks HTTPS or is not built on OpenSSL. */
	if (rc == CURLE_OK)
		rc = curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "https");
	if (rc == CURLE_OK)
		rc = curl_easy_setopt(curl, CURLOPT_SSL_CTX_FUNCTION, configure_ssl_ctx);
	if (rc == CURLE_OK) {
		/* The rest only fail on a lack of memory; any failure is reported alike. */
		rc |= curl_easy_setopt(curl, CURLOPT_URL, t->url);
		rc |= curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, t->curl_err);
		rc |= curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
		rc |= curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
		rc |= curl_easy_setopt(curl, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
		rc |= curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
		rc |= curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
		if (t->trust_file != NULL) {
			rc |= curl_easy_setopt(curl, CURLOPT_CAINFO, t->trust_file);
			rc |= curl_easy_setopt(curl, CURLOPT_CAPATH, NULL);
		}
		rc |= curl_easy_setopt(curl, CURLOPT_SSL_CTX_DATA, &t->tls);
		rc |= curl_easy_setopt(curl, CURLOPT_TIMEOUT, (long)t->timeout_s);
		rc |= curl_easy_setopt(curl, CURLOPT_USERAGENT, "mtls-agent/" PACKAGE_VERSION);
		/* A stopping agent does not wait for a slow CA. */
		rc |= curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, enroll_curl_progress);
		rc |= curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
		rc |= curl_easy_setopt(curl, CURLOPT_MAXFILESIZE, (long)EST_BODY_MAX);
		rc |= curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect_body);
		rc |= curl_easy_setopt(curl, CURLOPT_WRITEDATA, t);
		rc |= curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, collect_header);
		rc |= curl_easy_setopt(curl, CURLOPT_HEADERDATA, t);
		if (t->body != NULL) {
			rc |= curl_easy_setopt(curl, CURLOPT_POSTFIELDS, t->body);
			rc |= curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
					       (curl_off_t)t->body_len);
			rc |= curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
		}
		if (t->user != NULL) {
			rc |= curl_easy_setopt(curl, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
			rc |= curl_easy_setopt(curl, CURLOPT_USERNAME, t->user);
			rc |= curl_easy_setopt(curl, CURLOPT_PASSWORD, t->password);
		}
		if (rc != CURLE_OK)
			rc = CURLE_OUT_OF_MEMORY;
	}
	if (rc != CURLE_OK) {
		t->setup_failed = 1;
	} else {
		rc = curl_easy_perform(curl);
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &t->status);
	}
	t->rc = rc;
	/* libcurl frees its copies of the credentials without wiping them; nothing to do here. */
	curl_easy_cleanup(curl);
	curl_slist_free_all(headers);
}

/* --- responses -------------------------------------------------------------------------------- */

/* The first line of a response body, capped, escaped: the CA's text is data (log_escape). */
void est_body_first_line(const char *resp, size_t resp_len, char *out, size_t outlen)
{
	size_t start = 0, end;

	while (start < resp_len && (resp[start] == ' ' || resp[start] == '\t' ||
				    resp[start] == '\r' || resp[start] == '\n'))
		start++;
	for (end = start; end < resp_len && resp[end] != '\r' && resp[end] != '\n';)
		end++;
	while (end > start && resp[end - 1] == ' ')
		end--;
	/* Capped at BODY_LINE_MAX characters as printed; log_escape marks a cut with "...". */
	log_escape(resp + start, end - start, out,
		   outlen < BODY_LINE_MAX + 4 ? outlen : BODY_LINE_MAX + 4);
}

/* Certificates of a certs-only PKCS#7, base64 (whitespace tolerated) or, leniently, DER. */
STACK_OF(X509) * est_parse_certs_only(const char *body, size_t len)
{
	EVP_ENCODE_CTX *dctx = NULL;
	unsigned char *der = NULL;
	const unsigned char *p;
	STACK_OF(X509) *certs = NULL, *found;
	PKCS7 *p7 = NULL;
	int n1 = 0, n2 = 0, i;
	long der_len = -1;

	if (len == 0 || len > EST_BODY_MAX)
		return NULL;
	der = malloc(len / 4 * 3 + 4);
	dctx = EVP_ENCODE_CTX_new();
	if (der == NULL || dctx == NULL)
		goto out;
	EVP_DecodeInit(dctx);
	if (EVP_DecodeUpdate(dctx, der, &n1, (const unsigned char *)body, (int)len) >= 0 &&
	    EVP_DecodeFinal(dctx, der + n1, &n2) >= 0)
		der_len = n1 + n2;
	if (der_len > 0) {
		p = der;
		p7 = d2i_PKCS7(NULL, &p, der_len);
	} else if ((unsigned char)body[0] == 0x30) { /* a server that sends binary DER */
		p = (const unsigned char *)body;
		p7 = d2i_PKCS7(NULL, &p, (long)len);
	}
	if (p7 == NULL || !PKCS7_type_is_signed(p7) || p7->d.sign == NULL)
		goto out;
	found = p7->d.sign->cert;
	if (sk_X509_num(found) <= 0 || (certs = sk_X509_new_null()) == NULL)
		goto out;
	for (i = 0; i < sk_X509_num(found); i++) {
		if (!sk_X509_push(certs, sk_X509_value(found, i))) {
			sk_X509_free(certs);
			certs = NULL;
			goto out;
		}
		X509_up_ref(sk_X509_value(found, i));
	}
out:
	ERR_clear_error();
	PKCS7_free(p7);
	EVP_ENCODE_CTX_free(dctx);
	free(der);
	return certs;
}

/* Moves the certificate for pub to the front; 0 when there is none. */
int est_put_leaf_first(STACK_OF(X509) * certs, EVP_PKEY *pub)
{
	int i;
	X509 *leaf;

	for (i = 0; i < sk_X509_num(certs); i++) {
		if (EVP_PKEY_eq(X509_get0_pubkey(sk_X509_value(certs, i)), pub) == 1) {
			leaf = sk_X509_delete(certs, i);
			return sk_X509_unshift(certs, leaf) > 0;
		}
	}
	ERR_clear_error();
	return 0;
}

static int is_certificate_alert(int alert)
{
	switch (alert) {
	case SSL_AD_BAD_CERTIFICATE:
	case SSL_AD_UNSUPPORTED_CERTIFICATE:
	case SSL_AD_CERTIFICATE_REVOKED:
	case SSL_AD_CERTIFICATE_EXPIRED:
	case SSL_AD_CERTIFICATE_UNKNOWN:
	case SSL_AD_UNKNOWN_CA:
	case SSL_AD_ACCESS_DENIED:
	case SSL_AD_CERTIFICATE_REQUIRED:
		return 1;
	default:
		return 0;
	}
}

/*
 * Turns a finished exchange into an outcome and a message, for everything but a 200 with a
 * body; returns ENROLL_OK for those. what: the EST operation; base: the URL to name.
 */
static int classify(const struct transfer *t, const char *what, const char *base,
		    struct enroll_result *res)
{
	char line[BODY_LINE_MAX + 8];
	int outcome;

	res->retry_after = -1;
	if (t->setup_failed) {
		snprintf(res->msg, sizeof(res->msg), "EST %s: cannot set up libcurl: %s", what,
			 curl_easy_strerror(t->rc));
		return ENROLL_LOCAL;
	}
	if (t->tls.failed) {
		snprintf(res->msg, sizeof(res->msg), "EST %s: %s", what, t->tls.err);
		return ENROLL_LOCAL;
	}
	if (t->rc != CURLE_OK && t->tls.fatal_alert >= 0 &&
	    is_certificate_alert(t->tls.fatal_alert)) {
		snprintf(res->msg, sizeof(res->msg),
			 "EST %s: %s refused the TLS client credential (alert %s)", what, base,
			 t->tls.fatal_alert == SSL_AD_CERTIFICATE_REQUIRED /* unnamed in 3.0 */
				 ? "certificate required"
				 : SSL_alert_desc_string_long(t->tls.fatal_alert));
		return ENROLL_NOT_AUTHORIZED;
	}
	if (t->rc != CURLE_OK) {
		if (t->resp_too_big || t->rc == CURLE_FILESIZE_EXCEEDED)
			snprintf(res->msg, sizeof(res->msg),
				 "EST %s: response from %s larger than %d bytes", what, base,
				 EST_BODY_MAX);
		else
			snprintf(res->msg, sizeof(res->msg), "EST %s: %s: %s", what, base,
				 t->curl_err[0] ? t->curl_err : curl_easy_strerror(t->rc));
		switch (t->rc) {
		case CURLE_OUT_OF_MEMORY:
		case CURLE_SSL_CACERT_BADFILE:
		case CURLE_SSL_CERTPROBLEM:
		case CURLE_URL_MALFORMAT:
		case CURLE_UNSUPPORTED_PROTOCOL:
			return ENROLL_LOCAL;
		default:
			return ENROLL_TRANSIENT;
		}
	}
	if (t->status == 200)
		return ENROLL_OK;

	est_body_first_line(t->resp, t->resp_len, line, sizeof(line));
	if (t->status == 202) {
		res->retry_after = t->retry_after >= 0 ? t->retry_after : EST_DEFAULT_RETRY_AFTER_S;
		snprintf(res->msg, sizeof(res->msg), "EST %s: HTTP 202 from %s, retry after %ld s",
			 what, base, res->retry_after);
		return ENROLL_WAIT;
	}
	if (t->status == 401 || t->status == 403)
		outcome = ENROLL_NOT_AUTHORIZED;
	else if (t->status == 408 || t->status == 429 || t->status >= 500 || t->status < 300)
		outcome = ENROLL_TRANSIENT; /* and the odd 1xx/2xx: a broken exchange */
	else
		outcome = ENROLL_REJECTED; /* other 4xx, and 3xx: redirects are not followed */
	if (outcome == ENROLL_TRANSIENT)
		res->retry_after = t->retry_after; /* 503 and 429 may carry a hint */
	if (t->status >= 300 && t->status < 400)
		snprintf(line, sizeof(line), "redirects are not followed");
	snprintf(res->msg, sizeof(res->msg), "EST %s: HTTP %ld from %s%s%s", what, t->status, base,
		 line[0] ? ": " : "", line);
	return outcome;
}

/*
 * The URL for an operation: base without trailing slashes, then /op. Only https, no
 * credentials in the URL (they would end up in messages), no query or fragment.
 */
static char *operation_url(const char *base, const char *op, char *err, size_t errlen)
{
	const char *authority, *slash;
	size_t len, size;
	char *url;

	if (base == NULL || strncasecmp(base, "https://", 8) != 0) {
		snprintf(err, errlen, "EST %s: the CA URL must start with https://", op);
		return NULL;
	}
	authority = base + 8;
	slash = strchr(authority, '/');
	if (memchr(authority, '@', slash ? (size_t)(slash - authority) : strlen(authority)) ||
	    strpbrk(base, "?# \t\r\n") != NULL) {
		snprintf(err, errlen,
			 "EST %s: the CA URL must not hold credentials, a query or spaces", op);
		return NULL;
	}
	len = strlen(base);
	while (len > 8 && base[len - 1] == '/')
		len--;
	size = len + strlen(op) + 2;
	url = malloc(size);
	if (url == NULL) {
		snprintf(err, errlen, "EST %s: out of memory", op);
		return NULL;
	}
	snprintf(url, size, "%.*s/%s", (int)len, base, op);
	return url;
}

/* --- the enroller ----------------------------------------------------------------------------- */

static int finish(struct enroll_result *res, int outcome)
{
	res->outcome = outcome;
	return outcome == ENROLL_OK ? 0 : -1;
}

void est_describe_cert(X509 *x, char *out, size_t outlen)
{
	BIGNUM *serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
	char *hex = serial ? BN_bn2hex(serial) : NULL;
	char subject[200] = "";
	BIO *bio = BIO_new(BIO_s_mem());
	int n;

	if (bio != NULL &&
	    X509_NAME_print_ex(bio, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) >= 0 &&
	    (n = BIO_read(bio, subject, sizeof(subject) - 1)) > 0)
		subject[n] = '\0';
	snprintf(out, outlen, "serial %s for %s", hex ? hex : "?", subject[0] ? subject : "?");
	BIO_free(bio);
	OPENSSL_free(hex);
	BN_free(serial);
}

int enroll_est(const struct enroll_request *req, struct enroll_result *res)
{
	const char *op = req->kind == ENROLL_RENEW ? "simplereenroll" : "simpleenroll";
	struct transfer t = {0};
	STACK_OF(X509) *chain = NULL;
	const unsigned char *p;
	X509_REQ *csr = NULL;
	char *url = NULL, *base = NULL, err[256] = "", described[256];
	int outcome = ENROLL_LOCAL, local = 0;
	size_t b64_cap;
	char *b64 = NULL;

	res->retry_after = -1;
	res->msg[0] = '\0';
	if (req->trust_file == NULL || req->csr_der == NULL || req->csr_len == 0 ||
	    req->csr_len > EST_BODY_MAX || req->stage == NULL || req->install == NULL) {
		snprintf(res->msg, sizeof(res->msg), "EST %s: incomplete request (%s missing)", op,
			 req->trust_file == NULL		      ? "ca-trust"
			 : req->stage == NULL || req->install == NULL ? "commit callbacks"
								      : "CSR");
		return finish(res, ENROLL_LOCAL);
	}
	if ((url = operation_url(req->url, op, res->msg, sizeof(res->msg))) == NULL)
		return finish(res, ENROLL_LOCAL);
	base = strndup(url, strlen(url) - strlen(op) - 1); /* for messages */
	if (base == NULL) {
		snprintf(res->msg, sizeof(res->msg), "EST %s: out of memory", op);
		goto out;
	}

	/* The credential: renew-auth's, the current key, or one of the bootstrap credentials. */
	if (req->kind == ENROLL_RENEW && req->auth_key != NULL) {
		t.tls.key = req->auth_key;
		t.tls.chain = req->auth_chain;
	} else if (req->kind == ENROLL_RENEW) {
		t.tls.key = req->cur_key;
		t.tls.chain = req->cur_chain;
	} else if (req->basic_user != NULL && req->basic_pass != NULL) {
		t.user = req->basic_user;
		t.password = req->basic_pass;
	} else if (req->boot_key != NULL) {
		t.tls.key = req->boot_key;
		t.tls.chain = req->boot_chain;
	} else {
		snprintf(res->msg, sizeof(res->msg), "EST %s: %s", op,
			 req->secret != NULL
				 ? "a shared secret is a CMP credential; EST bootstraps "
				   "with basic-user/basic-pass or a manufacturer key"
				 : "no bootstrap credential configured");
		goto out;
	}
	if ((req->kind == ENROLL_RENEW || t.user == NULL) &&
	    (t.tls.key == NULL || sk_X509_num(t.tls.chain) <= 0)) {
		snprintf(res->msg, sizeof(res->msg), "EST %s: no client key or certificate chain",
			 op);
		goto out;
	}

	/* The CSR's public key identifies the issued certificate among those returned. */
	p = req->csr_der;
	csr = d2i_X509_REQ(NULL, &p, (long)req->csr_len);
	if (csr == NULL || X509_REQ_get0_pubkey(csr) == NULL) {
		ERR_clear_error();
		snprintf(res->msg, sizeof(res->msg), "EST %s: the CSR is not a DER PKCS#10 request",
			 op);
		goto out;
	}
	b64_cap = (req->csr_len + 2) / 3 * 4 + 1;
	if ((b64 = malloc(b64_cap)) == NULL) {
		snprintf(res->msg, sizeof(res->msg), "EST %s: out of memory", op);
		goto out;
	}
	t.body = b64;
	t.body_len = (size_t)EVP_EncodeBlock((unsigned char *)b64, req->csr_der, (int)req->csr_len);
	t.url = url;
	t.trust_file = req->trust_file;
	t.timeout_s = req->timeout_s ? req->timeout_s : EST_DEFAULT_TIMEOUT_S;

	run_transfer(&t);
	outcome = classify(&t, op, base, res);
	if (outcome != ENROLL_OK)
		goto out;

	outcome = ENROLL_TRANSIENT;
	chain = est_parse_certs_only(t.resp, t.resp_len);
	if (chain == NULL) {
		snprintf(res->msg, sizeof(res->msg),
			 "EST %s: response from %s is not a base64 certs-only PKCS#7 (%zu bytes)",
			 op, base, t.resp_len);
		goto out;
	}
	if (!est_put_leaf_first(chain, X509_REQ_get0_pubkey(csr))) {
		est_describe_cert(sk_X509_value(chain, 0), described, sizeof(described));
		snprintf(res->msg, sizeof(res->msg),
			 "EST %s: none of the %d certificates from %s is for the requested key "
			 "(first: %s)",
			 op, sk_X509_num(chain), base, described);
		outcome = ENROLL_BAD_CERT;
		goto out;
	}
	est_describe_cert(sk_X509_value(chain, 0), described, sizeof(described));
	if (req->stage(req->commit_arg, chain, &local, err, sizeof(err)) != 0) {
		snprintf(res->msg, sizeof(res->msg), "EST %s: certificate %s from %s refused: %s",
			 op, described, base, err[0] ? err : "no reason given");
		outcome = local ? ENROLL_LOCAL : ENROLL_BAD_CERT;
		goto out;
	}
	/* EST has no confirmation: the answer is all the CA will say. */
	if (req->install(req->commit_arg, err, sizeof(err)) != 0) {
		snprintf(res->msg, sizeof(res->msg), "EST %s: certificate %s from %s: %s", op,
			 described, base, err);
		outcome = ENROLL_LOCAL;
		goto out;
	}
	snprintf(res->msg, sizeof(res->msg), "EST %s: certificate %s from %s installed", op,
		 described, base);
	outcome = ENROLL_OK;
out:
	sk_X509_pop_free(chain, X509_free);
	X509_REQ_free(csr);
	free(t.resp);
	free(b64);
	free(base);
	free(url);
	return finish(res, outcome);
}

int est_get_cacerts(const char *url, const char *trust_file, unsigned timeout_s,
		    STACK_OF(X509) * *out, char *err, size_t errlen)
{
	struct enroll_result res = {0};
	struct transfer t = {0};
	char *full, *base;

	*out = NULL;
	if ((full = operation_url(url, "cacerts", err, errlen)) == NULL)
		return -1;
	base = strndup(full, strlen(full) - strlen("/cacerts"));
	if (base == NULL) {
		snprintf(err, errlen, "EST cacerts: out of memory");
		free(full);
		return -1;
	}
	t.url = full;
	t.trust_file = trust_file;
	t.timeout_s = timeout_s ? timeout_s : EST_DEFAULT_TIMEOUT_S;
	run_transfer(&t);
	if (classify(&t, "cacerts", base, &res) == ENROLL_OK &&
	    (*out = est_parse_certs_only(t.resp, t.resp_len)) == NULL)
		snprintf(res.msg, sizeof(res.msg),
			 "EST cacerts: response from %s is not a base64 certs-only PKCS#7", base);
	if (*out == NULL)
		snprintf(err, errlen, "%s", res.msg);
	free(t.resp);
	free(base);
	free(full);
	return *out != NULL ? 0 : -1;
}
