/* mtls-agentctl: the command table, global options, usage, and the helpers every command
 * shares (messages, option parsing). The commands live in ctl-keys.c, ctl-status.c and
 * ctl-check*.c. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/ctl.h"

struct command {
	const char *name;
	int (*run)(struct ctx *c, int argc, char **argv);
	const char *synopsis;
	const char *summary;
	const char *help;
};

static const struct command *find_command(const char *name);

/* ---- messages ------------------------------------------------------------------------ */

/* "mtls-agentctl: CMD: message", and with help the pointer to the command's --help. */
static void vmessage(const struct ctx *c, int help, const char *fmt, va_list ap)
{
	fputs(PROG ": ", stderr);
	if (c->cmd != NULL)
		fprintf(stderr, "%s: ", c->cmd);
	vfprintf(stderr, fmt, ap);
	if (!help)
		fputc('\n', stderr);
	else if (c->cmd != NULL)
		fprintf(stderr, " (see '" PROG " %s --help')\n", c->cmd);
	else
		fputs(" (see '" PROG " --help')\n", stderr);
}

void errmsg(const struct ctx *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmessage(c, 0, fmt, ap);
	va_end(ap);
}

int usage_error(const struct ctx *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmessage(c, 1, fmt, ap);
	va_end(ap);
	return EXIT_USAGE;
}

/* The one operand of most subcommands: an identity NAME and nothing after it. */
const char *identity_arg(const struct ctx *c, int argc, char **argv)
{
	if (optind == argc) {
		usage_error(c, "missing identity NAME");
		return NULL;
	}
	if (optind + 1 != argc) {
		usage_error(c, "unexpected argument '%s'", argv[optind + 1]);
		return NULL;
	}
	return argv[optind++];
}

/* Reports a library failure: the code's meaning, then the detail (the agent's own words). */
int agent_error(const struct ctx *c, int r)
{
	const char *what = mtls_agent_strerror(r), *detail = mtls_agent_last_error();

	if (r == MTLS_AGENT_ERR_CONNECT || strcmp(what, detail) == 0)
		errmsg(c, "%s", detail);
	else
		errmsg(c, "%s: %s", what, detail);
	return EXIT_FAIL;
}

int connect_agent(struct ctx *c)
{
	int r;

	if ((r = mtls_agent_connect(c->socket, &c->agent)) != 0)
		return agent_error(c, r);
	return 0;
}

/* getopt_long's complaint, in our one-line form. */
int bad_option(const struct ctx *c, int ch, char **argv)
{
	const char *opt = argv[optind - 1];

	if (ch == ':')
		return usage_error(c, "option '%s' needs an argument", opt);
	if (optopt != 0)
		return usage_error(c, "unknown option '-%c'", optopt);
	return usage_error(c, "unknown option '%s'", opt);
}

int command_help(const struct ctx *c)
{
	const struct command *cmd = find_command(c->cmd);

	printf("Usage: %s [-s SOCKET] %s%s%s\n\n%s", PROG, cmd->name,
	       cmd->synopsis[0] != '\0' ? " " : "", cmd->synopsis, cmd->help);
	return EXIT_OK;
}

/*
 * getopt_long over opts, which hold --help, maybe --json ('j') and maybe one option
 * whose value goes to *value. CTL_CONTINUE, or the exit status.
 */
static int parse_options(struct ctx *c, int argc, char **argv, const char *optstring,
			 const struct option *opts, const char **value)
{
	int ch;

	while ((ch = getopt_long(argc, argv, optstring, opts, NULL)) != -1) {
		if (ch == 'h')
			return command_help(c);
		if (ch == ':' || ch == '?')
			return bad_option(c, ch, argv);
		if (ch == 'j')
			c->json = 1;
		else
			*value = optarg;
	}
	return CTL_CONTINUE;
}

int ctl_simple_options(struct ctx *c, int argc, char **argv, int json)
{
	static const struct option with_json[] = {
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};

	/* Without json, "--json" is unknown: with_json + 1 is the table without it. */
	return parse_options(c, argc, argv, ":h", json ? with_json : with_json + 1, NULL);
}

int ctl_value_option(struct ctx *c, int argc, char **argv, const char *name, int letter,
		     const char **value)
{
	const struct option opts[] = {
		{name, required_argument, NULL, letter},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char optstring[] = {':', 'h', (char)letter, ':', '\0'};

	return parse_options(c, argc, argv, optstring, opts, value);
}

int ctl_no_operands(struct ctx *c, int argc, char **argv, int json)
{
	int r;

	if ((r = ctl_simple_options(c, argc, argv, json)) != CTL_CONTINUE)
		return r;
	if (optind != argc)
		return usage_error(c, "unexpected argument '%s'", argv[optind]);
	return CTL_CONTINUE;
}

/* ---- main ------------------------------------------------------------------------------- */

static const struct command commands[] = {
	{"list", cmd_list, "[--json]", "identities this user may use",
	 "Lists the identities this user may use: key type, certificate end, subject and\n"
	 "signature schemes.\n\n"
	 "  --json      print a JSON array\n"},
	{"status", cmd_status, "[--json]", "agent, keystore and identity state",
	 "Shows the agent's version and uptime and the state of each identity (and, for\n"
	 "administrators, each keystore).\n\n"
	 "  --json      print a JSON object\n"},
	{"metrics", cmd_metrics, "", "metrics in the Prometheus text format",
	 "Prints the agent's metrics in the Prometheus text exposition format (for\n"
	 "node_exporter's textfile collector, or a check). Administrators see every\n"
	 "series; others the agent-wide ones and those of the identities they may use.\n"
	 "docs/METRICS.md lists them.\n"},
	{"cert", cmd_cert, "NAME [--json]", "certificate chain of an identity, as PEM",
	 "Prints the certificate chain of identity NAME as PEM, leaf first.\n\n"
	 "  --json      print {\"name\":..,\"chain\":[PEM strings]}\n"},
	{"keyref", cmd_keyref, "NAME [-o FILE]", "key reference file for OpenSSL applications",
	 "Writes a key reference file (PEM \"MTLS AGENT KEY\") for identity NAME: its name\n"
	 "and current public key, no secret. Give it to an application as its private key\n"
	 "file (curl --key, mosquitto --key) with the mtlsagent OpenSSL provider loaded.\n\n"
	 "  -o, --out FILE   write there (atomically, mode 0644) instead of standard output\n"},
	{"sign", cmd_sign, "NAME --scheme S [--in FILE] [--out FILE] [--digest]",
	 "sign data with an identity's key",
	 "Signs data with identity NAME's key, as a TLS handshake would. The identity's\n"
	 "sign-policy decides what it signs: tls-client accepts only TLS client handshake\n"
	 "content.\n\n"
	 "  -S, --scheme S   TLS SignatureScheme: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256,\n"
	 "                   rsa_pkcs1_sha256, ed25519, ... or a code point 0xNNNN\n"
	 "  -i, --in FILE    data to sign (default: standard input; at most 128 KiB)\n"
	 "  -o, --out FILE   where to write the signature (raw bytes: DER ECDSA-Sig-Value,\n"
	 "                   RSA or Ed25519 signature); '-' for standard output, which is\n"
	 "                   refused by default when it is a terminal\n"
	 "  -d, --digest     the input is a precomputed hash (sign-policy digest or any)\n"},
	{"check", cmd_check, "[NAME] [-c CONFIG] [--ca FILE] [--json]",
	 "what needs attention, and how to fix it",
	 "The operator's doctor. Prints \"SUBJECT: ok\" or one line per problem, \"what is\n"
	 "wrong — how to fix it\", for:\n"
	 "  socket      the agent answers; the socket's owner and mode, its directory not\n"
	 "              writable by others\n"
	 "  keystore    reachable, PIN accepted, no TPM lockout (states shown to admins)\n"
	 "  identities  each one you may use (or NAME): key present, RSA >= 2048 bits,\n"
	 "              certificate present and matching the key, clientAuth and\n"
	 "              digitalSignature, valid now (warns under 7 days), chain in order\n"
	 "              with verifying signatures (up to --ca when given)\n"
	 "  config      with the agent's configuration, read by the agent's own reader:\n"
	 "              what it refuses or warns about (FILE:LINE), its permissions, the\n"
	 "              PIN files' permissions, whether every allowed user and group can\n"
	 "              open the socket, and whether the socket is open wider than they need\n"
	 "Exit status 1 when any problem needs attention (warnings do not count).\n\n"
	 "  -c, --config FILE  the agent's configuration; by default " MTLS_AGENT_DEFAULT_CONFIG
	 "\n"
	 "                     when it is readable and names the socket checked\n"
	 "      --ca FILE      trust anchors (PEM) the chains must verify up to\n"
	 "      --json         print {\"socket\":..,\"config\":..,\"agent_reachable\":..,\n"
	 "                     \"checks\":[{\"kind\":..,\"name\":..,\"ok\":..,\"problems\":[..],\n"
	 "                     \"warnings\":[..]}],\"identities\":[{\"name\":..,\"ok\":..,\n"
	 "                     \"problems\":[..],\"warnings\":[..]}],\"ok\":..}\n"},
	{"keygen", cmd_keygen, "NAME --type TYPE", "admin: new key in the keystore",
	 "Administrators: creates a new key for identity NAME inside its keystore and prints\n"
	 "its public key as PEM. If NAME already has a certified key, the new key stays\n"
	 "pending until a certificate for it is imported.\n\n"
	 "  -t, --type TYPE  ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096 or ed25519\n"},
	{"csr", cmd_csr, "NAME --subject DN [--san SAN]... [-o FILE]", "admin: certificate request",
	 "Administrators: prints a PKCS#10 request for NAME's newest key, signed inside the\n"
	 "keystore, asking for clientAuth and digitalSignature.\n\n"
	 "  -S, --subject DN  \"/CN=dev1/O=Example\" or \"CN=dev1,O=Example\"\n"
	 "  -a, --san SAN     subjectAltName: DNS:host, IP:192.0.2.1, URI:..., email:...\n"
	 "                    (repeatable)\n"
	 "  -o, --out FILE    write the PEM there instead of standard output\n"},
	{"import-cert", cmd_import_cert, "NAME FILE", "admin: install a certificate",
	 "Administrators: installs the certificate chain in FILE (PEM, leaf first, or one\n"
	 "DER certificate; '-' for standard input) for identity NAME. The agent checks it\n"
	 "matches one of NAME's keys and is usable for TLS client authentication.\n"},
	{"renew", cmd_renew, "NAME", "admin: renew a certificate now",
	 "Administrators: renews identity NAME's certificate now (renew = cmp or est in its\n"
	 "configuration), with a new key in the keystore unless rotate-key = no, and waits\n"
	 "for the outcome. The old certificate stays in use unless the new one is installed.\n"},
	{"reload", cmd_reload, "", "admin: re-read the configuration",
	 "Administrators: makes the agent re-read its configuration (like SIGHUP). A\n"
	 "configuration that does not load is refused and the old one stays.\n"},
};

static const struct command *find_command(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

static void usage(FILE *f)
{
	size_t i;

	fprintf(f,
		"Usage: %s [-s SOCKET] [--json] COMMAND [ARGS]\n\n"
		"Talks to mtls-agent, which keeps TLS client keys in a TPM or PKCS#11 token.\n\n"
		"Commands:\n",
		PROG);
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
	fprintf(f,
		"\nOptions:\n"
		"  -s, --socket SOCKET  agent socket (default: $MTLS_AGENT_SOCK, else\n"
		"                       %s)\n"
		"      --json           JSON output for list, status, cert and check\n"
		"  -h, --help           show this help\n"
		"      --version        show the version\n\n"
		"'%s COMMAND --help' describes a command. Exit status: 0 success, 1 failure,\n"
		"2 usage error.\n",
		MTLS_AGENT_DEFAULT_SOCKET, PROG);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"socket", required_argument, NULL, 's'},
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	const struct command *cmd;
	struct ctx c;
	int ch, ret;

	memset(&c, 0, sizeof(c));
	opterr = 0;
	/* '+': global options end at the command name; the command parses the rest. */
	while ((ch = getopt_long(argc, argv, "+:s:h", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			c.socket = optarg;
			break;
		case 'j':
			c.json = 1;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		case 'V':
			printf("%s %s\n", PROG, PACKAGE_VERSION);
			return EXIT_OK;
		default:
			return bad_option(&c, ch, argv);
		}
	}
	if (optind == argc)
		return usage_error(&c, "missing command");
	if ((cmd = find_command(argv[optind])) == NULL)
		return usage_error(&c, "unknown command '%s'", argv[optind]);
	c.cmd = cmd->name;
	argc -= optind;
	argv += optind;
	/* 0 makes glibc's getopt start afresh, argv[0] being the command name. */
	optind = 0;
	ret = cmd->run(&c, argc, argv);
	mtls_agent_close(c.agent);
	if (ret == EXIT_OK && (fflush(stdout) != 0 || ferror(stdout))) {
		errmsg(&c, "cannot write output: %s", strerror(errno));
		ret = EXIT_FAIL;
	}
	return ret;
}
