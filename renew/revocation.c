/*
 * Revocation checks of the agent's own certificates (see renew/revocation.h):
 * OCSP (RFC 6960) by POST, CRL (RFC 5280) by GET, both over libcurl with a
 * timeout and a size cap, both verified against the identity's anchors and
 * the issuer in its chain before anything is believed.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "common/log.h"
#include "renew/enroll.h"
#include "renew/revocation.h"

/* Clock difference tolerated between us and the responder or CRL issuer. */
#define REV_SKEW_S 300
/* An OCSP response with neither our nonce nor a nextUpdate must be this fresh. */
#define REV_OCSP_MAXAGE_S 3600

const char *rev_reason_name(int reason)
{
	static const char *const names[] = {
		"unspecified",	 "keyCompromise",	 "cACompromise",    "affiliationChanged",
		"superseded",	 "cessationOfOperation", "certificateHold", "unused",
		"removeFromCRL", "privilegeWithdrawn",	 "aACompromise",
	};

	if (reason < 0 || (size_t)reason >= sizeof(names) / sizeof(names[0]))
		return "unspecified";
	return names[reason];
}

time_t rev_next_check(time_t now, int status, unsigned failures, long interval_s,
		      time_t next_update, double random01)
{
	double upper;
	time_t next;

	if (interval_s < 1)
		interval_s = 1;
	if (status == REV_UNKNOWN) {
		/* Full jitter over [1 s, min(interval, base * 2^(failures-1))]. */
		upper = REV_RETRY_BASE_S;
		while (failures-- > 1 && upper < (double)interval_s)
			upper *= 2;
		if (upper > (double)interval_s)
			upper = (double)interval_s;
		next = now + 1 + (time_t)(random01 * (upper - 1));
	} else {
		/* Up to 10% early: a fleet started at once does not ask at once. */
		next = now + interval_s - (time_t)(random01 * (double)interval_s / 10);
		if (next_update > now && next_update < next)
			next = next_update;
	}
	return next > now ? next : now + 1;
}

/* ---- HTTP ------------------------------------------------------------------------------ */

struct body {
	unsigned char *data;
	size_t len, cap; /* cap: the most that is ever buffered */
	int too_big;
};

static size_t collect(char *data, size_t size, size_t count, void *arg)
{
	struct body *b = arg;
	size_t len = size * count; /* size is always 1 */
	unsigned char *grown;

	if (len > b->cap - b->len) {
		b->too_big = 1;
		return 0; /* aborts the transfer */
	}
	if ((grown = realloc(b->data, b->len + len)) == NULL)
		return 0;
	memcpy(grown + b->len, data, len);
	b->data = grown;
	b->len += len;
	return len;
}

/*
 * GET url, or POST post (content type ctype) to it; the 200 answer's body in
 * b (at most b->cap bytes). Returns 0, or -1 with one line in err.
 */
static int http_fetch(const char *url, const unsigned char *post, size_t post_len,
		      const char *ctype, unsigned timeout_s, struct body *b, char *err,
		      size_t errlen)
{
	char curl_err[CURL_ERROR_SIZE] = "", header[128];
	struct curl_slist *headers = NULL;
	long status = 0;
	CURLcode rc;
	CURL *curl;

	if ((curl = curl_easy_init()) == NULL) {
		snprintf(err, errlen, "cannot start a transfer");
		return -1;
	}
	snprintf(header, sizeof(header), "Content-Type: %s", ctype != NULL ? ctype : "");
	rc = curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	rc |= curl_easy_setopt(curl, CURLOPT_URL, url);
	rc |= curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_err);
	rc |= curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	rc |= curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
	rc |= curl_easy_setopt(curl, CURLOPT_TIMEOUT, (long)timeout_s);
	rc |= curl_easy_setopt(curl, CURLOPT_USERAGENT, "mtls-agent/" PACKAGE_VERSION);
	/* A stopping agent does not wait for a slow responder. */
	rc |= curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, enroll_curl_progress);
	rc |= curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
	rc |= curl_easy_setopt(curl, CURLOPT_MAXFILESIZE, (long)b->cap);
	rc |= curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
	rc |= curl_easy_setopt(curl, CURLOPT_WRITEDATA, b);
	if (post != NULL) {
		headers = curl_slist_append(NULL, header);
		rc |= curl_easy_setopt(curl, CURLOPT_POSTFIELDS, post);
		rc |= curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)post_len);
		rc |= curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	}
	if (rc != CURLE_OK || (post != NULL && headers == NULL))
		snprintf(err, errlen, "cannot set up the transfer");
	else if ((rc = curl_easy_perform(curl)) != CURLE_OK)
		/* curl quotes the URL's host, which the certificate (its CA) chose: data. */
		log_sanitize(b->too_big	   ? "response larger than the cap"
			     : curl_err[0] ? curl_err
					   : curl_easy_strerror(rc),
			     err, errlen);
	else if (curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK ||
		 status != 200)
		snprintf(err, errlen, "HTTP status %ld", status);
	else
		err[0] = '\0';
	curl_slist_free_all(headers);
	curl_easy_cleanup(curl);
	return err[0] == '\0' ? 0 : -1;
}

/* ---- sources named in the certificate --------------------------------------------------- */

static int http_url(const char *s)
{
	return strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0;
}

/* The first http(s) OCSP responder of the AIA; caller frees. */
static char *ocsp_url(X509 *leaf)
{
	STACK_OF(OPENSSL_STRING) *urls = X509_get1_ocsp(leaf);
	char *url = NULL;
	int i;

	for (i = 0; url == NULL && i < sk_OPENSSL_STRING_num(urls); i++)
		if (http_url(sk_OPENSSL_STRING_value(urls, i)))
			url = strdup(sk_OPENSSL_STRING_value(urls, i));
	X509_email_free(urls);
	return url;
}

/* The first http(s) URI among the CRL distribution points' full names; caller frees. */
static char *crl_url(X509 *leaf)
{
	STACK_OF(DIST_POINT) *dps = X509_get_ext_d2i(leaf, NID_crl_distribution_points, NULL, NULL);
	char *url = NULL;
	int i, k;

	for (i = 0; url == NULL && i < sk_DIST_POINT_num(dps); i++) {
		DIST_POINT_NAME *dpn = sk_DIST_POINT_value(dps, i)->distpoint;

		if (dpn == NULL || dpn->type != 0)
			continue;
		for (k = 0; url == NULL && k < sk_GENERAL_NAME_num(dpn->name.fullname); k++) {
			GENERAL_NAME *gn = sk_GENERAL_NAME_value(dpn->name.fullname, k);
			const char *s;

			if (gn->type != GEN_URI)
				continue;
			s = (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
			if (http_url(s) && strlen(s) == (size_t)ASN1_STRING_length(
								gn->d.uniformResourceIdentifier))
				url = strdup(s);
		}
	}
	sk_DIST_POINT_pop_free(dps, DIST_POINT_free);
	return url;
}

int rev_wanted(X509 *leaf, int mode)
{
	char *ocsp, *crl;
	int r;

	if (leaf == NULL || mode == REV_OFF)
		return 0;
	if (mode != REV_AUTO)
		return 1;
	ocsp = ocsp_url(leaf);
	crl = crl_url(leaf);
	r = ocsp != NULL || crl != NULL;
	free(ocsp);
	free(crl);
	return r;
}

/* The certificate that issued leaf: the next one in the chain, else an anchor. */
static X509 *find_issuer(STACK_OF(X509) * chain, X509_STORE *trust, X509 *leaf)
{
	STACK_OF(X509_OBJECT) * objs;
	X509 *c;
	int i;

	/* Names and key identifiers match any look-alike: the signature decides. */
	for (i = 1; i < sk_X509_num(chain); i++) {
		c = sk_X509_value(chain, i);
		if (X509_check_issued(c, leaf) == X509_V_OK &&
		    X509_verify(leaf, X509_get0_pubkey(c)) == 1)
			return c;
	}
	objs = X509_STORE_get0_objects(trust);
	for (i = 0; i < sk_X509_OBJECT_num(objs); i++) {
		c = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));
		if (c != NULL && X509_check_issued(c, leaf) == X509_V_OK &&
		    X509_verify(leaf, X509_get0_pubkey(c)) == 1)
			return c;
	}
	ERR_clear_error();
	return NULL;
}

X509_STORE *rev_issuer_store(STACK_OF(X509) * chain)
{
	X509_STORE *store = X509_STORE_new(), *none = X509_STORE_new();
	X509 *issuer;

	if (store == NULL || none == NULL) {
		X509_STORE_free(store);
		X509_STORE_free(none);
		return NULL;
	}
	/* Only in the chain: an empty store adds no anchor to look in. */
	issuer = sk_X509_num(chain) > 0 ? find_issuer(chain, none, sk_X509_value(chain, 0)) : NULL;
	X509_STORE_free(none);
	/*
	 * The issuer is usually an intermediate: a responder's certificate chains to it and
	 * stops there (partial chain), never to whatever root the chain goes on to.
	 */
	if ((issuer != NULL && X509_STORE_add_cert(store, issuer) != 1) ||
	    X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN) != 1) {
		X509_STORE_free(store);
		store = NULL;
	}
	ERR_clear_error();
	return store;
}

static time_t asn1_time(const ASN1_TIME *t)
{
	struct tm tm;

	if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return timegm(&tm);
}

static void set_unknown(struct rev_result *out, const char *source, const char *what,
			const char *detail)
{
	out->status = REV_UNKNOWN;
	out->source = source;
	snprintf(out->msg, sizeof(out->msg), "%s%s", what, detail);
}

/* ---- OCSP ------------------------------------------------------------------------------ */

/* Reads a verified basic response's answer about id into out. */
static void ocsp_read_status(OCSP_BASICRESP *bs, OCSP_CERTID *id, OCSP_REQUEST *req,
			     struct rev_result *out)
{
	ASN1_GENERALIZEDTIME *rev = NULL, *thisupd = NULL, *nextupd = NULL;
	int status, reason = -1, nonce = OCSP_check_nonce(req, bs);

	if (nonce == 0) {
		set_unknown(out, "ocsp", "bad response: ", "the nonce is not ours (a replay?)");
		return;
	}
	if (!OCSP_resp_find_status(bs, id, &status, &reason, &rev, &thisupd, &nextupd)) {
		set_unknown(out, "ocsp", "bad response: ", "no answer about this certificate");
		return;
	}
	/* Without our nonce only the times say the answer is current. */
	if (!OCSP_check_validity(thisupd, nextupd, REV_SKEW_S,
				 nonce == 1 || nextupd != NULL ? -1 : REV_OCSP_MAXAGE_S)) {
		set_unknown(out, "ocsp",
			    "bad response: ", "stale or not yet valid (thisUpdate/nextUpdate)");
		return;
	}
	out->source = "ocsp";
	out->next_update = asn1_time(nextupd);
	if (status == V_OCSP_CERTSTATUS_GOOD) {
		out->status = REV_GOOD;
	} else if (status == V_OCSP_CERTSTATUS_REVOKED) {
		out->status = REV_REVOKED;
		out->reason = reason;
		out->revoked_at = asn1_time(rev);
	} else {
		set_unknown(out, "ocsp", "", "the responder does not know this certificate");
	}
}

/* Parses and verifies a DER OCSPResponse for req into out. */
static void ocsp_read(const struct body *b, OCSP_REQUEST *req, OCSP_CERTID *id,
		      STACK_OF(X509) * chain, X509_STORE *trust, struct rev_result *out)
{
	const unsigned char *p = b->data;
	OCSP_RESPONSE *resp = d2i_OCSP_RESPONSE(NULL, &p, (long)b->len);
	OCSP_BASICRESP *bs = NULL;
	int st;

	if (resp == NULL) {
		set_unknown(out, "ocsp", "bad response: ", "not an OCSP response");
	} else if ((st = OCSP_response_status(resp)) != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
		set_unknown(out, "ocsp", "responder refused: ", OCSP_response_status_str(st));
	} else if ((bs = OCSP_response_get1_basic(resp)) == NULL) {
		set_unknown(out, "ocsp", "bad response: ", "not a basic OCSP response");
	} else if (OCSP_basic_verify(bs, chain, trust, 0) <= 0) {
		/* The CA itself or a delegate it certified for OCSP signing, chaining to ca-trust.
		 */
		set_unknown(out, "ocsp", "bad response: ",
			    "signature not by the issuing CA or its OCSP responder");
	} else {
		ocsp_read_status(bs, id, req, out);
	}
	OCSP_BASICRESP_free(bs);
	OCSP_RESPONSE_free(resp);
}

static void ocsp_check(const char *url, X509 *leaf, X509 *issuer, STACK_OF(X509) * chain,
		       X509_STORE *trust, unsigned timeout_s, struct rev_result *out)
{
	struct body b = {.cap = REV_OCSP_MAX};
	OCSP_REQUEST *req = OCSP_REQUEST_new();
	OCSP_CERTID *id = OCSP_cert_to_id(NULL, leaf, issuer), *id_copy = NULL;
	unsigned char *der = NULL;
	char err[256];
	int len = -1;

	if (req != NULL && id != NULL && (id_copy = OCSP_CERTID_dup(id)) != NULL &&
	    OCSP_request_add0_id(req, id_copy) != NULL) {
		id_copy = NULL; /* the request owns it now */
		if (OCSP_request_add1_nonce(req, NULL, -1))
			len = i2d_OCSP_REQUEST(req, &der);
	}
	if (len <= 0)
		set_unknown(out, "ocsp", "cannot make the request: ", "out of memory");
	else if (http_fetch(url, der, (size_t)len, "application/ocsp-request", timeout_s, &b, err,
			    sizeof(err)) != 0)
		set_unknown(out, "ocsp", "responder unreachable: ", err);
	else
		ocsp_read(&b, req, id, chain, trust, out);
	OPENSSL_free(der);
	free(b.data);
	OCSP_CERTID_free(id_copy);
	OCSP_CERTID_free(id);
	OCSP_REQUEST_free(req);
	ERR_clear_error();
}

/* ---- CRL ------------------------------------------------------------------------------- */

static X509_CRL *crl_parse(const struct body *b)
{
	const unsigned char *p = b->data;
	X509_CRL *crl;
	BIO *bio;

	if (b->len > 10 && memcmp(b->data, "-----BEGIN", 10) == 0) {
		if ((bio = BIO_new_mem_buf(b->data, (int)b->len)) == NULL)
			return NULL;
		crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
		BIO_free(bio);
		return crl;
	}
	return d2i_X509_CRL(NULL, &p, (long)b->len);
}

/*
 * Whether the distribution point an issuingDistributionPoint names includes url, the one
 * the certificate names and the CRL came from (RFC 5280 6.3.3 b.2.i; names relative to the
 * CRL issuer are not URIs and never match).
 */
static int idp_names_url(const DIST_POINT_NAME *dp, const char *url)
{
	if (dp->type != 0)
		return 0;
	for (int i = 0; i < sk_GENERAL_NAME_num(dp->name.fullname); i++) {
		const GENERAL_NAME *gn = sk_GENERAL_NAME_value(dp->name.fullname, i);
		const ASN1_IA5STRING *uri =
			gn->type == GEN_URI ? gn->d.uniformResourceIdentifier : NULL;

		if (uri != NULL && (size_t)uri->length == strlen(url) &&
		    memcmp(uri->data, url, strlen(url)) == 0)
			return 1;
	}
	return 0;
}

/*
 * Why crl, fetched from url, cannot say that our certificate is not revoked, or NULL.
 * Only a complete CRL of the issuer for that distribution point counts: a delta CRL, one
 * limited by its issuingDistributionPoint (to CA certificates, some reasons, attribute
 * certificates, another distribution point of a partitioned CRL) or an indirect one may
 * leave our serial out although it is revoked (RFC 5280 5.2.4, 5.2.5, 6.3.3), and an
 * attacker on the plain-http path could serve such a genuine CRL in place of ours.
 */
static const char *crl_scope_problem(X509_CRL *crl, const char *url)
{
	const STACK_OF(X509_EXTENSION) *exts = X509_CRL_get0_extensions(crl);
	ISSUING_DIST_POINT *idp;
	const char *why = NULL;
	int i, nid, crit = -1;

	for (i = 0; i < sk_X509_EXTENSION_num(exts); i++) {
		X509_EXTENSION *ext = sk_X509_EXTENSION_value(exts, i);

		nid = OBJ_obj2nid(X509_EXTENSION_get_object(ext));
		if (nid == NID_delta_crl)
			return "a delta CRL";
		if (X509_EXTENSION_get_critical(ext) && nid != NID_issuing_distribution_point)
			return "an unknown critical extension";
	}
	idp = X509_CRL_get_ext_d2i(crl, NID_issuing_distribution_point, &crit, NULL);
	if (idp == NULL)
		return crit == -1 ? NULL : "an unreadable issuingDistributionPoint";
	if (idp->onlyCA > 0 || idp->onlyattr > 0)
		why = "a CRL for CA or attribute certificates only";
	else if (idp->onlysomereasons != NULL)
		why = "a CRL for some revocation reasons only";
	else if (idp->indirectCRL > 0)
		why = "an indirect CRL";
	else if (idp->distpoint != NULL && !idp_names_url(idp->distpoint, url))
		why = "a CRL for another distribution point (its issuingDistributionPoint does not "
		      "name the URL in the certificate)";
	ISSUING_DIST_POINT_free(idp);
	return why;
}

/* Whether crl, fetched from url, is issuer's, complete and current; else sets out to unknown. */
static int crl_trusted(X509_CRL *crl, const char *url, X509 *issuer, time_t now,
		       struct rev_result *out)
{
	time_t this_upd = asn1_time(X509_CRL_get0_lastUpdate(crl));
	time_t next_upd = asn1_time(X509_CRL_get0_nextUpdate(crl));
	const char *scope;

	if (X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(issuer)) != 0 ||
	    X509_CRL_verify(crl, X509_get0_pubkey(issuer)) != 1)
		set_unknown(out, "crl", "bad CRL: ", "not signed by the certificate's issuer");
	else if ((scope = crl_scope_problem(crl, url)) != NULL)
		set_unknown(out, "crl", "bad CRL: ", scope);
	else if (this_upd == 0 || this_upd > now + REV_SKEW_S)
		set_unknown(out, "crl", "bad CRL: ", "thisUpdate missing or in the future");
	else if (X509_CRL_get0_nextUpdate(crl) != NULL && next_upd + REV_SKEW_S < now)
		set_unknown(out, "crl", "bad CRL: ", "stale (nextUpdate has passed)");
	else if (X509_CRL_get0_nextUpdate(crl) == NULL && now - this_upd > REV_OCSP_MAXAGE_S)
		/* Issuers MUST set nextUpdate (RFC 5280 5.1.2.5): else only its age bounds a
		 * replay. */
		set_unknown(out, "crl", "bad CRL: ", "no nextUpdate and older than an hour");
	else
		return 1;
	ERR_clear_error();
	return 0;
}

static void crl_read_status(X509_CRL *crl, X509 *leaf, struct rev_result *out)
{
	X509_REVOKED *rev = NULL;
	ASN1_ENUMERATED *code;

	out->source = "crl";
	out->next_update = asn1_time(X509_CRL_get0_nextUpdate(crl));
	/* 2: listed as removeFromCRL (a hold lifted), which is good again. */
	if (X509_CRL_get0_by_cert(crl, &rev, leaf) != 1) {
		out->status = REV_GOOD;
		return;
	}
	out->status = REV_REVOKED;
	out->revoked_at = asn1_time(X509_REVOKED_get0_revocationDate(rev));
	if ((code = X509_REVOKED_get_ext_d2i(rev, NID_crl_reason, NULL, NULL)) != NULL) {
		out->reason = (int)ASN1_ENUMERATED_get(code);
		ASN1_ENUMERATED_free(code);
	}
}

static void crl_check(const char *url, X509 *leaf, X509 *issuer, unsigned timeout_s, time_t now,
		      struct rev_result *out)
{
	struct body b = {.cap = REV_CRL_MAX};
	X509_CRL *crl = NULL;
	char err[256];

	if (http_fetch(url, NULL, 0, NULL, timeout_s, &b, err, sizeof(err)) != 0)
		set_unknown(out, "crl", "CRL unreachable: ", err);
	else if ((crl = crl_parse(&b)) == NULL)
		set_unknown(out, "crl", "bad CRL: ", "neither DER nor PEM");
	else if (crl_trusted(crl, url, issuer, now, out))
		crl_read_status(crl, leaf, out);
	X509_CRL_free(crl);
	free(b.data);
	ERR_clear_error();
}

/* ---- both ------------------------------------------------------------------------------ */

/* The responder first (fresher, smaller); a CRL answers when it cannot (auto mode). */
static void check_sources(const char *ocsp, const char *crl, X509 *leaf, X509 *issuer,
			  STACK_OF(X509) * chain, X509_STORE *trust, unsigned timeout_s, time_t now,
			  struct rev_result *out)
{
	char first[sizeof(out->msg)] = "", second[sizeof(out->msg)];

	if (ocsp != NULL) {
		ocsp_check(ocsp, leaf, issuer, chain, trust, timeout_s, out);
		if (out->status != REV_UNKNOWN || crl == NULL)
			return;
		snprintf(first, sizeof(first), "%s", out->msg);
	}
	crl_check(crl, leaf, issuer, timeout_s, now, out);
	if (out->status == REV_UNKNOWN && first[0] != '\0') {
		/* Neither answered: both reasons, the preferred source's first. */
		snprintf(second, sizeof(second), "%s", out->msg);
		snprintf(out->msg, sizeof(out->msg), "%.200s; %.110s", first, second);
	}
}

void rev_check(STACK_OF(X509) * chain, X509_STORE *trust, int mode, unsigned timeout_s, time_t now,
	       struct rev_result *out)
{
	X509 *leaf = sk_X509_value(chain, 0), *issuer;
	char *ocsp = NULL, *crl = NULL;

	memset(out, 0, sizeof(*out));
	out->reason = -1;
	out->source = "";
	if (leaf == NULL || mode == REV_OFF)
		return;
	if (mode != REV_CRL)
		ocsp = ocsp_url(leaf);
	if (mode != REV_OCSP)
		crl = crl_url(leaf);
	if (ocsp == NULL && crl == NULL) {
		if (mode != REV_AUTO)
			set_unknown(out, mode == REV_OCSP ? "ocsp" : "crl", "",
				    mode == REV_OCSP
					    ? "the certificate names no OCSP responder"
					    : "the certificate names no CRL distribution point");
	} else if ((issuer = find_issuer(chain, trust, leaf)) == NULL) {
		set_unknown(out, "", "",
			    "the certificate's issuer is neither in its chain nor an anchor");
	} else {
		check_sources(ocsp, crl, leaf, issuer, chain, trust, timeout_s, now, out);
	}
	free(ocsp);
	free(crl);
}
