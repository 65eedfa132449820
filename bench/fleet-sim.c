/*
 * What a CA sees when a fleet renews: N devices issued at the same second with
 * the same lifetime, each renewing by renew/sched.c (the agent's own code, not
 * a model of it) or by a fixed rule, with or without a CA outage. Every device
 * has an id ("device-%06u") and a serial; SHA-256 of both is its jitter seed,
 * as in the agent.
 *
 * Schedules:
 *   jittered  sched_first_attempt() with the device's sched_jitter_fraction()
 *   fixed     everyone at exactly the renew-at threshold (jitter 0)
 * After a failed request (only during the outage: the CA is otherwise assumed
 * to answer everything at once, so the figures are the offered load the CA
 * must be sized for), the device retries by:
 *   backoff   sched_retry() with failures counting up, random01 from a
 *             per-device splitmix64 stream, no server hint
 *   every I   a fixed interval, no jitter (default 5 minutes)
 *   every 4%  a fixed 4% of the lifetime, no jitter (Azure IoT Identity Service)
 * The outage starts at the first renewal request of the schedule (-a start) or
 * at the start of its busiest minute (-a peak); it lasts -o (default 1 h).
 * Requests arriving during it are counted: they reach the CA and fail.
 *
 * Figures, per scenario (times from issuance, bucketed by whole minutes):
 *   requests     every request the CA receives, failed ones included
 *   window       minutes from the minute of the first request to the minute of
 *                the last one, both included
 *   mean/min     requests / window
 *   peak/min     the busiest minute; peak/mean their ratio
 *   vs even      peak / (N spread evenly over the 5% jitter window), how far the
 *                busiest minute is from the best a CA can hope for
 *   after rec.   the busiest minute from the end of the outage on
 *   all renewed  from the first request until the last device succeeded
 * With -m K, the table is followed by scenario K's requests per minute as CSV
 * (minute since issuance, requests, failed), from its first request to its last.
 * Pure computation with a fixed seed: the same options print the same table.
 * Never a test (nothing is timed or asserted).
 *
 * usage: fleet-sim [-n DEVICES] [-l LIFETIME] [-r RENEW_AT] [-o OUTAGE] [-i INTERVAL]
 *                  [-a start|peak] [-s SEED] [-m SCENARIO]
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "renew/sched.h"

#define MAX_REQUESTS 50000000u /* 400 MB of request times: refuse beyond */

enum schedule { SCHEDULE_JITTERED, SCHEDULE_FIXED };
enum retry_rule { RETRY_NONE, RETRY_BACKOFF, RETRY_INTERVAL, RETRY_LIFETIME_4PCT };

struct options {
	unsigned devices;
	int64_t lifetime;
	struct sched_policy policy;
	const char *renew_at;
	int64_t outage;
	int64_t interval;
	int outage_at_peak;
	uint64_t seed;
	unsigned dump_scenario; /* 1-based; 0: none */
};

struct requests {
	int64_t *times;
	size_t count, capacity;
};

struct result {
	size_t requests, failed;
	int64_t first, last_success, window_minutes, peak, peak_minute, peak_after_recovery;
	double mean;
};

static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static double uniform01(uint64_t *state)
{
	return (double)(splitmix64(state) >> 11) / 0x1p53;
}

static void push_request(struct requests *r, int64_t t)
{
	if (r->count == r->capacity) {
		size_t capacity = r->capacity ? r->capacity * 2 : 1u << 20;
		int64_t *times;

		if (r->count >= MAX_REQUESTS) {
			fprintf(stderr,
				"fleet-sim: more than %u requests; use a shorter outage or "
				"longer retry interval\n",
				MAX_REQUESTS);
			exit(1);
		}
		times = realloc(r->times, capacity * sizeof(*times));
		if (times == NULL) {
			fprintf(stderr, "fleet-sim: out of memory for %zu requests\n", capacity);
			exit(1);
		}
		r->times = times;
		r->capacity = capacity;
	}
	r->times[r->count++] = t;
}

static int compare_times(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* Each device's jitter: SHA-256 over its id, a NUL and its 8-byte serial. */
static double *device_jitters(const struct options *o)
{
	double *jitter = malloc(o->devices * sizeof(*jitter));

	if (jitter == NULL) {
		fprintf(stderr, "fleet-sim: out of memory for %u devices\n", o->devices);
		exit(1);
	}
	for (unsigned i = 0; i < o->devices; i++) {
		uint64_t state = o->seed ^ ((uint64_t)i << 32), serial = splitmix64(&state);
		unsigned char seed[32];
		int len = snprintf((char *)seed, sizeof(seed), "device-%06u", i);

		seed[len++] = '\0';
		for (int b = 7; b >= 0; b--)
			seed[len++] = (unsigned char)(serial >> (8 * b));
		jitter[i] = sched_jitter_fraction(seed, (size_t)len);
	}
	return jitter;
}

static int64_t first_attempt(const struct options *o, enum schedule s, double jitter)
{
	return sched_first_attempt(&o->policy, 0, o->lifetime, s == SCHEDULE_FIXED ? 0.0 : jitter);
}

/* Where the outage begins: the schedule's first request, or its busiest minute. */
static int64_t outage_start(const struct options *o, enum schedule s, const double *jitter)
{
	struct requests firsts = {0};
	int64_t start, best_minute = 0, best = 0, run = 0;

	for (unsigned i = 0; i < o->devices; i++)
		push_request(&firsts, first_attempt(o, s, jitter[i]));
	qsort(firsts.times, firsts.count, sizeof(int64_t), compare_times);
	start = firsts.times[0];
	for (size_t k = 0; o->outage_at_peak && k < firsts.count; k++) {
		run = k > 0 && firsts.times[k] / 60 == firsts.times[k - 1] / 60 ? run + 1 : 1;
		if (run > best) {
			best = run;
			best_minute = firsts.times[k] / 60;
		}
	}
	if (o->outage_at_peak)
		start = best_minute * 60;
	free(firsts.times);
	return start;
}

/* Requests per minute as CSV lines "minute,requests,failed" (sorted times). */
static void dump_minutes(const struct requests *req, int64_t down, int64_t up)
{
	printf("minute,requests,failed\n");
	for (size_t k = 0; k < req->count;) {
		int64_t m = req->times[k] / 60;
		size_t requests = 0, failed = 0;

		for (; k < req->count && req->times[k] / 60 == m; k++) {
			requests++;
			failed += req->times[k] >= down && req->times[k] < up;
		}
		printf("%" PRId64 ",%zu,%zu\n", m, requests, failed);
	}
}

static struct result simulate(const struct options *o, enum schedule s, enum retry_rule rule,
			      const double *jitter, int dump)
{
	struct requests req = {0};
	struct result res = {.last_success = INT64_MIN};
	int64_t down = 0, up = 0, minute = INT64_MIN, run = 0;

	if (rule != RETRY_NONE) {
		down = outage_start(o, s, jitter);
		up = down + o->outage;
	}
	for (unsigned i = 0; i < o->devices; i++) {
		uint64_t random_state = o->seed ^ 0x5851f42d4c957f2dULL ^ i;
		int64_t t = first_attempt(o, s, jitter[i]);
		unsigned failures = 0;

		/* Each failure moves t forward by at least a second: bounded by the outage. */
		for (;;) {
			push_request(&req, t);
			if (rule == RETRY_NONE || t < down || t >= up)
				break;
			res.failed++;
			failures++;
			if (rule == RETRY_BACKOFF)
				t = sched_retry(t, failures, 0, o->lifetime, -1,
						uniform01(&random_state));
			else if (rule == RETRY_INTERVAL)
				t += o->interval;
			else
				t += o->lifetime / 25 > 0 ? o->lifetime / 25 : 1;
		}
		if (t > res.last_success)
			res.last_success = t;
	}

	qsort(req.times, req.count, sizeof(int64_t), compare_times);
	res.requests = req.count;
	res.first = req.times[0];
	res.window_minutes = req.times[req.count - 1] / 60 - req.times[0] / 60 + 1;
	res.mean = (double)req.count / (double)res.window_minutes;
	for (size_t k = 0; k < req.count; k++) {
		int64_t m = req.times[k] / 60;

		run = m == minute ? run + 1 : 1;
		minute = m;
		if (run > res.peak) {
			res.peak = run;
			res.peak_minute = m;
		}
	}
	/* The busiest minute from recovery on: requests at or after `up` only. */
	minute = INT64_MIN;
	run = 0;
	for (size_t k = 0; rule != RETRY_NONE && k < req.count; k++) {
		int64_t m = req.times[k] / 60;

		if (req.times[k] < up)
			continue;
		run = m == minute ? run + 1 : 1;
		minute = m;
		if (run > res.peak_after_recovery)
			res.peak_after_recovery = run;
	}
	if (dump)
		dump_minutes(&req, down, up);
	free(req.times);
	return res;
}

static const char *format_duration(int64_t s, char *buf, size_t len)
{
	if (s >= 86400)
		snprintf(buf, len, "%" PRId64 "d %02" PRId64 "h %02" PRId64 "m", s / 86400,
			 s % 86400 / 3600, s % 3600 / 60);
	else if (s >= 3600)
		snprintf(buf, len, "%" PRId64 "h %02" PRId64 "m %02" PRId64 "s", s / 3600,
			 s % 3600 / 60, s % 60);
	else if (s >= 60)
		snprintf(buf, len, "%" PRId64 "m %02" PRId64 "s", s / 60, s % 60);
	else
		snprintf(buf, len, "%" PRId64 "s", s);
	return buf;
}

static int parse_duration(const char *text, int64_t *out)
{
	struct sched_policy p;

	/* The renew-at grammar's durations: 90d, 12h, 30m, 45s, 3600. */
	if (sched_parse_renew_at(text, &p) != 0 || p.renew_before <= 0)
		return -1;
	*out = p.renew_before;
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: fleet-sim [-n DEVICES] [-l LIFETIME] [-r RENEW_AT] [-o OUTAGE] "
			"[-i INTERVAL] [-a start|peak] [-s SEED] [-m SCENARIO]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct options o = {.devices = 100000,
			    .lifetime = 90 * 86400,
			    .renew_at = "66%",
			    .outage = 3600,
			    .interval = 300,
			    .seed = 1};
	static const struct {
		const char *name;
		enum schedule schedule;
		enum retry_rule rule;
	} scenarios[] = {
		{"jittered, no outage", SCHEDULE_JITTERED, RETRY_NONE},
		{"fixed, no outage", SCHEDULE_FIXED, RETRY_NONE},
		{"jittered, outage, backoff", SCHEDULE_JITTERED, RETRY_BACKOFF},
		{"jittered, outage, every I", SCHEDULE_JITTERED, RETRY_INTERVAL},
		{"jittered, outage, every 4%", SCHEDULE_JITTERED, RETRY_LIFETIME_4PCT},
		{"fixed, outage, backoff", SCHEDULE_FIXED, RETRY_BACKOFF},
		{"fixed, outage, every I", SCHEDULE_FIXED, RETRY_INTERVAL},
		{"fixed, outage, every 4%", SCHEDULE_FIXED, RETRY_LIFETIME_4PCT},
	};
	char b1[32], b2[32], b3[32];
	double even, *jitter;
	int opt;

	while ((opt = getopt(argc, argv, "n:l:r:o:i:a:s:m:")) != -1) {
		char *end;

		errno = 0;
		switch (opt) {
		case 'n': {
			unsigned long n = strtoul(optarg, &end, 10);

			if (errno || *end || n < 1 || n > 10000000 || optarg[0] == '-')
				usage();
			o.devices = (unsigned)n;
			break;
		}
		case 'l':
			if (parse_duration(optarg, &o.lifetime) != 0 || o.lifetime < 60)
				usage();
			break;
		case 'r':
			if (sched_parse_renew_at(optarg, &o.policy) != 0)
				usage();
			o.renew_at = optarg;
			break;
		case 'o':
			if (parse_duration(optarg, &o.outage) != 0)
				usage();
			break;
		case 'i':
			if (parse_duration(optarg, &o.interval) != 0)
				usage();
			break;
		case 'a':
			if (strcmp(optarg, "start") != 0 && strcmp(optarg, "peak") != 0)
				usage();
			o.outage_at_peak = strcmp(optarg, "peak") == 0;
			break;
		case 's':
			o.seed = strtoull(optarg, &end, 0);
			if (errno || *end || optarg[0] == '\0')
				usage();
			break;
		case 'm': {
			unsigned long k = strtoul(optarg, &end, 10);

			if (errno || *end || k < 1 || k > sizeof(scenarios) / sizeof(scenarios[0]))
				usage();
			o.dump_scenario = (unsigned)k;
			break;
		}
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	if (o.policy.renew_permille == 0 && o.policy.renew_before == 0)
		sched_parse_renew_at(o.renew_at, &o.policy);

	jitter = device_jitters(&o);
	/* The best case: the whole fleet spread evenly over the 5% jitter window. */
	even = (double)o.devices / ((double)(o.lifetime / 20) / 60.0);
	if (even > o.devices)
		even = o.devices;
	printf("%u devices, lifetime %s, renew-at %s, outage %s from the %s, I = %s, seed %" PRIu64
	       "\n",
	       o.devices, format_duration(o.lifetime, b1, sizeof(b1)), o.renew_at,
	       format_duration(o.outage, b2, sizeof(b2)),
	       o.outage_at_peak ? "peak" : "first request",
	       format_duration(o.interval, b3, sizeof(b3)), o.seed);
	printf("even spread over the 5%% jitter window (%s): %.1f requests/min\n\n",
	       format_duration(o.lifetime / 20, b1, sizeof(b1)), even);
	printf("| %-28s | %9s | %8s | %10s | %8s | %8s | %9s | %9s | %10s | %12s |\n", "scenario",
	       "requests", "failed", "window min", "mean/min", "peak/min", "peak/mean", "vs even",
	       "after rec.", "all renewed");
	printf("|------------------------------|----------:|---------:|-----------:|---------:"
	       "|---------:|----------:|----------:|-----------:|-------------:|\n");
	for (size_t k = 0; k < sizeof(scenarios) / sizeof(scenarios[0]); k++) {
		struct result r = simulate(&o, scenarios[k].schedule, scenarios[k].rule, jitter, 0);
		char after[24] = "-";

		if (scenarios[k].rule != RETRY_NONE)
			snprintf(after, sizeof(after), "%" PRId64, r.peak_after_recovery);
		printf("| %u %-26s | %9zu | %8zu | %10" PRId64 " | %8.1f | %8" PRId64
		       " | %9.1f | %8.1fx | %10s | %12s |\n",
		       (unsigned)k + 1, scenarios[k].name, r.requests, r.failed, r.window_minutes,
		       r.mean, r.peak, (double)r.peak / r.mean, (double)r.peak / even, after,
		       format_duration(r.last_success - r.first, b1, sizeof(b1)));
	}
	if (o.dump_scenario != 0) {
		size_t k = o.dump_scenario - 1;

		printf("\nscenario %u, %s:\n", o.dump_scenario, scenarios[k].name);
		simulate(&o, scenarios[k].schedule, scenarios[k].rule, jitter, 1);
	}
	free(jitter);
	return 0;
}
