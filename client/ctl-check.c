/* mtls-agentctl check: the steps, the subjects and the report (ctl-check.h). */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <unistd.h>

#include <openssl/x509.h>

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

int cmd_check(struct ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"json", no_argument, NULL, 'j'},
	    {"config", required_argument, NULL, 'c'},
	    {"ca", required_argument, NULL, 'A'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct mtls_agent_identity *ids = NULL, *one = NULL;
	struct findings fd;
	struct doctor d;
	const char *conf_path = NULL, *env, *conf_sock;
	char label[PATH_MAX + 16];
	size_t n = 0, i, problems = 0;
	int ch, r, bad = 0, ret = EXIT_FAIL;

	memset(&fd, 0, sizeof(fd));
	memset(&d, 0, sizeof(d));
	d.c = c;
	while ((ch = getopt_long(argc, argv, ":hc:", opts, NULL)) != -1) {
		switch (ch) {
		case 'j':
			c->json = 1;
			break;
		case 'c':
			conf_path = optarg;
			break;
		case 'A':
			d.ca_file = optarg;
			break;
		case 'h':
			return command_help(c);
		default:
			return bad_option(c, ch, argv);
		}
	}
	if (optind < argc)
		d.only = argv[optind++];
	if (optind != argc)
		return usage_error(c, "unexpected argument '%s'", argv[optind]);
	if (d.ca_file != NULL) {
		if ((d.anchors = X509_STORE_new()) == NULL ||
		    X509_STORE_load_file(d.anchors, d.ca_file) != 1) {
			X509_STORE_free(d.anchors);
			errmsg(c, "cannot load trust anchors from %s", d.ca_file);
			return EXIT_FAIL;
		}
	}

	/* The configuration: -c, else the default one if it is about the socket checked. */
	if (conf_path != NULL && dconf_read(conf_path, &d.conf) != 0) {
		int e = errno;
		struct findings *cf = subject(&d, "config", conf_path);

		add_finding(cf, 0, "cannot read it: %s — %s", strerror(e),
			    e == EACCES ? "run check as root"
					: "give the agent's configuration with -c");
	}
	env = getenv("MTLS_AGENT_SOCK");
	if (c->socket != NULL)
		d.sock = c->socket;
	else if (env != NULL && env[0] != '\0')
		d.sock = env;
	else if (d.conf != NULL && d.conf->socket != NULL)
		d.sock = d.conf->socket;
	else
		d.sock = MTLS_AGENT_DEFAULT_SOCKET;
	if (conf_path == NULL && dconf_read(MTLS_AGENT_DEFAULT_CONFIG, &d.conf) == 0) {
		conf_sock = d.conf->socket != NULL ? d.conf->socket : MTLS_AGENT_DEFAULT_SOCKET;
		if (strcmp(conf_sock, d.sock) != 0) {
			dconf_free(d.conf);
			d.conf = NULL;
		}
	}
	if (d.conf != NULL) {
		conf_sock = d.conf->socket != NULL ? d.conf->socket : MTLS_AGENT_DEFAULT_SOCKET;
		if (strcmp(conf_sock, d.sock) != 0)
			add_finding(subject(&d, "config", d.conf->path), 1,
				    "its socket is %s, not the one checked (%s) — is this the "
				    "agent's configuration?",
				    conf_sock, d.sock);
	}

	if (d.conf != NULL)
		(void)subject(&d, "config", d.conf->path);
	(void)subject(&d, "socket", d.sock);

	/* The agent: reachable? Who listens? */
	if ((r = mtls_agent_connect(d.sock, &c->agent)) == 0) {
		d.reachable = 1;
	} else {
		const char *detail = mtls_agent_last_error();

		if (strcasestr(detail, "permission denied") != NULL)
			add_finding(subject(&d, "socket", d.sock), 0,
				    "%s — uid %ld may not open the socket: ask an administrator to "
				    "allow this user (socket-group), or run check as root",
				    detail, (long)getuid());
		else
			add_finding(
			    subject(&d, "socket", d.sock), 0,
			    "%s — start the agent ('systemctl start mtls-agent', or "
			    "'mtls-agent -n' then 'mtls-agent' to see why it does not start), "
			    "or name its socket with -s",
			    detail);
	}
	if (listener_uid(d.sock, &d.agent_uid) == 0)
		d.agent_uid_known = 1;
	if (d.reachable && d.only != NULL &&
	    (r = mtls_agent_get_identity(c->agent, d.only, &one)) != 0) {
		agent_error(c, r);
		goto out;
	}
	if (d.conf != NULL) {
		check_config_file(&d);
		check_renew_auth(&d);
	}
	check_socket(&d);
	if (d.conf != NULL)
		check_pin_files(&d);
	if (d.reachable) {
		if ((r = mtls_agent_status(c->agent, &d.st)) != 0)
			add_finding(subject(&d, "agent", ""), 0,
				    "status request failed: %s — see the agent's log "
				    "(journalctl -u mtls-agent)",
				    mtls_agent_last_error());
		else
			check_keystore_records(&d);
		if (one != NULL) {
			ids = one;
			n = 1;
		} else if ((r = mtls_agent_list(c->agent, &ids, &n)) != 0) {
			add_finding(subject(&d, "agent", ""), 0,
				    "list request failed: %s — see the agent's log",
				    mtls_agent_last_error());
		} else if (n == 0) {
			add_finding(
			    subject(&d, "agent", ""), 0,
			    "no identities for uid %ld (none configured, or none allows this "
			    "user) — add the user to allow-users or allow-groups of an identity, "
			    "then '" PROG " reload'",
			    (long)getuid());
		}
	}
	if (d.sink.nomem) {
		errmsg(c, "out of memory");
		goto out;
	}

	/* Report: the agent's surroundings, then each identity. */
	if (c->json) {
		fputs("{\"socket\":", stdout);
		json_str(d.sock);
		fputs(",\"config\":", stdout);
		json_str_or_null(d.conf != NULL ? d.conf->path : conf_path);
		printf(",\"agent_reachable\":%s,\"checks\":[", d.reachable ? "true" : "false");
	}
	for (i = 0; i < d.n_subj; i++) {
		const struct subject *s = &d.subj[i];

		if (s->fd.nomem) {
			errmsg(c, "out of memory");
			goto out;
		}
		problems += s->fd.n_problems;
		if (c->json) {
			fputs(i > 0 ? ",{\"kind\":" : "{\"kind\":", stdout);
			json_str(s->kind);
			fputs(",\"name\":", stdout);
			json_str_or_null(s->name[0] != '\0' ? s->name : NULL);
			if (report_json(&s->fd, NULL) != 0) {
				errmsg(c, "out of memory");
				goto out;
			}
			continue;
		}
		if (s->name[0] != '\0')
			snprintf(label, sizeof(label), "%s %s", s->kind, s->name);
		else
			snprintf(label, sizeof(label), "%s", s->kind);
		report_text(label, NULL, &s->fd, strcmp(s->kind, "agent") != 0);
	}
	if (c->json)
		fputs("],\"identities\":[", stdout);
	for (i = 0; i < n; i++) {
		check_identity(&d, &fd, &ids[i]);
		if (fd.nomem) {
			errmsg(c, "out of memory");
			goto out;
		}
		bad += fd.n_problems > 0;
		problems += fd.n_problems;
		if (c->json) {
			fputs(i > 0 ? ",{\"name\":" : "{\"name\":", stdout);
			json_str(ids[i].name);
			if (report_json(&fd, ids[i].name) != 0) {
				errmsg(c, "out of memory");
				goto out;
			}
		} else {
			report_text(ids[i].name, ids[i].name, &fd, 1);
		}
		findings_free(&fd);
	}
	if (c->json)
		printf("],\"ok\":%s}\n", problems == 0 ? "true" : "false");
	ret = EXIT_OK;
	if (problems > 0) {
		/* The report is on stdout; this is the one-line verdict of a failure. */
		if (bad > 0)
			errmsg(c, "%zu problem%s need%s attention (%d of %zu %s not usable)",
			       problems, problems == 1 ? "" : "s", problems == 1 ? "s" : "", bad, n,
			       n == 1 ? "identity is" : "identities are");
		else
			errmsg(c, "%zu problem%s need%s attention", problems,
			       problems == 1 ? "" : "s", problems == 1 ? "s" : "");
		ret = EXIT_FAIL;
	}
out:
	findings_free(&fd);
	findings_free(&d.sink);
	for (i = 0; i < d.n_subj; i++) {
		findings_free(&d.subj[i].fd);
		free(d.subj[i].name);
	}
	free(d.subj);
	dconf_free(d.conf);
	mtls_agent_status_free(d.st);
	X509_STORE_free(d.anchors);
	X509_STORE_free(d.system);
	if (one != NULL)
		mtls_agent_identity_free(one);
	else
		mtls_agent_identities_free(ids, n);
	return ret;
}

