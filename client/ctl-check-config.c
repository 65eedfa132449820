/* mtls-agentctl check: the agent's configuration file and the PIN files it names. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ctype.h>
#include <limits.h>
#include <sys/stat.h>

#include "client/ctl-check.h"

/* --- the agent's configuration, as far as the doctor needs it --- */

/*
 * A small, tolerant reader of the agent's configuration file: sections and
 * "key = value" lines, comments cut as the agent cuts them, only the keys the doctor
 * uses, everything else skipped. Not the agent's parser (agent/config.c): that one stops
 * at the first error and would bring libinih into the CLI, while the doctor wants every
 * finding it can make, also from a file the agent refuses. `mtls-agent -n` is the
 * agent's own verdict on the file.
 */

void dconf_free(struct dconf *dc)
{
	size_t i;

	if (dc == NULL)
		return;
	for (i = 0; i < dc->n_ks; i++) {
		free(dc->ks[i].name);
		free(dc->ks[i].type);
		free(dc->ks[i].pin_file);
	}
	for (i = 0; i < dc->n_ids; i++) {
		free(dc->ids[i].name);
		free(dc->ids[i].keystore);
		free(dc->ids[i].allow_users);
		free(dc->ids[i].allow_groups);
		free(dc->ids[i].renew);
		free(dc->ids[i].renew_auth);
	}
	free(dc->ks);
	free(dc->ids);
	free(dc->path);
	free(dc->socket);
	free(dc->admin_users);
	free(dc->admin_groups);
	free(dc);
}

static char *trim(char *s)
{
	size_t len;

	while (isspace((unsigned char)*s))
		s++;
	len = strlen(s);
	while (len > 0 && isspace((unsigned char)s[len - 1]))
		s[--len] = '\0';
	return s;
}

/* The last of repeated keys wins here; the agent refuses repeats anyway. */
static int dconf_set(char **slot, const char *value)
{
	char *v = strdup(value);

	if (v == NULL)
		return -1;
	free(*slot);
	*slot = v;
	return 0;
}

/* NAME of a header `[KW "NAME"]` (caller frees), or NULL. */
static char *section_name(const char *s, const char *kw)
{
	size_t kl = strlen(kw), len = strlen(s);

	if (len < kl + 6 || s[0] != '[' || strncmp(s + 1, kw, kl) != 0 || s[kl + 1] != ' ' ||
	    s[kl + 2] != '"' || s[len - 2] != '"' || s[len - 1] != ']')
		return NULL;
	return strndup(s + kl + 3, len - kl - 5);
}

/* Returns 0, or -1 with errno. */
int dconf_read(const char *path, struct dconf **out)
{
	enum { S_NONE, S_AGENT, S_KS, S_ID } sec = S_NONE;
	struct dconf_keystore *nks;
	struct dconf_identity *nid;
	struct dconf *dc = NULL;
	char *line = NULL, *s, *c, *eq, *key, *val, *name;
	size_t cap = 0, lineno = 0;
	int ret = -1, r, saved;
	FILE *f;

	*out = NULL;
	if ((f = fopen(path, "re")) == NULL)
		return -1;
	if ((dc = calloc(1, sizeof(*dc))) == NULL || (dc->path = strdup(path)) == NULL)
		goto out;
	errno = 0;
	while (getline(&line, &cap, f) >= 0) {
		s = line;
		if (++lineno == 1 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
			s += 3;
		for (c = s; *c != '\0'; c++) {
			if ((*c == ';' || *c == '#') && (c == s || isspace((unsigned char)c[-1]))) {
				*c = '\0';
				break;
			}
		}
		s = trim(s);
		if (*s == '[') {
			sec = S_NONE;
			if (strcmp(s, "[agent]") == 0) {
				sec = S_AGENT;
			} else if ((name = section_name(s, "keystore")) != NULL) {
				if ((nks = realloc(dc->ks, (dc->n_ks + 1) * sizeof(*nks))) ==
				    NULL) {
					free(name);
					goto out;
				}
				dc->ks = nks;
				memset(&dc->ks[dc->n_ks], 0, sizeof(*nks));
				dc->ks[dc->n_ks++].name = name;
				sec = S_KS;
			} else if ((name = section_name(s, "identity")) != NULL) {
				if ((nid = realloc(dc->ids, (dc->n_ids + 1) * sizeof(*nid))) ==
				    NULL) {
					free(name);
					goto out;
				}
				dc->ids = nid;
				memset(&dc->ids[dc->n_ids], 0, sizeof(*nid));
				dc->ids[dc->n_ids++].name = name;
				sec = S_ID;
			}
			continue;
		}
		if ((eq = strchr(s, '=')) == NULL)
			continue;
		*eq = '\0';
		key = trim(s);
		val = trim(eq + 1);
		r = 0;
		if (sec == S_AGENT && strcmp(key, "socket") == 0)
			r = dconf_set(&dc->socket, val);
		else if (sec == S_AGENT && strcmp(key, "admin-users") == 0)
			r = dconf_set(&dc->admin_users, val);
		else if (sec == S_AGENT && strcmp(key, "admin-groups") == 0)
			r = dconf_set(&dc->admin_groups, val);
		else if (sec == S_KS && strcmp(key, "type") == 0)
			r = dconf_set(&dc->ks[dc->n_ks - 1].type, val);
		else if (sec == S_KS && strcmp(key, "pin-file") == 0)
			r = dconf_set(&dc->ks[dc->n_ks - 1].pin_file, val);
		else if (sec == S_ID && strcmp(key, "keystore") == 0)
			r = dconf_set(&dc->ids[dc->n_ids - 1].keystore, val);
		else if (sec == S_ID && strcmp(key, "allow-users") == 0)
			r = dconf_set(&dc->ids[dc->n_ids - 1].allow_users, val);
		else if (sec == S_ID && strcmp(key, "allow-groups") == 0)
			r = dconf_set(&dc->ids[dc->n_ids - 1].allow_groups, val);
		else if (sec == S_ID && strcmp(key, "renew") == 0)
			r = dconf_set(&dc->ids[dc->n_ids - 1].renew, val);
		else if (sec == S_ID && strcmp(key, "renew-auth") == 0)
			r = dconf_set(&dc->ids[dc->n_ids - 1].renew_auth, val);
		if (r != 0)
			goto out;
	}
	if (ferror(f)) {
		errno = EIO;
		goto out;
	}
	*out = dc;
	dc = NULL;
	ret = 0;
out:
	saved = errno;
	free(line);
	fclose(f);
	dconf_free(dc);
	errno = saved;
	return ret;
}

void check_config_file(struct doctor *d)
{
	struct findings *fd = subject(d, "config", d->conf->path);
	const char *path = d->conf->path;
	char who[64];
	struct stat st;

	if (stat(path, &st) != 0)
		return;
	if (!S_ISREG(st.st_mode)) {
		add_finding(fd, 0,
			    "not a regular file — the agent refuses it; give it a regular file");
		return;
	}
	if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0)
		add_finding(
		    fd, 0,
		    "writable by group or others (mode %04o): the agent refuses it, as whoever "
		    "can write it chooses the PKCS#11 module and who may sign — chmod go-w %s",
		    (unsigned)(st.st_mode & 07777), path);
	if (!agent_may_own(d, st.st_uid))
		add_finding(
		    fd, 0,
		    "owned by %s: the agent accepts only root or its own user — chown root %s",
		    user_name(st.st_uid, who, sizeof(who)), path);
}

/*
 * EST re-enrollment is authenticated by a TLS handshake with the key being renewed, and a
 * TLS handshake is what an allowed application may do with it: without renew-auth such an
 * application can ask the CA for a certificate for a key of its own. One warning for all
 * identities concerned, as the remedy is the same.
 */
void check_renew_auth(struct doctor *d)
{
	char names[256] = "";
	size_t i, n = 0, len = 0;

	for (i = 0; i < d->conf->n_ids; i++) {
		const struct dconf_identity *id = &d->conf->ids[i];

		if (id->renew == NULL || strcmp(id->renew, "est") != 0 || id->renew_auth != NULL ||
		    (id->allow_users == NULL && id->allow_groups == NULL))
			continue;
		if (d->only != NULL && strcmp(id->name, d->only) != 0)
			continue;
		if (len < sizeof(names))
			len += (size_t)snprintf(names + len, sizeof(names) - len, "%s\"%s\"",
						n > 0 ? ", " : "", id->name);
		n++;
	}
	if (n == 0)
		return;
	add_finding(subject(d, "config", d->conf->path), 1,
		    "identit%s %s renew%s over EST with %s own key: any application allowed to "
		    "use %s can also re-enroll it and obtain a certificate for a key of its own — "
		    "set renew-auth = identity:NAME (an enrollment identity no application may "
		    "use) and have the CA accept re-enrollment only from that credential",
		    n == 1 ? "y" : "ies", names, n == 1 ? "s" : "", n == 1 ? "its" : "their",
		    n == 1 ? "it" : "them");
}

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
/* Where systemd puts the service's credentials (LoadCredential=). */
#define CREDENTIALS_DIR "/run/credentials/"

/*
 * One PIN file: what the agent's read_secret_file() refuses (others may access it, not a
 * regular file, a symbolic link, not owned by root or the agent), plus empty files.
 */
static void check_secret_file(struct doctor *d, struct findings *fd, const char *p)
{
	char who[64];
	struct stat st;

	if (lstat(p, &st) != 0) {
		if (errno == EACCES)
			add_finding(fd, 1, "cannot check PIN file %s: %s — run check as root", p,
				    strerror(errno));
		else
			add_finding(fd, 0,
				    "PIN file %s: %s — write the token's user PIN into it "
				    "(install -m 600 -o root /dev/stdin %s), then '" PROG
				    " reload'",
				    p, strerror(errno), p);
		return;
	}
	if (S_ISLNK(st.st_mode)) {
		add_finding(
		    fd, 0,
		    "PIN file %s is a symbolic link, which the agent does not follow — name "
		    "the file itself in pin-file",
		    p);
		return;
	}
	if (!S_ISREG(st.st_mode)) {
		add_finding(fd, 0,
			    "PIN file %s is not a regular file — write the PIN into a regular file "
			    "and name it in pin-file",
			    p);
		return;
	}
	if ((st.st_mode & 077) != 0)
		add_finding(fd, 0,
			    "PIN file %s is accessible by group or others (mode %04o): the agent "
			    "refuses it — chmod 600 %s, then restart the agent or '" PROG
			    " reload'",
			    p, (unsigned)(st.st_mode & 07777), p);
	if (!agent_may_own(d, st.st_uid))
		add_finding(fd, 0,
			    "PIN file %s is owned by %s: the agent accepts only root or its own "
			    "user — chown root %s",
			    p, user_name(st.st_uid, who, sizeof(who)), p);
	if (st.st_size == 0)
		add_finding(fd, 0, "PIN file %s is empty — write the token's user PIN into it", p);
}

/*
 * With the configuration: the PIN files, which the agent refuses when others can read
 * them (and then does not start, or keeps the old configuration on reload). A PIN handed
 * over by systemd (pin-file under /run/credentials/) exists only while the service runs;
 * its conventional source, <sysconfdir>/mtls-agent/<name>, is checked instead.
 */
void check_pin_files(struct doctor *d)
{
	const char *only_ks = NULL, *base;
	char src[PATH_MAX];
	struct stat st;
	size_t i;

	if (d->only != NULL) {
		for (i = 0; i < d->conf->n_ids; i++)
			if (strcmp(d->conf->ids[i].name, d->only) == 0)
				only_ks = d->conf->ids[i].keystore != NULL
					      ? d->conf->ids[i].keystore
					      : "";
		if (only_ks == NULL)
			return;
	}
	for (i = 0; i < d->conf->n_ks; i++) {
		const struct dconf_keystore *ks = &d->conf->ks[i];
		struct findings *fd;
		const char *p = ks->pin_file;

		if (only_ks != NULL && strcmp(only_ks, ks->name) != 0)
			continue;
		fd = subject(d, "keystore", ks->name);
		if (p == NULL)
			continue;
		if (strncmp(p, CREDENTIALS_DIR, strlen(CREDENTIALS_DIR)) != 0) {
			check_secret_file(d, fd, p);
			continue;
		}
		if (lstat(p, &st) == 0 || errno != ENOENT)
			check_secret_file(d, fd, p);
		base = strrchr(p, '/') + 1;
		if (snprintf(src, sizeof(src), "%s/mtls-agent/%s", SYSCONFDIR, base) <
			(int)sizeof(src) &&
		    lstat(src, &st) == 0)
			check_secret_file(d, fd, src);
	}
}

