/*
 * tests/est-ca: a small EST CA (RFC 7030 subset) for the renewal tests.
 *
 * HTTPS on 127.0.0.1, one connection at a time, every socket operation bounded by a
 * timeout. Serves /.well-known/est[/LABEL]/ cacerts (GET), simpleenroll and simplereenroll
 * (POST, base64 DER PKCS#10); every enrollment gets a fresh leaf for the CSR's key.
 *
 * simpleenroll needs HTTP Basic matching --basic or a valid client certificate chaining to
 * the CA; simplereenroll needs a valid, unexpired client certificate chaining to the CA whose
 * subject equals the CSR's (401 when the certificate is missing or invalid, 403 on a subject
 * mismatch). The TLS handshake accepts any client certificate so that these are HTTP answers.
 * --client-ca adds anchors for client certificates (certificates issued by an earlier CA).
 *
 * Policy "renewal only from the enrollment credential" (--renew-from ENROLL-CA.pem): the
 * CA then accepts simplereenroll only when the TLS client certificate chains to one of these
 * anchors (the CA that issues enrollment credentials, e.g. the manufacturer's), still with
 * the CSR's subject; a client presenting the operational certificate being renewed gets 403.
 * RFC 7030 leaves the authorization of a re-enrollment to the CA (sections 3.3.2 and 4.2.2);
 * this is the policy under which an application that may only make TLS handshakes with the
 * operational key cannot obtain a certificate for a key of its own.
 *
 * CA changes (tests/integration/renew-cacerts.sh): --cacerts FILE is what cacerts serves
 * instead of the CA certificate and --chain (e.g. new intermediate, new root and its link
 * certificates); --leaf-only 1 answers enrollments with the issued certificate alone, as
 * RFC 7030 allows, so the client must complete the chain from cacerts.
 *
 * Revocation (tests/integration/renew-revoked.sh): --aia URL and --cdp URL put an OCSP
 * responder (authorityInfoAccess) and a CRL distribution point into every leaf; --index FILE
 * appends each leaf to an `openssl ca` index ("V" lines), which `openssl ocsp -index` and
 * `openssl ca -gencrl` read; a simplereenroll whose client certificate is marked revoked
 * there ("R") gets 403, as a CA refuses renewal with a revoked credential.
 *
 * The fault file (re-read for every enrollment) holds one line "KIND COUNT [ARG]"; while
 * COUNT > 0 each enrollment that passed authentication and CSR verification consumes one
 * (the file is rewritten atomically with COUNT - 1); cacerts and refused requests never do:
 *   reject      400 with a text body           waiting [S]   202, Retry-After: S (default 5)
 *   http500     500                            close         close without answering
 *   delay [S]   sleep S (default 5), serve     garbage       200, base64 of random bytes
 *   wrongkey    certify another key            untrusted     signed by a throw-away CA
 *   expired     validity ended a minute ago    badsubject    subject CN=est-ca wrong subject
 *   noeku       no extendedKeyUsage
 *
 * Log (--log FILE, else stderr), one line per answered request, e.g.
 *   est-ca: simplereenroll issued serial=1F.. subject=CN=device
 *   est-ca: simpleenroll unauthorized: no basic credentials or client certificate
 * preceded by "est-ca: fault KIND (N left)" when a fault was consumed.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/util.h"

#define HEADER_MAX (16 * 1024)
#define BODY_MAX (64 * 1024)
#define IO_TIMEOUT_S 5
#define REQUEST_DEADLINE_MS 20000 /* a whole request, however slowly it trickles in */
#define REQUESTS_PER_CONNECTION 100
#define EST_PREFIX "/.well-known/est/"

static volatile sig_atomic_t stop_requested;

struct ca {
	X509 *cert;
	EVP_PKEY *key;
	STACK_OF(X509) * extra;	     /* --chain: sent after the CA certificate */
	STACK_OF(X509) * cacerts;    /* --cacerts: what /cacerts serves instead of cert + extra */
	STACK_OF(X509) * renew_from; /* --renew-from: anchors of enrollment credentials */
	int leaf_only;	  /* --leaf-only: enrollment answers carry the issued certificate alone */
	X509 *rogue_cert; /* the "untrusted" fault's self-signed CA */
	EVP_PKEY *rogue_key;
	long lifetime;
	const char *fault_file;
	const char *aia, *cdp; /* --aia, --cdp: URLs put into every leaf, or NULL */
	const char *index;     /* --index: openssl ca index of every leaf issued, or NULL */
	char *basic;	       /* "user:password", or NULL */
	FILE *log;
};

enum fault {
	FAULT_NONE,
	FAULT_REJECT,
	FAULT_WAITING,
	FAULT_HTTP500,
	FAULT_CLOSE,
	FAULT_DELAY,
	FAULT_GARBAGE,
	FAULT_WRONGKEY,
	FAULT_UNTRUSTED,
	FAULT_EXPIRED,
	FAULT_BADSUBJECT,
	FAULT_NOEKU,
};

static const char *const fault_names[] = {
	"none",	   "reject",   "waiting",   "http500", "close",	     "delay",
	"garbage", "wrongkey", "untrusted", "expired", "badsubject", "noeku",
};

struct conn {
	SSL *ssl;
	char buf[HEADER_MAX + BODY_MAX];
	size_t len;
};

struct request {
	char *method, *path;
	const char *authorization, *content_type;
	const char *body;
	size_t body_len;
	size_t consumed; /* bytes of conn->buf this request occupies */
	int keep_alive;
};

static void on_stop_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

__attribute__((format(printf, 2, 3))) static void log_line(struct ca *ca, const char *fmt, ...)
{
	va_list ap;

	fputs("est-ca: ", ca->log);
	va_start(ap, fmt);
	vfprintf(ca->log, fmt, ap);
	va_end(ap);
	fputc('\n', ca->log);
	fflush(ca->log);
}

/* The oldest OpenSSL error of this thread as text (the queue is cleared). */
static const char *ssl_error(void)
{
	static char text[256];
	unsigned long e = ERR_get_error();

	ERR_clear_error();
	if (e == 0)
		return "no OpenSSL error recorded";
	ERR_error_string_n(e, text, sizeof(text));
	return text;
}

static void name_text(const X509_NAME *name, char *out, size_t outlen)
{
	BIO *bio = BIO_new(BIO_s_mem());
	int n;

	out[0] = '\0';
	if (bio == NULL)
		return;
	if (X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253) >= 0 &&
	    (n = BIO_read(bio, out, (int)outlen - 1)) > 0)
		out[n] = '\0';
	BIO_free(bio);
}

/* --- base64 ------------------------------------------------------------------------------ */

/* Decodes base64, skipping whitespace and line breaks; NULL when it is not base64. */
static unsigned char *base64_decode(const char *in, size_t len, size_t *out_len)
{
	EVP_ENCODE_CTX *dctx;
	unsigned char *out;
	int n1 = 0, n2 = 0;

	if (len == 0 || len > INT_MAX / 2)
		return NULL;
	out = malloc(len / 4 * 3 + 4);
	dctx = EVP_ENCODE_CTX_new();
	if (out == NULL || dctx == NULL)
		goto fail;
	EVP_DecodeInit(dctx);
	if (EVP_DecodeUpdate(dctx, out, &n1, (const unsigned char *)in, (int)len) < 0 ||
	    EVP_DecodeFinal(dctx, out + n1, &n2) < 0 || n1 + n2 == 0)
		goto fail;
	EVP_ENCODE_CTX_free(dctx);
	*out_len = (size_t)(n1 + n2);
	return out;
fail:
	EVP_ENCODE_CTX_free(dctx);
	free(out);
	return NULL;
}

/* Base64 in 64-column lines, as in RFC 7030's examples. */
static char *base64_encode(const unsigned char *in, int len, size_t *out_len)
{
	EVP_ENCODE_CTX *ectx = EVP_ENCODE_CTX_new();
	char *out = malloc(((size_t)len / 48 + 2) * 65 + 1);
	int n1 = 0, n2 = 0;

	if (ectx == NULL || out == NULL)
		goto fail;
	EVP_EncodeInit(ectx);
	if (!EVP_EncodeUpdate(ectx, (unsigned char *)out, &n1, in, len))
		goto fail;
	EVP_EncodeFinal(ectx, (unsigned char *)out + n1, &n2);
	EVP_ENCODE_CTX_free(ectx);
	*out_len = (size_t)(n1 + n2);
	return out;
fail:
	EVP_ENCODE_CTX_free(ectx);
	free(out);
	return NULL;
}

/* --- certificates ------------------------------------------------------------------------ */

static int set_random_serial(X509 *x)
{
	unsigned char bytes[8];
	BIGNUM *bn = NULL;
	int ok;

	if (RAND_bytes(bytes, sizeof(bytes)) != 1)
		return 0;
	bytes[0] &= 0x7f; /* positive */
	bytes[0] |= 0x01; /* and never zero, always 8 bytes */
	bn = BN_bin2bn(bytes, sizeof(bytes), NULL);
	ok = bn != NULL && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
	BN_free(bn);
	return ok;
}

static int add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, v3, nid, value);
	int ok = ext != NULL && X509_add_ext(x, ext, -1);

	X509_EXTENSION_free(ext);
	return ok;
}

/* A v3 certificate with a random serial; issuer NULL means self-signed. */
static X509 *new_cert(X509 *issuer, const X509_NAME *subject, EVP_PKEY *pub, long from, long to)
{
	X509 *x = X509_new();

	if (x == NULL || !X509_set_version(x, X509_VERSION_3) || !set_random_serial(x) ||
	    !X509_set_subject_name(x, subject) ||
	    !X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : subject) ||
	    !X509_gmtime_adj(X509_getm_notBefore(x), from) ||
	    !X509_gmtime_adj(X509_getm_notAfter(x), to) || !X509_set_pubkey(x, pub)) {
		X509_free(x);
		return NULL;
	}
	return x;
}

static int make_rogue_ca(struct ca *ca)
{
	X509_NAME *name = X509_NAME_new();
	X509V3_CTX v3;
	int ok = 0;

	ca->rogue_key = EVP_EC_gen("P-256");
	if (name == NULL || ca->rogue_key == NULL ||
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
					(const unsigned char *)"est-ca untrusted CA", -1, -1, 0))
		goto out;
	ca->rogue_cert = new_cert(NULL, name, ca->rogue_key, -60, 86400);
	if (ca->rogue_cert == NULL)
		goto out;
	X509V3_set_ctx(&v3, ca->rogue_cert, ca->rogue_cert, NULL, NULL, 0);
	ok = add_ext(ca->rogue_cert, &v3, NID_basic_constraints, "critical,CA:TRUE") &&
	     add_ext(ca->rogue_cert, &v3, NID_key_usage, "critical,keyCertSign,cRLSign") &&
	     add_ext(ca->rogue_cert, &v3, NID_subject_key_identifier, "hash") &&
	     X509_sign(ca->rogue_cert, ca->rogue_key, EVP_sha256()) > 0;
out:
	X509_NAME_free(name);
	return ok;
}

/* Copies the subjectAltName of the CSR's extension request, if it has one. */
static int copy_san(X509 *x, X509_REQ *csr)
{
	STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(csr);
	int i, ok = 1;

	for (i = 0; i < sk_X509_EXTENSION_num(exts); i++) {
		X509_EXTENSION *ext = sk_X509_EXTENSION_value(exts, i);

		if (OBJ_obj2nid(X509_EXTENSION_get_object(ext)) == NID_subject_alt_name)
			ok = ok && X509_add_ext(x, ext, -1);
	}
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	return ok;
}

/* The leaf for the CSR, bent the way the fault asks. */
/* --aia, --cdp: where the agent asks whether this certificate is revoked. */
static int add_revocation_sources(struct ca *ca, X509 *x, X509V3_CTX *v3)
{
	char value[512];

	if (ca->aia != NULL) {
		snprintf(value, sizeof(value), "OCSP;URI:%s", ca->aia);
		if (!add_ext(x, v3, NID_info_access, value))
			return 0;
	}
	if (ca->cdp != NULL) {
		snprintf(value, sizeof(value), "URI:%s", ca->cdp);
		if (!add_ext(x, v3, NID_crl_distribution_points, value))
			return 0;
	}
	return 1;
}

/* "V" line of an `openssl ca` index for x (expiry as YYMMDDHHMMSSZ, serial as BN_bn2hex). */
static int index_add(struct ca *ca, X509 *x)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
	char *hex = bn != NULL ? BN_bn2hex(bn) : NULL, *subject;
	char expiry[32];
	struct tm tm = {0};
	FILE *f = NULL;
	int ok;

	subject = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
	ok = hex != NULL && subject != NULL && ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1 &&
	     (f = fopen(ca->index, "a")) != NULL;
	/* UTCTime's two-digit year, as `openssl ca` writes it. */
	snprintf(expiry, sizeof(expiry), "%02d%02d%02d%02d%02d%02dZ", tm.tm_year % 100,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
	if (ok) {
		fprintf(f, "V\t%s\t\t%s\tunknown\t%s\n", expiry, hex, subject);
		ok = fclose(f) == 0;
	}
	OPENSSL_free(subject);
	OPENSSL_free(hex);
	BN_free(bn);
	return ok;
}

/* Whether --index marks x revoked (an "R" line with its serial). */
static int index_revoked(struct ca *ca, X509 *x)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
	char *hex = bn != NULL ? BN_bn2hex(bn) : NULL, line[1024], *f[4];
	FILE *in = hex != NULL ? fopen(ca->index, "r") : NULL;
	int revoked = 0, i;

	while (in != NULL && !revoked && fgets(line, sizeof(line), in) != NULL) {
		f[0] = line;
		for (i = 1; i < 4 && f[i - 1] != NULL; i++)
			if ((f[i] = strchr(f[i - 1], '\t')) != NULL)
				*f[i]++ = '\0';
		revoked = i == 4 && f[3] != NULL && strcmp(f[0], "R") == 0 &&
			  strncmp(f[3], hex, strlen(hex)) == 0 && f[3][strlen(hex)] == '\t';
	}
	if (in != NULL)
		fclose(in);
	OPENSSL_free(hex);
	BN_free(bn);
	return revoked;
}

static X509 *issue_leaf(struct ca *ca, X509_REQ *csr, enum fault fault)
{
	X509 *issuer = fault == FAULT_UNTRUSTED ? ca->rogue_cert : ca->cert;
	EVP_PKEY *signer = fault == FAULT_UNTRUSTED ? ca->rogue_key : ca->key;
	EVP_PKEY *pub = X509_REQ_get0_pubkey(csr), *other_key = NULL;
	const X509_NAME *subject = X509_REQ_get_subject_name(csr);
	X509_NAME *wrong_subject = NULL;
	long from = -1, to = ca->lifetime;
	X509V3_CTX v3;
	X509 *x = NULL;

	if (fault == FAULT_WRONGKEY && (pub = other_key = EVP_EC_gen("P-256")) == NULL)
		goto fail;
	if (fault == FAULT_BADSUBJECT) {
		wrong_subject = X509_NAME_new();
		if (wrong_subject == NULL ||
		    !X509_NAME_add_entry_by_txt(wrong_subject, "CN", MBSTRING_ASC,
						(const unsigned char *)"est-ca wrong subject", -1,
						-1, 0))
			goto fail;
		subject = wrong_subject;
	}
	if (fault == FAULT_EXPIRED) {
		from = -ca->lifetime - 120;
		to = -60;
	}
	x = new_cert(issuer, subject, pub, from, to);
	if (x == NULL)
		goto fail;
	X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
	if (!add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE") ||
	    !add_ext(x, &v3, NID_key_usage, "critical,digitalSignature") ||
	    (fault != FAULT_NOEKU && !add_ext(x, &v3, NID_ext_key_usage, "clientAuth")) ||
	    !add_ext(x, &v3, NID_subject_key_identifier, "hash") ||
	    !add_ext(x, &v3, NID_authority_key_identifier, "keyid,issuer") || !copy_san(x, csr) ||
	    !add_revocation_sources(ca, x, &v3) || X509_sign(x, signer, EVP_sha256()) <= 0)
		goto fail;
	EVP_PKEY_free(other_key);
	X509_NAME_free(wrong_subject);
	return x;
fail:
	X509_free(x);
	EVP_PKEY_free(other_key);
	X509_NAME_free(wrong_subject);
	return NULL;
}

/* --- HTTP ----------------------------------------------------------------------------------- */

/* Clients go by the status code; the phrase is only for people reading a trace. */
static const char *reason_phrase(int status)
{
	return status == 200   ? "OK"
	       : status == 202 ? "Accepted"
	       : status < 500  ? "Client Error"
			       : "Server Error";
}

static int respond(struct conn *c, int status, const char *extra_headers, const char *type,
		   const char *body, size_t len, int keep_alive)
{
	char head[1024];
	size_t written;
	int n;

	n = snprintf(head, sizeof(head),
		     "HTTP/1.1 %d %s\r\n%sContent-Type: %s\r\nContent-Length: %zu\r\n"
		     "Connection: %s\r\n\r\n",
		     status, reason_phrase(status), extra_headers ? extra_headers : "", type, len,
		     keep_alive ? "keep-alive" : "close");
	if (n < 0 || (size_t)n >= sizeof(head))
		return -1;
	if (SSL_write_ex(c->ssl, head, (size_t)n, &written) <= 0)
		return -1;
	if (len > 0 && SSL_write_ex(c->ssl, body, len, &written) <= 0)
		return -1;
	return 0;
}

static int respond_text(struct conn *c, int status, const char *extra_headers, const char *text,
			int keep_alive)
{
	return respond(c, status, extra_headers, "text/plain", text, strlen(text), keep_alive);
}

static int respond_base64(struct conn *c, const char *type, const unsigned char *der, int len,
			  int keep_alive)
{
	size_t b64_len = 0;
	char *b64 = base64_encode(der, len, &b64_len);
	int r;

	if (b64 == NULL)
		return respond_text(c, 500, NULL, "out of memory\n", 0);
	r = respond(c, 200, "Content-Transfer-Encoding: base64\r\n", type, b64, b64_len,
		    keep_alive);
	free(b64);
	return r;
}

/* A certs-only PKCS#7 SignedData (no signers, no content), base64, 200. */
static int respond_certs(struct conn *c, STACK_OF(X509) * certs, int keep_alive)
{
	PKCS7 *p7 = PKCS7_new();
	unsigned char *der = NULL;
	int i, len = -1, r;

	if (p7 != NULL && PKCS7_set_type(p7, NID_pkcs7_signed)) {
		/* encapContentInfo: type id-data, content absent */
		p7->d.sign->contents->type = OBJ_nid2obj(NID_pkcs7_data);
		for (i = 0; i < sk_X509_num(certs); i++)
			if (!PKCS7_add_certificate(p7, sk_X509_value(certs, i)))
				break;
		if (i == sk_X509_num(certs))
			len = i2d_PKCS7(p7, &der);
	}
	PKCS7_free(p7);
	if (len <= 0)
		return respond_text(c, 500, NULL, "cannot encode PKCS#7\n", 0);
	r = respond_base64(c, "application/pkcs7-mime; smime-type=certs-only", der, len,
			   keep_alive);
	OPENSSL_free(der);
	return r;
}

static int read_more(struct conn *c, uint64_t deadline)
{
	size_t n = 0;

	if (c->len >= sizeof(c->buf) || stop_requested || monotonic_ms() > deadline)
		return -1;
	if (SSL_read_ex(c->ssl, c->buf + c->len, sizeof(c->buf) - c->len, &n) <= 0)
		return -1;
	c->len += n;
	return 0;
}

static char *next_line(char **cursor)
{
	char *line = *cursor, *end;

	if (line == NULL)
		return NULL;
	end = strstr(line, "\r\n");
	if (end != NULL) {
		*end = '\0';
		*cursor = end + 2;
	} else {
		*cursor = NULL;
	}
	return line;
}

/*
 * Reads one request. 1: got one; 0: the peer went away or was too slow (just close);
 * -1: malformed or too large, *status says what to answer before closing.
 */
static int read_request(struct conn *c, struct request *r, int *status)
{
	uint64_t deadline = monotonic_ms() + REQUEST_DEADLINE_MS;
	const char *content_length = NULL, *expect = NULL, *connection = NULL;
	char *end, *cursor, *line, *save = NULL, *version;
	unsigned long body_len = 0;
	size_t head_len;
	int chunked = 0;

	memset(r, 0, sizeof(*r));
	while ((end = memmem(c->buf, c->len, "\r\n\r\n", 4)) == NULL) {
		if (c->len >= HEADER_MAX) {
			*status = 431;
			return -1;
		}
		if (read_more(c, deadline) != 0)
			return 0;
	}
	head_len = (size_t)(end - c->buf) + 4;
	if (head_len > HEADER_MAX) { /* one read can bring more than HEADER_MAX */
		*status = 431;
		return -1;
	}
	*end = '\0';
	cursor = c->buf;
	line = next_line(&cursor);
	r->method = strtok_r(line, " ", &save);
	r->path = strtok_r(NULL, " ", &save);
	version = strtok_r(NULL, " ", &save);
	*status = 400;
	if (r->method == NULL || r->path == NULL || version == NULL ||
	    strncmp(version, "HTTP/1.", 7) != 0)
		return -1;
	r->keep_alive = strcmp(version, "HTTP/1.0") != 0;
	while ((line = next_line(&cursor)) != NULL) {
		char *value = strchr(line, ':'), *tail;

		if (value == NULL)
			return -1;
		*value++ = '\0';
		value += strspn(value, " \t");
		for (tail = value + strlen(value);
		     tail > value && (tail[-1] == ' ' || tail[-1] == '\t');)
			*--tail = '\0';
		if (strcasecmp(line, "Content-Length") == 0)
			content_length = value;
		else if (strcasecmp(line, "Transfer-Encoding") == 0)
			chunked = 1;
		else if (strcasecmp(line, "Authorization") == 0)
			r->authorization = value;
		else if (strcasecmp(line, "Content-Type") == 0)
			r->content_type = value;
		else if (strcasecmp(line, "Expect") == 0)
			expect = value;
		else if (strcasecmp(line, "Connection") == 0)
			connection = value;
	}
	if (connection != NULL && strcasecmp(connection, "close") == 0)
		r->keep_alive = 0;
	if (chunked) {
		*status = 411; /* bodies must come with a length */
		return -1;
	}
	if (content_length != NULL) {
		char *num_end;

		errno = 0;
		body_len = strtoul(content_length, &num_end, 10);
		if (errno != 0 || num_end == content_length || *num_end != '\0' ||
		    content_length[0] == '-')
			return -1;
		if (body_len > BODY_MAX) {
			*status = 413;
			return -1;
		}
	} else if (strcmp(r->method, "POST") == 0) {
		*status = 411;
		return -1;
	}
	if (expect != NULL && strcasecmp(expect, "100-continue") == 0 &&
	    c->len < head_len + body_len) {
		static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
		size_t written;

		if (SSL_write_ex(c->ssl, cont, sizeof(cont) - 1, &written) <= 0)
			return 0;
	}
	while (c->len < head_len + body_len)
		if (read_more(c, deadline) != 0)
			return 0;
	r->body = c->buf + head_len;
	r->body_len = body_len;
	r->consumed = head_len + body_len;
	return 1;
}

/* Drops a handled request from the buffer (keeping a pipelined one) and wipes its bytes. */
static void consume(struct conn *c, size_t n)
{
	size_t rest = c->len - n;

	memmove(c->buf, c->buf + n, rest);
	OPENSSL_cleanse(c->buf + rest, c->len - rest);
	c->len = rest;
}

/* --- EST ------------------------------------------------------------------------------------ */

/* Why the TLS client certificate does not authenticate the client, or NULL when it does. */
static const char *client_cert_problem(SSL *ssl)
{
	long result;

	if (SSL_get0_peer_certificate(ssl) == NULL)
		return "no client certificate";
	result = SSL_get_verify_result(ssl);
	return result == X509_V_OK ? NULL : X509_verify_cert_error_string(result);
}

/* Whether the verified client chain ends in one of anchors (the enrollment credential's CA). */
static int chain_ends_in(SSL *ssl, STACK_OF(X509) * anchors)
{
	STACK_OF(X509) *chain = SSL_get0_verified_chain(ssl);
	X509 *top;
	int i;

	if (chain == NULL || sk_X509_num(chain) < 2)
		return 0; /* a self-signed client certificate is never an enrollment credential */
	top = sk_X509_value(chain, sk_X509_num(chain) - 1);
	for (i = 0; i < sk_X509_num(anchors); i++)
		if (X509_cmp(top, sk_X509_value(anchors, i)) == 0)
			return 1;
	return 0;
}

static int basic_matches(struct ca *ca, const char *authorization)
{
	unsigned char *decoded;
	size_t len = 0, expected = ca->basic ? strlen(ca->basic) : 0;
	int ok;

	if (ca->basic == NULL || authorization == NULL || strncasecmp(authorization, "Basic ", 6))
		return 0;
	decoded = base64_decode(authorization + 6, strlen(authorization + 6), &len);
	if (decoded == NULL)
		return 0;
	ok = len == expected && CRYPTO_memcmp(decoded, ca->basic, len) == 0;
	OPENSSL_cleanse(decoded, len);
	free(decoded);
	return ok;
}

static long parse_long(const char *s)
{
	char *end;
	long v;

	if (s == NULL)
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	return errno != 0 || end == s || *end != '\0' || v < 0 ? -1 : v;
}

/* Reads the fault file, consumes one count of its fault and rewrites it. */
static enum fault take_fault(struct ca *ca, long *arg)
{
	char *save = NULL, *kind, *count_text, *arg_text, line[128];
	uint8_t *data = NULL;
	size_t len = 0, i;
	long count;
	int n;

	*arg = -1;
	if (ca->fault_file == NULL || read_file(ca->fault_file, 4096, &data, &len) != 0) {
		if (ca->fault_file != NULL && errno != ENOENT)
			log_line(ca, "fault file %s: %s", ca->fault_file, strerror(errno));
		return FAULT_NONE;
	}
	kind = strtok_r((char *)data, " \t\r\n", &save);
	count_text = strtok_r(NULL, " \t\r\n", &save);
	arg_text = strtok_r(NULL, " \t\r\n", &save);
	count = parse_long(count_text);
	for (i = 1; kind != NULL && i < sizeof(fault_names) / sizeof(fault_names[0]); i++)
		if (strcmp(kind, fault_names[i]) == 0)
			break;
	if (kind == NULL || count <= 0 || i == sizeof(fault_names) / sizeof(fault_names[0])) {
		if (kind != NULL && count < 0)
			log_line(ca, "fault file %s: expected KIND COUNT [ARG]", ca->fault_file);
		else if (kind != NULL && count > 0)
			log_line(ca, "fault file %s: unknown fault \"%s\"", ca->fault_file, kind);
		free(data);
		return FAULT_NONE;
	}
	*arg = parse_long(arg_text);
	n = snprintf(line, sizeof(line), "%s %ld%s%s\n", fault_names[i], count - 1,
		     arg_text ? " " : "", arg_text ? arg_text : "");
	if (n < 0 || (size_t)n >= sizeof(line) ||
	    write_file_atomic(ca->fault_file, line, (size_t)n, 0644) != 0)
		log_line(ca, "fault file %s: cannot rewrite: %s", ca->fault_file, strerror(errno));
	log_line(ca, "fault %s (%ld left)", fault_names[i], count - 1);
	free(data);
	return (enum fault)i;
}

static void sleep_seconds(long seconds)
{
	struct timespec tenth = {0, 100 * 1000 * 1000};
	long i;

	for (i = 0; i < seconds * 10 && !stop_requested; i++)
		nanosleep(&tenth, NULL);
}

static int serve_cacerts(struct ca *ca, struct conn *c, int keep_alive)
{
	STACK_OF(X509) *certs = sk_X509_dup(ca->cacerts != NULL ? ca->cacerts : ca->extra);
	int r;

	if (certs == NULL || (ca->cacerts == NULL && !sk_X509_insert(certs, ca->cert, 0))) {
		sk_X509_free(certs);
		return respond_text(c, 500, NULL, "out of memory\n", 0);
	}
	r = respond_certs(c, certs, keep_alive);
	log_line(ca, "cacerts served (%d certs)", sk_X509_num(certs));
	sk_X509_free(certs);
	return r;
}

/* Answers one simpleenroll / simplereenroll; returns -1 when the connection must close. */
static int serve_enroll(struct ca *ca, struct conn *c, struct request *r, const char *op)
{
	int reenroll = strcmp(op, "simplereenroll") == 0, keep = r->keep_alive;
	char subject[256], extra[64], *serial_hex = NULL;
	STACK_OF(X509) *certs = NULL;
	unsigned char *der = NULL;
	const unsigned char *p;
	const char *problem;
	X509_REQ *csr = NULL;
	X509 *leaf = NULL;
	BIGNUM *serial = NULL;
	enum fault fault;
	size_t der_len = 0;
	long arg;
	int ret;

	if (r->content_type == NULL || strncasecmp(r->content_type, "application/pkcs10", 18)) {
		log_line(ca, "%s bad request: content type is not application/pkcs10", op);
		return respond_text(c, 415, NULL, "expected application/pkcs10\n", keep);
	}
	der = base64_decode(r->body, r->body_len, &der_len);
	p = der;
	if (der == NULL || (csr = d2i_X509_REQ(NULL, &p, (long)der_len)) == NULL ||
	    X509_REQ_verify(csr, X509_REQ_get0_pubkey(csr)) <= 0) {
		ERR_clear_error();
		log_line(ca, "%s bad request: %s", op,
			 der == NULL   ? "body is not base64"
			 : csr == NULL ? "body is not a PKCS#10 request"
				       : "CSR signature invalid");
		ret = respond_text(c, 400, NULL, "bad request: expected a base64 DER PKCS#10 CSR\n",
				   keep);
		goto out;
	}
	name_text(X509_REQ_get_subject_name(csr), subject, sizeof(subject));
	problem = client_cert_problem(c->ssl);
	if (reenroll && problem != NULL) {
		log_line(ca, "%s unauthorized: %s", op, problem);
		ret = respond_text(c, 401, NULL, "client certificate required\n", keep);
		goto out;
	}
	if (reenroll && ca->renew_from != NULL && !chain_ends_in(c->ssl, ca->renew_from)) {
		char peer[256];

		name_text(X509_get_subject_name(SSL_get0_peer_certificate(c->ssl)), peer,
			  sizeof(peer));
		log_line(ca,
			 "%s forbidden: renewal only from the enrollment credential (client "
			 "certificate %s is not one)",
			 op, peer);
		ret = respond_text(c, 403, NULL, "renewal only from the enrollment credential\n",
				   keep);
		goto out;
	}
	if (reenroll && ca->index != NULL && index_revoked(ca, SSL_get0_peer_certificate(c->ssl))) {
		log_line(ca, "%s forbidden: the client certificate is revoked", op);
		ret = respond_text(c, 403, NULL, "client certificate revoked\n", keep);
		goto out;
	}
	if (reenroll && X509_NAME_cmp(X509_get_subject_name(SSL_get0_peer_certificate(c->ssl)),
				      X509_REQ_get_subject_name(csr)) != 0) {
		log_line(ca, "%s forbidden: CSR subject %s differs from the client certificate's",
			 op, subject);
		ret = respond_text(c, 403, NULL, "CSR subject differs from the certificate's\n",
				   keep);
		goto out;
	}
	if (!reenroll && problem != NULL && !basic_matches(ca, r->authorization)) {
		log_line(ca, "%s unauthorized: %s", op,
			 r->authorization ? "basic credentials not accepted"
					  : "no basic credentials or client certificate");
		ret = respond_text(c, 401,
				   ca->basic ? "WWW-Authenticate: Basic realm=\"est\"\r\n" : NULL,
				   "authentication required\n", keep);
		goto out;
	}

	fault = take_fault(ca, &arg);
	switch (fault) {
	case FAULT_REJECT:
		ret = respond_text(c, 400, NULL, "request rejected by policy (fault injection)\n",
				   keep);
		goto out;
	case FAULT_WAITING:
		snprintf(extra, sizeof(extra), "Retry-After: %ld\r\n", arg >= 0 ? arg : 5);
		ret = respond_text(c, 202, extra, "request pending\n", keep);
		goto out;
	case FAULT_HTTP500:
		ret = respond_text(c, 500, NULL, "internal error (fault injection)\n", keep);
		goto out;
	case FAULT_CLOSE:
		ret = -1;
		goto out;
	case FAULT_GARBAGE: {
		unsigned char junk[96];

		RAND_bytes(junk, sizeof(junk));
		ret = respond_base64(c, "application/pkcs7-mime; smime-type=certs-only", junk,
				     sizeof(junk), keep);
		goto out;
	}
	case FAULT_DELAY:
		sleep_seconds(arg >= 0 ? arg : 5);
		break;
	default:
		break;
	}

	leaf = issue_leaf(ca, csr, fault);
	certs = fault == FAULT_UNTRUSTED || ca->leaf_only ? sk_X509_new_null()
							  : sk_X509_dup(ca->extra);
	if (leaf == NULL || certs == NULL ||
	    (!ca->leaf_only &&
	     !sk_X509_insert(certs, fault == FAULT_UNTRUSTED ? ca->rogue_cert : ca->cert, 0)) ||
	    !sk_X509_insert(certs, leaf, 0)) {
		log_line(ca, "%s issue failed: %s", op, ssl_error());
		ret = respond_text(c, 500, NULL, "cannot issue\n", keep);
		goto out;
	}
	if (ca->index != NULL && !index_add(ca, leaf)) {
		log_line(ca, "%s cannot record the certificate in %s", op, ca->index);
		ret = respond_text(c, 500, NULL, "cannot issue\n", keep);
		goto out;
	}
	ret = respond_certs(c, certs, keep);
	serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf), NULL);
	serial_hex = serial ? BN_bn2hex(serial) : NULL;
	name_text(X509_get_subject_name(leaf), subject, sizeof(subject));
	log_line(ca, "%s issued serial=%s subject=%s", op, serial_hex ? serial_hex : "?", subject);
out:
	OPENSSL_free(serial_hex);
	BN_free(serial);
	sk_X509_free(certs);
	X509_free(leaf);
	X509_REQ_free(csr);
	free(der);
	return ret;
}

static int dispatch(struct ca *ca, struct conn *c, struct request *r)
{
	int keep = r->keep_alive, post = strcmp(r->method, "POST") == 0;
	char *op, *slash, *query = strchr(r->path, '?');

	if (query != NULL)
		*query = '\0';
	if (strncmp(r->path, EST_PREFIX, strlen(EST_PREFIX)) != 0)
		goto not_found;
	op = r->path + strlen(EST_PREFIX);
	slash = strchr(op, '/');
	if (slash != NULL) { /* an optional CA label segment */
		if (slash == op || strchr(slash + 1, '/') != NULL)
			goto not_found;
		op = slash + 1;
	}
	if (strcmp(op, "cacerts") == 0) {
		if (strcmp(r->method, "GET") != 0)
			goto wrong_method;
		return serve_cacerts(ca, c, keep);
	}
	if (strcmp(op, "simpleenroll") == 0 || strcmp(op, "simplereenroll") == 0) {
		if (!post)
			goto wrong_method;
		return serve_enroll(ca, c, r, op);
	}
not_found:
	log_line(ca, "not found: %.100s", r->path);
	return respond_text(c, 404, NULL, "not found\n", keep);
wrong_method:
	log_line(ca, "method %.10s not allowed for %.100s", r->method, r->path);
	return respond_text(c, 405, post ? "Allow: GET\r\n" : "Allow: POST\r\n",
			    "method not allowed\n", keep);
}

static void serve_connection(struct ca *ca, SSL_CTX *ctx, int fd)
{
	static struct conn c;
	struct timeval tv = {IO_TIMEOUT_S, 0};
	struct request r;
	int i, status, got, clean = 1;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	c.len = 0;
	c.ssl = SSL_new(ctx);
	if (c.ssl == NULL || !SSL_set_fd(c.ssl, fd)) {
		log_line(ca, "cannot set up TLS: %s", ssl_error());
		SSL_free(c.ssl);
		return;
	}
	if (SSL_accept(c.ssl) <= 0) {
		if (!stop_requested)
			log_line(ca, "TLS handshake failed: %s", ssl_error());
		SSL_free(c.ssl);
		return;
	}
	for (i = 0; i < REQUESTS_PER_CONNECTION && !stop_requested; i++) {
		got = read_request(&c, &r, &status);
		if (got == 0)
			break;
		if (got < 0) {
			log_line(ca, "bad request: HTTP %d", status);
			respond_text(&c, status, NULL, "bad request\n", 0);
			break;
		}
		if (dispatch(ca, &c, &r) != 0) {
			clean = 0; /* a failed write, or the "close" fault: no close_notify either
				    */
			break;
		}
		consume(&c, r.consumed);
		if (!r.keep_alive)
			break;
	}
	if (clean)
		SSL_shutdown(c.ssl);
	SSL_free(c.ssl);
	c.ssl = NULL;
	OPENSSL_cleanse(c.buf, sizeof(c.buf)); /* Authorization headers */
	ERR_clear_error();
}

/* --- setup ---------------------------------------------------------------------------------- */

/* Accept any client certificate in the handshake; serve_enroll turns the result into 401. */
static int accept_any_client_cert(int preverify_ok, X509_STORE_CTX *store)
{
	(void)preverify_ok;
	(void)store;
	return 1;
}

static STACK_OF(X509) * load_certs(const char *path)
{
	STACK_OF(X509) *certs = sk_X509_new_null();
	BIO *bio = BIO_new_file(path, "r");
	X509 *x;

	while (certs != NULL && bio != NULL && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)))
		if (!sk_X509_push(certs, x))
			X509_free(x);
	ERR_clear_error();
	BIO_free(bio);
	if (sk_X509_num(certs) <= 0) {
		sk_X509_free(certs);
		return NULL;
	}
	return certs;
}

static EVP_PKEY *load_key(const char *path)
{
	BIO *bio = BIO_new_file(path, "r");
	EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;

	BIO_free(bio);
	return key;
}

static SSL_CTX *tls_setup(const char *cert, const char *key, const char *ca_cert,
			  const char *client_ca, const char *renew_from)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_cert);

	if (ctx == NULL || names == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
	    SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1 ||
	    SSL_CTX_load_verify_locations(ctx, ca_cert, NULL) != 1 ||
	    (client_ca != NULL && SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1) ||
	    (renew_from != NULL && SSL_CTX_load_verify_locations(ctx, renew_from, NULL) != 1) ||
	    !SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"est-ca", 6)) {
		fprintf(stderr, "est-ca: TLS setup (%s, %s, %s): %s\n", cert, key, ca_cert,
			ssl_error());
		sk_X509_NAME_pop_free(names, X509_NAME_free);
		SSL_CTX_free(ctx);
		return NULL;
	}
	/* The CA may be an intermediate: it is the trust anchor for client certificates. */
	X509_STORE_set_flags(SSL_CTX_get_cert_store(ctx), X509_V_FLAG_PARTIAL_CHAIN);
	SSL_CTX_set_client_CA_list(ctx, names);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, accept_any_client_cert);
	return ctx;
}

static int listen_loopback(unsigned port, const char *port_file)
{
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	socklen_t addr_len = sizeof(addr);
	char text[16];
	int fd, one = 1, n;

	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, 16) != 0 ||
	    getsockname(fd, (struct sockaddr *)&addr, &addr_len) != 0) {
		fprintf(stderr, "est-ca: cannot listen on 127.0.0.1:%u: %s\n", port,
			strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	n = snprintf(text, sizeof(text), "%u\n", ntohs(addr.sin_port));
	if (write_file_atomic(port_file, text, (size_t)n, 0644) != 0) {
		fprintf(stderr, "est-ca: cannot write %s: %s\n", port_file, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static int load_basic(struct ca *ca, const char *spec)
{
	const char *colon = strchr(spec, ':');
	char err[256], *password = NULL;
	size_t user_len, len;

	if (colon == NULL || colon == spec) {
		fprintf(stderr, "est-ca: --basic expects USER:PASSFILE\n");
		return -1;
	}
	if (read_secret_file(colon + 1, &password, err, sizeof(err)) != 0) {
		fprintf(stderr, "est-ca: %s\n", err);
		return -1;
	}
	user_len = (size_t)(colon - spec);
	len = user_len + 1 + strlen(password) + 1;
	ca->basic = malloc(len);
	if (ca->basic != NULL)
		snprintf(ca->basic, len, "%.*s:%s", (int)user_len, spec, password);
	OPENSSL_cleanse(password, strlen(password));
	free(password);
	return ca->basic != NULL ? 0 : -1;
}

static void usage(void)
{
	fputs("usage: est-ca --port-file FILE --tls-cert SRV.pem --tls-key SRV.key\n"
	      "              --ca-cert CA.pem --ca-key CA.key [--chain EXTRA.pem]\n"
	      "              --lifetime SECONDS [--fault-file FAULTS] [--basic USER:PASSFILE]\n"
	      "              [--log FILE] [--port N] [--cacerts CERTS.pem] [--leaf-only 1]\n"
	      "              [--client-ca MORE-ANCHORS.pem] [--renew-from ENROLL-CA.pem]\n"
	      "              [--aia OCSP-URL] [--cdp CRL-URL] [--index INDEX.txt]\n",
	      stderr);
	exit(2);
}

int main(int argc, char **argv)
{
	/* Every option takes a value; getopt_long returns 0 and the index of the option. */
	static const struct option options[] = {
		{"port-file", required_argument, NULL, 0},
		{"tls-cert", required_argument, NULL, 0},
		{"tls-key", required_argument, NULL, 0},
		{"ca-cert", required_argument, NULL, 0},
		{"ca-key", required_argument, NULL, 0},
		{"chain", required_argument, NULL, 0},
		{"lifetime", required_argument, NULL, 0},
		{"fault-file", required_argument, NULL, 0},
		{"basic", required_argument, NULL, 0},
		{"log", required_argument, NULL, 0},
		{"port", required_argument, NULL, 0},
		{"cacerts", required_argument, NULL, 0},
		{"leaf-only", required_argument, NULL, 0},
		{"client-ca", required_argument, NULL, 0},
		{"renew-from", required_argument, NULL, 0},
		{"aia", required_argument, NULL, 0},
		{"cdp", required_argument, NULL, 0},
		{"index", required_argument, NULL, 0},
		{NULL, 0, NULL, 0},
	};
	/* clang-format off */
	enum { PORT_FILE, TLS_CERT, TLS_KEY, CA_CERT, CA_KEY, CHAIN, LIFETIME, FAULTS, BASIC, LOG,
	       PORT, CACERTS, LEAF_ONLY, CLIENT_CA, RENEW_FROM, AIA, CDP, INDEX };
	/* clang-format on */
	const char *arg[INDEX + 1] = {NULL};
	struct ca ca = {0};
	STACK_OF(X509) *ca_certs = NULL;
	struct sigaction sa = {.sa_handler = on_stop_signal};
	SSL_CTX *ctx = NULL;
	long port;
	int opt, index = 0, lfd = -1, rc = 1;

	while ((opt = getopt_long(argc, argv, "", options, &index)) == 0)
		arg[index] = optarg;
	ca.lifetime = parse_long(arg[LIFETIME]);
	ca.fault_file = arg[FAULTS];
	ca.aia = arg[AIA];
	ca.cdp = arg[CDP];
	ca.index = arg[INDEX];
	port = arg[PORT] ? parse_long(arg[PORT]) : 0;
	if (opt != -1 || optind != argc || !arg[PORT_FILE] || !arg[TLS_CERT] || !arg[TLS_KEY] ||
	    !arg[CA_CERT] || !arg[CA_KEY] || ca.lifetime <= 0 || port < 0 || port > 65535)
		usage();
	ca.log = arg[LOG] ? fopen(arg[LOG], "a") : stderr;
	if (ca.log == NULL) {
		fprintf(stderr, "est-ca: cannot open %s: %s\n", arg[LOG], strerror(errno));
		return 1;
	}
	ca_certs = load_certs(arg[CA_CERT]);
	ca.key = load_key(arg[CA_KEY]);
	if (ca_certs == NULL || ca.key == NULL ||
	    !X509_check_private_key(sk_X509_value(ca_certs, 0), ca.key)) {
		fprintf(stderr, "est-ca: CA certificate %s and key %s do not load or match\n",
			arg[CA_CERT], arg[CA_KEY]);
		goto out;
	}
	ca.cert = sk_X509_value(ca_certs, 0);
	ca.extra = arg[CHAIN] ? load_certs(arg[CHAIN]) : sk_X509_new_null();
	if (ca.extra == NULL) {
		fprintf(stderr, "est-ca: no certificate in %s\n", arg[CHAIN]);
		goto out;
	}
	ca.leaf_only = arg[LEAF_ONLY] != NULL && strcmp(arg[LEAF_ONLY], "0") != 0;
	if (arg[CACERTS] != NULL && (ca.cacerts = load_certs(arg[CACERTS])) == NULL) {
		fprintf(stderr, "est-ca: no certificate in %s\n", arg[CACERTS]);
		goto out;
	}
	if (arg[RENEW_FROM] != NULL && (ca.renew_from = load_certs(arg[RENEW_FROM])) == NULL) {
		fprintf(stderr, "est-ca: no certificate in %s\n", arg[RENEW_FROM]);
		goto out;
	}
	if (!make_rogue_ca(&ca)) {
		fprintf(stderr, "est-ca: cannot make the untrusted CA: %s\n", ssl_error());
		goto out;
	}
	if ((arg[BASIC] != NULL && load_basic(&ca, arg[BASIC]) != 0) ||
	    (ctx = tls_setup(arg[TLS_CERT], arg[TLS_KEY], arg[CA_CERT], arg[CLIENT_CA],
			     arg[RENEW_FROM])) == NULL)
		goto out;

	signal(SIGPIPE, SIG_IGN);
	sigaction(SIGTERM, &sa, NULL); /* no SA_RESTART: a blocked read returns */
	sigaction(SIGINT, &sa, NULL);
	lfd = listen_loopback((unsigned)port, arg[PORT_FILE]);
	if (lfd < 0)
		goto out;
	while (!stop_requested) {
		struct pollfd pfd = {.fd = lfd, .events = POLLIN};
		int fd;

		if (poll(&pfd, 1, 500) <= 0)
			continue;
		fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		serve_connection(&ca, ctx, fd);
		close(fd);
	}
	log_line(&ca, "stopped");
	rc = 0;
out:
	if (lfd >= 0)
		close(lfd);
	SSL_CTX_free(ctx);
	sk_X509_pop_free(ca_certs, X509_free);
	sk_X509_pop_free(ca.extra, X509_free);
	sk_X509_pop_free(ca.cacerts, X509_free);
	sk_X509_pop_free(ca.renew_from, X509_free);
	EVP_PKEY_free(ca.key);
	X509_free(ca.rogue_cert);
	EVP_PKEY_free(ca.rogue_key);
	if (ca.basic != NULL) {
		OPENSSL_cleanse(ca.basic, strlen(ca.basic));
		free(ca.basic);
	}
	if (ca.log != NULL && ca.log != stderr)
		fclose(ca.log);
	return rc;
}
