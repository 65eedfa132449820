#include "config.h"

#include "agent/sched.h"
