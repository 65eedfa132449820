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
int log_get_level(void);
void log_msg(int level, const char *func, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_error(...) log_msg(LOG_LVL_ERROR, __func__, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __func__, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __func__, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LVL_DEBUG, __func__, __VA_ARGS__)

/*
 * True when stderr is connected to the systemd journal (JOURNAL_STREAM names
 * stderr's device and inode, as systemd sets it for StandardError=journal).
 * Lines written to stderr then start with a syslog priority "<N>" that
 * journald strips and records, so `journalctl -p warning` filters them.
 */
int log_to_journal(void);

/* Copies s into out (outlen bytes), replacing control and non-ASCII bytes by '?'. */
const char *log_sanitize(const char *s, char *out, size_t outlen);

#endif
