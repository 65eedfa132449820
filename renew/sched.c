/*
 * When to renew: renew-at parsing, per-device jitter, first attempt, safety
 * deadline and retry backoff. Pure functions: every time comes from the
 * caller, so the renewal engine passes its clock and the tests inject theirs.
 *
 * Certificate times are whatever the CA issued or a file on disk says, so
 * every sum and product here saturates instead of overflowing: a nonsense
 * certificate gets a defined (if early) schedule, never undefined behaviour.
 */
#include "config.h"

#include <openssl/evp.h>

#include "renew/sched.h"

#define SECONDS_PER_DAY 86400
#define JITTER_WINDOW_DIVISOR 20   /* the jitter spreads over 5% of the lifetime */
#define DEADLINE_MARGIN_DIVISOR 10 /* the safety margin is 10% of the lifetime */
#define RETRY_MIN_DELAY 1	   /* seconds */
#define RETRY_MAX_CAP 3600	   /* backoff cap: 1 h, or 5% of the lifetime if shorter */
#define RETRY_CAP_DIVISOR 20
#define RETRY_BASE_DIVISOR 1000	       /* first backoff step: lifetime / 1000 ... */
#define RETRY_BASE_MAX 60	       /* ... between 1 s and 60 s */
#define RETRY_HINT_MAX SECONDS_PER_DAY /* a server hint longer than this is cut */
#define STALL_PROGRESS_DIVISOR 100     /* a renewal must buy 1% of a lifetime to count */

static int64_t add_sat(int64_t a, int64_t b)
{
	int64_t sum;

	if (__builtin_add_overflow(a, b, &sum))
		return b > 0 ? INT64_MAX : INT64_MIN;
	return sum;
}

static int64_t sub_sat(int64_t a, int64_t b)
{
	int64_t diff;

	if (__builtin_sub_overflow(a, b, &diff))
		return b < 0 ? INT64_MAX : INT64_MIN;
	return diff;
}

/* Length of the validity period; an empty or inverted period counts as 1 s. */
static int64_t lifetime_of(int64_t not_before, int64_t not_after)
{
	if (not_after <= not_before)
		return 1;
	return sub_sat(not_after, not_before);
}

/* floor(value * permille / 1000) for value >= 0 and permille <= 1000, without overflow. */
static int64_t scale_permille(int64_t value, unsigned permille)
{
	return value / 1000 * permille + value % 1000 * permille / 1000;
}

/* A random or hashed draw outside [0, 1) (NaN included) is pulled into it. */
static double clamp_unit(double fraction)
{
	if (!(fraction > 0.0))
		return 0.0;
	if (fraction >= 1.0)
		return 1.0 - 0x1p-53; /* the largest double below 1 */
	return fraction;
}

/*
 * Reads one or more decimal digits at *cursor into *value. Returns the number of
 * digits read (0 when there is none), or -1 when the number does not fit.
 */
static int read_digits(const char **cursor, int64_t *value)
{
	const char *p = *cursor;
	int64_t v = 0;
	int count = 0;

	while (*p >= '0' && *p <= '9') {
		if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *p - '0', &v))
			return -1;
		p++;
		count++;
	}
	*cursor = p;
	*value = v;
	return count;
}

int sched_parse_renew_at(const char *text, struct sched_policy *out)
{
	const char *p = text;
	int64_t whole, tenths = 0, unit;

	if (text == NULL || out == NULL || read_digits(&p, &whole) <= 0)
		return -1;

	if (*p == '.' || *p == '%') {
		/* A percentage of the lifetime, kept in permille: one decimal at most. */
		if (*p == '.') {
			p++;
			if (*p < '0' || *p > '9')
				return -1;
			tenths = *p++ - '0';
		}
		if (p[0] != '%' || p[1] != '\0' || whole >= 100)
			return -1;
		if (whole == 0 && tenths == 0)
			return -1;
		out->renew_permille = (unsigned)(whole * 10 + tenths);
		out->renew_before = 0;
		return 0;
	}

	switch (*p) {
	case 'd':
		unit = SECONDS_PER_DAY;
		break;
	case 'h':
		unit = 3600;
		break;
	case 'm':
		unit = 60;
		break;
	case 's':
	case '\0':
		unit = 1;
		break;
	default:
		return -1;
	}
	if (*p != '\0' && p[1] != '\0')
		return -1;
	if (whole == 0 || __builtin_mul_overflow(whole, unit, &whole))
		return -1;
	out->renew_permille = 0;
	out->renew_before = whole;
	return 0;
}

double sched_jitter_fraction(const void *seed, size_t seed_len)
{
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int digest_len = 0;
	uint64_t bits = 0;

	if (seed == NULL || seed_len == 0) {
		seed = "";
		seed_len = 0;
	}
	if (!EVP_Digest(seed, seed_len, digest, &digest_len, EVP_sha256(), NULL) || digest_len < 8)
		return 0.0;
	for (int i = 0; i < 8; i++)
		bits = bits << 8 | digest[i];
	/* The top 53 bits fill a double's mantissa exactly: the result is < 1. */
	return (double)(bits >> 11) / 0x1p53;
}

int64_t sched_deadline(int64_t not_before, int64_t not_after)
{
	int64_t margin = lifetime_of(not_before, not_after) / DEADLINE_MARGIN_DIVISOR;

	return sub_sat(not_after, margin < 1 ? 1 : margin);
}

/* The renew-at moment itself, before jitter and clamping. */
static int64_t renew_threshold(const struct sched_policy *p, int64_t not_before, int64_t not_after,
			       int64_t lifetime)
{
	unsigned permille = SCHED_DEFAULT_RENEW_PERMILLE;

	if (p != NULL && p->renew_permille != 0) {
		permille = p->renew_permille < 1000 ? p->renew_permille : 1000;
	} else if (p != NULL && p->renew_before != 0 && p->renew_before < lifetime) {
		return sub_sat(not_after, p->renew_before);
	}
	/*
	 * Otherwise the default fraction: a renew-before that does not fit in the
	 * lifetime would renew every new certificate the moment it is issued, and its
	 * successor too, forever.
	 */
	return add_sat(not_before, scale_permille(lifetime, permille));
}

int64_t sched_first_attempt(const struct sched_policy *p, int64_t not_before, int64_t not_after,
			    double jitter_fraction)
{
	int64_t lifetime = lifetime_of(not_before, not_after);
	int64_t deadline = sched_deadline(not_before, not_after);
	int64_t threshold = renew_threshold(p, not_before, not_after, lifetime);
	int64_t window = lifetime / JITTER_WINDOW_DIVISOR;
	int64_t offset, attempt;

	/*
	 * A threshold past the deadline moves to the deadline before the jitter is
	 * applied, so a fleet with a short renew-before still spreads out below it
	 * instead of arriving at the CA in the same second.
	 */
	if (threshold > deadline)
		threshold = deadline;
	/* The product is below window (+ rounding), which is far from overflowing. */
	offset = (int64_t)(clamp_unit(jitter_fraction) * (double)window);
	if (offset > window)
		offset = window;
	attempt = sub_sat(threshold, offset);
	if (attempt < not_before)
		attempt = not_before;
	/* Only an inverted or empty validity puts the deadline before not_before; it wins. */
	if (attempt > deadline)
		attempt = deadline;
	return attempt;
}

int64_t sched_retry(int64_t now, unsigned failures, int64_t not_before, int64_t not_after,
		    long hint_s, double random01)
{
	int64_t lifetime = lifetime_of(not_before, not_after);
	int64_t cap = lifetime / RETRY_CAP_DIVISOR;
	int64_t base = lifetime / RETRY_BASE_DIVISOR;
	int64_t upper, delay;

	if (cap > RETRY_MAX_CAP)
		cap = RETRY_MAX_CAP;
	if (cap < RETRY_MIN_DELAY)
		cap = RETRY_MIN_DELAY;
	if (base > RETRY_BASE_MAX)
		base = RETRY_BASE_MAX;
	if (base < RETRY_MIN_DELAY)
		base = RETRY_MIN_DELAY;

	/* base * 2^(failures-1), doubling only while below the cap: at most 12 rounds. */
	upper = base;
	for (unsigned i = 1; i < failures && upper < cap; i++)
		upper *= 2;
	if (upper > cap)
		upper = cap;

	/* Uniform over the whole seconds of [min_delay, upper]; random01 -> 1 gives upper. */
	delay = RETRY_MIN_DELAY +
		(int64_t)(clamp_unit(random01) * (double)(upper - RETRY_MIN_DELAY + 1));
	if (delay > upper)
		delay = upper;

	if (hint_s >= 0) {
		int64_t hint = hint_s < RETRY_HINT_MAX ? (int64_t)hint_s : RETRY_HINT_MAX;

		if (delay < hint)
			delay = hint;
	}
	return add_sat(now, delay);
}

int sched_moved(int64_t now, int64_t due, int64_t not_before, int64_t not_after)
{
	int64_t gap = lifetime_of(not_before, not_after) / STALL_PROGRESS_DIVISOR;

	if (gap < 1)
		gap = 1;
	return due >= add_sat(now, gap);
}

int64_t sched_stall(int64_t now, unsigned stalls, int64_t not_before, int64_t not_after,
		    double random01)
{
	int64_t base = lifetime_of(not_before, not_after) / RETRY_BASE_DIVISOR;
	int64_t upper, low, delay;

	if (base > RETRY_BASE_MAX)
		base = RETRY_BASE_MAX;
	if (base < RETRY_MIN_DELAY)
		base = RETRY_MIN_DELAY;
	upper = base;
	for (unsigned i = 1; i < stalls && upper < RETRY_MAX_CAP; i++)
		upper *= 2;
	if (upper > RETRY_MAX_CAP)
		upper = RETRY_MAX_CAP;
	low = upper / 2 > RETRY_MIN_DELAY ? upper / 2 : RETRY_MIN_DELAY;
	/* Equal jitter: a stalled fleet spreads out, yet each step is at least half its bound. */
	delay = low + (int64_t)(clamp_unit(random01) * (double)(upper - low + 1));
	if (delay > upper)
		delay = upper;
	return add_sat(now, delay);
}

int sched_is_due(int64_t now, int64_t due, int64_t not_before)
{
	return due <= now && not_before <= now;
}
