/*
 * Automated renewal: a thread per identity that renews its certificate
 * (renew = cmp | est) when renew/sched.c says so, with a new key made in the
 * keystore, a journal that makes every step crash-safe, and retirement of
 * old keys once their certificates expire.
 */
#ifndef MTLS_AGENT_RENEW_H
#define MTLS_AGENT_RENEW_H

#include <stddef.h>
#include <time.h>

#include "agent/state.h"

/* Returns a new reference to the runtime currently in force. */
typedef struct runtime *(*renew_runtime_fn)(void *arg);

/* Starts the renewal threads. Returns 0, or -1 with err set. */
int renew_start(renew_runtime_fn get_runtime, void *arg, char *err, size_t errlen);
/* Stops them: transfers in progress are aborted, then every thread is joined. */
void renew_stop(void);
/* The configuration changed: recompute every schedule now. */
void renew_kick(void);

/* What `status` shows for one identity. */
struct renew_status {
	int enabled;	       /* renew != none */
	time_t next;	       /* next attempt (0: none planned) */
	time_t last_attempt;   /* 0: never */
	int last_ok;	       /* last attempt succeeded */
	char last_result[512]; /* one line */
	unsigned failures;     /* consecutive */
	time_t last_renewed;   /* last success */
	char action[256];      /* what an operator must do, "" if nothing */
	char waiting[384];     /* why nothing date-dependent is done now (renew/clock.h), or "" */
	/* The certificate's revocation status: "good (...)", "revoked (...)", "unknown (...)",
	 * or "" when it is not checked (renew/revocation.h). */
	char revocation[448];
};

/* Fills st for identity name; returns -1 if the renewal thread is not running. */
int renew_get_status(const char *name, struct renew_status *st);

/*
 * Renews identity name now and waits for the outcome (at most wait_s
 * seconds). Returns 0 when a new certificate was installed, else a negative
 * MTLS_AGENT_ERR_* code with one line in msg.
 */
int renew_now(const char *name, unsigned wait_s, char *msg, size_t msglen);

#endif
