#include "config.h"

#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/x509.h>

#include "conf/conf.h"
#include "agent/metrics.h"
#include "renew/renew.h"
#include "agent/state.h"
#include "common/util.h"
#include "keystore/keystore.h"
#include "mtls-agent/client.h"

/* Seconds; TPM signatures take tens of milliseconds, SoftHSM well under one. */
static const double sign_bucket_le[METRICS_SIGN_BUCKETS] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
};

static atomic_uint_fast64_t clients_connected;
static atomic_uint_fast64_t connections_refused;

uint64_t metrics_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void metrics_observe_sign(struct id_metrics *m, uint64_t ns)
{
	double s = (double)ns / 1e9;
	size_t i;

	for (i = 0; i < METRICS_SIGN_BUCKETS && s > sign_bucket_le[i]; i++)
		;
	atomic_fetch_add_explicit(&m->bucket[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&m->sum_ns, ns, memory_order_relaxed);
}

void metrics_client_connected(void)
{
	atomic_fetch_add_explicit(&clients_connected, 1, memory_order_relaxed);
}

void metrics_client_disconnected(void)
{
	atomic_fetch_sub_explicit(&clients_connected, 1, memory_order_relaxed);
}

void metrics_client_refused(void)
{
	atomic_fetch_add_explicit(&connections_refused, 1, memory_order_relaxed);
}

/* ---- rendering ------------------------------------------------------------------------ */

struct out {
	struct buf *b;
	int err;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct out *o, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	if (o->err != 0)
		return;
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(line))
		o->err = MTLS_AGENT_ERR_INTERNAL;
	else
		o->err = buf_put(o->b, line, (size_t)n);
}

static void head(struct out *o, const char *name, const char *type, const char *help)
{
	put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value as the exposition format wants it: \\, \" and \n escaped. */
static const char *label(const char *s, char *out, size_t outlen)
{
	size_t j = 0;

	for (; s != NULL && *s != '\0' && j + 3 < outlen; s++) {
		if (*s == '\\' || *s == '"') {
			out[j++] = '\\';
			out[j++] = *s;
		} else if (*s == '\n') {
			out[j++] = '\\';
			out[j++] = 'n';
		} else {
			out[j++] = *s;
		}
	}
	out[j] = '\0';
	return out;
}

static long long asn1_epoch(const ASN1_TIME *t)
{
	struct tm tm;

	if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
		return -1;
	return (long long)timegm(&tm);
}

/* A snapshot of one identity, taken under its lock, so rendering holds no lock. */
struct id_snap {
	const struct identity_rt *id;
	char name[512];
	long long not_before, not_after; /* -1: no certificate */
	uint64_t ok, refused, error, bucket[METRICS_SIGN_BUCKETS + 1], sum_ns;
	int renew, renew_running;
	int rev_running; /* rs was read (revocation is checked without renewal too) */
	struct renew_status rs;
};

static void snapshot(struct identity_rt *id, struct id_snap *s)
{
	X509 *leaf;
	size_t i;

	memset(s, 0, sizeof(*s));
	s->id = id;
	label(id->cfg->name, s->name, sizeof(s->name));
	s->not_before = s->not_after = -1;
	pthread_mutex_lock(&id->lock);
	if (id->chain != NULL && (leaf = sk_X509_value(id->chain, 0)) != NULL) {
		s->not_before = asn1_epoch(X509_get0_notBefore(leaf));
		s->not_after = asn1_epoch(X509_get0_notAfter(leaf));
	}
	pthread_mutex_unlock(&id->lock);
	s->ok = atomic_load(&id->n_signed);
	s->refused = atomic_load(&id->n_refused);
	s->error = atomic_load(&id->metrics.n_error);
	for (i = 0; i <= METRICS_SIGN_BUCKETS; i++)
		s->bucket[i] = atomic_load(&id->metrics.bucket[i]);
	s->sum_ns = atomic_load(&id->metrics.sum_ns);
	s->renew = id->cfg->renew != RENEW_NONE;
	s->rev_running = renew_get_status(id->cfg->name, &s->rs) == 0;
	s->renew_running = s->renew && s->rev_running;
}

/* The renewal states, one series each (a Prometheus "state set"). */
static const char *renew_state(const struct id_snap *s)
{
	if (!s->renew_running)
		return "not_running";
	if (s->rs.action[0] != '\0')
		return "action_required";
	if (s->rs.failures > 0)
		return "failing";
	return "ok";
}

static void render_identities(struct out *o, struct id_snap *ids, size_t n)
{
	static const char *const states[] = {"ok", "failing", "action_required", "not_running"};
	char le[32];
	uint64_t cum;
	size_t i, j;

	head(o, "mtls_agent_certificate_not_before_seconds", "gauge",
	     "Start of the installed certificate's validity, Unix time.");
	for (i = 0; i < n; i++)
		if (ids[i].not_before >= 0)
			put(o, "mtls_agent_certificate_not_before_seconds{identity=\"%s\"} %lld\n",
			    ids[i].name, ids[i].not_before);
	head(o, "mtls_agent_certificate_not_after_seconds", "gauge",
	     "End of the installed certificate's validity, Unix time.");
	for (i = 0; i < n; i++)
		if (ids[i].not_after >= 0)
			put(o, "mtls_agent_certificate_not_after_seconds{identity=\"%s\"} %lld\n",
			    ids[i].name, ids[i].not_after);
	head(o, "mtls_agent_signatures_total", "counter",
	     "Signature requests by outcome: ok, refused (access or sign-policy), error "
	     "(keystore).");
	for (i = 0; i < n; i++) {
		put(o, "mtls_agent_signatures_total{identity=\"%s\",result=\"ok\"} %llu\n",
		    ids[i].name, (unsigned long long)ids[i].ok);
		put(o, "mtls_agent_signatures_total{identity=\"%s\",result=\"refused\"} %llu\n",
		    ids[i].name, (unsigned long long)ids[i].refused);
		put(o, "mtls_agent_signatures_total{identity=\"%s\",result=\"error\"} %llu\n",
		    ids[i].name, (unsigned long long)ids[i].error);
	}
	head(o, "mtls_agent_sign_duration_seconds", "histogram",
	     "Time the keystore took to sign (successful signatures).");
	for (i = 0; i < n; i++) {
		cum = 0;
		for (j = 0; j <= METRICS_SIGN_BUCKETS; j++) {
			cum += ids[i].bucket[j];
			if (j < METRICS_SIGN_BUCKETS)
				snprintf(le, sizeof(le), "%g", sign_bucket_le[j]);
			else
				snprintf(le, sizeof(le), "+Inf");
			put(o,
			    "mtls_agent_sign_duration_seconds_bucket{identity=\"%s\",le=\"%s\"} "
			    "%llu\n",
			    ids[i].name, le, (unsigned long long)cum);
		}
		put(o, "mtls_agent_sign_duration_seconds_sum{identity=\"%s\"} %.9f\n", ids[i].name,
		    (double)ids[i].sum_ns / 1e9);
		put(o, "mtls_agent_sign_duration_seconds_count{identity=\"%s\"} %llu\n",
		    ids[i].name, (unsigned long long)cum);
	}
	head(o, "mtls_agent_renewal_next_attempt_seconds", "gauge",
	     "When the next renewal attempt is planned, Unix time.");
	for (i = 0; i < n; i++)
		if (ids[i].renew_running && ids[i].rs.next != 0)
			put(o, "mtls_agent_renewal_next_attempt_seconds{identity=\"%s\"} %lld\n",
			    ids[i].name, (long long)ids[i].rs.next);
	head(o, "mtls_agent_renewal_failures", "gauge",
	     "Consecutive failed renewal attempts (0 after a success).");
	for (i = 0; i < n; i++)
		if (ids[i].renew_running)
			put(o, "mtls_agent_renewal_failures{identity=\"%s\"} %u\n", ids[i].name,
			    ids[i].rs.failures);
	head(o, "mtls_agent_renewal_last_success_seconds", "gauge",
	     "When a renewal last installed a new certificate, Unix time.");
	for (i = 0; i < n; i++)
		if (ids[i].renew_running && ids[i].rs.last_renewed != 0)
			put(o, "mtls_agent_renewal_last_success_seconds{identity=\"%s\"} %lld\n",
			    ids[i].name, (long long)ids[i].rs.last_renewed);
	head(o, "mtls_agent_renewal_state", "gauge",
	     "Renewal state of an identity with renew = cmp or est: 1 for the current state.");
	for (i = 0; i < n; i++)
		for (j = 0; ids[i].renew && j < sizeof(states) / sizeof(states[0]); j++)
			put(o, "mtls_agent_renewal_state{identity=\"%s\",state=\"%s\"} %d\n",
			    ids[i].name, states[j], strcmp(states[j], renew_state(&ids[i])) == 0);
}

/*
 * The certificate's revocation status as a state set, for identities whose certificate
 * was checked: the first word of status's "revocation" (renew/revocation.h).
 */
static void render_revocation(struct out *o, struct id_snap *ids, size_t n)
{
	static const char *const states[] = {"good", "revoked", "unknown"};
	size_t i, j, len;

	head(o, "mtls_agent_revocation_state", "gauge",
	     "Revocation status of the certificate (OCSP or CRL): 1 for the current state.");
	for (i = 0; i < n; i++) {
		if (!ids[i].rev_running || ids[i].rs.revocation[0] == '\0')
			continue;
		for (j = 0; j < sizeof(states) / sizeof(states[0]); j++) {
			len = strlen(states[j]);
			put(o, "mtls_agent_revocation_state{identity=\"%s\",state=\"%s\"} %d\n",
			    ids[i].name, states[j],
			    strncmp(ids[i].rs.revocation, states[j], len) == 0 &&
				    ids[i].rs.revocation[len] == ' ');
		}
	}
}

static void render_keystores(struct out *o, struct runtime *rt)
{
	char state[512], name[256];
	size_t i;
	int *up;

	if ((up = calloc(rt->cfg->n_keystores + 1, sizeof(*up))) == NULL) {
		o->err = MTLS_AGENT_ERR_NOMEM;
		return;
	}
	head(o, "mtls_agent_keystore_up", "gauge",
	     "1 when the keystore (token or TPM) is usable, else 0.");
	for (i = 0; i < rt->cfg->n_keystores; i++) {
		ks_state(rt->keystores[i], state, sizeof(state));
		up[i] = strcmp(state, "ok") == 0;
		/* Remember lockout for the next family (TPM only). */
		if (strstr(state, "lockout") != NULL)
			up[i] |= 2;
		put(o, "mtls_agent_keystore_up{keystore=\"%s\",type=\"%s\"} %d\n",
		    label(rt->cfg->keystores[i].name, name, sizeof(name)),
		    rt->cfg->keystores[i].type, up[i] & 1);
	}
	head(o, "mtls_agent_keystore_reconnects_total", "counter",
	     "Times the agent re-established its connection or session to the keystore.");
	for (i = 0; i < rt->cfg->n_keystores; i++)
		put(o, "mtls_agent_keystore_reconnects_total{keystore=\"%s\"} %llu\n",
		    label(rt->cfg->keystores[i].name, name, sizeof(name)),
		    (unsigned long long)ks_reconnects(rt->keystores[i]));
	head(o, "mtls_agent_keystore_tpm_lockout", "gauge",
	     "1 while the TPM reports dictionary-attack lockout (tpm2 keystores only).");
	for (i = 0; i < rt->cfg->n_keystores; i++)
		if (strcmp(rt->cfg->keystores[i].type, "tpm2") == 0)
			put(o, "mtls_agent_keystore_tpm_lockout{keystore=\"%s\"} %d\n",
			    label(rt->cfg->keystores[i].name, name, sizeof(name)),
			    (up[i] & 2) != 0);
	free(up);
}

int metrics_render(struct buf *out, struct runtime *rt, metrics_visible_fn visible, void *arg,
		   int show_keystores, time_t now)
{
	struct out o = {out, 0};
	struct id_snap *ids = NULL;
	size_t n = 0, i;

	(void)now;
	if (visible != NULL && rt->n_ids > 0) {
		if ((ids = calloc(rt->n_ids, sizeof(*ids))) == NULL)
			return MTLS_AGENT_ERR_NOMEM;
		for (i = 0; i < rt->n_ids; i++)
			if (visible(&rt->ids[i], arg))
				snapshot(&rt->ids[i], &ids[n++]);
	}
	head(&o, "mtls_agent_build_info", "gauge", "Always 1; the agent's version as a label.");
	put(&o, "mtls_agent_build_info{version=\"%s\"} 1\n", PACKAGE_VERSION);
	head(&o, "mtls_agent_start_time_seconds", "gauge",
	     "When the running configuration was loaded (start or last reload), Unix time.");
	put(&o, "mtls_agent_start_time_seconds %lld\n", (long long)rt->started);
	head(&o, "mtls_agent_identities", "gauge", "Identities configured.");
	put(&o, "mtls_agent_identities %zu\n", rt->n_ids);
	head(&o, "mtls_agent_clients_connected", "gauge",
	     "Client connections open on the agent socket.");
	put(&o, "mtls_agent_clients_connected %llu\n",
	    (unsigned long long)atomic_load(&clients_connected));
	head(&o, "mtls_agent_connections_refused_total", "counter",
	     "Connections refused at accept (connection limits).");
	put(&o, "mtls_agent_connections_refused_total %llu\n",
	    (unsigned long long)atomic_load(&connections_refused));
	if (show_keystores)
		render_keystores(&o, rt);
	if (visible != NULL) {
		render_identities(&o, ids, n);
		render_revocation(&o, ids, n);
	}
	free(ids);
	return o.err;
}
