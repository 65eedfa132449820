/*
 * CA certificate refresh (EST /cacerts, RFC 7030 §4.1.3): see agent/cacerts.h.
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

#include "agent/cacerts.h"
#include "agent/enroll-est.h"
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

/* ca-trust followed by the accepted successors; NULL when ca-trust does not load. */
static STACK_OF(X509) *anchors_in_force(struct identity_rt *id, STACK_OF(X509) **successors)
{
	STACK_OF(X509) *all = load_pem(id->cfg->ca_trust, 0), *next = NULL;
	char *path = state_file(id->rt, id, "ca-next");

	*successors = NULL;
	if (all == NULL || path == NULL || (next = load_pem(path, 1)) == NULL) {
		if (all != NULL && path != NULL)
			log_warn("identity \"%s\": cannot read %s; using ca-trust alone",
				 id->cfg->name, path);
		free(path);
		if (all != NULL && (next = sk_X509_new_null()) == NULL) {
			sk_X509_pop_free(all, X509_free);
			return NULL;
		}
		*successors = next;
		return all;
	}
	free(path);
	for (int i = 0; i < sk_X509_num(next); i++) {
		X509 *x = sk_X509_value(next, i);

		if (!in_stack(all, x) && X509_up_ref(x) && !sk_X509_push(all, x))
			X509_free(x);
	}
	*successors = next;
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
	STACK_OF(X509) *successors = NULL, *anchors = anchors_in_force(id, &successors);
	X509_STORE *store = anchors != NULL ? store_of(anchors) : NULL;

	if (anchors == NULL)
		snprintf(err, errlen, "cannot load ca-trust %s", id->cfg->ca_trust);
	else if (store == NULL)
		snprintf(err, errlen, "out of memory");
	sk_X509_pop_free(anchors, X509_free);
	sk_X509_pop_free(successors, X509_free);
	return store;
}

char *cacerts_trust_file(struct identity_rt *id)
{
	char *next = state_file(id->rt, id, "ca-next"), *combined = NULL;

	if (next != NULL && access(next, F_OK) == 0 &&
	    (combined = state_file(id->rt, id, "trust")) != NULL && access(combined, R_OK) == 0) {
		free(next);
		return combined;
	}
	free(next);
	free(combined);
	return strdup(id->cfg->ca_trust);
}

/* Whether link certifies root's key under root's name ("NewWithOld") and verifies to store. */
static int link_verifies(X509_STORE *store, STACK_OF(X509) *untrusted, X509 *link, X509 *root)
{
	X509_STORE_CTX *ctx;
	int ok = 0;

	if (X509_self_signed(link, 0) == 1 ||
	    X509_NAME_cmp(X509_get_subject_name(link), X509_get_subject_name(root)) != 0 ||
	    EVP_PKEY_eq(X509_get0_pubkey(link), X509_get0_pubkey(root)) != 1 ||
	    X509_check_ca(link) == 0)
		return 0;
	if ((ctx = X509_STORE_CTX_new()) != NULL &&
	    X509_STORE_CTX_init(ctx, store, link, untrusted) == 1)
		ok = X509_verify_cert(ctx) == 1;
	X509_STORE_CTX_free(ctx);
	ERR_clear_error();
	return ok;
}

static void name_of(X509 *x, char *out, size_t len)
{
	X509_NAME_oneline(X509_get_subject_name(x), out, (int)len);
}

STACK_OF(X509) *cacerts_refresh(struct identity_rt *id)
{
	const struct cfg_identity *cfg = id->cfg;
	STACK_OF(X509) *certs = NULL, *anchors = NULL, *successors = NULL, *inter = NULL;
	X509_STORE *store = NULL;
	char err[512], name[256], *trust = cacerts_trust_file(id), *path = NULL;
	int i, k, added = 0, self;

	if (trust == NULL)
		return NULL;
	if (est_get_cacerts(cfg->ca_url, trust, cfg->ca_timeout, &certs, err, sizeof(err)) != 0) {
		log_warn("identity \"%s\": %s; renewing with the CA certificates known", cfg->name,
			 err);
		goto out;
	}
	if ((anchors = anchors_in_force(id, &successors)) == NULL ||
	    (store = store_of(anchors)) == NULL || (inter = sk_X509_new_null()) == NULL) {
		log_warn("identity \"%s\": cannot load ca-trust %s", cfg->name, cfg->ca_trust);
		goto out;
	}
	/* New roots: trusted only through a link certificate from an anchor in force. */
	for (i = 0; i < sk_X509_num(certs); i++) {
		X509 *root = sk_X509_value(certs, i);

		if (X509_self_signed(root, 1) != 1 || X509_check_ca(root) == 0 ||
		    in_stack(anchors, root))
			continue;
		name_of(root, name, sizeof(name));
		for (k = 0; k < sk_X509_num(certs); k++)
			if (link_verifies(store, certs, sk_X509_value(certs, k), root))
				break;
		if (k == sk_X509_num(certs)) {
			log_warn("identity \"%s\": EST cacerts: refused the new CA root %s: no "
				 "certificate in the answer links it to ca-trust %s",
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
		X509_STORE_add_cert(store, root);
		if (X509_up_ref(root) && !sk_X509_push(anchors, root))
			X509_free(root);
		added++;
		log_info("identity \"%s\": EST cacerts: accepted the new CA root %s (its link "
			 "certificate verifies to ca-trust)",
			 cfg->name, name);
	}
	if ((path = state_file(id->rt, id, "ca-next")) == NULL)
		goto out;
	if (added > 0 && write_pem(path, successors, NULL) != 0) {
		log_error("identity \"%s\": cannot write %s: %s", cfg->name, path, strerror(errno));
		goto out;
	}
	/* The combined file follows ca-trust too, whenever successors exist. */
	if (sk_X509_num(successors) > 0) {
		STACK_OF(X509) *configured = load_pem(cfg->ca_trust, 0);

		free(path);
		if ((path = state_file(id->rt, id, "trust")) != NULL && configured != NULL &&
		    write_pem(path, configured, successors) != 0)
			log_error("identity \"%s\": cannot write %s: %s", cfg->name, path,
				  strerror(errno));
		sk_X509_pop_free(configured, X509_free);
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
	X509_STORE_free(store);
	sk_X509_pop_free(certs, X509_free);
	sk_X509_pop_free(anchors, X509_free);
	sk_X509_pop_free(successors, X509_free);
	free(trust);
	free(path);
	return inter;
}
