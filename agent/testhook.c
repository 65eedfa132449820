#include "config.h"

#include "agent/testhook.h"

#ifdef MTLS_TEST_HOOKS
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

void test_crash_point(const char *step)
{
	const char *at = getenv("MTLS_AGENT_TEST_CRASH_AT");

	if (at != NULL && strcmp(at, step) == 0) {
		log_warn("MTLS_AGENT_TEST_CRASH_AT=%s: stopping with SIGKILL", step);
		raise(SIGKILL);
	}
}
#endif
