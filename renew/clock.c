/*
 * Clock sanity (see renew/clock.h). The persisted state is two numbers in
 * <state-dir>/clock, "floor=EPOCH" and "last=EPOCH", written atomically.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "renew/clock.h"
#include "common/log.h"
#include "common/util.h"

#define TIMESYNC_FILE "/run/systemd/timesync/synchronized"
#define LAST_WRITE_EVERY_S 3600
/* A clock this far below the floor is wrong; closer is an NTP step or a CA's skew. */
#define FLOOR_SLACK_S 86400

static struct {
	pthread_mutex_t lock;
	int loaded;
	long long floor, last, written_last, written_floor;
} g = {.lock = PTHREAD_MUTEX_INITIALIZER};

time_t clock_build_time(void)
{
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	const char *d = __DATE__; /* "Mmm dd yyyy" */
	struct tm tm = {0};
	const char *m = strstr(months, (char[4]){d[0], d[1], d[2], 0});

	tm.tm_mon = m != NULL ? (int)(m - months) / 3 : 0;
	tm.tm_mday = atoi(d + 4);
	tm.tm_year = atoi(d + 7) - 1900;
	return timegm(&tm);
}

/* g.lock held. */
static void load(const char *state_dir)
{
	char path[4200], *line, *save = NULL;
	uint8_t *data = NULL;
	size_t len = 0;

	if (g.loaded)
		return;
	g.loaded = 1;
	snprintf(path, sizeof(path), "%s/clock", state_dir);
	if (read_file(path, 4096, &data, &len) != 0)
		return;
	for (line = strtok_r((char *)data, "\n", &save); line != NULL;
	     line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "floor=", 6) == 0)
			g.floor = strtoll(line + 6, NULL, 10);
		else if (strncmp(line, "last=", 5) == 0)
			g.last = strtoll(line + 5, NULL, 10);
	}
	free(data);
	g.written_last = g.last;
	g.written_floor = g.floor;
}

/* g.lock held. Writes when the floor rose or last moved by an hour. */
static void save(const char *state_dir)
{
	char path[4200], text[96];
	int n;

	if (g.floor == g.written_floor && g.last - g.written_last < LAST_WRITE_EVERY_S)
		return;
	snprintf(path, sizeof(path), "%s/clock", state_dir);
	n = snprintf(text, sizeof(text), "floor=%lld\nlast=%lld\n", g.floor, g.last);
	if (write_file_atomic(path, text, (size_t)n, 0644) != 0) {
		log_warn("cannot write %s: %s", path, strerror(errno));
		return;
	}
	g.written_floor = g.floor;
	g.written_last = g.last;
}

static const char *timesync_file(void)
{
	const char *f = getenv("MTLS_AGENT_TEST_TIMESYNC_FILE"); /* tests: a file of their own */

	return f != NULL && f[0] != '\0' ? f : TIMESYNC_FILE;
}

int clock_good(const char *state_dir, time_t now, time_t newest_not_before, char *why,
	       size_t whylen)
{
	long long floor, t = (long long)now;
	char a[32], b[32];
	int good = 0;

	pthread_mutex_lock(&g.lock);
	load(state_dir);
	floor = g.floor;
	if ((long long)clock_build_time() > floor)
		floor = (long long)clock_build_time();
	if (access(timesync_file(), F_OK) == 0) {
		good = 1;
	} else if (t < floor - FLOOR_SLACK_S) {
		format_utc(now, a, sizeof(a));
		format_utc((time_t)floor, b, sizeof(b));
		snprintf(why, whylen,
			 "waiting for a good clock: it says %s, earlier than %s (the agent's build "
			 "date or the newest certificate seen); no renewal, bootstrap or key "
			 "deletion until the clock is synchronized (%s)",
			 a, b, timesync_file());
	} else if (g.last != 0 && t > g.last + CLOCK_MAX_JUMP_S) {
		format_utc(now, a, sizeof(a));
		format_utc((time_t)g.last, b, sizeof(b));
		snprintf(why, whylen,
			 "waiting for a good clock: it says %s, %lld days after the last time "
			 "seen (%s); no renewal, bootstrap or key deletion until the clock is "
			 "synchronized (%s)",
			 a, (t - g.last) / 86400, b, timesync_file());
	} else {
		good = 1;
	}
	if (good) {
		/* Only a good clock moves the records: a wrong one must not poison them. */
		if (t > g.last)
			g.last = t;
		if ((long long)newest_not_before > g.floor && (long long)newest_not_before <= t)
			g.floor = (long long)newest_not_before;
		save(state_dir);
	}
	pthread_mutex_unlock(&g.lock);
	return good;
}

time_t clock_last_good(void)
{
	long long last;

	pthread_mutex_lock(&g.lock);
	last = g.last;
	pthread_mutex_unlock(&g.lock);
	return (time_t)last;
}
