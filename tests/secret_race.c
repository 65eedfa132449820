/*
 * read_secret_file() against a path that is being swapped: a thread keeps
 * replacing the PIN file (rename, atomic) by a symlink to a world-readable
 * file and by a world-readable regular file, and back by the good private
 * file. Every call must return the good secret or refuse; never the content
 * of a file the checks refuse. Usage: secret_race [ITERATIONS] (default
 * 100000). Exit 0: no refused file was ever returned, and both outcomes
 * (good secret, refusal) were seen, so the race was really run.
 */
#include "config.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"

static char dir[] = "/tmp/mtls-secret-race-XXXXXX";
static atomic_int stop;

static void path_of(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", dir, name);
}

static void put(const char *name, const char *text, mode_t mode)
{
	char p[256];
	FILE *f;

	path_of(p, sizeof(p), name);
	if ((f = fopen(p, "w")) == NULL || fputs(text, f) < 0 || fclose(f) != 0 ||
	    chmod(p, mode) != 0) {
		perror(p);
		exit(2);
	}
}

static void *swapper(void *arg)
{
	char pin[256], good[256], bad[256], tmp[256];
	unsigned long k = 0;

	(void)arg;
	path_of(pin, sizeof(pin), "pin");
	path_of(good, sizeof(good), "good");
	path_of(bad, sizeof(bad), "bad");
	path_of(tmp, sizeof(tmp), "tmp");
	while (!atomic_load(&stop)) {
		/* good private file, then a symlink to the public file, then the public file. */
		unlink(tmp);
		switch (k++ % 3) {
		case 0:
			if (link(good, tmp) != 0)
				continue;
			break;
		case 1:
			if (symlink(bad, tmp) != 0)
				continue;
			break;
		default:
			if (link(bad, tmp) != 0)
				continue;
			break;
		}
		rename(tmp, pin);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000, i;
	unsigned long good_seen = 0, refused = 0, leaked = 0;
	char pin[256], err[512], *secret;
	pthread_t t;

	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		return 2;
	}
	put("good", "good-secret\n", 0600);
	put("bad", "PUBLIC-SECRET\n", 0644);
	put("pin", "good-secret\n", 0600);
	path_of(pin, sizeof(pin), "pin");
	if (pthread_create(&t, NULL, swapper, NULL) != 0)
		return 2;
	for (i = 0; i < n; i++) {
		if (read_secret_file(pin, &secret, err, sizeof(err)) != 0) {
			refused++;
			continue;
		}
		if (strcmp(secret, "good-secret") == 0)
			good_seen++;
		else
			leaked++;
		wipe(secret, strlen(secret));
		free(secret);
	}
	atomic_store(&stop, 1);
	pthread_join(t, NULL);
	printf("secret_race: %lu calls: %lu good secret, %lu refused, %lu refused file returned\n",
	       n, good_seen, refused, leaked);
	{
		char p[256];
		const char *names[] = {"pin", "good", "bad", "tmp"};
		for (i = 0; i < 4; i++) {
			path_of(p, sizeof(p), names[i]);
			unlink(p);
		}
		rmdir(dir);
	}
	if (leaked > 0)
		return 1;
	if (good_seen == 0 || refused == 0) {
		printf("secret_race: the race did not run both ways; rerun\n");
		return 1;
	}
	return 0;
}
