#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent/acl.h"

/* Linux 6.5+; Debian 12's headers predate it. 77 on the architectures using asm-generic's
 * numbering (others define their own, and get it from their headers or not at all). */
#if !defined(SO_PEERPIDFD) && (defined(__x86_64__) || defined(__i386__) || \
			       defined(__aarch64__) || defined(__arm__) || defined(__riscv))
#define SO_PEERPIDFD 77
#endif

static int has_gid(const gid_t *groups, size_t n, gid_t gid)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (groups[i] == gid)
			return 1;
	return 0;
}

int acl_allows(const uid_t *users, size_t n_users, const gid_t *groups, size_t n_groups,
	       const struct peer *peer)
{
	size_t i;

	for (i = 0; i < n_users; i++)
		if (users[i] == peer->uid)
			return 1;
	if (has_gid(groups, n_groups, peer->gid))
		return 1;
	for (i = 0; i < peer->n_groups && i < PEER_MAX_GROUPS; i++)
		if (has_gid(groups, n_groups, peer->groups[i]))
			return 1;
	return 0;
}

int acl_cgroup_has_unit(const char *cgroup_text, const char *unit)
{
	const char *line = cgroup_text, *p, *end, *c;
	size_t ulen = strlen(unit);

	while (line != NULL && *line != '\0') {
		end = strchr(line, '\n');
		if (end == NULL)
			end = line + strlen(line);
		/* hierarchy-ID:controllers:path; the path is after the second colon. */
		p = memchr(line, ':', (size_t)(end - line));
		p = p != NULL ? memchr(p + 1, ':', (size_t)(end - p - 1)) : NULL;
		for (c = p != NULL ? p + 1 : end; c < end;) {
			const char *slash = memchr(c, '/', (size_t)(end - c));
			const char *cend = slash != NULL ? slash : end;

			if ((size_t)(cend - c) == ulen && memcmp(c, unit, ulen) == 0)
				return 1;
			c = cend + 1;
		}
		line = *end == '\n' ? end + 1 : NULL;
	}
	return 0;
}

/* Reads a small /proc file into buf (NUL-terminated); -1 on error. */
static int read_proc(const char *path, char *buf, size_t len)
{
	ssize_t n;
	size_t got = 0;
	int fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -1;
	while (got < len - 1 && (n = read(fd, buf + got, len - 1 - got)) > 0)
		got += (size_t)n;
	close(fd);
	buf[got] = '\0';
	return 0;
}

/* The pid a pidfd refers to (fdinfo "Pid:"), or -1 when the process is gone. */
static pid_t pidfd_pid(int pidfd)
{
	char path[64], info[1024], *p;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", pidfd);
	if (read_proc(path, info, sizeof(info)) != 0 || (p = strstr(info, "\nPid:")) == NULL)
		return -1;
	return (pid_t)strtol(p + 5, NULL, 10);
}

int acl_caller_allowed(char *const *exes, size_t n_exes, char *const *units, size_t n_units,
		       const struct peer *peer, char *why, size_t whylen)
{
	char path[64], exe[PATH_MAX], cgroup[4096];
	int pidfd = -1, own = 0, ok = 0;
	pid_t pid = -1;
	ssize_t n;
	size_t i;

	if (n_exes == 0 && n_units == 0)
		return 1;
#ifdef SO_PEERPIDFD
	if (peer->has_sock) {
		/* The process that connected, as the kernel recorded it at connect(). */
		socklen_t plen = sizeof(pidfd);

		if (getsockopt(peer->sock, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &plen) != 0 ||
		    plen != sizeof(pidfd))
			pidfd = -1;
	}
#endif
	if (pidfd >= 0) {
		pid = pidfd_pid(pidfd);
	} else {
		pid = peer->pid;
		pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	}
	own = 1;
	if (pid <= 0 || pidfd < 0) {
		snprintf(why, whylen, "the calling process (pid %ld) is gone", (long)peer->pid);
		goto out;
	}
	snprintf(path, sizeof(path), "/proc/%ld/exe", (long)pid);
	if ((n = readlink(path, exe, sizeof(exe) - 1)) < 0) {
		snprintf(why, whylen, "cannot read the program of pid %ld: %s", (long)pid,
			 strerror(errno));
		goto out;
	}
	exe[n] = '\0';
	snprintf(path, sizeof(path), "/proc/%ld/cgroup", (long)pid);
	if (n_units > 0 && read_proc(path, cgroup, sizeof(cgroup)) != 0) {
		snprintf(why, whylen, "cannot read the cgroup of pid %ld: %s", (long)pid,
			 strerror(errno));
		goto out;
	}
	/* Still the same process after the reads: the pid was not reused meanwhile. */
	if (syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) != 0) {
		snprintf(why, whylen, "the calling process (pid %ld) exited during the check",
			 (long)pid);
		goto out;
	}
	if (n_exes > 0) {
		for (i = 0; i < n_exes && strcmp(exe, exes[i]) != 0; i++)
			;
		if (i == n_exes) {
			snprintf(why, whylen, "program %.200s (pid %ld) is not in allow-exe", exe,
				 (long)pid);
			goto out;
		}
	}
	if (n_units > 0) {
		for (i = 0; i < n_units && !acl_cgroup_has_unit(cgroup, units[i]); i++)
			;
		if (i == n_units) {
			snprintf(why, whylen, "pid %ld (%.200s) runs in no unit named in allow-unit",
				 (long)pid, exe);
			goto out;
		}
	}
	ok = 1;
out:
	if (own && pidfd >= 0)
		close(pidfd);
	return ok;
}
