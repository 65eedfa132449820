/*
 * The renewal engine: one thread per identity with renew = cmp | est (and
 * a supervisor that starts and ends them as reloads add and remove
 * identities) keeps each supplied with a valid certificate; a CA that is
 * slow or dead delays only the identities that use it.
 *
 * A renewal goes through steps recorded in a journal,
 * <state-dir>/<identity>.renew, written atomically before each step:
 *
 *   keygen     a new key was made in the keystore (also recorded as the
 *              identity's pending key, <identity>.pending)
 *   requested  the request went to the CA
 *   issued     the CA's certificate passed every check and is staged in
 *              <identity>.issued (nothing new is served yet)
 *   confirming (CMP) our certConf is on its way: the CA may confirm from now on
 *   confirmed  (CMP) the CA's pkiConf arrived: the staged certificate is to be used
 *   installed  the certificate file now holds it (new handshakes use the new key)
 *
 * after which the journal is removed and the old key is queued for
 * retirement in <identity>.retire ("KEYID NOT-AFTER" lines): it keeps
 * signing for clients that loaded it until its certificate expires, then it
 * is deleted from the keystore. The certificate file is the switch: the
 * identity's current key is always the key that matches it, so a crash at
 * any point leaves the agent serving a certificate and the key it belongs
 * to. At start-up, reconciliation completes a renewal whose certificate was
 * installed or confirmed (installs the staged certificate, queues the old
 * key) or rolls back one that was not (the new key stays pending and is
 * reused by the next attempt). A certificate the CA never saw confirmed is
 * never served: it could be revoked for that (RFC 4210 5.3.18).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "renew/cacerts.h"
#include "common/certcheck.h"
#include "renew/clock.h"
#include "renew/enroll.h"
#include "renew/renew-prov.h"
#include "renew/renew-verify.h"
#include "renew/renew.h"
#include "agent/testhook.h"
#include "renew/revocation.h"
#include "renew/sched.h"
#include "keystore/csr.h"
#include "common/log.h"
#include "common/util.h"
#include "mtls-agent/client.h"

extern char **environ;

#define MAX_SLEEP_S (24 * 3600)
/* While the clock is not known good (renew/clock.h), how often it is looked at again. */
#define CLOCK_RECHECK_S 15
/*
 * Key generations an identity may hold before a renewal that stalls
 * (record_progress) stops making new keys: current, pending and those
 * waiting for their certificates to expire. Normal rotation needs 2 or 3;
 * a storm of renewals (a CA or a clock gone wrong) must not fill the token.
 * Renewals that move the schedule are not capped: an operator's many forced
 * renewals keep rotating, and the journal stays unambiguous.
 */
#define RENEW_MAX_GENERATIONS 16
#define POST_RENEW_TIMEOUT_MS 60000

enum step {
	STEP_NONE = 0,
	STEP_PREPARING, /* about to make a key: known= lists the keys that exist */
	STEP_KEYGEN,
	STEP_REQUESTED,
	STEP_ISSUED,
	STEP_CONFIRMING,
	STEP_CONFIRMED,
	STEP_INSTALLED,
	/* renew-verify: a connection with the new credential, before it is staged */
	STEP_VERIFYING,
};
static const char *const step_names[] = {"none",      "preparing", "keygen",
					 "requested", "issued",	   "confirming",
					 "confirmed", "installed", "verifying"};

/* Per identity, by name, surviving reloads. */
struct rstate {
	char *name;
	int reconciled;
	int forced;	   /* renew_now() asked for an attempt */
	unsigned done_gen; /* bumped after each attempt */
	int completing;	   /* the attempt of done_gen is not yet in status in full */
	int last_rc;	   /* of the last attempt: 0 or MTLS_AGENT_ERR_* */
	unsigned failures;
	time_t next_retry;	/* after a failure */
	char failed_serial[80]; /* the certificate the failures were about */
	unsigned stalls;	/* consecutive renewals that left the identity due at once */
	time_t stall_until;	/* no scheduled attempt before this while stalled */
	char stall_serial[80];	/* the certificate the stall is about */
	time_t rev_next;	/* next revocation check of rev_serial */
	unsigned rev_failures;	/* checks in a row that got no trustworthy answer */
	int rev_revoked;	/* rev_serial is revoked: re-enroll at once */
	char rev_serial[80];	/* the certificate the revocation state is about */
	int rev_mode;		/* revocation-check and -interval the state was made with */
	long long rev_interval;
	pthread_t worker;  /* this identity's renewal thread ... */
	int has_worker;	   /* ... exists (to be joined) */
	int worker_exited; /* ... has ended (its identity is gone or renews no more) */
	struct renew_status st;
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t wake;	 /* to the identity workers: kick_gen moved, or stop */
	pthread_cond_t sup_wake; /* to the supervisor: a reload, a worker ended, or stop */
	pthread_cond_t done;	 /* to renew_now() callers */
	pthread_t thread;	 /* the supervisor */
	int running, stop, kicked;
	unsigned kick_gen; /* bumped by every kick: workers look at their identity again */
	renew_runtime_fn get_runtime;
	void *arg;
	struct rstate **states;
	size_t n_states;
	char device_id[128];
} g = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.wake = PTHREAD_COND_INITIALIZER,
	.sup_wake = PTHREAD_COND_INITIALIZER,
	.done = PTHREAD_COND_INITIALIZER,
};

/* g.lock held. */
static struct rstate *state_for(const char *name)
{
	struct rstate **ns, *s;
	size_t i;

	for (i = 0; i < g.n_states; i++)
		if (strcmp(g.states[i]->name, name) == 0)
			return g.states[i];
	if ((s = calloc(1, sizeof(*s))) == NULL || (s->name = strdup(name)) == NULL ||
	    (ns = realloc(g.states, (g.n_states + 1) * sizeof(*ns))) == NULL) {
		if (s != NULL)
			free(s->name);
		free(s);
		return NULL;
	}
	g.states = ns;
	g.states[g.n_states++] = s;
	return s;
}

/* ---- journal and retirement list ------------------------------------------------------ */

#define JOURNAL_MAX 8192

struct journal {
	int step;
	int bootstrap;
	char known[JOURNAL_MAX / 2]; /* STEP_PREPARING: "ID ID ..." of the keys before keygen */
	char new_key[2 * KS_MAX_ID + 1];
	char old_key[2 * KS_MAX_ID + 1]; /* "" when there was none */
	long long old_not_after;
	/* STEP_PREPARING: the CKA_ID chosen for the key being generated ("" if the keystore
	 * chooses), so that what a crash inside key generation leaves is known for sure. */
	char generating[2 * KS_MAX_ID + 1];
};

static int journal_write(struct identity_rt *id, const struct journal *j)
{
	char *path = state_file(id->rt, id, "renew"), text[JOURNAL_MAX];
	int n, r = -1;

	if (path == NULL)
		return -1;
	n = snprintf(text, sizeof(text),
		     "step=%s\nkind=%s\nnew=%s\nold=%s\nold-not-after=%lld\ngenerating=%s\n"
		     "known=%s\n",
		     step_names[j->step], j->bootstrap ? "bootstrap" : "renew",
		     j->new_key[0] != '\0' ? j->new_key : "-",
		     j->old_key[0] != '\0' ? j->old_key : "-", j->old_not_after,
		     j->generating[0] != '\0' ? j->generating : "-", j->known);
	if (n > 0 && (size_t)n < sizeof(text) &&
	    write_file_atomic(path, text, (size_t)n, 0600) == 0) {
		r = 0;
		test_crash_point(step_names[j->step]);
	} else
		log_error("identity \"%s\": cannot write the renewal journal %s: %s", id->cfg->name,
			  path, strerror(errno));
	free(path);
	return r;
}

static void journal_remove(struct identity_rt *id)
{
	char *path = state_file(id->rt, id, "renew");

	if (path != NULL && unlink(path) != 0 && errno != ENOENT)
		log_warn("identity \"%s\": cannot remove %s: %s", id->cfg->name, path,
			 strerror(errno));
	free(path);
}

/* Returns 1 if a journal was read, 0 if there is none (or it is unreadable: logged). */
static int journal_read(struct identity_rt *id, struct journal *j)
{
	char *path = state_file(id->rt, id, "renew"), *line, *save = NULL;
	uint8_t *data = NULL;
	size_t len = 0, k;

	memset(j, 0, sizeof(*j));
	if (path == NULL || read_file(path, JOURNAL_MAX, &data, &len) != 0) {
		free(path);
		return 0;
	}
	for (line = strtok_r((char *)data, "\n", &save); line != NULL;
	     line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "step=", 5) == 0) {
			for (k = 0; k < sizeof(step_names) / sizeof(step_names[0]); k++)
				if (strcmp(line + 5, step_names[k]) == 0)
					j->step = (int)k;
		} else if (strncmp(line, "kind=", 5) == 0) {
			j->bootstrap = strcmp(line + 5, "bootstrap") == 0;
		} else if (strncmp(line, "new=", 4) == 0 && strcmp(line + 4, "-") != 0) {
			snprintf(j->new_key, sizeof(j->new_key), "%s", line + 4);
		} else if (strncmp(line, "known=", 6) == 0) {
			snprintf(j->known, sizeof(j->known), "%s", line + 6);
		} else if (strncmp(line, "old=", 4) == 0 && strcmp(line + 4, "-") != 0) {
			snprintf(j->old_key, sizeof(j->old_key), "%s", line + 4);
		} else if (strncmp(line, "generating=", 11) == 0 && strcmp(line + 11, "-") != 0) {
			snprintf(j->generating, sizeof(j->generating), "%s", line + 11);
		} else if (strncmp(line, "old-not-after=", 14) == 0) {
			j->old_not_after = strtoll(line + 14, NULL, 10);
		}
	}
	free(data);
	if (j->step == STEP_NONE || (j->step != STEP_PREPARING && j->new_key[0] == '\0')) {
		log_warn("identity \"%s\": ignoring an unreadable renewal journal %s",
			 id->cfg->name, path);
		free(path);
		return 0;
	}
	free(path);
	return 1;
}

struct retire_entry {
	char key[2 * KS_MAX_ID + 1];
	long long not_after;
};

static size_t retire_read(struct identity_rt *id, struct retire_entry *out, size_t max)
{
	char *path = state_file(id->rt, id, "retire"), *line, *save = NULL;
	uint8_t *data = NULL;
	size_t len = 0, n = 0;

	if (path == NULL || read_file(path, 64 * 1024, &data, &len) != 0) {
		free(path);
		return 0;
	}
	for (line = strtok_r((char *)data, "\n", &save); line != NULL && n < max;
	     line = strtok_r(NULL, "\n", &save)) {
		if (sscanf(line, "%128s %lld", out[n].key, &out[n].not_after) == 2)
			n++;
	}
	free(data);
	free(path);
	return n;
}

static int retire_write(struct identity_rt *id, const struct retire_entry *e, size_t n)
{
	char *path = state_file(id->rt, id, "retire"), *text;
	size_t i, off = 0, cap = n * (sizeof(e->key) + 24) + 1;
	int r = -1;

	if (path == NULL || (text = malloc(cap)) == NULL) {
		free(path);
		return -1;
	}
	text[0] = '\0';
	for (i = 0; i < n; i++)
		off += (size_t)snprintf(text + off, cap - off, "%s %lld\n", e[i].key,
					e[i].not_after);
	if (n == 0)
		r = unlink(path) == 0 || errno == ENOENT ? 0 : -1;
	else
		r = write_file_atomic(path, text, off, 0600);
	if (r != 0)
		log_error("identity \"%s\": cannot update %s: %s", id->cfg->name, path,
			  strerror(errno));
	free(text);
	free(path);
	return r;
}

/* Far more than a keystore holds; a longer list means something is wrong. */
#define MAX_RETIRE 4096

/* Queues a key for deletion once its certificate has expired. */
static void retire_add(struct identity_rt *id, const char *key_hex, long long not_after)
{
	struct retire_entry *e = calloc(MAX_RETIRE, sizeof(*e));
	size_t n, i;

	if (e == NULL) {
		log_error("identity \"%s\": out of memory: old key %.16s... stays in the keystore",
			  id->cfg->name, key_hex);
		return;
	}
	n = retire_read(id, e, MAX_RETIRE);
	for (i = 0; i < n && strcmp(e[i].key, key_hex) != 0; i++)
		;
	if (i < n) {
		free(e);
		return;
	}
	if (n == MAX_RETIRE) {
		log_error("identity \"%s\": %d keys already wait for retirement; old key %.16s... "
			  "is not queued and stays in the keystore",
			  id->cfg->name, MAX_RETIRE, key_hex);
		free(e);
		return;
	}
	snprintf(e[n].key, sizeof(e[n].key), "%s", key_hex);
	e[n].not_after = not_after;
	if (retire_write(id, e, n + 1) == 0)
		log_info("identity \"%s\": old key %.16s... is kept until its certificate expires",
			 id->cfg->name, key_hex);
	free(e);
}

static void purge_half_key(struct identity_rt *id, const char *hex, const char *what);

/* Deletes queued keys whose certificates have expired; returns the next due time (0: none). */
static time_t retire_due(struct identity_rt *id, time_t now)
{
	struct retire_entry *e = calloc(MAX_RETIRE, sizeof(*e));
	size_t n, i, kept = 0;
	time_t next = 0;
	struct ks_key *key;
	char err[256], when[32];
	int changed = 0, r;

	if (e == NULL)
		return now + 60;
	n = retire_read(id, e, MAX_RETIRE);
	for (i = 0; i < n; i++) {
		if (e[i].not_after > (long long)now) {
			if (next == 0 || e[i].not_after < (long long)next)
				next = (time_t)e[i].not_after;
			e[kept++] = e[i];
			continue;
		}
		pthread_mutex_lock(&id->lock);
		identity_refresh(id, 1, err, sizeof(err));
		key = identity_key_by_hex(id, e[i].key);
		r = 0;
		if (key != NULL && (key == id->current || key == id->pending)) {
			/* Installed again meanwhile (an operator's import): not ours to delete. */
			log_info("identity \"%s\": key %.16s... is in use again; not retired",
				 id->cfg->name, e[i].key);
		} else if (key != NULL) {
			r = ks_delete(id->ks, key, err, sizeof(err));
			if (r == 0)
				identity_refresh(id, 1, err, sizeof(err));
		} else {
			/*
			 * The private key is gone, the entry is not: a crash (or a failure)
			 * between destroying the private key and its public key. What is
			 * left of that id would never be found again.
			 */
			purge_half_key(id, e[i].key, "retirement");
		}
		pthread_mutex_unlock(&id->lock);
		format_utc((time_t)e[i].not_after, when, sizeof(when));
		if (r != 0) {
			log_warn("identity \"%s\": cannot retire key %.16s... yet: %s",
				 id->cfg->name, e[i].key, err);
			e[kept++] = e[i];
			if (next == 0 || now + 60 < next)
				next = now + 60;
			continue;
		}
		if (key != NULL)
			log_info(
				"identity \"%s\": retired key %.16s... (its certificate expired %s)",
				id->cfg->name, e[i].key, when);
		changed = 1;
	}
	if (changed)
		retire_write(id, e, kept);
	free(e);
	return next;
}

/* ---- start-up reconciliation ---------------------------------------------------------- */

/* Whether hex is one of the space-separated ids in list. */
static int in_list(const char *list, const char *hex)
{
	size_t n = strlen(hex);
	const char *p = list;

	while ((p = strstr(p, hex)) != NULL) {
		if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
			return 1;
		p += n;
	}
	return 0;
}

/*
 * A crash between making a key and recording it as pending leaves a key that
 * nothing names. The journal listed the keys that existed before: a key not
 * among them is that one, and becomes the pending key the next attempt uses.
 * Lock held. Returns -1 when such a key exists but cannot be recorded (a
 * full disk): the journal must then stay, or the key would be forgotten.
 */
static int adopt_unrecorded_key(struct identity_rt *id, const struct journal *j)
{
	char hex[2 * KS_MAX_ID + 2], err[256], *path;
	size_t i;
	int r = 0;

	if (id->pending != NULL)
		return 0;
	for (i = 0; i < id->n_keys; i++) {
		hex_encode(id->keys[i]->id, id->keys[i]->id_len, hex);
		if (id->keys[i] == id->current || in_list(j->known, hex))
			continue;
		strcat(hex, "\n");
		if ((path = state_file(id->rt, id, "pending")) == NULL ||
		    write_file_atomic(path, hex, strlen(hex), 0600) != 0) {
			log_error("identity \"%s\": cannot record key %.16s... as pending",
				  id->cfg->name, hex);
			r = -1;
		} else {
			log_info("identity \"%s\": key %.16s... made before the interruption is "
				 "kept for the next attempt",
				 id->cfg->name, hex);
			identity_refresh(id, 1, err, sizeof(err));
		}
		free(path);
		return r;
	}
	return 0;
}

/* Removes <identity>.issued, the staged certificate. */
static void staged_remove(struct identity_rt *id)
{
	char *path = state_file(id->rt, id, "issued");

	if (path != NULL && unlink(path) != 0 && errno != ENOENT)
		log_warn("identity \"%s\": cannot remove %s: %s", id->cfg->name, path,
			 strerror(errno));
	free(path);
}

/*
 * Installs the staged certificate (<identity>.issued), which was verified
 * before it was staged; on success cur_hex gets the id of the key it
 * certifies. Returns 0 or -1 (logged).
 */
static int install_staged(struct identity_rt *id, char *cur_hex, size_t cur_len)
{
	char *path = state_file(id->rt, id, "issued"), err[256];
	STACK_OF(X509) *chain = NULL;
	uint8_t *data = NULL;
	size_t len = 0;
	int r = -1;

	if (path == NULL || read_file(path, 1024 * 1024, &data, &len) != 0 ||
	    certcheck_parse_chain(data, len, &chain, err, sizeof(err)) != 0) {
		log_error("identity \"%s\": the confirmed certificate %s cannot be read; the old "
			  "certificate stays",
			  id->cfg->name, path != NULL ? path : "(staged)");
		goto out;
	}
	/* Checked when staged; time may have passed since (a long power cut). */
	if (certcheck_leaf(sk_X509_value(chain, 0), time(NULL), err, sizeof(err)) != 0 ||
	    identity_install_chain(id, chain, err, sizeof(err)) != 0) {
		log_error("identity \"%s\": cannot install the confirmed certificate: %s",
			  id->cfg->name, err);
		goto out;
	}
	chain = NULL; /* the identity's now */
	pthread_mutex_lock(&id->lock);
	if (id->current != NULL && cur_len > 2 * id->current->id_len)
		hex_encode(id->current->id, id->current->id_len, cur_hex);
	pthread_mutex_unlock(&id->lock);
	r = 0;
out:
	sk_X509_pop_free(chain, X509_free);
	free(data);
	free(path);
	return r;
}

/* Whether the identity holds a key that is neither current, pending, nor listed in j. */
static int has_unrecorded_key(struct identity_rt *id, const struct journal *j)
{
	char hex[2 * KS_MAX_ID + 1], err[256];
	size_t i;
	int found = 0;

	pthread_mutex_lock(&id->lock);
	identity_refresh(id, 1, err, sizeof(err));
	for (i = 0; i < id->n_keys && !found; i++) {
		hex_encode(id->keys[i]->id, id->keys[i]->id_len, hex);
		found = id->keys[i] != id->current && id->keys[i] != id->pending &&
			!in_list(j->known, hex);
	}
	pthread_mutex_unlock(&id->lock);
	return found;
}

/*
 * The key reference for generating a key with a CKA_ID chosen here: PKCS#11 keystores only
 * (tpm2 writes a key file at once), and only when the configured reference leaves the id
 * open. Fills hex (the id) and returns the reference (free it), or NULL to let the keystore
 * choose.
 */
static char *keygen_ref(struct identity_rt *id, char *hex, size_t hexlen)
{
	uint8_t raw[16];
	char *ref;
	size_t len, i;

	hex[0] = '\0';
	if (strcmp(ks_type(id->ks), "pkcs11") != 0 || strstr(id->cfg->key, "id=") != NULL ||
	    hexlen < 2 * sizeof(raw) + 1 || RAND_bytes(raw, sizeof(raw)) != 1)
		return NULL;
	len = strlen(id->cfg->key) + 4 + 3 * sizeof(raw) + 1;
	if ((ref = malloc(len)) == NULL)
		return NULL;
	snprintf(ref, len, "%s;id=", id->cfg->key);
	for (i = 0; i < sizeof(raw); i++)
		snprintf(ref + strlen(ref), len - strlen(ref), "%%%02x", raw[i]);
	hex_encode(raw, sizeof(raw), hex);
	return ref;
}

/*
 * Removes what an interrupted key generation or retirement ("what") left of the key with
 * id hex: its public key (or certificate) without the private key. Lock held.
 */
static void purge_half_key(struct identity_rt *id, const char *hex, const char *what)
{
	char *ref, err[256];
	unsigned purged = 0;
	size_t len, i;

	if (hex[0] == '\0' || strlen(hex) % 2 != 0)
		return;
	len = strlen(id->cfg->key) + 4 + 3 * (strlen(hex) / 2) + 1;
	if ((ref = malloc(len)) == NULL)
		return;
	snprintf(ref, len, "%s;id=", id->cfg->key);
	for (i = 0; hex[i] != '\0'; i += 2)
		snprintf(ref + strlen(ref), len - strlen(ref), "%%%c%c", hex[i], hex[i + 1]);
	if (ks_purge_half(id->ks, ref, &purged, err, sizeof(err)) != 0)
		log_warn("identity \"%s\": cannot remove what an interrupted %s left "
			 "(id %.16s...): %s",
			 id->cfg->name, what, hex, err);
	else if (purged > 0)
		log_info(
			"identity \"%s\": removed %u object(s) of key %.16s... that an interrupted "
			"%s left without its private key",
			id->cfg->name, purged, hex, what);
	free(ref);
}

/*
 * Whether the certificate now served (its key cur_hex, its notAfter) is the one the
 * journal's renewal was for. A renewal that certified a new key is installed when the
 * certificate names that key. One that certified the current key again (rotate-key = no,
 * a full key file) cannot be told apart by its key: the old certificate's notAfter, which
 * the journal recorded, says the renewal never replaced it.
 */
static int renewal_installed(const struct journal *j, const char *cur_hex, time_t cur_not_after)
{
	if (j->new_key[0] == '\0' || strcmp(cur_hex, j->new_key) != 0)
		return 0;
	return strcmp(j->old_key, j->new_key) != 0 || (long long)cur_not_after != j->old_not_after;
}

/*
 * Finishes or rolls back what the journal says was interrupted. Returns 0
 * when no journal is left, -1 when it must stay (keystore unreachable, a key
 * that cannot be recorded yet).
 */
static int reconcile(struct identity_rt *id)
{
	char err[256], cur_hex[2 * KS_MAX_ID + 1] = "";
	struct journal j;
	time_t cur_not_after;

	if (!journal_read(id, &j))
		return 0;
	pthread_mutex_lock(&id->lock);
	if (identity_refresh(id, 1, err, sizeof(err)) != 0) {
		pthread_mutex_unlock(&id->lock);
		/* Keystore not reachable: keep the journal, try again on the next pass. */
		log_warn("identity \"%s\": cannot reconcile the interrupted renewal yet: %s",
			 id->cfg->name, err);
		return -1;
	}
	if (j.step == STEP_PREPARING && adopt_unrecorded_key(id, &j) != 0) {
		pthread_mutex_unlock(&id->lock);
		return -1;
	}
	/* A crash inside the key generation: a public key without its private key. */
	if (j.step == STEP_PREPARING && j.generating[0] != '\0')
		purge_half_key(id, j.generating, "key generation");
	if (id->current != NULL) {
		hex_encode(id->current->id, id->current->id_len, cur_hex);
		/* tpm2: the key file's first block must be the key the certificate names. */
		if (ks_activate(id->ks, id->current, err, sizeof(err)) != 0)
			log_warn("identity \"%s\": %s", id->cfg->name, err);
	}
	cur_not_after = id->not_after;
	pthread_mutex_unlock(&id->lock);
	if (j.step == STEP_CONFIRMED && !renewal_installed(&j, cur_hex, cur_not_after) &&
	    j.new_key[0] != '\0' && install_staged(id, cur_hex, sizeof(cur_hex)) == 0) {
		log_info("identity \"%s\": installed the certificate the CA had confirmed before "
			 "the interruption",
			 id->cfg->name);
		pthread_mutex_lock(&id->lock);
		cur_not_after = id->not_after;
		pthread_mutex_unlock(&id->lock);
	}
	staged_remove(id);
	if (renewal_installed(&j, cur_hex, cur_not_after)) {
		if (j.old_key[0] != '\0' && strcmp(j.old_key, j.new_key) != 0)
			retire_add(id, j.old_key, j.old_not_after);
		log_info("identity \"%s\": completed a renewal interrupted after step \"%s\": the "
			 "new certificate is installed",
			 id->cfg->name, step_names[j.step]);
	} else {
		log_info("identity \"%s\": rolled back a renewal interrupted at step \"%s\": the "
			 "old certificate stays; the new key is kept for the next attempt",
			 id->cfg->name, step_names[j.step]);
	}
	journal_remove(id);
	return 0;
}

/* ---- one renewal ---------------------------------------------------------------------- */

struct txn {
	struct identity_rt *id;
	struct ks_key *new_key;
	EVP_PKEY *new_pkey; /* new_key as an EVP_PKEY, for renew-verify's handshake */
	const char *trust;  /* the CA trust file, also for renew-verify's server */
	const X509_NAME *subject;
	struct journal *journal;
	STACK_OF(X509) * extra;	    /* the CA's intermediates from /cacerts (EST), or NULL */
	STACK_OF(X509) * staged;    /* verified, not yet installed */
	STACK_OF(X509) * installed; /* a reference to the chain installed, for the root CA update */
};

static STACK_OF(X509) * chain_copy(STACK_OF(X509) * chain)
{
	return chain != NULL ? X509_chain_up_ref(chain) : NULL;
}

/*
 * The enroller's stage(): every check, then the verified path minus the
 * trust anchor is kept (in memory and in <identity>.issued, for a restart
 * after the CA's confirmation) until install().
 */
static int stage_chain(void *arg, STACK_OF(X509) * chain, int *local, char *err, size_t errlen)
{
	struct txn *t = arg;
	struct identity_rt *id = t->id;
	X509 *leaf = sk_X509_value(chain, 0);
	STACK_OF(X509) *untrusted = NULL, *path = NULL;
	X509_STORE_CTX *vctx = NULL;
	X509_STORE *store = NULL;
	uint8_t *spki = NULL;
	size_t spki_len = 0;
	char cerr[256], *staged = NULL;
	int r = -1;

	*local = 0;
	if (leaf == NULL) {
		snprintf(err, errlen, "the CA sent no certificate");
		return -1;
	}
	if (certcheck_spki(leaf, &spki, &spki_len) != 0 || spki_len != t->new_key->spki_len ||
	    memcmp(spki, t->new_key->spki, spki_len) != 0) {
		snprintf(err, errlen,
			 "the CA's certificate is for another public key than the one "
			 "requested");
		goto out;
	}
	if (certcheck_leaf(leaf, time(NULL), cerr, sizeof(cerr)) != 0) {
		snprintf(err, errlen, "the CA's certificate is not usable: %s", cerr);
		goto out;
	}
	if (t->subject != NULL && X509_NAME_cmp(X509_get_subject_name(leaf), t->subject) != 0) {
		char got[256], want[256];

		X509_NAME_oneline(X509_get_subject_name(leaf), got, sizeof(got));
		X509_NAME_oneline(t->subject, want, sizeof(want));
		snprintf(err, errlen, "the CA's certificate has subject %s, %s was requested", got,
			 want);
		goto out;
	}
	/* ca-trust and the successors accepted from /cacerts (renew/cacerts.c). */
	if ((store = cacerts_trust_store(id, cerr, sizeof(cerr))) == NULL) {
		snprintf(err, errlen, "%s", cerr);
		*local = 1;
		goto out;
	}
	if ((untrusted = certcheck_chain_rest(chain)) == NULL ||
	    (vctx = X509_STORE_CTX_new()) == NULL) {
		snprintf(err, errlen, "out of memory");
		*local = 1;
		goto out;
	}
	/* The CA's current intermediates complete an answer that carries the leaf alone. */
	for (int i = 0; i < sk_X509_num(t->extra); i++) {
		if (!sk_X509_push(untrusted, sk_X509_value(t->extra, i))) {
			snprintf(err, errlen, "out of memory");
			*local = 1;
			goto out;
		}
	}
	if (X509_STORE_CTX_init(vctx, store, leaf, untrusted) != 1 ||
	    X509_STORE_CTX_set_purpose(vctx, X509_PURPOSE_SSL_CLIENT) != 1) {
		snprintf(err, errlen, "cannot set up chain verification");
		*local = 1;
		goto out;
	}
	if (X509_verify_cert(vctx) != 1) {
		snprintf(err, errlen,
			 "the CA's certificate does not verify against ca-trust %s: %s",
			 id->cfg->ca_trust,
			 X509_verify_cert_error_string(X509_STORE_CTX_get_error(vctx)));
		goto out;
	}
	path = X509_STORE_CTX_get1_chain(vctx);
	/* The anchor stays out of the file: peers have it (or must not learn it from us). */
	if (path != NULL && sk_X509_num(path) > 1)
		X509_free(sk_X509_pop(path));
	/*
	 * renew-verify: the new credential must be accepted by the server before it is even
	 * staged (CMP: a refusal is a negative certConf). The journal says so first; a crash
	 * during the connection rolls back.
	 */
	if (id->cfg->renew_verify != NULL) {
		t->journal->step = STEP_VERIFYING;
		if (journal_write(id, t->journal) != 0) {
			snprintf(err, errlen, "cannot write the renewal journal");
			*local = 1;
			goto out;
		}
		if (renew_verify(id->cfg->renew_verify, t->trust, renew_prov_libctx(), t->new_pkey,
				 path, id->cfg->ca_timeout, cerr, sizeof(cerr)) != 0) {
			snprintf(err, errlen, "renew-verify %s: %s; the old certificate stays",
				 id->cfg->renew_verify, cerr);
			goto out;
		}
		log_info("identity \"%s\": renew-verify %s accepted the new certificate",
			 id->cfg->name, id->cfg->renew_verify);
	}
	if ((staged = state_file(id->rt, id, "issued")) == NULL ||
	    chain_write_pem(staged, path, 0600, cerr, sizeof(cerr)) != 0) {
		snprintf(err, errlen, "cannot stage the new certificate: %s",
			 staged != NULL ? cerr : "out of memory");
		*local = 1;
		goto out;
	}
	t->journal->step = STEP_ISSUED;
	if (journal_write(id, t->journal) != 0) {
		snprintf(err, errlen, "cannot write the renewal journal");
		*local = 1;
		goto out;
	}
	sk_X509_pop_free(t->staged, X509_free);
	t->staged = path;
	path = NULL;
	r = 0;
out:
	OPENSSL_free(spki);
	free(staged);
	sk_X509_pop_free(path, X509_free);
	sk_X509_free(untrusted);
	X509_STORE_CTX_free(vctx);
	X509_STORE_free(store);
	ERR_clear_error();
	return r;
}

/* The enroller's progress(): the confirmation steps go into the journal. */
static void confirm_step(void *arg, int step)
{
	struct txn *t = arg;

	if (t->staged == NULL)
		return; /* a negative certConf: nothing staged */
	t->journal->step = step == ENROLL_STEP_CONFIRMED ? STEP_CONFIRMED : STEP_CONFIRMING;
	journal_write(t->id, t->journal);
}

/* The enroller's install(): the switch. */
/* CMP IR: a new root among the ip's caPubs is judged like one from /cacerts. */
static void offer_ca_pubs(void *arg, STACK_OF(X509) * certs)
{
	struct txn *t = arg;

	cacerts_offered(t->id, certs, "CMP caPubs");
}

/*
 * CMP: after each successful KUR, ask the CA for a root CA key update (RFC
 * 9480 4.3), so that the next renewal trusts a root the CA is moving to. One
 * round trip, protected and verified like the KUR itself; a CA without the
 * service answers with an error, which is fine (debug log only). A new root
 * is kept only when its newWithOld link comes from an anchor in force
 * (renew/cacerts.c). 1 when a new root was accepted.
 */
static int cmp_root_update(struct identity_rt *id, const struct enroll_request *req)
{
	X509 *old_root = cacerts_current_root(id), *nwn = NULL, *nwo = NULL;
	char err[512]; /* escaped */
	int r = enroll_cmp_root_update(req, old_root, &nwn, &nwo, err, sizeof(err));

	if (r == 0)
		log_debug("identity \"%s\": CMP root CA key update: %s", id->cfg->name, err);
	else if (r < 0)
		log_warn("identity \"%s\": CMP root CA key update: refused the answer: %s",
			 id->cfg->name, err);
	else
		r = cacerts_root_update(id, nwn, nwo) > 0 ? 1 : 0;
	X509_free(old_root);
	X509_free(nwn);
	X509_free(nwo);
	return r;
}

static int install_chain(void *arg, char *err, size_t errlen)
{
	struct txn *t = arg;
	char cerr[256];

	if (t->staged == NULL) {
		snprintf(err, errlen, "no staged certificate to install");
		return -1;
	}
	if (identity_install_chain(t->id, t->staged, cerr, sizeof(cerr)) != 0) {
		snprintf(err, errlen, "cannot install the new certificate: %s", cerr);
		return -1;
	}
	sk_X509_pop_free(t->installed, X509_free);
	t->installed = X509_chain_up_ref(t->staged);
	t->staged = NULL; /* owned by the identity now */
	t->journal->step = STEP_INSTALLED;
	journal_write(t->id, t->journal);
	return 0;
}

/* The key type for a new key: configured, else like the current key, else P-256. */
static int keygen_type(const struct cfg_identity *cfg, const struct ks_key *cur)
{
	if (cfg->key_type != 0)
		return cfg->key_type;
	if (cur != NULL && cur->type == MTLS_AGENT_KEY_RSA)
		return cur->bits >= 4096   ? KS_GEN_RSA_4096
		       : cur->bits >= 3072 ? KS_GEN_RSA_3072
					   : KS_GEN_RSA_2048;
	if (cur != NULL && cur->type == MTLS_AGENT_KEY_EC && cur->bits > 256)
		return KS_GEN_EC_P384;
	return KS_GEN_EC_P256;
}

/* Writes cert-out files and runs post-renew; failures are logged, never undo the renewal. */
static void after_renewal(struct identity_rt *id)
{
	const struct cfg_identity *cfg = id->cfg;
	char err[256], env_id[300], env_cert[4200];
	STACK_OF(X509) * chain;
	char *argv[4], *envp[4];
	uint64_t deadline;
	size_t i;
	pid_t pid;
	int status, r;

	pthread_mutex_lock(&id->lock);
	chain = chain_copy(id->chain);
	pthread_mutex_unlock(&id->lock);
	for (i = 0; chain != NULL && i < cfg->n_cert_out; i++)
		if (chain_write_pem(cfg->cert_out[i], chain, 0644, err, sizeof(err)) != 0)
			log_error("identity \"%s\": cert-out: %s", cfg->name, err);
	sk_X509_pop_free(chain, X509_free);
	if (cfg->post_renew == NULL)
		return;
	snprintf(env_id, sizeof(env_id), "MTLS_AGENT_IDENTITY=%s", cfg->name);
	snprintf(env_cert, sizeof(env_cert), "MTLS_AGENT_CERT=%s", cfg->cert);
	argv[0] = "/bin/sh";
	argv[1] = "-c";
	argv[2] = cfg->post_renew;
	argv[3] = NULL;
	envp[0] = env_id;
	envp[1] = env_cert;
	envp[2] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	envp[3] = NULL;
	/* Default signal dispositions and an empty mask, not the agent's. */
	if ((r = spawn_clean("/bin/sh", argv, envp, &pid)) != 0) {
		log_error("identity \"%s\": cannot run post-renew: %s", cfg->name, strerror(r));
		return;
	}
	/* Bounded: a hanging hook must not stop renewals of other identities. */
	deadline = monotonic_ms() + POST_RENEW_TIMEOUT_MS;
	while (waitpid(pid, &status, WNOHANG) == 0) {
		if (monotonic_ms() > deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			log_error("identity \"%s\": post-renew killed after %d s", cfg->name,
				  POST_RENEW_TIMEOUT_MS / 1000);
			return;
		}
		usleep(50 * 1000);
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		log_info("identity \"%s\": post-renew ran", cfg->name);
	else
		log_warn("identity \"%s\": post-renew failed (%s %d)", cfg->name,
			 WIFEXITED(status) ? "exit status" : "signal",
			 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

/* Credentials of a bootstrap enrollment; wiped by boot_free. */
struct boot {
	char *secret; /* CMP shared secret or EST "user:password" */
	char *user, *pass;
	struct identity_rt *boot_id;
	EVP_PKEY *key;
	STACK_OF(X509) * chain;
};

static void boot_free(struct boot *b)
{
	if (b->secret != NULL) {
		wipe(b->secret, strlen(b->secret));
		free(b->secret);
	}
	EVP_PKEY_free(b->key);
	sk_X509_pop_free(b->chain, X509_free);
	memset(b, 0, sizeof(*b));
}

/* Another identity's key and chain as a credential (bootstrap, renew-auth). */
static int cred_load(struct runtime *rt, const char *name, const char *what, struct boot *b,
		     char *err, size_t errlen)
{
	char kerr[256];
	struct ks_key *key;

	if ((b->boot_id = runtime_identity(rt, name)) == NULL) {
		snprintf(err, errlen, "%s identity \"%s\" is not configured", what, name);
		return -1;
	}
	pthread_mutex_lock(&b->boot_id->lock);
	identity_refresh(b->boot_id, 0, kerr, sizeof(kerr));
	key = b->boot_id->current;
	b->chain = chain_copy(b->boot_id->chain);
	pthread_mutex_unlock(&b->boot_id->lock);
	if (key == NULL || b->chain == NULL) {
		snprintf(err, errlen, "%s identity \"%s\" has no key and certificate", what, name);
		boot_free(b);
		return -1;
	}
	if ((b->key = renew_prov_key(b->boot_id, key, err, errlen)) == NULL) {
		boot_free(b);
		return -1;
	}
	return 0;
}

static int boot_load(struct runtime *rt, const struct cfg_identity *cfg, struct boot *b, char *err,
		     size_t errlen)
{
	char kerr[256], *colon;

	memset(b, 0, sizeof(*b));
	switch (cfg->bootstrap) {
	case BOOTSTRAP_SECRET:
	case BOOTSTRAP_BASIC:
		if (read_secret_file(cfg->bootstrap_file, &b->secret, kerr, sizeof(kerr)) != 0) {
			snprintf(err, errlen, "bootstrap: %s", kerr);
			return -1;
		}
		if (cfg->bootstrap == BOOTSTRAP_BASIC) {
			if ((colon = strchr(b->secret, ':')) == NULL) {
				snprintf(err, errlen, "bootstrap: %s must hold USER:PASSWORD",
					 cfg->bootstrap_file);
				boot_free(b);
				return -1;
			}
			*colon = '\0';
			b->user = b->secret;
			b->pass = colon + 1;
		}
		return 0;
	case BOOTSTRAP_IDENTITY:
		return cred_load(rt, cfg->bootstrap_identity, "bootstrap", b, err, errlen);
	}
	snprintf(err, errlen,
		 "no valid certificate to renew with and no bootstrap configured: "
		 "import a certificate (mtls-agentctl import-cert) or set bootstrap");
	return -1;
}

/* What the identity looks like now, for scheduling and for the transaction. */
struct snapshot {
	struct ks_key *cur;
	struct ks_key *pending;
	STACK_OF(X509) * chain;
	time_t not_before, not_after;
	char serial[80];
};

static void snapshot_take(struct identity_rt *id, struct snapshot *s)
{
	char err[256];
	X509 *leaf;
	BIGNUM *bn;
	char *hex;

	memset(s, 0, sizeof(*s));
	pthread_mutex_lock(&id->lock);
	identity_refresh(id, 0, err, sizeof(err));
	s->chain = chain_copy(id->chain);
	leaf = sk_X509_value(s->chain, 0);
	/* A certificate that matches none of the keys is no credential. */
	s->cur = id->current;
	s->pending = id->pending;
	if (leaf != NULL && id->current != NULL && identity_key_by_cert(id, leaf) == id->current) {
		s->not_after = id->not_after;
		s->not_before = certcheck_not_before(leaf);
		if ((bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf), NULL)) != NULL &&
		    (hex = BN_bn2hex(bn)) != NULL) {
			snprintf(s->serial, sizeof(s->serial), "%s", hex);
			OPENSSL_free(hex);
		}
		BN_free(bn);
	} else {
		sk_X509_pop_free(s->chain, X509_free);
		s->chain = NULL;
	}
	pthread_mutex_unlock(&id->lock);
}

static void snapshot_free(struct snapshot *s)
{
	sk_X509_pop_free(s->chain, X509_free);
	memset(s, 0, sizeof(*s));
}

/* "ID ID ..." of every key the identity holds, for the journal. */
static int list_keys(struct identity_rt *id, char *out, size_t len)
{
	char hex[2 * KS_MAX_ID + 1];
	size_t i, off = 0;
	int n, r = 0;

	out[0] = '\0';
	pthread_mutex_lock(&id->lock);
	for (i = 0; i < id->n_keys; i++) {
		hex_encode(id->keys[i]->id, id->keys[i]->id_len, hex);
		n = snprintf(out + off, len - off, "%s%s", off > 0 ? " " : "", hex);
		if (n < 0 || (size_t)n >= len - off) {
			r = -1;
			break;
		}
		off += (size_t)n;
	}
	pthread_mutex_unlock(&id->lock);
	return r;
}

/* Whether the identity's last renewal did not move its schedule (record_progress). */
static int stalled(const char *name)
{
	struct rstate *st;
	int r;

	pthread_mutex_lock(&g.lock);
	st = state_for(name);
	r = st != NULL && st->stalls > 0;
	pthread_mutex_unlock(&g.lock);
	return r;
}

static size_t count_keys(struct identity_rt *id)
{
	size_t n;

	pthread_mutex_lock(&id->lock);
	n = id->n_keys;
	pthread_mutex_unlock(&id->lock);
	return n;
}

/*
 * Whether a renewal must certify the current key again instead of making a new one:
 * the keystore cannot hold another key for this reference (a TSS2 key file is full), or
 * renewals stall and RENEW_MAX_GENERATIONS keys exist. Stalled renewals come as often as
 * the backoff allows, and each old key stays until its certificate expires: bounded
 * whatever the CA answers, the current key is renewed rather than the keystore filled.
 * A full keystore must not stop renewal either: the old certificate would expire.
 */
static int generations_full(struct identity_rt *id)
{
	size_t n = count_keys(id), limit = id->ks->backend->max_generations;

	return (limit > 0 && n >= limit) || (stalled(id->cfg->name) && n >= RENEW_MAX_GENERATIONS);
}

/* How a step of renew_once() that failed leaves the journal (GO_ON: it did not fail). */
enum { GO_ON, ABANDON /* the attempt is over: journal removed */, KEEP_JOURNAL };

/*
 * The key to certify: a pending one from an earlier attempt, the current one (rotate-key =
 * no, a key that never had a certificate, too many generations), or a new one made under
 * the journal, which names it before it exists (purge_half_key). Returns GO_ON, or how
 * renew_once() must end, with msg.
 */
static int choose_key(struct identity_rt *id, const struct snapshot *snap, int bootstrap,
		      struct journal *j, struct ks_key **new_key, char *msg, size_t msglen)
{
	const struct cfg_identity *cfg = id->cfg;
	char err[400], *ref; /* a detail, quoted in msg */
	int r;

	if (snap->pending != NULL && (cfg->rotate_key || snap->chain == NULL)) {
		*new_key = snap->pending;
		return GO_ON;
	}
	if (snap->cur != NULL && (snap->chain == NULL || !cfg->rotate_key)) {
		*new_key = snap->cur; /* no rotation, or a key that never had a certificate */
		return GO_ON;
	}
	if (snap->cur != NULL && snap->chain != NULL && !bootstrap && generations_full(id)) {
		log_warn("identity \"%s\": %zu key generations are in the keystore already; "
			 "renewing without a new key until old ones retire",
			 cfg->name, count_keys(id));
		*new_key = snap->cur;
		return GO_ON;
	}
	ref = keygen_ref(id, j->generating, sizeof(j->generating));
	j->step = STEP_PREPARING;
	j->bootstrap = bootstrap;
	if (list_keys(id, j->known, sizeof(j->known)) != 0 || journal_write(id, j) != 0) {
		free(ref);
		snprintf(msg, msglen, "cannot write the renewal journal");
		return KEEP_JOURNAL;
	}
	r = identity_keygen_ref(id, ref, keygen_type(cfg, snap->cur), new_key, err, sizeof(err));
	free(ref);
	if (r == 0)
		return GO_ON;
	snprintf(msg, msglen, "cannot make a new key: %s", err);
	/* A key made but neither recorded nor deleted: the journal keeps it known. */
	if (has_unrecorded_key(id, j))
		return KEEP_JOURNAL;
	pthread_mutex_lock(&id->lock);
	purge_half_key(id, j->generating, "key generation");
	pthread_mutex_unlock(&id->lock);
	return ABANDON;
}

/*
 * The subject to request: the configured one for an enrollment, else the (possibly
 * expired) certificate's. NULL with msg when there is none.
 */
static X509_NAME *request_subject(struct identity_rt *id, int bootstrap,
				  const struct snapshot *snap, char *msg, size_t msglen)
{
	const struct cfg_identity *cfg = id->cfg;
	X509_NAME *subject = NULL;
	char err[400]; /* a detail, quoted in msg */

	if (cfg->subject != NULL && (bootstrap || snap->chain == NULL)) {
		if (csr_parse_subject(cfg->subject, &subject, err, sizeof(err)) != 0)
			snprintf(msg, msglen, "subject %s: %s", cfg->subject, err);
		return subject;
	}
	pthread_mutex_lock(&id->lock);
	if (id->chain != NULL)
		subject = X509_NAME_dup(X509_get_subject_name(sk_X509_value(id->chain, 0)));
	pthread_mutex_unlock(&id->lock);
	if (subject == NULL)
		snprintf(msg, msglen,
			 "no subject to request: set subject = /CN=... for enrollment "
			 "without a certificate");
	return subject;
}

/* Who authenticates the request: the bootstrap credential, renew-auth, or the current key. */
static void request_credentials(struct enroll_request *req, const struct cfg_identity *cfg,
				int bootstrap, const struct boot *boot, const struct boot *auth)
{
	if (bootstrap && cfg->bootstrap == BOOTSTRAP_SECRET) {
		req->secret_ref = cfg->bootstrap_ref;
		req->secret = (const uint8_t *)boot->secret;
		req->secret_len = strlen(boot->secret);
	} else if (bootstrap && cfg->bootstrap == BOOTSTRAP_BASIC) {
		req->basic_user = boot->user;
		req->basic_pass = boot->pass;
	} else if (bootstrap) {
		req->boot_key = boot->key;
		req->boot_chain = boot->chain;
	} else if (auth->key != NULL && cfg->renew == RENEW_CMP) {
		/*
		 * A KUR must be signed with the certificate it updates (RFC 9483 4.1.3), which is
		 * what an allowed application could do too: with renew-auth the renewal is an IR
		 * signed by the enrollment credential, for the current subject.
		 */
		req->kind = ENROLL_BOOTSTRAP;
		req->cur_chain = NULL;
		req->boot_key = auth->key;
		req->boot_chain = auth->chain;
	} else if (auth->key != NULL) {
		req->auth_key = auth->key;
		req->auth_chain = auth->chain;
	}
}

/* The request's fixed parts: the CA, its trust, the keys, the callbacks that commit. */
static void request_fill(struct enroll_request *req, struct txn *t, int bootstrap,
			 const struct snapshot *snap, EVP_PKEY *cur_pkey, X509_NAME *signer_name)
{
	const struct cfg_identity *cfg = t->id->cfg;

	req->kind = bootstrap ? ENROLL_BOOTSTRAP : ENROLL_RENEW;
	req->url = cfg->ca_url;
	req->trust_file = t->trust;
	req->libctx = renew_prov_libctx();
	req->timeout_s = cfg->ca_timeout;
	req->cur_key = cur_pkey;
	req->cur_chain = bootstrap ? NULL : snap->chain;
	req->new_key = t->new_pkey;
	req->subject = t->subject;
	req->stage = stage_chain;
	req->progress = confirm_step;
	req->install = install_chain;
	req->commit_arg = t;
	req->signer_file = cfg->ca_signer;
	req->signer_name = signer_name;
	req->own_chain = snap->chain;
	req->implicit_confirm = cfg->implicit_confirm;
	req->ca_pubs = offer_ca_pubs;
}

/*
 * One enrollment transaction. Returns the outcome (enum enroll_outcome) with
 * a line in msg and a server hint in *hint (-1: none).
 */
static int renew_once(struct runtime *rt, struct identity_rt *id, int bootstrap, long *hint,
		      char *msg, size_t msglen)
{
	const struct cfg_identity *cfg = id->cfg;
	struct enroll_request req = {0};
	struct enroll_result res = {0};
	struct journal j = {0};
	struct snapshot snap = {0};
	struct boot boot = {0}, auth = {0};
	struct ks_key *new_key = NULL;
	EVP_PKEY *cur_pkey = NULL, *new_pkey = NULL;
	X509_NAME *subject = NULL, *signer_name = NULL;
	GENERAL_NAMES *sans = NULL;
	uint8_t *csr = NULL;
	size_t csr_len = 0;
	struct txn t = {0};
	char err[400], *trust = NULL; /* err: a detail, quoted in msg */
	time_t now = time(NULL);
	int outcome = ENROLL_LOCAL;

	*hint = -1;
	/* A journal left by a failed attempt (a key that could not be recorded) comes first. */
	if (reconcile(id) != 0) {
		snprintf(msg, msglen,
			 "an interrupted renewal cannot be reconciled yet (see the log); "
			 "no new key is made meanwhile");
		goto out;
	}
	snapshot_take(id, &snap);
	if (!bootstrap && (snap.chain == NULL || snap.not_after <= now))
		bootstrap = 1;
	if (bootstrap && boot_load(rt, cfg, &boot, err, sizeof(err)) != 0) {
		snprintf(msg, msglen, "%s", err);
		outcome = ENROLL_NOT_AUTHORIZED;
		goto out;
	}
	/* renew-auth: the enrollment credential, not the key applications use, authenticates. */
	if (!bootstrap && cfg->renew_auth != NULL &&
	    cred_load(rt, cfg->renew_auth, "renew-auth", &auth, err, sizeof(err)) != 0) {
		snprintf(msg, msglen, "%s", err);
		outcome = ENROLL_NOT_AUTHORIZED;
		goto out;
	}
	switch (choose_key(id, &snap, bootstrap, &j, &new_key, msg, msglen)) {
	case KEEP_JOURNAL:
		goto out;
	case ABANDON:
		goto out_journal;
	}
	j.known[0] = '\0';
	j.generating[0] = '\0';
	if (new_key != snap.cur && new_key != snap.pending)
		log_info("identity \"%s\": new key %u-bit %s made in keystore \"%s\"", cfg->name,
			 new_key->bits, new_key->type == MTLS_AGENT_KEY_RSA ? "RSA" : "EC",
			 ks_name(id->ks));
	j.bootstrap = bootstrap;
	j.step = STEP_KEYGEN;
	hex_encode(new_key->id, new_key->id_len, j.new_key);
	if (snap.chain != NULL && snap.cur != NULL) {
		hex_encode(snap.cur->id, snap.cur->id_len, j.old_key);
		j.old_not_after = (long long)snap.not_after;
	}
	if (journal_write(id, &j) != 0) {
		snprintf(msg, msglen, "cannot write the renewal journal");
		goto out;
	}
	if ((new_pkey = renew_prov_key(id, new_key, err, sizeof(err))) == NULL ||
	    (!bootstrap && (cur_pkey = renew_prov_key(id, snap.cur, err, sizeof(err))) == NULL)) {
		snprintf(msg, msglen, "%s", err);
		goto out_journal;
	}
	if ((subject = request_subject(id, bootstrap, &snap, msg, msglen)) == NULL)
		goto out_journal;
	if (cfg->ca_sender != NULL &&
	    csr_parse_subject(cfg->ca_sender, &signer_name, err, sizeof(err)) != 0) {
		snprintf(msg, msglen, "ca-sender %s: %s", cfg->ca_sender, err);
		goto out_journal;
	}
	/* Signed inside the keystore, with the SANs of the certificate being renewed. */
	if (snap.chain != NULL)
		sans = X509_get_ext_d2i(sk_X509_value(snap.chain, 0), NID_subject_alt_name, NULL,
					NULL);
	if (csr_build_name(id->ks, new_key, subject, sans, &csr, &csr_len, err, sizeof(err)) != 0) {
		snprintf(msg, msglen, "cannot make the certificate request: %s", err);
		goto out_journal;
	}
	t.id = id;
	t.new_key = new_key;
	t.new_pkey = new_pkey;
	t.subject = subject;
	t.journal = &j;
	if (cfg->renew == RENEW_EST)
		t.extra = cacerts_refresh(id);
	if ((trust = cacerts_trust_file(id)) == NULL) {
		snprintf(msg, msglen, "out of memory");
		goto out_journal;
	}
	t.trust = trust;
	request_fill(&req, &t, bootstrap, &snap, cur_pkey, signer_name);
	req.csr_der = csr;
	req.csr_len = csr_len;
	request_credentials(&req, cfg, bootstrap, &boot, &auth);
	j.step = STEP_REQUESTED;
	if (journal_write(id, &j) != 0) {
		snprintf(msg, msglen, "cannot write the renewal journal");
		goto out_journal;
	}
	if (cfg->renew == RENEW_CMP)
		enroll_cmp(&req, &res);
	else
		enroll_est(&req, &res);
	outcome = res.outcome;
	*hint = res.retry_after;
	snprintf(msg, msglen, "%s", res.msg);
	if (outcome == ENROLL_OK && j.old_key[0] != '\0' && strcmp(j.old_key, j.new_key) != 0) {
		retire_add(id, j.old_key, j.old_not_after);
		test_crash_point("queued");
	}
out_journal:
	/* Whatever happened, the certificate file now says which key is current. */
	staged_remove(id);
	journal_remove(id);
	if (outcome == ENROLL_OK && cfg->renew == RENEW_CMP && req.kind == ENROLL_RENEW &&
	    t.installed != NULL) {
		/*
		 * Once the renewal is complete and its journal gone (a crash or a
		 * bad answer here costs the renewal nothing), and asked with the
		 * certificate just installed: the CA may have revoked the old one.
		 */
		req.cur_key = new_pkey;
		req.cur_chain = t.installed;
		req.own_chain = t.installed;
		cmp_root_update(id, &req);
	}
out:
	sk_X509_pop_free(t.staged, X509_free);
	sk_X509_pop_free(t.installed, X509_free);
	X509_NAME_free(signer_name);
	ERR_clear_error();
	sk_X509_pop_free(t.extra, X509_free);
	free(trust);
	free(csr);
	GENERAL_NAMES_free(sans);
	X509_NAME_free(subject);
	EVP_PKEY_free(cur_pkey);
	EVP_PKEY_free(new_pkey);
	boot_free(&boot);
	boot_free(&auth);
	snapshot_free(&snap);
	return outcome;
}

/* ---- scheduling ----------------------------------------------------------------------- */

static double device_jitter(const char *name, const char *serial)
{
	char seed[512];
	int n = snprintf(seed, sizeof(seed), "%s|%s|%s", g.device_id, name, serial);

	return sched_jitter_fraction(seed, n > 0 ? (size_t)n : 0);
}

static time_t time_ceil(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec + (ts.tv_nsec > 0 ? 1 : 0);
}

static double random01(void)
{
	uint64_t v = 0;

	if (RAND_bytes((unsigned char *)&v, sizeof(v)) != 1)
		return 0.5;
	return (double)(v >> 11) / (double)(1ULL << 53);
}

/*
 * When identity id should next be renewed (0: not until something changes),
 * with st->st.action saying why not when an operator must act. g.lock held
 * for st.
 */
static time_t compute_due(const struct cfg_identity *cfg, const struct snapshot *snap,
			  struct rstate *st, time_t now)
{
	struct sched_policy pol = {cfg->renew_permille, cfg->renew_before};
	char when[32];
	time_t due;

	st->st.action[0] = '\0';
	if (st->failures > 0 && strcmp(st->failed_serial, snap->serial) != 0) {
		/* Another certificate was installed meanwhile (an import): start afresh. */
		st->failures = 0;
		st->next_retry = 0;
	}
	if (st->forced)
		return now;
	if (snap->chain == NULL || snap->not_after <= now) {
		if (cfg->bootstrap == BOOTSTRAP_NONE) {
			format_utc(snap->not_after, when, sizeof(when));
			if (snap->chain == NULL)
				snprintf(
					st->st.action, sizeof(st->st.action),
					"no certificate: import one (mtls-agentctl import-cert) or "
					"configure bootstrap");
			else
				snprintf(
					st->st.action, sizeof(st->st.action),
					"certificate expired %s: renewal needs a valid one; import "
					"a new certificate (mtls-agentctl import-cert) or configure "
					"bootstrap",
					when);
			return 0;
		}
		return st->failures > 0 ? st->next_retry : now;
	}
	/* A revoked certificate is worth nothing to the servers: re-enroll now. */
	if (st->rev_revoked && strcmp(st->rev_serial, snap->serial) == 0) {
		if (st->failures > 0 && cfg->bootstrap == BOOTSTRAP_NONE)
			snprintf(st->st.action, sizeof(st->st.action),
				 "certificate revoked and its renewal failed: import a new "
				 "certificate (mtls-agentctl import-cert) or configure bootstrap");
		return st->failures > 0 ? st->next_retry : now;
	}
	if (st->failures > 0)
		return st->next_retry;
	due = (time_t)sched_first_attempt(&pol, snap->not_before, snap->not_after,
					  device_jitter(cfg->name, snap->serial));
	if (st->stalls > 0 && strcmp(st->stall_serial, snap->serial) != 0)
		st->stalls = 0; /* another certificate came in meanwhile (an import) */
	if (st->stalls > 0) {
		format_utc(snap->not_before, when, sizeof(when));
		snprintf(st->st.action, sizeof(st->st.action),
			 "renewal stalled: %u renewal(s) in a row brought a certificate due again "
			 "at once (valid from %s); check this clock against the CA's; backing off",
			 st->stalls, when);
		if (st->stall_until > due)
			due = st->stall_until;
	}
	/* Not yet valid by our clock: nothing to renew before it is. */
	if (due < snap->not_before)
		due = snap->not_before;
	return due;
}

/*
 * After a successful renewal: whether the new certificate moved the schedule
 * (sched_moved); consecutive ones that did not back off (sched_stall), so a
 * clock far from the CA's cannot make the agent renew in a loop. g.lock held.
 */
static void record_progress(const struct cfg_identity *cfg, const struct snapshot *snap,
			    struct rstate *st, time_t now)
{
	struct sched_policy pol = {cfg->renew_permille, cfg->renew_before};
	time_t first;

	if (snap->chain == NULL) {
		st->stalls = 0;
		return;
	}
	first = (time_t)sched_first_attempt(&pol, snap->not_before, snap->not_after,
					    device_jitter(cfg->name, snap->serial));
	if (sched_moved(now, first, snap->not_before, snap->not_after)) {
		st->stalls = 0;
		return;
	}
	st->stalls++;
	snprintf(st->stall_serial, sizeof(st->stall_serial), "%s", snap->serial);
	st->stall_until =
		(time_t)sched_stall(now, st->stalls, snap->not_before, snap->not_after, random01());
	log_warn("identity \"%s\": the new certificate (valid %lld s from now, until %lld s "
		 "from now) is due for renewal again at once; is this clock (or the CA's) "
		 "wrong? backing off: next attempt in %lld s (stall %u)",
		 cfg->name, (long long)(snap->not_before - now), (long long)(snap->not_after - now),
		 (long long)(st->stall_until - now), st->stalls);
}

static void record_attempt(struct rstate *st, const struct snapshot *before, int outcome, long hint,
			   const char *msg, time_t now)
{
	st->st.last_attempt = now;
	st->st.last_ok = outcome == ENROLL_OK;
	snprintf(st->st.last_result, sizeof(st->st.last_result), "%s", msg);
	if (outcome == ENROLL_OK) {
		st->failures = 0;
		st->next_retry = 0;
		st->st.last_renewed = now;
		st->last_rc = 0;
		return;
	}
	st->failures++;
	snprintf(st->failed_serial, sizeof(st->failed_serial), "%s", before->serial);
	st->next_retry = (time_t)sched_retry(
		now, st->failures, before->not_before,
		before->not_after > before->not_before ? before->not_after : now + 3600, hint,
		random01());
	/* What `mtls-agentctl renew` reports: a refused certificate, or a renewal that failed. */
	st->last_rc = outcome == ENROLL_BAD_CERT ? MTLS_AGENT_ERR_CERT : MTLS_AGENT_ERR_RENEWAL;
}

/* ---- revocation ----------------------------------------------------------------------- */

/* A revocation check waits at most this long for one responder, whatever ca-timeout says. */
#define REV_TIMEOUT_MAX_S 30

/* The status line for what r says about the certificate, checked at now. */
static void rev_describe(const struct rev_result *r, time_t now, time_t next, char *out, size_t len)
{
	char checked[32], at[32], nxt[32];

	format_utc(now, checked, sizeof(checked));
	format_utc(next, nxt, sizeof(nxt));
	if (r->status == REV_GOOD)
		snprintf(out, len, "good (%s, checked %s, next check %s)", r->source, checked, nxt);
	else if (r->status == REV_REVOKED) {
		format_utc(r->revoked_at, at, sizeof(at));
		snprintf(out, len, "revoked (%s, revoked %s; %s, checked %s)",
			 rev_reason_name(r->reason), at, r->source, checked);
	} else if (r->status == REV_UNKNOWN)
		snprintf(out, len, "unknown (%s; checked %s, next try %s)", r->msg, checked, nxt);
	else
		out[0] = '\0';
}

/*
 * Records a check's outcome: the status line, the next check, one log line
 * per change (a revoked certificate is logged once, a responder that stays
 * down once per streak). g.lock held.
 */
static void rev_record(const struct cfg_identity *cfg, struct rstate *st,
		       const struct rev_result *r, time_t now)
{
	char line[sizeof(st->st.revocation)];
	int was_revoked = st->rev_revoked;

	st->rev_failures = r->status == REV_UNKNOWN ? st->rev_failures + 1 : 0;
	st->rev_next = rev_next_check(now, r->status, st->rev_failures,
				      (long)cfg->revocation_interval, r->next_update, random01());
	rev_describe(r, now, st->rev_next, line, sizeof(line));
	if (r->status == REV_GOOD || r->status == REV_REVOKED)
		st->rev_revoked = r->status == REV_REVOKED;
	if (r->status == REV_REVOKED && !was_revoked && cfg->renew == RENEW_NONE)
		/* Still served: refusing it would take the device offline for good. */
		log_error("identity \"%s\": certificate serial %s is REVOKED: %s; no renewal is "
			  "configured: import a new certificate (mtls-agentctl import-cert); the "
			  "revoked one is served until then",
			  cfg->name, st->rev_serial, line);
	else if (r->status == REV_REVOKED && !was_revoked)
		log_error("identity \"%s\": certificate serial %s is REVOKED: %s; re-enrolling now",
			  cfg->name, st->rev_serial, line);
	else if (r->status == REV_UNKNOWN && st->rev_failures == 1)
		log_warn("identity \"%s\": revocation status %s; the certificate is still served",
			 cfg->name, line);
	else if (r->status == REV_GOOD && strncmp(st->st.revocation, "good", 4) != 0)
		log_info("identity \"%s\": revocation status %s", cfg->name, line);
	snprintf(st->st.revocation, sizeof(st->st.revocation), "%s", line);
}

/*
 * Whether the certificate in snap is due for a revocation check; what was
 * known is dropped when the certificate or (after a reload) the settings
 * changed, which makes it due at once. g.lock held.
 */
static int rev_is_due(const struct cfg_identity *cfg, const struct snapshot *snap,
		      struct rstate *st, time_t now)
{
	int changed_cfg = st->rev_mode != cfg->revocation_check ||
			  st->rev_interval != cfg->revocation_interval;

	if (changed_cfg || strcmp(st->rev_serial, snap->serial) != 0) {
		st->rev_mode = cfg->revocation_check;
		st->rev_interval = cfg->revocation_interval;
		snprintf(st->rev_serial, sizeof(st->rev_serial), "%s", snap->serial);
		st->rev_next = now;
		st->rev_failures = 0;
		st->rev_revoked = 0;
		st->st.revocation[0] = '\0';
	}
	return snap->chain != NULL && snap->not_after > now && st->rev_next <= now;
}

/*
 * Checks the revocation status of the identity's certificate when it is due
 * (a new certificate at once). Runs in the identity's own thread, so a slow
 * responder delays no other identity and never a signature. g.lock not held.
 */
static void rev_visit(struct identity_rt *id, const struct snapshot *snap, struct rstate *st,
		      time_t now)
{
	const struct cfg_identity *cfg = id->cfg;
	unsigned timeout =
		cfg->ca_timeout < REV_TIMEOUT_MAX_S ? cfg->ca_timeout : REV_TIMEOUT_MAX_S;
	struct rev_result r = {.status = REV_UNKNOWN, .source = ""};
	X509_STORE *trust;
	int due;

	pthread_mutex_lock(&g.lock);
	due = rev_is_due(cfg, snap, st, now);
	/* Nothing to ask about this certificate (off, no source named): until a reload. */
	if (due && !rev_wanted(sk_X509_value(snap->chain, 0), cfg->revocation_check)) {
		st->rev_next = now + MAX_SLEEP_S;
		due = 0;
	}
	pthread_mutex_unlock(&g.lock);
	if (!due)
		return;
	/*
	 * Without ca-trust (an identity that does not renew) the issuer in the installed
	 * chain is the only anchor: the authority for its own certificate's status.
	 */
	if (cfg->ca_trust == NULL)
		trust = rev_issuer_store(snap->chain);
	else
		trust = cacerts_trust_store(id, r.msg, sizeof(r.msg));
	if (trust != NULL)
		rev_check(snap->chain, trust, cfg->revocation_check, timeout, now, &r);
	else if (cfg->ca_trust == NULL)
		snprintf(r.msg, sizeof(r.msg), "out of memory");
	X509_STORE_free(trust);
	pthread_mutex_lock(&g.lock);
	rev_record(cfg, st, &r, time(NULL));
	pthread_mutex_unlock(&g.lock);
}

/* When the revocation check of the certificate in snap is next due (0: none). g.lock held. */
static time_t rev_due(const struct cfg_identity *cfg, const struct snapshot *snap,
		      const struct rstate *st, time_t now)
{
	/* An expired certificate is the renewal's business (rev_is_due skips it). */
	if (snap->chain == NULL || cfg->revocation_check == REV_OFF || snap->not_after <= now)
		return 0;
	/* A certificate installed since the last check is checked at once. */
	if (strcmp(st->rev_serial, snap->serial) != 0)
		return now;
	/* Never a wake-up in the past: the worker would spin. */
	return st->rev_next > now ? st->rev_next : now + 1;
}

/* Visits one identity: reconcile, retire, renew if due. Returns its next wake-up (0: none). */
static time_t visit(struct runtime *rt, struct identity_rt *id, time_t now)
{
	const struct cfg_identity *cfg = id->cfg;
	struct snapshot snap;
	struct rstate *st;
	time_t due, retire_next, rev_next, next, prev_good;
	char msg[512], when[32], why[384];
	int outcome, forced;
	long hint;

	pthread_mutex_lock(&g.lock);
	st = state_for(cfg->name);
	if (st == NULL) {
		pthread_mutex_unlock(&g.lock);
		return now + 60;
	}
	st->st.enabled = 1;
	if (!st->reconciled) {
		st->reconciled = 1;
		pthread_mutex_unlock(&g.lock);
		reconcile(id);
		pthread_mutex_lock(&g.lock);
	}
	pthread_mutex_unlock(&g.lock);

	/* Nothing that depends on the date before the clock is known good (renew/clock.h). */
	snapshot_take(id, &snap);
	prev_good = clock_last_good();
	if (!clock_good(rt->cfg->state_dir, now, snap.not_before, why, sizeof(why))) {
		snapshot_free(&snap);
		pthread_mutex_lock(&g.lock);
		if (st->st.waiting[0] == '\0') /* once per wait, not at every look */
			log_warn("identity \"%s\": %s", cfg->name, why);
		snprintf(st->st.waiting, sizeof(st->st.waiting), "%s", why);
		st->st.next = 0;
		if (st->forced) {
			snprintf(st->st.last_result, sizeof(st->st.last_result),
				 "renewal not attempted: %s", why);
			st->last_rc = MTLS_AGENT_ERR_RENEWAL;
			st->forced = 0;
			st->done_gen++;
			pthread_cond_broadcast(&g.done);
		}
		pthread_mutex_unlock(&g.lock);
		return now + CLOCK_RECHECK_S;
	}
	pthread_mutex_lock(&g.lock);
	if (st->st.waiting[0] != '\0')
		log_info("identity \"%s\": the clock is good again; the schedule resumes",
			 cfg->name);
	st->st.waiting[0] = '\0';
	pthread_mutex_unlock(&g.lock);
	rev_visit(id, &snap, st, now);
	/*
	 * Keys retire by the earlier of this clock and the previous good one when the clock
	 * moved more than a normal wake-up apart: a jump is acted on only once it is seen
	 * again, and never deletes a key whose certificate was valid by the previous clock.
	 */
	retire_next = retire_due(id, prev_good != 0 && now - prev_good > MAX_SLEEP_S + 3600 &&
						     prev_good < now
					     ? prev_good
					     : now);
	if (retire_next != 0 && retire_next <= now)
		retire_next = now + 60;
	pthread_mutex_lock(&g.lock);
	due = compute_due(cfg, &snap, st, now);
	forced = st->forced;
	/* A retry of a certificate not yet valid by our clock waits until it is. */
	if (due != 0 && due <= now && !forced && snap.chain != NULL &&
	    !sched_is_due(now, due, snap.not_before))
		due = snap.not_before;
	st->st.next = due;
	pthread_mutex_unlock(&g.lock);
	if (due != 0 && due <= now) {
		int bootstrap = snap.chain == NULL || snap.not_after <= now;

		format_utc(snap.not_after, when, sizeof(when));
		log_info("identity \"%s\": %s (%s, certificate valid until %s)", cfg->name,
			 bootstrap ? "enrolling" : "renewing", renew_method_name(cfg->renew), when);
		outcome = renew_once(rt, id, bootstrap, &hint, msg, sizeof(msg));
		if (outcome == ENROLL_NOT_AUTHORIZED && !bootstrap &&
		    cfg->bootstrap != BOOTSTRAP_NONE) {
			log_warn("identity \"%s\": %s; trying bootstrap enrollment", cfg->name,
				 msg);
			outcome = renew_once(rt, id, 1, &hint, msg, sizeof(msg));
		}
		/*
		 * Whole seconds, rounded up: a retry "in N s" (or a CA's Retry-After)
		 * must never start before N full seconds have passed.
		 */
		now = time_ceil();
		if (outcome == ENROLL_OK)
			log_info("identity \"%s\": %s", cfg->name, msg);
		else
			log_error("identity \"%s\": renewal failed (%s): %s", cfg->name,
				  enroll_outcome_name(outcome), msg);
		if (outcome == ENROLL_OK)
			after_renewal(id);
		pthread_mutex_lock(&g.lock);
		record_attempt(st, &snap, outcome, hint, msg, now);
		if (outcome != ENROLL_OK)
			st->st.failures = st->failures;
		else
			st->st.failures = 0;
		if (forced) {
			/* A request made from now on is for another attempt. */
			st->forced = 0;
			st->done_gen++;
			st->completing = 1;
		}
		pthread_mutex_unlock(&g.lock);
		snapshot_free(&snap);
		snapshot_take(id, &snap);
		pthread_mutex_lock(&g.lock);
		if (outcome == ENROLL_OK)
			record_progress(cfg, &snap, st, now);
		due = compute_due(cfg, &snap, st, now);
		st->st.next = due;
		if (outcome != ENROLL_OK && due != 0)
			log_info("identity \"%s\": next attempt in %lld s (failure %u)", cfg->name,
				 (long long)(due - now), st->failures);
		/* The caller of renew_now() is told once status shows the next renewal too. */
		if (forced) {
			st->completing = 0;
			pthread_cond_broadcast(&g.done);
		}
		pthread_mutex_unlock(&g.lock);
	}
	pthread_mutex_lock(&g.lock);
	rev_next = rev_due(cfg, &snap, st, now);
	pthread_mutex_unlock(&g.lock);
	snapshot_free(&snap);
	next = due;
	if (retire_next != 0 && (next == 0 || retire_next < next))
		next = retire_next;
	if (rev_next != 0 && (next == 0 || rev_next < next))
		next = rev_next;
	return next;
}

/*
 * Visits an identity that does not renew: only its revocation check (no reconcile,
 * retirement, renewal or bootstrap: the keys and certificate are the operator's). The
 * clock gates it as it gates renewal: a clock set back could make a replayed answer look
 * current. Returns the next wake-up (0: none).
 */
static time_t visit_revocation(struct runtime *rt, struct identity_rt *id, time_t now)
{
	const struct cfg_identity *cfg = id->cfg;
	struct snapshot snap;
	struct rstate *st;
	time_t next;
	char why[384];

	pthread_mutex_lock(&g.lock);
	st = state_for(cfg->name);
	if (st != NULL)
		st->st.enabled = 0;
	pthread_mutex_unlock(&g.lock);
	if (st == NULL)
		return now + 60;
	snapshot_take(id, &snap);
	/* Only when there is something to ask: the clock file is not every identity's. */
	if (snap.chain != NULL && rev_wanted(sk_X509_value(snap.chain, 0), cfg->revocation_check) &&
	    !clock_good(rt->cfg->state_dir, now, snap.not_before, why, sizeof(why))) {
		snapshot_free(&snap);
		return now + CLOCK_RECHECK_S;
	}
	rev_visit(id, &snap, st, now);
	pthread_mutex_lock(&g.lock);
	next = rev_due(cfg, &snap, st, now);
	pthread_mutex_unlock(&g.lock);
	snapshot_free(&snap);
	return next;
}

/* Whether an identity has a worker: it renews, or checks its certificate's revocation. */
static int wants_worker(const struct cfg_identity *cfg)
{
	return cfg->renew != RENEW_NONE || cfg->revocation_check != REV_OFF;
}

/*
 * A crash between creating and renaming a temporary file (write_file_atomic:
 * "<file>.tmp.<pid>.<n>") leaves it behind; this process's own are never in
 * flight here (the supervisor runs this before it starts any worker).
 */
static void remove_stale_temps(struct runtime *rt)
{
	char pattern[4200], own[32];
	glob_t gl;
	size_t i, k;

	snprintf(own, sizeof(own), ".tmp.%ld.", (long)getpid());
	for (k = 0; k <= rt->n_ids; k++) {
		if (k == rt->n_ids)
			snprintf(pattern, sizeof(pattern), "%s/*.tmp.*", rt->cfg->state_dir);
		else
			snprintf(pattern, sizeof(pattern), "%s.tmp.*", rt->ids[k].cfg->cert);
		if (glob(pattern, GLOB_NOSORT, NULL, &gl) != 0)
			continue;
		for (i = 0; i < gl.gl_pathc; i++) {
			if (strstr(gl.gl_pathv[i], own) != NULL)
				continue;
			if (unlink(gl.gl_pathv[i]) == 0)
				log_info("removed %s, left by an interrupted write",
					 gl.gl_pathv[i]);
		}
		globfree(&gl);
	}
}

/*
 * One thread per identity with renew = cmp | est, or with a revocation check
 * (renew = none: only that check, visit_revocation): a CA or responder that is
 * slow or does not answer at all (a transaction waits up to ca-timeout) delays
 * only the identities that use it. The worker looks its identity up in the
 * runtime in force at each pass, so a reload that changes it takes effect at
 * once, and ends when a reload removes the identity or leaves it neither
 * renewing nor checking revocation. Keystores are
 * shared and thread-safe (the application side signs from many threads too);
 * each identity's own state is under its lock, the schedules under g.lock.
 */
static void *renew_worker(void *arg)
{
	struct rstate *st = arg;
	struct identity_rt *id;
	struct runtime *rt;
	struct timespec ts;
	unsigned seen;
	time_t next;

	pthread_mutex_lock(&g.lock);
	while (!g.stop) {
		seen = g.kick_gen;
		pthread_mutex_unlock(&g.lock);
		rt = g.get_runtime(g.arg);
		id = runtime_identity(rt, st->name);
		if (id == NULL || !wants_worker(id->cfg)) {
			runtime_unref(rt);
			pthread_mutex_lock(&g.lock);
			/* No check any more: status must not show the last one as current. */
			st->st.revocation[0] = '\0';
			st->rev_serial[0] = '\0';
			st->rev_revoked = 0;
			break;
		}
		if (id->cfg->renew == RENEW_NONE)
			next = visit_revocation(rt, id, time(NULL));
		else
			next = visit(rt, id, time(NULL));
		runtime_unref(rt);
		pthread_mutex_lock(&g.lock);
		if (next == 0 || next > time(NULL) + MAX_SLEEP_S)
			next = time(NULL) + MAX_SLEEP_S;
		/* Sleep until due; a kick (reload, renew_now(), stop) wakes every worker sooner. */
		ts.tv_sec = next;
		ts.tv_nsec = 0;
		while (!g.stop && g.kick_gen == seen && time(NULL) < next)
			if (pthread_cond_timedwait(&g.wake, &g.lock, &ts) == ETIMEDOUT)
				break;
	}
	st->worker_exited = 1;
	pthread_cond_broadcast(&g.sup_wake);
	pthread_mutex_unlock(&g.lock);
	return NULL;
}

/* Joins the workers that ended. g.lock held (they no longer take it). */
static void reap_workers(int all)
{
	size_t i;

	for (i = 0; i < g.n_states; i++) {
		struct rstate *st = g.states[i];

		if (!st->has_worker || (!all && !st->worker_exited))
			continue;
		pthread_mutex_unlock(&g.lock);
		pthread_join(st->worker, NULL);
		pthread_mutex_lock(&g.lock);
		st->has_worker = 0;
		st->worker_exited = 0;
	}
}

/*
 * The supervisor: keeps one worker per identity of the runtime in force that
 * renews or checks revocation (wants_worker), and the internal provider
 * pointed at that runtime.
 */
static void *renew_thread(void *arg)
{
	int first = 1, r;
	struct runtime *rt;
	struct rstate *st;
	size_t i;

	(void)arg;
	pthread_mutex_lock(&g.lock);
	while (!g.stop) {
		g.kicked = 0;
		pthread_mutex_unlock(&g.lock);
		rt = g.get_runtime(g.arg);
		renew_prov_set_runtime(rt);
		if (first) {
			/* Before any worker writes: temporaries found now are a crash's. */
			remove_stale_temps(rt);
			first = 0;
		}
		pthread_mutex_lock(&g.lock);
		reap_workers(0);
		for (i = 0; i < rt->n_ids && !g.stop; i++) {
			if (!wants_worker(rt->ids[i].cfg))
				continue;
			if ((st = state_for(rt->ids[i].cfg->name)) == NULL || st->has_worker)
				continue;
			st->worker_exited = 0;
			if ((r = pthread_create(&st->worker, NULL, renew_worker, st)) != 0) {
				log_error("identity \"%s\": cannot start its renewal thread: %s",
					  st->name, strerror(r));
				continue;
			}
			st->has_worker = 1;
		}
		pthread_mutex_unlock(&g.lock);
		runtime_unref(rt);
		pthread_mutex_lock(&g.lock);
		if (g.stop || g.kicked)
			continue;
		pthread_cond_wait(&g.sup_wake, &g.lock);
	}
	reap_workers(1);
	pthread_mutex_unlock(&g.lock);
	renew_prov_set_runtime(NULL);
	return NULL;
}

static void read_device_id(void)
{
	uint8_t *data = NULL;
	size_t len = 0;

	/* The machine id is stable across reboots and unique per device; else the host name. */
	if (read_file("/etc/machine-id", 256, &data, &len) == 0 && len > 0) {
		while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == ' '))
			len--;
		snprintf(g.device_id, sizeof(g.device_id), "%.*s", (int)len, (char *)data);
	} else if (gethostname(g.device_id, sizeof(g.device_id) - 1) != 0) {
		snprintf(g.device_id, sizeof(g.device_id), "unknown");
	}
	free(data);
}

int renew_start(renew_runtime_fn get_runtime, void *arg, char *err, size_t errlen)
{
	int r;

	if (renew_prov_init(err, errlen) != 0)
		return -1;
	/* libcurl's global set-up is not thread-safe: done here, before any thread uses it. */
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		snprintf(err, errlen, "cannot initialise libcurl");
		renew_prov_cleanup();
		return -1;
	}
	read_device_id();
	pthread_mutex_lock(&g.lock);
	g.get_runtime = get_runtime;
	g.arg = arg;
	g.stop = 0;
	if ((r = pthread_create(&g.thread, NULL, renew_thread, NULL)) != 0) {
		pthread_mutex_unlock(&g.lock);
		snprintf(err, errlen, "cannot start the renewal thread: %s", strerror(r));
		return -1;
	}
	g.running = 1;
	pthread_mutex_unlock(&g.lock);
	return 0;
}

void renew_stop(void)
{
	size_t i;

	pthread_mutex_lock(&g.lock);
	if (!g.running) {
		pthread_mutex_unlock(&g.lock);
		return;
	}
	g.stop = 1;
	pthread_cond_broadcast(&g.wake);
	pthread_cond_broadcast(&g.sup_wake);
	pthread_mutex_unlock(&g.lock);
	/* Transfers in progress end at once (every worker's: the flag is global). */
	enroll_set_stopping(1);
	pthread_join(g.thread, NULL);
	enroll_set_stopping(0);
	pthread_mutex_lock(&g.lock);
	g.running = 0;
	for (i = 0; i < g.n_states; i++) {
		free(g.states[i]->name);
		free(g.states[i]);
	}
	free(g.states);
	g.states = NULL;
	g.n_states = 0;
	pthread_cond_broadcast(&g.done);
	pthread_mutex_unlock(&g.lock);
	renew_prov_cleanup();
	curl_global_cleanup();
}

void renew_kick(void)
{
	pthread_mutex_lock(&g.lock);
	g.kicked = 1;
	g.kick_gen++;
	pthread_cond_broadcast(&g.wake);
	pthread_cond_broadcast(&g.sup_wake);
	pthread_mutex_unlock(&g.lock);
}

int renew_get_status(const char *name, struct renew_status *out)
{
	struct rstate *st;
	size_t i;

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&g.lock);
	if (!g.running) {
		pthread_mutex_unlock(&g.lock);
		return -1;
	}
	for (i = 0, st = NULL; i < g.n_states; i++)
		if (strcmp(g.states[i]->name, name) == 0)
			st = g.states[i];
	if (st != NULL)
		*out = st->st;
	pthread_mutex_unlock(&g.lock);
	return 0;
}

int renew_now(const char *name, unsigned wait_s, char *msg, size_t msglen)
{
	struct timespec ts;
	struct rstate *st;
	unsigned gen;
	int r;

	pthread_mutex_lock(&g.lock);
	if (!g.running || (st = state_for(name)) == NULL) {
		pthread_mutex_unlock(&g.lock);
		snprintf(msg, msglen, "the renewal service is not running");
		return MTLS_AGENT_ERR_UNSUPPORTED;
	}
	st->forced = 1;
	gen = st->done_gen;
	g.kick_gen++;
	pthread_cond_broadcast(&g.wake);
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += wait_s;
	r = 0;
	while ((st->done_gen == gen || st->completing) && g.running && r != ETIMEDOUT)
		r = pthread_cond_timedwait(&g.done, &g.lock, &ts);
	if (st->done_gen == gen || st->completing) {
		snprintf(msg, msglen, "renewal still in progress after %u s; see status", wait_s);
		r = MTLS_AGENT_ERR_BUSY;
	} else {
		snprintf(msg, msglen, "%s", st->st.last_result);
		r = st->last_rc;
	}
	pthread_mutex_unlock(&g.lock);
	return r;
}
