/* Certificate checks for import-cert (and later renewal). */
#ifndef MTLS_AGENT_CERTCHECK_H
#define MTLS_AGENT_CERTCHECK_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/x509.h>

/*
 * Parses a PEM chain (one or more CERTIFICATE blocks) or one DER
 * certificate. *chain gets the certificates in order, leaf first.
 */
int certcheck_parse_chain(const uint8_t *data, size_t len, STACK_OF(X509) * *chain, char *err,
			  size_t errlen);

/*
 * Checks a leaf is fit for TLS client authentication at time now:
 * extendedKeyUsage includes clientAuth, keyUsage includes digitalSignature,
 * notBefore <= now <= notAfter. Returns 0 or MTLS_AGENT_ERR_CERT with the
 * reason in err.
 */
int certcheck_leaf(X509 *leaf, time_t now, char *err, size_t errlen);

/* Each reason certcheck_leaf() refuses a certificate for, as a bit of certcheck_flaws(). */
#define CERTCHECK_BAD_EXTENSIONS 0x01u
#define CERTCHECK_NO_CLIENT_AUTH 0x02u
#define CERTCHECK_NO_DIGITAL_SIGNATURE 0x04u
#define CERTCHECK_NOT_YET_VALID 0x08u
#define CERTCHECK_EXPIRED 0x10u
#define CERTCHECK_TIME_FLAWS (CERTCHECK_NOT_YET_VALID | CERTCHECK_EXPIRED)

/*
 * All the reasons at once (certcheck_leaf() says the first), for a report that lists
 * every one (mtls-agentctl check); 0 when the certificate is fit at time now.
 */
unsigned certcheck_flaws(X509 *cert, time_t now);

/* Each certificate of the chain is issued (name and signature) by the next. */
int certcheck_chain_order(STACK_OF(X509) * chain, char *err, size_t errlen);

/* Whether issuer issued subject: names and signature (the rule of certcheck_chain_order). */
int certcheck_issued_by(X509 *subject, X509 *issuer);

/* DER SubjectPublicKeyInfo of a certificate (caller frees with OPENSSL_free). */
int certcheck_spki(X509 *cert, uint8_t **der, size_t *len);

/* notBefore / notAfter as seconds since the epoch; 0 on error. */
time_t certcheck_not_before(X509 *cert);
time_t certcheck_not_after(X509 *cert);

/*
 * A new stack holding (not owning) chain's certificates after the leaf: the
 * untrusted intermediates for a verification. NULL without memory.
 */
STACK_OF(X509) * certcheck_chain_rest(STACK_OF(X509) * chain);

#endif
