/*
 * PKCS#10 certificate requests signed inside a keystore. Internal path for
 * keygen/csr/renewal: never reachable from the application socket.
 */
#ifndef MTLS_KEYSTORE_CSR_H
#define MTLS_KEYSTORE_CSR_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "keystore/keystore.h"

/*
 * Builds a DER certificate request for key, signed with ks_sign() and
 * checked against key->pub before it is returned.
 *
 * subject: "/CN=a/O=b" (OpenSSL style, encoded in the order written) or
 * "CN=a,O=b" (RFC 4514 style: the last RDN is encoded first, so this is
 * O=b then CN=a); a backslash makes the next character literal ("\," or
 * "\/"). Attribute names: CN C ST L O OU DC UID emailAddress serialNumber
 * street title SN GN initials pseudonym postalCode (case-insensitive).
 * sans: "DNS:name", "IP:1.2.3.4" or an IPv6 address, "URI:uri",
 * "email:addr".
 *
 * Requested extensions: subjectAltName (when sans are given),
 * extendedKeyUsage clientAuth, keyUsage critical digitalSignature.
 * Signature: ecdsa-with-SHA256/384/512 by curve, sha256WithRSAEncryption,
 * or Ed25519. *der is the caller's to free(). Returns 0 or a negative
 * MTLS_AGENT_ERR_* code with one line in err.
 */
int csr_build(struct keystore *ks, struct ks_key *key, const char *subject, const char *const *sans,
	      size_t n_sans, uint8_t **der, size_t *der_len, char *err, size_t errlen);

/* The same request from a parsed subject and subjectAltNames (sans may be NULL). */
int csr_build_name(struct keystore *ks, struct ks_key *key, const X509_NAME *name,
		   const GENERAL_NAMES *sans, uint8_t **der, size_t *der_len, char *err,
		   size_t errlen);

/* Parses a subject as csr_build() takes it; *out is the caller's. 0 or an error with err. */
int csr_parse_subject(const char *subject, X509_NAME **out, char *err, size_t errlen);

#endif
