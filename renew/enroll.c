#include "config.h"

#include <stdatomic.h>

#include "renew/enroll.h"

static atomic_int stopping;

void enroll_set_stopping(int value)
{
	atomic_store(&stopping, value);
}

int enroll_curl_progress(void *arg, long long dltotal, long long dlnow, long long ultotal,
			 long long ulnow)
{
	(void)arg;
	(void)dltotal;
	(void)dlnow;
	(void)ultotal;
	(void)ulnow;
	return atomic_load(&stopping);
}

const char *enroll_outcome_name(int outcome)
{
	switch (outcome) {
	case ENROLL_OK:
		return "ok";
	case ENROLL_TRANSIENT:
		return "transient error";
	case ENROLL_WAIT:
		return "waiting for the CA";
	case ENROLL_REJECTED:
		return "rejected by the CA";
	case ENROLL_NOT_AUTHORIZED:
		return "not authorized";
	case ENROLL_BAD_CERT:
		return "bad certificate";
	case ENROLL_LOCAL:
		return "local error";
	}
	return "unknown";
}
