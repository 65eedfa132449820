/*
 * Fuzz target: the configuration reader (conf/config.c), the same one the
 * daemon, `mtls-agent -n` and reloads use. The input is the file's text,
 * held in a memfd (mode 0600) named through /proc/self/fd. Either the file
 * loads, or there is exactly one non-empty error line.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf/conf.h"
#include "common/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static int conf_fd = -1;
static char conf_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_init("fuzz", 0, -1);
	if ((conf_fd = memfd_create("agent.conf", MFD_CLOEXEC)) < 0 || fchmod(conf_fd, 0600) != 0)
		abort();
	snprintf(conf_path, sizeof(conf_path), "/proc/self/fd/%d", conf_fd);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config *cfg = NULL;
	char err[512];

	if (size > 1 << 16)
		return 0;
	if (ftruncate(conf_fd, 0) != 0 || pwrite(conf_fd, data, size, 0) != (ssize_t)size)
		abort();
	if (config_load(conf_path, &cfg, err, sizeof(err)) == 0) {
		if (cfg == NULL)
			abort();
		config_free(cfg);
	} else if (cfg != NULL || err[0] == '\0' || strchr(err, '\n') != NULL) {
		abort();
	}
	return 0;
}
