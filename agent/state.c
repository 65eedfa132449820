#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "common/certcheck.h"
#include "agent/testhook.h"
#include "agent/state.h"
#include "common/log.h"
#include "common/util.h"
#include "mtls-agent/client.h"

/*
 * Open keystores, shared by every runtime that uses them. A keystore stays
 * open while any runtime refers to it.
 */
struct ks_shared {
	struct keystore *ks;
	unsigned refs;
};
static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ks_shared *shared;
static size_t n_shared;

static void params_from_cfg(const struct cfg_keystore *c, struct ks_params *p)
{
	memset(p, 0, sizeof(*p));
	p->name = c->name;
	p->type = c->type;
	p->module = c->module;
	p->token = c->token;
	p->pin_file = c->pin_file;
	p->sessions = c->sessions;
	p->tcti = c->tcti;
	p->srk = c->srk;
}

static int keystore_acquire(const struct cfg_keystore *c, struct keystore **out, char *err,
			    size_t errlen)
{
	struct ks_shared *ns;
	struct ks_params p;
	struct keystore *ks = NULL;
	size_t i;
	int r;

	*out = NULL;
	params_from_cfg(c, &p);
	pthread_mutex_lock(&shared_lock);
	for (i = 0; i < n_shared; i++) {
		if (strcmp(ks_name(shared[i].ks), c->name) == 0 &&
		    ks_same_params(shared[i].ks, &p)) {
			shared[i].refs++;
			*out = shared[i].ks;
			pthread_mutex_unlock(&shared_lock);
			return 0;
		}
	}
	pthread_mutex_unlock(&shared_lock);
	/* Opening may block on the token: done without the lock. */
	if ((r = ks_open(&p, &ks, err, errlen)) != 0)
		return r;
	pthread_mutex_lock(&shared_lock);
	if ((ns = realloc(shared, (n_shared + 1) * sizeof(*shared))) == NULL) {
		pthread_mutex_unlock(&shared_lock);
		ks_close(ks);
		return MTLS_AGENT_ERR_NOMEM;
	}
	shared = ns;
	shared[n_shared].ks = ks;
	shared[n_shared].refs = 1;
	n_shared++;
	pthread_mutex_unlock(&shared_lock);
	*out = ks;
	return 0;
}

static void keystore_release(struct keystore *ks)
{
	struct keystore *to_close = NULL;
	size_t i;

	if (ks == NULL)
		return;
	pthread_mutex_lock(&shared_lock);
	for (i = 0; i < n_shared; i++) {
		if (shared[i].ks != ks)
			continue;
		if (--shared[i].refs == 0) {
			to_close = ks;
			shared[i] = shared[--n_shared];
		}
		break;
	}
	pthread_mutex_unlock(&shared_lock);
	ks_close(to_close);
}

char *state_file(const struct runtime *rt, const struct identity_rt *id, const char *ext)
{
	char *path = NULL;

	if (asprintf(&path, "%s/%s.%s", rt->cfg->state_dir, id->cfg->name, ext) < 0)
		return NULL;
	return path;
}

/* Records what the certificate file is now (all zero when absent). */
static void cert_stat_record(struct identity_rt *id)
{
	if (stat(id->cfg->cert, &id->cert_st) != 0)
		memset(&id->cert_st, 0, sizeof(id->cert_st));
}

/* Whether the certificate file is another file, or was rewritten, since it was read. */
static int cert_file_changed(const struct identity_rt *id)
{
	const struct stat *o = &id->cert_st;
	struct stat st;

	if (stat(id->cfg->cert, &st) != 0)
		memset(&st, 0, sizeof(st));
	return st.st_dev != o->st_dev || st.st_ino != o->st_ino || st.st_size != o->st_size ||
	       st.st_mtim.tv_sec != o->st_mtim.tv_sec || st.st_mtim.tv_nsec != o->st_mtim.tv_nsec;
}

/*
 * The certificate file was replaced by another tool (config management, a copy by
 * hand) since it was read: re-read and re-validate it. A removed file means no
 * certificate; a file that does not parse, or whose key is none of the identity's,
 * is reported (cert_problem) and the certificate read before keeps serving, as a
 * working credential is never replaced by a broken one. Returns 1 if the file
 * changed (the caller then re-matches keys), else 0. Lock held.
 */
static int cert_file_reread(struct identity_rt *id)
{
	STACK_OF(X509) *chain = NULL;
	uint8_t *data = NULL;
	size_t len = 0;
	char err[200]; /* a detail, quoted inside cert_problem */

	if (!cert_file_changed(id))
		return 0;
	cert_stat_record(id);
	id->cert_problem[0] = '\0';
	if (read_file(id->cfg->cert, 1024 * 1024, &data, &len) != 0) {
		if (errno == ENOENT) {
			log_warn("identity \"%s\": certificate file %s was removed", id->cfg->name,
				 id->cfg->cert);
			sk_X509_pop_free(id->chain, X509_free);
			id->chain = NULL;
			id->not_after = 0;
		} else {
			snprintf(id->cert_problem, sizeof(id->cert_problem),
				 "cannot read %s: %s (still serving the certificate read before)",
				 id->cfg->cert, strerror(errno));
		}
		return 1;
	}
	if (certcheck_parse_chain(data, len, &chain, err, sizeof(err)) != 0) {
		snprintf(id->cert_problem, sizeof(id->cert_problem),
			 "%s changed on disk and cannot be used: %s (still serving the certificate "
			 "read before)",
			 id->cfg->cert, err);
	} else if (id->n_keys > 0 && identity_key_by_cert(id, sk_X509_value(chain, 0)) == NULL) {
		snprintf(id->cert_problem, sizeof(id->cert_problem),
			 "%s changed on disk to a certificate for none of the identity's keys "
			 "(still serving the certificate read before)",
			 id->cfg->cert);
	} else {
		sk_X509_pop_free(id->chain, X509_free);
		id->chain = chain;
		chain = NULL;
		id->not_after = certcheck_not_after(sk_X509_value(id->chain, 0));
		log_info("identity \"%s\": certificate file %s changed on disk: re-read",
			 id->cfg->name, id->cfg->cert);
	}
	if (id->cert_problem[0] != '\0')
		log_warn("identity \"%s\": %s", id->cfg->name, id->cert_problem);
	sk_X509_pop_free(chain, X509_free);
	free(data);
	ERR_clear_error();
	return 1;
}

/* Reads the identity's certificate file; a missing file just means "no certificate yet". */
static void identity_load_cert(struct identity_rt *id)
{
	STACK_OF(X509) *chain = NULL;
	uint8_t *data = NULL;
	size_t len = 0;
	char err[200]; /* a detail, quoted inside problem */

	sk_X509_pop_free(id->chain, X509_free);
	id->chain = NULL;
	id->not_after = 0;
	id->cert_problem[0] = '\0';
	cert_stat_record(id);
	if (read_file(id->cfg->cert, 1024 * 1024, &data, &len) != 0) {
		if (errno != ENOENT)
			snprintf(id->problem, sizeof(id->problem), "cannot read %s: %s",
				 id->cfg->cert, strerror(errno));
		return;
	}
	if (certcheck_parse_chain(data, len, &chain, err, sizeof(err)) != 0) {
		snprintf(id->problem, sizeof(id->problem), "%s: %s", id->cfg->cert, err);
	} else {
		id->chain = chain;
		id->not_after = certcheck_not_after(sk_X509_value(chain, 0));
	}
	free(data);
}

static struct ks_key *key_by_spki(struct identity_rt *id, const uint8_t *spki, size_t len)
{
	size_t i;

	for (i = 0; i < id->n_keys; i++)
		if (id->keys[i]->spki_len == len && memcmp(id->keys[i]->spki, spki, len) == 0)
			return id->keys[i];
	return NULL;
}

struct ks_key *identity_key_by_hash(struct identity_rt *id, const uint8_t *spki_hash)
{
	size_t i;

	for (i = 0; i < id->n_keys; i++)
		if (memcmp(id->keys[i]->spki_hash, spki_hash, 32) == 0)
			return id->keys[i];
	return NULL;
}

struct ks_key *identity_key_by_hex(struct identity_rt *id, const char *hex)
{
	char buf[2 * KS_MAX_ID + 1];
	size_t i;

	for (i = 0; i < id->n_keys; i++) {
		hex_encode(id->keys[i]->id, id->keys[i]->id_len, buf);
		if (strcmp(buf, hex) == 0)
			return id->keys[i];
	}
	return NULL;
}

/* The pending key's CKA_ID (hex) from the state dir, or NULL. */
static char *read_pending(struct runtime *rt, struct identity_rt *id)
{
	char *path = state_file(rt, id, "pending");
	uint8_t *data = NULL;
	size_t len = 0;

	if (path == NULL)
		return NULL;
	if (read_file(path, 256, &data, &len) != 0)
		data = NULL;
	free(path);
	if (data != NULL) {
		while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == ' '))
			data[--len] = '\0';
	}
	return (char *)data;
}

int identity_refresh(struct identity_rt *id, int force, char *err, size_t errlen)
{
	struct ks_key **keys = NULL, *prev_current = id->current;
	uint8_t *leaf_spki = NULL;
	size_t n = 0, leaf_len = 0;
	char *pending_hex = NULL;
	int r;

	/* Each use looks at the certificate file as it is now (one stat). */
	if (cert_file_reread(id))
		force = 1;
	if (id->keys_loaded && !force)
		return 0;
	if ((r = ks_find_keys(id->ks, id->cfg->key, &keys, &n, err, errlen)) != 0) {
		snprintf(id->problem, sizeof(id->problem), "%s", err);
		return r;
	}
	free(id->keys);
	id->keys = keys;
	id->n_keys = n;
	id->keys_loaded = 1;
	id->current = NULL;
	id->pending = NULL;
	id->problem[0] = '\0';
	pending_hex = read_pending(id->rt, id);
	if (id->chain != NULL) {
		if (certcheck_spki(sk_X509_value(id->chain, 0), &leaf_spki, &leaf_len) == 0)
			id->current = key_by_spki(id, leaf_spki, leaf_len);
		if (id->current == NULL && n > 0)
			snprintf(id->problem, sizeof(id->problem),
				 "the installed certificate %s matches none of the identity's %zu "
				 "key(s)",
				 id->cfg->cert, n);
	} else if (n > 0) {
		/* No certificate yet: the pending key if one was made, else the newest found. */
		if (pending_hex != NULL)
			id->current = identity_key_by_hex(id, pending_hex);
		if (id->current == NULL)
			id->current = keys[n - 1];
	}
	if (n == 0)
		snprintf(id->problem, sizeof(id->problem), "no key %s in keystore \"%s\"",
			 id->cfg->key, ks_name(id->ks));
	if (pending_hex != NULL) {
		id->pending = identity_key_by_hex(id, pending_hex);
		if (id->pending == id->current)
			id->pending = NULL;
	}
	{
		char a[2 * KS_MAX_ID + 1] = "-", b[2 * KS_MAX_ID + 1] = "-";
		if (id->current != NULL)
			hex_encode(id->current->id, id->current->id_len, a);
		if (id->pending != NULL)
			hex_encode(id->pending->id, id->pending->id_len, b);
		log_debug("identity \"%s\": %zu key(s), current %s, pending %s (file %s)",
			  id->cfg->name, n, a, b, pending_hex != NULL ? pending_hex : "-");
	}
	(void)prev_current;
	if (id->problem[0] == '\0' && id->cert_problem[0] != '\0')
		snprintf(id->problem, sizeof(id->problem), "%s", id->cert_problem);
	OPENSSL_free(leaf_spki);
	free(pending_hex);
	return 0;
}

struct ks_key *identity_newest_key(struct identity_rt *id)
{
	return id->pending != NULL ? id->pending : id->current;
}

int identity_keygen(struct identity_rt *id, int gen_type, struct ks_key **out, char *err,
		    size_t errlen)
{
	return identity_keygen_ref(id, NULL, gen_type, out, err, errlen);
}

int identity_keygen_ref(struct identity_rt *id, const char *key_ref, int gen_type,
			struct ks_key **out, char *err, size_t errlen)
{
	char hex[2 * KS_MAX_ID + 2], *path = NULL;
	struct ks_key *key = NULL;
	int r;

	*out = NULL;
	pthread_mutex_lock(&id->lock);
	test_crash_during_keygen();
	if ((r = ks_keygen(id->ks, key_ref != NULL ? key_ref : id->cfg->key, gen_type, &key, err,
			   errlen)) != 0)
		goto out;
	test_crash_point("unrecorded");
	/*
	 * Record the new key as pending before anything else: until a
	 * certificate for it is imported, signatures keep using the current key.
	 */
	hex_encode(key->id, key->id_len, hex);
	strcat(hex, "\n");
	if ((path = state_file(id->rt, id, "pending")) == NULL) {
		r = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	if (write_file_atomic(path, hex, strlen(hex), 0600) != 0) {
		char derr[MTLSA_ERRMSG_MAX];
		int saved = errno;

		/*
		 * A key nothing records would never be used nor deleted (a full
		 * disk): take it back. If even that fails, the renewal journal still
		 * lists the keys that existed before, and reconciliation adopts it.
		 */
		if (ks_delete(id->ks, key, derr, sizeof(derr)) == 0)
			snprintf(err, errlen, "cannot write %s: %s; the new key was deleted again",
				 path, strerror(saved));
		else
			snprintf(err, errlen,
				 "cannot write %s: %s; the new key stays unrecorded "
				 "(cannot delete it: %s)",
				 path, strerror(saved), derr);
		identity_refresh(id, 1, derr, sizeof(derr));
		r = MTLS_AGENT_ERR_IO;
		goto out;
	}
	if ((r = identity_refresh(id, 1, err, errlen)) != 0)
		goto out;
	*out = key;
	r = 0;
out:
	pthread_mutex_unlock(&id->lock);
	free(path);
	return r;
}

/* Writes chain as PEM to path (atomically, fsync'ed file and directory). */
int chain_write_pem(const char *path, STACK_OF(X509) * chain, mode_t mode, char *err, size_t errlen)
{
	BIO *pem = BIO_new(BIO_s_mem());
	char *pem_data = NULL;
	long pem_len;
	size_t i;
	int r = 0;

	if (pem == NULL) {
		snprintf(err, errlen, "out of memory");
		return MTLS_AGENT_ERR_NOMEM;
	}
	for (i = 0; i < (size_t)sk_X509_num(chain); i++) {
		if (PEM_write_bio_X509(pem, sk_X509_value(chain, (int)i)) != 1) {
			snprintf(err, errlen, "cannot encode the certificate chain");
			r = MTLS_AGENT_ERR_INTERNAL;
			goto out;
		}
	}
	pem_len = BIO_get_mem_data(pem, &pem_data);
	if (write_file_atomic(path, pem_data, (size_t)pem_len, mode) != 0) {
		snprintf(err, errlen, "cannot write %s: %s", path, write_file_strerror(errno));
		r = MTLS_AGENT_ERR_IO;
	}
out:
	BIO_free(pem);
	return r;
}

/*
 * Makes chain (already checked) the identity's certificate: the keystore is
 * told first (tpm2 reorders its key file), then the certificate file is
 * replaced atomically, then memory. A crash between the steps leaves a
 * certificate file that matches one of the keys, so a restart serves it.
 * Takes ownership of chain on success. Lock held.
 */
static int install_chain_locked(struct identity_rt *id, STACK_OF(X509) * chain,
				struct ks_key *match, char *err, size_t errlen)
{
	char *path = NULL;
	int r;

	if ((r = ks_activate(id->ks, match, err, errlen)) != 0)
		return r;
	if ((r = chain_write_pem(id->cfg->cert, chain, 0644, err, errlen)) != 0)
		return r;
	cert_stat_record(id); /* our own write is no outside change */
	id->cert_problem[0] = '\0';
	sk_X509_pop_free(id->chain, X509_free);
	id->chain = chain;
	id->not_after = certcheck_not_after(sk_X509_value(id->chain, 0));
	if (match == id->pending && (path = state_file(id->rt, id, "pending")) != NULL)
		unlink(path);
	free(path);
	return identity_refresh(id, 1, err, errlen);
}

struct ks_key *identity_key_by_cert(struct identity_rt *id, X509 *cert)
{
	uint8_t *spki = NULL;
	size_t len = 0;
	struct ks_key *key;

	if (certcheck_spki(cert, &spki, &len) != 0)
		return NULL;
	key = key_by_spki(id, spki, len);
	OPENSSL_free(spki);
	return key;
}

int identity_install_chain(struct identity_rt *id, STACK_OF(X509) * chain, char *err, size_t errlen)
{
	struct ks_key *match;
	int r;

	pthread_mutex_lock(&id->lock);
	if ((r = identity_refresh(id, 1, err, errlen)) != 0)
		goto out;
	if ((match = identity_key_by_cert(id, sk_X509_value(chain, 0))) == NULL) {
		snprintf(err, errlen,
			 "the certificate's public key is not a key of identity \"%s\"",
			 id->cfg->name);
		r = MTLS_AGENT_ERR_CERT;
		goto out;
	}
	r = install_chain_locked(id, chain, match, err, errlen);
out:
	pthread_mutex_unlock(&id->lock);
	ERR_clear_error();
	return r;
}

int identity_import_cert(struct identity_rt *id, const uint8_t *data, size_t len, time_t now,
			 time_t *not_after, char *err, size_t errlen)
{
	STACK_OF(X509) *chain = NULL;
	struct ks_key *match;
	int r;

	*not_after = 0;
	pthread_mutex_lock(&id->lock);
	if ((r = certcheck_parse_chain(data, len, &chain, err, errlen)) != 0 ||
	    (r = certcheck_leaf(sk_X509_value(chain, 0), now, err, errlen)) != 0 ||
	    (r = certcheck_chain_order(chain, err, errlen)) != 0)
		goto out;
	if ((r = identity_refresh(id, 1, err, errlen)) != 0)
		goto out;
	if ((match = identity_key_by_cert(id, sk_X509_value(chain, 0))) == NULL) {
		snprintf(err, errlen,
			 "the certificate's public key is not a key of identity \"%s\" (run "
			 "keygen and csr first)",
			 id->cfg->name);
		r = MTLS_AGENT_ERR_CERT;
		goto out;
	}
	if ((r = install_chain_locked(id, chain, match, err, errlen)) != 0)
		goto out;
	chain = NULL;
	*not_after = id->not_after;
out:
	pthread_mutex_unlock(&id->lock);
	ERR_clear_error();
	sk_X509_pop_free(chain, X509_free);
	return r;
}

static void identity_free(struct identity_rt *id)
{
	pthread_mutex_destroy(&id->lock);
	free(id->keys);
	sk_X509_pop_free(id->chain, X509_free);
}

static int ensure_dir(const char *path, char *err, size_t errlen)
{
	struct stat st;

	if (mkdir(path, 0750) != 0 && errno != EEXIST) {
		snprintf(err, errlen, "cannot create state-dir %s: %s", path, strerror(errno));
		return MTLS_AGENT_ERR_IO;
	}
	if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "state-dir %s is not a directory", path);
		return MTLS_AGENT_ERR_IO;
	}
	if ((st.st_mode & 002) != 0) {
		snprintf(err, errlen, "state-dir %s is world-writable", path);
		return MTLS_AGENT_ERR_CONFIG;
	}
	return 0;
}

int runtime_create(struct config *cfg, time_t started, struct runtime **out, char *err,
		   size_t errlen)
{
	struct runtime *rt;
	char kerr[MTLSA_ERRMSG_MAX];
	size_t i, k;
	int r;

	*out = NULL;
	if ((rt = calloc(1, sizeof(*rt))) == NULL) {
		config_free(cfg);
		return MTLS_AGENT_ERR_NOMEM;
	}
	atomic_init(&rt->refs, 1);
	rt->cfg = cfg;
	rt->started = started;
	if ((r = ensure_dir(cfg->state_dir, err, errlen)) != 0)
		goto fail;
	if ((rt->keystores = calloc(cfg->n_keystores + 1, sizeof(*rt->keystores))) == NULL ||
	    (rt->ids = calloc(cfg->n_identities + 1, sizeof(*rt->ids))) == NULL) {
		r = MTLS_AGENT_ERR_NOMEM;
		goto fail;
	}
	for (i = 0; i < cfg->n_keystores; i++)
		if ((r = keystore_acquire(&cfg->keystores[i], &rt->keystores[i], err, errlen)) != 0)
			goto fail;
	for (i = 0; i < cfg->n_identities; i++) {
		struct identity_rt *id = &rt->ids[i];

		id->rt = rt;
		id->cfg = &cfg->identities[i];
		pthread_mutex_init(&id->lock, NULL);
		atomic_init(&id->n_signed, 0);
		atomic_init(&id->n_refused, 0);
		rt->n_ids = i + 1;
		for (k = 0; k < cfg->n_keystores; k++)
			if (strcmp(cfg->keystores[k].name, id->cfg->keystore) == 0)
				id->ks = rt->keystores[k];
		if (id->ks == NULL) {
			snprintf(err, errlen, "identity \"%s\": no keystore \"%s\"", id->cfg->name,
				 id->cfg->keystore);
			r = MTLS_AGENT_ERR_CONFIG;
			goto fail;
		}
		identity_load_cert(id);
		/* A token that is not there yet is retried on first use. */
		if (identity_refresh(id, 0, kerr, sizeof(kerr)) != 0)
			log_warn("identity \"%s\": %s", id->cfg->name, kerr);
		else if (id->problem[0] != '\0')
			log_warn("identity \"%s\": %s", id->cfg->name, id->problem);
	}
	*out = rt;
	return 0;
fail:
	runtime_unref(rt);
	return r;
}

void runtime_ref(struct runtime *rt)
{
	atomic_fetch_add(&rt->refs, 1);
}

void runtime_unref(struct runtime *rt)
{
	size_t i;

	if (rt == NULL || atomic_fetch_sub(&rt->refs, 1) != 1)
		return;
	for (i = 0; i < rt->n_ids; i++)
		identity_free(&rt->ids[i]);
	free(rt->ids);
	for (i = 0; rt->keystores != NULL && i < rt->cfg->n_keystores; i++)
		keystore_release(rt->keystores[i]);
	free(rt->keystores);
	config_free(rt->cfg);
	free(rt);
}

struct identity_rt *runtime_identity(struct runtime *rt, const char *name)
{
	size_t i;

	for (i = 0; i < rt->n_ids; i++)
		if (strcmp(rt->ids[i].cfg->name, name) == 0)
			return &rt->ids[i];
	return NULL;
}
