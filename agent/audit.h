/*
 * The audit trail: one entry per signature, refusal and administrative
 * operation. Under the journal (log_to_journal()) each is a structured
 * entry sent with sd_journal_send (MESSAGE_ID, MTLS_AUDIT_EVENT,
 * MTLS_IDENTITY, MTLS_UID, MTLS_PID, MTLS_EXE, MTLS_SCHEME, MTLS_RESULT,
 * MTLS_REASON); otherwise the same fields as one plain log line starting
 * "audit:". Refusals are rate-limited (a client looping on a refused
 * request must not flood the log); signatures and administrative
 * operations are not. docs/METRICS.md lists the fields.
 */
#ifndef MTLS_AGENT_AUDIT_H
#define MTLS_AGENT_AUDIT_H

#include "conf/acl.h"

/* Refusal entries allowed per second on average, and in one burst. */
#define AUDIT_REFUSALS_PER_S 10u
#define AUDIT_REFUSAL_BURST 50u

/*
 * event: "sign", "access" (an identity refused to a caller), or an
 * administrative operation ("keygen", "csr", "import-cert", "renew",
 * "reload"); identity, scheme may be NULL; result: "ok", "refused" (the
 * caller was told no: access, policy) or "error" (it was tried and failed);
 * reason: why not (may be NULL).
 */
/* The executable of pid (sanitized), "?" when unknown. */
void audit_peer_exe(pid_t pid, char *out, size_t outlen);

void audit_event(const struct peer *peer, const char *event, const char *identity,
		 const char *scheme, const char *result, const char *reason);

#endif
