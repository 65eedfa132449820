/*
 * Renewal scheduling: renew-at parsing, jitter, first attempt, deadline,
 * backoff. The clock is whatever each test passes in.
 */
#include "config.h"

#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "renew/revocation.h"
#include "renew/sched.h"

#define DAY 86400
#define ISSUED 1700000000 /* an arbitrary not_before, 2023-11-14 */
#define LIFETIME_90D (90 * DAY)
#define JUST_BELOW_ONE (1.0 - 0x1p-53)

static struct sched_policy parse_ok(const char *text)
{
	struct sched_policy p = {.renew_permille = 12345, .renew_before = -42};

	if (sched_parse_renew_at(text, &p) != 0)
		fail_msg("\"%s\" was refused", text);
	return p;
}

static void test_parse_percent(void **state)
{
	struct sched_policy p;

	(void)state;
	p = parse_ok("66%");
	assert_int_equal(p.renew_permille, 660);
	assert_int_equal(p.renew_before, 0);
	p = parse_ok("66.5%");
	assert_int_equal(p.renew_permille, 665);
	assert_int_equal(p.renew_before, 0);
	assert_int_equal(parse_ok("0.1%").renew_permille, 1);
	assert_int_equal(parse_ok("99.9%").renew_permille, 999);
	assert_int_equal(parse_ok("50.0%").renew_permille, 500);
	assert_int_equal(parse_ok("080%").renew_permille, 800);
}

static void test_parse_duration(void **state)
{
	struct sched_policy p;

	(void)state;
	p = parse_ok("7d");
	assert_int_equal(p.renew_before, 7 * DAY);
	assert_int_equal(p.renew_permille, 0);
	assert_int_equal(parse_ok("12h").renew_before, 12 * 3600);
	assert_int_equal(parse_ok("30m").renew_before, 30 * 60);
	assert_int_equal(parse_ok("45s").renew_before, 45);
	assert_int_equal(parse_ok("3600").renew_before, 3600);
	assert_int_equal(parse_ok("9223372036854775807").renew_before, INT64_MAX);
	assert_int_equal(parse_ok("106751991167300d").renew_before, 106751991167300LL * DAY);
}

static void test_parse_bad(void **state)
{
	static const char *const bad[] = {"0%",
					  "0.0%",
					  "100%",
					  "100.0%",
					  "150%",
					  "-1%",
					  "-1d",
					  "",
					  "7x",
					  "66%%",
					  "%",
					  "66.%",
					  ".5%",
					  "66.55%",
					  "66,5%",
					  "99999999999999999999d",
					  "9223372036854775808",
					  "106751991167301d",
					  "9223372036854775807d",
					  "0",
					  "0s",
					  "0d",
					  "d",
					  "7 d",
					  " 7d",
					  "7d ",
					  "7D",
					  "+7d",
					  "7dd",
					  "7ds",
					  "1e3",
					  "0x10"};
	struct sched_policy p = {.renew_permille = 660, .renew_before = 0};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (sched_parse_renew_at(bad[i], &p) != -1)
			fail_msg("\"%s\" was accepted", bad[i]);
		/* A refused value leaves the previous policy alone. */
		assert_int_equal(p.renew_permille, 660);
		assert_int_equal(p.renew_before, 0);
	}
	assert_int_equal(sched_parse_renew_at(NULL, &p), -1);
	assert_int_equal(sched_parse_renew_at("66%", NULL), -1);
}

static void test_deadline(void **state)
{
	(void)state;
	assert_int_equal(sched_deadline(ISSUED, ISSUED + LIFETIME_90D), ISSUED + 81 * DAY);
	assert_int_equal(sched_deadline(ISSUED, ISSUED + 60), ISSUED + 54);
	/* The margin is at least a second. */
	assert_int_equal(sched_deadline(ISSUED, ISSUED + 5), ISSUED + 4);
	assert_int_equal(sched_deadline(ISSUED, ISSUED + 1), ISSUED);
	/* Empty or inverted validity: a 1 s lifetime. */
	assert_int_equal(sched_deadline(ISSUED, ISSUED), ISSUED - 1);
	assert_int_equal(sched_deadline(ISSUED, ISSUED - 100), ISSUED - 101);
	/* Saturates rather than wrapping. */
	assert_int_equal(sched_deadline(INT64_MIN, INT64_MIN), INT64_MIN);
	assert_int_equal(sched_deadline(INT64_MIN, INT64_MAX), INT64_MAX - INT64_MAX / 10);
}

static void test_threshold(void **state)
{
	struct sched_policy percent = parse_ok("66%"), before = parse_ok("7d");
	int64_t not_after = ISSUED + LIFETIME_90D;

	(void)state;
	/* Jitter 0 is the threshold itself: 66% of 90 days is 59.4 days. */
	assert_int_equal(sched_first_attempt(&percent, ISSUED, not_after, 0.0), ISSUED + 5132160);
	/*
	 * "7d" before the expiry of a 30-day certificate is day 23. On a 90-day one, day 83
	 * is past the safety deadline (10% = 9 days before expiry): the deadline rules.
	 */
	assert_int_equal(sched_first_attempt(&before, ISSUED, ISSUED + 30 * DAY, 0.0),
			 ISSUED + 23 * DAY);
	assert_int_equal(sched_first_attempt(&before, ISSUED, not_after, 0.0), ISSUED + 81 * DAY);
	/* The full jitter moves it 5% of the lifetime (4.5 days) earlier, to the second. */
	assert_in_range(sched_first_attempt(&percent, ISSUED, not_after, JUST_BELOW_ONE),
			ISSUED + 5132160 - 388800, ISSUED + 5132160 - 388799);
	assert_int_equal(sched_first_attempt(&percent, ISSUED, not_after, 0.5),
			 ISSUED + 5132160 - 194400);
	/* No policy, or an empty one: the default, 66%. */
	assert_int_equal(SCHED_DEFAULT_RENEW_PERMILLE, 660);
	assert_int_equal(sched_first_attempt(NULL, ISSUED, not_after, 0.0), ISSUED + 5132160);
	assert_int_equal(sched_first_attempt(&(struct sched_policy){0}, ISSUED, not_after, 0.0),
			 ISSUED + 5132160);
}

static void test_jitter_known_answer(void **state)
{
	/* SHA-256("") = e3b0c442 98fc1c14 ..., SHA-256("abc") = ba7816bf 8f01cfea ... */
	double empty = (double)(0xe3b0c44298fc1c14ULL >> 11) / 0x1p53;
	double abc = (double)(0xba7816bf8f01cfeaULL >> 11) / 0x1p53;

	(void)state;
	assert_true(sched_jitter_fraction("", 0) == empty);
	assert_true(sched_jitter_fraction(NULL, 0) == empty);
	assert_true(sched_jitter_fraction("abc", 3) == abc);
}

static void test_jitter_deterministic(void **state)
{
	const char seed[] = "device-000042\0serial:0a1b2c3d";
	double first = sched_jitter_fraction(seed, sizeof(seed));

	(void)state;
	/* A restart computes the same value: the schedule is not re-rolled. */
	assert_true(sched_jitter_fraction(seed, sizeof(seed)) == first);
	assert_true(first >= 0.0 && first < 1.0);
	/* Bytes after a NUL count: a new serial is a new draw. */
	assert_true(sched_jitter_fraction(seed, sizeof(seed) - 2) != first);
}

static void test_jitter_spread(void **state)
{
	unsigned buckets[10] = {0};
	char seed[32];

	(void)state;
	for (unsigned i = 0; i < 10000; i++) {
		int len = snprintf(seed, sizeof(seed), "device-%06u", i);
		double j = sched_jitter_fraction(seed, (size_t)len);

		assert_true(j >= 0.0 && j < 1.0);
		buckets[(int)(j * 10)]++;
	}
	for (int b = 0; b < 10; b++) {
		if (buckets[b] < 800 || buckets[b] > 1200)
			fail_msg("bucket %d holds %u of 10000 (expected 800..1200)", b, buckets[b]);
	}
}

/* Every device's first attempt stays in the 5% window below the threshold. */
static void check_window(const char *renew_at, int64_t lifetime)
{
	struct sched_policy p = parse_ok(renew_at);
	int64_t not_after = ISSUED + lifetime;
	int64_t threshold = sched_first_attempt(&p, ISSUED, not_after, 0.0);
	int64_t deadline = sched_deadline(ISSUED, not_after);
	char seed[32];

	for (unsigned i = 0; i < 10000; i++) {
		int len = snprintf(seed, sizeof(seed), "device-%06u", i);
		int64_t at = sched_first_attempt(&p, ISSUED, not_after,
						 sched_jitter_fraction(seed, (size_t)len));

		assert_in_range(at, threshold - lifetime / 20, threshold);
		assert_true(at <= deadline);
		assert_true(at >= ISSUED);
	}
}

static void test_first_attempt_window(void **state)
{
	(void)state;
	check_window("66%", LIFETIME_90D);
	check_window("99.9%", LIFETIME_90D);
	check_window("0.1%", LIFETIME_90D);
	check_window("7d", 30 * DAY);
	check_window("7d", LIFETIME_90D);
	check_window("66%", 365 * DAY);
	check_window("66%", 3600);
}

static void test_renew_before_longer_than_lifetime(void **state)
{
	struct sched_policy p = parse_ok("7d");
	int64_t not_after = ISSUED + 5 * DAY;
	int64_t deadline = sched_deadline(ISSUED, not_after);

	(void)state;
	/*
	 * "7d" on a 5-day certificate cannot be honoured; renewing at not_before would
	 * renew every new certificate at once, forever. It falls back to the default 66%.
	 */
	assert_int_equal(sched_first_attempt(&p, ISSUED, not_after, 0.0),
			 ISSUED + 5 * DAY * 66 / 100);
	for (double j = 0.0; j < 1.0; j += 0.125) {
		int64_t at = sched_first_attempt(&p, ISSUED, not_after, j);

		assert_true(at > ISSUED);
		assert_true(at <= deadline);
	}
	/* Exactly the lifetime: same fallback. One day less fits and is honoured. */
	assert_int_equal(sched_first_attempt(&p, ISSUED, ISSUED + 7 * DAY, 0.0),
			 ISSUED + 7 * DAY * 66 / 100);
	assert_int_equal(sched_first_attempt(&p, ISSUED, ISSUED + 8 * DAY, 0.0), ISSUED + DAY);
}

static void test_threshold_past_deadline(void **state)
{
	struct sched_policy p = parse_ok("45s");
	int64_t not_after = ISSUED + LIFETIME_90D;
	int64_t deadline = sched_deadline(ISSUED, not_after);

	(void)state;
	/* 45 s before expiry is past the 10% margin: the deadline, still jittered below it. */
	assert_int_equal(sched_first_attempt(&p, ISSUED, not_after, 0.0), deadline);
	assert_int_equal(sched_first_attempt(&p, ISSUED, not_after, 0.5), deadline - 194400);
	p = parse_ok("99.9%");
	assert_int_equal(sched_first_attempt(&p, ISSUED, not_after, 0.0), deadline);
}

/* The documented upper bound of the backoff after `failures` failures, no hint. */
static int64_t backoff_upper(int64_t lifetime, unsigned failures)
{
	int64_t cap = lifetime / 20 < 3600 ? lifetime / 20 : 3600;
	int64_t base = lifetime / 1000;
	int64_t upper;

	cap = cap < 1 ? 1 : cap;
	base = base < 1 ? 1 : base > 60 ? 60 : base;
	upper = failures >= 40 ? cap : base * ((int64_t)1 << (failures - 1));
	return upper < cap ? upper : cap;
}

static void check_backoff(int64_t lifetime)
{
	static const double draws[] = {0.0, 1e-9, 0.25, 0.5, 0.75, 0.999, JUST_BELOW_ONE};
	const int64_t now = ISSUED + lifetime / 2;
	int64_t cap = lifetime / 20 < 3600 ? lifetime / 20 : 3600;
	int64_t previous_upper = 0;

	cap = cap < 1 ? 1 : cap;
	for (unsigned failures = 1; failures <= 20; failures++) {
		int64_t upper =
			sched_retry(now, failures, ISSUED, ISSUED + lifetime, -1, JUST_BELOW_ONE);

		/* The ends: random01 = 0 is the minimum delay, random01 -> 1 the bound. */
		assert_int_equal(sched_retry(now, failures, ISSUED, ISSUED + lifetime, -1, 0.0),
				 now + 1);
		assert_int_equal(upper, now + backoff_upper(lifetime, failures));
		assert_true(upper >= previous_upper);
		previous_upper = upper;
		for (size_t d = 0; d < sizeof(draws) / sizeof(draws[0]); d++) {
			int64_t at =
				sched_retry(now, failures, ISSUED, ISSUED + lifetime, -1, draws[d]);

			assert_in_range(at, now + 1, upper);
			assert_true(at <= now + cap);
		}
	}
	/* Far past the cap, and with a failure count no sane loop reaches. */
	assert_int_equal(sched_retry(now, 1000, ISSUED, ISSUED + lifetime, -1, JUST_BELOW_ONE),
			 now + cap);
	assert_int_equal(sched_retry(now, UINT_MAX, ISSUED, ISSUED + lifetime, -1, JUST_BELOW_ONE),
			 now + cap);
}

static void test_backoff_bounds(void **state)
{
	(void)state;
	check_backoff(LIFETIME_90D);
	check_backoff(365 * DAY);
	check_backoff(DAY);
	check_backoff(3600);
	check_backoff(60);
	check_backoff(10);
	/* 90 days: 60 s, doubling, capped at one hour from the 7th failure. */
	assert_int_equal(backoff_upper(LIFETIME_90D, 1), 60);
	assert_int_equal(backoff_upper(LIFETIME_90D, 6), 1920);
	assert_int_equal(backoff_upper(LIFETIME_90D, 7), 3600);
}

static void test_backoff_is_uniform(void **state)
{
	const int64_t now = ISSUED;
	unsigned low = 0;

	(void)state;
	/* Full jitter: the draw spreads over the whole [1 s, 60 s] of a first failure. */
	for (int i = 0; i < 1000; i++) {
		int64_t at = sched_retry(now, 1, ISSUED, ISSUED + LIFETIME_90D, -1, i / 1000.0);

		assert_in_range(at, now + 1, now + 60);
		low += at <= now + 30;
	}
	assert_int_equal(low, 500);
}

static void test_backoff_odd_inputs(void **state)
{
	const int64_t now = ISSUED;
	int64_t na = ISSUED + LIFETIME_90D;

	(void)state;
	/* failures = 0 counts as one failure. */
	assert_int_equal(sched_retry(now, 0, ISSUED, na, -1, JUST_BELOW_ONE), now + 60);
	/* Out-of-range draws are pulled into [0, 1). */
	assert_int_equal(sched_retry(now, 1, ISSUED, na, -1, -3.0), now + 1);
	assert_int_equal(sched_retry(now, 1, ISSUED, na, -1, NAN), now + 1);
	assert_int_equal(sched_retry(now, 1, ISSUED, na, -1, 1.0), now + 60);
	assert_int_equal(sched_retry(now, 1, ISSUED, na, -1, 7.5), now + 60);
	/* An inverted validity: 1 s lifetime, the delay is 1 s. */
	assert_int_equal(sched_retry(now, 5, ISSUED, ISSUED - 10, -1, JUST_BELOW_ONE), now + 1);
	/* The clock at the end of time saturates. */
	assert_int_equal(sched_retry(INT64_MAX, 5, ISSUED, na, -1, 0.5), INT64_MAX);
	assert_int_equal(sched_retry(INT64_MAX - 10, 20, INT64_MIN, INT64_MAX, LONG_MAX, 0.5),
			 INT64_MAX);
}

static void test_hints(void **state)
{
	const int64_t now = ISSUED + 1000;
	int64_t short_na = ISSUED + 60, long_na = ISSUED + LIFETIME_90D;

	(void)state;
	/* A 30 s hint outweighs a smaller backoff... */
	assert_int_equal(sched_retry(now, 1, ISSUED, short_na, 30, JUST_BELOW_ONE), now + 30);
	assert_int_equal(sched_retry(now, 1, ISSUED, long_na, 30, 0.0), now + 30);
	/* ...and a larger backoff is kept: the hint is a lower bound. */
	assert_int_equal(sched_retry(now, 1, ISSUED, long_na, 30, JUST_BELOW_ONE), now + 60);
	for (unsigned failures = 1; failures <= 20; failures++)
		assert_true(sched_retry(now, failures, ISSUED, long_na, 30, 0.3) >= now + 30);
	/* A hint longer than a day is cut to a day. */
	assert_int_equal(sched_retry(now, 1, ISSUED, long_na, 10L * DAY, 0.0), now + DAY);
	assert_int_equal(sched_retry(now, 1, ISSUED, long_na, LONG_MAX, 0.0), now + DAY);
	assert_int_equal(sched_retry(now, 1, ISSUED, long_na, DAY, 0.0), now + DAY);
	/* Negative means no hint; zero is a hint that changes nothing. */
	assert_int_equal(sched_retry(now, 1, ISSUED, long_na, -1, 0.0), now + 1);
	assert_int_equal(sched_retry(now, 1, ISSUED, long_na, LONG_MIN, 0.0), now + 1);
	assert_int_equal(sched_retry(now, 1, ISSUED, long_na, 0, 0.0), now + 1);
}

/* The 60-second certificates of the integration tests. */
static void test_sixty_second_certificate(void **state)
{
	struct sched_policy p = parse_ok("66%");
	int64_t not_after = ISSUED + 60;
	char seed[32];
	int64_t earliest = INT64_MAX, latest = INT64_MIN;

	(void)state;
	for (unsigned i = 0; i < 1000; i++) {
		int len = snprintf(seed, sizeof(seed), "device-%06u", i);
		int64_t at = sched_first_attempt(&p, ISSUED, not_after,
						 sched_jitter_fraction(seed, (size_t)len));

		assert_in_range(at - ISSUED, 37, 40);
		if (at < earliest)
			earliest = at;
		if (at > latest)
			latest = at;
	}
	/* The 3 s jitter window is used, not collapsed to one second. */
	assert_true(latest - earliest >= 2);
	assert_int_equal(sched_deadline(ISSUED, not_after), ISSUED + 54);
	for (unsigned failures = 1; failures <= 20; failures++) {
		int64_t at =
			sched_retry(ISSUED + 40, failures, ISSUED, not_after, -1, JUST_BELOW_ONE);

		assert_in_range(at, ISSUED + 41, ISSUED + 43);
	}
	assert_int_equal(sched_retry(ISSUED + 40, 1, ISSUED, not_after, -1, JUST_BELOW_ONE),
			 ISSUED + 41);
	assert_int_equal(sched_retry(ISSUED + 40, 3, ISSUED, not_after, -1, JUST_BELOW_ONE),
			 ISSUED + 43);
}

static void test_extreme_validity(void **state)
{
	struct sched_policy percent = parse_ok("66%"), before = parse_ok("7d");
	struct sched_policy huge = {.renew_before = INT64_MAX};
	struct sched_policy negative = {.renew_before = -5};
	struct sched_policy too_many = {.renew_permille = UINT_MAX};
	static const int64_t bounds[][2] = {{INT64_MIN, INT64_MAX},
					    {0, INT64_MAX},
					    {INT64_MIN, 0},
					    {INT64_MAX - 1, INT64_MAX},
					    {INT64_MIN, INT64_MIN + 1},
					    {ISSUED, ISSUED},
					    {ISSUED, ISSUED - 1},
					    {INT64_MAX, INT64_MIN},
					    {0, 253402300799} /* year 9999 */};
	const struct sched_policy *policies[] = {&percent,  &before,   &huge,
						 &negative, &too_many, NULL};

	(void)state;
	for (size_t b = 0; b < sizeof(bounds) / sizeof(bounds[0]); b++) {
		int64_t nb = bounds[b][0], na = bounds[b][1];
		int64_t deadline = sched_deadline(nb, na);

		for (size_t i = 0; i < sizeof(policies) / sizeof(policies[0]); i++) {
			for (double j = 0.0; j < 1.0; j += 0.25) {
				int64_t at = sched_first_attempt(policies[i], nb, na, j);

				assert_true(at <= deadline);
				/* Only an empty or inverted validity starts before not_before. */
				assert_true(at >= nb || na <= nb);
			}
			assert_true(sched_first_attempt(policies[i], nb, na, NAN) <= deadline);
		}
		for (unsigned failures = 1; failures <= 1000; failures *= 10) {
			int64_t at = sched_retry(0, failures, nb, na, -1, JUST_BELOW_ONE);

			assert_in_range(at, 1, 3600);
		}
	}
	/* An inverted validity: renew at once (the deadline is before not_before). */
	assert_int_equal(sched_first_attempt(&percent, ISSUED, ISSUED - 100, 0.3), ISSUED - 101);
	assert_int_equal(sched_retry(ISSUED, 1, ISSUED, ISSUED - 100, -1, 0.9), ISSUED + 1);
}

/* A renewal must buy 1% of the lifetime (at least 1 s) to count as progress. */
static void test_moved(void **state)
{
	(void)state;
	/* 3600 s lifetime: 36 s of progress needed. */
	assert_int_equal(sched_moved(ISSUED, ISSUED + 36, ISSUED, ISSUED + 3600), 1);
	assert_int_equal(sched_moved(ISSUED, ISSUED + 35, ISSUED, ISSUED + 3600), 0);
	assert_int_equal(sched_moved(ISSUED, ISSUED - 500, ISSUED - 2500, ISSUED + 1100), 0);
	/* The normal case: a fresh 90-day certificate is due in about 60 days. */
	assert_int_equal(sched_moved(ISSUED,
				     sched_first_attempt(NULL, ISSUED, ISSUED + LIFETIME_90D, 0.5),
				     ISSUED, ISSUED + LIFETIME_90D),
			 1);
	/* Tiny or inverted validity: 1 s is enough. */
	assert_int_equal(sched_moved(ISSUED, ISSUED + 1, ISSUED, ISSUED + 10), 1);
	assert_int_equal(sched_moved(ISSUED, ISSUED, ISSUED, ISSUED - 10), 0);
	assert_int_equal(sched_moved(INT64_MAX - 1, INT64_MAX, 0, INT64_MAX), 1);
}

/* Stall backoff: doubling from the base, equal jitter, capped at 1 h whatever the lifetime. */
static void test_stall_bounds(void **state)
{
	int64_t nb = ISSUED, na = ISSUED + 3600; /* base 3 s */

	(void)state;
	assert_int_equal(sched_stall(ISSUED, 1, nb, na, 0.0) - ISSUED, 1);
	assert_int_equal(sched_stall(ISSUED, 1, nb, na, JUST_BELOW_ONE) - ISSUED, 3);
	assert_int_equal(sched_stall(ISSUED, 0, nb, na, JUST_BELOW_ONE) - ISSUED, 3);
	assert_int_equal(sched_stall(ISSUED, 2, nb, na, 0.0) - ISSUED, 3);
	assert_int_equal(sched_stall(ISSUED, 2, nb, na, JUST_BELOW_ONE) - ISSUED, 6);
	assert_int_equal(sched_stall(ISSUED, 5, nb, na, 0.0) - ISSUED, 24);
	assert_int_equal(sched_stall(ISSUED, 5, nb, na, JUST_BELOW_ONE) - ISSUED, 48);
	/* Unlike a failure's backoff, not capped at 5% of the lifetime (180 s here). */
	assert_int_equal(sched_stall(ISSUED, 12, nb, na, JUST_BELOW_ONE) - ISSUED, 3600);
	assert_int_equal(sched_stall(ISSUED, 12, nb, na, 0.0) - ISSUED, 1800);
	assert_int_equal(sched_stall(ISSUED, UINT_MAX, nb, na, JUST_BELOW_ONE) - ISSUED, 3600);
	for (unsigned k = 1; k < 40; k++) {
		for (double r = 0.0; r < 1.0; r += 0.125) {
			int64_t d = sched_stall(ISSUED, k, nb, na, r) - ISSUED;

			assert_true(d >= 1 && d <= 3600);
			assert_true(d >= sched_stall(ISSUED, k, nb, na, 0.0) - ISSUED);
		}
	}
	assert_int_equal(sched_stall(INT64_MAX - 5, 12, nb, na, 0.5), INT64_MAX);
	assert_int_equal(sched_stall(ISSUED, 3, nb, nb - 10, NAN) - ISSUED, 2);
}

/* Not yet valid by our clock: never due, whatever the deadline arithmetic gives. */
static void test_not_yet_valid(void **state)
{
	int64_t now = ISSUED, nb = ISSUED + 2500, na = nb + 3600;

	(void)state;
	assert_int_equal(sched_is_due(now, now - 100, nb), 0);
	assert_int_equal(sched_is_due(now, now, nb), 0);
	assert_int_equal(sched_is_due(nb, nb, nb), 1);
	assert_int_equal(sched_is_due(now, now + 1, now - 10), 0);
	assert_int_equal(sched_is_due(now, now, now - 10), 1);
	/* The first attempt of a certificate from the future lies in its validity. */
	assert_true(sched_first_attempt(NULL, nb, na, 0.99) > now + 2500);
}

/*
 * The scenario of issue 17 item 5, on an injected clock: the agent's clock
 * 2,500 s ahead of the CA's, the CA issuing [its now - 1 s, + 3600 s]. The
 * engine's loop, reduced to the schedule: renew when due, then either the
 * schedule moved or the next attempt backs off. Counted over 3 hours.
 */
static void test_skew_storm_is_bounded(void **state)
{
	const int64_t skew = 2500, life = 3600, start = ISSUED;
	int64_t now = start, nb, na, due, stall_until = 0;
	unsigned stalls = 0, first_hour = 0, later = 0, per_hour[3] = {0};

	(void)state;
	nb = now - skew - 1;
	na = nb + life + 1;
	while (now < start + 3 * 3600) {
		due = sched_first_attempt(NULL, nb, na, 0.3);
		if (stalls > 0 && stall_until > due)
			due = stall_until;
		if (!sched_is_due(now, due, nb)) {
			now = due;
			continue;
		}
		/* Renewed: the CA's clock says now - skew. */
		nb = now - skew - 1;
		na = nb + life + 1;
		per_hour[(now - start) / 3600]++;
		due = sched_first_attempt(NULL, nb, na, 0.3);
		if (sched_moved(now, due, nb, na)) {
			stalls = 0;
		} else {
			stalls++;
			stall_until = sched_stall(now, stalls, nb, na, 0.5);
		}
		now += 1; /* the round trip */
	}
	first_hour = per_hour[0];
	later = per_hour[1] + per_hour[2];
	/* 3, 6, 12, ... 3600 s (at 75% jitter): 11 steps sum past an hour. */
	if (first_hour > 12 || later > 4)
		fail_msg("%u renewals in the first hour, %u in the next two", first_hour, later);
	assert_true(first_hour >= 2); /* it does keep renewing, just not in a loop */
	assert_true(stalls >= 10);
}

/* Revocation checks (renew/revocation.h): interval with up to 10% jitter, nextUpdate, backoff. */
static void test_revocation_schedule(void **state)
{
	const time_t now = 1700000000;
	unsigned f;

	(void)state;
	/* Good or revoked: the interval, up to 10% early. */
	assert_int_equal(rev_next_check(now, REV_GOOD, 0, 3600, 0, 0.0), now + 3600);
	assert_int_equal(rev_next_check(now, REV_GOOD, 0, 3600, 0, 0.999), now + 3600 - 359);
	assert_int_equal(rev_next_check(now, REV_REVOKED, 0, 3600, 0, 0.5), now + 3600 - 180);
	/* A nextUpdate before that is honoured; one past or later is not. */
	assert_int_equal(rev_next_check(now, REV_GOOD, 0, 3600, now + 600, 0.0), now + 600);
	assert_int_equal(rev_next_check(now, REV_GOOD, 0, 3600, now - 5, 0.0), now + 3600);
	assert_int_equal(rev_next_check(now, REV_GOOD, 0, 3600, now + 7200, 0.0), now + 3600);
	/* Unknown: full jitter over [1 s, 5 s * 2^(failures-1)], capped at the interval. */
	for (f = 1; f <= 40; f++) {
		long upper = f >= 12 ? 3600 : (long)REV_RETRY_BASE_S << (f - 1);

		if (upper > 3600)
			upper = 3600;
		assert_int_equal(rev_next_check(now, REV_UNKNOWN, f, 3600, 0, 0.0), now + 1);
		assert_true(rev_next_check(now, REV_UNKNOWN, f, 3600, 0, 0.999999) <= now + upper);
		assert_true(rev_next_check(now, REV_UNKNOWN, f, 3600, 0, 0.999999) >=
			    now + upper - 1);
	}
	/* Never at now itself, whatever the inputs. */
	assert_int_equal(rev_next_check(now, REV_GOOD, 0, 0, 0, 0.0), now + 1);
	assert_int_equal(rev_next_check(now, REV_UNKNOWN, 1, 1, 0, 0.9), now + 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_percent),
		cmocka_unit_test(test_parse_duration),
		cmocka_unit_test(test_parse_bad),
		cmocka_unit_test(test_revocation_schedule),
		cmocka_unit_test(test_deadline),
		cmocka_unit_test(test_threshold),
		cmocka_unit_test(test_jitter_known_answer),
		cmocka_unit_test(test_jitter_deterministic),
		cmocka_unit_test(test_jitter_spread),
		cmocka_unit_test(test_first_attempt_window),
		cmocka_unit_test(test_renew_before_longer_than_lifetime),
		cmocka_unit_test(test_threshold_past_deadline),
		cmocka_unit_test(test_backoff_bounds),
		cmocka_unit_test(test_backoff_is_uniform),
		cmocka_unit_test(test_backoff_odd_inputs),
		cmocka_unit_test(test_hints),
		cmocka_unit_test(test_sixty_second_certificate),
		cmocka_unit_test(test_extreme_validity),
		cmocka_unit_test(test_moved),
		cmocka_unit_test(test_stall_bounds),
		cmocka_unit_test(test_not_yet_valid),
		cmocka_unit_test(test_skew_storm_is_bounded),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
