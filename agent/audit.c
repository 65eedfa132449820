#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-journal.h>
#endif

#include "agent/audit.h"
#include "common/log.h"
#include "common/util.h"

/* sd-id128 for `journalctl MESSAGE_ID=...`: every audit entry carries it. */
#define AUDIT_MESSAGE_ID "6d3e2b6f0f0a4c8e9a51c1f1d7a3b2e4"

static pthread_mutex_t limit_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t tokens_ms = (uint64_t)AUDIT_REFUSAL_BURST * 1000u; /* tokens, in 1/1000 */
static uint64_t last_ms;
static unsigned long suppressed;

/*
 * A token bucket shared by all refusals: allows the entry or counts it as
 * suppressed. *was_suppressed: how many were dropped before this one.
 */
static int refusal_allowed(unsigned long *was_suppressed)
{
	uint64_t now = monotonic_ms(), cap = (uint64_t)AUDIT_REFUSAL_BURST * 1000u;
	int ok;

	pthread_mutex_lock(&limit_lock);
	if (last_ms != 0)
		tokens_ms += (now - last_ms) * AUDIT_REFUSALS_PER_S;
	if (tokens_ms > cap)
		tokens_ms = cap;
	last_ms = now;
	ok = tokens_ms >= 1000u;
	*was_suppressed = 0;
	if (ok) {
		tokens_ms -= 1000u;
		*was_suppressed = suppressed;
		suppressed = 0;
	} else {
		suppressed++;
	}
	pthread_mutex_unlock(&limit_lock);
	return ok;
}

/* The caller's executable, for the record only: a pid can be reused, so never a decision. */
void audit_peer_exe(pid_t pid, char *out, size_t outlen)
{
	char path[64], raw[512];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%ld/exe", (long)pid);
	if (pid <= 0 || (n = readlink(path, raw, sizeof(raw) - 1)) < 0) {
		snprintf(out, outlen, "?");
		return;
	}
	raw[n] = '\0';
	log_sanitize(raw, out, outlen);
}

void audit_event(const struct peer *peer, const char *event, const char *identity,
		 const char *scheme, const char *result, const char *reason)
{
	char exe[512], id[256], why[512];
	unsigned long dropped = 0;
	int ok = strcmp(result, "ok") == 0, refused = strcmp(result, "refused") == 0;

	if (refused && !refusal_allowed(&dropped))
		return;
	if (peer->exe[0] != '\0')
		snprintf(exe, sizeof(exe), "%s", peer->exe);
	else
		audit_peer_exe(peer->pid, exe, sizeof(exe));
	log_sanitize(identity != NULL ? identity : "-", id, sizeof(id));
	log_sanitize(reason != NULL ? reason : "", why, sizeof(why));
	if (dropped > 0)
		log_warn("audit: %lu refusal entries suppressed (over %u per second)", dropped,
			 AUDIT_REFUSALS_PER_S);
#ifdef HAVE_LIBSYSTEMD
	if (log_to_journal()) {
		/* Refusals are notices (a client was told no), failures warnings. */
		int prio = ok ? 6 : refused ? 5 : 4;

		sd_journal_send(
			"MESSAGE=audit: %s identity=%s uid=%ld pid=%ld exe=%s result=%s%s%s", event,
			id, (long)peer->uid, (long)peer->pid, exe, result,
			why[0] != '\0' ? " reason=" : "", why, "MESSAGE_ID=" AUDIT_MESSAGE_ID,
			"PRIORITY=%d", prio, "MTLS_AUDIT_EVENT=%s", event, "MTLS_IDENTITY=%s", id,
			"MTLS_UID=%ld", (long)peer->uid, "MTLS_PID=%ld", (long)peer->pid,
			"MTLS_EXE=%s", exe, "MTLS_SCHEME=%s", scheme != NULL ? scheme : "-",
			"MTLS_RESULT=%s", result, "MTLS_REASON=%s", why, NULL);
		return;
	}
#endif
	log_msg(ok ? LOG_LVL_INFO : LOG_LVL_WARN, __func__,
		"audit: %s identity=%s uid=%ld pid=%ld exe=%s scheme=%s result=%s reason=\"%s\"",
		event, id, (long)peer->uid, (long)peer->pid, exe, scheme != NULL ? scheme : "-",
		result, why);
}
