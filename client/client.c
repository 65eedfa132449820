#include "config.h"

#include <errno.h>
#include <grp.h>
#include <libgen.h>
#include <poll.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "client/client-internal.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/util.h"

/*
 * Consecutive EINTRs (no byte moved in between) after which a blocking call
 * gives up, so a signal storm cannot keep a caller inside the library forever.
 */
#define MAX_EINTR 64

/* Internal status, never returned to callers: the peer went away before the reply. */
#define CONN_CLOSED 1

/* Smallest encodings, used to bound counts before allocating arrays for them. */
#define IDENTITY_RECORD_MIN (4 + 1 + 2 + 4 + 4 + 8 + 4)
#define STATUS_RECORD_MIN (4 + 4 + 4)
#define STATUS_FIELD_MIN (4 + 4)

/* A reply buffer holds the whole frame, length bytes included. */
#define REPLY_MAX (PROTO_LEN_SIZE + PROTO_MAX_REPLY)

static __thread char last_error[MTLSA_ERRMSG_MAX];

static void set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void set_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
}

const char *mtls_agent_last_error(void)
{
	return last_error[0] != '\0' ? last_error : "no error";
}

static int invalid_arg(const char *func)
{
	set_error("%s: invalid argument", func);
	return MTLS_AGENT_ERR_INVALID_ARG;
}

/* Turns a reader or allocation failure while decoding a reply into what the caller sees. */
static int bad_reply(int r, const char *what)
{
	if (r == MTLS_AGENT_ERR_NOMEM) {
		set_error("out of memory while reading the %s reply", what);
		return MTLS_AGENT_ERR_NOMEM;
	}
	set_error("malformed %s reply from the agent: %s", what, mtls_agent_strerror(r));
	return MTLS_AGENT_ERR_PROTOCOL;
}

static void agent_drop(struct mtls_agent *a)
{
	if (a->fd >= 0)
		close(a->fd);
	a->fd = -1;
}

/* "12.5 s" for messages. */
static void fmt_seconds(char *dst, size_t len, unsigned ms)
{
	if (ms % 1000 == 0)
		snprintf(dst, len, "%u s", ms / 1000);
	else
		snprintf(dst, len, "%u.%03u s", ms / 1000, ms % 1000);
}

/*
 * Waits until fd is ready for events or the deadline (monotonic ms, 0: none)
 * passes. Returns 0 when ready, 1 on EINTR (the caller counts those),
 * MTLS_AGENT_ERR_CONNECT on timeout, MTLS_AGENT_ERR_IO on failure.
 */
static int wait_ready(struct mtls_agent *a, short events, uint64_t deadline, unsigned budget_ms)
{
	struct pollfd pfd = {.fd = a->fd, .events = events};
	uint64_t now;
	char t[32];
	int n;

	if (deadline == 0)
		return 0;
	now = monotonic_ms();
	n = now >= deadline ? 0 : poll(&pfd, 1, (int)(deadline - now));
	if (n > 0)
		return 0;
	if (n < 0 && errno == EINTR)
		return 1;
	if (n < 0) {
		set_error("cannot wait for agent at %s: %s", a->path, strerror(errno));
		return MTLS_AGENT_ERR_IO;
	}
	fmt_seconds(t, sizeof(t), budget_ms);
	if (events & POLLOUT)
		set_error("agent at %s did not take the request within %s (agent stuck or "
			  "overloaded; MTLS_AGENT_TIMEOUT sets the limit)",
			  a->path, t);
	else
		set_error("agent at %s did not answer within %s (agent stuck or overloaded; "
			  "MTLS_AGENT_TIMEOUT sets the limit)",
			  a->path, t);
	return MTLS_AGENT_ERR_CONNECT;
}

/* Sends all of p before the deadline (monotonic ms, 0: none). */
static int send_all(struct mtls_agent *a, const uint8_t *p, size_t n, uint64_t deadline,
		    unsigned budget_ms)
{
	unsigned intr = 0;
	ssize_t w;
	int r;

	while (n > 0) {
		if ((r = wait_ready(a, POLLOUT, deadline, budget_ms)) < 0)
			return r;
		if (r > 0 && ++intr < MAX_EINTR)
			continue;
		w = send(a->fd, p, n, MSG_NOSIGNAL | (deadline != 0 ? MSG_DONTWAIT : 0));
		if (w < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) &&
		    ++intr < MAX_EINTR)
			continue;
		if (w < 0) {
			/* Whatever the reason, the agent has not got the whole request: the
			 * caller may reconnect and send it again. */
			set_error("lost connection to agent at %s: %s", a->path, strerror(errno));
			return CONN_CLOSED;
		}
		intr = 0;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/*
 * Reads exactly n bytes before the deadline (monotonic ms, 0: none). With
 * nowait, only what has already arrived (MTLS_AGENT_ERR_TRUNCATED if that is
 * not enough).
 */
static int recv_all(struct mtls_agent *a, uint8_t *p, size_t n, uint64_t deadline,
		    unsigned budget_ms, int nowait)
{
	unsigned intr = 0;
	ssize_t r;
	int w = 0;

	while (n > 0) {
		if (!nowait && (w = wait_ready(a, POLLIN, deadline, budget_ms)) < 0)
			return w;
		if (!nowait && w > 0 && ++intr < MAX_EINTR)
			continue;
		r = recv(a->fd, p, n, (deadline != 0 || nowait) ? MSG_DONTWAIT : 0);
		if (r == 0) {
			set_error("agent at %s closed the connection", a->path);
			return CONN_CLOSED;
		}
		if (r < 0 && nowait && (errno == EAGAIN || errno == EWOULDBLOCK))
			return MTLS_AGENT_ERR_TRUNCATED;
		if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) &&
		    ++intr < MAX_EINTR)
			continue;
		if (r < 0 && (errno == ECONNRESET || errno == EPIPE)) {
			set_error("lost connection to agent at %s: %s", a->path, strerror(errno));
			return CONN_CLOSED;
		}
		if (r < 0) {
			set_error("cannot read from agent at %s: %s", a->path, strerror(errno));
			return MTLS_AGENT_ERR_IO;
		}
		intr = 0;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/* Decodes an ERROR payload into the return code and last_error. */
static int error_reply(struct reader *rd)
{
	char *msg = NULL, text[sizeof(last_error)];
	uint32_t code;
	int r;

	if ((r = rd_u32(rd, &code)) != 0 || (r = rd_cstring(rd, CLIENT_MAX_TEXT, &msg)) != 0 ||
	    (r = rd_done(rd)) != 0) {
		r = bad_reply(r, "ERROR");
		goto out;
	}
	if (code == 0 || code > (uint32_t)-MTLS_AGENT_ERR_MIN) {
		/* A code from a newer agent: keep its words, report it as ours to handle. */
		/* The agent's words end up on terminals and in logs: escaped. */
		log_escape_utf8(msg, text, sizeof(text));
		set_error("agent error %u: %s", code, text);
		r = MTLS_AGENT_ERR_INTERNAL;
		goto out;
	}
	r = -(int)code;
	if (msg[0] != '\0')
		log_escape_utf8(msg, last_error, sizeof(last_error));
	else
		set_error("%s", mtls_agent_strerror(r));
out:
	free(msg);
	return r;
}

/*
 * Reads one whole frame into rep and parses its header. Refuses an
 * oversized reply from the length bytes alone, before allocating.
 */
static int read_frame(struct mtls_agent *a, struct buf *rep, uint8_t *type, uint32_t *id,
		      struct reader *payload, uint64_t deadline, unsigned budget_ms, int nowait)
{
	uint8_t hdr[PROTO_LEN_SIZE], *p;
	struct reader lr;
	uint32_t n;
	size_t flen;
	int r;

	if ((r = recv_all(a, hdr, sizeof(hdr), deadline, budget_ms, nowait)) != 0)
		return r;
	r = proto_frame_peek(hdr, sizeof(hdr), PROTO_MAX_REPLY, &flen);
	if (r != MTLS_AGENT_ERR_TRUNCATED) {
		set_error("agent at %s sent a frame with a bad length (%s)", a->path,
			  mtls_agent_strerror(r));
		return MTLS_AGENT_ERR_PROTOCOL;
	}
	rd_init(&lr, hdr, sizeof(hdr));
	if ((r = rd_u32(&lr, &n)) != 0)
		return r;
	buf_reset(rep);
	if ((r = buf_reserve(rep, PROTO_LEN_SIZE + (size_t)n, &p)) != 0) {
		set_error("no memory for a reply of %u bytes", n);
		return r;
	}
	memcpy(p, hdr, sizeof(hdr));
	if ((r = recv_all(a, p + sizeof(hdr), n, deadline, budget_ms, nowait)) != 0)
		return r;
	rep->len = PROTO_LEN_SIZE + (size_t)n;
	if (proto_frame_parse(rep->data, rep->len, type, id, payload) != 0) {
		set_error("agent at %s sent a malformed frame", a->path);
		return MTLS_AGENT_ERR_PROTOCOL;
	}
	return 0;
}

/*
 * The agent closed the connection before taking our request. It may have
 * refused the connection and said why first (too many connections): that
 * ERROR frame is already in our receive queue. Returns its code, or
 * CONN_CLOSED when there is none.
 */
static int closed_reason(struct mtls_agent *a, struct buf *rep, struct reader *payload)
{
	char saved[sizeof(last_error)];
	uint8_t type;
	uint32_t id;

	memcpy(saved, last_error, sizeof(saved));
	if (read_frame(a, rep, &type, &id, payload, 0, 0, 1) == 0 && type == MSG_REPLY_ERROR &&
	    id == 0)
		return error_reply(payload);
	memcpy(last_error, saved, sizeof(saved));
	return CONN_CLOSED;
}

/*
 * One request/reply on the current connection. req is a finished frame whose
 * id is filled in here. Returns 0 with *payload over the OK reply in rep, a
 * negative code, or CONN_CLOSED when the agent went away first (*sent tells
 * whether it had the whole request). Drops the connection whenever the
 * stream can no longer be trusted to be in step. slow: an operation that may
 * take long in the agent (KEYGEN, RENEW), bounded only by a reply timeout
 * the caller chose.
 */
static int exchange(struct mtls_agent *a, struct buf *req, struct buf *rep, struct reader *payload,
		    int *sent, int slow)
{
	unsigned budget = (!slow || a->reply_ms_set) ? a->reply_ms : 0;
	uint64_t deadline = budget != 0 ? monotonic_ms() + budget : 0;
	uint32_t want, id;
	uint8_t type;
	int r;

	*sent = 0;
	want = a->next_id++;
	if (a->next_id == 0)
		a->next_id = 1;
	req->data[PROTO_LEN_SIZE + 1] = (uint8_t)(want >> 24);
	req->data[PROTO_LEN_SIZE + 2] = (uint8_t)(want >> 16);
	req->data[PROTO_LEN_SIZE + 3] = (uint8_t)(want >> 8);
	req->data[PROTO_LEN_SIZE + 4] = (uint8_t)want;

	if ((r = send_all(a, req->data, req->len, deadline, budget)) != 0) {
		if (r == CONN_CLOSED)
			r = closed_reason(a, rep, payload);
		goto fail;
	}
	*sent = 1;
	if ((r = read_frame(a, rep, &type, &id, payload, deadline, budget, 0)) != 0)
		goto fail;
	if (type == MSG_REPLY_ERROR && id == 0) {
		/* The agent could not frame our request, or refused the connection, and closes. */
		r = error_reply(payload);
		goto fail;
	}
	if (id != want) {
		set_error("agent at %s answered request %u, expected %u", a->path, id, want);
		r = MTLS_AGENT_ERR_PROTOCOL;
		goto fail;
	}
	if (type == MSG_REPLY_ERROR)
		return error_reply(payload);
	if (type != MSG_REPLY_OK) {
		set_error("agent at %s sent unexpected reply type %u", a->path, type);
		r = MTLS_AGENT_ERR_PROTOCOL;
		goto fail;
	}
	return 0;
fail:
	agent_drop(a);
	return r;
}

static int frame_begin(struct buf *req, uint8_t type)
{
	/* The id is filled in per attempt by exchange(). */
	buf_init(req, PROTO_LEN_SIZE + PROTO_MAX_REQUEST);
	return proto_frame_begin(req, type, 0);
}

static int frame_end(struct buf *req, int r)
{
	if (r == 0)
		r = proto_frame_end(req);
	if (r == MTLS_AGENT_ERR_TOO_LARGE)
		set_error("request over the %u-byte limit", PROTO_MAX_REQUEST);
	else if (r == MTLS_AGENT_ERR_NOMEM)
		set_error("out of memory");
	else if (r != 0)
		set_error("cannot build request: %s", mtls_agent_strerror(r));
	return r;
}

static const char *client_name(void)
{
	const char *s = program_invocation_short_name;

	return s != NULL && s[0] != '\0' ? s : "libmtls-agent";
}

static int hello(struct mtls_agent *a)
{
	struct buf req, rep;
	struct reader rd;
	char name[PROTO_MAX_NAME + 1], *ver = NULL;
	uint32_t version;
	size_t n;
	int r, sent;

	buf_init(&rep, REPLY_MAX);
	/* client_name is informational and capped; cut it on a UTF-8 boundary. */
	n = strlen(client_name());
	if (n > PROTO_MAX_NAME) {
		n = PROTO_MAX_NAME;
		while (n > 0 && ((unsigned char)client_name()[n] & 0xc0) == 0x80)
			n--;
	}
	memcpy(name, client_name(), n);
	name[n] = '\0';
	r = frame_begin(&req, MSG_HELLO);
	if (r == 0 && (r = buf_put_u32(&req, PROTO_VERSION)) == 0 &&
	    (r = buf_put_u32(&req, PROTO_VERSION)) == 0)
		r = buf_put_cstring(&req, name);
	if ((r = frame_end(&req, r)) != 0)
		goto out;
	r = exchange(a, &req, &rep, &rd, &sent, 0);
	if (r == CONN_CLOSED) {
		set_error("agent at %s closed the connection during HELLO", a->path);
		r = MTLS_AGENT_ERR_CONNECT;
	}
	if (r != 0)
		goto out;
	if ((r = rd_u32(&rd, &version)) != 0 || (r = rd_cstring(&rd, CLIENT_MAX_TEXT, &ver)) != 0 ||
	    (r = rd_done(&rd)) != 0) {
		r = bad_reply(r, "HELLO");
		goto out;
	}
	if (version != PROTO_VERSION) {
		set_error("agent at %s chose protocol version %u, we offered %u", a->path, version,
			  PROTO_VERSION);
		r = MTLS_AGENT_ERR_PROTOCOL;
		goto out;
	}
	a->version = version;
	free(a->agent_version);
	a->agent_version = ver;
	ver = NULL;
out:
	free(ver);
	buf_free(&req);
	buf_free(&rep);
	return r;
}

/*
 * connect() failed with EACCES: the socket's mode or group (or a directory on
 * the way) keeps this user out. Says which, so that nobody goes looking for a
 * stopped agent.
 */
static void permission_error(const struct mtls_agent *a)
{
	char user[64], group[64], *copy, pwbuf[1024];
	struct passwd pw, *pwp = NULL;
	struct group gr, *grp = NULL;
	gid_t groups[256];
	struct stat st;
	int n, i, member = 0;

	if (getpwuid_r(geteuid(), &pw, pwbuf, sizeof(pwbuf), &pwp) == 0 && pwp != NULL)
		snprintf(user, sizeof(user), "%s", pw.pw_name);
	else
		snprintf(user, sizeof(user), "uid %ld", (long)geteuid());
	if (stat(a->path, &st) != 0) {
		/* Not even stat: a directory on the way is closed to us. */
		if ((copy = strdup(a->path)) != NULL) {
			set_error("permission denied on %s (may %s enter %s?)", a->path, user,
				  dirname(copy));
			free(copy);
		} else {
			set_error("permission denied on %s", a->path);
		}
		return;
	}
	if (getgrgid_r(st.st_gid, &gr, pwbuf, sizeof(pwbuf), &grp) == 0 && grp != NULL)
		snprintf(group, sizeof(group), "%s", gr.gr_name);
	else
		snprintf(group, sizeof(group), "%ld", (long)st.st_gid);
	member = getegid() == st.st_gid;
	n = getgroups((int)(sizeof(groups) / sizeof(groups[0])), groups);
	for (i = 0; i < n && !member; i++)
		member = groups[i] == st.st_gid;
	if (!member && (st.st_mode & S_IWGRP) != 0)
		set_error("permission denied on %s (is %s in group %s?)", a->path, user, group);
	else
		set_error("permission denied on %s (mode %04o, group %s; %s may not connect)",
			  a->path, (unsigned)(st.st_mode & 07777), group, user);
}

static void set_sndtimeo(int fd, unsigned ms)
{
	struct timeval tv = {.tv_sec = (time_t)(ms / 1000),
			     .tv_usec = (suseconds_t)(ms % 1000) * 1000};

	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* Opens the socket and exchanges versions; on failure the handle stays disconnected. */
static int agent_open(struct mtls_agent *a)
{
	struct sockaddr_un sa;
	unsigned intr;
	char t[32];
	int r, fd = -1;

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, a->path, strlen(a->path));
	for (intr = 0;; intr++) {
		if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) {
			set_error("cannot create socket: %s", strerror(errno));
			return MTLS_AGENT_ERR_IO;
		}
		/*
		 * connect() on a Unix socket waits while the agent's listen queue is
		 * full; SO_SNDTIMEO bounds that wait (it then fails with EAGAIN).
		 */
		if (a->connect_ms != 0)
			set_sndtimeo(fd, a->connect_ms);
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			break;
		r = errno;
		close(fd);
		/* A fresh socket is the portable way to retry an interrupted connect. */
		if (r == EINTR && intr + 1 < MAX_EINTR)
			continue;
		if (r == ENOENT || r == ECONNREFUSED) {
			set_error("agent not running at %s: %s", a->path, strerror(r));
		} else if (r == EACCES || r == EPERM) {
			/* Not CONNECT: tools that show only the code's text (curl through the
			 * provider) must not send the user looking for a stopped agent. */
			permission_error(a);
			return MTLS_AGENT_ERR_DENIED;
		} else if (r == EAGAIN || r == EWOULDBLOCK) {
			fmt_seconds(t, sizeof(t), a->connect_ms);
			set_error(
				"agent at %s did not accept the connection within %s (agent stuck "
				"or overloaded; MTLS_AGENT_CONNECT_TIMEOUT sets the limit)",
				a->path, t);
		} else {
			set_error("cannot connect to agent at %s: %s", a->path, strerror(r));
		}
		return MTLS_AGENT_ERR_CONNECT;
	}
	/* Later waits are bounded by poll() against the reply timeout instead. */
	if (a->connect_ms != 0)
		set_sndtimeo(fd, 0);
	a->fd = fd;
	a->pid = getpid();
	if ((r = hello(a)) != 0)
		agent_drop(a);
	return r;
}

/*
 * Sends a finished request frame and waits for its reply, with the handle
 * locked. A connection found closed (agent restarted, idle connection
 * dropped) is re-opened and the request sent once more, unless it may have
 * been acted upon already and resending is not safe.
 */
static int request(struct mtls_agent *a, struct buf *req, struct buf *rep, struct reader *payload,
		   int resend_ok, int slow)
{
	int r, sent, attempt;

	for (attempt = 0;; attempt++) {
		/* A forked child shares the parent's connection: replies would interleave. */
		if (a->fd >= 0 && a->pid != getpid())
			agent_drop(a);
		if (a->fd < 0 && (r = agent_open(a)) != 0)
			return r;
		r = exchange(a, req, rep, payload, &sent, slow);
		if (r != CONN_CLOSED)
			return r;
		agent_drop(a);
		if (attempt > 0)
			return MTLS_AGENT_ERR_CONNECT;
		if (sent && !resend_ok) {
			set_error("agent at %s closed the connection before answering; the request "
				  "may or may not have been carried out",
				  a->path);
			return MTLS_AGENT_ERR_CONNECT;
		}
	}
}

/*
 * Locks the handle around one request; the reply is decoded afterwards,
 * unlocked. slow: see exchange().
 */
static int call_timed(struct mtls_agent *a, struct buf *req, struct buf *rep,
		      struct reader *payload, int resend_ok, int slow)
{
	int r;

	if ((r = pthread_mutex_lock(&a->lock)) != 0) {
		set_error("cannot lock handle: %s", strerror(r));
		return MTLS_AGENT_ERR_INTERNAL;
	}
	r = request(a, req, rep, payload, resend_ok, slow);
	pthread_mutex_unlock(&a->lock);
	return r;
}

static int call(struct mtls_agent *a, struct buf *req, struct buf *rep, struct reader *payload,
		int resend_ok)
{
	return call_timed(a, req, rep, payload, resend_ok, 0);
}

/*
 * A timeout in seconds from environment variable var ("2", "0.5"; 0: no
 * limit) into *ms. Returns 0 (also when unset) or -1 with last_error set.
 * Parsed by hand: the application's locale may not use '.' for decimals.
 */
static int env_timeout(const char *var, unsigned *ms)
{
	const char *v = secure_getenv(var), *p;
	unsigned long sec = 0, frac = 0, scale = 100;

	if (v == NULL || v[0] == '\0')
		return 0;
	for (p = v; *p >= '0' && *p <= '9'; p++) {
		sec = sec * 10 + (unsigned long)(*p - '0');
		if (sec > CLIENT_TIMEOUT_MAX_S)
			goto bad;
	}
	if (p == v)
		goto bad;
	if (*p == '.') {
		for (p++; *p >= '0' && *p <= '9'; p++) {
			frac += scale * (unsigned long)(*p - '0');
			scale /= 10;
		}
		if (p[-1] == '.')
			goto bad;
	}
	if (*p != '\0' || (sec == CLIENT_TIMEOUT_MAX_S && frac > 0))
		goto bad;
	*ms = (unsigned)(sec * 1000 + frac);
	return 0;
bad:
	set_error("%s=\"%.32s\": want seconds (0 to %u, e.g. 2 or 0.5; 0 waits without limit)", var,
		  v, CLIENT_TIMEOUT_MAX_S);
	return -1;
}

int mtls_agent_connect(const char *socket_path, mtls_agent **out)
{
	struct mtls_agent *a = NULL;
	const char *path = socket_path;
	struct sockaddr_un sa;
	int r;

	last_error[0] = '\0';
	if (out == NULL)
		return invalid_arg(__func__);
	*out = NULL;
	if (path == NULL)
		path = secure_getenv("MTLS_AGENT_SOCK");
	if (path == NULL || path[0] == '\0')
		path = MTLS_AGENT_DEFAULT_SOCKET;
	if (path[0] == '\0' || strlen(path) >= sizeof(sa.sun_path)) {
		set_error("socket path \"%.64s\" is empty or too long", path);
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	if ((a = calloc(1, sizeof(*a))) == NULL || (a->path = strdup(path)) == NULL) {
		free(a);
		set_error("out of memory");
		return MTLS_AGENT_ERR_NOMEM;
	}
	if ((r = pthread_mutex_init(&a->lock, NULL)) != 0) {
		free(a->path);
		free(a);
		set_error("cannot create mutex: %s", strerror(r));
		return MTLS_AGENT_ERR_INTERNAL;
	}
	a->fd = -1;
	a->next_id = 1;
	a->connect_ms = CLIENT_CONNECT_TIMEOUT_MS;
	a->reply_ms = CLIENT_REPLY_TIMEOUT_MS;
	/* A reply timeout the user chose bounds KEYGEN and RENEW too. */
	a->reply_ms_set = secure_getenv("MTLS_AGENT_TIMEOUT") != NULL &&
			  secure_getenv("MTLS_AGENT_TIMEOUT")[0] != '\0';
	if (env_timeout("MTLS_AGENT_CONNECT_TIMEOUT", &a->connect_ms) != 0 ||
	    env_timeout("MTLS_AGENT_TIMEOUT", &a->reply_ms) != 0) {
		mtls_agent_close(a);
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	if ((r = agent_open(a)) != 0) {
		mtls_agent_close(a);
		return r;
	}
	*out = a;
	return 0;
}

void mtls_agent_close(mtls_agent *a)
{
	if (a == NULL)
		return;
	agent_drop(a);
	pthread_mutex_destroy(&a->lock);
	free(a->path);
	free(a->agent_version);
	free(a);
}

const char *mtls_agent_socket_path(const mtls_agent *a)
{
	return a != NULL ? a->path : NULL;
}

int mtls_agent_set_timeouts(mtls_agent *a, unsigned connect_ms, unsigned reply_ms)
{
	int r;

	last_error[0] = '\0';
	if (a == NULL || connect_ms > CLIENT_TIMEOUT_MAX_S * 1000u ||
	    reply_ms > CLIENT_TIMEOUT_MAX_S * 1000u)
		return invalid_arg(__func__);
	if ((r = pthread_mutex_lock(&a->lock)) != 0) {
		set_error("cannot lock handle: %s", strerror(r));
		return MTLS_AGENT_ERR_INTERNAL;
	}
	a->connect_ms = connect_ms;
	a->reply_ms = reply_ms;
	a->reply_ms_set = 1;
	pthread_mutex_unlock(&a->lock);
	return 0;
}

/* Copies a non-empty string field out of the reply. */
static int rd_dup(struct reader *rd, uint8_t **out, size_t *out_len)
{
	const uint8_t *p;
	size_t n;
	int r;

	*out = NULL;
	*out_len = 0;
	if ((r = rd_string(rd, &p, &n)) != 0)
		return r;
	if (n == 0)
		return MTLS_AGENT_ERR_BAD_MESSAGE;
	if ((*out = malloc(n)) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	memcpy(*out, p, n);
	*out_len = n;
	return 0;
}

/* u32 n, then n DER certificates (non-empty strings). */
static int parse_chain(struct reader *rd, struct mtls_agent_cert **chain, size_t *chain_len)
{
	struct mtls_agent_cert *c = NULL;
	uint32_t n, i;
	int r;

	*chain = NULL;
	*chain_len = 0;
	if ((r = rd_u32(rd, &n)) != 0)
		return r;
	if (n > rd_left(rd) / 4)
		return MTLS_AGENT_ERR_TRUNCATED;
	if (n == 0)
		return 0;
	if ((c = calloc(n, sizeof(*c))) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	for (i = 0; i < n; i++) {
		if ((r = rd_dup(rd, &c[i].der, &c[i].len)) != 0) {
			mtls_agent_chain_free(c, i);
			return r;
		}
	}
	*chain = c;
	*chain_len = n;
	return 0;
}

/* One identity record (docs/PROTOCOL.md); id is zeroed by the caller, cleared on failure. */
static int parse_identity(struct reader *rd, struct mtls_agent_identity *id)
{
	const uint8_t *p;
	uint32_t n, i;
	uint16_t bits;
	uint8_t kt;
	size_t len;
	int r;

	if ((r = rd_cstring(rd, CLIENT_MAX_TEXT, &id->name)) != 0 || (r = rd_u8(rd, &kt)) != 0 ||
	    (r = rd_u16(rd, &bits)) != 0 || (r = rd_string(rd, &p, &len)) != 0)
		goto out;
	r = MTLS_AGENT_ERR_BAD_MESSAGE;
	if (kt > MTLS_AGENT_KEY_ED25519 || (kt == MTLS_AGENT_KEY_NONE) != (len == 0))
		goto out;
	id->key_type = kt;
	id->key_bits = bits;
	if (len > 0) {
		r = MTLS_AGENT_ERR_NOMEM;
		if ((id->spki = malloc(len)) == NULL)
			goto out;
		memcpy(id->spki, p, len);
		id->spki_len = len;
	}
	if ((r = rd_u32(rd, &n)) != 0)
		goto out;
	if (n > rd_left(rd) / 2) {
		r = MTLS_AGENT_ERR_TRUNCATED;
		goto out;
	}
	if (n > 0 && (id->schemes = calloc(n, sizeof(*id->schemes))) == NULL) {
		r = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	for (i = 0; i < n; i++)
		if ((r = rd_u16(rd, &id->schemes[i])) != 0)
			goto out;
	id->n_schemes = n;
	if ((r = rd_u64(rd, &id->not_after)) != 0 ||
	    (r = parse_chain(rd, &id->chain, &id->chain_len)) != 0)
		goto out;
	r = 0;
out:
	if (r != 0)
		mtlsc_identity_clear(id);
	return r;
}

/* Starts a request whose payload begins with the identity name. */
static int name_request(struct buf *req, uint8_t type, const char *name)
{
	int r;

	if ((r = frame_begin(req, type)) != 0)
		return r;
	return buf_put_cstring(req, name);
}

static int list_request(mtls_agent *a, int with_flags, uint8_t flags,
			struct mtls_agent_identity **ids, size_t *n_ids);

int mtls_agent_list(mtls_agent *a, struct mtls_agent_identity **ids, size_t *n_ids)
{
	return list_request(a, 0, 0, ids, n_ids);
}

int mtlsc_list_usable(mtls_agent *a, struct mtls_agent_identity **ids, size_t *n_ids)
{
	return list_request(a, 1, PROTO_LIST_USABLE, ids, n_ids);
}

static int list_request(mtls_agent *a, int with_flags, uint8_t flags,
			struct mtls_agent_identity **ids, size_t *n_ids)
{
	struct mtls_agent_identity *v = NULL;
	struct buf req, rep;
	struct reader rd;
	uint32_t n = 0, i;
	int r;

	last_error[0] = '\0';
	if (ids != NULL)
		*ids = NULL;
	if (n_ids != NULL)
		*n_ids = 0;
	if (a == NULL || ids == NULL || n_ids == NULL)
		return invalid_arg(with_flags ? "mtlsc_list_usable" : "mtls_agent_list");
	r = frame_begin(&req, MSG_LIST);
	if (r == 0 && with_flags)
		r = buf_put_u8(&req, flags);
	buf_init(&rep, REPLY_MAX);
	if ((r = frame_end(&req, r)) != 0 || (r = call(a, &req, &rep, &rd, 1)) != 0)
		goto out;
	if ((r = rd_u32(&rd, &n)) != 0)
		goto bad;
	if (n > rd_left(&rd) / IDENTITY_RECORD_MIN) {
		r = MTLS_AGENT_ERR_TRUNCATED;
		goto bad;
	}
	if (n > 0 && (v = calloc(n, sizeof(*v))) == NULL) {
		r = MTLS_AGENT_ERR_NOMEM;
		goto bad;
	}
	for (i = 0; i < n; i++)
		if ((r = parse_identity(&rd, &v[i])) != 0)
			goto bad;
	if ((r = rd_done(&rd)) != 0)
		goto bad;
	*ids = v;
	*n_ids = n;
	v = NULL;
	goto out;
bad:
	r = bad_reply(r, "LIST");
out:
	mtls_agent_identities_free(v, n);
	buf_free(&req);
	buf_free(&rep);
	return r;
}

int mtls_agent_get_identity(mtls_agent *a, const char *name, struct mtls_agent_identity **id)
{
	struct mtls_agent_identity *v = NULL;
	struct buf req, rep;
	struct reader rd;
	int r;

	last_error[0] = '\0';
	if (id != NULL)
		*id = NULL;
	if (a == NULL || name == NULL || id == NULL)
		return invalid_arg(__func__);
	r = name_request(&req, MSG_GET_IDENTITY, name);
	buf_init(&rep, REPLY_MAX);
	if ((r = frame_end(&req, r)) != 0 || (r = call(a, &req, &rep, &rd, 1)) != 0)
		goto out;
	if ((v = calloc(1, sizeof(*v))) == NULL) {
		r = MTLS_AGENT_ERR_NOMEM;
		goto bad;
	}
	if ((r = parse_identity(&rd, v)) != 0 || (r = rd_done(&rd)) != 0)
		goto bad;
	*id = v;
	v = NULL;
	goto out;
bad:
	r = bad_reply(r, "GET_IDENTITY");
out:
	mtls_agent_identity_free(v);
	buf_free(&req);
	buf_free(&rep);
	return r;
}

int mtls_agent_get_chain(mtls_agent *a, const char *name, struct mtls_agent_cert **chain,
			 size_t *chain_len)
{
	struct mtls_agent_cert *c = NULL;
	struct buf req, rep;
	struct reader rd;
	size_t n = 0;
	int r;

	last_error[0] = '\0';
	if (chain != NULL)
		*chain = NULL;
	if (chain_len != NULL)
		*chain_len = 0;
	if (a == NULL || name == NULL || chain == NULL || chain_len == NULL)
		return invalid_arg(__func__);
	r = name_request(&req, MSG_GET_CHAIN, name);
	buf_init(&rep, REPLY_MAX);
	if ((r = frame_end(&req, r)) != 0 || (r = call(a, &req, &rep, &rd, 1)) != 0)
		goto out;
	if ((r = parse_chain(&rd, &c, &n)) != 0 || (r = rd_done(&rd)) != 0) {
		r = bad_reply(r, "GET_CHAIN");
		goto out;
	}
	*chain = c;
	*chain_len = n;
	c = NULL;
out:
	mtls_agent_chain_free(c, n);
	buf_free(&req);
	buf_free(&rep);
	return r;
}

int mtls_agent_sign(mtls_agent *a, const char *name, uint16_t scheme, unsigned flags,
		    const uint8_t *spki_hash, const uint8_t *data, size_t data_len, uint8_t **sig,
		    size_t *sig_len)
{
	struct buf req, rep;
	struct reader rd;
	int r;

	last_error[0] = '\0';
	if (sig != NULL)
		*sig = NULL;
	if (sig_len != NULL)
		*sig_len = 0;
	if (a == NULL || name == NULL || sig == NULL || sig_len == NULL ||
	    (data == NULL && data_len > 0) || (flags & ~(unsigned)MTLS_AGENT_SIGN_DIGEST) != 0)
		return invalid_arg(__func__);
	if (data_len > PROTO_MAX_SIGN_INPUT) {
		set_error("data to sign is %zu bytes, the limit is %u", data_len,
			  PROTO_MAX_SIGN_INPUT);
		return MTLS_AGENT_ERR_TOO_LARGE;
	}
	r = name_request(&req, MSG_SIGN, name);
	buf_init(&rep, REPLY_MAX);
	if (r == 0 && (r = buf_put_u16(&req, scheme)) == 0 &&
	    (r = buf_put_u8(&req, (uint8_t)flags)) == 0 &&
	    (r = buf_put_string(&req, spki_hash,
				spki_hash != NULL ? MTLS_AGENT_SPKI_HASH_LEN : 0)) == 0)
		r = buf_put_string(&req, data, data_len);
	if ((r = frame_end(&req, r)) != 0 || (r = call(a, &req, &rep, &rd, 1)) != 0)
		goto out;
	if ((r = rd_dup(&rd, sig, sig_len)) != 0 || (r = rd_done(&rd)) != 0) {
		free(*sig);
		*sig = NULL;
		*sig_len = 0;
		r = bad_reply(r, "SIGN");
	}
out:
	/* buf_free wipes: the request holds the signature input. */
	buf_free(&req);
	buf_free(&rep);
	return r;
}

void mtls_agent_status_free(struct mtls_agent_status *st)
{
	size_t i, j;

	if (st == NULL)
		return;
	for (i = 0; i < st->n_records; i++) {
		struct mtls_agent_status_record *rec = &st->records[i];

		for (j = 0; j < rec->n_fields; j++) {
			free(rec->fields[j].key);
			free(rec->fields[j].value);
		}
		free(rec->fields);
		free(rec->kind);
		free(rec->name);
	}
	free(st->records);
	free(st->agent_version);
	free(st);
}

/* Fills rec; whatever was allocated stays in rec for mtls_agent_status_free(). */
static int parse_status_record(struct reader *rd, struct mtls_agent_status_record *rec)
{
	uint32_t n, i;
	int r;

	if ((r = rd_cstring(rd, CLIENT_MAX_TEXT, &rec->kind)) != 0 ||
	    (r = rd_cstring(rd, CLIENT_MAX_TEXT, &rec->name)) != 0 || (r = rd_u32(rd, &n)) != 0)
		return r;
	if (n > rd_left(rd) / STATUS_FIELD_MIN)
		return MTLS_AGENT_ERR_TRUNCATED;
	if (n > 0 && (rec->fields = calloc(n, sizeof(*rec->fields))) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	for (i = 0; i < n; i++) {
		/* Counted before parsing so a half-read field is freed too. */
		rec->n_fields = i + 1;
		if ((r = rd_cstring(rd, CLIENT_MAX_TEXT, &rec->fields[i].key)) != 0 ||
		    (r = rd_cstring(rd, CLIENT_MAX_TEXT, &rec->fields[i].value)) != 0)
			return r;
	}
	return 0;
}

int mtls_agent_metrics(mtls_agent *a, char **text)
{
	const uint8_t *p;
	struct buf req, rep;
	struct reader rd;
	size_t n;
	int r;

	last_error[0] = '\0';
	if (text != NULL)
		*text = NULL;
	if (a == NULL || text == NULL)
		return invalid_arg(__func__);
	r = frame_begin(&req, MSG_METRICS);
	buf_init(&rep, REPLY_MAX);
	if ((r = frame_end(&req, r)) != 0 || (r = call(a, &req, &rep, &rd, 1)) != 0)
		goto out;
	if ((r = rd_string(&rd, &p, &n)) != 0 || (r = rd_done(&rd)) != 0 ||
	    memchr(p, '\0', n) != NULL) {
		r = bad_reply(r != 0 ? r : MTLS_AGENT_ERR_BAD_MESSAGE, "METRICS");
		goto out;
	}
	if ((*text = malloc(n + 1)) == NULL) {
		r = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	memcpy(*text, p, n);
	(*text)[n] = '\0';
out:
	buf_free(&req);
	buf_free(&rep);
	return r;
}

int mtls_agent_status(mtls_agent *a, struct mtls_agent_status **status)
{
	struct mtls_agent_status *st = NULL;
	struct buf req, rep;
	struct reader rd;
	uint32_t n, i;
	uint8_t admin;
	int r;

	last_error[0] = '\0';
	if (status != NULL)
		*status = NULL;
	if (a == NULL || status == NULL)
		return invalid_arg(__func__);
	r = frame_begin(&req, MSG_STATUS);
	buf_init(&rep, REPLY_MAX);
	if ((r = frame_end(&req, r)) != 0 || (r = call(a, &req, &rep, &rd, 1)) != 0)
		goto out;
	if ((st = calloc(1, sizeof(*st))) == NULL) {
		r = MTLS_AGENT_ERR_NOMEM;
		goto bad;
	}
	if ((r = rd_cstring(&rd, CLIENT_MAX_TEXT, &st->agent_version)) != 0 ||
	    (r = rd_u64(&rd, &st->uptime_seconds)) != 0 || (r = rd_u8(&rd, &admin)) != 0 ||
	    (r = rd_u32(&rd, &n)) != 0)
		goto bad;
	if (admin > 1) {
		r = MTLS_AGENT_ERR_BAD_MESSAGE;
		goto bad;
	}
	st->caller_is_admin = admin;
	if (n > rd_left(&rd) / STATUS_RECORD_MIN) {
		r = MTLS_AGENT_ERR_TRUNCATED;
		goto bad;
	}
	if (n > 0 && (st->records = calloc(n, sizeof(*st->records))) == NULL) {
		r = MTLS_AGENT_ERR_NOMEM;
		goto bad;
	}
	for (i = 0; i < n; i++) {
		st->n_records = i + 1;
		if ((r = parse_status_record(&rd, &st->records[i])) != 0)
			goto bad;
	}
	if ((r = rd_done(&rd)) != 0)
		goto bad;
	*status = st;
	st = NULL;
	goto out;
bad:
	r = bad_reply(r, "STATUS");
out:
	mtls_agent_status_free(st);
	buf_free(&req);
	buf_free(&rep);
	return r;
}

int mtls_agent_keygen(mtls_agent *a, const char *name, const char *key_type, uint8_t **spki,
		      size_t *spki_len)
{
	struct buf req, rep;
	struct reader rd;
	int r;

	last_error[0] = '\0';
	if (spki != NULL)
		*spki = NULL;
	if (spki_len != NULL)
		*spki_len = 0;
	if (a == NULL || name == NULL || key_type == NULL || spki == NULL || spki_len == NULL)
		return invalid_arg(__func__);
	r = name_request(&req, MSG_KEYGEN, name);
	buf_init(&rep, REPLY_MAX);
	if (r == 0)
		r = buf_put_cstring(&req, key_type);
	/* Not resent after the agent may have seen it: a second KEYGEN makes a second key. */
	if ((r = frame_end(&req, r)) != 0 || (r = call_timed(a, &req, &rep, &rd, 0, 1)) != 0)
		goto out;
	if ((r = rd_dup(&rd, spki, spki_len)) != 0 || (r = rd_done(&rd)) != 0) {
		free(*spki);
		*spki = NULL;
		*spki_len = 0;
		r = bad_reply(r, "KEYGEN");
	}
out:
	buf_free(&req);
	buf_free(&rep);
	return r;
}

int mtls_agent_csr(mtls_agent *a, const char *name, const char *subject, const char *const *sans,
		   size_t n_sans, uint8_t **csr_der, size_t *csr_len)
{
	struct buf req, rep;
	struct reader rd;
	size_t i;
	int r;

	last_error[0] = '\0';
	if (csr_der != NULL)
		*csr_der = NULL;
	if (csr_len != NULL)
		*csr_len = 0;
	if (a == NULL || name == NULL || subject == NULL || (sans == NULL && n_sans > 0) ||
	    n_sans > UINT32_MAX || csr_der == NULL || csr_len == NULL)
		return invalid_arg(__func__);
	for (i = 0; i < n_sans; i++)
		if (sans[i] == NULL)
			return invalid_arg(__func__);
	r = name_request(&req, MSG_CSR, name);
	buf_init(&rep, REPLY_MAX);
	if (r == 0 && (r = buf_put_cstring(&req, subject)) == 0)
		r = buf_put_u32(&req, (uint32_t)n_sans);
	for (i = 0; r == 0 && i < n_sans; i++)
		r = buf_put_cstring(&req, sans[i]);
	if ((r = frame_end(&req, r)) != 0 || (r = call(a, &req, &rep, &rd, 1)) != 0)
		goto out;
	if ((r = rd_dup(&rd, csr_der, csr_len)) != 0 || (r = rd_done(&rd)) != 0) {
		free(*csr_der);
		*csr_der = NULL;
		*csr_len = 0;
		r = bad_reply(r, "CSR");
	}
out:
	buf_free(&req);
	buf_free(&rep);
	return r;
}

int mtls_agent_import_cert(mtls_agent *a, const char *name, const uint8_t *data, size_t len,
			   uint64_t *not_after)
{
	struct buf req, rep;
	struct reader rd;
	uint64_t na;
	int r;

	last_error[0] = '\0';
	if (not_after != NULL)
		*not_after = 0;
	if (a == NULL || name == NULL || (data == NULL && len > 0))
		return invalid_arg(__func__);
	r = name_request(&req, MSG_IMPORT_CERT, name);
	buf_init(&rep, REPLY_MAX);
	if (r == 0)
		r = buf_put_string(&req, data, len);
	if ((r = frame_end(&req, r)) != 0 || (r = call(a, &req, &rep, &rd, 1)) != 0)
		goto out;
	if ((r = rd_u64(&rd, &na)) != 0 || (r = rd_done(&rd)) != 0) {
		r = bad_reply(r, "IMPORT_CERT");
		goto out;
	}
	if (not_after != NULL)
		*not_after = na;
out:
	buf_free(&req);
	buf_free(&rep);
	return r;
}

int mtls_agent_renew(mtls_agent *a, const char *name, uint64_t *not_after, char **message)
{
	struct buf req, rep;
	struct reader rd;
	const uint8_t *text;
	size_t text_len;
	uint64_t na;
	int r;

	last_error[0] = '\0';
	if (not_after != NULL)
		*not_after = 0;
	if (message != NULL)
		*message = NULL;
	if (a == NULL || name == NULL)
		return invalid_arg(__func__);
	r = name_request(&req, MSG_RENEW, name);
	buf_init(&rep, REPLY_MAX);
	if ((r = frame_end(&req, r)) != 0 || (r = call_timed(a, &req, &rep, &rd, 1, 1)) != 0)
		goto out;
	if ((r = rd_u64(&rd, &na)) != 0 || (r = rd_string(&rd, &text, &text_len)) != 0 ||
	    (r = rd_done(&rd)) != 0) {
		r = bad_reply(r, "RENEW");
		goto out;
	}
	if (not_after != NULL)
		*not_after = na;
	if (message != NULL && (*message = strndup((const char *)text, text_len)) == NULL)
		r = MTLS_AGENT_ERR_NOMEM;
out:
	buf_free(&req);
	buf_free(&rep);
	return r;
}

int mtls_agent_reload(mtls_agent *a)
{
	struct buf req, rep;
	struct reader rd;
	int r;

	last_error[0] = '\0';
	if (a == NULL)
		return invalid_arg(__func__);
	r = frame_begin(&req, MSG_RELOAD);
	buf_init(&rep, REPLY_MAX);
	if ((r = frame_end(&req, r)) != 0 || (r = call(a, &req, &rep, &rd, 1)) != 0)
		goto out;
	if ((r = rd_done(&rd)) != 0)
		r = bad_reply(r, "RELOAD");
out:
	buf_free(&req);
	buf_free(&rep);
	return r;
}
