/* Private to libmtls-agent: the connection handle behind the opaque mtls_agent type. */
#ifndef MTLS_CLIENT_INTERNAL_H
#define MTLS_CLIENT_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "mtls-agent/client.h"

#ifndef MTLS_AGENT_DEFAULT_SOCKET
#define MTLS_AGENT_DEFAULT_SOCKET "/run/mtls-agent/agent.sock"
#endif

/* Longest text field accepted from the agent (names, versions, status values). */
#define CLIENT_MAX_TEXT 4096u

struct mtls_agent {
	pthread_mutex_t lock; /* serialises requests: one reply per request, in order */
	int fd;		      /* -1 while disconnected */
	pid_t pid;	      /* process that opened fd; a forked child must not share it */
	char *path;
	uint32_t next_id; /* never 0: the agent answers unframeable input with id 0 */
	uint32_t version; /* negotiated protocol version */
	char *agent_version;
	unsigned connect_ms; /* connect() waiting for room in the agent's queue; 0: no limit */
	unsigned reply_ms;   /* one request and its reply; 0: no limit */
	int reply_ms_set;    /* reply_ms chosen by the caller: KEYGEN and RENEW obey it too */
};

/*
 * LIST with PROTO_LIST_USABLE: only the identities the caller may use, even
 * for an administrator (the PKCS#11 module). Not part of the public API.
 * An agent older than the flag answers MTLS_AGENT_ERR_BAD_MESSAGE.
 */
int mtlsc_list_usable(mtls_agent *a, struct mtls_agent_identity **ids, size_t *n_ids);

/* Frees what id holds and zeroes it (client-free.c); id itself stays. */
void mtlsc_identity_clear(struct mtls_agent_identity *id);

/* Defaults of connect_ms and reply_ms (mtls_agent_set_timeouts() in client.h). */
#define CLIENT_CONNECT_TIMEOUT_MS 10000u
#define CLIENT_REPLY_TIMEOUT_MS 30000u
/* Longest timeout accepted, in seconds, so milliseconds fit an unsigned. */
#define CLIENT_TIMEOUT_MAX_S 86400u

#endif
