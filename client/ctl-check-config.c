/* mtls-agentctl check: the agent's configuration file and the PIN files it names. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "conf/conf.h"
#include "client/ctl-check.h"

/* --- the agent's configuration, read by the agent's own reader --- */

int check_read_config(struct doctor *d, const char *path, int given)
{
	struct stat st;
	FILE *f;
	int e;

	/* Unreadable: a finding of its own, for a file named with -c. */
	if ((f = fopen(path, "re")) == NULL || fstat(fileno(f), &st) != 0) {
		e = errno;
		if (f != NULL)
			fclose(f);
		if (given)
			add_finding(subject(d, "config", path), 0, "cannot read it: %s — %s",
				    strerror(e),
				    e == EACCES ? "run check as root"
						: "give the agent's configuration with -c");
		return -1;
	}
	fclose(f);
	d->conf_path = path;
	/*
	 * conf/config.c, as the agent loads it. The owner is judged by
	 * check_config_file() (root or the agent's user, which check learns from the
	 * socket), so the reader takes the file's owner as the agent's here.
	 */
	if (config_check(path, st.st_uid, &d->conf, d->conf_err, sizeof(d->conf_err)) != 0)
		return -1;
	return 0;
}

void check_config_file(struct doctor *d)
{
	struct findings *fd = subject(d, "config", d->conf_path);
	const char *path = d->conf_path;
	size_t i, before = fd->n_problems;
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
	/* What the agent's reader says, where the file itself is not the reason. */
	if (d->conf == NULL && fd->n_problems == before)
		add_finding(
			fd, 0,
			"the agent refuses it: %s — correct that, then check again ('mtls-agent "
			"-n -c %s' is the agent's own verdict)",
			d->conf_err, path);
	for (i = 0; d->conf != NULL && i < d->conf->n_problems; i++)
		add_finding(fd, 0,
			    "%s — the agent logs this at every load and leaves the entry out; "
			    "correct or remove it",
			    d->conf->problems[i]);
	for (i = 0; d->conf != NULL && i < d->conf->n_warnings; i++)
		add_finding(fd, 1, "%s — the agent logs this warning at every load",
			    d->conf->warnings[i]);
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

	for (i = 0; i < d->conf->n_identities; i++) {
		const struct cfg_identity *id = &d->conf->identities[i];

		if (id->renew != RENEW_EST || id->renew_auth != NULL ||
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
	add_finding(subject(d, "config", d->conf_path), 1,
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
		for (i = 0; i < d->conf->n_identities; i++)
			if (strcmp(d->conf->identities[i].name, d->only) == 0)
				only_ks = d->conf->identities[i].keystore;
		if (only_ks == NULL)
			return;
	}
	for (i = 0; i < d->conf->n_keystores; i++) {
		const struct cfg_keystore *ks = &d->conf->keystores[i];
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
