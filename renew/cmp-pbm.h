/*
 * Re-protection of a PasswordBasedMac-protected CMP request with a high
 * iteration count (RFC 4210 5.1.3.1). OpenSSL 3.0's CMP client fixes the
 * count at 500 and has no setter; the transfer callback passes each request
 * through cmp_pbm_reprotect() before it is sent.
 */
#ifndef MTLS_RENEW_CMP_PBM_H
#define MTLS_RENEW_CMP_PBM_H

#include <stddef.h>

#include <openssl/types.h>

/*
 * The highest count a verifier built on OpenSSL 3.0 accepts: OSSL_CRMF_pbm_new()
 * refuses more than OSSL_CRMF_PBM_MAX_ITERATION_COUNT (100000, an internal
 * constant of crypto/crmf), so `openssl cmp` servers and OpenSSL-based CAs
 * would reject anything above it. 200 times OpenSSL's default of 500.
 */
#define CMP_PBM_ITERATIONS 100000

/* The salt length OpenSSL's own client uses (RFC 4211 4.4: at least 8 octets). */
#define CMP_PBM_SALT_LEN 16

/*
 * If der is a PKIMessage protected by id-PasswordBasedMac, builds a copy with
 * fresh PBMParameter (new salt, the same owf and mac algorithms, iterations
 * as given) and the MAC recomputed with the secret; nothing else changes
 * (checked). Returns 1 with *out (OPENSSL_free) and *out_len set; 0 when the
 * message is not PBM-protected (send it as it is); -1 on error, with a reason
 * in err.
 */
int cmp_pbm_reprotect(OSSL_LIB_CTX *libctx, const char *propq, const unsigned char *der,
		      size_t der_len, const unsigned char *secret, size_t secret_len,
		      long iterations, unsigned char **out, size_t *out_len, char *err,
		      size_t err_len);

/* The iterationCount of a PBM-protected PKIMessage, or -1 if it is none. */
long cmp_pbm_iterations(const unsigned char *der, size_t der_len);

#endif
