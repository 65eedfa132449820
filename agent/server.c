#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "conf/acl.h"
#include "agent/audit.h"
#include "agent/dispatch.h"
#include "agent/metrics-http.h"
#include "agent/metrics.h"
#include "renew/renew.h"
#include "agent/server.h"

#include "common/log.h"
#include "common/proto.h"
#include "common/util.h"
#include "mtls-agent/client.h"

/* A partial request must be completed within this time (slowloris). */
#define PARTIAL_FRAME_TIMEOUT_MS 10000
/* After EMFILE/ENFILE, stop accepting for this long instead of spinning. */
#define ACCEPT_PAUSE_MS 1000
/* Period of the housekeeping timer (shorter if the watchdog needs it). */
#define TICK_MS 1000
/*
 * Descriptors kept back from max-clients for everything else the agent opens:
 * its own (listener, epoll, signal, timer, reserve), syslog, keystore devices
 * and token files, renewal's sockets and files, post-renew pipes.
 */
#define FD_OVERHEAD 64
/* Refusals logged per second at most; the rest are counted. */
#define REFUSAL_LOG_MS 1000

/*
 * The service manager: sd_notify(3) messages (READY, RELOADING, STOPPING,
 * STATUS, WATCHDOG) and the watchdog interval. Without libsystemd, or when
 * not started by systemd (no NOTIFY_SOCKET), these do nothing.
 */
#ifdef HAVE_LIBSYSTEMD
static void notify_send(const char *msg)
{
	sd_notify(0, msg);
}

/* Half the interval systemd expects pings at (WATCHDOG_USEC), in ms; 0 if none. */
static uint64_t watchdog_half_ms(void)
{
	uint64_t usec = 0;

	if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0)
		return 0;
	return usec / 2000 > 0 ? usec / 2000 : 1;
}
#else
static void notify_send(const char *msg)
{
	(void)msg;
}

static uint64_t watchdog_half_ms(void)
{
	return 0;
}
#endif

/*
 * One notification: "KEY=VALUE" lines. STATUS= text goes last and is made
 * one printable line, since it may quote configuration or error text.
 */
static void notify(const char *fields, const char *status_fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void notify(const char *fields, const char *status_fmt, ...)
{
	char status[512], clean[512], msg[768];
	va_list ap;

	if (getenv("NOTIFY_SOCKET") == NULL)
		return;
	va_start(ap, status_fmt);
	vsnprintf(status, sizeof(status), status_fmt, ap);
	va_end(ap);
	snprintf(msg, sizeof(msg), "%s\nSTATUS=%s", fields,
		 log_sanitize(status, clean, sizeof(clean)));
	notify_send(msg);
}

/*
 * Threading: every thread waits in epoll_wait on one epoll set whose
 * descriptors are armed with EPOLLONESHOT. The thread that receives a
 * connection's event owns that connection until it re-arms it (or closes
 * it): it reads, runs dispatch() (which may block in the keystore) and
 * writes the reply itself. A request therefore costs the same two wake-ups
 * as a plain socket round trip, and a slow keystore call holds one thread
 * while the others keep serving.
 */
struct conn {
	int fd;
	struct conn_ctx ctx;
	struct buf in;	/* bytes received, at most one maximal frame */
	struct buf out; /* reply bytes not yet written */
	int closing;	/* close once out is flushed */
	/* Below: under server.lock. */
	int owned;		/* a thread is handling the connection (it is not armed) */
	uint64_t partial_since; /* monotonic ms when an incomplete frame started; 0 if none */
	uint64_t last_active;	/* monotonic ms of the last event handled */
	int shut;		/* the sweep has shut it down; the owner-to-be closes it */
	struct conn *next;
};

struct uid_count {
	uid_t uid;
	unsigned n;
};

struct server {
	int epfd, listen_fd, sig_fd, stop_fd, timer_fd;
	const char *config_path;
	const char *socket_path;
	atomic_int stopping;
	uint64_t tick_ms;	   /* period of timer_fd */
	uint64_t watchdog_half_ms; /* 0: no watchdog */
	uint64_t watchdog_last;	   /* monotonic ms of the last ping; under lock */

	pthread_mutex_t reload_lock; /* one reload at a time, so notifications pair up */
	unsigned max_clients_sized;  /* max-clients fd_cap was computed for; under reload_lock */

	pthread_mutex_t lock; /* connections, counts, accept pause */
	struct conn *conns;
	unsigned n_conns;
	struct uid_count *uids;
	size_t n_uids;
	int accept_paused;
	uint64_t accept_resume;
	unsigned fd_cap;	    /* connections RLIMIT_NOFILE allows (see fd_budget) */
	uint64_t refusal_logged;    /* monotonic ms of the last refusal logged */
	unsigned refusals_unlogged; /* refusals since then, not logged */

	/*
	 * A spare descriptor, closed to accept and refuse a client when every
	 * other one is in use, so that a client learns why instead of waiting
	 * in the listen queue. Only the thread holding the listener uses it.
	 */
	int reserve_fd;

	pthread_mutex_t rt_lock;
	struct runtime *rt;
};

static struct runtime *server_runtime(struct server *s)
{
	struct runtime *rt;

	pthread_mutex_lock(&s->rt_lock);
	rt = s->rt;
	runtime_ref(rt);
	pthread_mutex_unlock(&s->rt_lock);
	return rt;
}

static struct runtime *renew_runtime(void *arg)
{
	return server_runtime(arg);
}

static void notify_reloading(void)
{
	char fields[64];
	struct timespec ts;

	/* MONOTONIC_USEC: what Type=notify-reload (systemd 253+) matches READY=1 against. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	snprintf(fields, sizeof(fields), "RELOADING=1\nMONOTONIC_USEC=%llu",
		 (unsigned long long)ts.tv_sec * 1000000ULL +
			 (unsigned long long)ts.tv_nsec / 1000);
	notify(fields, "Reloading the configuration");
}

/*
 * Raises the soft RLIMIT_NOFILE as far as max_clients connections need (never
 * above the hard limit, never lowering it: only as far as needed, since a
 * PKCS#11 module may still use select()) and returns how many connections the
 * limit allows. Warns when that is fewer than max_clients.
 */
static unsigned fd_budget(unsigned max_clients)
{
	rlim_t want = (rlim_t)max_clients + FD_OVERHEAD, cur;
	struct rlimit rl;
	unsigned cap;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return max_clients;
	cur = rl.rlim_cur;
	if (cur != RLIM_INFINITY && cur < want && rl.rlim_max > cur) {
		rl.rlim_cur =
			(rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want) ? want : rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) == 0) {
			log_info("descriptor limit raised from %llu to %llu for max-clients %u",
				 (unsigned long long)cur, (unsigned long long)rl.rlim_cur,
				 max_clients);
			cur = rl.rlim_cur;
		}
	}
	if (cur == RLIM_INFINITY || cur >= want)
		return max_clients;
	cap = cur > FD_OVERHEAD + 1 ? (unsigned)(cur - FD_OVERHEAD) : 1;
	log_warn("max-clients %u does not fit the descriptor limit (RLIMIT_NOFILE %llu, hard "
		 "%llu): at most %u connections are accepted; raise LimitNOFILE (or ulimit -n) to "
		 "%llu",
		 max_clients, (unsigned long long)cur, (unsigned long long)rl.rlim_max, cap,
		 (unsigned long long)want);
	return cap;
}

/*
 * Logs a refused connection, at most one line per REFUSAL_LOG_MS, so that a
 * connection storm cannot flood the log. Called with s->lock held.
 */
static void log_refusal(struct server *s, const struct peer *peer, const char *why)
{
	uint64_t now = monotonic_ms();

	if (s->refusal_logged != 0 && now - s->refusal_logged < REFUSAL_LOG_MS) {
		s->refusals_unlogged++;
		return;
	}
	if (s->refusals_unlogged > 0)
		log_warn("%u more connections refused in the last %llu ms (not logged one by one)",
			 s->refusals_unlogged, (unsigned long long)(now - s->refusal_logged));
	log_warn("refused connection of uid %ld pid %ld: %s", (long)peer->uid, (long)peer->pid,
		 why);
	s->refusal_logged = now;
	s->refusals_unlogged = 0;
}

/* Builds a runtime from the config file and swaps it in; the old one stays on failure. */
static int server_reload(void *arg, char *err, size_t errlen)
{
	struct server *s = arg;
	struct runtime *rt = NULL, *old;
	struct config *cfg = NULL;
	unsigned max_clients;
	int r;

	pthread_mutex_lock(&s->reload_lock);
	notify_reloading();
	if (config_load(s->config_path, &cfg, err, errlen) != 0) {
		r = MTLS_AGENT_ERR_CONFIG;
		goto refused;
	}
	old = server_runtime(s);
	if (strcmp(cfg->socket, old->cfg->socket) != 0 || cfg->socket_mode != old->cfg->socket_mode)
		log_warn("reload: socket settings changed; they take effect at the next restart");
	runtime_unref(old);
	if ((r = runtime_create(cfg, time(NULL), &rt, err, errlen)) != 0)
		goto refused;
	max_clients = rt->cfg->max_clients;
	if (max_clients != s->max_clients_sized) {
		unsigned cap = fd_budget(max_clients);

		pthread_mutex_lock(&s->lock);
		s->fd_cap = cap;
		pthread_mutex_unlock(&s->lock);
		s->max_clients_sized = max_clients;
	}
	pthread_mutex_lock(&s->rt_lock);
	old = s->rt;
	rt->started = old->started;
	s->rt = rt;
	pthread_mutex_unlock(&s->rt_lock);
	runtime_unref(old);
	log_info("configuration reloaded from %s: %zu identities", s->config_path, rt->n_ids);
	renew_kick();
	notify("READY=1", "Serving %zu identities on %s", rt->n_ids, s->socket_path);
	pthread_mutex_unlock(&s->reload_lock);
	return 0;
refused:
	log_error("reload refused, old configuration kept: %s", err);
	/* Still serving, with the old configuration: systemd must leave "reloading". */
	notify("READY=1", "Reload failed, old configuration kept: %s", err);
	pthread_mutex_unlock(&s->reload_lock);
	return r;
}

/* Arms fd for one more event. */
static void arm(struct server *s, int fd, uint32_t events, void *ptr)
{
	struct epoll_event ev = {.events = events | EPOLLONESHOT, .data.ptr = ptr};

	if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, fd, &ev) != 0)
		log_error("epoll_ctl: %s", strerror(errno));
}

static struct uid_count *uid_slot(struct server *s, uid_t uid, int create)
{
	struct uid_count *n;
	size_t i;

	for (i = 0; i < s->n_uids; i++)
		if (s->uids[i].uid == uid)
			return &s->uids[i];
	if (!create || (n = realloc(s->uids, (s->n_uids + 1) * sizeof(*n))) == NULL)
		return NULL;
	s->uids = n;
	s->uids[s->n_uids].uid = uid;
	s->uids[s->n_uids].n = 0;
	return &s->uids[s->n_uids++];
}

static void conn_free(struct conn *c)
{
	buf_free(&c->in);
	buf_free(&c->out);
	free(c);
}

/* Called by the owning thread only: nobody else can reach c once it is unlinked. */
static void conn_close(struct server *s, struct conn *c)
{
	struct uid_count *u;
	struct conn **pp;

	pthread_mutex_lock(&s->lock);
	for (pp = &s->conns; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	s->n_conns--;
	metrics_client_disconnected();
	if ((u = uid_slot(s, c->ctx.peer.uid, 0)) != NULL && u->n > 0)
		u->n--;
	pthread_mutex_unlock(&s->lock);
	epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	conn_free(c);
}

/* Writes what the socket takes; returns -1 if the connection must go. */
static int conn_flush(struct conn *c)
{
	ssize_t w;

	while (c->out.len > 0) {
		w = send(c->fd, c->out.data, c->out.len, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -1;
		}
		buf_consume(&c->out, (size_t)w);
	}
	return 0;
}

/*
 * Handles every complete request buffered in c->in, appending the replies
 * to c->out. A frame whose length field is out of bounds gets an error and
 * closes the connection: the stream cannot be resynchronised after it.
 */
static void conn_handle_frames(struct server *s, struct conn *c)
{
	struct dispatch_env env;
	size_t frame_len;
	int r;

	while (!c->closing && c->out.len == 0) {
		r = proto_frame_peek(c->in.data, c->in.len, PROTO_MAX_REQUEST, &frame_len);
		if (r == MTLS_AGENT_ERR_TRUNCATED)
			return;
		if (r != 0) {
			log_info("closing connection of uid %ld pid %ld: %s frame length",
				 (long)c->ctx.peer.uid, (long)c->ctx.peer.pid,
				 r == MTLS_AGENT_ERR_TOO_LARGE ? "over-long" : "invalid");
			dispatch_error_reply(&c->out, 0, r,
					     r == MTLS_AGENT_ERR_TOO_LARGE
						     ? "frame over 262144 bytes"
						     : "frame shorter than its header");
			c->closing = 1;
			buf_reset(&c->in);
			return;
		}
		memset(&env, 0, sizeof(env));
		env.rt = server_runtime(s);
		env.reload = server_reload;
		env.reload_arg = s;
		env.now = time(NULL);
		r = dispatch(&env, &c->ctx, c->in.data, frame_len, &c->out);
		runtime_unref(env.rt);
		buf_consume(&c->in, frame_len);
		if (r != 0)
			c->closing = 1;
	}
}

/* One event for a connection this thread now owns. */
static void conn_event(struct server *s, struct conn *c, uint32_t events)
{
	uint64_t partial_since = 0;
	size_t room;
	uint8_t *p;
	ssize_t n;

	pthread_mutex_lock(&s->lock);
	c->owned = 1;
	partial_since = c->partial_since;
	pthread_mutex_unlock(&s->lock);

	if ((events & EPOLLOUT) && conn_flush(c) != 0)
		goto close;
	if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) && c->out.len == 0 &&
	    !c->closing) {
		room = c->in.max - c->in.len;
		if (room == 0 || buf_reserve(&c->in, room, &p) != 0)
			goto close;
		n = recv(c->fd, p, room, 0);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
			goto close;
		if (n > 0)
			c->in.len += (size_t)n;
	}
	/* Requests pipelined behind one whose reply went out are handled too. */
	for (;;) {
		conn_handle_frames(s, c);
		if (c->out.len == 0)
			break; /* waiting for more input */
		if (conn_flush(c) != 0)
			goto close;
		if (c->out.len > 0 || c->closing)
			break; /* waiting for the socket to take the rest */
	}
	if (c->out.len == 0 && c->closing)
		goto close;
	if (c->in.len == 0)
		partial_since = 0;
	else if (partial_since == 0)
		partial_since = monotonic_ms();

	pthread_mutex_lock(&s->lock);
	c->partial_since = partial_since;
	/* Any event is progress: a request read, or a reply the client made room for. */
	c->last_active = monotonic_ms();
	c->owned = 0;
	pthread_mutex_unlock(&s->lock);
	/* Read only when the reply to the last request is out. The last touch of c. */
	arm(s, c->fd, (c->out.len > 0 ? EPOLLOUT : EPOLLIN) | EPOLLRDHUP, c);
	return;
close:
	conn_close(s, c);
}

static int peer_credentials(int fd, struct peer *peer)
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
	/*
	 * When it connected, to tell it from a later process given the same pid
	 * (allow-exe on kernels without SO_PEERPIDFD). The connecting process is
	 * still blocked in or just past connect() here, seldom gone.
	 */
	peer->starttime = acl_proc_starttime(uc.pid);
	/*
	 * Supplementary groups as they were at connect(). A peer with more
	 * groups than we keep is judged without them: that can refuse it
	 * wrongly but never admit it wrongly.
	 */
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0)
		peer->n_groups = glen / sizeof(gid_t);
	if (peer->n_groups > PEER_MAX_GROUPS)
		peer->n_groups = 0;
	memcpy(peer->groups, groups, peer->n_groups * sizeof(gid_t));
	peer->sock = fd;
	peer->has_sock = 1;
	return 0;
}

/*
 * Tells a client why it is refused (an ERROR frame with request id 0, which
 * the client reads as the reply to its HELLO) and closes. The frame is small
 * enough for any socket buffer: the send never waits.
 */
static void refuse_busy(int fd, const char *why)
{
	struct buf b;

	metrics_client_refused();
	buf_init(&b, 1024);
	if (dispatch_error_reply(&b, 0, MTLS_AGENT_ERR_BUSY, why) == 0)
		(void)!send(fd, b.data, b.len, MSG_NOSIGNAL | MSG_DONTWAIT);
	buf_free(&b);
	close(fd);
}

static int reserve_open(void)
{
	return eventfd(0, EFD_CLOEXEC);
}

/*
 * accept() failed with EMFILE/ENFILE: frees the reserve descriptor to accept
 * one pending client and refuse it with the reason, then takes the reserve
 * back. Returns 1 if a client was refused (try the next one), 0 if none was
 * pending, -1 if that did not work (pause accepting).
 */
static int refuse_without_fds(struct server *s, int accept_errno)
{
	struct peer peer;
	char why[MTLSA_ERRMSG_MAX];
	int fd;

	if (s->reserve_fd < 0 && (s->reserve_fd = reserve_open()) < 0)
		return -1;
	close(s->reserve_fd);
	fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0) {
		int e = errno;

		s->reserve_fd = reserve_open();
		return (e == EAGAIN || e == EWOULDBLOCK) ? 0 : -1;
	}
	if (accept_errno == ENFILE)
		snprintf(why, sizeof(why),
			 "connection refused: the system is out of file descriptors (ENFILE)");
	else
		snprintf(
			why, sizeof(why),
			"connection refused: the agent is out of file descriptors (RLIMIT_NOFILE)");
	if (peer_credentials(fd, &peer) != 0)
		memset(&peer, 0, sizeof(peer));
	refuse_busy(fd, why);
	pthread_mutex_lock(&s->lock);
	log_refusal(s, &peer, why);
	pthread_mutex_unlock(&s->lock);
	/* Nobody else took the slot meanwhile, or the next accept pauses instead. */
	s->reserve_fd = reserve_open();
	return 1;
}

/*
 * Why a new connection from peer must be refused, or NULL to admit it. Called
 * with s->lock held. The last admin_reserve connections of the total are only
 * for administrators, so that callers who may not administer cannot lock the
 * administrators out (of `status`, `reload`) by holding connections open.
 */
static const char *admission(struct server *s, const struct config *cfg, const struct peer *peer,
			     char *why, size_t whylen)
{
	unsigned limit = cfg->max_clients, reserve = cfg->admin_reserve;
	struct uid_count *u;

	if (s->fd_cap < limit) {
		limit = s->fd_cap;
		/* The descriptors decide the total: keep the reserve a part of it. */
		if (reserve > limit / 4)
			reserve = limit / 4;
	}
	if (s->n_conns >= limit) {
		if (limit < cfg->max_clients)
			snprintf(why, whylen,
				 "connection refused: %u connections open, all that the agent's "
				 "descriptor limit allows (max-clients is %u)",
				 s->n_conns, cfg->max_clients);
		else
			snprintf(why, whylen,
				 "connection refused: %u connections open (max-clients)",
				 s->n_conns);
		return why;
	}
	if (s->n_conns + reserve >= limit &&
	    !acl_allows(cfg->admin_users, cfg->n_admin_users, cfg->admin_groups,
			cfg->n_admin_groups, peer)) {
		snprintf(why, whylen,
			 "connection refused: %u connections open; the last %u of %u are kept for "
			 "administrators (admin-reserve)",
			 s->n_conns, reserve, limit);
		return why;
	}
	if ((u = uid_slot(s, peer->uid, 0)) != NULL && u->n >= cfg->max_clients_per_uid) {
		snprintf(
			why, whylen,
			"connection refused: uid %ld has %u connections open (max-clients-per-uid)",
			(long)peer->uid, u->n);
		return why;
	}
	return NULL;
}

/* Accepts what is pending; returns 0 to re-arm the listener, -1 to pause it. */
static int accept_clients(struct server *s)
{
	struct epoll_event ev;
	struct runtime *rt;
	struct uid_count *u;
	struct conn *c;
	struct peer peer;
	const char *refused;
	char why[MTLSA_ERRMSG_MAX];
	int fd, r, ret = 0;

	rt = server_runtime(s);
	if (s->reserve_fd < 0)
		s->reserve_fd = reserve_open();
	for (;;) {
		fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if ((errno == EMFILE || errno == ENFILE) &&
			    (r = refuse_without_fds(s, errno)) >= 0) {
				if (r > 0)
					continue;
				break;
			}
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				/* Not even the reserve helps: pause accepting rather than spin. */
				log_warn("accept: %s; pausing new connections", strerror(errno));
				pthread_mutex_lock(&s->lock);
				s->accept_paused = 1;
				s->accept_resume = monotonic_ms() + ACCEPT_PAUSE_MS;
				pthread_mutex_unlock(&s->lock);
				ret = -1;
			}
			break;
		}
		if (peer_credentials(fd, &peer) != 0) {
			close(fd);
			continue;
		}
		/* Once per connection, not per audited request. */
		audit_peer_exe(peer.pid, peer.exe, sizeof(peer.exe));
		if ((c = calloc(1, sizeof(*c))) == NULL) {
			refuse_busy(fd, "connection refused: the agent is out of memory");
			continue;
		}
		c->fd = fd;
		c->ctx.peer = peer;
		buf_init(&c->in, PROTO_LEN_SIZE + PROTO_MAX_REQUEST);
		buf_init(&c->out, PROTO_MAX_REPLY);
		pthread_mutex_lock(&s->lock);
		refused = admission(s, rt->cfg, &peer, why, sizeof(why));
		if (refused == NULL && (u = uid_slot(s, peer.uid, 1)) == NULL)
			refused = "connection refused: the agent is out of memory";
		if (refused != NULL) {
			log_refusal(s, &peer, refused);
			pthread_mutex_unlock(&s->lock);
			conn_free(c);
			refuse_busy(fd, refused);
			continue;
		}
		u->n++;
		c->last_active = monotonic_ms();
		c->next = s->conns;
		s->conns = c;
		s->n_conns++;
		metrics_client_connected();
		pthread_mutex_unlock(&s->lock);
		/* From here another thread may own c: do not touch it again. */
		ev.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
		ev.data.ptr = c;
		if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
			log_error("epoll_ctl: %s", strerror(errno));
			conn_close(s, c);
			continue;
		}
		log_debug("connection from uid %ld gid %ld pid %ld", (long)peer.uid, (long)peer.gid,
			  (long)peer.pid);
	}
	runtime_unref(rt);
	return ret;
}

/*
 * Every tick: end stalled partial requests; resume a paused listener; ping
 * the watchdog. The ping comes from a serving thread, so it stops when
 * every thread is stuck (in the keystore, say) and systemd restarts us.
 */
static void sweep(struct server *s)
{
	uint64_t now = monotonic_ms(), idle_ms;
	int resume = 0, ping = 0;
	struct runtime *rt;
	struct conn *c;

	rt = server_runtime(s);
	idle_ms = (uint64_t)rt->cfg->idle_timeout * 1000;
	runtime_unref(rt);
	pthread_mutex_lock(&s->lock);
	if (s->refusals_unlogged > 0 && now - s->refusal_logged >= REFUSAL_LOG_MS) {
		log_warn("%u more connections refused in the last %llu ms (not logged one by one)",
			 s->refusals_unlogged, (unsigned long long)(now - s->refusal_logged));
		s->refusal_logged = now;
		s->refusals_unlogged = 0;
	}
	if (s->accept_paused && now >= s->accept_resume) {
		s->accept_paused = 0;
		resume = 1;
	}
	/* Ticks come tick_ms apart: ping when the next one would be late. */
	if (s->watchdog_half_ms != 0 &&
	    now - s->watchdog_last + s->tick_ms / 2 >= s->watchdog_half_ms) {
		s->watchdog_last = now;
		ping = 1;
	}
	for (c = s->conns; c != NULL; c = c->next) {
		if (c->owned || c->shut)
			continue;
		if (c->partial_since != 0 && now - c->partial_since > PARTIAL_FRAME_TIMEOUT_MS) {
			log_info("closing connection of uid %ld pid %ld: request not completed in "
				 "time",
				 (long)c->ctx.peer.uid, (long)c->ctx.peer.pid);
		} else if (idle_ms != 0 && now - c->last_active > idle_ms) {
			/*
			 * A connection that never sends, or never reads its reply, must not
			 * hold a slot forever. Debug only: idle clients are normal, and the
			 * library reconnects by itself.
			 */
			log_debug(
				"closing connection of uid %ld pid %ld: %s for %llu s (idle-timeout)",
				(long)c->ctx.peer.uid, (long)c->ctx.peer.pid,
				c->out.len > 0 ? "reply not read" : "idle",
				(unsigned long long)((now - c->last_active) / 1000));
		} else {
			continue;
		}
		/* The owner-to-be sees end-of-file (or a failed write) and closes it. */
		c->shut = 1;
		shutdown(c->fd, SHUT_RDWR);
	}
	pthread_mutex_unlock(&s->lock);
	if (ping)
		notify_send("WATCHDOG=1");
	if (resume)
		arm(s, s->listen_fd, EPOLLIN, &s->listen_fd);
}

static void handle_signals(struct server *s)
{
	struct signalfd_siginfo si;
	char err[MTLSA_ERRMSG_MAX];
	uint64_t one = 1;

	while (read(s->sig_fd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGHUP) {
			log_info("SIGHUP: reloading %s", s->config_path);
			server_reload(s, err, sizeof(err));
		} else {
			log_info("signal %u: shutting down", si.ssi_signo);
			notify("STOPPING=1", "Shutting down (signal %u)", si.ssi_signo);
			atomic_store(&s->stopping, 1);
			/* Level-triggered and never drained: wakes every thread. */
			if (write(s->stop_fd, &one, sizeof(one)) < 0)
				log_error("eventfd write: %s", strerror(errno));
		}
	}
}

static void *server_thread(void *arg)
{
	struct server *s = arg;
	struct epoll_event ev;
	uint64_t ticks;
	int n;

	while (!atomic_load(&s->stopping)) {
		/* One event per wait: a thread never sits on work another could do. */
		n = epoll_wait(s->epfd, &ev, 1, -1);
		if (n <= 0) {
			if (n < 0 && errno != EINTR)
				log_error("epoll_wait: %s", strerror(errno));
			continue;
		}
		if (ev.data.ptr == &s->stop_fd) {
			break;
		} else if (ev.data.ptr == &s->listen_fd) {
			if (accept_clients(s) == 0)
				arm(s, s->listen_fd, EPOLLIN, &s->listen_fd);
		} else if (ev.data.ptr == &s->sig_fd) {
			handle_signals(s);
			arm(s, s->sig_fd, EPOLLIN, &s->sig_fd);
		} else if (ev.data.ptr == &s->timer_fd) {
			if (read(s->timer_fd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
				log_error("timerfd read: %s", strerror(errno));
			sweep(s);
			arm(s, s->timer_fd, EPOLLIN, &s->timer_fd);
		} else {
			conn_event(s, ev.data.ptr, ev.events);
		}
	}
	return NULL;
}

static int check_socket_dir(const char *path, char *err, size_t errlen)
{
	char *copy = strdup(path), *dir;
	struct stat st;
	int ret = -1;

	if (copy == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	dir = dirname(copy);
	if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
		snprintf(err, errlen, "cannot create socket directory %s: %s", dir,
			 strerror(errno));
		goto out;
	}
	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "socket directory %s is not a directory", dir);
		goto out;
	}
	/* Whoever can write the directory can swap our socket for theirs. */
	if (st.st_uid != 0 && st.st_uid != geteuid()) {
		snprintf(err, errlen, "socket directory %s must be owned by root or uid %ld", dir,
			 (long)geteuid());
		goto out;
	}
	if ((st.st_mode & 022) != 0) {
		snprintf(err, errlen,
			 "socket directory %s is writable by group or others (mode "
			 "%04o)",
			 dir, (unsigned)(st.st_mode & 07777));
		goto out;
	}
	ret = 0;
out:
	free(copy);
	return ret;
}

int server_listen(const struct config *cfg, char *err, size_t errlen)
{
	struct sockaddr_un sun;
	struct stat st;
	mode_t old_umask;
	int fd = -1, probe;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(cfg->socket) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "socket path %s is too long", cfg->socket);
		return -1;
	}
	memcpy(sun.sun_path, cfg->socket, strlen(cfg->socket) + 1);
	if (check_socket_dir(cfg->socket, err, errlen) != 0)
		return -1;
	if (lstat(cfg->socket, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, errlen, "%s exists and is not a socket", cfg->socket);
			return -1;
		}
		/* A socket someone answers on belongs to a running agent: leave it. */
		if ((probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) >= 0) {
			if (connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
				close(probe);
				snprintf(err, errlen, "another agent is already listening on %s",
					 cfg->socket);
				return -1;
			}
			close(probe);
		}
		if (unlink(cfg->socket) != 0) {
			snprintf(err, errlen, "cannot remove stale socket %s: %s", cfg->socket,
				 strerror(errno));
			return -1;
		}
	}
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	/* Nobody may connect before the final mode and group are in place. */
	old_umask = umask(0177);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		umask(old_umask);
		snprintf(err, errlen, "bind %s: %s", cfg->socket, strerror(errno));
		close(fd);
		return -1;
	}
	umask(old_umask);
	if ((cfg->has_socket_group && chown(cfg->socket, (uid_t)-1, cfg->socket_group) != 0) ||
	    chmod(cfg->socket, cfg->socket_mode) != 0) {
		snprintf(err, errlen, "setting owner/mode of %s: %s", cfg->socket, strerror(errno));
		goto fail;
	}
	if (listen(fd, 128) != 0) {
		snprintf(err, errlen, "listen %s: %s", cfg->socket, strerror(errno));
		goto fail;
	}
	return fd;
fail:
	unlink(cfg->socket);
	close(fd);
	return -1;
}

static int add_fd(struct server *s, int fd, uint32_t events, void *ptr)
{
	struct epoll_event ev = {.events = events, .data.ptr = ptr};

	return epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev);
}

/* The server's initial state; the watchdog decides how often the loop ticks. */
static void server_init(struct server *s, int listen_fd, const char *socket_path,
			const char *config_path, struct runtime *rt)
{
	memset(s, 0, sizeof(*s));
	s->listen_fd = listen_fd;
	s->config_path = config_path;
	s->socket_path = socket_path;
	s->rt = rt;
	s->epfd = s->sig_fd = s->stop_fd = s->timer_fd = s->reserve_fd = -1;
	atomic_init(&s->stopping, 0);
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->rt_lock, NULL);
	pthread_mutex_init(&s->reload_lock, NULL);
	/* A watchdog shorter than two ticks needs faster ticks. */
	s->tick_ms = TICK_MS;
	if ((s->watchdog_half_ms = watchdog_half_ms()) != 0) {
		if (s->watchdog_half_ms < s->tick_ms)
			s->tick_ms = s->watchdog_half_ms;
		s->watchdog_last = monotonic_ms();
		log_info("systemd watchdog: pinging every %llu ms",
			 (unsigned long long)s->watchdog_half_ms);
	}
}

/*
 * The event loop's descriptors: the listener, signals (blocked here, so every thread started
 * later inherits the mask and only the signalfd sees them), the tick timer and the stop event.
 */
static int server_open_events(struct server *s)
{
	struct itimerspec tick;
	sigset_t mask;

	tick.it_interval.tv_sec = (time_t)(s->tick_ms / 1000);
	tick.it_interval.tv_nsec = (long)(s->tick_ms % 1000) * 1000000L;
	tick.it_value = tick.it_interval;
	sigemptyset(&mask);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	if ((s->sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0 ||
	    (s->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0 ||
	    (s->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)) < 0 ||
	    timerfd_settime(s->timer_fd, 0, &tick, NULL) != 0 ||
	    (s->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
	    add_fd(s, s->listen_fd, EPOLLIN | EPOLLONESHOT, &s->listen_fd) != 0 ||
	    add_fd(s, s->sig_fd, EPOLLIN | EPOLLONESHOT, &s->sig_fd) != 0 ||
	    add_fd(s, s->timer_fd, EPOLLIN | EPOLLONESHOT, &s->timer_fd) != 0 ||
	    add_fd(s, s->stop_fd, EPOLLIN, &s->stop_fd) != 0) {
		log_error("cannot set up the event loop: %s", strerror(errno));
		return -1;
	}
	s->max_clients_sized = s->rt->cfg->max_clients;
	s->fd_cap = fd_budget(s->max_clients_sized);
	if ((s->reserve_fd = reserve_open()) < 0) {
		log_error("cannot open a reserve descriptor: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* The serving threads besides this one; *n_threads counts those started, even on failure. */
static int server_start_threads(struct server *s, unsigned workers, pthread_t **threads,
				unsigned *n_threads)
{
	unsigned i;

	*n_threads = 0;
	if ((*threads = calloc(workers, sizeof(**threads))) == NULL)
		return -1;
	for (i = 1; i < workers; i++) {
		if (pthread_create(&(*threads)[*n_threads], NULL, server_thread, s) != 0) {
			log_error("cannot start serving threads");
			return -1;
		}
		(*n_threads)++;
	}
	return 0;
}

static void close_if_open(int fd)
{
	if (fd >= 0)
		close(fd);
}

/* Stop: every thread finishes the request it holds, then everything is closed. */
static void server_stop(struct server *s, pthread_t *threads, unsigned n_threads,
			struct metrics_http *metrics, int unlink_socket)
{
	struct conn *c;
	unsigned i;

	atomic_store(&s->stopping, 1);
	if (s->stop_fd >= 0) {
		uint64_t one = 1;
		(void)!write(s->stop_fd, &one, sizeof(one));
	}
	for (i = 0; i < n_threads; i++)
		pthread_join(threads[i], NULL);
	free(threads);
	metrics_http_stop(metrics);
	renew_stop();
	if (unlink_socket)
		unlink(s->socket_path);
	close(s->listen_fd);
	while ((c = s->conns) != NULL)
		conn_close(s, c);
	free(s->uids);
	close_if_open(s->epfd);
	close_if_open(s->sig_fd);
	close_if_open(s->stop_fd);
	close_if_open(s->timer_fd);
	close_if_open(s->reserve_fd);
	runtime_unref(s->rt);
	pthread_mutex_destroy(&s->lock);
	pthread_mutex_destroy(&s->rt_lock);
	pthread_mutex_destroy(&s->reload_lock);
}

int server_run(int listen_fd, const char *socket_path, int unlink_socket, const char *config_path,
	       struct runtime *rt)
{
	struct metrics_http *metrics = NULL;
	pthread_t *threads = NULL;
	unsigned n_threads = 0, workers;
	size_t n_ids;
	struct server s;
	char err[MTLSA_ERRMSG_MAX];
	int ret = 1;

	server_init(&s, listen_fd, socket_path, config_path, rt);
	if (server_open_events(&s) != 0)
		goto out;
	/* Once other threads run, a reload may free rt: read what we need now. */
	workers = rt->cfg->workers;
	n_ids = rt->n_ids;
	/* Read once, here: changing metrics-listen takes a restart. */
	if (rt->cfg->metrics_listen != NULL &&
	    metrics_http_start(rt->cfg->metrics_listen, renew_runtime, &s, &metrics, err,
			       sizeof(err)) != 0) {
		log_error("%s", err);
		goto out;
	}
	/* This thread is one of the `workers` serving threads. */
	if (server_start_threads(&s, workers, &threads, &n_threads) != 0)
		goto out;
	/* Renewal runs beside the serving threads and sees every reload. */
	if (renew_start(renew_runtime, &s, err, sizeof(err)) != 0) {
		log_error("%s", err);
		goto out;
	}
	log_info("listening on %s (%u threads)", socket_path, workers);
	notify("READY=1", "Serving %zu identities on %s", n_ids, socket_path);
	if (s.watchdog_half_ms != 0)
		notify_send("WATCHDOG=1");
	server_thread(&s);
	ret = 0;
out:
	server_stop(&s, threads, n_threads, metrics, unlink_socket);
	return ret;
}
