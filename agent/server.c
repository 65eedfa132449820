#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent/dispatch.h"
#include "agent/server.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/util.h"
#include "mtls-agent/client.h"

/* A partial request must be completed within this time (slowloris). */
#define PARTIAL_FRAME_TIMEOUT_MS 10000
/* After EMFILE/ENFILE, stop accepting for this long instead of spinning. */
#define ACCEPT_PAUSE_MS 1000

struct conn {
	int fd;
	struct conn_ctx ctx;
	struct buf in;          /* bytes received, at most one maximal frame */
	struct buf out;         /* reply bytes not yet written */
	size_t frame_len;       /* length of the frame a worker is handling */
	struct buf job_reply;   /* the worker's reply */
	int job_close;          /* the worker asked to close after the reply */
	int busy;               /* a worker owns the request */
	int dead;               /* peer gone while busy: free when the worker returns */
	int closing;            /* close once out is flushed */
	uint64_t partial_since; /* monotonic ms when an incomplete frame started; 0 if none */
	struct conn *next;      /* all-connections list */
	struct conn *qnext;     /* job or done queue */
};

struct uid_count {
	uid_t uid;
	unsigned n;
};

struct server {
	int epfd, listen_fd, sig_fd, done_fd;
	int accept_paused;
	uint64_t accept_resume;
	const char *config_path;
	struct conn *conns;
	unsigned n_conns;
	/* Closed connections, freed at the end of the loop iteration: an event for
	 * them may still be waiting in the current epoll batch. */
	struct conn *graveyard;
	struct uid_count *uids;
	size_t n_uids;

	pthread_mutex_t rt_lock;
	struct runtime *rt;

	pthread_mutex_t q_lock;
	pthread_cond_t q_cond;
	struct conn *jobs_head, *jobs_tail, *done_head;
	int stopping;
	pthread_t *workers;
	unsigned n_workers;
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

/* Builds a runtime from the config file and swaps it in; the old one stays on failure. */
static int server_reload(void *arg, char *err, size_t errlen)
{
	struct server *s = arg;
	struct runtime *rt = NULL, *old;
	struct config *cfg = NULL;
	int r;

	if (config_load(s->config_path, &cfg, err, errlen) != 0) {
		log_error("reload refused, old configuration kept: %s", err);
		return MTLS_AGENT_ERR_CONFIG;
	}
	old = server_runtime(s);
	if (strcmp(cfg->socket, old->cfg->socket) != 0 || cfg->socket_mode != old->cfg->socket_mode)
		log_warn("reload: socket settings changed; they take effect at the next restart");
	runtime_unref(old);
	if ((r = runtime_create(cfg, time(NULL), &rt, err, errlen)) != 0) {
		log_error("reload refused, old configuration kept: %s", err);
		return r;
	}
	pthread_mutex_lock(&s->rt_lock);
	old = s->rt;
	rt->started = old->started;
	s->rt = rt;
	pthread_mutex_unlock(&s->rt_lock);
	runtime_unref(old);
	log_info("configuration reloaded from %s: %zu identities", s->config_path, rt->n_ids);
	return 0;
}

static void *worker_main(void *arg)
{
	struct server *s = arg;
	struct dispatch_env env;
	struct conn *c;
	uint64_t one = 1;
	int r;

	for (;;) {
		pthread_mutex_lock(&s->q_lock);
		while (s->jobs_head == NULL && !s->stopping)
			pthread_cond_wait(&s->q_cond, &s->q_lock);
		if (s->jobs_head == NULL) {
			pthread_mutex_unlock(&s->q_lock);
			return NULL;
		}
		c = s->jobs_head;
		s->jobs_head = c->qnext;
		if (s->jobs_head == NULL)
			s->jobs_tail = NULL;
		pthread_mutex_unlock(&s->q_lock);

		memset(&env, 0, sizeof(env));
		env.rt = server_runtime(s);
		env.reload = server_reload;
		env.reload_arg = s;
		env.now = time(NULL);
		r = dispatch(&env, &c->ctx, c->in.data, c->frame_len, &c->job_reply);
		c->job_close = r != 0;
		runtime_unref(env.rt);

		pthread_mutex_lock(&s->q_lock);
		c->qnext = s->done_head;
		s->done_head = c;
		pthread_mutex_unlock(&s->q_lock);
		if (write(s->done_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			log_error("eventfd write: %s", strerror(errno));
	}
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

static void conn_free(struct server *s, struct conn *c)
{
	struct uid_count *u = uid_slot(s, c->ctx.peer.uid, 0);

	if (u != NULL && u->n > 0)
		u->n--;
	buf_free(&c->in);
	buf_free(&c->out);
	buf_free(&c->job_reply);
	free(c);
}

/* Removes c from the server; defers the free while a worker still holds it. */
static void conn_close(struct server *s, struct conn *c)
{
	struct conn **pp;

	for (pp = &s->conns; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	s->n_conns--;
	epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	if (c->busy) {
		c->dead = 1;
	} else {
		c->next = s->graveyard;
		s->graveyard = c;
	}
}

static void bury(struct server *s)
{
	struct conn *c;

	while ((c = s->graveyard) != NULL) {
		s->graveyard = c->next;
		conn_free(s, c);
	}
}

static void conn_set_events(struct server *s, struct conn *c)
{
	struct epoll_event ev = {0};

	/* Read only when no request is in progress and no reply is waiting. */
	if (c->out.len > 0)
		ev.events |= EPOLLOUT;
	else if (!c->busy && !c->closing)
		ev.events |= EPOLLIN;
	ev.events |= EPOLLRDHUP;
	ev.data.ptr = c;
	epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &ev);
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

static void queue_job(struct server *s, struct conn *c)
{
	c->busy = 1;
	c->qnext = NULL;
	pthread_mutex_lock(&s->q_lock);
	if (s->jobs_tail != NULL)
		s->jobs_tail->qnext = c;
	else
		s->jobs_head = c;
	s->jobs_tail = c;
	pthread_cond_signal(&s->q_cond);
	pthread_mutex_unlock(&s->q_lock);
}

/*
 * Looks for a complete request in c->in. Hands it to a worker, or, for a
 * frame whose length field is out of bounds, queues an error and closes:
 * the stream cannot be resynchronised after a bad length.
 */
static void conn_process_input(struct server *s, struct conn *c)
{
	size_t frame_len;
	int r;

	if (c->busy || c->closing || c->out.len > 0)
		return;
	r = proto_frame_peek(c->in.data, c->in.len, PROTO_MAX_REQUEST, &frame_len);
	if (r == MTLS_AGENT_ERR_TRUNCATED) {
		if (c->in.len > 0 && c->partial_since == 0)
			c->partial_since = monotonic_ms();
		return;
	}
	c->partial_since = 0;
	if (r != 0) {
		log_info("closing connection of uid %ld pid %ld: %s frame length",
			 (long)c->ctx.peer.uid, (long)c->ctx.peer.pid,
			 r == MTLS_AGENT_ERR_TOO_LARGE ? "over-long" : "invalid");
		dispatch_error_reply(&c->out, 0, r,
				     r == MTLS_AGENT_ERR_TOO_LARGE ? "frame over 262144 bytes"
								   : "frame shorter than its header");
		c->closing = 1;
		buf_reset(&c->in);
		return;
	}
	c->frame_len = frame_len;
	queue_job(s, c);
}

static void conn_after_write(struct server *s, struct conn *c)
{
	if (c->out.len == 0 && c->closing) {
		conn_close(s, c);
		return;
	}
	conn_process_input(s, c);
	if (c->out.len > 0 && conn_flush(c) != 0) {
		conn_close(s, c);
		return;
	}
	if (c->out.len == 0 && c->closing) {
		conn_close(s, c);
		return;
	}
	conn_set_events(s, c);
}

static void conn_readable(struct server *s, struct conn *c)
{
	uint8_t *p;
	size_t room;
	ssize_t n;

	room = c->in.max - c->in.len;
	if (room == 0 || buf_reserve(&c->in, room, &p) != 0) {
		conn_close(s, c);
		return;
	}
	n = recv(c->fd, p, room, 0);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (n <= 0) {
		conn_close(s, c);
		return;
	}
	c->in.len += (size_t)n;
	conn_after_write(s, c);
}

static void finish_jobs(struct server *s)
{
	struct conn *c, *next;
	uint64_t v;

	if (read(s->done_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_error("eventfd read: %s", strerror(errno));
	pthread_mutex_lock(&s->q_lock);
	c = s->done_head;
	s->done_head = NULL;
	pthread_mutex_unlock(&s->q_lock);
	for (; c != NULL; c = next) {
		next = c->qnext;
		c->busy = 0;
		if (c->dead) {
			c->next = s->graveyard;
			s->graveyard = c;
			continue;
		}
		buf_consume(&c->in, c->frame_len);
		c->frame_len = 0;
		if (buf_put(&c->out, c->job_reply.data, c->job_reply.len) != 0)
			c->closing = 1;
		buf_reset(&c->job_reply);
		if (c->job_close)
			c->closing = 1;
		if (conn_flush(c) != 0) {
			conn_close(s, c);
			continue;
		}
		conn_after_write(s, c);
	}
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
	 * Supplementary groups as they were at connect(). A peer with more
	 * groups than we keep is judged on the first ones only: that can refuse
	 * it wrongly but never admit it wrongly.
	 */
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0)
		peer->n_groups = glen / sizeof(gid_t);
	else if (errno == ERANGE)
		peer->n_groups = 0;
	if (peer->n_groups > PEER_MAX_GROUPS)
		peer->n_groups = PEER_MAX_GROUPS;
	memcpy(peer->groups, groups, peer->n_groups * sizeof(gid_t));
	return 0;
}

static void refuse_busy(int fd, const char *why)
{
	struct buf b;

	buf_init(&b, 1024);
	if (dispatch_error_reply(&b, 0, MTLS_AGENT_ERR_BUSY, why) == 0)
		(void)!send(fd, b.data, b.len, MSG_NOSIGNAL | MSG_DONTWAIT);
	buf_free(&b);
	close(fd);
}

static void accept_clients(struct server *s)
{
	struct epoll_event ev = {0};
	struct runtime *rt;
	struct uid_count *u;
	struct conn *c;
	struct peer peer;
	unsigned max_total, max_uid;
	int fd;

	rt = server_runtime(s);
	max_total = rt->cfg->max_clients;
	max_uid = rt->cfg->max_clients_per_uid;
	runtime_unref(rt);
	for (;;) {
		fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				/* Out of descriptors: pause accepting rather than spin. */
				log_warn("accept: %s; pausing new connections", strerror(errno));
				epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->listen_fd, NULL);
				s->accept_paused = 1;
				s->accept_resume = monotonic_ms() + ACCEPT_PAUSE_MS;
			}
			return;
		}
		if (peer_credentials(fd, &peer) != 0) {
			close(fd);
			continue;
		}
		if (s->n_conns >= max_total) {
			refuse_busy(fd, "too many connections");
			continue;
		}
		if ((u = uid_slot(s, peer.uid, 1)) == NULL || u->n >= max_uid) {
			log_info("refused uid %ld: over max-clients-per-uid", (long)peer.uid);
			refuse_busy(fd, "too many connections for this uid");
			continue;
		}
		if ((c = calloc(1, sizeof(*c))) == NULL) {
			close(fd);
			continue;
		}
		c->fd = fd;
		c->ctx.peer = peer;
		buf_init(&c->in, PROTO_LEN_SIZE + PROTO_MAX_REQUEST);
		buf_init(&c->out, PROTO_MAX_REPLY);
		buf_init(&c->job_reply, PROTO_MAX_REPLY);
		ev.events = EPOLLIN | EPOLLRDHUP;
		ev.data.ptr = c;
		if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
			buf_free(&c->in);
			buf_free(&c->out);
			buf_free(&c->job_reply);
			free(c);
			close(fd);
			continue;
		}
		u->n++;
		c->next = s->conns;
		s->conns = c;
		s->n_conns++;
		log_debug("connection from uid %ld gid %ld pid %ld", (long)peer.uid,
			  (long)peer.gid, (long)peer.pid);
	}
}

static void sweep(struct server *s)
{
	uint64_t now = monotonic_ms();
	struct epoll_event ev = {0};
	struct conn *c, *next;

	if (s->accept_paused && now >= s->accept_resume) {
		ev.events = EPOLLIN;
		ev.data.ptr = NULL;
		if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->listen_fd, &ev) == 0)
			s->accept_paused = 0;
	}
	for (c = s->conns; c != NULL; c = next) {
		next = c->next;
		if (!c->busy && c->partial_since != 0 &&
		    now - c->partial_since > PARTIAL_FRAME_TIMEOUT_MS) {
			log_info("closing connection of uid %ld pid %ld: request not completed in "
				 "time", (long)c->ctx.peer.uid, (long)c->ctx.peer.pid);
			conn_close(s, c);
		}
	}
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
		snprintf(err, errlen, "socket directory %s is writable by group or others (mode "
			 "%04o)", dir, (unsigned)(st.st_mode & 07777));
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

int server_run(int listen_fd, const char *socket_path, int unlink_socket,
	       const char *config_path, struct runtime *rt)
{
	struct epoll_event ev, events[64];
	struct signalfd_siginfo si;
	struct server s;
	struct conn *c;
	sigset_t mask;
	char err[512];
	unsigned i;
	int n, k, ret = 1;

	memset(&s, 0, sizeof(s));
	s.listen_fd = listen_fd;
	s.config_path = config_path;
	s.rt = rt;
	s.epfd = s.sig_fd = s.done_fd = -1;
	pthread_mutex_init(&s.rt_lock, NULL);
	pthread_mutex_init(&s.q_lock, NULL);
	pthread_cond_init(&s.q_cond, NULL);

	/* Signals arrive through a descriptor; workers inherit the blocked mask. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	if ((s.sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0 ||
	    (s.done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0 ||
	    (s.epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
		log_error("cannot set up the event loop: %s", strerror(errno));
		goto out;
	}
	memset(&ev, 0, sizeof(ev));
	ev.events = EPOLLIN;
	ev.data.ptr = NULL;
	epoll_ctl(s.epfd, EPOLL_CTL_ADD, listen_fd, &ev);
	ev.data.ptr = &s.sig_fd;
	epoll_ctl(s.epfd, EPOLL_CTL_ADD, s.sig_fd, &ev);
	ev.data.ptr = &s.done_fd;
	epoll_ctl(s.epfd, EPOLL_CTL_ADD, s.done_fd, &ev);

	s.n_workers = rt->cfg->workers;
	if ((s.workers = calloc(s.n_workers, sizeof(*s.workers))) == NULL)
		goto out;
	for (i = 0; i < s.n_workers; i++) {
		if (pthread_create(&s.workers[i], NULL, worker_main, &s) != 0) {
			log_error("cannot start worker threads");
			s.n_workers = i;
			goto out;
		}
	}
	log_info("listening on %s (%u workers)", socket_path, s.n_workers);
	for (;;) {
		n = epoll_wait(s.epfd, events, 64, 1000);
		if (n < 0 && errno != EINTR) {
			log_error("epoll_wait: %s", strerror(errno));
			goto out;
		}
		for (k = 0; k < n; k++) {
			void *p = events[k].data.ptr;

			if (p == NULL) {
				accept_clients(&s);
			} else if (p == &s.done_fd) {
				finish_jobs(&s);
			} else if (p == &s.sig_fd) {
				while (read(s.sig_fd, &si, sizeof(si)) == sizeof(si)) {
					if (si.ssi_signo == SIGHUP) {
						log_info("SIGHUP: reloading %s", config_path);
						server_reload(&s, err, sizeof(err));
					} else {
						log_info("signal %u: shutting down", si.ssi_signo);
						ret = 0;
						goto out;
					}
				}
			}
		}
		/* Connection events after the control descriptors: a close must not
		 * race with a finished job for the same connection in this batch. */
		for (k = 0; k < n; k++) {
			c = events[k].data.ptr;
			if (c == NULL || (void *)c == &s.done_fd || (void *)c == &s.sig_fd)
				continue;
			if (c->fd < 0)
				continue;
			if (events[k].events & EPOLLOUT) {
				if (conn_flush(c) != 0)
					conn_close(&s, c);
				else
					conn_after_write(&s, c);
			} else if (events[k].events & EPOLLIN) {
				conn_readable(&s, c);
			} else if (events[k].events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
				conn_close(&s, c);
			}
		}
		sweep(&s);
		bury(&s);
	}
out:
	/* Stop taking work, let the workers finish what they hold, then close everything. */
	if (unlink_socket)
		unlink(socket_path);
	close(listen_fd);
	pthread_mutex_lock(&s.q_lock);
	s.stopping = 1;
	pthread_cond_broadcast(&s.q_cond);
	pthread_mutex_unlock(&s.q_lock);
	for (i = 0; i < s.n_workers; i++)
		pthread_join(s.workers[i], NULL);
	free(s.workers);
	if (s.done_fd >= 0)
		finish_jobs(&s);
	while (s.conns != NULL)
		conn_close(&s, s.conns);
	bury(&s);
	free(s.uids);
	if (s.epfd >= 0)
		close(s.epfd);
	if (s.sig_fd >= 0)
		close(s.sig_fd);
	if (s.done_fd >= 0)
		close(s.done_fd);
	runtime_unref(s.rt);
	pthread_mutex_destroy(&s.rt_lock);
	pthread_mutex_destroy(&s.q_lock);
	pthread_cond_destroy(&s.q_cond);
	return ret;
}
