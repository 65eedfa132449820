/* Small system helpers shared by the agent, the client library and the tools. */
#ifndef MTLS_COMMON_UTIL_H
#define MTLS_COMMON_UTIL_H

#include <stddef.h>
#include <time.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Room for one error line: the (err, errlen) buffers that keystores,
 * transports and the dispatcher fill for their caller, and the client
 * library's last error. Longer text is cut, never overflowed.
 */
#define MTLSA_ERRMSG_MAX 512

/* Zeroes memory in a way the compiler cannot drop (secrets, signature inputs). */
void wipe(void *p, size_t n);

/*
 * Writes data to path atomically: a new temp file in the same directory
 * (O_CREAT|O_EXCL, given mode), write, fsync, rename over path, fsync the
 * directory. On failure the old file is untouched and errno says why.
 * An existing path that is not a regular file (a device, a directory, a
 * symlink) is refused with EINVAL rather than replaced. The directory is
 * opened component by component without following symlinks, except those
 * in directories only root or the effective uid can write (and owned by
 * them); any other symlink on the way fails with ELOOP, so a root writer is
 * never redirected by another user. Returns 0 or -1.
 */
int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);

/*
 * strerror() for write_file_atomic's errno, in its terms: ELOOP is a symlink it refused to
 * follow and EINVAL a path that is not a regular file, not what strerror() calls them.
 */
const char *write_file_strerror(int errnum);

/*
 * Reads a whole file of at most max bytes into a new NUL-terminated buffer.
 * Returns 0 or -1 with errno (EFBIG when over max).
 */
int read_file(const char *path, size_t max, uint8_t **data, size_t *len);

/*
 * Reads a secret (PIN) file. Refuses, with a message in err, a file that is
 * not a regular file, is owned by someone other than root or the effective
 * uid, or grants any permission to group or others. Trailing newlines are
 * stripped. The caller wipes and frees *secret. Returns 0 or -1.
 */
int read_secret_file(const char *path, char **secret, char *err, size_t errlen);

/* Equal strings, where NULL equals only NULL. */
int str_eq(const char *a, const char *b);

/* Lower-case hex of n bytes into out (2n+1 bytes). */
void hex_encode(const uint8_t *p, size_t n, char *out);

/* t as 2026-01-02T03:04:05Z into out; "-" for 0 (no time) or an unprintable time. */
void format_utc(time_t t, char *out, size_t len);

/*
 * Starts path with argv and envp, stdin from /dev/null, every signal at its
 * default disposition and an empty signal mask (for hooks such as
 * post-renew). Returns 0 with *pid set, or an errno value.
 */
int spawn_clean(const char *path, char *const argv[], char *const envp[], pid_t *pid);

/* CLOCK_MONOTONIC in milliseconds. */
uint64_t monotonic_ms(void);

#endif
