/*
 * Fuzz target: the sign-policy recognisers (agent/policy.c) on arbitrary
 * bytes, every policy, message and digest. Seeds: the real TLS 1.2 / DTLS
 * 1.2 client transcripts in tests/vectors/tls12 and fuzz/corpus/policy.
 *
 * Besides memory safety it checks one property that must hold for every
 * input: a message the policy admits is refused once its last byte is cut
 * off (a transcript's last length no longer matches; a TLS 1.3 hash is no
 * longer 32/48/64 bytes), so acceptance never rests on slack at the end.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "agent/policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const int policies[] = {POLICY_TLS_CLIENT, POLICY_TLS13_CLIENT, POLICY_ANY};
	const char *reason;
	uint8_t *copy;
	size_t i;

	/* An exact-size heap copy, so ASan sees any read past the end. */
	if ((copy = malloc(size > 0 ? size : 1)) == NULL)
		return 0;
	memcpy(copy, data, size);
	for (i = 0; i < sizeof(policies) / sizeof(policies[0]); i++) {
		if (policy_check(policies[i], copy, size, 0, &reason) == 0) {
			if (policies[i] != POLICY_ANY && size > 0 &&
			    policy_check(policies[i], copy, size - 1, 0, &reason) == 0)
				abort();
		} else if (reason == NULL) {
			abort(); /* every refusal says why */
		}
		(void)policy_check(policies[i], copy, size, 1, &reason);
	}
	if (policy_is_tls12_client_transcript(copy, size, &reason) && size > 0 &&
	    policy_is_tls12_client_transcript(copy, size - 1, &reason))
		abort();
	free(copy);
	return 0;
}
