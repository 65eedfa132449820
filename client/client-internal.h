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
};

/*
 * LIST with PROTO_LIST_USABLE: only the identities the caller may use, even
 * for an administrator (the PKCS#11 module). Not part of the public API.
 * An agent older than the flag answers MTLS_AGENT_ERR_BAD_MESSAGE.
 */
int mtlsc_list_usable(mtls_agent *a, struct mtls_agent_identity **ids, size_t *n_ids);

#endif
