/*
 * CA certificate refresh (EST /cacerts, RFC 7030 §4.1.3): see renew/cacerts.h.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include "renew/cacerts.h"
#include "renew/enroll-est.h"
#include "common/log.h"
#include "common/util.h"

#define PEM_FILE_MAX (1024 * 1024)
/* Accepted successors kept: a root key update a year for decades, far more than a CA does. */
#define MAX_SUCCESSORS 16

/* Every certificate of a PEM file, in order; an empty stack for a missing file if optional. */
static STACK_OF(X509) * load_pem(const char *path, int optional)
{
	STACK_OF(X509) *out = sk_X509_new_null();
	uint8_t *data = NULL;
	size_t len = 0;
	X509 *x;
	BIO *bio;

	if (out == NULL)
		return NULL;
	if (read_file(path, PEM_FILE_MAX, &data, &len) != 0) {
		if (optional && errno == ENOENT)
			return out;
		sk_X509_free(out);
		return NULL;
	}
	if ((bio = BIO_new_mem_buf(data, (int)len)) == NULL) {
		free(data);
		sk_X509_free(out);
		return NULL;
	}
	while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL)
		if (!sk_X509_push(out, x))
			X509_free(x);
	ERR_clear_error();
	BIO_free(bio);
	free(data);
	return out;
}

static int pem_append(BIO *bio, STACK_OF(X509) * certs)
{
	for (int i = 0; i < sk_X509_num(certs); i++)
		if (PEM_write_bio_X509(bio, sk_X509_value(certs, i)) != 1)
			return -1;
	return 0;
}

/* Writes certs as PEM to path, atomically. */
static int write_pem(const char *path, STACK_OF(X509) * a, STACK_OF(X509) * b)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data = NULL;
	long len;
	int r = -1;

	if (bio != NULL && pem_append(bio, a) == 0 && (b == NULL || pem_append(bio, b) == 0) &&
	    (len = BIO_get_mem_data(bio, &data)) > 0)
		r = write_file_atomic(path, data, (size_t)len, 0644);
	BIO_free(bio);
	return r;
}

static int in_stack(STACK_OF(X509) * s, X509 *x)
{
	for (int i = 0; i < sk_X509_num(s); i++)
		if (X509_cmp(sk_X509_value(s, i), x) == 0)
			return 1;
	return 0;
}

/*
 * Whether link certifies root's key under root's name ("NewWithOld") and was
 * issued directly by one of anchors, a root (self-signed): exactly [link, anchor],
 * nothing in between. A chain through intermediates would let the holder of any
 * intermediate key under ca-trust make itself a root. The validity period is
 * checked only when a root is first accepted (now): the link of a root
 * accepted long ago may since have expired with the old root.
 */
int cacerts_link_issued_by(STACK_OF(X509) * anchors, X509 *link, X509 *root, int check_time)
{
	if (X509_self_signed(link, 0) == 1 ||
	    X509_NAME_cmp(X509_get_subject_name(link), X509_get_subject_name(root)) != 0 ||
	    EVP_PKEY_eq(X509_get0_pubkey(link), X509_get0_pubkey(root)) != 1 ||
	    X509_check_ca(link) == 0)
		return 0;
	if (check_time && (X509_cmp_current_time(X509_get0_notBefore(link)) >= 0 ||
			   X509_cmp_current_time(X509_get0_notAfter(link)) <= 0))
		return 0;
	for (int i = 0; i < sk_X509_num(anchors); i++) {
		X509 *a = sk_X509_value(anchors, i);
		EVP_PKEY *k = X509_get0_pubkey(a);

		/*
		 * Only a root vouches: an intermediate listed in ca-trust cannot anchor a
		 * chain by itself, and must not mint a root free of its own constraints.
		 */
		if (X509_self_signed(a, 0) == 1 && X509_check_issued(a, link) == X509_V_OK &&
		    k != NULL && X509_verify(link, k) == 1) {
			ERR_clear_error();
			return 1;
		}
	}
	ERR_clear_error();
	return 0;
}

/*
 * With untrusted: whether this is the first time root is reported as no longer trusted for
 * identity since it was last trusted. The anchors are loaded for every renewal attempt
 * and revocation check: one warning per root says it, the later ones go to debug. Once
 * the memo is full, every report is a first one (a warning too many, never one missing).
 * Without untrusted: root is trusted again; a later loss is reported anew.
 */
static int first_report(const char *identity, X509 *root, int untrusted)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	static uint8_t seen[32][SHA256_DIGEST_LENGTH];
	static size_t n_seen;
	uint8_t cert_md[SHA256_DIGEST_LENGTH], md[SHA256_DIGEST_LENGTH];
	unsigned int len = 0;
	EVP_MD_CTX *ctx;
	int first = 1, ok;
	size_t i;

	if (X509_digest(root, EVP_sha256(), cert_md, &len) != 1 || (ctx = EVP_MD_CTX_new()) == NULL)
		return 1;
	ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
	     EVP_DigestUpdate(ctx, identity, strlen(identity) + 1) == 1 &&
	     EVP_DigestUpdate(ctx, cert_md, sizeof(cert_md)) == 1 &&
	     EVP_DigestFinal_ex(ctx, md, NULL) == 1;
	EVP_MD_CTX_free(ctx);
	if (!ok)
		return 1;
	pthread_mutex_lock(&lock);
	for (i = 0; i < n_seen && first; i++)
		first = memcmp(seen[i], md, sizeof(md)) != 0;
	if (first && untrusted && n_seen < sizeof(seen) / sizeof(seen[0]))
		memcpy(seen[n_seen++], md, sizeof(md));
	else if (!first && !untrusted) /* seen[i - 1]: the last entry takes its place */
		memmove(seen[i - 1], seen[--n_seen], sizeof(md));
	pthread_mutex_unlock(&lock);
	return first;
}

/*
 * ca-trust followed by the accepted successors whose link certificates
 * (kept in ca-links) still come from an anchor in force: re-checked on every
 * load, so removing a root from ca-trust drops the successors it vouched for.
 * successors and links get the kept roots and their links, in the same order.
 * NULL when ca-trust does not load.
 */
static STACK_OF(X509) * anchors_in_force(struct identity_rt *id, STACK_OF(X509) * *successors,
					 STACK_OF(X509) * *links)
{
	STACK_OF(X509) *all = load_pem(id->cfg->ca_trust, 0), *next = NULL, *lks = NULL;
	char *path = state_file(id->rt, id, "ca-next"), *lpath = state_file(id->rt, id, "ca-links");
	int progress = 1;

	*successors = sk_X509_new_null();
	*links = sk_X509_new_null();
	if (all == NULL || *successors == NULL || *links == NULL) {
		sk_X509_pop_free(all, X509_free);
		sk_X509_free(*successors);
		sk_X509_free(*links);
		*successors = *links = NULL;
		free(path);
		free(lpath);
		return NULL;
	}
	if (path == NULL || lpath == NULL || (next = load_pem(path, 1)) == NULL ||
	    (lks = load_pem(lpath, 1)) == NULL) {
		log_warn("identity \"%s\": cannot read %s or %s; using ca-trust alone",
			 id->cfg->name, path != NULL ? path : "ca-next",
			 lpath != NULL ? lpath : "ca-links");
		goto out;
	}
	/* Successors in any order: one may be vouched for by another accepted before it. */
	while (progress) {
		progress = 0;
		for (int i = 0; i < sk_X509_num(next); i++) {
			X509 *r = sk_X509_value(next, i), *l = NULL;
			int k;

			if (r == NULL || in_stack(all, r))
				continue;
			for (k = 0; k < sk_X509_num(lks); k++)
				if (cacerts_link_issued_by(all, (l = sk_X509_value(lks, k)), r, 0))
					break;
			if (k == sk_X509_num(lks))
				continue;
			if (!X509_up_ref(r))
				continue;
			if (!sk_X509_push(all, r)) {
				X509_free(r);
				continue;
			}
			if (X509_up_ref(r) && !sk_X509_push(*successors, r))
				X509_free(r);
			if (X509_up_ref(l) && !sk_X509_push(*links, l))
				X509_free(l);
			progress = 1;
		}
	}
	for (int i = 0; i < sk_X509_num(next); i++) {
		X509 *r = sk_X509_value(next, i);
		char name[256];

		if (r == NULL)
			continue;
		if (in_stack(all, r)) { /* vouched for, or put into ca-trust itself */
			first_report(id->cfg->name, r, 0);
			continue;
		}
		X509_NAME_oneline(X509_get_subject_name(r), name, sizeof(name));
		if (!first_report(id->cfg->name, r, 1)) {
			log_debug("identity \"%s\": the CA root %s accepted earlier is still "
				  "not trusted",
				  id->cfg->name, name);
			continue;
		}
		log_warn("identity \"%s\": the CA root %s accepted earlier is no longer trusted: "
			 "its link certificate does not come from ca-trust %s (or an accepted "
			 "root) any more",
			 id->cfg->name, name, id->cfg->ca_trust);
	}
out:
	sk_X509_pop_free(next, X509_free);
	sk_X509_pop_free(lks, X509_free);
	free(path);
	free(lpath);
	return all;
}

static X509_STORE *store_of(STACK_OF(X509) * anchors)
{
	X509_STORE *store = X509_STORE_new();

	for (int i = 0; store != NULL && i < sk_X509_num(anchors); i++) {
		if (X509_STORE_add_cert(store, sk_X509_value(anchors, i)) != 1) {
			X509_STORE_free(store);
			store = NULL;
		}
	}
	ERR_clear_error();
	return store;
}

X509_STORE *cacerts_trust_store(struct identity_rt *id, char *err, size_t errlen)
{
	STACK_OF(X509) *successors = NULL, *links = NULL;
	STACK_OF(X509) *anchors = anchors_in_force(id, &successors, &links);
	X509_STORE *store = anchors != NULL ? store_of(anchors) : NULL;

	if (anchors == NULL)
		snprintf(err, errlen, "cannot load ca-trust %s", id->cfg->ca_trust);
	else if (store == NULL)
		snprintf(err, errlen, "out of memory");
	sk_X509_pop_free(anchors, X509_free);
	sk_X509_pop_free(successors, X509_free);
	sk_X509_pop_free(links, X509_free);
	return store;
}

char *cacerts_trust_file(struct identity_rt *id)
{
	STACK_OF(X509) *successors = NULL, *links = NULL;
	STACK_OF(X509) *anchors = anchors_in_force(id, &successors, &links);
	char *combined = NULL;

	/*
	 * Rewritten from the anchors in force each time, so that a successor
	 * dropped at load (its vouching root left ca-trust) leaves this file too.
	 */
	if (anchors != NULL && (combined = state_file(id->rt, id, "trust")) != NULL) {
		if (sk_X509_num(successors) == 0) {
			/* None (left): no stale copy for anyone to trust. */
			if (unlink(combined) != 0 && errno != ENOENT)
				log_warn("identity \"%s\": cannot remove %s: %s", id->cfg->name,
					 combined, strerror(errno));
			free(combined);
			combined = NULL;
		} else if (write_pem(combined, anchors, NULL) != 0) {
			log_error("identity \"%s\": cannot write %s: %s; using ca-trust alone",
				  id->cfg->name, combined, strerror(errno));
			free(combined);
			combined = NULL;
		}
	}
	sk_X509_pop_free(anchors, X509_free);
	sk_X509_pop_free(successors, X509_free);
	sk_X509_pop_free(links, X509_free);
	return combined != NULL ? combined : strdup(id->cfg->ca_trust);
}

static void name_of(X509 *x, char *out, size_t len)
{
	X509_NAME_oneline(X509_get_subject_name(x), out, (int)len);
}

int cacerts_is_new_root(X509 *x, STACK_OF(X509) * anchors)
{
	return X509_self_signed(x, 1) == 1 && X509_check_ca(x) != 0 && !in_stack(anchors, x);
}

X509 *cacerts_find_link(STACK_OF(X509) * certs, STACK_OF(X509) * anchors, X509 *root,
			int check_time)
{
	for (int k = 0; k < sk_X509_num(certs); k++)
		if (cacerts_link_issued_by(anchors, sk_X509_value(certs, k), root, check_time))
			return sk_X509_value(certs, k);
	return NULL;
}

/* Intermediates: CA certificates that are neither roots nor link certificates. */
void cacerts_add_intermediates(STACK_OF(X509) * certs, STACK_OF(X509) * inter)
{
	int i, k, self;

	for (i = 0; i < sk_X509_num(certs); i++) {
		X509 *x = sk_X509_value(certs, i);

		self = X509_self_signed(x, 0) == 1;
		if (self || X509_check_ca(x) == 0)
			continue;
		for (k = 0; k < sk_X509_num(certs); k++) {
			X509 *r = sk_X509_value(certs, k);

			if (X509_self_signed(r, 0) == 1 &&
			    X509_NAME_cmp(X509_get_subject_name(r), X509_get_subject_name(x)) == 0)
				break;
		}
		if (k < sk_X509_num(certs))
			continue;
		if (X509_up_ref(x) && !sk_X509_push(inter, x))
			X509_free(x);
	}
}

/*
 * New roots among certs (the CA's answer, named by source in the log):
 * trusted only through a link certificate in the same answer issued directly
 * by an anchor in force; each refusal logged once, precisely. The accepted
 * ones are written to ca-links and ca-next. The number accepted, or -1 when
 * a root could not be kept (logged).
 */
static int accept_new_roots(struct identity_rt *id, STACK_OF(X509) * certs, const char *source)
{
	const struct cfg_identity *cfg = id->cfg;
	STACK_OF(X509) *anchors = NULL, *successors = NULL, *links = NULL;
	char name[256], *path = NULL;
	int i, added = 0;

	if ((anchors = anchors_in_force(id, &successors, &links)) == NULL) {
		log_warn("identity \"%s\": cannot load ca-trust %s", cfg->name, cfg->ca_trust);
		return -1;
	}
	for (i = 0; i < sk_X509_num(certs); i++) {
		X509 *root = sk_X509_value(certs, i), *link = NULL;

		if (!cacerts_is_new_root(root, anchors))
			continue;
		name_of(root, name, sizeof(name));
		if ((link = cacerts_find_link(certs, anchors, root, 1)) == NULL) {
			log_warn(
				"identity \"%s\": %s: refused the new CA root %s: no "
				"certificate in the answer is its link issued directly by ca-trust "
				"%s or an accepted root",
				cfg->name, source, name, cfg->ca_trust);
			continue;
		}
		if (sk_X509_num(successors) >= MAX_SUCCESSORS) {
			log_warn("identity \"%s\": %s: %d CA roots accepted already; %s "
				 "is not kept",
				 cfg->name, source, MAX_SUCCESSORS, name);
			continue;
		}
		if (!X509_up_ref(root))
			continue;
		if (!sk_X509_push(successors, root)) {
			X509_free(root);
			continue;
		}
		if (!X509_up_ref(link))
			continue;
		if (!sk_X509_push(links, link)) {
			X509_free(link);
			continue;
		}
		if (X509_up_ref(root) && !sk_X509_push(anchors, root))
			X509_free(root);
		added++;
		log_info("identity \"%s\": %s: accepted the new CA root %s (its link "
			 "certificate was issued by an anchor in force)",
			 cfg->name, source, name);
	}
	/*
	 * The links first: a root written without its link is dropped at the
	 * next load, never trusted without one. The combined trust file follows
	 * at the next cacerts_trust_file().
	 */
	if (added > 0) {
		if ((path = state_file(id->rt, id, "ca-links")) == NULL ||
		    write_pem(path, links, NULL) != 0) {
			log_error("identity \"%s\": cannot write %s: %s", cfg->name,
				  path != NULL ? path : "ca-links", strerror(errno));
			added = -1;
			goto out;
		}
		free(path);
		if ((path = state_file(id->rt, id, "ca-next")) == NULL ||
		    write_pem(path, successors, NULL) != 0) {
			log_error("identity \"%s\": cannot write %s: %s", cfg->name,
				  path != NULL ? path : "ca-next", strerror(errno));
			added = -1;
			goto out;
		}
	}
out:
	ERR_clear_error();
	sk_X509_pop_free(anchors, X509_free);
	sk_X509_pop_free(successors, X509_free);
	sk_X509_pop_free(links, X509_free);
	free(path);
	return added;
}

STACK_OF(X509) * cacerts_refresh(struct identity_rt *id)
{
	const struct cfg_identity *cfg = id->cfg;
	STACK_OF(X509) *certs = NULL, *inter = NULL;
	char err[512], *trust = cacerts_trust_file(id);

	if (trust == NULL)
		return NULL;
	if (est_get_cacerts(cfg->ca_url, trust, cfg->ca_timeout, &certs, err, sizeof(err)) != 0) {
		log_warn("identity \"%s\": %s; renewing with the CA certificates known", cfg->name,
			 err);
		goto out;
	}
	if (accept_new_roots(id, certs, "EST cacerts") < 0 || (inter = sk_X509_new_null()) == NULL)
		goto out;
	cacerts_add_intermediates(certs, inter);
out:
	ERR_clear_error();
	if (inter != NULL && sk_X509_num(inter) == 0) {
		sk_X509_free(inter);
		inter = NULL;
	}
	sk_X509_pop_free(certs, X509_free);
	free(trust);
	return inter;
}

/* Whether x's validity period includes now. */
static int valid_now(X509 *x)
{
	return X509_cmp_current_time(X509_get0_notBefore(x)) < 0 &&
	       X509_cmp_current_time(X509_get0_notAfter(x)) > 0;
}

int cacerts_root_update(struct identity_rt *id, X509 *new_with_new, X509 *new_with_old)
{
	const struct cfg_identity *cfg = id->cfg;
	STACK_OF(X509) * anchors, *successors = NULL, *links = NULL, *answer = NULL;
	const char *why = NULL;
	char name[256];
	int r = -1, known;

	if ((anchors = anchors_in_force(id, &successors, &links)) == NULL) {
		log_warn("identity \"%s\": cannot load ca-trust %s", cfg->name, cfg->ca_trust);
		return -1;
	}
	name_of(new_with_new, name, sizeof(name));
	known = in_stack(anchors, new_with_new);
	/* RFC 9480 4.3: the old root's key vouches for the new one; nothing less. */
	if (known)
		r = 0;
	else if (X509_self_signed(new_with_new, 1) != 1 || X509_check_ca(new_with_new) == 0)
		why = "newWithNew is not a self-signed CA certificate";
	else if (!valid_now(new_with_new))
		why = "newWithNew is not valid now";
	else if (new_with_old == NULL)
		why = "the answer has no newWithOld, the link certificate signed by the old root";
	else if (!cacerts_link_issued_by(anchors, new_with_old, new_with_new, 1))
		why = "newWithOld is not the new root's name and key issued (and signed) directly "
		      "by an anchor in force, or is not valid now";
	ERR_clear_error();
	if (why != NULL)
		log_warn("identity \"%s\": CMP root CA key update: refused the new CA root %s: %s "
			 "(ca-trust %s)",
			 cfg->name, name, why, cfg->ca_trust);
	if (!known && why == NULL && (answer = sk_X509_new_null()) != NULL &&
	    sk_X509_push(answer, new_with_new) && sk_X509_push(answer, new_with_old))
		r = accept_new_roots(id, answer, "CMP root CA key update") > 0 ? 1 : -1;
	sk_X509_free(answer);
	sk_X509_pop_free(anchors, X509_free);
	sk_X509_pop_free(successors, X509_free);
	sk_X509_pop_free(links, X509_free);
	return r;
}

void cacerts_offered(struct identity_rt *id, STACK_OF(X509) * certs, const char *source)
{
	(void)accept_new_roots(id, certs, source);
}

X509 *cacerts_current_root(struct identity_rt *id)
{
	STACK_OF(X509) *successors = NULL, *links = NULL;
	STACK_OF(X509) *anchors = anchors_in_force(id, &successors, &links);
	X509 *root = NULL;
	int i;

	/* The newest successor, else the first root of ca-trust. */
	if (sk_X509_num(successors) > 0)
		root = sk_X509_value(successors, sk_X509_num(successors) - 1);
	for (i = 0; root == NULL && i < sk_X509_num(anchors); i++)
		if (X509_self_signed(sk_X509_value(anchors, i), 0) == 1)
			root = sk_X509_value(anchors, i);
	if (root != NULL && !X509_up_ref(root))
		root = NULL;
	ERR_clear_error();
	sk_X509_pop_free(anchors, X509_free);
	sk_X509_pop_free(successors, X509_free);
	sk_X509_pop_free(links, X509_free);
	return root;
}
