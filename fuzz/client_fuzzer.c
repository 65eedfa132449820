/*
 * Fuzz target: the client library's reply parsing (client/client.c), as
 * applications, the provider and the engine run it on whatever answers on
 * the agent's socket. A handle is connected to a socketpair whose other end
 * already holds one reply frame: type OK or ERROR (input byte 1), the id the
 * request will carry, and the payload (the input after byte 1). Byte 0
 * chooses the call: LIST, GET_IDENTITY, GET_CHAIN, SIGN or STATUS.
 * Whatever the payload, the call returns and what it returned is freed.
 */
#include "config.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client/client-internal.h"
#include "common/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

static struct mtls_agent *fake_handle(int fd)
{
	struct mtls_agent *a = calloc(1, sizeof(*a));

	if (a == NULL || pthread_mutex_init(&a->lock, NULL) != 0 ||
	    (a->path = strdup("/nonexistent/mtls-fuzz.sock")) == NULL)
		abort();
	a->fd = fd;
	a->pid = getpid();
	a->next_id = 7;
	a->version = PROTO_VERSION;
	return a;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t msg[] = "TLS 1.2 transcript stand-in";
	struct mtls_agent_identity *ids = NULL, *id = NULL;
	struct mtls_agent_status *st = NULL;
	struct mtls_agent_cert *chain = NULL;
	uint8_t *frame, *sig = NULL;
	size_t n = 0, plen, sig_len = 0, i;
	struct mtls_agent *a;
	int sv[2];

	/* Replies beyond a socket buffer would need a reader thread; the cap is far above
	 * libFuzzer's default input size. */
	if (size < 2 || size > 65536)
		return 0;
	plen = size - 2;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		abort();
	{
		int bufsz = 4 * 65536;

		(void)setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof(bufsz));
		(void)setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz));
	}
	if ((frame = malloc(9 + plen)) == NULL)
		abort();
	frame[0] = (uint8_t)((5 + plen) >> 24);
	frame[1] = (uint8_t)((5 + plen) >> 16);
	frame[2] = (uint8_t)((5 + plen) >> 8);
	frame[3] = (uint8_t)(5 + plen);
	frame[4] = (data[1] & 1) ? MSG_REPLY_ERROR : MSG_REPLY_OK;
	frame[5] = 0;
	frame[6] = 0;
	frame[7] = 0;
	frame[8] = 7; /* the id of the first request on the handle */
	memcpy(frame + 9, data + 2, plen);
	if (send(sv[1], frame, 9 + plen, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)(9 + plen)) {
		free(frame);
		close(sv[0]);
		close(sv[1]);
		return 0;
	}
	free(frame);
	/* No more replies: a second read sees end of file, never blocks. */
	shutdown(sv[1], SHUT_WR);
	a = fake_handle(sv[0]);
	switch (data[0] % 5) {
	case 0:
		if (mtls_agent_list(a, &ids, &n) == 0)
			mtls_agent_identities_free(ids, n);
		break;
	case 1:
		if (mtls_agent_get_identity(a, "device", &id) == 0)
			mtls_agent_identity_free(id);
		break;
	case 2:
		if (mtls_agent_get_chain(a, "device", &chain, &n) == 0)
			mtls_agent_chain_free(chain, n);
		break;
	case 3:
		if (mtls_agent_sign(a, "device", 0x0403, 0, NULL, msg, sizeof(msg), &sig,
				    &sig_len) == 0) {
			volatile uint8_t acc = 0;

			for (i = 0; i < sig_len; i++) /* touch every byte: ASan checks the length */
				acc ^= sig[i];
			(void)acc;
			free(sig);
		}
		break;
	default:
		if (mtls_agent_status(a, &st) == 0)
			mtls_agent_status_free(st);
		break;
	}
	mtls_agent_close(a);
	close(sv[1]);
	return 0;
}
