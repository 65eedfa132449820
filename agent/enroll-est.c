#include "config.h"

#include <stdio.h>

#include "agent/enroll.h"

int enroll_est(const struct enroll_request *req, struct enroll_result *res)
{
	(void)req;
	res->outcome = ENROLL_LOCAL;
	res->retry_after = -1;
	snprintf(res->msg, sizeof(res->msg), "est enrollment not built yet");
	return -1;
}
