/*
 * Clock sanity for renewal decisions. A gateway without an RTC boots in 1970, or with a
 * clock years ahead, until NTP answers; by such a clock every certificate is expired or not
 * yet valid. Until the clock is known good the agent keeps serving signatures but takes no
 * decision that depends on the date: no renewal or bootstrap, no deletion of retired keys.
 *
 * The clock is good when systemd-timesyncd says it is synchronized (the file
 * /run/systemd/timesync/synchronized exists), or else when it is
 *  - not earlier than the floor: the agent's build date and the newest notBefore of any
 *    certificate it has installed or loaded (kept in <state-dir>/clock), and
 *  - not more than CLOCK_MAX_JUMP_S ahead of the last time the agent saw a good clock
 *    (also in <state-dir>/clock; the renewal threads wake at least daily to refresh it).
 * A device that really was off longer than that waits until the clock is synchronized.
 */
#ifndef MTLS_AGENT_CLOCK_H
#define MTLS_AGENT_CLOCK_H

#include <stddef.h>
#include <time.h>

#define CLOCK_MAX_JUMP_S (30LL * 86400)

/*
 * Whether now is a clock to act on. state_dir holds the persisted floor and last time
 * seen; newest_not_before (0: none) raises the floor. Returns 1 when good; 0 with one
 * line in why (for status and the log) when the agent must wait. Thread-safe.
 */
int clock_good(const char *state_dir, time_t now, time_t newest_not_before, char *why,
	       size_t whylen);

/* The last time a good clock was seen (0: never); a clock jump judges keys by it. */
time_t clock_last_good(void);

/* The agent's build date (from __DATE__, which honours SOURCE_DATE_EPOCH), 00:00 UTC. */
time_t clock_build_time(void);

#endif
