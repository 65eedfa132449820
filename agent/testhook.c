#include "config.h"

#include "agent/testhook.h"

#ifdef MTLS_TEST_HOOKS
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "common/log.h"

void test_crash_point(const char *step)
{
	const char *at = getenv("MTLS_AGENT_TEST_CRASH_AT");

	if (at != NULL && strcmp(at, step) == 0) {
		log_warn("MTLS_AGENT_TEST_CRASH_AT=%s: stopping with SIGKILL", step);
		raise(SIGKILL);
	}
}

static void *crash_later(void *arg)
{
	unsigned ms = (unsigned)(uintptr_t)arg;

	usleep((useconds_t)ms * 1000);
	log_warn("MTLS_AGENT_TEST_CRASH_AT=keygen-inside: stopping with SIGKILL %u ms into the "
		 "key generation",
		 ms);
	raise(SIGKILL);
	return NULL;
}

void test_crash_during_keygen(void)
{
	const char *at = getenv("MTLS_AGENT_TEST_CRASH_AT");
	const char *max_text = getenv("MTLS_AGENT_TEST_CRASH_DELAY_MS");
	unsigned max = max_text != NULL ? (unsigned)strtoul(max_text, NULL, 10) : 100, r = 0;
	pthread_t t;

	if (at == NULL || strcmp(at, "keygen-inside") != 0)
		return;
	if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
		r = (unsigned)getpid();
	if (pthread_create(&t, NULL, crash_later, (void *)(uintptr_t)(max ? r % (max + 1) : 0)) ==
	    0)
		pthread_detach(t);
}
#endif
