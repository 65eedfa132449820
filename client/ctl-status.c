/* mtls-agentctl's agent commands: status, metrics, renew, reload. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/ctl.h"

/* ---- status ----------------------------------------------------------------------------- */

static void status_print(const struct mtls_agent_status *st)
{
	uint64_t up = st->uptime_seconds;
	size_t i, j;

	fputs("agent:  ", stdout);
	put_text(st->agent_version);
	printf("\nuptime: %llud %02u:%02u:%02u\nadmin:  %s\n", (unsigned long long)(up / 86400),
	       (unsigned)(up / 3600 % 24), (unsigned)(up / 60 % 60), (unsigned)(up % 60),
	       st->caller_is_admin ? "yes" : "no");
	for (i = 0; i < st->n_records; i++) {
		const struct mtls_agent_status_record *rec = &st->records[i];

		putchar('\n');
		put_text(rec->kind);
		putchar(' ');
		put_text(rec->name);
		putchar('\n');
		for (j = 0; j < rec->n_fields; j++) {
			fputs("  ", stdout);
			put_text(rec->fields[j].key);
			fputs(": ", stdout);
			put_text(rec->fields[j].value);
			putchar('\n');
		}
	}
}

static void status_json(const struct mtls_agent_status *st)
{
	size_t i, j;

	fputs("{\"agent_version\":", stdout);
	json_str(st->agent_version);
	printf(",\"uptime_seconds\":%llu,\"caller_is_admin\":%s,\"records\":[",
	       (unsigned long long)st->uptime_seconds, st->caller_is_admin ? "true" : "false");
	for (i = 0; i < st->n_records; i++) {
		const struct mtls_agent_status_record *rec = &st->records[i];

		fputs(i > 0 ? ",{\"kind\":" : "{\"kind\":", stdout);
		json_str(rec->kind);
		fputs(",\"name\":", stdout);
		json_str(rec->name);
		fputs(",\"fields\":{", stdout);
		for (j = 0; j < rec->n_fields; j++) {
			if (j > 0)
				putchar(',');
			json_str(rec->fields[j].key);
			putchar(':');
			json_str(rec->fields[j].value);
		}
		fputs("}}", stdout);
	}
	puts("]}");
}

int cmd_status(struct ctx *c, int argc, char **argv)
{
	struct mtls_agent_status *st = NULL;
	int r;

	if ((r = ctl_no_operands(c, argc, argv, 1)) != CTL_CONTINUE)
		return r;
	if ((r = connect_agent(c)) != 0)
		return r;
	if ((r = mtls_agent_status(c->agent, &st)) != 0)
		return agent_error(c, r);
	if (c->json)
		status_json(st);
	else
		status_print(st);
	mtls_agent_status_free(st);
	return EXIT_OK;
}

/* ---- metrics ---------------------------------------------------------------------------- */

int cmd_metrics(struct ctx *c, int argc, char **argv)
{
	char *text = NULL;
	int r;

	if ((r = ctl_no_operands(c, argc, argv, 0)) != CTL_CONTINUE)
		return r;
	if ((r = connect_agent(c)) != 0)
		return r;
	if ((r = mtls_agent_metrics(c->agent, &text)) != 0)
		return agent_error(c, r);
	fputs(text, stdout);
	free(text);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "mtls-agentctl: metrics: cannot write: %s\n", strerror(errno));
		return EXIT_FAIL;
	}
	return EXIT_OK;
}

/* ---- renew / reload ---------------------------------------------------------------------- */

int cmd_renew(struct ctx *c, int argc, char **argv)
{
	const char *name;
	uint64_t not_after = 0;
	char when[40], *msg = NULL;
	int r;

	if ((r = ctl_simple_options(c, argc, argv, 0)) != CTL_CONTINUE)
		return r;
	if ((name = identity_arg(c, argc, argv)) == NULL)
		return EXIT_USAGE;
	if ((r = connect_agent(c)) != 0)
		return r;
	if ((r = mtls_agent_renew(c->agent, name, &not_after, &msg)) != 0)
		return agent_error(c, r);
	fmt_epoch(not_after, when, sizeof(when));
	printf("renewed: %s; not after %s\n", msg != NULL ? msg : "ok", when);
	free(msg);
	return EXIT_OK;
}

int cmd_reload(struct ctx *c, int argc, char **argv)
{
	int r;

	if ((r = ctl_no_operands(c, argc, argv, 0)) != CTL_CONTINUE)
		return r;
	if ((r = connect_agent(c)) != 0)
		return r;
	if ((r = mtls_agent_reload(c->agent)) != 0)
		return agent_error(c, r);
	puts("configuration reloaded");
	return EXIT_OK;
}
