/*
 * Sign-policy: what content an identity's key may sign for applications.
 * A pure function of (policy, bytes), so it is unit-tested and fuzzed alone.
 */
#ifndef MTLS_AGENT_POLICY_H
#define MTLS_AGENT_POLICY_H

#include <stddef.h>
#include <stdint.h>

/* TLS 1.3 client CertificateVerify content: 64 spaces, the context string, a NUL. */
#define TLS13_CV_PREFIX_LEN (64 + 33 + 1)

/*
 * Returns 0 if the identity's policy (enum sign_policy) allows signing
 * data; otherwise MTLS_AGENT_ERR_POLICY with *reason set to a static
 * description. is_digest: data is a pre-computed hash.
 */
int policy_check(int policy, const uint8_t *data, size_t len, int is_digest, const char **reason);

/* The two recognisers, exposed for tests. */
int policy_is_tls13_client_cv(const uint8_t *data, size_t len);
int policy_is_tls12_client_transcript(const uint8_t *data, size_t len, const char **reason);

#endif
