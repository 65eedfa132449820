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
		    STACK_OF(X509) **out, char *err, size_t errlen);

#endif
