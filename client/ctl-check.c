/* mtls-agentctl check: the steps, the subjects and the report (ctl-check.h). */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/x509.h>

#include "conf/conf.h"
#include "client/ctl-check.h"

void add_finding(struct findings *fd, int warning, const char *fmt, ...)
{
	char ***list = warning ? &fd->warnings : &fd->problems;
	size_t *n = warning ? &fd->n_warnings : &fd->n_problems;
	char **nl, *s;
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (r < 0) {
		fd->nomem = 1;
		return;
	}
	if ((nl = realloc(*list, (*n + 1) * sizeof(*nl))) == NULL) {
		free(s);
		fd->nomem = 1;
		return;
	}
	nl[(*n)++] = s;
	*list = nl;
}

void findings_free(struct findings *fd)
{
	size_t i;

	for (i = 0; i < fd->n_problems; i++)
		free(fd->problems[i]);
	for (i = 0; i < fd->n_warnings; i++)
		free(fd->warnings[i]);
	free(fd->problems);
	free(fd->warnings);
	memset(fd, 0, sizeof(*fd));
}

/* The findings of a subject, created on first use; never NULL. */
struct findings *subject(struct doctor *d, const char *kind, const char *name)
{
	struct subject *ns;
	size_t i;

	for (i = 0; i < d->n_subj; i++)
		if (strcmp(d->subj[i].kind, kind) == 0 && strcmp(d->subj[i].name, name) == 0)
			return &d->subj[i].fd;
	if ((ns = realloc(d->subj, (d->n_subj + 1) * sizeof(*ns))) == NULL)
		goto nomem;
	d->subj = ns;
	memset(&ns[d->n_subj], 0, sizeof(*ns));
	ns[d->n_subj].kind = kind;
	if ((ns[d->n_subj].name = strdup(name)) == NULL)
		goto nomem;
	return &ns[d->n_subj++].fd;
nomem:
	d->sink.nomem = 1;
	return &d->sink;
}
/* --- output --- */

/* Replaces the NAME placeholder in advice with the identity's name, for copy and paste. */
static void put_advice(const char *s, const char *name)
{
	const char *p;

	while ((p = strstr(s, " NAME")) != NULL) {
		printf("%.*s ", (int)(p - s), s);
		put_text(name);
		s = p + 5;
	}
	put_text(s);
}

static char *advice_string(const char *s, const char *name)
{
	char *out = NULL, *rest, *tmp;
	const char *p;

	if ((out = strdup("")) == NULL)
		return NULL;
	while ((p = strstr(s, " NAME")) != NULL) {
		if (asprintf(&tmp, "%s%.*s %s", out, (int)(p - s), s, name) < 0) {
			free(out);
			return NULL;
		}
		free(out);
		out = tmp;
		s = p + 5;
	}
	rest = out;
	if (asprintf(&out, "%s%s", rest, s) < 0)
		out = NULL;
	free(rest);
	return out;
}

/* "LABEL: [warning: ]finding" lines, then "LABEL: ok" when no problem. name, when not
 * NULL, replaces the NAME placeholder. */
static void report_text(const char *label, const char *name, const struct findings *fd, int ok_line)
{
	size_t i;

	for (i = 0; i < fd->n_warnings; i++) {
		put_text(label);
		fputs(": warning: ", stdout);
		put_advice(fd->warnings[i], name != NULL ? name : "NAME");
		putchar('\n');
	}
	for (i = 0; i < fd->n_problems; i++) {
		put_text(label);
		fputs(": ", stdout);
		put_advice(fd->problems[i], name != NULL ? name : "NAME");
		putchar('\n');
	}
	if (fd->n_problems == 0 && ok_line) {
		put_text(label);
		fputs(": ok\n", stdout);
	}
}

static int check_json_list(char **list, size_t n, const char *name)
{
	size_t i;
	char *s;

	putchar('[');
	for (i = 0; i < n; i++) {
		if ((s = advice_string(list[i], name != NULL ? name : "NAME")) == NULL)
			return -1;
		if (i > 0)
			putchar(',');
		json_str(s);
		free(s);
	}
	putchar(']');
	return 0;
}

static int report_json(const struct findings *fd, const char *name)
{
	printf(",\"ok\":%s,\"problems\":", fd->n_problems == 0 ? "true" : "false");
	if (check_json_list(fd->problems, fd->n_problems, name) != 0 ||
	    fputs(",\"warnings\":", stdout) < 0 ||
	    check_json_list(fd->warnings, fd->n_warnings, name) != 0)
		return -1;
	putchar('}');
	return 0;
}

/* Options; --ca loaded. CTL_CONTINUE, or the exit status. */
static int check_options(struct doctor *d, int argc, char **argv)
{
	static const struct option opts[] = {
		{"json", no_argument, NULL, 'j'},
		{"config", required_argument, NULL, 'c'},
		{"ca", required_argument, NULL, 'A'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct ctx *c = d->c;
	int ch;

	while ((ch = getopt_long(argc, argv, ":hc:", opts, NULL)) != -1) {
		switch (ch) {
		case 'j':
			c->json = 1;
			break;
		case 'c':
			d->conf_given = optarg;
			break;
		case 'A':
			d->ca_file = optarg;
			break;
		case 'h':
			return command_help(c);
		default:
			return bad_option(c, ch, argv);
		}
	}
	if (optind < argc)
		d->only = argv[optind++];
	if (optind != argc)
		return usage_error(c, "unexpected argument '%s'", argv[optind]);
	if (d->ca_file != NULL && ((d->anchors = X509_STORE_new()) == NULL ||
				   X509_STORE_load_file(d->anchors, d->ca_file) != 1)) {
		errmsg(c, "cannot load trust anchors from %s", d->ca_file);
		return EXIT_FAIL;
	}
	return CTL_CONTINUE;
}

/* Forgets the configuration read: it is not the checked agent's. */
static void drop_config(struct doctor *d)
{
	config_free(d->conf);
	d->conf = NULL;
	d->conf_path = NULL;
}

/*
 * The configuration (-c, else the default one when it is about the socket checked) and
 * the socket: -s, $MTLS_AGENT_SOCK, the configuration's, the default.
 */
static void check_find_config(struct doctor *d)
{
	const char *env = getenv("MTLS_AGENT_SOCK");

	if (d->conf_given != NULL)
		(void)check_read_config(d, d->conf_given, 1);
	if (d->c->socket != NULL)
		d->sock = d->c->socket;
	else if (env != NULL && env[0] != '\0')
		d->sock = env;
	else if (d->conf != NULL)
		d->sock = d->conf->socket;
	else
		d->sock = MTLS_AGENT_DEFAULT_SOCKET;
	/* A file the agent refuses names no socket (a running agent may still use the one of
	 * the file it loaded before). */
	if (d->conf_given != NULL && d->conf_path != NULL && d->conf == NULL &&
	    d->c->socket == NULL && (env == NULL || env[0] == '\0'))
		add_finding(
			subject(d, "config", d->conf_path), 1,
			"the agent refuses it, so its socket is not known: checking the default "
			"%s — name the agent's socket with -s if it is another",
			d->sock);
	if (d->conf_given == NULL) {
		/* A default file the agent refuses names no socket: the default agent's. */
		if (check_read_config(d, MTLS_AGENT_DEFAULT_CONFIG, 0) == 0
			    ? strcmp(d->conf->socket, d->sock) != 0
			    : strcmp(MTLS_AGENT_DEFAULT_SOCKET, d->sock) != 0)
			drop_config(d);
	} else if (d->conf != NULL && strcmp(d->conf->socket, d->sock) != 0) {
		add_finding(subject(d, "config", d->conf_path), 1,
			    "its socket is %s, not the one checked (%s) — is this the agent's "
			    "configuration?",
			    d->conf->socket, d->sock);
	}
	if (d->conf_path != NULL)
		(void)subject(d, "config", d->conf_path);
	(void)subject(d, "socket", d->sock);
}

/* The agent: reachable? Who listens? 0, or EXIT_FAIL when check NAME cannot go on. */
static int check_reach_agent(struct doctor *d)
{
	const char *detail;
	int r;

	if (mtls_agent_connect(d->sock, &d->c->agent) == 0) {
		d->reachable = 1;
	} else if (strcasestr((detail = mtls_agent_last_error()), "permission denied") != NULL) {
		add_finding(subject(d, "socket", d->sock), 0,
			    "%s — uid %ld may not open the socket: ask an administrator to allow "
			    "this user (socket-group), or run check as root",
			    detail, (long)getuid());
	} else {
		add_finding(
			subject(d, "socket", d->sock), 0,
			"%s — start the agent ('systemctl start mtls-agent', or 'mtls-agent -n' "
			"then 'mtls-agent' to see why it does not start), or name its socket "
			"with -s",
			detail);
	}
	if (listener_uid(d->sock, &d->agent_uid) == 0)
		d->agent_uid_known = 1;
	if (d->reachable && d->only != NULL) {
		if ((r = mtls_agent_get_identity(d->c->agent, d->only, &d->ids)) != 0)
			return agent_error(d->c, r);
		d->n_ids = 1;
	}
	return 0;
}

/* What the agent says: keystore states, the identities this user may use. */
static void check_agent_state(struct doctor *d)
{
	if (mtls_agent_status(d->c->agent, &d->st) != 0)
		add_finding(subject(d, "agent", ""), 0,
			    "status request failed: %s — see the agent's log (journalctl -u "
			    "mtls-agent)",
			    mtls_agent_last_error());
	else
		check_keystore_records(d);
	if (d->only != NULL)
		return;
	if (mtls_agent_list(d->c->agent, &d->ids, &d->n_ids) != 0)
		add_finding(subject(d, "agent", ""), 0,
			    "list request failed: %s — see the agent's log",
			    mtls_agent_last_error());
	else if (d->n_ids == 0)
		add_finding(
			subject(d, "agent", ""), 0,
			"no identities for uid %ld (none configured, or none allows this user) — "
			"add the user to allow-users or allow-groups of an identity, then '" PROG
			" reload'",
			(long)getuid());
}

/* The subjects' findings, text or JSON; adds their problems to *problems. -1: no memory. */
static int report_subjects(struct doctor *d, size_t *problems)
{
	char label[PATH_MAX + 16];
	size_t i;

	if (d->c->json) {
		fputs("{\"socket\":", stdout);
		json_str(d->sock);
		fputs(",\"config\":", stdout);
		json_str_or_null(d->conf_path != NULL ? d->conf_path : d->conf_given);
		printf(",\"agent_reachable\":%s,\"checks\":[", d->reachable ? "true" : "false");
	}
	for (i = 0; i < d->n_subj; i++) {
		const struct subject *s = &d->subj[i];

		if (s->fd.nomem)
			return -1;
		*problems += s->fd.n_problems;
		if (d->c->json) {
			fputs(i > 0 ? ",{\"kind\":" : "{\"kind\":", stdout);
			json_str(s->kind);
			fputs(",\"name\":", stdout);
			json_str_or_null(s->name[0] != '\0' ? s->name : NULL);
			if (report_json(&s->fd, NULL) != 0)
				return -1;
			continue;
		}
		if (s->name[0] != '\0')
			snprintf(label, sizeof(label), "%s %s", s->kind, s->name);
		else
			snprintf(label, sizeof(label), "%s", s->kind);
		report_text(label, NULL, &s->fd, strcmp(s->kind, "agent") != 0);
	}
	return 0;
}

/* Each identity, checked and reported; *bad counts the unusable ones. -1: no memory. */
static int report_identities(struct doctor *d, size_t *problems, size_t *bad)
{
	struct findings fd;
	size_t i;
	int ret = -1;

	memset(&fd, 0, sizeof(fd));
	if (d->c->json)
		fputs("],\"identities\":[", stdout);
	for (i = 0; i < d->n_ids; i++) {
		const struct mtls_agent_identity *id = &d->ids[i];

		check_identity(d, &fd, id);
		if (fd.nomem)
			goto out;
		*bad += fd.n_problems > 0;
		*problems += fd.n_problems;
		if (!d->c->json) {
			report_text(id->name, id->name, &fd, 1);
		} else {
			fputs(i > 0 ? ",{\"name\":" : "{\"name\":", stdout);
			json_str(id->name);
			if (report_json(&fd, id->name) != 0)
				goto out;
		}
		findings_free(&fd);
	}
	ret = 0;
out:
	findings_free(&fd);
	return ret;
}

/* The one-line verdict on stderr (the report is on stdout); the exit status. */
static int verdict(const struct doctor *d, size_t problems, size_t bad)
{
	if (d->c->json)
		printf("],\"ok\":%s}\n", problems == 0 ? "true" : "false");
	if (problems == 0)
		return EXIT_OK;
	if (bad > 0)
		errmsg(d->c, "%zu problem%s need%s attention (%zu of %zu %s not usable)", problems,
		       problems == 1 ? "" : "s", problems == 1 ? "s" : "", bad, d->n_ids,
		       d->n_ids == 1 ? "identity is" : "identities are");
	else
		errmsg(d->c, "%zu problem%s need%s attention", problems, problems == 1 ? "" : "s",
		       problems == 1 ? "s" : "");
	return EXIT_FAIL;
}

static void doctor_free(struct doctor *d)
{
	size_t i;

	findings_free(&d->sink);
	for (i = 0; i < d->n_subj; i++) {
		findings_free(&d->subj[i].fd);
		free(d->subj[i].name);
	}
	free(d->subj);
	config_free(d->conf);
	mtls_agent_status_free(d->st);
	X509_STORE_free(d->anchors);
	X509_STORE_free(d->system);
	if (d->only != NULL)
		mtls_agent_identity_free(d->ids);
	else
		mtls_agent_identities_free(d->ids, d->n_ids);
}

int cmd_check(struct ctx *c, int argc, char **argv)
{
	struct doctor d;
	size_t problems = 0, bad = 0;
	int ret;

	memset(&d, 0, sizeof(d));
	d.c = c;
	if ((ret = check_options(&d, argc, argv)) != CTL_CONTINUE)
		goto out;
	check_find_config(&d);
	if ((ret = check_reach_agent(&d)) != 0)
		goto out;
	if (d.conf_path != NULL)
		check_config_file(&d);
	if (d.conf != NULL)
		check_renew_auth(&d);
	check_socket(&d);
	if (d.conf != NULL)
		check_pin_files(&d);
	if (d.reachable)
		check_agent_state(&d);
	ret = EXIT_FAIL;
	if (d.sink.nomem || report_subjects(&d, &problems) != 0 ||
	    report_identities(&d, &problems, &bad) != 0) {
		errmsg(c, "out of memory");
		goto out;
	}
	ret = verdict(&d, problems, bad);
out:
	doctor_free(&d);
	return ret;
}
