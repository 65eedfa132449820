/*
 * Malformed-frame suite against a running agent:
 *   frame_torture SOCKET IDENTITY AGENT_PID
 * truncation at every offset, every length field at 0, 1, n-1, n+1, cap,
 * cap+1, 2^31, 2^32-1, one byte per write, bit flips; then checks that a
 * well-behaved client still gets a valid signature and that the agent's open
 * descriptors are back to where they started.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "common/buf.h"
#include "common/proto.h"
#include "mtls-agent/client.h"

static const char *sock_path;
static unsigned passed, failed;

#define CHECK(cond, ...)                                                                           \
	do {                                                                                       \
		if (cond) {                                                                        \
			passed++;                                                                  \
		} else {                                                                           \
			failed++;                                                                  \
			fprintf(stderr, "FAIL: " __VA_ARGS__);                                     \
			fputc('\n', stderr);                                                       \
		}                                                                                  \
	} while (0)

static int connect_agent(void)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", sock_path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		perror("connect");
		exit(1);
	}
	return fd;
}

static void send_all(int fd, const uint8_t *p, size_t n)
{
	ssize_t w;

	while (n > 0) {
		w = send(fd, p, n, MSG_NOSIGNAL);
		if (w <= 0)
			return; /* the agent may close on us: that is allowed */
		p += w;
		n -= (size_t)w;
	}
}

/*
 * Reads one reply frame within timeout_ms. Returns its type (128/129),
 * 0 on timeout, -1 when the agent closed the connection. *code gets the
 * error code of an ERROR reply.
 */
static int read_reply(int fd, int timeout_ms, uint32_t *code)
{
	uint8_t buf[65536];
	size_t have = 0, need = 4;
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	ssize_t n;

	*code = 0;
	while (have < need) {
		if (poll(&pfd, 1, timeout_ms) <= 0)
			return 0;
		n = recv(fd, buf + have, sizeof(buf) - have, 0);
		if (n <= 0)
			return -1;
		have += (size_t)n;
		if (have >= 4 && need == 4) {
			need = 4 + (((size_t)buf[0] << 24) | ((size_t)buf[1] << 16) |
				    ((size_t)buf[2] << 8) | buf[3]);
			if (need > sizeof(buf))
				return -2;
		}
	}
	if (buf[4] == MSG_REPLY_ERROR && have >= 13)
		*code = ((uint32_t)buf[9] << 24) | ((uint32_t)buf[10] << 16) |
			((uint32_t)buf[11] << 8) | buf[12];
	return buf[4];
}

static void frame(struct buf *b, uint8_t type, uint32_t id, const struct buf *payload)
{
	proto_frame_begin(b, type, id);
	buf_put(b, payload->data, payload->len);
	proto_frame_end(b);
}

static void hello_frame(struct buf *b)
{
	struct buf p;

	buf_init(&p, 1024);
	buf_put_u32(&p, 1);
	buf_put_u32(&p, 1);
	buf_put_cstring(&p, "frame_torture");
	frame(b, MSG_HELLO, 1, &p);
	buf_free(&p);
}

static const uint8_t *cv_content(size_t *len)
{
	static uint8_t m[64 + 33 + 1 + 32];

	memset(m, 0x20, 64);
	memcpy(m + 64, "TLS 1.3, client CertificateVerify", 33);
	m[97] = 0;
	memset(m + 98, 0x5a, 32);
	*len = sizeof(m);
	return m;
}

/* A SIGN payload; also returns the offsets of its two inner u32 length fields. */
static void sign_frame(struct buf *b, const char *name, size_t *name_len_off, size_t *data_len_off)
{
	struct buf p;
	size_t len;
	const uint8_t *m = cv_content(&len);

	buf_init(&p, 4096);
	*name_len_off = PROTO_LEN_SIZE + PROTO_HDR_SIZE + p.len;
	buf_put_cstring(&p, name);
	buf_put_u16(&p, MTLS_AGENT_ECDSA_SECP256R1_SHA256);
	buf_put_u8(&p, 0);
	buf_put_string(&p, NULL, 0);
	*data_len_off = PROTO_LEN_SIZE + PROTO_HDR_SIZE + p.len;
	buf_put_string(&p, m, len);
	frame(b, MSG_SIGN, 2, &p);
	buf_free(&p);
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static unsigned count_fds(const char *pid)
{
	char path[64];
	struct dirent *de;
	unsigned n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%s/fd", pid);
	if ((d = opendir(path)) == NULL)
		return 0;
	while ((de = readdir(d)) != NULL)
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/* The agent must still answer a LIST on this connection. */
static int still_usable(int fd)
{
	struct buf b, empty;
	uint32_t code;
	int t;

	buf_init(&b, 1024);
	buf_init(&empty, 16);
	frame(&b, MSG_LIST, 9, &empty);
	send_all(fd, b.data, b.len);
	t = read_reply(fd, 3000, &code);
	buf_free(&b);
	buf_free(&empty);
	return t == MSG_REPLY_OK;
}

static int good_client_signs(const char *name)
{
	struct mtls_agent_identity *id = NULL;
	uint8_t *sig = NULL;
	size_t sig_len = 0, len;
	const uint8_t *m = cv_content(&len);
	const unsigned char *p;
	EVP_PKEY *pub = NULL;
	EVP_MD_CTX *ctx = NULL;
	mtls_agent *a = NULL;
	int ok = 0;

	if (mtls_agent_connect(sock_path, &a) != 0 || mtls_agent_get_identity(a, name, &id) != 0 ||
	    mtls_agent_sign(a, name, MTLS_AGENT_ECDSA_SECP256R1_SHA256, 0, NULL, m, len, &sig,
			    &sig_len) != 0) {
		fprintf(stderr, "good client: %s\n", mtls_agent_last_error());
		goto out;
	}
	p = id->spki;
	if ((pub = d2i_PUBKEY(NULL, &p, (long)id->spki_len)) == NULL ||
	    (ctx = EVP_MD_CTX_new()) == NULL ||
	    EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pub) != 1)
		goto out;
	ok = EVP_DigestVerify(ctx, sig, sig_len, m, len) == 1;
out:
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(pub);
	free(sig);
	mtls_agent_identity_free(id);
	mtls_agent_close(a);
	return ok;
}

int main(int argc, char **argv)
{
	static const uint32_t bad_outer[] = {0, 1, 4, 0x40001, 0x80000000u, 0xffffffffu};
	struct buf hello, sign;
	size_t name_off, data_off, k, i, bit;
	unsigned base_fds, fds = 0, tries;
	uint8_t *copy;
	uint32_t code, n, v;
	int fd, t;

	if (argc != 4) {
		fprintf(stderr, "usage: frame_torture SOCKET IDENTITY AGENT_PID\n");
		return 2;
	}
	sock_path = argv[1];
	srand(12345);
	buf_init(&hello, 4096);
	buf_init(&sign, 4096);
	hello_frame(&hello);
	sign_frame(&sign, argv[2], &name_off, &data_off);
	base_fds = count_fds(argv[3]);
	CHECK(base_fds > 0, "cannot count the agent's descriptors");
	CHECK(good_client_signs(argv[2]), "baseline signature failed");

	/* 1. Truncation at every offset, then hang up. */
	for (k = 0; k < sign.len; k++) {
		fd = connect_agent();
		send_all(fd, hello.data, hello.len);
		read_reply(fd, 3000, &code);
		send_all(fd, sign.data, k);
		close(fd);
	}
	passed++;

	/* 2. Outer length at 0, 1, 4 (below header), cap+1, 2^31, 2^32-1: error reply + close. */
	for (i = 0; i < sizeof(bad_outer) / sizeof(bad_outer[0]); i++) {
		fd = connect_agent();
		copy = malloc(sign.len);
		memcpy(copy, sign.data, sign.len);
		put_be32(copy, bad_outer[i]);
		send_all(fd, copy, sign.len);
		t = read_reply(fd, 3000, &code);
		CHECK(t == MSG_REPLY_ERROR, "outer length %u: no error reply (%d)", bad_outer[i],
		      t);
		CHECK(read_reply(fd, 3000, &code) == -1, "outer length %u: connection not closed",
		      bad_outer[i]);
		free(copy);
		close(fd);
	}
	/* Outer length n-1 and n+1 and cap: n-1 is parsed short (error), n+1 and cap wait. */
	n = (uint32_t)(sign.len - 4);
	{
		const uint32_t waits[] = {n + 1, PROTO_MAX_REQUEST};
		fd = connect_agent();
		send_all(fd, hello.data, hello.len);
		read_reply(fd, 3000, &code);
		copy = malloc(sign.len);
		memcpy(copy, sign.data, sign.len);
		put_be32(copy, n - 1);
		send_all(fd, copy, sign.len - 1);
		t = read_reply(fd, 3000, &code);
		CHECK(t == MSG_REPLY_ERROR && code == (uint32_t)-MTLS_AGENT_ERR_TRUNCATED,
		      "outer length n-1: expected TRUNCATED error, got %d/%u", t, code);
		CHECK(still_usable(fd), "outer length n-1: connection unusable afterwards");
		close(fd);
		for (i = 0; i < 2; i++) {
			fd = connect_agent();
			send_all(fd, hello.data, hello.len);
			read_reply(fd, 3000, &code);
			put_be32(copy, waits[i]);
			send_all(fd, copy, sign.len);
			t = read_reply(fd, 300, &code);
			CHECK(t == 0, "outer length %u: agent answered an incomplete frame",
			      waits[i]);
			close(fd);
		}
		free(copy);
	}

	/* 3. Inner string lengths: error reply, and the connection stays usable. */
	for (k = 0; k < 2; k++) {
		size_t off = k == 0 ? name_off : data_off;
		const uint32_t orig = k == 0 ? (uint32_t)strlen(argv[2]) : 130;
		const uint32_t vals[] = {0,
					 1,
					 orig - 1,
					 orig + 1,
					 PROTO_MAX_REQUEST,
					 PROTO_MAX_REQUEST + 1,
					 0x80000000u,
					 0xffffffffu};

		for (i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
			fd = connect_agent();
			send_all(fd, hello.data, hello.len);
			read_reply(fd, 3000, &code);
			copy = malloc(sign.len);
			memcpy(copy, sign.data, sign.len);
			put_be32(copy + off, vals[i]);
			send_all(fd, copy, sign.len);
			t = read_reply(fd, 3000, &code);
			CHECK(t == MSG_REPLY_ERROR, "inner length %u at %zu: got %d", vals[i], off,
			      t);
			CHECK(still_usable(fd), "inner length %u at %zu: connection unusable",
			      vals[i], off);
			free(copy);
			close(fd);
		}
	}

	/* 4. One byte per write: a valid request still gets its signature. */
	fd = connect_agent();
	for (k = 0; k < hello.len; k++)
		send_all(fd, hello.data + k, 1);
	t = read_reply(fd, 3000, &code);
	CHECK(t == MSG_REPLY_OK, "byte-wise HELLO: got %d", t);
	for (k = 0; k < sign.len; k++)
		send_all(fd, sign.data + k, 1);
	t = read_reply(fd, 5000, &code);
	CHECK(t == MSG_REPLY_OK, "byte-wise SIGN: got %d code %u", t, code);
	close(fd);

	/* 5. Random bit flips in the SIGN frame (after a valid HELLO). */
	for (k = 0; k < 400; k++) {
		fd = connect_agent();
		send_all(fd, hello.data, hello.len);
		read_reply(fd, 3000, &code);
		copy = malloc(sign.len);
		memcpy(copy, sign.data, sign.len);
		i = (size_t)rand() % sign.len;
		bit = (size_t)rand() % 8;
		copy[i] ^= (uint8_t)(1u << bit);
		send_all(fd, copy, sign.len);
		read_reply(fd, 200, &code);
		free(copy);
		close(fd);
	}
	/* Garbage before HELLO. */
	for (k = 0; k < 50; k++) {
		uint8_t junk[4 + 64];
		for (i = 0; i < sizeof(junk); i++)
			junk[i] = (uint8_t)rand();
		v = 5 + (uint32_t)(rand() % 59);
		put_be32(junk, v);
		fd = connect_agent();
		send_all(fd, junk, 4 + v);
		t = read_reply(fd, 2000, &code);
		CHECK(t == MSG_REPLY_ERROR, "garbage before HELLO: got %d", t);
		close(fd);
	}
	passed++;

	/* The agent still serves a well-behaved client and leaked no descriptors. */
	CHECK(good_client_signs(argv[2]), "signature after the malformed frames failed");
	for (tries = 0; tries < 50; tries++) {
		fds = count_fds(argv[3]);
		if (fds <= base_fds)
			break;
		usleep(100000);
	}
	CHECK(fds <= base_fds, "agent descriptors grew from %u to %u", base_fds, fds);
	printf("agent descriptors: %u before, %u after\n", base_fds, fds);
	printf("frame_torture: %u passed, %u failed\n", passed, failed);
	buf_free(&hello);
	buf_free(&sign);
	return failed == 0 ? 0 : 1;
}
