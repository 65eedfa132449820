#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <syslog.h>

#include "common/log.h"

static int log_to_syslog;
static int log_level = LOG_LVL_INFO;
static const char *log_ident = "mtls-agent";
static int journal_checked, journal_stream;

int log_to_journal(void)
{
	unsigned long long dev, ino;
	const char *e;
	struct stat st;

	/* Checked once: stderr does not change under a running daemon. */
	if (journal_checked)
		return journal_stream;
	journal_checked = 1;
	if ((e = getenv("JOURNAL_STREAM")) != NULL && sscanf(e, "%llu:%llu", &dev, &ino) == 2 &&
	    fstat(2, &st) == 0 && (unsigned long long)st.st_dev == dev &&
	    (unsigned long long)st.st_ino == ino)
		journal_stream = 1;
	return journal_stream;
}

void log_init(const char *ident, int to_syslog, int level)
{
	log_ident = ident;
	log_to_syslog = to_syslog;
	log_level = level;
	/* Decided here, before any thread logs. */
	journal_checked = 0;
	log_to_journal();
	if (to_syslog)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
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
	} else if (log_to_journal()) {
		/* journald adds the program name and reads the priority from "<N>". */
		if (log_level >= LOG_LVL_DEBUG)
			fprintf(stderr, "<%d>%s: %s: %s\n", prio[level], name[level], func, line);
		else
			fprintf(stderr, "<%d>%s: %s\n", prio[level], name[level], line);
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
