#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/x509.h>

#include "conf/conf.h"
#include "conf/metrics-addr.h"
#include "renew/renew-verify.h"
#include "renew/revocation.h"
#include "renew/sched.h"
#include "common/log.h"
#include "common/util.h"
#include "keystore/csr.h"

#ifndef MTLS_AGENT_DEFAULT_SOCKET
#define MTLS_AGENT_DEFAULT_SOCKET "/run/mtls-agent/agent.sock"
#endif
#ifndef MTLS_AGENT_DEFAULT_STATE_DIR
#define MTLS_AGENT_DEFAULT_STATE_DIR "/var/lib/mtls-agent"
#endif
#ifndef MTLS_AGENT_DEFAULT_PKCS11_MODULE
#define MTLS_AGENT_DEFAULT_PKCS11_MODULE "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so"
#endif

#define DEFAULT_TCTI "device:/dev/tpmrm0"
#define NAME_MAX_LEN 64

enum section_kind { SEC_NONE, SEC_AGENT, SEC_KEYSTORE, SEC_IDENTITY };

enum agent_key {
	A_SOCKET,
	A_SOCKET_MODE,
	A_SOCKET_GROUP,
	A_STATE_DIR,
	A_ADMIN_USERS,
	A_ADMIN_GROUPS,
	A_WORKERS,
	A_MAX_CLIENTS,
	A_MAX_CLIENTS_PER_UID,
	A_ADMIN_RESERVE,
	A_IDLE_TIMEOUT,
	A_METRICS_LISTEN,
	A_METRICS_IDENTITIES,
	A_NKEYS
};

enum keystore_key { K_TYPE, K_MODULE, K_TOKEN, K_PIN_FILE, K_SESSIONS, K_TCTI, K_SRK, K_NKEYS };

enum identity_key {
	I_KEYSTORE,
	I_KEY,
	I_CERT,
	I_ALLOW_USERS,
	I_ALLOW_GROUPS,
	I_SIGN_POLICY,
	I_RENEW,
	I_CA_URL,
	I_CA_TRUST,
	I_RENEW_AT,
	I_ROTATE_KEY,
	I_BOOTSTRAP,
	I_POST_RENEW,
	I_CERT_OUT,
	I_SUBJECT,
	I_KEY_TYPE,
	I_CA_TIMEOUT,
	I_ALLOW_EXE,
	I_ALLOW_UNIT,
	I_CA_SIGNER,
	I_CA_SENDER,
	I_IMPLICIT_CONFIRM,
	I_RENEW_AUTH,
	I_RENEW_VERIFY,
	I_REVOCATION_CHECK,
	I_REVOCATION_INTERVAL,
	I_NKEYS
};

#define MAX_KEYS 32

static const char *const agent_keys[A_NKEYS] = {
	"socket",
	"socket-mode",
	"socket-group",
	"state-dir",
	"admin-users",
	"admin-groups",
	"workers",
	"max-clients",
	"max-clients-per-uid",
	"admin-reserve",
	"idle-timeout",
	"metrics-listen",
	"metrics-identities",
};

static const char *const keystore_keys[K_NKEYS] = {
	"type", "module", "token", "pin-file", "sessions", "tcti", "srk",
};

static const char *const identity_keys[I_NKEYS] = {
	"keystore",
	"key",
	"cert",
	"allow-users",
	"allow-groups",
	"sign-policy",
	"renew",
	"ca-url",
	"ca-trust",
	"renew-at",
	"rotate-key",
	"bootstrap",
	"post-renew",
	"cert-out",
	"subject",
	"key-type",
	"ca-timeout",
	"allow-exe",
	"allow-unit",
	"ca-signer",
	"ca-sender",
	"implicit-confirm",
	"renew-auth",
	"renew-verify",
	"revocation-check",
	"revocation-interval",
};

static const char *const policy_names[] = {
	[POLICY_TLS_CLIENT] = "tls-client",
	[POLICY_TLS13_CLIENT] = "tls13-client",
	[POLICY_ANY] = "any",
	[POLICY_DIGEST] = "digest",
};

/* Line of each key seen in one section (0: absent), to catch repeats and to point later
 * checks (which need the whole file) at the right line. */
struct key_lines {
	int line[MAX_KEYS];
};

struct parser {
	struct config *cfg;
	const char *path;
	FILE *fp;
	char *raw; /* getline() buffer */
	size_t rawcap;
	int lineno;

	enum section_kind kind;
	size_t idx;	/* current keystore or identity */
	char label[96]; /* current section header, for messages */
	int agent_line;
	struct key_lines agent;
	struct key_lines *ks;  /* parallel to cfg->keystores */
	struct key_lines *ids; /* parallel to cfg->identities */

	int failed;
	char *err;
	size_t errlen;

	uid_t agent_uid; /* besides root, the owner the file may have */
	int for_check;	 /* read by mtls-agentctl check: log nothing, judge no process rights */
};

static void fail(struct parser *p, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Keeps only the first error: later ones are usually consequences of it. */
static void fail(struct parser *p, int line, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (p->failed)
		return;
	p->failed = 1;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (p->err == NULL || p->errlen == 0)
		return;
	if (line > 0)
		snprintf(p->err, p->errlen, "%s:%d: %s", p->path, line, msg);
	else
		snprintf(p->err, p->errlen, "%s: %s", p->path, msg);
}

const char *sign_policy_name(int policy)
{
	if (policy < 0 || (size_t)policy >= sizeof(policy_names) / sizeof(policy_names[0]))
		return "unknown";
	return policy_names[policy];
}

int sign_policy_from_name(const char *name)
{
	size_t i;

	if (name == NULL)
		return -1;
	for (i = 0; i < sizeof(policy_names) / sizeof(policy_names[0]); i++)
		if (strcmp(name, policy_names[i]) == 0)
			return (int)i;
	return -1;
}

const struct cfg_keystore *config_keystore(const struct config *cfg, const char *name)
{
	size_t i;

	if (cfg == NULL || name == NULL)
		return NULL;
	for (i = 0; i < cfg->n_keystores; i++)
		if (strcmp(cfg->keystores[i].name, name) == 0)
			return &cfg->keystores[i];
	return NULL;
}

const struct cfg_identity *config_identity(const struct config *cfg, const char *name)
{
	size_t i;

	if (cfg == NULL || name == NULL)
		return NULL;
	for (i = 0; i < cfg->n_identities; i++)
		if (strcmp(cfg->identities[i].name, name) == 0)
			return &cfg->identities[i];
	return NULL;
}

void config_free(struct config *cfg)
{
	size_t i;

	if (cfg == NULL)
		return;
	for (i = 0; i < cfg->n_keystores; i++) {
		struct cfg_keystore *ks = &cfg->keystores[i];

		free(ks->name);
		free(ks->type);
		free(ks->module);
		free(ks->token);
		free(ks->pin_file);
		free(ks->tcti);
		free(ks->srk);
	}
	free(cfg->keystores);
	for (i = 0; i < cfg->n_identities; i++) {
		struct cfg_identity *id = &cfg->identities[i];

		free(id->name);
		free(id->keystore);
		free(id->key);
		free(id->cert);
		free(id->allow_users);
		free(id->allow_groups);
		free(id->ca_url);
		free(id->ca_trust);
		free(id->bootstrap_ref);
		free(id->bootstrap_file);
		free(id->bootstrap_identity);
		free(id->renew_auth);
		free(id->renew_verify);
		free(id->post_renew);
		for (size_t j = 0; j < id->n_cert_out; j++)
			free(id->cert_out[j]);
		free(id->cert_out);
		free(id->subject);
		for (size_t j = 0; j < id->n_allow_exe; j++)
			free(id->allow_exe[j]);
		free(id->allow_exe);
		for (size_t j = 0; j < id->n_allow_unit; j++)
			free(id->allow_unit[j]);
		free(id->allow_unit);
		free(id->ca_signer);
		free(id->ca_sender);
	}
	free(cfg->identities);
	free(cfg->path);
	free(cfg->socket);
	free(cfg->state_dir);
	free(cfg->metrics_listen);
	free(cfg->admin_users);
	free(cfg->admin_groups);
	for (i = 0; i < cfg->n_problems; i++)
		free(cfg->problems[i]);
	free(cfg->problems);
	for (i = 0; i < cfg->n_warnings; i++)
		free(cfg->warnings[i]);
	free(cfg->warnings);
	free(cfg);
}

/*
 * A problem that does not stop the configuration from loading (an account
 * named in an allow-list that no longer exists): logged as an error and
 * kept in cfg->problems for `check`. The entry concerned is left out, so
 * the agent serves everything else and nothing more than before.
 */
static void note(struct parser *p, int line, int level, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* level LOG_LVL_ERROR: kept in cfg->problems, else in cfg->warnings; logged unless for check. */
static void note(struct parser *p, int line, int level, const char *fmt, ...)
{
	char msg[768], *line_text = NULL, ***list, **nl;
	size_t *n;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (asprintf(&line_text, "%s:%d: %s", p->path, line, msg) < 0)
		line_text = NULL;
	if (!p->for_check)
		log_msg(level, __func__, "%s", line_text != NULL ? line_text : msg);
	list = level == LOG_LVL_ERROR ? &p->cfg->problems : &p->cfg->warnings;
	n = level == LOG_LVL_ERROR ? &p->cfg->n_problems : &p->cfg->n_warnings;
	if (line_text == NULL)
		return;
	if ((nl = realloc(*list, (*n + 1) * sizeof(*nl))) == NULL) {
		free(line_text);
		return;
	}
	nl[(*n)++] = line_text;
	*list = nl;
}

#define problem(p, line, ...) note(p, line, LOG_LVL_ERROR, __VA_ARGS__)
/* A warning (the load goes on, nothing is left out): logged, and kept in cfg->warnings. */
#define warning(p, line, ...) note(p, line, LOG_LVL_WARN, __VA_ARGS__)

/* ---- values ---------------------------------------------------------------------------- */

static int set_string(struct parser *p, char **dst, const char *value)
{
	if ((*dst = strdup(value)) == NULL) {
		fail(p, 0, "out of memory");
		return -1;
	}
	return 0;
}

static int set_path(struct parser *p, const char *key, char **dst, const char *value)
{
	if (value[0] != '/') {
		fail(p, p->lineno, "%s must be an absolute path, not \"%s\"", key, value);
		return -1;
	}
	return set_string(p, dst, value);
}

/* Plain decimal digits only: strtoul() alone would take signs, spaces and "0x". */
static int parse_ulong(const char *s, int base, unsigned long *v)
{
	const char *c;
	char *end;

	if (*s == '\0')
		return -1;
	for (c = s; *c != '\0'; c++)
		if (!isdigit((unsigned char)*c) || (base == 8 && *c > '7'))
			return -1;
	errno = 0;
	*v = strtoul(s, &end, base);
	if (errno != 0 || *end != '\0')
		return -1;
	return 0;
}

static int set_uint(struct parser *p, const char *key, unsigned *dst, const char *value,
		    unsigned long min, unsigned long max)
{
	unsigned long v;

	if (parse_ulong(value, 10, &v) != 0 || v < min || v > max) {
		fail(p, p->lineno, "bad %s \"%s\": want a number in %lu..%lu", key, value, min,
		     max);
		return -1;
	}
	*dst = (unsigned)v;
	return 0;
}

/*
 * srk = handle:0x81xxxxxx: a persistent storage key to create keys under,
 * for TPMs whose owner hierarchy has a password (the agent then cannot
 * re-create the SRK from the template). Exactly 8 hex digits after 0x.
 */
static int set_srk(struct parser *p, char **dst, const char *value)
{
	const char *h = value + strlen("handle:0x");
	unsigned long v;
	char *end;
	size_t i;

	if (strncmp(value, "handle:0x", strlen("handle:0x")) != 0 || strlen(h) != 8)
		goto bad;
	for (i = 0; i < 8; i++)
		if (!isxdigit((unsigned char)h[i]))
			goto bad;
	errno = 0;
	v = strtoul(h, &end, 16);
	if (errno != 0 || *end != '\0' || (v >> 24) != 0x81)
		goto bad;
	return set_string(p, dst, value);
bad:
	fail(p, p->lineno,
	     "bad srk \"%s\": want handle:0x81000000..0x81ffffff (a persistent "
	     "key handle)",
	     value);
	return -1;
}

static int set_mode(struct parser *p, const char *key, mode_t *dst, const char *value)
{
	unsigned long v;

	if (parse_ulong(value, 8, &v) != 0 || v > 0777) {
		fail(p, p->lineno, "bad %s \"%s\": want an octal mode <= 0777", key, value);
		return -1;
	}
	/* The agent itself (and root's tools) must keep using the socket it creates. */
	if ((v & 0600) != 0600) {
		fail(p, p->lineno, "bad %s \"%s\": the owner needs read and write", key, value);
		return -1;
	}
	*dst = (mode_t)v;
	return 0;
}

/*
 * A numeric id or a user/group name; (id_t)-1 is reserved ("no change" to
 * chown()). lenient: a name that does not resolve is a problem(), not an
 * error, and 1 is returned (the entry is left out).
 */
static int resolve_id(struct parser *p, const char *name, int group, int lenient, unsigned long *id)
{
	struct passwd *pw;
	struct group *gr;
	unsigned long max = group ? (unsigned long)(gid_t)-1 : (unsigned long)(uid_t)-1;

	if (parse_ulong(name, 10, id) == 0) {
		if (*id < max)
			return 0;
		fail(p, p->lineno, "bad %s id \"%s\"", group ? "group" : "user", name);
		return -1;
	}
	if (group) {
		if ((gr = getgrnam(name)) != NULL) {
			*id = gr->gr_gid;
			return 0;
		}
	} else {
		if ((pw = getpwnam(name)) != NULL) {
			*id = pw->pw_uid;
			return 0;
		}
	}
	if (lenient) {
		problem(p, p->lineno, "unknown %s \"%s\": left out of the list",
			group ? "group" : "user", name);
		return 1;
	}
	fail(p, p->lineno, "unknown %s \"%s\"", group ? "group" : "user", name);
	return -1;
}

/* Entries separated by spaces and/or commas; repeats are dropped. */
static int parse_id_list(struct parser *p, const char *value, int group, unsigned long **out,
			 size_t *n)
{
	unsigned long *ids = NULL, *nids, id;
	char *copy, *tok, *save = NULL;
	size_t cnt = 0, i, skipped = 0;
	int ret = -1, r;

	if ((copy = strdup(value)) == NULL) {
		fail(p, 0, "out of memory");
		goto out;
	}
	for (tok = strtok_r(copy, " \t,", &save); tok != NULL;
	     tok = strtok_r(NULL, " \t,", &save)) {
		/* An account that disappeared is left out; the rest still applies. */
		if ((r = resolve_id(p, tok, group, 1, &id)) < 0)
			goto out;
		if (r > 0) {
			skipped++;
			continue;
		}
		for (i = 0; i < cnt && ids[i] != id; i++)
			;
		if (i < cnt)
			continue;
		if ((nids = realloc(ids, (cnt + 1) * sizeof(*ids))) == NULL) {
			fail(p, 0, "out of memory");
			goto out;
		}
		ids = nids;
		ids[cnt++] = id;
	}
	if (cnt == 0 && skipped == 0) {
		fail(p, p->lineno, "empty %s list", group ? "group" : "user");
		goto out;
	}
	*out = ids;
	*n = cnt;
	ids = NULL;
	ret = 0;
out:
	free(ids);
	free(copy);
	return ret;
}

static int set_users(struct parser *p, uid_t **dst, size_t *n, const char *value)
{
	unsigned long *ids = NULL;
	size_t cnt = 0, i;

	if (parse_id_list(p, value, 0, &ids, &cnt) != 0)
		return -1;
	/* At least one slot: a list emptied by missing accounts is set, not absent. */
	if ((*dst = calloc(cnt > 0 ? cnt : 1, sizeof(**dst))) == NULL) {
		free(ids);
		fail(p, 0, "out of memory");
		return -1;
	}
	for (i = 0; i < cnt; i++)
		(*dst)[i] = (uid_t)ids[i];
	*n = cnt;
	free(ids);
	return 0;
}

static int set_groups(struct parser *p, gid_t **dst, size_t *n, const char *value)
{
	unsigned long *ids = NULL;
	size_t cnt = 0, i;

	if (parse_id_list(p, value, 1, &ids, &cnt) != 0)
		return -1;
	/* At least one slot: a list emptied by missing accounts is set, not absent. */
	if ((*dst = calloc(cnt > 0 ? cnt : 1, sizeof(**dst))) == NULL) {
		free(ids);
		fail(p, 0, "out of memory");
		return -1;
	}
	for (i = 0; i < cnt; i++)
		(*dst)[i] = (gid_t)ids[i];
	*n = cnt;
	free(ids);
	return 0;
}

/* ---- sections and keys ----------------------------------------------------------------- */

/*
 * metrics-listen = /path/to/socket | 127.0.0.1:PORT | [::1]:PORT. Only loopback
 * addresses: the listener has no TLS and no authentication, so anything
 * wider belongs behind a reverse proxy that has both.
 */
static int set_metrics_listen(struct parser *p, const char *value)
{
	struct sockaddr_storage ss;
	char err[200];

	if (value[0] == '/') {
		if (strlen(value) >= sizeof(((struct sockaddr_un *)NULL)->sun_path)) {
			fail(p, p->lineno, "metrics-listen path too long (max %zu bytes)",
			     sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1);
			return -1;
		}
		return set_path(p, "metrics-listen", &p->cfg->metrics_listen, value);
	}
	if (metrics_parse_addr(value, &ss, err, sizeof(err)) != 0) {
		fail(p, p->lineno, "bad metrics-listen \"%s\": %s", value, err);
		return -1;
	}
	return set_string(p, &p->cfg->metrics_listen, value);
}

static int agent_value(struct parser *p, int k, const char *value)
{
	struct config *cfg = p->cfg;
	unsigned long gid;

	switch (k) {
	case A_SOCKET:
		/* bind() silently truncates nothing: it fails, so say it here. */
		if (strlen(value) >= sizeof(((struct sockaddr_un *)NULL)->sun_path)) {
			fail(p, p->lineno, "socket path too long (max %zu bytes)",
			     sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1);
			return -1;
		}
		return set_path(p, agent_keys[k], &cfg->socket, value);
	case A_SOCKET_MODE:
		return set_mode(p, agent_keys[k], &cfg->socket_mode, value);
	case A_SOCKET_GROUP:
		if (resolve_id(p, value, 1, 0, &gid) != 0)
			return -1;
		cfg->socket_group = (gid_t)gid;
		cfg->has_socket_group = 1;
		return 0;
	case A_STATE_DIR:
		return set_path(p, agent_keys[k], &cfg->state_dir, value);
	case A_ADMIN_USERS:
		return set_users(p, &cfg->admin_users, &cfg->n_admin_users, value);
	case A_ADMIN_GROUPS:
		return set_groups(p, &cfg->admin_groups, &cfg->n_admin_groups, value);
	case A_WORKERS:
		return set_uint(p, agent_keys[k], &cfg->workers, value, 1, 64);
	case A_MAX_CLIENTS:
		return set_uint(p, agent_keys[k], &cfg->max_clients, value, 1, 65536);
	case A_MAX_CLIENTS_PER_UID:
		return set_uint(p, agent_keys[k], &cfg->max_clients_per_uid, value, 1, 65536);
	case A_ADMIN_RESERVE:
		return set_uint(p, agent_keys[k], &cfg->admin_reserve, value, 0, 65535);
	case A_IDLE_TIMEOUT:
		/* 0: never. A day at most: past that it is a leak, not a timeout. */
		return set_uint(p, agent_keys[k], &cfg->idle_timeout, value, 0, 86400);
	case A_METRICS_LISTEN:
		return set_metrics_listen(p, value);
	case A_METRICS_IDENTITIES:
		if (strcmp(value, "yes") != 0 && strcmp(value, "no") != 0) {
			fail(p, p->lineno, "bad metrics-identities \"%s\": want yes or no", value);
			return -1;
		}
		cfg->metrics_identities = strcmp(value, "yes") == 0;
		return 0;
	}
	return -1;
}

static int keystore_value(struct parser *p, int k, const char *value)
{
	struct cfg_keystore *ks = &p->cfg->keystores[p->idx];

	switch (k) {
	case K_TYPE:
		if (strcmp(value, "pkcs11") != 0 && strcmp(value, "tpm2") != 0) {
			fail(p, p->lineno, "bad type \"%s\": want pkcs11 or tpm2", value);
			return -1;
		}
		return set_string(p, &ks->type, value);
	case K_MODULE:
		return set_path(p, keystore_keys[k], &ks->module, value);
	case K_TOKEN:
		return set_string(p, &ks->token, value);
	case K_PIN_FILE:
		/* Only the path: the keystore reads (and checks) the file when it opens. */
		return set_path(p, keystore_keys[k], &ks->pin_file, value);
	case K_SESSIONS:
		return set_uint(p, keystore_keys[k], &ks->sessions, value, 1, 64);
	case K_TCTI:
		return set_string(p, &ks->tcti, value);
	case K_SRK:
		return set_srk(p, &ks->srk, value);
	}
	return -1;
}

const char *renew_method_name(int method)
{
	return method == RENEW_CMP ? "cmp" : method == RENEW_EST ? "est" : "none";
}

/* bootstrap = secret:REFERENCE:/path | basic:/path | identity:NAME */
static int set_bootstrap(struct parser *p, struct cfg_identity *id, const char *value)
{
	const char *colon;

	if (strncmp(value, "secret:", 7) == 0 && (colon = strchr(value + 7, ':')) != NULL &&
	    colon > value + 7) {
		id->bootstrap = BOOTSTRAP_SECRET;
		if ((id->bootstrap_ref = strndup(value + 7, (size_t)(colon - value - 7))) == NULL) {
			fail(p, 0, "out of memory");
			return -1;
		}
		return set_path(p, "the bootstrap secret file", &id->bootstrap_file, colon + 1);
	}
	if (strncmp(value, "basic:", 6) == 0) {
		id->bootstrap = BOOTSTRAP_BASIC;
		return set_path(p, "the bootstrap credentials file", &id->bootstrap_file,
				value + 6);
	}
	if (strncmp(value, "identity:", 9) == 0 && value[9] != '\0') {
		id->bootstrap = BOOTSTRAP_IDENTITY;
		return set_string(p, &id->bootstrap_identity, value + 9);
	}
	fail(p, p->lineno,
	     "bad bootstrap \"%s\": want secret:REFERENCE:/path (CMP), basic:/path (EST) or "
	     "identity:NAME",
	     value);
	return -1;
}

/* cert-out = /path [/path ...] */
static int set_cert_out(struct parser *p, struct cfg_identity *id, const char *value)
{
	char *copy, *tok, *save = NULL;
	char **list;

	if ((copy = strdup(value)) == NULL) {
		fail(p, 0, "out of memory");
		return -1;
	}
	for (tok = strtok_r(copy, " \t", &save); tok != NULL; tok = strtok_r(NULL, " \t", &save)) {
		if ((list = realloc(id->cert_out, (id->n_cert_out + 1) * sizeof(*list))) == NULL) {
			free(copy);
			fail(p, 0, "out of memory");
			return -1;
		}
		id->cert_out = list;
		if (set_path(p, "cert-out", &id->cert_out[id->n_cert_out], tok) != 0) {
			free(copy);
			return -1;
		}
		id->n_cert_out++;
	}
	free(copy);
	return 0;
}

/*
 * allow-exe = /usr/bin/mosquitto [/path ...]: absolute program paths, kept
 * as their canonical path (the kernel reports /proc/PID/exe resolved), so a
 * configured /usr/bin/python3 matches the python3.11 it links to.
 * allow-unit = myapp.service [unit ...]: systemd unit names.
 */
int config_can_inspect_others(uid_t euid, const char *status_text)
{
	const char *c;
	unsigned long long eff;

	if (euid == 0)
		return 1;
	if (status_text == NULL || (c = strstr(status_text, "\nCapEff:")) == NULL)
		return 0;
	eff = strtoull(c + 8, NULL, 16);
	return (eff >> 19) & 1; /* CAP_SYS_PTRACE */
}

/*
 * allow-exe and allow-unit read /proc/PID/exe and /proc/PID/cgroup of the
 * callers, other users' processes: that takes root or CAP_SYS_PTRACE (and
 * ProtectProc=default under systemd). Said at load, not first at a refusal.
 */
static void warn_cannot_inspect(struct parser *p, const char *key)
{
	char status[4096] = "";
	FILE *f;
	size_t n = 0;

	/* The rights of the process reading the file: for check, not the agent's. */
	if (p->for_check)
		return;
	if ((f = fopen("/proc/self/status", "re")) != NULL) {
		n = fread(status, 1, sizeof(status) - 1, f);
		fclose(f);
	}
	status[n] = '\0';
	if (!config_can_inspect_others(geteuid(), status))
		warning(p, p->lineno,
			"%s: this agent runs without root or CAP_SYS_PTRACE, so it cannot read "
			"/proc/PID/exe of other users' processes: they will be refused. Run it as "
			"root or with CAP_SYS_PTRACE and ProtectProc=default (see mtls-agent.conf(5))",
			key);
}

static int set_caller_list(struct parser *p, const char *key, int is_unit, char ***dst, size_t *n,
			   const char *value)
{
	char *copy, *tok, *save = NULL, *canon, **list;
	const char *c;

	if ((copy = strdup(value)) == NULL) {
		fail(p, 0, "out of memory");
		return -1;
	}
	for (tok = strtok_r(copy, " \t", &save); tok != NULL; tok = strtok_r(NULL, " \t", &save)) {
		if (is_unit) {
			for (c = tok; *c != '\0' &&
				      (isalnum((unsigned char)*c) || strchr(":_.@-\\", *c) != NULL);
			     c++)
				;
			if (*c != '\0' || strchr(tok, '.') == NULL || strlen(tok) > 255) {
				fail(p, p->lineno,
				     "bad %s \"%s\": want systemd unit names (myapp.service)", key,
				     tok);
				free(copy);
				return -1;
			}
		} else if (tok[0] != '/') {
			fail(p, p->lineno, "%s must be an absolute path, not \"%s\"", key, tok);
			free(copy);
			return -1;
		}
		if ((list = realloc(*dst, (*n + 1) * sizeof(*list))) == NULL) {
			free(copy);
			fail(p, 0, "out of memory");
			return -1;
		}
		*dst = list;
		canon = is_unit ? NULL : realpath(tok, NULL);
		if ((list[*n] = canon != NULL ? canon : strdup(tok)) == NULL) {
			free(copy);
			fail(p, 0, "out of memory");
			return -1;
		}
		(*n)++;
	}
	free(copy);
	if (*n == 0) {
		fail(p, p->lineno, "empty %s list", key);
		return -1;
	}
	return 0;
}

/* subject = /CN=gw-1/O=Fleet, as `mtls-agentctl csr` takes it; a typo is a config error. */
static int set_subject(struct parser *p, struct cfg_identity *id, const char *value)
{
	X509_NAME *name = NULL;
	char why[256];

	if (csr_parse_subject(value, &name, why, sizeof(why)) != 0) {
		fail(p, p->lineno, "bad subject \"%s\": %s", value, why);
		return -1;
	}
	X509_NAME_free(name);
	return set_string(p, &id->subject, value);
}

/* revocation-check = auto|ocsp|crl|off; revocation-interval = a duration, 1 s to 30 d. */
static int set_revocation(struct parser *p, struct cfg_identity *id, int k, const char *value)
{
	struct sched_policy sp;

	if (k == I_REVOCATION_CHECK) {
		if ((id->revocation_check = rev_mode_from_name(value)) >= 0)
			return 0;
		fail(p, p->lineno, "bad revocation-check \"%s\": want auto, ocsp, crl or off",
		     value);
		return -1;
	}
	/* A duration like renew-at's; a share of the lifetime means nothing here. */
	if (sched_parse_renew_at(value, &sp) != 0 || sp.renew_before == 0 ||
	    sp.renew_before > 30LL * 86400) {
		fail(p, p->lineno,
		     "bad revocation-interval \"%s\": want a duration from 1s to 30d (\"1h\", "
		     "\"30m\", \"45s\")",
		     value);
		return -1;
	}
	id->revocation_interval = sp.renew_before;
	return 0;
}

static int identity_value(struct parser *p, int k, const char *value)
{
	struct cfg_identity *id = &p->cfg->identities[p->idx];
	struct sched_policy sp;
	int pol;

	switch (k) {
	case I_KEYSTORE:
		return set_string(p, &id->keystore, value);
	case I_KEY:
		return set_string(p, &id->key, value);
	case I_CERT:
		return set_path(p, identity_keys[k], &id->cert, value);
	case I_ALLOW_USERS:
		return set_users(p, &id->allow_users, &id->n_allow_users, value);
	case I_ALLOW_GROUPS:
		return set_groups(p, &id->allow_groups, &id->n_allow_groups, value);
	case I_SIGN_POLICY:
		if ((pol = sign_policy_from_name(value)) < 0) {
			fail(p, p->lineno,
			     "bad sign-policy \"%s\": want tls-client, tls13-client, digest or any",
			     value);
			return -1;
		}
		id->sign_policy = pol;
		return 0;
	case I_RENEW:
		if (strcmp(value, "cmp") == 0)
			id->renew = RENEW_CMP;
		else if (strcmp(value, "est") == 0)
			id->renew = RENEW_EST;
		else if (strcmp(value, "none") == 0)
			id->renew = RENEW_NONE;
		else {
			fail(p, p->lineno, "bad renew \"%s\": want cmp, est or none", value);
			return -1;
		}
		return 0;
	case I_CA_URL:
		if (strncmp(value, "http://", 7) != 0 && strncmp(value, "https://", 8) != 0) {
			fail(p, p->lineno, "bad ca-url \"%s\": want http(s)://HOST[:PORT]/PATH",
			     value);
			return -1;
		}
		return set_string(p, &id->ca_url, value);
	case I_CA_TRUST:
		return set_path(p, identity_keys[k], &id->ca_trust, value);
	case I_RENEW_AT:
		if (sched_parse_renew_at(value, &sp) != 0) {
			fail(p, p->lineno,
			     "bad renew-at \"%s\": want a share of the lifetime (\"66%%\") or a "
			     "time before expiry (\"7d\", \"12h\", \"30m\", \"45s\")",
			     value);
			return -1;
		}
		id->renew_permille = sp.renew_permille;
		id->renew_before = sp.renew_before;
		return 0;
	case I_ROTATE_KEY:
		if (strcmp(value, "yes") != 0 && strcmp(value, "no") != 0) {
			fail(p, p->lineno, "bad rotate-key \"%s\": want yes or no", value);
			return -1;
		}
		id->rotate_key = strcmp(value, "yes") == 0;
		return 0;
	case I_BOOTSTRAP:
		return set_bootstrap(p, id, value);
	case I_RENEW_AUTH:
		if (strncmp(value, "identity:", 9) != 0 || value[9] == '\0') {
			fail(p, p->lineno, "bad renew-auth \"%s\": want identity:NAME", value);
			return -1;
		}
		return set_string(p, &id->renew_auth, value + 9);
	case I_RENEW_VERIFY: {
		struct renew_verify_url u;
		char verr[128];

		if (renew_verify_parse(value, &u, verr, sizeof(verr)) != 0) {
			fail(p, p->lineno, "bad renew-verify \"%s\": %s", value, verr);
			return -1;
		}
		return set_string(p, &id->renew_verify, value);
	}
	case I_REVOCATION_CHECK:
	case I_REVOCATION_INTERVAL:
		return set_revocation(p, id, k, value);
	case I_POST_RENEW:
		return set_string(p, &id->post_renew, value);
	case I_CERT_OUT:
		return set_cert_out(p, id, value);
	case I_ALLOW_EXE:
	case I_ALLOW_UNIT:
		if (set_caller_list(p, identity_keys[k], k == I_ALLOW_UNIT,
				    k == I_ALLOW_UNIT ? &id->allow_unit : &id->allow_exe,
				    k == I_ALLOW_UNIT ? &id->n_allow_unit : &id->n_allow_exe,
				    value) != 0)
			return -1;
		warn_cannot_inspect(p, identity_keys[k]);
		return 0;
	case I_SUBJECT:
		return set_subject(p, id, value);
	case I_KEY_TYPE:
		if ((id->key_type = ks_keygen_type_from_name(value)) == 0) {
			fail(p, p->lineno,
			     "bad key-type \"%s\": want ec-p256, ec-p384, rsa-2048, rsa-3072 or "
			     "rsa-4096",
			     value);
			return -1;
		}
		return 0;
	case I_CA_TIMEOUT:
		return set_uint(p, identity_keys[k], &id->ca_timeout, value, 5, 3600);
	case I_CA_SIGNER:
		return set_path(p, identity_keys[k], &id->ca_signer, value);
	case I_CA_SENDER: {
		X509_NAME *name = NULL;
		char why[256];

		if (csr_parse_subject(value, &name, why, sizeof(why)) != 0) {
			fail(p, p->lineno, "bad ca-sender \"%s\": %s", value, why);
			return -1;
		}
		X509_NAME_free(name);
		return set_string(p, &id->ca_sender, value);
	}
	case I_IMPLICIT_CONFIRM:
		if (strcmp(value, "yes") != 0 && strcmp(value, "no") != 0) {
			fail(p, p->lineno, "bad implicit-confirm \"%s\": want yes or no", value);
			return -1;
		}
		id->implicit_confirm = strcmp(value, "yes") == 0;
		return 0;
	}
	return -1;
}

/* The section string inih passes is ignored: sections are tracked by the reader. */
static int handler(void *user, const char *section, const char *name, const char *value)
{
	struct parser *p = user;
	const char *const *keys;
	struct key_lines *kl;
	int nkeys, k;

	(void)section;
	if (p->failed)
		return 0;
	switch (p->kind) {
	case SEC_AGENT:
		keys = agent_keys;
		nkeys = A_NKEYS;
		kl = &p->agent;
		break;
	case SEC_KEYSTORE:
		keys = keystore_keys;
		nkeys = K_NKEYS;
		kl = &p->ks[p->idx];
		break;
	case SEC_IDENTITY:
		keys = identity_keys;
		nkeys = I_NKEYS;
		kl = &p->ids[p->idx];
		break;
	default:
		fail(p, p->lineno, "key \"%s\" outside of any section", name);
		return 0;
	}
	for (k = 0; k < nkeys && strcmp(keys[k], name) != 0; k++)
		;
	if (k == nkeys) {
		fail(p, p->lineno, "unknown key \"%s\" in %s", name, p->label);
		return 0;
	}
	if (kl->line[k] != 0) {
		fail(p, p->lineno, "duplicate key \"%s\" in %s (first at line %d)", name, p->label,
		     kl->line[k]);
		return 0;
	}
	kl->line[k] = p->lineno;
	if (*value == '\0') {
		fail(p, p->lineno, "empty value for \"%s\"", name);
		return 0;
	}
	switch (p->kind) {
	case SEC_AGENT:
		agent_value(p, k, value);
		break;
	case SEC_KEYSTORE:
		keystore_value(p, k, value);
		break;
	case SEC_IDENTITY:
		identity_value(p, k, value);
		break;
	default:
		break;
	}
	return !p->failed;
}

static int valid_name(const char *s, size_t len)
{
	size_t i;

	if (len == 0 || len > NAME_MAX_LEN)
		return 0;
	for (i = 0; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
			return 0;
	return 1;
}

static int add_keystore(struct parser *p, const char *name, size_t len)
{
	struct config *cfg = p->cfg;
	struct cfg_keystore *nks, *ks;
	struct key_lines *nkl;
	size_t n = cfg->n_keystores;

	/* Grow both arrays before counting the entry so a failure leaves them consistent. */
	if ((nks = realloc(cfg->keystores, (n + 1) * sizeof(*nks))) == NULL)
		goto nomem;
	cfg->keystores = nks;
	if ((nkl = realloc(p->ks, (n + 1) * sizeof(*nkl))) == NULL)
		goto nomem;
	p->ks = nkl;
	ks = &cfg->keystores[n];
	memset(ks, 0, sizeof(*ks));
	memset(&p->ks[n], 0, sizeof(p->ks[n]));
	if ((ks->name = strndup(name, len)) == NULL)
		goto nomem;
	ks->sessions = 4;
	ks->line = p->lineno;
	cfg->n_keystores = n + 1;
	p->idx = n;
	return 0;
nomem:
	fail(p, 0, "out of memory");
	return -1;
}

static int add_identity(struct parser *p, const char *name, size_t len)
{
	struct config *cfg = p->cfg;
	struct cfg_identity *nid, *id;
	struct key_lines *nkl;
	size_t n = cfg->n_identities;

	if ((nid = realloc(cfg->identities, (n + 1) * sizeof(*nid))) == NULL)
		goto nomem;
	cfg->identities = nid;
	if ((nkl = realloc(p->ids, (n + 1) * sizeof(*nkl))) == NULL)
		goto nomem;
	p->ids = nkl;
	id = &cfg->identities[n];
	memset(id, 0, sizeof(*id));
	memset(&p->ids[n], 0, sizeof(p->ids[n]));
	if ((id->name = strndup(name, len)) == NULL)
		goto nomem;
	id->sign_policy = POLICY_TLS_CLIENT;
	id->rotate_key = 1;
	id->line = p->lineno;
	cfg->n_identities = n + 1;
	p->idx = n;
	return 0;
nomem:
	fail(p, 0, "out of memory");
	return -1;
}

/*
 * s is a whole header line, "[...]", comments and outer blanks already gone. Done here
 * rather than in the handler because inih only calls the handler for keys: an empty
 * section would go unnoticed, and the header's line would be lost.
 */
static int section_start(struct parser *p, const char *s)
{
	const char *in = s + 1, *sp, *name;
	size_t len = strlen(s), inlen, kwlen, namelen, i;
	int is_ks;

	if (len < 2 || s[len - 1] != ']') {
		fail(p, p->lineno,
		     "bad section header: want [agent], [keystore \"NAME\"] or "
		     "[identity \"NAME\"]");
		return -1;
	}
	inlen = len - 2;
	if (inlen == 5 && memcmp(in, "agent", 5) == 0) {
		if (p->agent_line != 0) {
			fail(p, p->lineno, "duplicate section [agent] (first at line %d)",
			     p->agent_line);
			return -1;
		}
		p->agent_line = p->lineno;
		p->kind = SEC_AGENT;
		snprintf(p->label, sizeof(p->label), "[agent]");
		return 0;
	}
	sp = memchr(in, ' ', inlen);
	kwlen = sp != NULL ? (size_t)(sp - in) : inlen;
	if (kwlen == 8 && memcmp(in, "keystore", 8) == 0)
		is_ks = 1;
	else if (kwlen == 8 && memcmp(in, "identity", 8) == 0)
		is_ks = 0;
	else {
		fail(p, p->lineno, "unknown section %s", s);
		return -1;
	}
	if (sp == NULL) {
		fail(p, p->lineno, "section %s needs a name: [%s \"NAME\"]", s,
		     is_ks ? "keystore" : "identity");
		return -1;
	}
	/* Exactly one space, then the quoted name, as git writes subsections. */
	name = sp + 1;
	namelen = inlen - kwlen - 1;
	if (namelen < 2 || name[0] != '"' || name[namelen - 1] != '"') {
		fail(p, p->lineno, "bad section header %s: want [%s \"NAME\"]", s,
		     is_ks ? "keystore" : "identity");
		return -1;
	}
	name++;
	namelen -= 2;
	if (!valid_name(name, namelen)) {
		fail(p, p->lineno, "bad %s name \"%.*s\": want 1-%d of A-Z a-z 0-9 . _ -",
		     is_ks ? "keystore" : "identity", (int)namelen, name, NAME_MAX_LEN);
		return -1;
	}
	snprintf(p->label, sizeof(p->label), "[%s \"%.*s\"]", is_ks ? "keystore" : "identity",
		 (int)namelen, name);
	if (is_ks) {
		for (i = 0; i < p->cfg->n_keystores; i++) {
			const struct cfg_keystore *ks = &p->cfg->keystores[i];

			if (strlen(ks->name) == namelen && memcmp(ks->name, name, namelen) == 0) {
				fail(p, p->lineno, "duplicate section %s (first at line %d)",
				     p->label, ks->line);
				return -1;
			}
		}
		if (add_keystore(p, name, namelen) != 0)
			return -1;
		p->kind = SEC_KEYSTORE;
	} else {
		for (i = 0; i < p->cfg->n_identities; i++) {
			const struct cfg_identity *id = &p->cfg->identities[i];

			if (strlen(id->name) == namelen && memcmp(id->name, name, namelen) == 0) {
				fail(p, p->lineno, "duplicate section %s (first at line %d)",
				     p->label, id->line);
				return -1;
			}
		}
		if (add_identity(p, name, namelen) != 0)
			return -1;
		p->kind = SEC_IDENTITY;
	}
	return 0;
}

/*
 * The fgets-like reader inih pulls lines through. It counts lines (this inih has no
 * INI_HANDLER_LINENO) and normalises each line so inih's build options do not matter:
 * comments (";" or "#" at the start or after a blank) are cut, since Debian's build only
 * knows " ;"; leading blanks are dropped, since inih would take an indented line for the
 * continuation of the previous value; section headers are handled here (see above).
 * Returning NULL ends the parse: at EOF and after the first error.
 */
static char *reader(char *str, int num, void *stream)
{
	struct parser *p = stream;
	ssize_t n;
	size_t len;
	char *s, *c;

	if (p->failed)
		return NULL;
	errno = 0;
	if ((n = getline(&p->raw, &p->rawcap, p->fp)) < 0) {
		if (ferror(p->fp))
			fail(p, 0, "read error: %s", strerror(errno ? errno : EIO));
		return NULL;
	}
	p->lineno++;
	if (memchr(p->raw, '\0', (size_t)n) != NULL) {
		fail(p, p->lineno, "NUL byte in line");
		return NULL;
	}
	s = p->raw;
	if (p->lineno == 1 && n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
		s += 3;
	while (isspace((unsigned char)*s))
		s++;
	for (c = s; *c != '\0'; c++) {
		if ((*c == ';' || *c == '#') && (c == s || isspace((unsigned char)c[-1]))) {
			*c = '\0';
			break;
		}
	}
	len = strlen(s);
	while (len > 0 && isspace((unsigned char)s[len - 1]))
		s[--len] = '\0';

	if (*s == '[') {
		if (section_start(p, s) != 0)
			return NULL;
	} else if (*s != '\0') {
		/* inih would also split at ':'; only "key = value" is documented. */
		c = strpbrk(s, "=:");
		if (c == NULL || *c != '=' || c == s) {
			fail(p, p->lineno, "expected \"key = value\"");
			return NULL;
		}
	}
	/* Room for the newline too, or inih could take the line as cut short. */
	if (num < 2 || len > (size_t)num - 2) {
		fail(p, p->lineno, "line too long (max %d characters without comments)",
		     num > 2 ? num - 2 : 0);
		return NULL;
	}
	memcpy(str, s, len);
	str[len] = '\n';
	str[len + 1] = '\0';
	return str;
}

/* ---- checks that need the whole file --------------------------------------------------- */

/* dlopen() of the module runs its code inside the agent, next to every key it holds. */
static int check_module(struct parser *p, const char *path, int line)
{
	struct stat st;

	if (stat(path, &st) != 0) {
		fail(p, line, "module %s: %s", path, strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		fail(p, line, "module %s is not a regular file", path);
		return -1;
	}
	if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
		fail(p, line, "module %s is writable by group or others (mode %04o)", path,
		     (unsigned)(st.st_mode & 07777));
		return -1;
	}
	if (st.st_uid != 0) {
		fail(p, line, "module %s is not owned by root (uid %lu)", path,
		     (unsigned long)st.st_uid);
		return -1;
	}
	return 0;
}

static int finish_keystore(struct parser *p, size_t i)
{
	struct cfg_keystore *ks = &p->cfg->keystores[i];
	const struct key_lines *kl = &p->ks[i];
	static const int pkcs11_only[] = {K_MODULE, K_TOKEN, K_SESSIONS};
	static const int tpm2_only[] = {K_TCTI, K_SRK};
	struct stat st;
	size_t j;

	if (ks->type == NULL) {
		fail(p, ks->line, "keystore \"%s\": missing \"type\"", ks->name);
		return -1;
	}
	if (strcmp(ks->type, "tpm2") == 0) {
		for (j = 0; j < sizeof(pkcs11_only) / sizeof(pkcs11_only[0]); j++) {
			if (kl->line[pkcs11_only[j]] != 0) {
				fail(p, kl->line[pkcs11_only[j]],
				     "keystore \"%s\": \"%s\" is only for type pkcs11", ks->name,
				     keystore_keys[pkcs11_only[j]]);
				return -1;
			}
		}
		return ks->tcti == NULL ? set_string(p, &ks->tcti, DEFAULT_TCTI) : 0;
	}
	for (j = 0; j < sizeof(tpm2_only) / sizeof(tpm2_only[0]); j++) {
		if (kl->line[tpm2_only[j]] != 0) {
			fail(p, kl->line[tpm2_only[j]],
			     "keystore \"%s\": \"%s\" is only for type tpm2", ks->name,
			     keystore_keys[tpm2_only[j]]);
			return -1;
		}
	}
	if (ks->token == NULL) {
		fail(p, ks->line, "keystore \"%s\": missing \"token\"", ks->name);
		return -1;
	}
	if (ks->module == NULL) {
		if (stat(MTLS_AGENT_DEFAULT_PKCS11_MODULE, &st) != 0) {
			fail(p, ks->line, "keystore \"%s\": missing \"module\" (no %s)", ks->name,
			     MTLS_AGENT_DEFAULT_PKCS11_MODULE);
			return -1;
		}
		if (set_string(p, &ks->module, MTLS_AGENT_DEFAULT_PKCS11_MODULE) != 0)
			return -1;
	}
	return check_module(p, ks->module, kl->line[K_MODULE] ? kl->line[K_MODULE] : ks->line);
}

/*
 * renew-auth must name an identity no application may use: otherwise whoever may sign with
 * it can re-enroll, which is what renew-auth exists to prevent. The allow-lists' lines count,
 * not what is left of them, so a deleted account does not make the identity look private.
 */
static int check_renew_auth(struct parser *p, const struct cfg_identity *id, int line)
{
	const struct cfg_identity *auth = config_identity(p->cfg, id->renew_auth);
	const struct key_lines *akl;
	int au, ag;

	if (auth == NULL || auth == id) {
		fail(p, line, "identity \"%s\": renew-auth identity \"%s\" %s", id->name,
		     id->renew_auth, auth == id ? "is itself" : "is not configured");
		return -1;
	}
	akl = &p->ids[auth - p->cfg->identities];
	au = akl->line[I_ALLOW_USERS];
	ag = akl->line[I_ALLOW_GROUPS];
	if (au != 0 || ag != 0 || auth->n_allow_users > 0 || auth->n_allow_groups > 0) {
		fail(p, line,
		     "identity \"%s\": renew-auth identity \"%s\" is usable by applications "
		     "(%s at line %d): a renewal credential must have no allow-users or "
		     "allow-groups, or whoever may use it can re-enroll",
		     id->name, id->renew_auth, au != 0 ? "allow-users" : "allow-groups",
		     au != 0 ? au : ag);
		return -1;
	}
	return 0;
}

/*
 * Strength of a secret in bits, as if its characters were drawn at random
 * from the character classes it uses: length x log2(class sizes summed),
 * classes lower (26), upper (26), digits (10), other printable (33), and
 * hex-only (16) when every character is a hex digit. An upper bound: a
 * word or a pattern is weaker than this says, never stronger.
 */
static double log2_pool(int pool)
{
	/* The sums of the class sizes that can occur, and their base-2 logarithms. */
	static const struct {
		int pool;
		double bits;
	} logs[] = {
		{10, 3.3219}, {16, 4.0},    {26, 4.7004}, {33, 5.0444}, {36, 5.1699}, {43, 5.4263},
		{52, 5.7004}, {59, 5.8826}, {62, 5.9542}, {69, 6.1085}, {85, 6.4094}, {95, 6.5699},
	};
	size_t i;

	for (i = 0; i < sizeof(logs) / sizeof(logs[0]); i++)
		if (logs[i].pool == pool)
			return logs[i].bits;
	return 0;
}

double config_secret_bits(const char *s, size_t len)
{
	int lower = 0, upper = 0, digit = 0, other = 0, hex = 1, pool;
	size_t i;

	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		lower |= c >= 'a' && c <= 'z';
		upper |= c >= 'A' && c <= 'Z';
		digit |= c >= '0' && c <= '9';
		other |= !isalnum(c);
		hex &= isxdigit(c) != 0;
	}
	pool = hex && (lower || upper) ? 16 : 26 * lower + 26 * upper + 10 * digit + 33 * other;
	return (double)len * log2_pool(pool);
}

/* Warnings (not errors) about how a PBM bootstrap secret is exposed: FILE:LINE: ... */
static void warn_bootstrap_secret(struct parser *p, const struct cfg_identity *id, int line)
{
	char *secret = NULL, why[256];
	double bits;

	if (id->ca_url != NULL && strncmp(id->ca_url, "http://", 7) == 0)
		warning(p, line,
			"identity \"%s\": the bootstrap secret protects an IR sent over http://: "
			"anyone who captures it can guess the secret offline; use an https:// ca-url "
			"or bootstrap = identity:NAME",
			id->name);
	/* Unreadable here (mtls-agent -n as another user): the enrollment reports it. */
	if (read_secret_file(id->bootstrap_file, &secret, why, sizeof(why)) != 0)
		return;
	bits = config_secret_bits(secret, strlen(secret));
	if (bits < 128)
		warning(p, line,
			"identity \"%s\": the bootstrap secret in %s is short: %zu characters, "
			"about %.0f bits at best (length x log2 of the character classes used), "
			"under 128; anyone who captures the IR can guess it offline. Use 32 random "
			"hex digits or more, or bootstrap = identity:NAME",
			id->name, id->bootstrap_file, strlen(secret), bits);
	wipe(secret, strlen(secret));
	free(secret);
}

static int finish_renewal(struct parser *p, size_t i)
{
	struct cfg_identity *id = &p->cfg->identities[i];
	const struct key_lines *kl = &p->ids[i];
	const struct cfg_identity *boot;
	/* The revocation check works without renewal too (renew/renew.c: visit_revocation). */
	static const int renew_only[] = {
		I_CA_URL,     I_CA_TRUST,	  I_RENEW_AT,	I_ROTATE_KEY,  I_BOOTSTRAP,
		I_POST_RENEW, I_CERT_OUT,	  I_SUBJECT,	I_CA_TIMEOUT,  I_CA_SIGNER,
		I_CA_SENDER,  I_IMPLICIT_CONFIRM, I_RENEW_AUTH, I_RENEW_VERIFY};
	size_t j;

	if (id->renew_permille == 0 && id->renew_before == 0)
		id->renew_permille = 660;
	if (id->ca_timeout == 0)
		id->ca_timeout = 60;
	if (id->revocation_interval == 0)
		id->revocation_interval = REV_DEFAULT_INTERVAL_S;
	if (id->renew == RENEW_NONE) {
		for (j = 0; j < sizeof(renew_only) / sizeof(renew_only[0]); j++) {
			if (kl->line[renew_only[j]] != 0) {
				fail(p, kl->line[renew_only[j]],
				     "identity \"%s\": \"%s\" needs renew = cmp or est", id->name,
				     identity_keys[renew_only[j]]);
				return -1;
			}
		}
		return 0;
	}
	if (id->ca_url == NULL || id->ca_trust == NULL) {
		fail(p, kl->line[I_RENEW], "identity \"%s\": renew = %s needs ca-url and ca-trust",
		     id->name, renew_method_name(id->renew));
		return -1;
	}
	if (id->renew == RENEW_EST && strncmp(id->ca_url, "https://", 8) != 0) {
		fail(p, kl->line[I_CA_URL], "identity \"%s\": EST needs an https:// ca-url",
		     id->name);
		return -1;
	}
	if ((id->bootstrap == BOOTSTRAP_SECRET && id->renew != RENEW_CMP) ||
	    (id->bootstrap == BOOTSTRAP_BASIC && id->renew != RENEW_EST)) {
		fail(p, kl->line[I_BOOTSTRAP], "identity \"%s\": bootstrap %s is for %s, not %s",
		     id->name, id->bootstrap == BOOTSTRAP_SECRET ? "secret:" : "basic:",
		     id->bootstrap == BOOTSTRAP_SECRET ? "CMP" : "EST",
		     renew_method_name(id->renew));
		return -1;
	}
	if ((kl->line[I_CA_SIGNER] != 0 || kl->line[I_CA_SENDER] != 0 ||
	     kl->line[I_IMPLICIT_CONFIRM] != 0) &&
	    id->renew != RENEW_CMP) {
		fail(p,
		     kl->line[I_CA_SIGNER] != 0	  ? kl->line[I_CA_SIGNER]
		     : kl->line[I_CA_SENDER] != 0 ? kl->line[I_CA_SENDER]
						  : kl->line[I_IMPLICIT_CONFIRM],
		     "identity \"%s\": ca-signer, ca-sender and implicit-confirm are for "
		     "renew = cmp",
		     id->name);
		return -1;
	}
	if (id->bootstrap == BOOTSTRAP_SECRET)
		warn_bootstrap_secret(p, id, kl->line[I_BOOTSTRAP]);
	if (id->bootstrap == BOOTSTRAP_IDENTITY) {
		boot = config_identity(p->cfg, id->bootstrap_identity);
		if (boot == NULL || boot == id) {
			fail(p, kl->line[I_BOOTSTRAP],
			     "identity \"%s\": bootstrap identity \"%s\" %s", id->name,
			     id->bootstrap_identity,
			     boot == id ? "is itself" : "is not configured");
			return -1;
		}
	}
	if (id->renew_auth != NULL)
		return check_renew_auth(p, id, kl->line[I_RENEW_AUTH]);
	return 0;
}

static int finish_identity(struct parser *p, size_t i)
{
	struct config *cfg = p->cfg;
	struct cfg_identity *id = &cfg->identities[i];
	const struct key_lines *kl = &p->ids[i];
	size_t dlen;

	if (id->keystore == NULL) {
		fail(p, id->line, "identity \"%s\": missing \"keystore\"", id->name);
		return -1;
	}
	if (id->key == NULL) {
		fail(p, id->line, "identity \"%s\": missing \"key\"", id->name);
		return -1;
	}
	if (config_keystore(cfg, id->keystore) == NULL) {
		fail(p, kl->line[I_KEYSTORE], "identity \"%s\": no [keystore \"%s\"] section",
		     id->name, id->keystore);
		return -1;
	}
	if (finish_renewal(p, i) != 0)
		return -1;
	if (id->cert == NULL) {
		/* Only now: [agent] state-dir may come after this section. */
		dlen = strlen(cfg->state_dir);
		while (dlen > 1 && cfg->state_dir[dlen - 1] == '/')
			dlen--;
		if (asprintf(&id->cert, "%.*s%s%s.crt", (int)dlen, cfg->state_dir,
			     cfg->state_dir[dlen - 1] == '/' ? "" : "/", id->name) < 0) {
			id->cert = NULL;
			fail(p, 0, "out of memory");
			return -1;
		}
	}
	return 0;
}

static int finish(struct parser *p)
{
	struct config *cfg = p->cfg;
	size_t i;

	if (cfg->socket == NULL && set_string(p, &cfg->socket, MTLS_AGENT_DEFAULT_SOCKET) != 0)
		return -1;
	if (cfg->state_dir == NULL &&
	    set_string(p, &cfg->state_dir, MTLS_AGENT_DEFAULT_STATE_DIR) != 0)
		return -1;
	if (cfg->admin_users == NULL) {
		if ((cfg->admin_users = calloc(1, sizeof(*cfg->admin_users))) == NULL) {
			fail(p, 0, "out of memory");
			return -1;
		}
		cfg->admin_users[0] = 0;
		cfg->n_admin_users = 1;
	}
	/* Only now: the two keys may come in either order. */
	if (p->agent.line[A_ADMIN_RESERVE] == 0) {
		/* The default must not refuse a small max-clients. */
		if (cfg->admin_reserve > cfg->max_clients / 4)
			cfg->admin_reserve = cfg->max_clients / 4;
	} else if (cfg->admin_reserve >= cfg->max_clients) {
		fail(p, p->agent.line[A_ADMIN_RESERVE],
		     "admin-reserve (%u) must be less than max-clients (%u)", cfg->admin_reserve,
		     cfg->max_clients);
		return -1;
	}
	for (i = 0; i < cfg->n_keystores; i++)
		if (finish_keystore(p, i) != 0)
			return -1;
	for (i = 0; i < cfg->n_identities; i++)
		if (finish_identity(p, i) != 0)
			return -1;
	return 0;
}

/* Whoever can write the file decides which module is loaded and who may sign. */
static int check_file(struct parser *p)
{
	struct stat st;

	if (fstat(fileno(p->fp), &st) != 0) {
		fail(p, 0, "%s", strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		fail(p, 0, "not a regular file");
		return -1;
	}
	if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
		fail(p, 0, "refusing a config file writable by group or others (mode %04o)",
		     (unsigned)(st.st_mode & 07777));
		return -1;
	}
	if (st.st_uid != 0 && st.st_uid != p->agent_uid) {
		fail(p, 0,
		     "refusing a config file owned by uid %lu (neither root nor the agent's uid)",
		     (unsigned long)st.st_uid);
		return -1;
	}
	return 0;
}

static int load(const char *path, uid_t agent_uid, int for_check, struct config **out, char *err,
		size_t errlen)
{
	struct parser p;
	struct config *cfg = NULL;
	int r, ret = -1;

	memset(&p, 0, sizeof(p));
	p.path = path != NULL ? path : "(null)";
	p.err = err;
	p.errlen = errlen;
	p.agent_uid = agent_uid;
	p.for_check = for_check;
	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (out != NULL)
		*out = NULL;
	if (path == NULL || out == NULL) {
		fail(&p, 0, "invalid argument");
		goto out;
	}
	if ((cfg = calloc(1, sizeof(*cfg))) == NULL || (cfg->path = strdup(path)) == NULL) {
		fail(&p, 0, "out of memory");
		goto out;
	}
	cfg->socket_mode = 0660;
	cfg->workers = 4;
	cfg->max_clients = 1024;
	cfg->max_clients_per_uid = 128;
	cfg->admin_reserve = 16;
	cfg->idle_timeout = 300;
	p.cfg = cfg;

	if ((p.fp = fopen(path, "re")) == NULL) {
		fail(&p, 0, "cannot open: %s", strerror(errno));
		goto out;
	}
	if (check_file(&p) != 0)
		goto out;
	r = ini_parse_stream(reader, &p, handler, &p);
	if (p.failed)
		goto out;
	if (r != 0) {
		/* The reader screens lines so this should not happen; never accept it. */
		fail(&p, r > 0 ? r : 0, "syntax error");
		goto out;
	}
	if (finish(&p) != 0)
		goto out;
	*out = cfg;
	cfg = NULL;
	ret = 0;
out:
	if (p.fp != NULL)
		fclose(p.fp);
	free(p.raw);
	free(p.ks);
	free(p.ids);
	config_free(cfg);
	return ret;
}

int config_load(const char *path, struct config **out, char *err, size_t errlen)
{
	return load(path, geteuid(), 0, out, err, errlen);
}

int config_check(const char *path, uid_t agent_uid, struct config **out, char *err, size_t errlen)
{
	return load(path, agent_uid, 1, out, err, errlen);
}
