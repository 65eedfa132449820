#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "conf/acl.h"
#include "common/log.h"

/* Linux 6.5+; Debian 12's headers predate it. 77 on the architectures using asm-generic's
 * numbering (others define their own, and get it from their headers or not at all). */
#if !defined(SO_PEERPIDFD) && (defined(__x86_64__) || defined(__i386__) || defined(__aarch64__) || \
			       defined(__arm__) || defined(__riscv))
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

/* Whether the n bytes at c end in suffix. */
static int ends_with(const char *c, size_t n, const char *suffix)
{
	size_t sl = strlen(suffix);

	return n >= sl && memcmp(c + n - sl, suffix, sl) == 0;
}

int acl_cgroup_unit(const char *cgroup_text, char *out, size_t outlen)
{
	const char *line = cgroup_text, *end, *p, *path = NULL, *path_end = NULL, *c;

	if (outlen == 0)
		return 0;
	out[0] = '\0';
	/*
	 * The unified hierarchy ("0::path") is systemd's record; on cgroup v1 the
	 * name=systemd hierarchy is. Other v1 controllers' paths are not consulted.
	 */
	while (line != NULL && *line != '\0') {
		end = strchr(line, '\n');
		if (end == NULL)
			end = line + strlen(line);
		/* hierarchy-ID:controllers:path; the path is after the second colon. */
		p = memchr(line, ':', (size_t)(end - line));
		p = p != NULL ? memchr(p + 1, ':', (size_t)(end - p - 1)) : NULL;
		if (p != NULL) {
			size_t hl = (size_t)(p - line);

			if (hl == 2 && memcmp(line, "0::", 3) == 0 && end - p > 2) {
				path = p + 1;
				path_end = end;
				break; /* authoritative when it is not the root */
			}
			if (path == NULL && hl > 13 && memcmp(p - 13, ":name=systemd", 13) == 0) {
				path = p + 1;
				path_end = end;
			}
		}
		line = *end == '\n' ? end + 1 : NULL;
	}
	if (path == NULL)
		return 0;
	/*
	 * As sd_pid_get_unit: slices are skipped from the root; the first
	 * component that is not a slice is the process's unit in the system
	 * manager. Everything a user's own manager runs lies under its
	 * user@UID.service, so that is the unit it gets, never the names the user
	 * chose for units of its own.
	 */
	for (c = path; c < path_end;) {
		const char *slash = memchr(c, '/', (size_t)(path_end - c));
		const char *cend = slash != NULL ? slash : path_end;
		size_t n = (size_t)(cend - c);

		if (n == 0 || ends_with(c, n, ".slice")) {
			c = cend + 1;
			continue;
		}
		if (n < 2 || n >= outlen || memchr(c, '.', n) == NULL)
			return 0;
		memcpy(out, c, n);
		out[n] = '\0';
		return 1;
	}
	return 0;
}

int acl_cgroup_has_unit(const char *cgroup_text, const char *unit)
{
	char u[256];

	return acl_cgroup_unit(cgroup_text, u, sizeof(u)) && strcmp(u, unit) == 0;
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

unsigned long long acl_proc_starttime(pid_t pid)
{
	char path[64], stat[1024], *p;
	unsigned long long v = 0;
	int field;

	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
	/* The command name (field 2) may hold spaces and ')': fields count from its last ')'. */
	if (pid <= 0 || read_proc(path, stat, sizeof(stat)) != 0 ||
	    (p = strrchr(stat, ')')) == NULL)
		return 0;
	for (field = 2; field < 22 && p != NULL; field++)
		p = strchr(p + 1, ' ');
	if (p != NULL)
		v = strtoull(p + 1, NULL, 10);
	return v;
}

/* Whether the process a pidfd refers to has exited: a pidfd polls readable then. */
static int pidfd_exited(int pidfd)
{
	struct pollfd pfd = {.fd = pidfd, .events = POLLIN};

	return poll(&pfd, 1, 0) != 0;
}

/*
 * A pidfd for the caller: the process that connected as the kernel recorded it at
 * connect() (SO_PEERPIDFD), else one opened now from SO_PEERCRED's pid (*by_pid set: the
 * pid may have been reused since). -1 when there is none.
 */
static int caller_pidfd(const struct peer *peer, pid_t *pid, int *by_pid)
{
	int pidfd = -1;

#ifdef SO_PEERPIDFD
	if (peer->has_sock) {
		socklen_t plen = sizeof(pidfd);

		if (getsockopt(peer->sock, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &plen) != 0 ||
		    plen != sizeof(pidfd))
			pidfd = -1;
	}
#endif
	*by_pid = pidfd < 0;
	if (pidfd >= 0) {
		*pid = pidfd_pid(pidfd);
		return pidfd;
	}
	*pid = peer->pid;
	return (int)syscall(SYS_pidfd_open, *pid, 0);
}

/*
 * Whether pid still is the process that connected. Without SO_PEERPIDFD the pid was looked
 * up only now: the caller may have exited and its pid gone to another program. Its start
 * time, recorded at accept, tells them apart.
 */
static int caller_is_peer(const struct peer *peer, pid_t pid, int pidfd, int by_pid, char *why,
			  size_t whylen)
{
	if (pid <= 0 || pidfd < 0 || pidfd_exited(pidfd)) {
		snprintf(why, whylen, "the calling process (pid %ld) is gone", (long)peer->pid);
		return 0;
	}
	if (!by_pid)
		return 1;
	if (peer->starttime == 0 && acl_proc_starttime(pid) == 0) {
		/* ProtectProc=invisible hides other users' processes, stat included. */
		snprintf(why, whylen,
			 "cannot read /proc/%ld/stat: allow-exe and allow-unit need an agent "
			 "that can read /proc/PID of other users: run it as root or with "
			 "CAP_SYS_PTRACE and ProtectProc=default",
			 (long)pid);
		return 0;
	}
	if (peer->starttime == 0 || acl_proc_starttime(pid) != peer->starttime) {
		snprintf(why, whylen,
			 peer->starttime == 0
				 ? "the start time of pid %ld was not recorded when it connected"
				 : "pid %ld is not the process that connected (it started later)",
			 (long)pid);
		return 0;
	}
	return 1;
}

/* The caller's program (/proc/PID/exe); 0 and why when it cannot be read. */
static int caller_exe(pid_t pid, int pidfd, char *exe, size_t exelen, char *why, size_t whylen)
{
	char path[64];
	ssize_t n;
	int err;

	snprintf(path, sizeof(path), "/proc/%ld/exe", (long)pid);
	if ((n = readlink(path, exe, exelen - 1)) >= 0) {
		exe[n] = '\0';
		return 1;
	}
	err = errno;
	if (pidfd_exited(pidfd))
		snprintf(why, whylen, "the calling process (pid %ld) exited during the check",
			 (long)pid);
	else if (err == EACCES || err == EPERM || err == ENOENT)
		/* Another uid's process: ptrace-read access denied, or /proc hides it. */
		snprintf(why, whylen,
			 "cannot read /proc/%ld/exe (%s): allow-exe and allow-unit need an "
			 "agent that can read /proc/PID/exe of other users: run it as root or "
			 "with CAP_SYS_PTRACE and ProtectProc=default",
			 (long)pid, strerror(err));
	else
		snprintf(why, whylen, "cannot read the program of pid %ld: %s", (long)pid,
			 strerror(err));
	return 0;
}

/* The caller's cgroup path (/proc/PID/cgroup); 0 and why when it cannot be read. */
static int caller_cgroup(pid_t pid, int pidfd, char *cgroup, size_t len, char *why, size_t whylen)
{
	char path[64];
	int err;

	snprintf(path, sizeof(path), "/proc/%ld/cgroup", (long)pid);
	if (read_proc(path, cgroup, len) == 0)
		return 1;
	err = errno;
	if (pidfd_exited(pidfd))
		snprintf(why, whylen, "the calling process (pid %ld) exited during the check",
			 (long)pid);
	else
		snprintf(why, whylen,
			 "cannot read /proc/%ld/cgroup (%s): allow-unit needs an agent that "
			 "can read /proc/PID of other users: run it as root or with "
			 "CAP_SYS_PTRACE and ProtectProc=default",
			 (long)pid, strerror(err));
	return 0;
}

static int in_list(const char *s, char *const *list, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcmp(s, list[i]) == 0)
			return 1;
	return 0;
}

/* The rules themselves, on what was read of the caller; safe_exe is for messages. */
static int caller_matches(char *const *exes, size_t n_exes, char *const *units, size_t n_units,
			  pid_t pid, const char *exe, const char *safe_exe, const char *cgroup,
			  char *why, size_t whylen)
{
	char unit[256];

	if (n_exes > 0 && !in_list(exe, exes, n_exes)) {
		snprintf(why, whylen, "program %.200s (pid %ld) is not in allow-exe", safe_exe,
			 (long)pid);
		return 0;
	}
	if (n_units == 0)
		return 1;
	if (!acl_cgroup_unit(cgroup, unit, sizeof(unit)))
		snprintf(unit, sizeof(unit), "none");
	if (!in_list(unit, units, n_units)) {
		snprintf(why, whylen,
			 "pid %ld (%.200s) runs in system unit %.100s, not one named in allow-unit",
			 (long)pid, safe_exe, unit);
		return 0;
	}
	return 1;
}

int acl_caller_allowed(char *const *exes, size_t n_exes, char *const *units, size_t n_units,
		       const struct peer *peer, char *why, size_t whylen)
{
	char exe[PATH_MAX], safe[400], cgroup[4096] = "";
	int pidfd, by_pid, ok = 0;
	pid_t pid = -1;

	if (n_exes == 0 && n_units == 0)
		return 1;
	pidfd = caller_pidfd(peer, &pid, &by_pid);
	if (!caller_is_peer(peer, pid, pidfd, by_pid, why, whylen) ||
	    !caller_exe(pid, pidfd, exe, sizeof(exe), why, whylen) ||
	    (n_units > 0 && !caller_cgroup(pid, pidfd, cgroup, sizeof(cgroup), why, whylen)))
		goto out;
	/* A caller chooses its program's path: it is data in messages and logs. */
	log_sanitize(exe, safe, sizeof(safe));
	/*
	 * Still the same process after the reads: the pid was not reused meanwhile. Polling
	 * the pidfd needs no permission over the process (a signal 0 would, and fail with
	 * EPERM for another uid).
	 */
	if (pidfd_exited(pidfd)) {
		snprintf(why, whylen, "the calling process (pid %ld) exited during the check",
			 (long)pid);
		goto out;
	}
	ok = caller_matches(exes, n_exes, units, n_units, pid, exe, safe, cgroup, why, whylen);
out:
	if (pidfd >= 0)
		close(pidfd);
	return ok;
}
