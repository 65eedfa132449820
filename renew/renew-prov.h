/*
 * Keystore keys as EVP_PKEYs for the agent's own use (renewal: CMP
 * protection and proof of possession, CSRs, the EST client's TLS
 * handshake). The provider code that applications load is registered here a
 * second time, as a built-in provider of a private library context, with a
 * transport that calls the keystore directly. Its signatures never pass the
 * application socket and are not subject to any identity's sign-policy.
 */
#ifndef MTLS_AGENT_RENEW_PROV_H
#define MTLS_AGENT_RENEW_PROV_H

#include <stddef.h>

#include <openssl/evp.h>

#include "agent/state.h"

/* Creates the library context (default provider + ours). Returns 0 or -1 with err. */
int renew_prov_init(char *err, size_t errlen);
void renew_prov_cleanup(void);
OSSL_LIB_CTX *renew_prov_libctx(void);

/* The runtime whose identities keys are resolved in (a reference is taken; NULL drops it). */
void renew_prov_set_runtime(struct runtime *rt);

/* An EVP_PKEY for one key generation of identity id, or NULL with err set. */
EVP_PKEY *renew_prov_key(struct identity_rt *id, struct ks_key *key, char *err, size_t errlen);

#endif
