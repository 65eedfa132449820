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
static int log_mirror_fd = -1;
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

size_t log_utf8_printable(const void *s, size_t left)
{
	const unsigned char *p = s;
	size_t n, i;

	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		n = 2;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		n = 3;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		n = 4;
	else
		return 0;
	if (left < n)
		return 0;
	for (i = 1; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	if ((p[0] == 0xc2 && p[1] < 0xa0) || (p[0] == 0xe0 && p[1] < 0xa0) ||
	    (p[0] == 0xed && p[1] > 0x9f) || (p[0] == 0xf0 && p[1] < 0x90) ||
	    (p[0] == 0xf4 && p[1] > 0x8f))
		return 0;
	/*
	 * Format characters that reorder or break a line on display although they are not
	 * controls: U+200E/200F and U+202A..202E, U+2066..2069 (bidirectional marks,
	 * embeddings, isolates: "Trojan Source"), U+2028/2029 (line and paragraph separators),
	 * U+FEFF.
	 */
	if ((p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0x8e || p[2] == 0x8f)) ||
	    (p[0] == 0xe2 && p[1] == 0x80 && p[2] >= 0xa8 && p[2] <= 0xae) ||
	    (p[0] == 0xe2 && p[1] == 0x81 && p[2] >= 0xa6 && p[2] <= 0xa9) ||
	    (p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf))
		return 0;
	return n;
}

/*
 * The escape of the character at p[0] (left bytes remain) into esc (at least
 * 5 bytes): its length, and in *used how many input bytes it stands for.
 */
static size_t escape_at(const unsigned char *p, size_t left, int keep_utf8, char *esc, size_t *used)
{
	unsigned char c = p[0];
	size_t n;

	*used = 1;
	if (c == '\n' || c == '\r' || c == '\t' || c == '\\') {
		esc[0] = '\\';
		esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : '\\';
		return 2;
	}
	if (keep_utf8 && c >= 0x80 && (n = log_utf8_printable(p, left)) != 0) {
		memcpy(esc, p, n);
		*used = n;
		return n;
	}
	if (c < 0x20 || c >= 0x7f) {
		snprintf(esc, 5, "\\x%02x", c);
		return 4;
	}
	esc[0] = (char)c;
	return 1;
}

static const char *escape(const void *s, size_t len, int keep_utf8, char *out, size_t outlen)
{
	const unsigned char *p = s;
	size_t i, o = 0, total = 0, limit, need, used;
	char esc[5];

	if (outlen == 0)
		return "";
	for (i = 0; i < len; i += used)
		total += escape_at(p + i, len - i, keep_utf8, esc, &used);
	/* All of it, or what fits before "..." (never half an escape or character). */
	limit = total < outlen ? total : outlen >= 4 ? outlen - 4 : 0;
	for (i = 0; i < len; i += used) {
		need = escape_at(p + i, len - i, keep_utf8, esc, &used);
		if (o + need > limit)
			break;
		memcpy(out + o, esc, need);
		o += need;
	}
	if (total >= outlen && outlen >= 4) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
	return out;
}

const char *log_escape(const void *s, size_t len, char *out, size_t outlen)
{
	return escape(s, len, 0, out, outlen);
}

const char *log_escape_utf8(const char *s, char *out, size_t outlen)
{
	return escape(s != NULL ? s : "", s != NULL ? strlen(s) : 0, 1, out, outlen);
}

const char *log_sanitize(const char *s, char *out, size_t outlen)
{
	return log_escape(s != NULL ? s : "", s != NULL ? strlen(s) : 0, out, outlen);
}

size_t log_control_len(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;

	if (u[0] == '\0')
		return 0;
	if (u[0] < 0x20 || u[0] == 0x7f)
		return 1;
	return u[0] == 0xc2 && u[1] >= 0x80 && u[1] <= 0x9f ? 2 : 0;
}
