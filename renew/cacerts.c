/*
 * CA certificate refresh (EST /cacerts, RFC 7030 §4.1.3): see renew/cacerts.h.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "renew/cacerts.h"
#include "renew/enroll-est.h"
#include "common/log.h"
#include "common/util.h"

#define PEM_FILE_MAX (1024 * 1024)
/* Accepted successors kept: a root key update a year for decades, far more than a CA does. */
#define MAX_SUCCESSORS 16

/* Every certificate of a PEM file, in order; an empty stack for a missing file if optional. */
static STACK_OF(X509) *load_pem(const char *path, int optional)
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

static int pem_append(BIO *bio, STACK_OF(X509) *certs)
{
	for (int i = 0; i < sk_X509_num(certs); i++)
		if (PEM_write_bio_X509(bio, sk_X509_value(certs, i)) != 1)
			return -1;
	return 0;
}

/* Writes certs as PEM to path, atomically. */
static int write_pem(const char *path, STACK_OF(X509) *a, STACK_OF(X509) *b)
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

static int in_stack(STACK_OF(X509) *s, X509 *x)
{
	for (int i = 0; i < sk_X509_num(s); i++)
		if (X509_cmp(sk_X509_value(s, i), x) == 0)
			return 1;
	return 0;
}

/*
 * Whether link certifies root's key under root's name ("NewWithOld") and was
 * issued directly by one of anchors: exactly [link, anchor], nothing in
 * between. A chain through intermediates would let the holder of any
 * intermediate key under ca-trust make itself a root. The validity period is
 * checked only when a root is first accepted (now): the link of a root
 * accepted long ago may since have expired with the old root.
 */
static int link_issued_by(STACK_OF(X509) *anchors, X509 *link, X509 *root, int check_time)
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

		if (X509_check_issued(a, link) == X509_V_OK && k != NULL &&
		    X509_verify(link, k) == 1) {
			ERR_clear_error();
			return 1;
		}
	}
	ERR_clear_error();
	return 0;
}

/*
 * ca-trust followed by the accepted successors whose link certificates
 * (kept in ca-links) still come from an anchor in force: re-checked on every
 * load, so removing a root from ca-trust drops the successors it vouched for.
 * successors and links get the kept roots and their links, in the same order.
 * NULL when ca-trust does not load.
 */
static STACK_OF(X509) *anchors_in_force(struct identity_rt *id, STACK_OF(X509) **successors,
					STACK_OF(X509) **links)
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
				if (link_issued_by(all, (l = sk_X509_value(lks, k)), r, 0))
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
		char name[256];

		if (in_stack(*successors, sk_X509_value(next, i)))
			continue;
		X509_NAME_oneline(X509_get_subject_name(sk_X509_value(next, i)), name, sizeof(name));
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

static X509_STORE *store_of(STACK_OF(X509) *anchors)
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

STACK_OF(X509) *cacerts_refresh(struct identity_rt *id)
{
	const struct cfg_identity *cfg = id->cfg;
	STACK_OF(X509) *certs = NULL, *anchors = NULL, *successors = NULL, *links = NULL;
	STACK_OF(X509) *inter = NULL;
	char err[512], name[256], *trust = cacerts_trust_file(id), *path = NULL;
	int i, k, added = 0, self;

	if (trust == NULL)
		return NULL;
	if (est_get_cacerts(cfg->ca_url, trust, cfg->ca_timeout, &certs, err, sizeof(err)) != 0) {
		log_warn("identity \"%s\": %s; renewing with the CA certificates known", cfg->name,
			 err);
		goto out;
	}
	if ((anchors = anchors_in_force(id, &successors, &links)) == NULL ||
	    (inter = sk_X509_new_null()) == NULL) {
		log_warn("identity \"%s\": cannot load ca-trust %s", cfg->name, cfg->ca_trust);
		goto out;
	}
	/* New roots: trusted only through a link certificate issued by an anchor in force. */
	for (i = 0; i < sk_X509_num(certs); i++) {
		X509 *root = sk_X509_value(certs, i), *link = NULL;

		if (X509_self_signed(root, 1) != 1 || X509_check_ca(root) == 0 ||
		    in_stack(anchors, root))
			continue;
		name_of(root, name, sizeof(name));
		for (k = 0; k < sk_X509_num(certs); k++)
			if (link_issued_by(anchors, (link = sk_X509_value(certs, k)), root, 1))
				break;
		if (k == sk_X509_num(certs)) {
			log_warn("identity \"%s\": EST cacerts: refused the new CA root %s: no "
				 "certificate in the answer is its link issued directly by ca-trust "
				 "%s or an accepted root",
				 cfg->name, name, cfg->ca_trust);
			continue;
		}
		if (sk_X509_num(successors) >= MAX_SUCCESSORS) {
			log_warn("identity \"%s\": EST cacerts: %d CA roots accepted already; %s "
				 "is not kept",
				 cfg->name, MAX_SUCCESSORS, name);
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
		log_info("identity \"%s\": EST cacerts: accepted the new CA root %s (its link "
			 "certificate was issued by an anchor in force)",
			 cfg->name, name);
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
			goto out;
		}
		free(path);
		if ((path = state_file(id->rt, id, "ca-next")) == NULL ||
		    write_pem(path, successors, NULL) != 0) {
			log_error("identity \"%s\": cannot write %s: %s", cfg->name,
				  path != NULL ? path : "ca-next", strerror(errno));
			goto out;
		}
	}
	/* Intermediates: CA certificates that are neither roots nor link certificates. */
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
out:
	ERR_clear_error();
	if (inter != NULL && sk_X509_num(inter) == 0) {
		sk_X509_free(inter);
		inter = NULL;
	}
	sk_X509_pop_free(certs, X509_free);
	sk_X509_pop_free(anchors, X509_free);
	sk_X509_pop_free(successors, X509_free);
	sk_X509_pop_free(links, X509_free);
	free(trust);
	free(path);
	return inter;
}
