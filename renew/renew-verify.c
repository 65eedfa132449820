/*
 * renew-verify: one mTLS connection with a renewed credential before it is installed
 * (see renew/renew-verify.h). Plain sockets and libssl: libcurl has no MQTT, and a
 * handshake plus one request is all that is needed.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "renew/renew-verify.h"
#include "common/util.h"

struct conn_state {
	int fatal_alert; /* received from the server, -1 if none */
};

static void note_alert(int write_p, int version, int content_type, const void *buf, size_t len,
		       SSL *ssl, void *arg)
{
	const unsigned char *alert = buf;
	struct conn_state *cs = arg;

	(void)version;
	(void)ssl;
	if (!write_p && content_type == SSL3_RT_ALERT && len >= 2 && alert[0] == SSL3_AL_FATAL)
		cs->fatal_alert = alert[1];
}

static int remaining_ms(uint64_t deadline)
{
	uint64_t now = monotonic_ms();

	return now >= deadline ? 0 : (int)(deadline - now > 60000 ? 60000 : deadline - now);
}

/* A connected, non-blocking TCP socket, or -1 with err. */
static int tcp_connect(const struct renew_verify_url *u, uint64_t deadline, char *err,
		       size_t errlen)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL, *a;
	int fd = -1, r, soerr = 0;
	socklen_t sl = sizeof(soerr);

	if ((r = getaddrinfo(u->host, u->port, &hints, &ai)) != 0) {
		snprintf(err, errlen, "cannot resolve %s: %s", u->host, gai_strerror(r));
		return -1;
	}
	snprintf(err, errlen, "cannot connect to %s port %s", u->host, u->port);
	for (a = ai; a != NULL; a = a->ai_next) {
		struct pollfd pfd;

		fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			    a->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS) {
			pfd.fd = fd;
			pfd.events = POLLOUT;
			if (poll(&pfd, 1, remaining_ms(deadline)) == 1 &&
			    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
				break;
			errno = soerr != 0 ? soerr : ETIMEDOUT;
		}
		snprintf(err, errlen, "cannot connect to %s port %s: %s", u->host, u->port,
			 strerror(errno));
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

/* Waits for the socket as SSL wants it; 0 when it may go on, -1 on timeout. */
static int ssl_wait(SSL *ssl, int fd, int r, uint64_t deadline)
{
	struct pollfd pfd = {.fd = fd};
	int e = SSL_get_error(ssl, r);

	if (e == SSL_ERROR_WANT_READ)
		pfd.events = POLLIN;
	else if (e == SSL_ERROR_WANT_WRITE)
		pfd.events = POLLOUT;
	else
		return -2; /* a real error */
	return poll(&pfd, 1, remaining_ms(deadline)) == 1 ? 0 : -1;
}

/* Why the connection failed, preferring what the server said. */
static void describe_failure(const struct conn_state *cs, SSL *ssl, const char *stage, char *err,
			     size_t errlen)
{
	char detail[200];
	unsigned long e = ERR_peek_last_error();
	long vr = SSL_get_verify_result(ssl);

	if (cs->fatal_alert >= 0) {
		snprintf(err, errlen, "the server refused the new certificate (%s): TLS alert %s",
			 stage,
			 cs->fatal_alert == 116 /* certificate_required, unnamed in 3.0 */
				 ? "certificate required"
				 : SSL_alert_desc_string_long(cs->fatal_alert));
		return;
	}
	if (vr != X509_V_OK) {
		snprintf(err, errlen, "the server's own certificate does not verify: %s",
			 X509_verify_cert_error_string(vr));
		return;
	}
	ERR_error_string_n(e, detail, sizeof(detail));
	snprintf(err, errlen, "%s failed: %s", stage,
		 e != 0 ? detail : "connection closed or timed out");
}

/*
 * With TLS 1.3 a server that refuses the client certificate says so right after the
 * client's Finished and may then close, so that a request written later fails with a
 * broken connection. Looks at what arrives within ms first (SSL_peek: session tickets are
 * processed, an alert is noted, application data stays).
 */
static void look_for_alert(SSL *ssl, int fd, const struct conn_state *cs, unsigned ms)
{
	uint64_t until = monotonic_ms() + ms;
	char c;
	int r;

	while (cs->fatal_alert < 0) {
		r = SSL_peek(ssl, &c, 1);
		if (r > 0 || ssl_wait(ssl, fd, r, until) != 0)
			return;
	}
}

/* Writes all of buf; 0 or -1. */
static int ssl_write_all(SSL *ssl, int fd, const void *buf, size_t len, uint64_t deadline)
{
	size_t done = 0;
	int r;

	while (done < len) {
		r = SSL_write(ssl, (const char *)buf + done, (int)(len - done));
		if (r > 0) {
			done += (size_t)r;
			continue;
		}
		if (ssl_wait(ssl, fd, r, deadline) != 0)
			return -1;
	}
	return 0;
}

/* Reads until want bytes or the deadline; returns the count read (0: none), -1 on error. */
static int ssl_read_some(SSL *ssl, int fd, char *buf, size_t want, uint64_t deadline)
{
	size_t got = 0;
	int r;

	while (got < want) {
		r = SSL_read(ssl, buf + got, (int)(want - got));
		if (r > 0) {
			got += (size_t)r;
			if (memchr(buf, '\n', got) != NULL)
				break; /* an HTTP status line is enough */
			continue;
		}
		if (SSL_get_error(ssl, r) == SSL_ERROR_ZERO_RETURN)
			break;
		if (ssl_wait(ssl, fd, r, deadline) != 0)
			return got > 0 ? (int)got : -1;
	}
	return (int)got;
}

/* A client context presenting the new key and chain, verifying the server by trust_file. */
static SSL_CTX *verify_ctx_new(OSSL_LIB_CTX *libctx, const char *trust_file, EVP_PKEY *key,
			       STACK_OF(X509) * chain, struct conn_state *cs, char *err,
			       size_t errlen)
{
	SSL_CTX *ctx;
	int i;

	if ((ctx = SSL_CTX_new_ex(libctx, NULL, TLS_client_method())) == NULL ||
	    !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
		snprintf(err, errlen, "cannot set up TLS");
		goto fail;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if ((trust_file != NULL && SSL_CTX_load_verify_locations(ctx, trust_file, NULL) != 1) ||
	    SSL_CTX_set_default_verify_paths(ctx) != 1) {
		snprintf(err, errlen, "cannot load the trust anchors %s",
			 trust_file ? trust_file : "(default)");
		goto fail;
	}
	if (SSL_CTX_use_certificate(ctx, sk_X509_value(chain, 0)) != 1) {
		snprintf(err, errlen, "the new certificate is not usable for TLS");
		goto fail;
	}
	for (i = 1; i < sk_X509_num(chain); i++) {
		if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(chain, i)) != 1) {
			snprintf(err, errlen, "the new chain is not usable for TLS");
			goto fail;
		}
	}
	if (SSL_CTX_use_PrivateKey(ctx, key) != 1) {
		snprintf(err, errlen, "the new key does not match the new certificate");
		goto fail;
	}
	SSL_CTX_set_msg_callback(ctx, note_alert);
	SSL_CTX_set_msg_callback_arg(ctx, cs);
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

/*
 * What is sent once the handshake is done: an MQTT 3.1.1 CONNECT (clean session, keepalive
 * 10 s, client id mtls-agent-verify) or an HTTP/1.1 GET of the URL's path.
 */
static int verify_request(const struct renew_verify_url *u, char *req, size_t size, size_t *reqlen,
			  char *err, size_t errlen)
{
	int r;

	if (u->mqtt) {
		static const char id[] = "mtls-agent-verify";
		size_t idlen = sizeof(id) - 1, n = 0;

		req[n++] = 0x10;
		req[n++] = (char)(10 + 2 + idlen);
		memcpy(req + n, "\0\4MQTT\4\2\0\12", 10);
		n += 10;
		req[n++] = 0;
		req[n++] = (char)idlen;
		memcpy(req + n, id, idlen);
		*reqlen = n + idlen;
		return 0;
	}
	r = snprintf(req, size,
		     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: mtls-agent renew-verify\r\n"
		     "Connection: close\r\n\r\n",
		     u->path, u->host);
	if (r < 0 || (size_t)r >= size) {
		snprintf(err, errlen, "request too long");
		return -1;
	}
	*reqlen = (size_t)r;
	return 0;
}

/* The handshake, with the server's name (or IP address) checked against its certificate. */
static int verify_handshake(SSL *ssl, int fd, const struct renew_verify_url *u,
			    struct conn_state *cs, uint64_t deadline, char *err, size_t errlen)
{
	unsigned char ipbuf[16];
	int is_ip, r;

	is_ip = inet_pton(AF_INET, u->host, ipbuf) == 1 || inet_pton(AF_INET6, u->host, ipbuf) == 1;
	if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), u->host) != 1
		  : (SSL_set1_host(ssl, u->host) != 1 ||
		     SSL_set_tlsext_host_name(ssl, u->host) != 1)) {
		snprintf(err, errlen, "cannot set the server name %s", u->host);
		return -1;
	}
	while ((r = SSL_connect(ssl)) != 1) {
		if (ssl_wait(ssl, fd, r, deadline) != 0) {
			describe_failure(cs, ssl, "TLS handshake", err, errlen);
			return -1;
		}
	}
	/* The server may refuse the certificate after the handshake (TLS 1.3): ask something. */
	look_for_alert(ssl, fd, cs, 300);
	if (cs->fatal_alert >= 0) {
		describe_failure(cs, ssl, "after the handshake", err, errlen);
		return -1;
	}
	return 0;
}

/* One request and the start of its answer: an HTTP status line or an MQTT CONNACK. */
static int verify_exchange(SSL *ssl, int fd, const struct renew_verify_url *u,
			   struct conn_state *cs, uint64_t deadline, char *err, size_t errlen)
{
	char req[1024], resp[512];
	size_t reqlen;
	int r;

	if (verify_request(u, req, sizeof(req), &reqlen, err, errlen) != 0)
		return -1;
	if (ssl_write_all(ssl, fd, req, reqlen, deadline) != 0) {
		/* A server that refused the certificate may have closed after its alert: read it.
		 */
		uint64_t grace = monotonic_ms() + 1000;

		if (cs->fatal_alert < 0)
			ssl_read_some(ssl, fd, resp, sizeof(resp) - 1,
				      grace < deadline ? grace : deadline);
		describe_failure(cs, ssl, "sending the request", err, errlen);
		return -1;
	}
	r = ssl_read_some(ssl, fd, resp, u->mqtt ? 4 : sizeof(resp) - 1, deadline);
	if (r <= 0 || cs->fatal_alert >= 0) {
		describe_failure(cs, ssl, "reading the answer", err, errlen);
		return -1;
	}
	if (u->mqtt ? (unsigned char)resp[0] != 0x20
		    : (r < 12 || strncmp(resp, "HTTP/1.", 7) != 0)) {
		snprintf(err, errlen, "the server's answer is not %s",
			 u->mqtt ? "an MQTT CONNACK" : "HTTP");
		return -1;
	}
	if (u->mqtt) {
		static const char disconnect[2] = {(char)0xe0, 0};

		ssl_write_all(ssl, fd, disconnect, sizeof(disconnect), deadline);
	}
	SSL_shutdown(ssl);
	return 0;
}

int renew_verify(const char *url, const char *trust_file, OSSL_LIB_CTX *libctx, EVP_PKEY *key,
		 STACK_OF(X509) * chain, unsigned timeout_s, char *err, size_t errlen)
{
	struct renew_verify_url u;
	struct conn_state cs = {.fatal_alert = -1};
	uint64_t deadline = monotonic_ms() + (uint64_t)(timeout_s ? timeout_s : 30) * 1000;
	SSL_CTX *ctx = NULL;
	SSL *ssl = NULL;
	int fd = -1, ret = -1;

	if (renew_verify_parse(url, &u, err, errlen) != 0)
		return -1;
	ERR_clear_error();
	if ((ctx = verify_ctx_new(libctx, trust_file, key, chain, &cs, err, errlen)) == NULL ||
	    (fd = tcp_connect(&u, deadline, err, errlen)) < 0)
		goto out;
	if ((ssl = SSL_new(ctx)) == NULL || SSL_set_fd(ssl, fd) != 1) {
		snprintf(err, errlen, "cannot set up TLS");
		goto out;
	}
	if (verify_handshake(ssl, fd, &u, &cs, deadline, err, errlen) == 0 &&
	    verify_exchange(ssl, fd, &u, &cs, deadline, err, errlen) == 0)
		ret = 0;
out:
	SSL_free(ssl);
	if (fd >= 0)
		close(fd);
	SSL_CTX_free(ctx);
	ERR_clear_error();
	return ret;
}
