/*
 * [agent] metrics-listen: GET /metrics over HTTP/1.1 on a thread of its own
 * (never a signing thread), one connection at a time, request head capped
 * at METRICS_HTTP_MAX_REQUEST bytes, every read and write bounded by
 * METRICS_HTTP_TIMEOUT_MS. What a scraper sees (docs/METRICS.md):
 *  - Unix socket: by its peer credentials, like `mtls-agentctl metrics`
 *    (administrators everything, others the identities they may use);
 *  - TCP (loopback only): agent-wide and keystore series, and per-identity
 *    series only with metrics-identities = yes, since a TCP peer has no
 *    credentials to check.
 */
#ifndef MTLS_AGENT_METRICS_HTTP_H
#define MTLS_AGENT_METRICS_HTTP_H

#include <stddef.h>
#include <sys/socket.h>

#include "agent/state.h"
#include "conf/metrics-addr.h"

#define METRICS_HTTP_MAX_REQUEST 8192u
#define METRICS_HTTP_TIMEOUT_MS 5000

struct metrics_http;

/*
 * Binds listen (a path or HOST:PORT) and starts the thread. get_rt returns
 * a referenced runtime (the current one, after reloads).
 */
int metrics_http_start(const char *listen, struct runtime *(*get_rt)(void *), void *arg,
		       struct metrics_http **out, char *err, size_t errlen);
/* Stops the thread and closes the socket (removes a Unix socket file). NULL is fine. */
void metrics_http_stop(struct metrics_http *h);

#endif
