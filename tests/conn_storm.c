/*
 * Connection-limit driver for tests/integration/limits.sh:
 *
 *   conn_storm hold SOCKET N HOLD_FILE
 *       opens N connections through libmtls-agent (mtls_agent_connect: connect
 *       and HELLO), one after the other, and prints one line per connection:
 *         ok MS
 *         refused CODE MS MESSAGE
 *       (MS: milliseconds the call took), then "done" once all N have been
 *       tried. Keeps the open ones until HOLD_FILE exists (at most 120 s).
 *       More connections than the descriptor limit allows are spread over
 *       child processes.
 *   conn_storm fill SOCKET HOLD_FILE
 *       non-blocking connect()s until the agent's listen queue is full
 *       (EAGAIN); prints "filled N", holds them until HOLD_FILE exists.
 *   conn_storm noread SOCKET
 *       connects, then sends LIST requests without ever reading a reply until
 *       the socket takes no more; waits (at most 60 s) for the agent to close
 *       the connection and prints "closed after MS" (exit 0) or "not closed"
 *       (exit 1).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/proto.h"
#include "mtls-agent/client.h"

#define HOLD_MAX_MS 120000
#define CHUNK_SPARE 32

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* One whole line per write(2), so that lines from several processes do not mix. */
static void out_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out_line(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	(void)!write(STDOUT_FILENO, line, (size_t)n);
}

static void wait_for_file(const char *path)
{
	struct stat st;
	uint64_t end = now_ms() + HOLD_MAX_MS;

	while (stat(path, &st) != 0 && now_ms() < end)
		usleep(50000);
}

/* Raises the soft descriptor limit to the hard one; returns the soft limit. */
static long fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return 1024;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	return rl.rlim_cur > 1 << 20 ? 1 << 20 : (long)rl.rlim_cur;
}

static void hold_chunk(const char *sock, long n, const char *hold_file, int report_fd)
{
	mtls_agent **a = calloc((size_t)n, sizeof(*a));
	uint64_t t0;
	long i;
	int r;

	if (a == NULL) {
		perror("calloc");
		exit(1);
	}
	for (i = 0; i < n; i++) {
		t0 = now_ms();
		r = mtls_agent_connect(sock, &a[i]);
		if (r == 0)
			out_line("ok %llu", (unsigned long long)(now_ms() - t0));
		else
			out_line("refused %d %llu %s", r, (unsigned long long)(now_ms() - t0),
				 mtls_agent_last_error());
	}
	(void)!write(report_fd, "x", 1);
	wait_for_file(hold_file);
	for (i = 0; i < n; i++)
		mtls_agent_close(a[i]);
	free(a);
}

static int cmd_hold(const char *sock, long n, const char *hold_file)
{
	long chunk = fd_limit() - CHUNK_SPARE, left, k, children = 0;
	int fds[2], status, ret = 0;
	char c;
	pid_t pid;

	if (chunk < 1 || pipe(fds) != 0) {
		fprintf(stderr, "conn_storm: no descriptors to work with\n");
		return 1;
	}
	for (left = n; left > 0; left -= k) {
		k = left < chunk ? left : chunk;
		if ((pid = fork()) < 0) {
			perror("fork");
			return 1;
		}
		if (pid == 0) {
			close(fds[0]);
			hold_chunk(sock, k, hold_file, fds[1]);
			_exit(0);
		}
		children++;
		/* One chunk at a time: the connections are tried in order. */
		if (read(fds[0], &c, 1) != 1) {
			fprintf(stderr, "conn_storm: a child died\n");
			ret = 1;
			break;
		}
	}
	out_line("done");
	while (children-- > 0)
		if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			ret = 1;
	return ret;
}

static int raw_socket(const char *sock, int nonblock, int *fd)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};

	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", sock);
	*fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
	if (*fd < 0)
		return -1;
	return connect(*fd, (struct sockaddr *)&sun, sizeof(sun));
}

static int cmd_fill(const char *sock, const char *hold_file)
{
	long max = fd_limit() - CHUNK_SPARE, n;
	int fd;

	for (n = 0; n < max; n++) {
		if (raw_socket(sock, 1, &fd) != 0) {
			if (errno == EAGAIN) {
				close(fd);
				break;
			}
			perror("connect");
			return 1;
		}
	}
	if (n == max) {
		fprintf(stderr, "conn_storm: the listen queue never filled (%ld)\n", n);
		return 1;
	}
	out_line("filled %ld", n);
	wait_for_file(hold_file);
	return 0;
}

static int cmd_noread(const char *sock)
{
	struct pollfd pfd;
	struct buf b;
	uint64_t t0;
	uint32_t id = 1;
	size_t sent = 0;
	ssize_t w;
	int fd;

	if (raw_socket(sock, 0, &fd) != 0) {
		perror("connect");
		return 1;
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	buf_init(&b, 4096);
	proto_frame_begin(&b, MSG_HELLO, id++);
	buf_put_u32(&b, PROTO_VERSION);
	buf_put_u32(&b, PROTO_VERSION);
	buf_put_cstring(&b, "conn_storm");
	proto_frame_end(&b);
	/* Requests until neither the socket nor the agent takes more. */
	for (;;) {
		w = send(fd, b.data + sent, b.len - sent, MSG_NOSIGNAL);
		if (w < 0 && errno == EAGAIN) {
			pfd.fd = fd;
			pfd.events = POLLOUT;
			if (poll(&pfd, 1, 500) == 0)
				break; /* the agent stopped reading: it has replies we do not read
					*/
			continue;
		}
		if (w < 0) {
			perror("send");
			return 1;
		}
		sent += (size_t)w;
		if (sent == b.len) {
			buf_reset(&b);
			proto_frame_begin(&b, MSG_LIST, id++);
			proto_frame_end(&b);
			sent = 0;
		}
	}
	fprintf(stderr, "conn_storm: %u requests sent, none read; waiting\n", id - 1);
	t0 = now_ms();
	pfd.fd = fd;
	pfd.events = POLLRDHUP;
	while (now_ms() - t0 < 60000) {
		if (poll(&pfd, 1, 200) > 0 && (pfd.revents & (POLLHUP | POLLRDHUP | POLLERR))) {
			out_line("closed after %llu", (unsigned long long)(now_ms() - t0));
			buf_free(&b);
			close(fd);
			return 0;
		}
	}
	out_line("not closed");
	buf_free(&b);
	close(fd);
	return 1;
}

int main(int argc, char **argv)
{
	if (argc == 5 && strcmp(argv[1], "hold") == 0)
		return cmd_hold(argv[2], strtol(argv[3], NULL, 10), argv[4]);
	if (argc == 4 && strcmp(argv[1], "fill") == 0)
		return cmd_fill(argv[2], argv[3]);
	if (argc == 3 && strcmp(argv[1], "noread") == 0)
		return cmd_noread(argv[2]);
	fprintf(stderr, "usage: conn_storm hold SOCKET N HOLD_FILE | fill SOCKET HOLD_FILE | "
			"noread SOCKET\n");
	return 2;
}
