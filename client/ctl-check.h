/*
 * `check`, the operator's doctor. Everything it looks at is a subject: the agent's
 * configuration file (when it can read it), the socket, the agent itself, each keystore and
 * each identity. Each subject gets "SUBJECT: ok" or one line per problem, "what is wrong —
 * how to fix it". Problems make the exit status 1; warnings (expiry soon, ...) do not.
 *
 * ctl-check.c runs the steps and reports; ctl-check-config.c looks at the configuration
 * and the secrets it names, ctl-check-socket.c at who can reach the socket,
 * ctl-check-identity.c at keystores and identities as the agent reports them.
 */
#ifndef MTLS_CTL_CHECK_H
#define MTLS_CTL_CHECK_H

#include <stddef.h>
#include <sys/types.h>

#include <openssl/x509.h>

#include "client/ctl.h"
#include "common/util.h"

struct findings {
	char **problems;
	size_t n_problems;
	char **warnings;
	size_t n_warnings;
	int nomem;
};

void add_finding(struct findings *fd, int warning, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void findings_free(struct findings *fd);

struct config; /* conf/conf.h: the agent's configuration, read by its own reader */

struct subject {
	const char *kind; /* "config", "socket", "agent", "keystore" */
	char *name;
	struct findings fd;
};

struct doctor {
	struct ctx *c;
	const char *only;    /* check NAME: that identity (and its keystore) only */
	const char *ca_file; /* --ca */
	X509_STORE *anchors; /* --ca, loaded */
	X509_STORE *system;  /* OpenSSL's default trust store, loaded on first use */
	int system_tried;
	const char *conf_given; /* -c */
	const char *conf_path;	/* the configuration looked at; NULL: none */
	struct config *conf;	/* as the agent reads it; NULL: none, or refused (conf_err) */
	char conf_err[MTLSA_ERRMSG_MAX]; /* the reader's "FILE:LINE: message" */
	const char *sock;		 /* the socket checked */
	int reachable;
	int agent_uid_known;
	uid_t agent_uid; /* uid of whoever listens on the socket */
	struct mtls_agent_status *st;
	struct mtls_agent_identity *ids; /* the identities checked (one: check NAME) */
	size_t n_ids;
	struct subject *subj;
	size_t n_subj;
	struct findings sink; /* where findings go when memory ran out */
};

/* The findings of a subject, created on first use; never NULL. */
struct findings *subject(struct doctor *d, const char *kind, const char *name);

/* ctl-check-config.c */
/*
 * Reads path with the agent's reader into d->conf (d->conf_path set when the file could be
 * opened). A file that cannot be opened is a finding when given (-c). 0, or -1 without
 * d->conf (refused: d->conf_err says why, check_config_file() reports it).
 */
int check_read_config(struct doctor *d, const char *path, int given);
void check_config_file(struct doctor *d);
void check_renew_auth(struct doctor *d);
void check_pin_files(struct doctor *d);

/* ctl-check-socket.c */
const char *user_name(uid_t uid, char *buf, size_t len);
/* Whether uid may own the agent's configuration and PIN files (root or the agent's user). */
int agent_may_own(const struct doctor *d, uid_t uid);
/* The uid of whoever listens on path (SO_PEERCRED). 0 or -1. */
int listener_uid(const char *path, uid_t *uid);
void check_socket(struct doctor *d);

/* ctl-check-identity.c */
void check_keystore_records(struct doctor *d);
void check_identity(struct doctor *d, struct findings *fd, const struct mtls_agent_identity *id);

#endif
