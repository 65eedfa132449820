/*
 * The agent's one signing path: a client's SIGN (agent/dispatch.c) and the
 * renewal's own signatures through the in-daemon provider transport
 * (agent/renew-prov.c) both end here, so the input cap, the scheme checks,
 * the hashing and the counters cannot drift apart.
 */
#ifndef MTLS_AGENT_SIGN_H
#define MTLS_AGENT_SIGN_H

#include <stddef.h>
#include <stdint.h>

#include "agent/state.h"
#include "common/scheme.h"

enum sign_origin {
	/* A client over the socket: the identity's sign-policy applies and the
	 * identity's "signatures"/"refused" counters count it. */
	SIGN_CLIENT,
	/* The agent's own renewal (CSR, CMP protection, EST handshake): no
	 * sign-policy, not counted as a client signature. */
	SIGN_RENEWAL,
};

/*
 * Signs data with key, one generation of identity id (the caller resolved
 * it), with scheme. flags: MTLS_AGENT_SIGN_DIGEST when data is the digest.
 * Checks, in this order: data within PROTO_MAX_SIGN_INPUT; the scheme fits
 * the key; for SIGN_CLIENT the identity's sign-policy; a digest only for a
 * scheme that hashes, and of its length. Then hashes if needed and signs.
 *
 * Returns 0 with *sig (malloc'ed) and *siglen, or a negative MTLS_AGENT_ERR_*
 * code with one line in err (a keystore failure prefixed with the identity;
 * a client's is also logged as a warning). On MTLS_AGENT_ERR_POLICY
 * *refusal (if not NULL) is set to the policy's static reason, for the
 * caller's refusal log.
 */
int identity_sign(struct identity_rt *id, struct ks_key *key, const struct scheme *scheme,
		  unsigned flags, const uint8_t *data, size_t len, enum sign_origin origin,
		  uint8_t **sig, size_t *siglen, const char **refusal, char *err, size_t errlen);

#endif
