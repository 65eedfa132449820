/*
 * Request dispatcher: one complete request frame in, one reply frame out.
 * No sockets here, so unit tests and the fuzzer drive the same code as the
 * daemon. See docs/PROTOCOL.md.
 */
#ifndef MTLS_AGENT_DISPATCH_H
#define MTLS_AGENT_DISPATCH_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "conf/acl.h"
#include "agent/state.h"
#include "common/buf.h"

/* Per-connection protocol state. */
struct conn_ctx {
	struct peer peer;
	int hello_done;
	uint32_t version;
};

struct dispatch_env {
	struct runtime *rt; /* the caller holds a reference */
	/* Re-reads the configuration (RELOAD); NULL refuses reloads. */
	int (*reload)(void *arg, char *err, size_t errlen);
	void *reload_arg;
	time_t now;
};

/*
 * Handles the frame (length prefix included, as found by proto_frame_peek)
 * and writes exactly one reply frame into reply. Returns 0, or a negative
 * code when the connection should be closed after the reply is sent.
 */
int dispatch(const struct dispatch_env *env, struct conn_ctx *conn, const uint8_t *frame,
	     size_t len, struct buf *reply);

/* Writes an ERROR reply frame. */
int dispatch_error_reply(struct buf *reply, uint32_t id, int code, const char *msg);

#endif
