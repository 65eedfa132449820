/*
 * Metrics in the Prometheus text exposition format (docs/METRICS.md).
 *
 * There is one source of truth for every counter: the per-identity counters
 * that `mtls-agentctl status` shows (identity_rt.n_signed, n_refused) and
 * the ones only metrics show (errors, the sign-time histogram, in struct
 * id_metrics inside identity_rt) are the same atomics the signing path
 * bumps; the renderer only reads them. Agent-wide connection counts live
 * here. Rendering takes no lock on the signing path except each identity's
 * own lock, for a moment, to read its certificate dates.
 */
#ifndef MTLS_AGENT_METRICS_H
#define MTLS_AGENT_METRICS_H

#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "common/buf.h"

/* Upper bounds (seconds) of the sign-duration histogram, +Inf implied. */
#define METRICS_SIGN_BUCKETS 12

struct id_metrics {
	atomic_uint_fast64_t n_error;			       /* keystore failures */
	atomic_uint_fast64_t bucket[METRICS_SIGN_BUCKETS + 1]; /* not cumulative; last: +Inf */
	atomic_uint_fast64_t sum_ns;
};

struct runtime;
struct identity_rt;

/* Records one keystore signing operation that took ns nanoseconds. */
void metrics_observe_sign(struct id_metrics *m, uint64_t ns);
/* Nanoseconds on the monotonic clock, for timing a signature. */
uint64_t metrics_now_ns(void);

/* Agent-wide connection accounting (agent/server.c). */
void metrics_client_connected(void);
void metrics_client_disconnected(void);
void metrics_client_refused(void);

/* Decides whether the caller may see an identity's series. */
typedef int (*metrics_visible_fn)(const struct identity_rt *id, void *arg);

/*
 * Appends the whole exposition to out (text, no NUL). visible == NULL:
 * no per-identity series at all; show_keystores: include per-keystore
 * series (they name tokens, so only administrators and trusted scrapers
 * see them). Returns 0 or a negative MTLS_AGENT_ERR_* code.
 */
int metrics_render(struct buf *out, struct runtime *rt, metrics_visible_fn visible, void *arg,
		   int show_keystores, time_t now);

#endif
