/*
 * The agent's runtime: a loaded configuration with its open keystores and
 * the live state of each identity (key generations, certificate chain).
 *
 * A runtime is reference-counted: each request holds the runtime it started
 * with, so a reload swaps in a new one without disturbing requests in
 * flight. Keystores are shared between the old and the new runtime when
 * their parameters did not change, so a reload neither re-logs-in nor drops
 * sessions.
 */
#ifndef MTLS_AGENT_STATE_H
#define MTLS_AGENT_STATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#include <openssl/x509.h>

#include "conf/conf.h"
#include "agent/metrics.h"
#include "keystore/keystore.h"

struct runtime;

struct identity_rt {
	struct runtime *rt; /* the runtime this identity belongs to */
	const struct cfg_identity *cfg;
	struct keystore *ks;
	pthread_mutex_t lock; /* protects everything below */
	int keys_loaded;
	struct ks_key **keys; /* every generation found in the keystore */
	size_t n_keys;
	struct ks_key *current; /* signs when the caller names no generation */
	struct ks_key *pending; /* newest key without a certificate yet */
	STACK_OF(X509) * chain; /* leaf first; NULL when no certificate */
	time_t not_after;
	char problem[512]; /* "" when healthy */
	/* The certificate file as last read (all zero: absent), so that a file another
	 * tool replaced is noticed at the next use (identity_refresh). */
	struct stat cert_st;
	char cert_problem[400]; /* why a changed certificate file was not taken */
	atomic_uint_fast64_t n_signed;
	atomic_uint_fast64_t n_refused;
	struct id_metrics metrics; /* errors, sign-time histogram (agent/metrics.h) */
};

struct runtime {
	atomic_int refs;
	struct config *cfg;
	struct keystore **keystores; /* parallel to cfg->keystores */
	struct identity_rt *ids;     /* parallel to cfg->identities */
	size_t n_ids;
	time_t started;
};

/*
 * Builds a runtime from cfg (ownership of cfg passes to the runtime, also on
 * failure). Opens keystores not already open; reads certificate files;
 * tries to find keys (a missing token is not an error here).
 */
int runtime_create(struct config *cfg, time_t started, struct runtime **out, char *err,
		   size_t errlen);
void runtime_ref(struct runtime *rt);
void runtime_unref(struct runtime *rt);

struct identity_rt *runtime_identity(struct runtime *rt, const char *name);

/*
 * Looks up keys if not done yet (or force) and decides current/pending.
 * Call with id->lock held.
 */
int identity_refresh(struct identity_rt *id, int force, char *err, size_t errlen);

/* Finds the generation whose SPKI hash is spki_hash (32 bytes). Lock held. */
struct ks_key *identity_key_by_hash(struct identity_rt *id, const uint8_t *spki_hash);

/* Administrator operations; each takes id->lock itself. */
int identity_keygen(struct identity_rt *id, int gen_type, struct ks_key **out, char *err,
		    size_t errlen);
/*
 * identity_keygen with another reference than the configured key (NULL: that one): the
 * renewal names the new key's CKA_ID in advance (pkcs11:object=NAME;id=...) so that its
 * journal knows it before the key exists (renew/renew.c, half key pairs).
 */
int identity_keygen_ref(struct identity_rt *id, const char *key_ref, int gen_type,
			struct ks_key **out, char *err, size_t errlen);
int identity_import_cert(struct identity_rt *id, const uint8_t *data, size_t len, time_t now,
			 time_t *not_after, char *err, size_t errlen);
/*
 * Installs a verified chain (leaf first) whose leaf matches one of the
 * identity's keys; takes ownership of chain on success. Takes id->lock.
 */
int identity_install_chain(struct identity_rt *id, STACK_OF(X509) * chain, char *err,
			   size_t errlen);
/* The generation whose backend id is hex (lowercase), or NULL. Lock held. */
struct ks_key *identity_key_by_hex(struct identity_rt *id, const char *hex);
/* The generation whose public key is cert's, or NULL. Lock held. */
struct ks_key *identity_key_by_cert(struct identity_rt *id, X509 *cert);
/* "<state-dir>/<identity>.<ext>" (caller frees), NULL without memory. */
char *state_file(const struct runtime *rt, const struct identity_rt *id, const char *ext);
/* Writes chain as PEM to path atomically (temp, fsync, rename, fsync dir). */
int chain_write_pem(const char *path, STACK_OF(X509) * chain, mode_t mode, char *err,
		    size_t errlen);

/* The key a CSR is signed with: pending if any, else current. Lock held. */
struct ks_key *identity_newest_key(struct identity_rt *id);

#endif
