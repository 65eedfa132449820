#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"

void wipe(void *p, size_t n)
{
	if (p != NULL && n > 0)
		explicit_bzero(p, n);
}

static int write_all(int fd, const void *data, size_t len)
{
	const uint8_t *p = data;
	ssize_t w;

	while (len > 0) {
		w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* A directory only root or we can change: its entries (symlinks too) are ours to trust. */
static int dir_trusted(int dfd)
{
	struct stat st;

	return fstat(dfd, &st) == 0 && S_ISDIR(st.st_mode) &&
	       (st.st_uid == 0 || st.st_uid == geteuid()) &&
	       (st.st_mode & (S_IWGRP | S_IWOTH)) == 0;
}

/*
 * Opens the directory dir component by component (openat, O_NOFOLLOW), so
 * that no component can be swapped for a symlink between a check and the
 * use. A symlink is followed only where it sits in a trusted directory and
 * is owned by root or us (then only they could have made it); one in a
 * directory that others can write is refused with ELOOP: a root-run agent
 * writing a certificate into a user's directory must not be sent elsewhere.
 * Returns the directory fd or -1 with errno.
 */
static int open_dir_safely(const char *dir)
{
	/* path_left: the components not yet opened (a symlink's target is prepended). */
	char *path_left = NULL, *next = NULL, *comp, *rest, target[PATH_MAX];
	unsigned links = 0;
	struct stat st;
	ssize_t tl;
	int dfd, fd, saved;

	if ((path_left = strdup(dir)) == NULL)
		return -1;
	if ((dfd = open(dir[0] == '/' ? "/" : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		goto fail;
	rest = path_left;
	for (;;) {
		while (*rest == '/')
			rest++;
		if (*rest == '\0')
			break;
		comp = rest;
		rest = strchr(rest, '/');
		if (rest != NULL)
			*rest++ = '\0';
		else
			rest = comp + strlen(comp);
		if (strcmp(comp, ".") == 0)
			continue;
		fd = openat(dfd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0) {
			close(dfd);
			dfd = fd;
			continue;
		}
		if ((errno != ELOOP && errno != ENOTDIR) ||
		    fstatat(dfd, comp, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISLNK(st.st_mode)) {
			if (errno == 0)
				errno = ENOTDIR;
			goto fail;
		}
		if (!dir_trusted(dfd) || (st.st_uid != 0 && st.st_uid != geteuid()) ||
		    ++links > 32) {
			errno = ELOOP;
			goto fail;
		}
		if ((tl = readlinkat(dfd, comp, target, sizeof(target) - 1)) <= 0) {
			if (tl == 0)
				errno = ENOENT;
			goto fail;
		}
		target[tl] = '\0';
		/* Continue with the link's target followed by what was left of the path. */
		if (asprintf(&next, "%s/%s", target, rest) < 0) {
			next = NULL;
			goto fail;
		}
		free(path_left);
		path_left = next;
		next = NULL;
		rest = path_left;
		if (target[0] == '/') {
			close(dfd);
			if ((dfd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
				goto fail;
		}
	}
	free(path_left);
	return dfd;
fail:
	saved = errno;
	if (dfd >= 0)
		close(dfd);
	free(path_left);
	errno = saved;
	return -1;
}

const char *write_file_strerror(int errnum)
{
	switch (errnum) {
	case ELOOP:
		return "a symbolic link on the path is in a directory that others may write, or is "
		       "owned by another user (not followed)";
	case EINVAL:
		return "the path names something other than a regular file";
	default:
		return strerror(errnum);
	}
}

int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
	char *tmp = NULL, *dcopy = NULL, *bcopy = NULL, *base;
	int fd = -1, dfd = -1, ret = -1, saved;
	unsigned attempt;
	struct stat st;

	if ((dcopy = strdup(path)) == NULL || (bcopy = strdup(path)) == NULL)
		goto out;
	base = basename(bcopy);
	if (base[0] == '\0' || strcmp(base, ".") == 0 || strcmp(base, "..") == 0 ||
	    strcmp(base, "/") == 0) {
		errno = EINVAL;
		goto out;
	}
	/* Every later step is relative to this descriptor: nothing on the path can move us. */
	if ((dfd = open_dir_safely(dirname(dcopy))) < 0)
		goto out;
	/* Renaming over a device or a directory would replace it: only regular files. */
	if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(st.st_mode)) {
		errno = EINVAL;
		goto out;
	}
	for (attempt = 0; attempt < 16; attempt++) {
		free(tmp);
		tmp = NULL;
		if (asprintf(&tmp, "%s.tmp.%ld.%u", base, (long)getpid(), attempt) < 0) {
			tmp = NULL;
			goto out;
		}
		fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
		if (fd >= 0 || errno != EEXIST)
			break;
	}
	if (fd < 0)
		goto out;
	if (fchmod(fd, mode) != 0 || write_all(fd, data, len) != 0 || fsync(fd) != 0)
		goto out;
	if (close(fd) != 0) {
		fd = -1;
		goto out;
	}
	fd = -1;
	if (renameat(dfd, tmp, dfd, base) != 0)
		goto out;
	free(tmp);
	tmp = NULL;
	/* The rename is durable only once the directory entry is on disk. */
	if (fsync(dfd) != 0)
		goto out;
	ret = 0;
out:
	saved = errno;
	if (fd >= 0)
		close(fd);
	if (tmp != NULL) {
		unlinkat(dfd, tmp, 0);
		free(tmp);
	}
	if (dfd >= 0)
		close(dfd);
	free(dcopy);
	free(bcopy);
	errno = saved;
	return ret;
}

/* Reads fd to its end (at most max bytes) into a new NUL-terminated buffer. */
static int read_fd(int fd, size_t max, uint8_t **data, size_t *len)
{
	uint8_t *p = NULL, *np;
	size_t n = 0, cap = 0;
	ssize_t r;
	int saved;

	*data = NULL;
	*len = 0;
	for (;;) {
		if (n == cap) {
			/* n <= max here, so one more read tells whether the file is over max. */
			/* Grown by copy, not realloc, so no unwiped copy of a secret is freed. */
			if ((np = malloc((cap == 0 ? 4096 : cap * 2) + 1)) == NULL)
				goto fail;
			if (p != NULL) {
				memcpy(np, p, n);
				wipe(p, cap + 1);
				free(p);
			}
			p = np;
			cap = cap == 0 ? 4096 : cap * 2;
		}
		r = read(fd, p + n, cap - n);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			goto fail;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > max) {
			errno = EFBIG;
			goto fail;
		}
	}
	if (p == NULL && (p = malloc(1)) == NULL)
		return -1;
	p[n] = '\0';
	*data = p;
	*len = n;
	return 0;
fail:
	saved = errno;
	if (p != NULL) {
		wipe(p, cap + 1);
		free(p);
	}
	errno = saved;
	return -1;
}

int read_file(const char *path, size_t max, uint8_t **data, size_t *len)
{
	int fd, r, saved;

	*data = NULL;
	*len = 0;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -1;
	r = read_fd(fd, max, data, len);
	saved = errno;
	close(fd);
	errno = saved;
	return r;
}

int read_secret_file(const char *path, char **secret, char *err, size_t errlen)
{
	struct stat st;
	uint8_t *data = NULL;
	size_t len = 0;
	int fd, ret = -1;

	*secret = NULL;
	/*
	 * The checks and the read use the same descriptor: a path checked and
	 * then opened again could be swapped in between (a symlink to another
	 * file, a file with other permissions). O_NOFOLLOW: the last component
	 * must not be a symlink; O_NONBLOCK: a FIFO must not block the agent (it
	 * is refused below as not a regular file).
	 */
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)) < 0) {
		if (errno == ELOOP)
			snprintf(err, errlen, "%s is a symbolic link; name the file itself", path);
		else
			snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) != 0) {
		snprintf(err, errlen, "cannot stat %s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s is not a regular file", path);
		goto out;
	}
	if (st.st_uid != 0 && st.st_uid != geteuid()) {
		snprintf(err, errlen, "%s must be owned by root or uid %ld", path, (long)geteuid());
		goto out;
	}
	if ((st.st_mode & 077) != 0) {
		snprintf(err, errlen,
			 "%s is accessible by group or others (mode %04o); chmod 600 it", path,
			 (unsigned)(st.st_mode & 07777));
		goto out;
	}
	if (read_fd(fd, 4096, &data, &len) != 0) {
		snprintf(err, errlen, "cannot read %s: %s", path,
			 errno == EFBIG ? "larger than 4096 bytes" : strerror(errno));
		goto out;
	}
	while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r'))
		data[--len] = '\0';
	if (len == 0 || memchr(data, '\0', len) != NULL) {
		snprintf(err, errlen, "%s holds no usable secret", path);
		wipe(data, len);
		free(data);
		goto out;
	}
	*secret = (char *)data;
	ret = 0;
out:
	close(fd);
	return ret;
}

int str_eq(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

void hex_encode(const uint8_t *p, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		out[2 * i] = digits[p[i] >> 4];
		out[2 * i + 1] = digits[p[i] & 0xf];
	}
	out[2 * n] = '\0';
}

uint64_t monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void format_utc(time_t t, char *out, size_t len)
{
	struct tm tm;

	if (t <= 0 || gmtime_r(&t, &tm) == NULL ||
	    strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, len, "-");
}

int spawn_clean(const char *path, char *const argv[], char *const envp[], pid_t *pid)
{
	struct sigaction dfl;
	sigset_t none;
	int pipefd[2], err = 0, sig, fd;
	ssize_t n;
	pid_t p;

	/*
	 * The agent ignores SIGPIPE and blocks the signals its loop waits for;
	 * both would be inherited across exec, and a shell cannot undo an
	 * ignored disposition it started with. fork + exec rather than
	 * posix_spawn: glibc's posix_spawn leaves its two internal real-time
	 * signals ignored in the child. The child runs only async-signal-safe
	 * calls; an exec failure comes back through a close-on-exec pipe.
	 */
	if (pipe2(pipefd, O_CLOEXEC) != 0)
		return errno;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigemptyset(&dfl.sa_mask);
	sigemptyset(&none);
	if ((p = fork()) < 0) {
		err = errno;
		close(pipefd[0]);
		close(pipefd[1]);
		return err;
	}
	if (p == 0) {
		close(pipefd[0]);
		/* Fails harmlessly for SIGKILL, SIGSTOP and the C library's own signals. */
		for (sig = 1; sig < NSIG; sig++)
			sigaction(sig, &dfl, NULL);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if ((fd = open("/dev/null", O_RDONLY)) < 0 || (fd != 0 && dup2(fd, 0) != 0)) {
			err = errno;
		} else {
			if (fd != 0)
				close(fd);
			execve(path, argv, envp);
			err = errno;
		}
		n = write(pipefd[1], &err, sizeof(err));
		(void)n;
		_exit(127);
	}
	close(pipefd[1]);
	do
		n = read(pipefd[0], &err, sizeof(err));
	while (n < 0 && errno == EINTR);
	close(pipefd[0]);
	if (n == (ssize_t)sizeof(err)) {
		/* The child could not exec and has exited: reap it here. */
		while (waitpid(p, NULL, 0) < 0 && errno == EINTR)
			;
		return err != 0 ? err : EIO;
	}
	*pid = p;
	return 0;
}
