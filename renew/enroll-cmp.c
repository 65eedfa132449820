/*
 * CMP enrollment with OpenSSL's own client (OSSL_CMP_*): IR to bootstrap,
 * KUR to renew. Message protection and proof of possession are signed by
 * EVP_PKEYs whose private halves stay in the keystore. The transport is
 * libcurl, one handle per transaction (a CMP server may tie a transaction to
 * its connection), so https:// CA URLs work with the same trust anchors.
 * The certConf callback verifies the certificate and stages it (a refusal
 * goes back to the CA as a negative confirmation); it becomes the identity's
 * certificate only after the CA's pkiConf has arrived, so a crash in between
 * leaves the old one in use (renew/renew.c rolls the staged one back).
 *
 * Who may answer for the CA: a signature-protected response must come from a
 * certificate that chains to ca-trust AND is pinned (ca-signer), carries
 * id-kp-cmcRA / id-kp-cmcCA (RFC 6402; RFC 9483 3.5), or issued our own
 * certificate. Another device's certificate from the same CA chains to
 * ca-trust too; without this check its holder, on an http:// path, could
 * answer for the CA (and a forged "notAuthorized" would send us to bootstrap).
 */
#include "config.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <curl/curl.h>
#include <openssl/asn1t.h>
#include <openssl/cmp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/certcheck.h"
#include "renew/cmp-pbm.h"
#include "renew/enroll-cmp.h"
#include "renew/enroll.h"
#include "renew/renew.h"
#include "common/log.h"

#define CMP_MAX_RESPONSE (1024 * 1024)
#define POLL_FACTOR 10
#define CA_SIGNER_MAX (256 * 1024)

/* PKIBody choice numbers (RFC 4210 5.1.2); OpenSSL 3.0 keeps its names internal. */
#define BODY_PKICONF 19
#define BODY_CERTCONF 24

struct cmp_txn {
	const struct enroll_request *req;
	CURL *curl;
	/* What the transport saw last, to classify a failed exchange. */
	long http_status;
	char transport_err[256];
	/* What the certConf callback decided. */
	int commit_called;
	int commit_failed;
	int commit_local;
	char commit_err[400];
	/* The confirmation: certConf sent, and a pkiConf came back for it. */
	int sent_certconf;
	int got_pkiconf;
	/* Certificates pinned by ca-signer; a refused response signer, if any. */
	STACK_OF(X509) * pins;
	char signer_err[512];
	/*
	 * OpenSSL's last warning or error line: some checks raise no error. A
	 * sender name that is not ca-sender is only told at INFO level, in two
	 * lines (" actual name in ... = X", " does not match ... = Y").
	 */
	char last_warn[512];
	char last_info[256];
	/* An optional exchange (root CA key update): OpenSSL's lines go to the debug log. */
	int quiet;
};

/*
 * The transaction running on this thread, for the trust store's verify
 * callback (OpenSSL gives it no argument of ours). Each renewal runs in one
 * thread from start to end.
 */
static _Thread_local struct cmp_txn *cur_txn;

struct body {
	unsigned char *data;
	size_t len;
	int too_large;
};

static size_t body_write(char *ptr, size_t size, size_t nmemb, void *arg)
{
	struct body *b = arg;
	size_t n = size * nmemb;
	unsigned char *p;

	if (n > CMP_MAX_RESPONSE - b->len) {
		b->too_large = 1;
		return 0; /* makes curl fail the transfer */
	}
	if ((p = OPENSSL_realloc(b->data, b->len + n)) == NULL)
		return 0;
	memcpy(p + b->len, ptr, n);
	b->data = p;
	b->len += n;
	return n;
}

/* OSSL_CMP_transfer_cb_t: one HTTP POST of a DER PKIMessage. */
static OSSL_CMP_MSG *cmp_transfer(OSSL_CMP_CTX *ctx, const OSSL_CMP_MSG *msg)
{
	struct cmp_txn *t = OSSL_CMP_CTX_get_transfer_cb_arg(ctx);
	struct curl_slist *headers = NULL;
	unsigned char *der = NULL;
	struct body resp = {0};
	OSSL_CMP_MSG *reply = NULL;
	const unsigned char *p;
	CURLcode rc;
	int der_len;

	t->http_status = 0;
	t->transport_err[0] = '\0';
	if (OSSL_CMP_MSG_get_bodytype(msg) == BODY_CERTCONF) {
		/* From here on the CA may consider the certificate confirmed. */
		t->sent_certconf = 1;
		if (t->req->progress != NULL)
			t->req->progress(t->req->commit_arg, ENROLL_STEP_CONFIRMING);
	}
	if ((der_len = i2d_OSSL_CMP_MSG(msg, &der)) <= 0) {
		snprintf(t->transport_err, sizeof(t->transport_err), "cannot encode the request");
		return NULL;
	}
	/*
	 * A request MACed with the bootstrap secret (IR, then certConf/pollReq)
	 * carries OpenSSL's fixed 500 PBM iterations: re-protect it with
	 * CMP_PBM_ITERATIONS (renew/cmp-pbm.c). Signed requests pass unchanged.
	 */
	if (t->req->secret != NULL) {
		unsigned char *reprot = NULL;
		size_t reprot_len = 0;
		char why[128];
		int r = cmp_pbm_reprotect(t->req->libctx, NULL, der, (size_t)der_len,
					  t->req->secret, t->req->secret_len, CMP_PBM_ITERATIONS,
					  &reprot, &reprot_len, why, sizeof(why));

		if (r < 0 || (r > 0 && reprot_len > INT_MAX)) {
			snprintf(t->transport_err, sizeof(t->transport_err),
				 "cannot re-protect the request: %s", r < 0 ? why : "too large");
			OPENSSL_free(reprot);
			OPENSSL_free(der);
			return NULL;
		}
		if (r > 0) {
			OPENSSL_free(der);
			der = reprot;
			der_len = (int)reprot_len;
		}
	}
	headers = curl_slist_append(headers, "Content-Type: application/pkixcmp");
	headers = curl_slist_append(headers, "Expect:");
	curl_easy_setopt(t->curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(t->curl, CURLOPT_POSTFIELDS, der);
	curl_easy_setopt(t->curl, CURLOPT_POSTFIELDSIZE, (long)der_len);
	curl_easy_setopt(t->curl, CURLOPT_WRITEFUNCTION, body_write);
	curl_easy_setopt(t->curl, CURLOPT_WRITEDATA, &resp);
	rc = curl_easy_perform(t->curl);
	curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &t->http_status);
	if (rc != CURLE_OK) {
		snprintf(t->transport_err, sizeof(t->transport_err), "%s",
			 resp.too_large ? "response over 1 MiB" : curl_easy_strerror(rc));
	} else if (t->http_status != 200) {
		snprintf(t->transport_err, sizeof(t->transport_err), "HTTP %ld", t->http_status);
	} else {
		p = resp.data;
		if (resp.len > 0 && resp.len < (size_t)CMP_MAX_RESPONSE)
			reply = d2i_OSSL_CMP_MSG(NULL, &p, (long)resp.len);
		if (reply == NULL)
			snprintf(t->transport_err, sizeof(t->transport_err),
				 "the response (%zu bytes) is not a CMP message", resp.len);
		else if (t->sent_certconf && OSSL_CMP_MSG_get_bodytype(reply) == BODY_PKICONF)
			t->got_pkiconf = 1; /* OpenSSL checks its protection before exec returns */
	}
	curl_slist_free_all(headers);
	OPENSSL_free(resp.data);
	OPENSSL_free(der);
	return reply;
}

/* Adds every certificate of src to dst (references, duplicates skipped by pointer). */
static int add_certs(STACK_OF(X509) * dst, STACK_OF(X509) * src)
{
	int i;

	for (i = 0; i < sk_X509_num(src); i++) {
		X509 *c = sk_X509_value(src, i);

		if (!X509_up_ref(c))
			return 0;
		if (!sk_X509_push(dst, c)) {
			X509_free(c);
			return 0;
		}
	}
	return 1;
}

STACK_OF(X509) * cmp_candidate_chain(X509 *cert, STACK_OF(X509) * extra, STACK_OF(X509) * capubs,
				     STACK_OF(X509) * own)
{
	STACK_OF(X509) * chain;

	if ((chain = sk_X509_new_null()) == NULL || !X509_up_ref(cert)) {
		sk_X509_free(chain);
		return NULL;
	}
	if (!sk_X509_push(chain, cert)) {
		X509_free(cert);
		sk_X509_free(chain);
		return NULL;
	}
	/*
	 * Candidates for the path: what the CA sent (extraCerts, caPubs) and the
	 * intermediates we hold, for a CA that sends no chain (RFC 9483 lets it
	 * omit certificates the device already has). The path installed is the
	 * verified one, so it carries the intermediates that issued this leaf.
	 */
	if (!add_certs(chain, extra) || !add_certs(chain, capubs) || !add_certs(chain, own)) {
		sk_X509_pop_free(chain, X509_free);
		return NULL;
	}
	return chain;
}

/* certConf callback: verify and stage, or answer the CA with a failInfo. */
static int cmp_cert_conf(OSSL_CMP_CTX *ctx, X509 *cert, int fail_info, const char **text)
{
	struct cmp_txn *t = OSSL_CMP_CTX_get_transfer_cb_arg(ctx);
	STACK_OF(X509) * chain, *extra, *capubs, *own = OSSL_CMP_CTX_get0_untrusted(ctx);
	int local = 0;

	t->commit_called = 1;
	if (fail_info != 0 || cert == NULL) {
		/* OpenSSL's own checks (e.g. the key) failed; it says why in *text. */
		t->commit_failed = 1;
		snprintf(t->commit_err, sizeof(t->commit_err),
			 "the CA's certificate was refused: %s (failInfo 0x%x)",
			 *text != NULL ? *text : "no certificate", fail_info);
		return fail_info != 0 ? fail_info : 1 << OSSL_CMP_PKIFAILUREINFO_badCertTemplate;
	}
	extra = OSSL_CMP_CTX_get1_extraCertsIn(ctx);
	capubs = OSSL_CMP_CTX_get1_caPubs(ctx);
	chain = cmp_candidate_chain(cert, extra, capubs, own);
	sk_X509_pop_free(extra, X509_free);
	sk_X509_pop_free(capubs, X509_free);
	if (chain == NULL)
		goto no_memory;
	if (t->req->stage(t->req->commit_arg, chain, &local, t->commit_err,
			  sizeof(t->commit_err)) != 0) {
		t->commit_failed = 1;
		t->commit_local = local;
		sk_X509_pop_free(chain, X509_free);
		*text = "certificate rejected by the device";
		/* Only a local failure to store it is a systemFailure; the rest is the CA's. */
		return 1 << (local ? OSSL_CMP_PKIFAILUREINFO_systemFailure
				   : OSSL_CMP_PKIFAILUREINFO_badCertTemplate);
	}
	sk_X509_pop_free(chain, X509_free);
	return 0;
no_memory:
	t->commit_failed = 1;
	t->commit_local = 1;
	snprintf(t->commit_err, sizeof(t->commit_err), "out of memory");
	return 1 << OSSL_CMP_PKIFAILUREINFO_systemFailure;
}

/*
 * The intermediates of our own chain, for finding the CA's certificate when a
 * response omits it. OpenSSL 3.0's OSSL_CMP_CTX_set1_untrusted() turns an
 * empty list into a NULL stack (ossl_x509_add_certs_new() allocates nothing
 * for zero certificates), and every received message with extraCerts is then
 * added to that NULL stack (X509_add_certs() in ossl_cmp_msg_check_update):
 * "passed a null parameter", after a perfectly good answer. A leaf-only
 * certificate (as `openssl cmp -certout` writes it) has no intermediates, so
 * the context keeps the empty stack OSSL_CMP_CTX_new() made.
 */
static int set_untrusted(OSSL_CMP_CTX *ctx, STACK_OF(X509) * certs)
{
	return sk_X509_num(certs) <= 0 || OSSL_CMP_CTX_set1_untrusted(ctx, certs);
}

/* Whether cert's extendedKeyUsage names id-kp-cmcRA or id-kp-cmcCA. */
static int has_cmc_eku(X509 *cert)
{
	EXTENDED_KEY_USAGE *eku = X509_get_ext_d2i(cert, NID_ext_key_usage, NULL, NULL);
	int i, nid, found = 0;

	for (i = 0; i < sk_ASN1_OBJECT_num(eku) && !found; i++) {
		nid = OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, i));
		found = nid == NID_cmcRA || nid == NID_cmcCA;
	}
	EXTENDED_KEY_USAGE_free(eku);
	return found;
}

/* Whether cert issued (and signed) the leaf of chain. */
static int issued_leaf(X509 *cert, STACK_OF(X509) * chain)
{
	X509 *leaf = sk_X509_value(chain, 0);
	EVP_PKEY *pub = X509_get0_pubkey(cert);

	return leaf != NULL && pub != NULL && X509_check_issued(cert, leaf) == X509_V_OK &&
	       X509_verify(leaf, pub) == 1;
}

int cmp_signer_may_answer(X509 *signer, STACK_OF(X509) * pins, STACK_OF(X509) * own_chain)
{
	for (int i = 0; i < sk_X509_num(pins); i++)
		if (X509_cmp(signer, sk_X509_value(pins, i)) == 0)
			return 1;
	return has_cmc_eku(signer) || issued_leaf(signer, own_chain);
}

/*
 * The trust store's verify callback: OpenSSL's CMP client validates the
 * protection certificate of a response with this store, and at depth 0 that
 * certificate has chained to ca-trust; now it must also be one that may
 * answer for the CA. (The path of the issued certificate is verified with
 * another store, in stage().)
 */
static int signer_verify_cb(int ok, X509_STORE_CTX *sctx)
{
	struct cmp_txn *t = cur_txn;
	X509 *signer;
	char name[256];

	if (!ok || t == NULL || X509_STORE_CTX_get_error_depth(sctx) != 0)
		return ok;
	signer = X509_STORE_CTX_get_current_cert(sctx);
	if (cmp_signer_may_answer(signer, t->pins, t->req->own_chain))
		return 1;
	X509_NAME_oneline(X509_get_subject_name(signer), name, sizeof(name));
	snprintf(t->signer_err, sizeof(t->signer_err),
		 "the response is signed by %s, which may not answer for the CA (not in "
		 "ca-signer, no id-kp-cmcRA/cmcCA extended key usage, not the issuer of our "
		 "certificate)",
		 name);
	X509_STORE_CTX_set_error(sctx, X509_V_ERR_APPLICATION_VERIFICATION);
	return 0;
}

/* ca-signer: the pinned certificates (PEM, one or more). */
static STACK_OF(X509) * load_pins(const char *file, char *err, size_t errlen)
{
	STACK_OF(X509) *pins = sk_X509_new_null();
	BIO *bio = NULL;
	X509 *x;

	if (pins == NULL || (bio = BIO_new_file(file, "r")) == NULL)
		goto fail;
	while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL)
		if (!sk_X509_push(pins, x)) {
			X509_free(x);
			goto fail;
		}
	ERR_clear_error();
	BIO_free(bio);
	if (sk_X509_num(pins) > 0)
		return pins;
	bio = NULL;
fail:
	snprintf(err, errlen, "cannot load ca-signer %s: no PEM certificate", file);
	BIO_free(bio);
	sk_X509_pop_free(pins, X509_free);
	ERR_clear_error();
	return NULL;
}

/* Reads the trust anchors; NULL with err set on failure. */
static X509_STORE *load_trust(const char *file, char *err, size_t errlen)
{
	X509_STORE *store = X509_STORE_new();

	if (store == NULL || file == NULL || X509_STORE_load_file(store, file) != 1) {
		snprintf(err, errlen, "cannot load ca-trust %s", file != NULL ? file : "(unset)");
		X509_STORE_free(store);
		return NULL;
	}
	X509_STORE_set_verify_cb(store, signer_verify_cb);
	return store;
}

/* OpenSSL's CMP client narrates each step; with -v that goes to the agent's debug log. */
static int cmp_log(const char *func, const char *file, int line, OSSL_CMP_severity level,
		   const char *msg)
{
	char safe[1024];

	(void)file;
	(void)line;
	/* OpenSSL quotes the CA's texts (statusString, error details) in these. */
	log_sanitize(msg, safe, sizeof(safe));
	if (level <= OSSL_CMP_LOG_WARNING && cur_txn != NULL)
		snprintf(cur_txn->last_warn, sizeof(cur_txn->last_warn), "%s", msg);
	if (level > OSSL_CMP_LOG_WARNING && cur_txn != NULL) {
		if (strncmp(msg, " does not match ", 16) == 0)
			snprintf(cur_txn->last_warn, sizeof(cur_txn->last_warn), "%s%s",
				 cur_txn->last_info + (cur_txn->last_info[0] == ' '), msg);
		snprintf(cur_txn->last_info, sizeof(cur_txn->last_info), "%s", msg);
	}
	if (level <= OSSL_CMP_LOG_WARNING && (cur_txn == NULL || !cur_txn->quiet))
		log_warn("CMP %s: %s", func != NULL ? func : "", safe);
	else
		log_debug("CMP %s: %s", func != NULL ? func : "", safe);
	return 1;
}

static int set_result(struct enroll_result *res, int outcome, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int set_result(struct enroll_result *res, int outcome, const char *fmt, ...)
{
	char raw[sizeof(res->msg)];
	va_list ap;

	res->outcome = outcome;
	va_start(ap, fmt);
	vsnprintf(raw, sizeof(raw), fmt, ap);
	va_end(ap);
	/*
	 * The line goes to the log and to status; it quotes the CA (status
	 * strings, failure texts): escaped here, once, for every outcome.
	 */
	log_sanitize(raw, res->msg, sizeof(res->msg));
	return outcome == ENROLL_OK ? 0 : -1;
}

/* Failure bits that mean "your credential is not accepted": bootstrap may help. */
#define AUTH_FAILINFO                                                                              \
	((1 << OSSL_CMP_PKIFAILUREINFO_notAuthorized) |                                            \
	 (1 << OSSL_CMP_PKIFAILUREINFO_signerNotTrusted) |                                         \
	 (1 << OSSL_CMP_PKIFAILUREINFO_certRevoked) | (1 << OSSL_CMP_PKIFAILUREINFO_badCertId))
/* Failure bits that say "try again later". */
#define BUSY_FAILINFO                                                                              \
	((1 << OSSL_CMP_PKIFAILUREINFO_systemUnavail) |                                            \
	 (1 << OSSL_CMP_PKIFAILUREINFO_timeNotAvailable) |                                         \
	 (1 << OSSL_CMP_PKIFAILUREINFO_transactionIdInUse))

static void last_openssl_error(char *buf, size_t len)
{
	unsigned long e = ERR_peek_last_error();
	const char *data = NULL;
	int flags = 0;

	buf[0] = '\0';
	if (e == 0)
		return;
	ERR_peek_last_error_data(&data, &flags);
	snprintf(buf, len, "%s%s%s",
		 ERR_reason_error_string(e) != NULL ? ERR_reason_error_string(e) : "error",
		 (flags & ERR_TXT_STRING) && data != NULL && *data != '\0' ? ": " : "",
		 (flags & ERR_TXT_STRING) && data != NULL ? data : "");
}

/* Whether OpenSSL's error queue says a response's protection did not verify. */
static int protection_failed(void)
{
	unsigned long e;
	int i;

	for (i = 0; i < 64 && (e = ERR_get_error()) != 0; i++)
		if (ERR_GET_LIB(e) == ERR_LIB_CMP &&
		    ERR_GET_REASON(e) == CMP_R_ERROR_VALIDATING_PROTECTION)
			return 1;
	return 0;
}

void cmp_rejected(const char *what, const char *status, int fail_info, struct enroll_result *res)
{
	if (status == NULL)
		status = "rejection";
	if (fail_info > 0 && (fail_info & AUTH_FAILINFO) != 0)
		set_result(res, ENROLL_NOT_AUTHORIZED, "CMP %s rejected: %s", what, status);
	else if (fail_info > 0 && (fail_info & BUSY_FAILINFO) != 0)
		set_result(res, ENROLL_TRANSIENT, "CMP %s rejected: %s", what, status);
	else
		set_result(res, ENROLL_REJECTED, "CMP %s rejected: %s", what, status);
}

/* Turns a finished (failed) transaction into an outcome. */
static void classify(OSSL_CMP_CTX *ctx, struct cmp_txn *t, const char *what,
		     struct enroll_result *res)
{
	char status[256], ossl[256];
	int st = OSSL_CMP_CTX_get_status(ctx);
	int fi = OSSL_CMP_CTX_get_failInfoCode(ctx);

	last_openssl_error(ossl, sizeof(ossl));
	if (t->signer_err[0] != '\0') {
		/* Whatever it said (even "notAuthorized") is no answer from the CA. */
		set_result(res, ENROLL_TRANSIENT, "CMP %s: %s", what, t->signer_err);
		return;
	}
	if (t->commit_failed) {
		set_result(res, t->commit_local ? ENROLL_LOCAL : ENROLL_BAD_CERT, "CMP %s: %s",
			   what, t->commit_err);
		return;
	}
	if (t->transport_err[0] != '\0') {
		set_result(res, ENROLL_TRANSIENT, "CMP %s: %s from %s", what, t->transport_err,
			   t->req->url);
		return;
	}
	if (st == OSSL_CMP_PKISTATUS_waiting) {
		res->retry_after = 60;
		set_result(res, ENROLL_WAIT, "CMP %s: the CA is still processing the request",
			   what);
		return;
	}
	if (st == OSSL_CMP_PKISTATUS_rejection) {
		cmp_rejected(what, OSSL_CMP_CTX_snprint_PKIStatus(ctx, status, sizeof(status)), fi,
			     res);
		return;
	}
	if (protection_failed()) {
		/* No signer found that chains to ca-trust, or a bad signature or MAC. */
		set_result(res, ENROLL_TRANSIENT,
			   "CMP %s: the response's protection does not verify: no certificate "
			   "that chains to ca-trust %s signed it (a CA or RA must send its "
			   "certificate in extraCerts), or its signature or MAC is wrong",
			   what, t->req->trust_file);
		return;
	}
	/* No PKIStatus: the exchange itself failed (timeout, error message). */
	set_result(res, ENROLL_TRANSIENT, "CMP %s failed: %s", what,
		   ossl[0] != '\0'	     ? ossl
		   : t->last_warn[0] != '\0' ? t->last_warn
					     : "no answer");
}

/*
 * A CMP context for req: transport, trust store and signer rules, protection
 * (the current key for a renewal; the bootstrap credential for an IR). NULL
 * with res set on failure; the caller frees t->pins, t->curl, *untrusted.
 */
static OSSL_CMP_CTX *cmp_setup(const struct enroll_request *req, struct cmp_txn *t,
			       const char *what, STACK_OF(X509) * *untrusted,
			       struct enroll_result *res)
{
	int msg_timeout = req->timeout_s > 0 && req->timeout_s <= 3600 ? (int)req->timeout_s : 60;
	OSSL_CMP_CTX *ctx = NULL;
	X509_STORE *trust = NULL;
	EVP_PKEY *prot_key;
	char err[300];

	*untrusted = NULL;
	if ((trust = load_trust(req->trust_file, err, sizeof(err))) == NULL) {
		set_result(res, ENROLL_LOCAL, "CMP %s: %s", what, err);
		return NULL;
	}
	if (req->signer_file != NULL &&
	    (t->pins = load_pins(req->signer_file, err, sizeof(err))) == NULL) {
		X509_STORE_free(trust);
		set_result(res, ENROLL_LOCAL, "CMP %s: %s", what, err);
		return NULL;
	}
	if ((ctx = OSSL_CMP_CTX_new(req->libctx, NULL)) == NULL ||
	    (t->curl = curl_easy_init()) == NULL) {
		set_result(res, ENROLL_LOCAL, "CMP %s: out of memory", what);
		goto fail;
	}
	/* The transport: plain libcurl POSTs; TLS (https://) verified against ca-trust too. */
	curl_easy_setopt(t->curl, CURLOPT_URL, req->url);
	curl_easy_setopt(t->curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(t->curl, CURLOPT_CAINFO, req->trust_file);
	curl_easy_setopt(t->curl, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	curl_easy_setopt(t->curl, CURLOPT_CONNECTTIMEOUT, 10L);
	curl_easy_setopt(t->curl, CURLOPT_TIMEOUT, (long)msg_timeout);
	curl_easy_setopt(t->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(t->curl, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(t->curl, CURLOPT_USERAGENT, PACKAGE_NAME "/" PACKAGE_VERSION);
	/* A stopping agent does not wait for a slow CA. */
	curl_easy_setopt(t->curl, CURLOPT_XFERINFOFUNCTION, enroll_curl_progress);
	curl_easy_setopt(t->curl, CURLOPT_NOPROGRESS, 0L);
	OSSL_CMP_CTX_set_log_cb(ctx, cmp_log);
	OSSL_CMP_CTX_set_transfer_cb(ctx, cmp_transfer);
	OSSL_CMP_CTX_set_transfer_cb_arg(ctx, t);
	OSSL_CMP_CTX_set_certConf_cb(ctx, cmp_cert_conf);
	/*
	 * timeout_s bounds each exchange; a CA that asks us to poll (checkAfter)
	 * may stretch the transaction to POLL_FACTOR times that. (OpenSSL keeps a
	 * few seconds of the total for the last round trip, so a total equal to
	 * one exchange would give up at the first poll.)
	 */
	OSSL_CMP_CTX_set_option(ctx, OSSL_CMP_OPT_MSG_TIMEOUT, msg_timeout);
	OSSL_CMP_CTX_set_option(ctx, OSSL_CMP_OPT_TOTAL_TIMEOUT, msg_timeout * POLL_FACTOR);
	/* Explicit unless configured: a refused certificate gets a negative certConf. */
	OSSL_CMP_CTX_set_option(ctx, OSSL_CMP_OPT_IMPLICIT_CONFIRM, req->implicit_confirm ? 1 : 0);
	/*
	 * PBM (bootstrap secret): HMAC-SHA256 rather than OpenSSL 3.0's default
	 * HMAC-SHA1 (RFC 9481 4.1.1). OpenSSL's iteration count is a fixed 500
	 * with no setter; cmp_transfer() re-protects each MACed request with
	 * CMP_PBM_ITERATIONS (100000, the most an OpenSSL-based verifier
	 * accepts). A captured IR is still open to offline guessing, hence the
	 * config-time warnings about short secrets and http://.
	 */
	OSSL_CMP_CTX_set_option(ctx, OSSL_CMP_OPT_MAC_ALGNID, NID_hmacWithSHA256);
	if (req->signer_name != NULL && !OSSL_CMP_CTX_set1_expected_sender(ctx, req->signer_name))
		goto no_memory;
	/* Responses must be signed by a CA certificate that chains to ca-trust. */
	if (!OSSL_CMP_CTX_set0_trustedStore(ctx, trust)) {
		set_result(res, ENROLL_LOCAL, "CMP %s: cannot set the trust store", what);
		goto fail;
	}
	trust = NULL;

	if (req->kind == ENROLL_RENEW) {
		X509 *leaf = sk_X509_value(req->cur_chain, 0);

		if (leaf == NULL || req->cur_key == NULL) {
			set_result(res, ENROLL_LOCAL, "CMP %s: no current certificate to renew",
				   what);
			goto fail;
		}
		prot_key = req->cur_key;
		if (!OSSL_CMP_CTX_set1_oldCert(ctx, leaf) || !OSSL_CMP_CTX_set1_cert(ctx, leaf))
			goto no_memory;
		if ((*untrusted = certcheck_chain_rest(req->cur_chain)) == NULL ||
		    !set_untrusted(ctx, *untrusted))
			goto no_memory;
	} else if (req->boot_key != NULL) {
		prot_key = req->boot_key;
		if (!OSSL_CMP_CTX_set1_cert(ctx, sk_X509_value(req->boot_chain, 0)))
			goto no_memory;
		if ((*untrusted = certcheck_chain_rest(req->boot_chain)) == NULL ||
		    !set_untrusted(ctx, *untrusted))
			goto no_memory;
	} else if (req->secret != NULL && req->secret_ref != NULL) {
		prot_key = NULL;
		if (!OSSL_CMP_CTX_set1_referenceValue(ctx, (const unsigned char *)req->secret_ref,
						      (int)strlen(req->secret_ref)) ||
		    !OSSL_CMP_CTX_set1_secretValue(ctx, req->secret, (int)req->secret_len))
			goto no_memory;
	} else {
		set_result(res, ENROLL_LOCAL, "CMP %s: no bootstrap credential configured", what);
		goto fail;
	}
	if (prot_key != NULL && !OSSL_CMP_CTX_set1_pkey(ctx, prot_key))
		goto no_memory;
	return ctx;
no_memory:
	set_result(res, ENROLL_LOCAL, "CMP %s: cannot set up the request", what);
fail:
	X509_STORE_free(trust);
	OSSL_CMP_CTX_free(ctx);
	return NULL;
}

/*
 * An ip's caPubs (RFC 4210 5.3.2): the CA's certificates, which a new root
 * among them may be, judged by renew/cacerts.c (only through its link from an
 * anchor in force). After the installation: a refused root must not cost the
 * certificate.
 */
static void capubs_offer(OSSL_CMP_CTX *ctx, const struct enroll_request *req)
{
	STACK_OF(X509) * capubs;

	if (req->kind != ENROLL_BOOTSTRAP || req->ca_pubs == NULL ||
	    (capubs = OSSL_CMP_CTX_get1_caPubs(ctx)) == NULL)
		return;
	req->ca_pubs(req->commit_arg, capubs);
	sk_X509_pop_free(capubs, X509_free);
}

int enroll_cmp(const struct enroll_request *req, struct enroll_result *res)
{
	const char *what = req->kind == ENROLL_BOOTSTRAP ? "IR" : "KUR";
	struct cmp_txn t = {.req = req};
	OSSL_CMP_CTX *ctx = NULL;
	STACK_OF(X509) *untrusted = NULL;
	X509 *newcert = NULL;
	char err[300];

	memset(res, 0, sizeof(*res));
	res->retry_after = -1;
	if (req->stage == NULL || req->install == NULL)
		return set_result(res, ENROLL_LOCAL, "CMP %s: no commit callbacks", what);
	if ((ctx = cmp_setup(req, &t, what, &untrusted, res)) == NULL)
		goto out;
	/* Proof of possession: signed by the new key, inside the keystore. */
	if (!EVP_PKEY_up_ref(req->new_key))
		goto no_memory;
	if (!OSSL_CMP_CTX_set0_newPkey(ctx, 1, req->new_key)) {
		EVP_PKEY_free(req->new_key);
		goto no_memory;
	}
	if (req->subject != NULL && !OSSL_CMP_CTX_set1_subjectName(ctx, req->subject))
		goto no_memory;

	ERR_clear_error();
	cur_txn = &t;
	newcert =
		req->kind == ENROLL_RENEW ? OSSL_CMP_exec_KUR_ses(ctx) : OSSL_CMP_exec_IR_ses(ctx);
	cur_txn = NULL;
	if (newcert != NULL && t.commit_called && !t.commit_failed && t.sent_certconf &&
	    t.got_pkiconf) {
		/* The CA has our certConf, and said so: now, and only now, switch. */
		if (req->progress != NULL)
			req->progress(req->commit_arg, ENROLL_STEP_CONFIRMED);
		if (req->install(req->commit_arg, err, sizeof(err)) != 0)
			set_result(res, ENROLL_LOCAL, "CMP %s: %s", what, err);
		else
			set_result(res, ENROLL_OK,
				   "CMP %s: certificate issued, confirmed and installed", what);
		capubs_offer(ctx, req);
	} else if (newcert != NULL && t.commit_called && !t.commit_failed && !t.sent_certconf &&
		   req->implicit_confirm) {
		/* Asked for and granted: the CA's answer was its confirmation. */
		if (req->progress != NULL)
			req->progress(req->commit_arg, ENROLL_STEP_CONFIRMED);
		if (req->install(req->commit_arg, err, sizeof(err)) != 0)
			set_result(res, ENROLL_LOCAL, "CMP %s: %s", what, err);
		else
			set_result(res, ENROLL_OK,
				   "CMP %s: certificate issued, implicitly confirmed and installed",
				   what);
		capubs_offer(ctx, req);
	} else if (newcert != NULL && t.commit_called && !t.commit_failed && !t.sent_certconf) {
		/*
		 * implicitConfirm in the answer although we asked for explicit
		 * confirmation (RFC 4210 5.1.1.1; RFC 9483 4.1.1 forbids it): we
		 * could not refuse the certificate had it been bad. Not installed.
		 */
		set_result(res, ENROLL_REJECTED,
			   "CMP %s: the CA granted implicit confirmation, which was not requested; "
			   "certificate not installed",
			   what);
	} else if (newcert != NULL) {
		/* Issued but never reached certConf: must not happen; treat as not installed. */
		set_result(res, ENROLL_LOCAL, "CMP %s: certificate not confirmed", what);
	} else {
		classify(ctx, &t, what, res);
	}
	goto out;
no_memory:
	set_result(res, ENROLL_LOCAL, "CMP %s: cannot set up the request", what);
out:
	ERR_clear_error();
	sk_X509_pop_free(t.pins, X509_free);
	sk_X509_free(untrusted);
	if (t.curl != NULL)
		curl_easy_cleanup(t.curl);
	OSSL_CMP_CTX_free(ctx);
	return res->outcome == ENROLL_OK ? 0 : -1;
}

/*
 * RFC 9480 4.3, root CA key update. OpenSSL 3.0 has no helper for it (3.2
 * has), so the generic InfoTypeAndValue API carries it, with the content
 * decoded by this template (from the RFC's ASN.1; CMPCertificate is a CHOICE
 * whose only alternative is an untagged Certificate):
 *   RootCaKeyUpdateContent ::= SEQUENCE {
 *      newWithNew  CMPCertificate,
 *      newWithOld  [0] CMPCertificate OPTIONAL,
 *      oldWithNew  [1] CMPCertificate OPTIONAL }
 * (explicitly tagged: the module has EXPLICIT TAGS).
 */
#define OID_IT_ROOTCA_KEY_UPDATE "1.3.6.1.5.5.7.4.18"
#define OID_IT_ROOTCA_CERT "1.3.6.1.5.5.7.4.20"

typedef struct {
	X509 *new_with_new;
	X509 *new_with_old;
	X509 *old_with_new;
} ROOTCA_UPDATE;

ASN1_SEQUENCE(ROOTCA_UPDATE) =
	{
		ASN1_SIMPLE(ROOTCA_UPDATE, new_with_new, X509),
		ASN1_EXP_OPT(ROOTCA_UPDATE, new_with_old, X509, 0),
		ASN1_EXP_OPT(ROOTCA_UPDATE, old_with_new, X509, 1),
} static_ASN1_SEQUENCE_END(ROOTCA_UPDATE)

	/* The genm's InfoTypeAndValue: id-it-rootCaCert, with old_root as value if known. */
	static OSSL_CMP_ITAV
	* rootca_cert_itav(X509 * old_root)
{
	ASN1_OBJECT *type = OBJ_txt2obj(OID_IT_ROOTCA_CERT, 1);
	ASN1_TYPE *value = NULL;
	ASN1_STRING *der = NULL;
	OSSL_CMP_ITAV *itav = NULL;
	unsigned char *p = NULL;
	int len;

	if (type == NULL)
		return NULL;
	if (old_root != NULL) {
		/* ANY holding a SEQUENCE: the string is its whole encoding. */
		if ((len = i2d_X509(old_root, &p)) <= 0 || (der = ASN1_STRING_new()) == NULL ||
		    !ASN1_STRING_set(der, p, len) || (value = ASN1_TYPE_new()) == NULL ||
		    !ASN1_TYPE_set1(value, V_ASN1_SEQUENCE, der))
			goto out;
	}
	itav = OSSL_CMP_ITAV_create(type, value);
out:
	if (itav == NULL) {
		ASN1_OBJECT_free(type);
		ASN1_TYPE_free(value);
	}
	ASN1_STRING_free(der);
	OPENSSL_free(p);
	return itav;
}

int enroll_cmp_root_update(const struct enroll_request *req, X509 *old_root, X509 **new_with_new,
			   X509 **new_with_old, char *err, size_t errlen)
{
	struct cmp_txn t = {.req = req, .quiet = 1};
	struct enroll_result res = {0};
	STACK_OF(X509) *untrusted = NULL;
	STACK_OF(OSSL_CMP_ITAV) *itavs = NULL;
	ASN1_OBJECT *want = OBJ_txt2obj(OID_IT_ROOTCA_KEY_UPDATE, 1);
	OSSL_CMP_CTX *ctx = NULL;
	OSSL_CMP_ITAV *itav;
	ROOTCA_UPDATE *upd = NULL;
	const unsigned char *p;
	ASN1_TYPE *value = NULL;
	int i, r = 0;

	*new_with_new = *new_with_old = NULL;
	snprintf(err, errlen, "no answer");
	/*
	 * OpenSSL 3.0 keeps an InfoTypeAndValue of a type it does not know as ANY, which is
	 * what the code below builds and reads (3.0 names id-it-rootCaKeyUpdate but has no
	 * type for its value). From 3.2 on, where id-it-rootCaCert has a NID too, libcrypto
	 * keeps a certificate or its own RootCaKeyUpdateContent in that place instead: the
	 * same binary running on such a libcrypto (the soname is the same) must not hand it
	 * an ANY there. Skipped, said once per attempt at debug level.
	 */
	if (OBJ_txt2nid(OID_IT_ROOTCA_CERT) != NID_undef) {
		snprintf(err, errlen,
			 "not asked (this libcrypto, %s, has its own root CA key "
			 "update types; the agent was built for OpenSSL 3.0's)",
			 OpenSSL_version(OPENSSL_VERSION));
		ASN1_OBJECT_free(want);
		return 0;
	}
	if (want == NULL || req->kind != ENROLL_RENEW) {
		snprintf(err, errlen, "not asked (%s)",
			 want == NULL ? "out of memory" : "no current certificate");
		goto out;
	}
	if ((ctx = cmp_setup(req, &t, "genm", &untrusted, &res)) == NULL) {
		snprintf(err, errlen, "%s", res.msg); /* escaped by set_result() */
		goto out;
	}
	if ((itav = rootca_cert_itav(old_root)) == NULL ||
	    !OSSL_CMP_CTX_push0_genm_ITAV(ctx, itav)) {
		OSSL_CMP_ITAV_free(itav);
		snprintf(err, errlen, "cannot set up the request");
		goto out;
	}
	ERR_clear_error();
	cur_txn = &t;
	itavs = OSSL_CMP_exec_GENM_ses(ctx);
	cur_txn = NULL;
	if (itavs == NULL) {
		char ossl[256], raw[512];

		last_openssl_error(ossl, sizeof(ossl));
		if (t.signer_err[0] != '\0') {
			log_sanitize(t.signer_err, err, errlen); /* quotes the signer's name */
			r = -1;
		} else if (protection_failed()) {
			snprintf(err, errlen,
				 "the answer's protection does not verify against "
				 "ca-trust %s",
				 req->trust_file);
			r = -1;
		} else {
			/* An error message, HTTP error or timeout: a CA without the service. */
			snprintf(raw, sizeof(raw), "no genp: %s",
				 t.transport_err[0] != '\0' ? t.transport_err
				 : ossl[0] != '\0'	    ? ossl
							    : "no answer");
			log_sanitize(raw, err, errlen); /* OpenSSL's text quotes the CA's */
		}
		goto out;
	}
	snprintf(err, errlen, "the CA offers no root CA key update");
	for (i = 0; i < sk_OSSL_CMP_ITAV_num(itavs); i++) {
		itav = sk_OSSL_CMP_ITAV_value(itavs, i);
		if (OBJ_cmp(OSSL_CMP_ITAV_get0_type(itav), want) == 0) {
			value = OSSL_CMP_ITAV_get0_value(itav);
			break;
		}
	}
	if (i == sk_OSSL_CMP_ITAV_num(itavs) || value == NULL)
		goto out; /* absent, or present without a value: no update (RFC 9480 4.3) */
	if (value->type == V_ASN1_SEQUENCE && value->value.sequence != NULL) {
		/* ANY holding a SEQUENCE: the string is its whole encoding, and nothing else. */
		const ASN1_STRING *der = value->value.sequence;

		p = der->data;
		upd = (ROOTCA_UPDATE *)ASN1_item_d2i(NULL, &p, der->length,
						     ASN1_ITEM_rptr(ROOTCA_UPDATE));
		if (upd != NULL && p != der->data + der->length) {
			ASN1_item_free((ASN1_VALUE *)upd, ASN1_ITEM_rptr(ROOTCA_UPDATE));
			upd = NULL;
		}
	}
	if (upd == NULL) {
		snprintf(err, errlen, "the rootCaKeyUpdate value is not a RootCaKeyUpdateContent");
		r = -1;
		goto out;
	}
	*new_with_new = upd->new_with_new;
	*new_with_old = upd->new_with_old;
	upd->new_with_new = upd->new_with_old = NULL;
	r = 1;
out:
	ERR_clear_error();
	ASN1_item_free((ASN1_VALUE *)upd, ASN1_ITEM_rptr(ROOTCA_UPDATE));
	sk_OSSL_CMP_ITAV_pop_free(itavs, OSSL_CMP_ITAV_free);
	ASN1_OBJECT_free(want);
	sk_X509_pop_free(t.pins, X509_free);
	sk_X509_free(untrusted);
	if (t.curl != NULL)
		curl_easy_cleanup(t.curl);
	OSSL_CMP_CTX_free(ctx);
	return r;
}
