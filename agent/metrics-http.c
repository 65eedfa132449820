#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "conf/acl.h"
#include "agent/metrics-http.h"
#include "agent/metrics.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"

/* Largest page served; the renderer stops with an error beyond it (500). */
#define METRICS_HTTP_MAX_REPLY (4u * 1024u * 1024u)

struct metrics_http {
	int fd;
	int stop_fd;
	int is_unix;
	char *path; /* Unix socket file to remove, or NULL */
	struct runtime *(*get_rt)(void *);
	void *arg;
	pthread_t thread;
};

/* Waits for fd to be ready until deadline (monotonic ms); 0 when ready. */
static int wait_fd(int fd, short events, uint64_t deadline)
{
	struct pollfd p = {fd, events, 0};
	uint64_t now;
	int r;

	for (;;) {
		now = monotonic_ms();
		if (now >= deadline)
			return -1;
		r = poll(&p, 1, (int)(deadline - now));
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -1;
	}
}

static void send_all(int fd, const char *p, size_t n, uint64_t deadline)
{
	ssize_t w;

	while (n > 0) {
		if (wait_fd(fd, POLLOUT, deadline) != 0)
			return;
		w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

static void reply(int fd, const char *status, const char *ctype, const char *body, size_t len,
		  uint64_t deadline)
{
	char head[256];
	int n;

	n = snprintf(head, sizeof(head),
		     "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
		     "Connection: close\r\n\r\n",
		     status, ctype, len);
	send_all(fd, head, (size_t)n, deadline);
	send_all(fd, body, len, deadline);
}

static void reply_text(int fd, const char *status, const char *msg, uint64_t deadline)
{
	reply(fd, status, "text/plain; charset=utf-8", msg, strlen(msg), deadline);
}

struct scraper {
	int is_unix;
	struct peer peer;
	int admin;
};

static int scraper_may_see(const struct identity_rt *id, void *arg)
{
	const struct scraper *s = arg;

	if (!s->is_unix)
		return id->rt->cfg->metrics_identities;
	return s->admin || acl_allows(id->cfg->allow_users, id->cfg->n_allow_users,
				      id->cfg->allow_groups, id->cfg->n_allow_groups, &s->peer);
}

static int unix_peer(int fd, struct peer *peer)
{
	struct ucred uc;
	socklen_t len = sizeof(uc);
	gid_t groups[PEER_MAX_GROUPS];
	socklen_t glen = sizeof(groups);

	memset(peer, 0, sizeof(*peer));
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0 || len != sizeof(uc))
		return -1;
	peer->uid = uc.uid;
	peer->gid = uc.gid;
	peer->pid = uc.pid;
	/* Too many groups: judged without them (can refuse wrongly, never admit wrongly). */
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0)
		peer->n_groups = glen / sizeof(gid_t);
	if (peer->n_groups > PEER_MAX_GROUPS)
		peer->n_groups = 0;
	memcpy(peer->groups, groups, peer->n_groups * sizeof(gid_t));
	return 0;
}

/*
 * Reads the request head (up to the blank line) and answers it. Only the
 * request line matters; headers are read to their end and ignored.
 */
static void serve(struct metrics_http *h, int fd)
{
	uint64_t deadline = monotonic_ms() + METRICS_HTTP_TIMEOUT_MS;
	char req[METRICS_HTTP_MAX_REQUEST + 1], *eol, *sp1, *sp2, *q;
	struct scraper sc;
	struct runtime *rt;
	size_t len = 0;
	ssize_t n;
	struct buf text;
	int r;

	memset(&sc, 0, sizeof(sc));
	sc.is_unix = h->is_unix;
	if (h->is_unix && unix_peer(fd, &sc.peer) != 0)
		return;
	for (;;) {
		if (len == METRICS_HTTP_MAX_REQUEST) {
			reply_text(fd, "431 Request Header Fields Too Large", "request too large\n",
				   deadline);
			return;
		}
		if (wait_fd(fd, POLLIN, deadline) != 0)
			return; /* too slow: nothing to say */
		n = recv(fd, req + len, METRICS_HTTP_MAX_REQUEST - len, MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			return;
		len += (size_t)n;
		req[len] = '\0';
		if (memchr(req, '\0', len) != NULL) {
			reply_text(fd, "400 Bad Request", "bad request\n", deadline);
			return;
		}
		if (strstr(req, "\r\n\r\n") != NULL || strstr(req, "\n\n") != NULL)
			break;
	}
	/* Request line: METHOD SP TARGET SP HTTP/1.x */
	eol = strpbrk(req, "\r\n");
	*eol = '\0';
	if ((sp1 = strchr(req, ' ')) == NULL || (sp2 = strchr(sp1 + 1, ' ')) == NULL ||
	    strchr(sp2 + 1, ' ') != NULL ||
	    (strcmp(sp2 + 1, "HTTP/1.1") != 0 && strcmp(sp2 + 1, "HTTP/1.0") != 0)) {
		reply_text(fd, "400 Bad Request", "bad request line\n", deadline);
		return;
	}
	*sp1 = *sp2 = '\0';
	if ((q = strchr(sp1 + 1, '?')) != NULL)
		*q = '\0';
	if (strcmp(sp1 + 1, "/metrics") != 0) {
		reply_text(fd, "404 Not Found", "only /metrics is served here\n", deadline);
		return;
	}
	if (strcmp(req, "GET") != 0) {
		reply_text(fd, "405 Method Not Allowed", "only GET\n", deadline);
		return;
	}
	if ((rt = h->get_rt(h->arg)) == NULL) {
		reply_text(fd, "503 Service Unavailable", "stopping\n", deadline);
		return;
	}
	if (h->is_unix)
		sc.admin = acl_allows(rt->cfg->admin_users, rt->cfg->n_admin_users,
				      rt->cfg->admin_groups, rt->cfg->n_admin_groups, &sc.peer);
	buf_init(&text, METRICS_HTTP_MAX_REPLY);
	/* Keystore series are agent health, not identity data: every scraper sees them. */
	r = metrics_render(&text, rt, scraper_may_see, &sc, 1, time(NULL));
	runtime_unref(rt);
	if (r != 0)
		reply_text(fd, "500 Internal Server Error", "metrics too large\n", deadline);
	else
		reply(fd, "200 OK", "text/plain; version=0.0.4; charset=utf-8", (char *)text.data,
		      text.len, deadline);
	buf_free(&text);
}

static void *http_thread(void *arg)
{
	struct metrics_http *h = arg;
	struct pollfd p[2];
	int fd;

	p[0].fd = h->fd;
	p[0].events = POLLIN;
	p[1].fd = h->stop_fd;
	p[1].events = POLLIN;
	for (;;) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_error("metrics-listen: poll: %s", strerror(errno));
			break;
		}
		if (p[1].revents != 0)
			break;
		if ((fd = accept4(h->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) < 0) {
			if (errno == EMFILE || errno == ENFILE) {
				/* Out of descriptors: back off instead of spinning. */
				struct timespec ts = {0, 100000000L};

				nanosleep(&ts, NULL);
			}
			continue;
		}
		serve(h, fd);
		close(fd);
	}
	return NULL;
}

int metrics_http_start(const char *listen_on, struct runtime *(*get_rt)(void *), void *arg,
		       struct metrics_http **out, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	struct sockaddr_un *sun = (struct sockaddr_un *)&ss;
	struct metrics_http *h;
	struct stat st;
	socklen_t sslen;
	int one = 1;

	*out = NULL;
	if ((h = calloc(1, sizeof(*h))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	h->fd = h->stop_fd = -1;
	h->get_rt = get_rt;
	h->arg = arg;
	if (listen_on[0] == '/') {
		memset(sun, 0, sizeof(*sun));
		sun->sun_family = AF_UNIX;
		snprintf(sun->sun_path, sizeof(sun->sun_path), "%s", listen_on);
		sslen = sizeof(*sun);
		h->is_unix = 1;
		/* A stale socket from an earlier run would make bind fail; anything else stays. */
		if (lstat(listen_on, &st) == 0 && S_ISSOCK(st.st_mode))
			unlink(listen_on);
	} else {
		if (metrics_parse_addr(listen_on, &ss, err, errlen) != 0)
			goto fail;
		sslen = ss.ss_family == AF_INET ? sizeof(struct sockaddr_in)
						: sizeof(struct sockaddr_in6);
	}
	if ((h->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0 ||
	    (!h->is_unix && setsockopt(h->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) ||
	    bind(h->fd, (struct sockaddr *)&ss, sslen) != 0 || listen(h->fd, 16) != 0) {
		snprintf(err, errlen, "metrics-listen %s: %s", listen_on, strerror(errno));
		goto fail;
	}
	if (h->is_unix) {
		/* Anyone may connect; what they see depends on who they are. */
		chmod(listen_on, 0666);
		if ((h->path = strdup(listen_on)) == NULL) {
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
	}
	if ((h->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
	    pthread_create(&h->thread, NULL, http_thread, h) != 0) {
		snprintf(err, errlen, "metrics-listen: cannot start its thread");
		goto fail;
	}
	log_info("metrics on http://%s/metrics%s", listen_on, h->is_unix ? " (Unix socket)" : "");
	*out = h;
	return 0;
fail:
	if (h->fd >= 0)
		close(h->fd);
	if (h->stop_fd >= 0)
		close(h->stop_fd);
	if (h->path != NULL)
		unlink(h->path);
	free(h->path);
	free(h);
	return -1;
}

void metrics_http_stop(struct metrics_http *h)
{
	uint64_t one = 1;

	if (h == NULL)
		return;
	(void)!write(h->stop_fd, &one, sizeof(one));
	pthread_join(h->thread, NULL);
	close(h->fd);
	close(h->stop_fd);
	if (h->path != NULL)
		unlink(h->path);
	free(h->path);
	free(h);
}
