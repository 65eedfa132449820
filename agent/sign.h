/*
 * The agent's one signing path: a client's SIGN (agent/dispatch.c) and the
 * renewal's own signatures through the in-daemon provider transport
 * (renew/renew-prov.c) both end here, so the input cap, the scheme checks,
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

/* Where identity_sign() stopped, for the caller's refusal log and audit trail. */
enum sign_result {
	SIGN_DONE,	      /* signed */
	SIGN_BAD_REQUEST,     /* a check failed (size, scheme, digest); nothing counted */
	SIGN_REFUSED,	      /* the sign-policy refused (SIGN_CLIENT only); counted */
	SIGN_KEYSTORE_FAILED, /* the keystore failed; counted, and logged for a client */
};

/*
 * Signs data with key, one generation of identity id (the caller resolved
 * it), with scheme. flags: MTLS_AGENT_SIGN_DIGEST when data is the digest.
 * Checks, in this order: data within PROTO_MAX_SIGN_INPUT; the scheme fits
 * the key; for SIGN_CLIENT the identity's sign-policy; a digest only for a
 * scheme that hashes, and of its length. Then hashes if needed and signs.
 *
 * For SIGN_CLIENT it also keeps the identity's counters and metrics:
 * signatures, refusals, keystore errors and the keystore's signing time.
 *
 * Returns 0 with *sig (malloc'ed) and *siglen, or a negative MTLS_AGENT_ERR_*
 * code with one line in err (the keystore's own words for
 * SIGN_KEYSTORE_FAILED). *outcome (if not NULL) says where it stopped; on
 * SIGN_REFUSED *refusal (if not NULL) is the policy's static reason.
 */
int identity_sign(struct identity_rt *id, struct ks_key *key, const struct scheme *scheme,
		  unsigned flags, const uint8_t *data, size_t len, enum sign_origin origin,
		  uint8_t **sig, size_t *siglen, enum sign_result *outcome, const char **refusal,
		  char *err, size_t errlen);

#endif
