/*
 * Revocation awareness: the agent asks the OCSP responder (AIA) or fetches the
 * CRL (distribution points) named in its own certificate, over HTTP with
 * libcurl, and verifies the answer with OpenSSL. A revoked certificate makes
 * the identity re-enroll (renew/renew.c); an answer that cannot be had or
 * trusted is a warning only: the credential keeps being served.
 */
#ifndef MTLS_AGENT_REVOCATION_H
#define MTLS_AGENT_REVOCATION_H

#include <stddef.h>
#include <time.h>

#include <openssl/x509.h>

/* revocation-check: auto (OCSP if the certificate names a responder, else CRL), ocsp, crl, off. */
enum rev_mode { REV_AUTO = 0, REV_OCSP, REV_CRL, REV_OFF };

enum rev_status {
	REV_NOT_CHECKED = 0, /* auto, and the certificate names no source */
	REV_GOOD,
	REV_REVOKED,
	REV_UNKNOWN, /* no trustworthy answer: responder down, bad response, stale */
};

/* Default revocation-interval, and the retry backoff's first and longest delays. */
#define REV_DEFAULT_INTERVAL_S 3600
#define REV_RETRY_BASE_S 5
/* A response larger than this is refused before it is buffered (CRLs of big CAs fit). */
#define REV_OCSP_MAX (64 * 1024)
#define REV_CRL_MAX (8 * 1024 * 1024)

struct rev_result {
	int status;	    /* enum rev_status */
	int reason;	    /* CRL reason code (RFC 5280 5.3.1), -1 when none given */
	time_t revoked_at;  /* REV_REVOKED */
	time_t next_update; /* the source's nextUpdate, 0 when none */
	const char *source; /* "ocsp" or "crl" ("" when nothing was asked) */
	char msg[320];	    /* REV_UNKNOWN: why, one line */
};

/* "auto", "ocsp", "crl", "off" to enum rev_mode; -1 for anything else. */
int rev_mode_from_name(const char *name);

/*
 * Checks leaf (chain: leaf first, then its issuers as served) against the
 * sources mode allows; trust holds the identity's anchors, which an OCSP
 * responder's signature must chain to. Each transfer takes at most timeout_s.
 * Never fails as such: out->status says what was learnt.
 */
void rev_check(STACK_OF(X509) * chain, X509_STORE *trust, int mode, unsigned timeout_s, time_t now,
	       struct rev_result *out);

/*
 * The anchors for an identity without ca-trust: the certificate that issued the leaf in
 * chain (its signature checked), alone, as a partial-chain anchor. The issuer is the
 * authority for its own certificates' status (RFC 5280 6.3, RFC 6960 4.2.2.2): a CRL or
 * an OCSP response counts only when it or a responder it certified for OCSP signing
 * signed it. An empty store when the chain does not hold the issuer (rev_check then says
 * so); NULL only when out of memory.
 */
X509_STORE *rev_issuer_store(STACK_OF(X509) * chain);

/*
 * Whether rev_check has anything to do for leaf: an explicit mode always (a certificate
 * without the source is a warning), auto when the certificate names a source.
 */
int rev_wanted(X509 *leaf, int mode);

/* The name of an RFC 5280 reason code ("keyCompromise"), "unspecified" for unknown codes. */
const char *rev_reason_name(int reason);

/*
 * When to check again (pure, for unit tests): after good or revoked, the
 * interval minus up to 10% at random (random01 in [0, 1)), never later than
 * a nextUpdate still ahead; after `failures` unknown answers in a row, a
 * full-jitter backoff from REV_RETRY_BASE_S doubling up to the interval.
 * Always at least 1 s after now.
 */
time_t rev_next_check(time_t now, int status, unsigned failures, long interval_s,
		      time_t next_update, double random01);

#endif
