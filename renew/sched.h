/*
 * When to renew: pure functions of the certificate's validity, the
 * configuration and the clock value passed in (no clock is read here, so
 * unit tests inject time). All times are seconds since the epoch.
 */
#ifndef MTLS_AGENT_SCHED_H
#define MTLS_AGENT_SCHED_H

#include <stddef.h>
#include <stdint.h>

/* renew-at when none is configured, and when a renew-before does not fit the lifetime: 66%. */
#define SCHED_DEFAULT_RENEW_PERMILLE 660

struct sched_policy {
	/* renew-at: exactly one of the two is non-zero. */
	unsigned renew_permille; /* fraction of the lifetime elapsed, e.g. 660 for "66%" */
	int64_t renew_before;	 /* seconds before not-after, e.g. 604800 for "7d" */
};

/*
 * Parses a renew-at value: "66%", "66.5%", or a duration "7d", "12h", "30m",
 * "45s", "3600" (seconds). Returns 0, or -1 for anything else (0% and >= 100%
 * are refused; so is a zero duration).
 * Strict: no spaces, no sign, lowercase units, at most one decimal in a
 * percentage (it is kept in permille), durations that fit in int64_t.
 */
int sched_parse_renew_at(const char *text, struct sched_policy *out);

/*
 * Per-device deterministic jitter in [0, 1): a hash of the seed (device id
 * and certificate serial), so a restart does not re-roll it and a fleet
 * issued at once spreads out. The first 8 bytes of SHA-256(seed), big-endian,
 * scaled to [0, 1) (53 bits). Returns 0.0 (no jitter) if SHA-256 fails.
 */
double sched_jitter_fraction(const void *seed, size_t seed_len);

/*
 * Time of the first renewal attempt of a certificate valid
 * [not_before, not_after]: the renew-at threshold minus up to 5% of the
 * lifetime (jitter_fraction scales it), never later than the safety
 * deadline, never before not_before.
 * Details: times are rounded down to the second. A threshold past the
 * deadline is moved to the deadline before the jitter is subtracted (a fleet
 * still spreads out). A renew_before >= the lifetime, or a NULL policy or
 * one with neither field set, means SCHED_DEFAULT_RENEW_PERMILLE (renewing at
 * not_before would renew every new certificate as soon as it is issued,
 * forever). An empty or
 * inverted validity counts as a 1 s lifetime; its deadline is before
 * not_before and wins: renew at once.
 */
int64_t sched_first_attempt(const struct sched_policy *p, int64_t not_before, int64_t not_after,
			    double jitter_fraction);

/*
 * The latest moment a renewal should start: not_after minus a safety margin
 * (10% of the lifetime, at least 1 s). An empty or inverted validity gives
 * not_after - 1.
 */
int64_t sched_deadline(int64_t not_before, int64_t not_after);

/*
 * Time of the next attempt after `failures` consecutive failures (>= 1),
 * at `now`: full-jitter exponential backoff, uniform in
 * [min_delay, min(cap, base * 2^(failures-1))] where cap = min(1 h, 5% of the
 * lifetime), base = clamp(lifetime / 1000, 1 s, 60 s), min_delay = 1 s;
 * `random01` in [0, 1) is the caller's random draw. A server hint
 * (hint_s >= 0: checkAfter, Retry-After) is honoured: the result is at least
 * now + hint_s (a hint longer than 1 day is cut to 1 day).
 * Details: delays are whole seconds, uniform over [min_delay, upper] with
 * random01 = 0 giving min_delay and random01 -> 1 giving upper; failures = 0
 * counts as 1; a negative hint means none; an empty or inverted validity
 * counts as a 1 s lifetime (so the delay is 1 s); the sum saturates at
 * INT64_MAX.
 */
int64_t sched_retry(int64_t now, unsigned failures, int64_t not_before, int64_t not_after,
		    long hint_s, double random01);

/*
 * Whether a renewal that just succeeded "moved the schedule": the new
 * certificate's first attempt (due) must lie at least max(1 s, 1% of its
 * lifetime) after now. A certificate that is due again at once (our clock
 * far ahead of the CA's, a CA issuing backdated or very short certificates)
 * is a stall: renewing again would only burn a key and a CA round trip.
 * Returns 1 when the schedule moved, 0 for a stall.
 */
int sched_moved(int64_t now, int64_t due, int64_t not_before, int64_t not_after);

/*
 * Time of the next attempt after `stalls` (>= 1) consecutive renewals that
 * did not move the schedule, at `now`: exponential backoff like
 * sched_retry's (base = clamp(lifetime / 1000, 1 s, 60 s), doubling per
 * stall) but capped at 1 h whatever the lifetime, with equal jitter: uniform
 * over [upper / 2, upper] (random01 = 0 gives upper / 2, at least 1 s). A
 * stall is no failure: the certificate just installed works, so waiting
 * longer than its 5% costs nothing, and it bounds the renewals of an agent
 * whose clock disagrees with the CA's to about a dozen in the first hour and
 * one an hour after that. stalls = 0 counts as 1; saturates at INT64_MAX.
 */
int64_t sched_stall(int64_t now, unsigned stalls, int64_t not_before, int64_t not_after,
		    double random01);

/*
 * Whether a certificate valid [not_before, not_after] whose first attempt is
 * `due` may be renewed at `now`: due <= now, and not_before <= now (a
 * certificate not yet valid by our clock is never "due", whatever the
 * deadline arithmetic says: renewing it again would bring another one from
 * the same CA clock). Returns 1 or 0.
 */
int sched_is_due(int64_t now, int64_t due, int64_t not_before);

#endif
