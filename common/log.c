#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>

#include "common/log.h"

static int log_to_syslog;
static int log_level = LOG_LVL_INFO;
static const char *log_ident = "mtls-agent";
static int log_mirror_fd = -1;

void log_init(const char *ident, int to_syslog, int level)
{
	log_ident = ident;
	log_to_syslog = to_syslog;
	log_level = level;
	if (to_syslog)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void log_mirror_errors(int fd)
{
	log_mirror_fd = fd;
}

void log_set_level(int level)
{
	log_level = level;
}

int log_get_level(void)
{
	return log_level;
}

void log_msg(int level, const char *func, const char *fmt, ...)
{
	static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
	static const char *const name[] = {"error", "warning", "info", "debug"};
	char line[1024];
	va_list ap;

	if (level > log_level)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (log_to_syslog) {
		if (log_level >= LOG_LVL_DEBUG)
			syslog(prio[level], "%s: %s", func, line);
		else
			syslog(prio[level], "%s", line);
		if (level == LOG_LVL_ERROR && log_mirror_fd >= 0)
			dprintf(log_mirror_fd, "%s: %s: %s\n", log_ident, name[level], line);
	} else if (log_level >= LOG_LVL_DEBUG) {
		fprintf(stderr, "%s: %s: %s: %s\n", log_ident, name[level], func, line);
	} else {
		fprintf(stderr, "%s: %s: %s\n", log_ident, name[level], line);
	}
}

const char *log_sanitize(const char *s, char *out, size_t outlen)
{
	size_t i;

	if (outlen == 0)
		return "";
	for (i = 0; s != NULL && s[i] != '\0' && i + 1 < outlen; i++) {
		unsigned char c = (unsigned char)s[i];
		out[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
	}
	out[i] = '\0';
	return out;
}
