/*
 * EST (RFC 7030) over libcurl: enroll_est() (declared in renew/enroll.h) and a cacerts
 * fetch for operators and tests.
 *
 * Transport decisions, for all EST requests:
 * - HTTPS only, TLS 1.2 or newer; the server certificate is checked against the trust
 *   file alone (libcurl's default CA bundle and CA path are switched off when a trust file
 *   is given) and its name against the URL's host. Redirects are not followed (a 3xx is
 *   reported).
 * - Proxies come from the environment as libcurl reads them (https_proxy, all_proxy,
 *   no_proxy), like curl, git and OpenSSL's own CMP client do; a daemon's environment is
 *   set by its administrator (systemd Environment=), so this is opt-in in practice.
 * - Every request is bounded by the caller's timeout (default 60 s); response bodies are
 *   capped at 1 MiB while they are received.
 * - curl_global_init() runs once, on first use; a program that uses libcurl elsewhere
 *   should call it itself before starting threads.
 *
 * enroll_est() hands commit() a chain it frees afterwards (commit up-refs what it keeps),
 * with the certificate for the CSR's public key first. A response without such a
 * certificate is ENROLL_BAD_CERT without calling commit(). A server that refuses the TLS
 * client certificate with an alert (bad/expired/revoked/unknown certificate, unknown CA,
 * access denied, certificate required) gives ENROLL_NOT_AUTHORIZED, like HTTP 401/403.
 */
#ifndef MTLS_AGENT_ENROLL_EST_H
#define MTLS_AGENT_ENROLL_EST_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "renew/enroll.h"

/*
 * GET URL/cacerts, where url is an EST base as for enroll_est (https://host[:port]/
 * .well-known/est[/label]). trust_file: PEM anchors for the server's TLS certificate
 * (NULL: libcurl's default store). timeout_s 0 means the default. On success *out holds
 * the certificates in the order the server sent them (free with sk_X509_pop_free) and 0
 * is returned; otherwise -1 and one line in err.
 */
int est_get_cacerts(const char *url, const char *trust_file, unsigned timeout_s,
		    STACK_OF(X509) * *out, char *err, size_t errlen);

/*
 * What enroll_est() and est_get_cacerts() do with the CA's answers, without the
 * transfer, for fuzz/est_answer_fuzzer.c. The answer is the CA's data: none of
 * these trusts it.
 *
 * est_parse_certs_only: the certificates of a certs-only PKCS#7, base64 (any
 * whitespace, no header checks: Content-Type and Content-Transfer-Encoding are
 * not looked at) or, leniently, binary DER; NULL when there are none (free with
 * sk_X509_pop_free).
 * est_put_leaf_first: moves the certificate for pub to the front; 0 when none is.
 * est_describe_cert: "serial HEX for SUBJECT", for messages.
 * est_body_first_line: the first line of a body, escaped with log_escape and
 * capped, for the message of a refusal.
 * est_header_line: one response header line as libcurl hands it over (with
 * CRLF); updates *retry_after_s (-1: no usable Retry-After).
 * est_parse_retry_after: a Retry-After value, seconds (capped at 30 days) or
 * an HTTP-date; -1 when neither.
 */
STACK_OF(X509) * est_parse_certs_only(const char *body, size_t len);
int est_put_leaf_first(STACK_OF(X509) * certs, EVP_PKEY *pub);
void est_describe_cert(X509 *x, char *out, size_t outlen);
void est_body_first_line(const char *resp, size_t resp_len, char *out, size_t outlen);
void est_header_line(const char *data, size_t len, long *retry_after_s);
long est_parse_retry_after(const char *value, size_t len);

#endif
