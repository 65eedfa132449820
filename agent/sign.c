#include "config.h"

#include <stdio.h>

#include "agent/metrics.h"
#include "agent/policy.h"
#include "agent/sign.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/util.h"
#include "mtls-agent/client.h"

int identity_sign(struct identity_rt *id, struct ks_key *key, const struct scheme *scheme,
		  unsigned flags, const uint8_t *data, size_t len, enum sign_origin origin,
		  uint8_t **sig, size_t *siglen, enum sign_result *outcome, const char **refusal,
		  char *err, size_t errlen)
{
	const char *name = id->cfg->name, *reason;
	int is_digest = (flags & MTLS_AGENT_SIGN_DIGEST) != 0;
	const uint8_t *input = data;
	size_t input_len = len;
	enum sign_result dummy;
	uint8_t digest[64];
	uint64_t t0;
	int r;

	if (outcome == NULL)
		outcome = &dummy;
	*outcome = SIGN_BAD_REQUEST;
	*sig = NULL;
	*siglen = 0;
	if (refusal != NULL)
		*refusal = NULL;
	if (len > PROTO_MAX_SIGN_INPUT) {
		snprintf(err, errlen, "message over %u bytes", PROTO_MAX_SIGN_INPUT);
		return MTLS_AGENT_ERR_TOO_LARGE;
	}
	if (!ks_key_fits_scheme(key, scheme)) {
		snprintf(err, errlen, "scheme %s does not fit the %u-bit key of identity \"%s\"",
			 scheme->name, key->bits, name);
		return MTLS_AGENT_ERR_SCHEME;
	}
	if (origin == SIGN_CLIENT &&
	    policy_check(id->cfg->sign_policy, data, len, is_digest, &reason) != 0) {
		atomic_fetch_add(&id->n_refused, 1);
		*outcome = SIGN_REFUSED;
		if (refusal != NULL)
			*refusal = reason;
		snprintf(err, errlen, "identity \"%s\" (sign-policy %s): %s", name,
			 sign_policy_name(id->cfg->sign_policy), reason);
		return MTLS_AGENT_ERR_POLICY;
	}
	if (is_digest) {
		if (scheme->hash_len == 0) {
			snprintf(err, errlen, "%s signs messages, not digests", scheme->name);
			return MTLS_AGENT_ERR_SCHEME;
		}
		if (len != scheme->hash_len) {
			snprintf(err, errlen, "digest of %zu bytes for %s (needs %zu)", len,
				 scheme->name, scheme->hash_len);
			return MTLS_AGENT_ERR_INVALID_ARG;
		}
	} else if (scheme->hash_len != 0) {
		if (scheme_hash(scheme, data, len, digest) != 0) {
			snprintf(err, errlen, "hashing failed");
			return MTLS_AGENT_ERR_INTERNAL;
		}
		input = digest;
		input_len = scheme->hash_len;
	}
	t0 = metrics_now_ns();
	r = ks_sign(id->ks, key, scheme, input, input_len, sig, siglen, err, errlen);
	wipe(digest, sizeof(digest));
	if (origin == SIGN_RENEWAL) {
		log_debug("renewal: identity \"%s\" signed with %s: %s", name, scheme->name,
			  r == 0 ? "ok" : err);
	} else if (r != 0) {
		atomic_fetch_add(&id->metrics.n_error, 1);
		log_warn("identity \"%s\": sign failed: %s", name, err);
	} else {
		metrics_observe_sign(&id->metrics, metrics_now_ns() - t0);
		atomic_fetch_add(&id->n_signed, 1);
	}
	*outcome = r != 0 ? SIGN_KEYSTORE_FAILED : SIGN_DONE;
	return r;
}
