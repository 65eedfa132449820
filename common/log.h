/*
 * Logging for the daemon and tools: to stderr (foreground, tools) or syslog.
 * Never pass secrets. Strings that come from clients or certificates must go
 * through log_sanitize() first so they cannot forge log lines.
 */
#ifndef MTLS_COMMON_LOG_H
#define MTLS_COMMON_LOG_H

#include <stddef.h>

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN = 1, LOG_LVL_INFO = 2, LOG_LVL_DEBUG = 3 };

/* ident: program name; to_syslog: 0 = stderr; level: most verbose level printed. */
void log_init(const char *ident, int to_syslog, int level);
void log_set_level(int level);
/* While logging to syslog, also write error messages to fd (-1: stop). The daemon
 * uses it during start-up, so that a start that fails says why on the terminal
 * even where there is no syslog. */
void log_mirror_errors(int fd);
int log_get_level(void);
void log_msg(int level, const char *func, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_error(...) log_msg(LOG_LVL_ERROR, __func__, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __func__, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __func__, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LVL_DEBUG, __func__, __VA_ARGS__)

/*
 * Text from outside (a CA's status string, an HTTP body, a token label) is
 * data: log_escape() copies len bytes of s into out (outlen bytes, always
 * NUL-terminated) with control characters, DEL, non-ASCII bytes and the
 * backslash escaped (\n, \r, \t, \\, else \xNN), so that it can neither forge
 * a log line nor move a terminal's cursor. Output that does not fit ends in
 * "...". Returns out.
 */
const char *log_escape(const void *s, size_t len, char *out, size_t outlen);
/* log_escape() of a NUL-terminated string (NULL gives ""). */
const char *log_sanitize(const char *s, char *out, size_t outlen);
/*
 * log_sanitize() for text shown to people that may be in another language
 * (the agent's error messages as the client library hands them on): well-
 * formed UTF-8 characters are kept, invalid bytes and C1 controls escaped.
 */
const char *log_escape_utf8(const char *s, char *out, size_t outlen);

/*
 * True when stderr is connected to the systemd journal (JOURNAL_STREAM names
 * stderr's device and inode, as systemd sets it for StandardError=journal).
 * Lines written to stderr then start with a syslog priority "<N>" that
 * journald strips and records, so `journalctl -p warning` filters them.
 */
int log_to_journal(void);

#endif
