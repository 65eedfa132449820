#include "config.h"

#include "agent/enroll.h"

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
