#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/keyref.h"
#include "common/proto.h"
#include "common/scheme.h"
#include "common/util.h"
#include "mtls-agent/client.h"

#define PROG "mtls-agentctl"

#ifndef MTLS_AGENT_DEFAULT_SOCKET
#define MTLS_AGENT_DEFAULT_SOCKET "/run/mtls-agent/agent.sock"
#endif
#ifndef MTLS_AGENT_DEFAULT_CONFIG
#define MTLS_AGENT_DEFAULT_CONFIG "/etc/mtls-agent/agent.conf"
#endif

#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2

/* A certificate this close to its end is reported by `check` as a warning. */
#define EXPIRY_WARN_DAYS 7

struct ctx {
	const char *socket; /* NULL: the library's default */
	int json;
	const char *cmd;
	mtls_agent *agent;
};

struct command {
	const char *name;
	int (*run)(struct ctx *c, int argc, char **argv);
	const char *synopsis;
	const char *summary;
	const char *help;
};

static const struct command *find_command(const char *name);

/* ---- messages ------------------------------------------------------------------------ */

/* One line on stderr: "mtls-agentctl: CMD: message". */
static void errmsg(const struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void errmsg(const struct ctx *c, const char *fmt, ...)
{
	va_list ap;

	fputs(PROG ": ", stderr);
	if (c->cmd != NULL)
		fprintf(stderr, "%s: ", c->cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int usage_error(const struct ctx *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int usage_error(const struct ctx *c, const char *fmt, ...)
{
	va_list ap;

	fputs(PROG ": ", stderr);
	if (c->cmd != NULL)
		fprintf(stderr, "%s: ", c->cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (c->cmd != NULL)
		fprintf(stderr, " (see '" PROG " %s --help')\n", c->cmd);
	else
		fputs(" (see '" PROG " --help')\n", stderr);
	return EXIT_USAGE;
}

/* The one operand of most subcommands: an identity NAME and nothing after it. */
static const char *identity_arg(const struct ctx *c, int argc, char **argv)
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
static int agent_error(const struct ctx *c, int r)
{
	const char *what = mtls_agent_strerror(r), *detail = mtls_agent_last_error();

	if (r == MTLS_AGENT_ERR_CONNECT || strcmp(what, detail) == 0)
		errmsg(c, "%s", detail);
	else
		errmsg(c, "%s: %s", what, detail);
	return EXIT_FAIL;
}

static int connect_agent(struct ctx *c)
{
	int r;

	if ((r = mtls_agent_connect(c->socket, &c->agent)) != 0)
		return agent_error(c, r);
	return 0;
}

/* getopt_long's complaint, in our one-line form. */
static int bad_option(const struct ctx *c, int ch, char **argv)
{
	const char *opt = argv[optind - 1];

	if (ch == ':')
		return usage_error(c, "option '%s' needs an argument", opt);
	if (optopt != 0)
		return usage_error(c, "unknown option '-%c'", optopt);
	return usage_error(c, "unknown option '%s'", opt);
}

static int command_help(const struct command *cmd)
{
	printf("Usage: %s [-s SOCKET] %s%s%s\n\n%s", PROG, cmd->name,
	       cmd->synopsis[0] != '\0' ? " " : "", cmd->synopsis, cmd->help);
	return EXIT_OK;
}

/* ---- output helpers -------------------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at p (RFC 3629), or 0. */
static size_t utf8_len(const unsigned char *p)
{
	unsigned char c = p[0];

	if (c >= 0xc2 && c <= 0xdf)
		return (p[1] & 0xc0) == 0x80 ? 2 : 0;
	if (c >= 0xe0 && c <= 0xef) {
		unsigned char lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;

		return p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 ? 3 : 0;
	}
	if (c >= 0xf0 && c <= 0xf4) {
		unsigned char lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;

		return p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 && (p[3] & 0xc0) == 0x80
			   ? 4
			   : 0;
	}
	return 0;
}

/* A JSON string; bytes that are not valid UTF-8 become U+FFFD so the output always parses. */
static void json_str(const char *s)
{
	const unsigned char *p = (const unsigned char *)(s != NULL ? s : "");
	size_t n;

	putchar('"');
	while (*p != '\0') {
		if (*p == '"' || *p == '\\') {
			printf("\\%c", *p++);
		} else if (*p == '\n') {
			fputs("\\n", stdout);
			p++;
		} else if (*p < 0x20 || *p == 0x7f) {
			printf("\\u%04x", *p++);
		} else if (*p < 0x80) {
			putchar(*p++);
		} else if ((n = utf8_len(p)) > 0) {
			fwrite(p, 1, n, stdout);
			p += n;
		} else {
			fputs("\\ufffd", stdout);
			p++;
		}
	}
	putchar('"');
}

static void json_str_or_null(const char *s)
{
	if (s != NULL)
		json_str(s);
	else
		fputs("null", stdout);
}

/*
 * Text from the agent or from certificates, shown to a human: C0/C1 controls
 * and DEL become '?' so a name cannot drive the terminal.
 */
static void put_text(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	for (; *p != '\0'; p++) {
		if (*p < 0x20 || *p == 0x7f) {
			putchar('?');
		} else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
			putchar('?');
			p++;
		} else {
			putchar(*p);
		}
	}
}

static void fmt_epoch(uint64_t t, char *out, size_t len)
{
	struct tm tm;
	time_t tt = (time_t)t;

	if (t > (uint64_t)INT64_MAX / 2 || (uint64_t)tt != t || gmtime_r(&tt, &tm) == NULL ||
	    strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, len, "@%llu", (unsigned long long)t);
}

static void fmt_asn1_time(const ASN1_TIME *t, char *out, size_t len)
{
	struct tm tm;

	if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1 ||
	    strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, len, "(unreadable time)");
}

static void scheme_str(uint16_t code, char *out, size_t len)
{
	const char *name = mtls_agent_scheme_name(code);

	if (name != NULL)
		snprintf(out, len, "%s", name);
	else
		snprintf(out, len, "0x%04x", code);
}

/* Writes DER as PEM with the given label to stdout or a file. Returns 0 or -1 (errno). */
static int write_pem(const char *path, const char *label, const uint8_t *der, size_t len)
{
	FILE *f = stdout;
	int ok;

	errno = 0;
	if (path != NULL && strcmp(path, "-") != 0 && (f = fopen(path, "w")) == NULL)
		return -1;
	ok = PEM_write(f, label, "", der, (long)len) > 0;
	if (f != stdout) {
		if (fclose(f) != 0)
			ok = 0;
	} else if (fflush(f) != 0) {
		ok = 0;
	}
	if (!ok && errno == 0)
		errno = EIO;
	return ok ? 0 : -1;
}

/* DER as a PEM string (caller frees), or NULL. */
static char *pem_string(const char *label, const uint8_t *der, size_t len)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *s = NULL, *p;
	long n;

	if (bio == NULL)
		return NULL;
	if (PEM_write_bio(bio, label, "", der, (long)len) > 0 &&
	    (n = BIO_get_mem_data(bio, &p)) > 0 && (s = malloc((size_t)n + 1)) != NULL) {
		memcpy(s, p, (size_t)n);
		s[n] = '\0';
	}
	BIO_free(bio);
	return s;
}

/* Reads all of f, at most max bytes. Returns 0 or -1 with errno (EFBIG when over max). */
static int read_stream(FILE *f, size_t max, uint8_t **data, size_t *len)
{
	uint8_t *p, *np;
	size_t n = 0, cap = 4096, got;

	*data = NULL;
	*len = 0;
	if ((p = malloc(cap)) == NULL)
		return -1;
	for (;;) {
		if (n == cap) {
			if (cap > max) {
				free(p);
				errno = EFBIG;
				return -1;
			}
			cap *= 2;
			if ((np = realloc(p, cap)) == NULL) {
				free(p);
				return -1;
			}
			p = np;
		}
		got = fread(p + n, 1, cap - n, f);
		n += got;
		if (n > max) {
			free(p);
			errno = EFBIG;
			return -1;
		}
		if (got == 0) {
			if (ferror(f)) {
				free(p);
				errno = EIO;
				return -1;
			}
			break;
		}
	}
	*data = p;
	*len = n;
	return 0;
}

/* A file, or stdin for "-". */
static int read_input(const char *path, size_t max, uint8_t **data, size_t *len)
{
	if (path == NULL || strcmp(path, "-") == 0)
		return read_stream(stdin, max, data, len);
	return read_file(path, max, data, len);
}

/* ---- keys and certificates ------------------------------------------------------------- */

/* Decodes a DER SubjectPublicKeyInfo; refuses trailing bytes. */
static EVP_PKEY *spki_decode(const uint8_t *der, size_t len)
{
	const unsigned char *p = der;
	EVP_PKEY *pk;

	if (der == NULL || len == 0 || len > LONG_MAX)
		return NULL;
	pk = d2i_PUBKEY(NULL, &p, (long)len);
	if (pk != NULL && p != der + len) {
		EVP_PKEY_free(pk);
		pk = NULL;
	}
	return pk;
}

static X509 *cert_decode(const uint8_t *der, size_t len)
{
	const unsigned char *p = der;
	X509 *x;

	if (der == NULL || len == 0 || len > LONG_MAX)
		return NULL;
	x = d2i_X509(NULL, &p, (long)len);
	if (x != NULL && p != der + len) {
		X509_free(x);
		x = NULL;
	}
	return x;
}

struct keyinfo {
	const char *type; /* "ec", "rsa", "ed25519", "none" or OpenSSL's short name */
	int bits;
	char curve[64]; /* "P-256", or OpenSSL's group name; empty if not EC */
	char desc[80];	/* "EC P-256", "RSA 2048" */
	char spki_sha256[2 * 32 + 1];
};

/* What the key is, taken from the SPKI itself when it parses, else from the record. */
static void key_describe(const struct mtls_agent_identity *id, struct keyinfo *ki)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char group[64];
	const char *nist;
	EVP_PKEY *pk;

	memset(ki, 0, sizeof(*ki));
	ki->bits = (int)id->key_bits;
	switch (id->key_type) {
	case MTLS_AGENT_KEY_EC:
		ki->type = "ec";
		break;
	case MTLS_AGENT_KEY_RSA:
		ki->type = "rsa";
		break;
	case MTLS_AGENT_KEY_ED25519:
		ki->type = "ed25519";
		break;
	default:
		ki->type = "none";
		snprintf(ki->desc, sizeof(ki->desc), "none (no key yet)");
		return;
	}
	if (EVP_Digest(id->spki, id->spki_len, md, &mdlen, EVP_sha256(), NULL) == 1 && mdlen == 32)
		hex_encode(md, mdlen, ki->spki_sha256);
	if ((pk = spki_decode(id->spki, id->spki_len)) != NULL) {
		ki->bits = EVP_PKEY_get_bits(pk);
		if (EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC &&
		    EVP_PKEY_get_group_name(pk, group, sizeof(group), NULL) == 1) {
			nist = EC_curve_nid2nist(OBJ_sn2nid(group));
			snprintf(ki->curve, sizeof(ki->curve), "%s", nist != NULL ? nist : group);
		}
		EVP_PKEY_free(pk);
	}
	if (id->key_type == MTLS_AGENT_KEY_EC && ki->curve[0] != '\0')
		snprintf(ki->desc, sizeof(ki->desc), "EC %s", ki->curve);
	else if (id->key_type == MTLS_AGENT_KEY_EC)
		snprintf(ki->desc, sizeof(ki->desc), "EC %d bits", ki->bits);
	else if (id->key_type == MTLS_AGENT_KEY_RSA)
		snprintf(ki->desc, sizeof(ki->desc), "RSA %d", ki->bits);
	else
		snprintf(ki->desc, sizeof(ki->desc), "Ed25519");
}

/*
 * A name in RFC 2253 syntax but in certificate order ("CN=dev1,O=Example"), the
 * form `csr --subject` takes; UTF-8 kept. Caller frees; NULL on failure.
 */
static char *name_string(const X509_NAME *name)
{
	const unsigned long flags = XN_FLAG_RFC2253 & ~XN_FLAG_DN_REV & ~ASN1_STRFLGS_ESC_MSB;
	BIO *bio = BIO_new(BIO_s_mem());
	char *s = NULL, *p;
	long n;

	if (bio == NULL)
		return NULL;
	if (X509_NAME_print_ex(bio, name, 0, flags) >= 0 && (n = BIO_get_mem_data(bio, &p)) >= 0 &&
	    (s = malloc((size_t)n + 1)) != NULL) {
		memcpy(s, p, (size_t)n);
		s[n] = '\0';
	}
	BIO_free(bio);
	return s;
}

/* Subject of the identity's leaf certificate (caller frees), or NULL when there is none. */
static char *leaf_subject(const struct mtls_agent_identity *id)
{
	X509 *x;
	char *s;

	if (id->chain_len == 0 || (x = cert_decode(id->chain[0].der, id->chain[0].len)) == NULL)
		return NULL;
	s = name_string(X509_get_subject_name(x));
	X509_free(x);
	return s;
}

/* ---- list ------------------------------------------------------------------------------- */

static void list_print(const struct mtls_agent_identity *id)
{
	struct keyinfo ki;
	char when[40], sch[32];
	char *subject;
	size_t i;

	key_describe(id, &ki);
	subject = leaf_subject(id);
	put_text(id->name);
	printf("\n  key:       %s\n", ki.desc);
	if (id->not_after != 0) {
		fmt_epoch(id->not_after, when, sizeof(when));
		printf("  not after: %s\n", when);
	} else {
		printf("  not after: (no certificate)\n");
	}
	if (subject != NULL) {
		fputs("  subject:   ", stdout);
		put_text(subject);
		putchar('\n');
	}
	fputs("  schemes:  ", stdout);
	for (i = 0; i < id->n_schemes; i++) {
		scheme_str(id->schemes[i], sch, sizeof(sch));
		printf(" %s", sch);
	}
	if (id->n_schemes == 0)
		fputs(" (none)", stdout);
	putchar('\n');
	free(subject);
}

static void list_json(const struct mtls_agent_identity *id)
{
	struct keyinfo ki;
	char when[40], sch[32];
	char *subject;
	size_t i;

	key_describe(id, &ki);
	subject = leaf_subject(id);
	fputs("{\"name\":", stdout);
	json_str(id->name);
	fputs(",\"key\":", stdout);
	json_str(ki.desc);
	fputs(",\"key_type\":", stdout);
	json_str(ki.type);
	printf(",\"key_bits\":%d,\"curve\":", ki.bits);
	json_str_or_null(ki.curve[0] != '\0' ? ki.curve : NULL);
	fputs(",\"spki_sha256\":", stdout);
	json_str_or_null(ki.spki_sha256[0] != '\0' ? ki.spki_sha256 : NULL);
	fputs(",\"not_after\":", stdout);
	if (id->not_after != 0) {
		fmt_epoch(id->not_after, when, sizeof(when));
		json_str(when);
		printf(",\"not_after_epoch\":%llu", (unsigned long long)id->not_after);
	} else {
		fputs("null,\"not_after_epoch\":null", stdout);
	}
	fputs(",\"subject\":", stdout);
	json_str_or_null(subject);
	printf(",\"chain_length\":%zu,\"schemes\":[", id->chain_len);
	for (i = 0; i < id->n_schemes; i++) {
		scheme_str(id->schemes[i], sch, sizeof(sch));
		if (i > 0)
			putchar(',');
		json_str(sch);
	}
	fputs("]}", stdout);
	free(subject);
}

static int cmd_list(struct ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct mtls_agent_identity *ids = NULL;
	size_t n = 0, i;
	int ch, r;

	while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (ch) {
		case 'j':
			c->json = 1;
			break;
		case 'h':
			return command_help(find_command(c->cmd));
		default:
			return bad_option(c, ch, argv);
		}
	}
	if (optind != argc)
		return usage_error(c, "unexpected argument '%s'", argv[optind]);
	if ((r = connect_agent(c)) != 0)
		return r;
	if ((r = mtls_agent_list(c->agent, &ids, &n)) != 0)
		return agent_error(c, r);
	if (c->json)
		putchar('[');
	for (i = 0; i < n; i++) {
		if (c->json) {
			if (i > 0)
				putchar(',');
			list_json(&ids[i]);
		} else {
			if (i > 0)
				putchar('\n');
			list_print(&ids[i]);
		}
	}
	if (c->json)
		puts("]");
	else if (n == 0)
		puts("(no identities for this user)");
	mtls_agent_identities_free(ids, n);
	return EXIT_OK;
}

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

static int cmd_status(struct ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct mtls_agent_status *st = NULL;
	int ch, r;

	while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (ch) {
		case 'j':
			c->json = 1;
			break;
		case 'h':
			return command_help(find_command(c->cmd));
		default:
			return bad_option(c, ch, argv);
		}
	}
	if (optind != argc)
		return usage_error(c, "unexpected argument '%s'", argv[optind]);
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

static int cmd_metrics(struct ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	char *text = NULL;
	int ch, r;

	while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (ch) {
		case 'h':
			return command_help(find_command(c->cmd));
		default:
			return bad_option(c, ch, argv);
		}
	}
	if (optind != argc)
		return usage_error(c, "unexpected argument '%s'", argv[optind]);
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

/* ---- cert ------------------------------------------------------------------------------- */

static int cmd_cert(struct ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct mtls_agent_cert *chain = NULL;
	const char *name;
	size_t n = 0, i;
	char *pem;
	int ch, r, ret = EXIT_FAIL;

	while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (ch) {
		case 'j':
			c->json = 1;
			break;
		case 'h':
			return command_help(find_command(c->cmd));
		default:
			return bad_option(c, ch, argv);
		}
	}
	if ((name = identity_arg(c, argc, argv)) == NULL)
		return EXIT_USAGE;
	if ((r = connect_agent(c)) != 0)
		return r;
	if ((r = mtls_agent_get_chain(c->agent, name, &chain, &n)) != 0)
		return agent_error(c, r);
	if (n == 0) {
		errmsg(c, "identity \"%s\" has no certificate yet", name);
		goto out;
	}
	if (c->json) {
		fputs("{\"name\":", stdout);
		json_str(name);
		fputs(",\"chain\":[", stdout);
	}
	for (i = 0; i < n; i++) {
		if (!c->json) {
			if (write_pem(NULL, PEM_STRING_X509, chain[i].der, chain[i].len) != 0) {
				errmsg(c, "cannot write output: %s", strerror(errno));
				goto out;
			}
			continue;
		}
		if ((pem = pem_string(PEM_STRING_X509, chain[i].der, chain[i].len)) == NULL) {
			errmsg(c, "out of memory");
			goto out;
		}
		if (i > 0)
			putchar(',');
		json_str(pem);
		free(pem);
	}
	if (c->json)
		puts("]}");
	ret = EXIT_OK;
out:
	mtls_agent_chain_free(chain, n);
	return ret;
}

/* ---- sign ------------------------------------------------------------------------------- */

/* A TLS SignatureScheme name or 0xNNNN; 0 when neither. */
static uint16_t parse_scheme(const char *s)
{
	unsigned long v;
	char *end;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X') && s[2] != '\0') {
		errno = 0;
		v = strtoul(s + 2, &end, 16);
		if (errno != 0 || *end != '\0' || v == 0 || v > 0xffff || s[2] == '-' ||
		    s[2] == '+' || s[2] == ' ')
			return 0;
		return (uint16_t)v;
	}
	return mtls_agent_scheme_from_name(s);
}

static int cmd_sign(struct ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"scheme", required_argument, NULL, 'S'}, /* TLS SignatureScheme */
	    {"in", required_argument, NULL, 'i'},
	    {"out", required_argument, NULL, 'o'},
	    {"digest", no_argument, NULL, 'd'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *name, *scheme_arg = NULL, *in = NULL, *out = NULL;
	uint8_t *data = NULL, *sig = NULL;
	size_t len = 0, sig_len = 0;
	unsigned flags = 0;
	uint16_t scheme;
	FILE *f = NULL;
	int ch, r, ret = EXIT_FAIL;

	while ((ch = getopt_long(argc, argv, ":hS:i:o:d", opts, NULL)) != -1) {
		switch (ch) {
		case 'S':
			scheme_arg = optarg;
			break;
		case 'i':
			in = optarg;
			break;
		case 'o':
			out = optarg;
			break;
		case 'd':
			flags |= MTLS_AGENT_SIGN_DIGEST;
			break;
		case 'h':
			return command_help(find_command(c->cmd));
		default:
			return bad_option(c, ch, argv);
		}
	}
	if ((name = identity_arg(c, argc, argv)) == NULL)
		return EXIT_USAGE;
	if (scheme_arg == NULL)
		return usage_error(c, "missing --scheme");
	if ((scheme = parse_scheme(scheme_arg)) == 0)
		return usage_error(c,
				   "unknown scheme '%s': use a TLS name such as "
				   "ecdsa_secp256r1_sha256 or rsa_pss_rsae_sha256, or 0xNNNN",
				   scheme_arg);
	/* A signature is binary: only an explicit "--out -" sends it to a terminal. */
	if (out == NULL && isatty(STDOUT_FILENO))
		return usage_error(c, "refusing to write a binary signature to a terminal; use "
				      "--out FILE");
	if (read_input(in, PROTO_MAX_SIGN_INPUT, &data, &len) != 0) {
		if (errno == EFBIG)
			errmsg(c, "input is over the %u-byte limit", PROTO_MAX_SIGN_INPUT);
		else
			errmsg(c, "cannot read %s: %s", in != NULL ? in : "standard input",
			       strerror(errno));
		goto out;
	}
	if ((r = connect_agent(c)) != 0)
		goto out;
	if ((r = mtls_agent_sign(c->agent, name, scheme, flags, NULL, data, len, &sig, &sig_len)) !=
	    0) {
		agent_error(c, r);
		goto out;
	}
	/* The output file is opened only now, so a refusal leaves it untouched. */
	if (out != NULL && strcmp(out, "-") != 0)
		f = fopen(out, "wb");
	else
		f = stdout;
	if (f == NULL || fwrite(sig, 1, sig_len, f) != sig_len ||
	    (f != stdout ? fclose(f) : fflush(f)) != 0) {
		errmsg(c, "cannot write %s: %s", f != stdout ? out : "standard output",
		       strerror(errno));
		f = NULL;
		goto out;
	}
	f = NULL;
	ret = EXIT_OK;
out:
	if (f != NULL && f != stdout)
		fclose(f);
	if (data != NULL)
		wipe(data, len);
	free(data);
	free(sig);
	return ret;
}

/* ---- keygen / csr / import-cert / reload ---------------------------------------------- */

/* As KEYGEN spells them (docs/PROTOCOL.md); checked here so a typo is a usage error. */
static const char *const key_types[] = {
    "ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519",
};

static int cmd_keygen(struct ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"type", required_argument, NULL, 't'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *name, *type = NULL;
	uint8_t *spki = NULL;
	size_t len = 0, i;
	int ch, r, ret = EXIT_FAIL;

	while ((ch = getopt_long(argc, argv, ":ht:", opts, NULL)) != -1) {
		switch (ch) {
		case 't':
			type = optarg;
			break;
		case 'h':
			return command_help(find_command(c->cmd));
		default:
			return bad_option(c, ch, argv);
		}
	}
	if ((name = identity_arg(c, argc, argv)) == NULL)
		return EXIT_USAGE;
	if (type == NULL)
		return usage_error(c, "missing --type");
	for (i = 0; i < sizeof(key_types) / sizeof(key_types[0]); i++)
		if (strcmp(type, key_types[i]) == 0)
			break;
	if (i == sizeof(key_types) / sizeof(key_types[0]))
		return usage_error(c,
				   "unknown key type '%s': use ec-p256, ec-p384, rsa-2048, "
				   "rsa-3072, rsa-4096 or ed25519",
				   type);
	if ((r = connect_agent(c)) != 0)
		return r;
	if ((r = mtls_agent_keygen(c->agent, name, type, &spki, &len)) != 0)
		return agent_error(c, r);
	if (write_pem(NULL, PEM_STRING_PUBLIC, spki, len) != 0) {
		errmsg(c, "cannot write output: %s", strerror(errno));
		goto out;
	}
	ret = EXIT_OK;
out:
	free(spki);
	return ret;
}

static int cmd_csr(struct ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"subject", required_argument, NULL, 'S'},
	    {"san", required_argument, NULL, 'a'},
	    {"out", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *name, *subject = NULL, *out = NULL;
	const char **sans = NULL, **ns;
	uint8_t *csr = NULL;
	size_t n_sans = 0, len = 0;
	int ch, r, ret = EXIT_FAIL;

	while ((ch = getopt_long(argc, argv, ":hS:a:o:", opts, NULL)) != -1) {
		switch (ch) {
		case 'S':
			subject = optarg;
			break;
		case 'a':
			if ((ns = realloc(sans, (n_sans + 1) * sizeof(*sans))) == NULL) {
				errmsg(c, "out of memory");
				goto out;
			}
			sans = ns;
			sans[n_sans++] = optarg;
			break;
		case 'o':
			out = optarg;
			break;
		case 'h':
			ret = command_help(find_command(c->cmd));
			goto out;
		default:
			ret = bad_option(c, ch, argv);
			goto out;
		}
	}
	ret = EXIT_USAGE;
	if ((name = identity_arg(c, argc, argv)) == NULL)
		goto out;
	if (subject == NULL || subject[0] == '\0') {
		usage_error(c, "missing --subject, e.g. --subject /CN=dev1/O=Example");
		goto out;
	}
	ret = EXIT_FAIL;
	if ((r = connect_agent(c)) != 0)
		goto out;
	if ((r = mtls_agent_csr(c->agent, name, subject, sans, n_sans, &csr, &len)) != 0) {
		agent_error(c, r);
		goto out;
	}
	if (write_pem(out, PEM_STRING_X509_REQ, csr, len) != 0) {
		errmsg(c, "cannot write %s: %s", out != NULL ? out : "output", strerror(errno));
		goto out;
	}
	ret = EXIT_OK;
out:
	free(sans);
	free(csr);
	return ret;
}

static int cmd_keyref(struct ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"out", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct mtls_agent_identity *id = NULL;
	const char *name, *out = NULL;
	char *pem = NULL;
	size_t pem_len = 0;
	int ch, r, ret = EXIT_FAIL;

	while ((ch = getopt_long(argc, argv, ":ho:", opts, NULL)) != -1) {
		switch (ch) {
		case 'o':
			out = optarg;
			break;
		case 'h':
			return command_help(find_command(c->cmd));
		default:
			return bad_option(c, ch, argv);
		}
	}
	if ((name = identity_arg(c, argc, argv)) == NULL)
		return EXIT_USAGE;
	if ((r = connect_agent(c)) != 0)
		return r;
	if ((r = mtls_agent_get_identity(c->agent, name, &id)) != 0)
		return agent_error(c, r);
	if (id->spki_len == 0) {
		errmsg(c, "identity \"%s\" has no key yet; run keygen first", name);
		goto out;
	}
	if (keyref_encode_pem(name, id->spki, id->spki_len, &pem, &pem_len) != 0) {
		errmsg(c, "cannot encode the key reference");
		goto out;
	}
	/* A key reference holds no secret: world-readable like a certificate. Files are
	 * replaced atomically (a running application may be reading the old one);
	 * anything else, such as /dev/stdout, is written to directly. */
	if (out != NULL && strcmp(out, "-") != 0) {
		struct stat st;
		FILE *f;

		if (lstat(out, &st) == 0 && !S_ISREG(st.st_mode)) {
			if ((f = fopen(out, "w")) == NULL ||
			    fwrite(pem, 1, pem_len, f) != pem_len || fclose(f) != 0) {
				errmsg(c, "cannot write %s: %s", out, strerror(errno));
				goto out;
			}
		} else if (write_file_atomic(out, pem, pem_len, 0644) != 0) {
			errmsg(c, "cannot write %s: %s", out, strerror(errno));
			goto out;
		}
	} else if (fwrite(pem, 1, pem_len, stdout) != pem_len || fflush(stdout) != 0) {
		errmsg(c, "cannot write output: %s", strerror(errno));
		goto out;
	}
	ret = EXIT_OK;
out:
	free(pem);
	mtls_agent_identity_free(id);
	return ret;
}

static int cmd_import_cert(struct ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *name, *file;
	uint8_t *data = NULL;
	uint64_t not_after = 0;
	size_t len = 0;
	char when[40];
	int ch, r, ret = EXIT_FAIL;

	while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (ch) {
		case 'h':
			return command_help(find_command(c->cmd));
		default:
			return bad_option(c, ch, argv);
		}
	}
	if (argc - optind < 2)
		return usage_error(c, optind == argc ? "missing identity NAME and FILE"
						     : "missing certificate FILE");
	name = argv[optind++];
	file = argv[optind++];
	if (optind != argc)
		return usage_error(c, "unexpected argument '%s'", argv[optind]);
	/* Leave room in the request for the name and the framing. */
	if (read_input(file, PROTO_MAX_REQUEST - 1024, &data, &len) != 0) {
		if (errno == EFBIG)
			errmsg(c, "%s is over the %u-byte limit", file, PROTO_MAX_REQUEST - 1024);
		else
			errmsg(c, "cannot read %s: %s", file, strerror(errno));
		goto out;
	}
	if (len == 0) {
		errmsg(c, "%s is empty", file);
		goto out;
	}
	if ((r = connect_agent(c)) != 0)
		goto out;
	if ((r = mtls_agent_import_cert(c->agent, name, data, len, &not_after)) != 0) {
		agent_error(c, r);
		goto out;
	}
	fmt_epoch(not_after, when, sizeof(when));
	printf("imported: not after %s\n", when);
	ret = EXIT_OK;
out:
	free(data);
	return ret;
}

static int cmd_renew(struct ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *name;
	uint64_t not_after = 0;
	char when[40], *msg = NULL;
	int ch, r;

	while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (ch) {
		case 'h':
			return command_help(find_command(c->cmd));
		default:
			return bad_option(c, ch, argv);
		}
	}
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

static int cmd_reload(struct ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int ch, r;

	while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (ch) {
		case 'h':
			return command_help(find_command(c->cmd));
		default:
			return bad_option(c, ch, argv);
		}
	}
	if (optind != argc)
		return usage_error(c, "unexpected argument '%s'", argv[optind]);
	if ((r = connect_agent(c)) != 0)
		return r;
	if ((r = mtls_agent_reload(c->agent)) != 0)
		return agent_error(c, r);
	puts("configuration reloaded");
	return EXIT_OK;
}

/* ---- check ------------------------------------------------------------------------------ */

/*
 * `check` is the operator's doctor. Everything it looks at is a subject: the agent's
 * configuration file (when it can read it), the socket, the agent itself, each keystore and
 * each identity. Each subject gets "SUBJECT: ok" or one line per problem, "what is wrong —
 * how to fix it". Problems make the exit status 1; warnings (expiry soon, ...) do not.
 */

struct findings {
	char **problems;
	size_t n_problems;
	char **warnings;
	size_t n_warnings;
	int nomem;
};

static void add_finding(struct findings *fd, int warning, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void add_finding(struct findings *fd, int warning, const char *fmt, ...)
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

static void findings_free(struct findings *fd)
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

/* --- the agent's configuration, as far as the doctor needs it --- */

/*
 * A small, tolerant reader of the agent's configuration file: sections and
 * "key = value" lines, comments cut as the agent cuts them, only the keys the doctor
 * uses, everything else skipped. Not the agent's parser (agent/config.c): that one stops
 * at the first error and would bring libinih into the CLI, while the doctor wants every
 * finding it can make, also from a file the agent refuses. `mtls-agent -n` is the
 * agent's own verdict on the file.
 */
struct dconf_keystore {
	char *name;
	char *type;
	char *pin_file;
};

struct dconf_identity {
	char *name;
	char *keystore;
	char *allow_users;
	char *allow_groups;
	char *renew;	  /* renew = cmp / est */
	char *renew_auth; /* renew-auth = identity:NAME */
};

struct dconf {
	char *path;
	char *socket;	   /* NULL: the default */
	char *admin_users; /* NULL: root */
	char *admin_groups;
	struct dconf_keystore *ks;
	size_t n_ks;
	struct dconf_identity *ids;
	size_t n_ids;
};

static void dconf_free(struct dconf *dc)
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
static int dconf_read(const char *path, struct dconf **out)
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

/* --- the doctor's state --- */

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
	struct dconf *conf; /* NULL: no configuration read */
	const char *sock;   /* the socket checked */
	int reachable;
	int agent_uid_known;
	uid_t agent_uid; /* uid of whoever listens on the socket */
	struct mtls_agent_status *st;
	struct subject *subj;
	size_t n_subj;
	struct findings sink; /* where findings go when memory ran out */
};

/* The findings of a subject, created on first use; never NULL. */
static struct findings *subject(struct doctor *d, const char *kind, const char *name)
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

static const char *user_name(uid_t uid, char *buf, size_t len)
{
	struct passwd *pw = getpwuid(uid);

	if (pw != NULL)
		snprintf(buf, len, "%s", pw->pw_name);
	else
		snprintf(buf, len, "%lu", (unsigned long)uid);
	return buf;
}

static const char *group_name(gid_t gid, char *buf, size_t len)
{
	struct group *gr = getgrgid(gid);

	if (gr != NULL)
		snprintf(buf, len, "%s", gr->gr_name);
	else
		snprintf(buf, len, "%lu", (unsigned long)gid);
	return buf;
}

/* Name of uid's primary group. */
static const char *primary_group(uid_t uid, char *buf, size_t len)
{
	struct passwd *pw = getpwuid(uid);

	if (pw == NULL) {
		snprintf(buf, len, "GROUP");
		return buf;
	}
	return group_name(pw->pw_gid, buf, len);
}

/* Whether uid's primary or supplementary groups include gid. */
static int user_in_group(uid_t uid, gid_t gid)
{
	struct passwd *pw = getpwuid(uid);
	gid_t *groups = NULL, *ng;
	int n = 16, i, found = 0;

	if (pw == NULL)
		return 0;
	if (pw->pw_gid == gid)
		return 1;
	for (;;) {
		if ((ng = realloc(groups, (size_t)n * sizeof(*groups))) == NULL)
			break;
		groups = ng;
		if (getgrouplist(pw->pw_name, pw->pw_gid, groups, &n) >= 0) {
			for (i = 0; i < n && !found; i++)
				found = groups[i] == gid;
			break;
		}
		if (n > 65536)
			break;
	}
	free(groups);
	return found;
}

/* Whether uid has permission bit (2: write, 1: search) on a file with st's owner, group, mode. */
static int user_may(uid_t uid, const struct stat *st, mode_t mode, unsigned bit)
{
	if (uid == 0)
		return 1;
	if (uid == st->st_uid)
		return ((mode >> 6) & bit) != 0;
	if (user_in_group(uid, st->st_gid))
		return ((mode >> 3) & bit) != 0;
	return (mode & bit) != 0;
}

/* The same for the members of group gid (as members of that group, not otherwise). */
static int group_may(gid_t gid, const struct stat *st, mode_t mode, unsigned bit)
{
	if (gid == st->st_gid)
		return ((mode >> 3) & bit) != 0;
	return (mode & bit) != 0;
}

/* The uid of whoever listens on path (SO_PEERCRED: the agent, or systemd with socket
 * activation). Returns 0 or -1. */
static int listener_uid(const char *path, uid_t *uid)
{
	struct sockaddr_un sun;
	struct ucred cr;
	socklen_t len = sizeof(cr);
	int fd, ok = 0;

	if (strlen(path) >= sizeof(sun.sun_path))
		return -1;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, strlen(path) + 1);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0 &&
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0 && len == sizeof(cr)) {
		*uid = cr.uid;
		ok = 1;
	}
	close(fd);
	return ok ? 0 : -1;
}

/*
 * Owners the agent accepts for its configuration and PIN files: root or its own uid. The
 * listener's uid is the agent's unless systemd holds the socket; the packaged service user
 * "mtls-agent" is accepted too.
 */
static int agent_may_own(const struct doctor *d, uid_t uid)
{
	struct passwd *pw;

	if (uid == 0 || (d->agent_uid_known && uid == d->agent_uid))
		return 1;
	return (pw = getpwnam("mtls-agent")) != NULL && pw->pw_uid == uid;
}

static void check_config_file(struct doctor *d)
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
static void check_renew_auth(struct doctor *d)
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

/* --- who must be able to open the socket --- */

struct principal {
	int is_group;
	unsigned long id;
	const char *why; /* identity name, or NULL for administrators */
};

struct principals {
	struct principal *p;
	size_t n;
	int nomem;
};

static void principal_add(struct principals *ps, int is_group, unsigned long id, const char *why)
{
	struct principal *np;
	size_t i;

	for (i = 0; i < ps->n; i++)
		if (ps->p[i].is_group == is_group && ps->p[i].id == id)
			return;
	if ((np = realloc(ps->p, (ps->n + 1) * sizeof(*np))) == NULL) {
		ps->nomem = 1;
		return;
	}
	ps->p = np;
	np[ps->n].is_group = is_group;
	np[ps->n].id = id;
	np[ps->n].why = why;
	ps->n++;
}

/* Adds the users or groups of a list ("root mosquitto", "0,iot"); unknown names are
 * configuration problems. */
static void principals_from_list(struct doctor *d, struct principals *ps, const char *list,
				 int is_group, const char *why, const char *key)
{
	char *copy, *tok, *save = NULL, *end;
	struct passwd *pw;
	struct group *gr;
	unsigned long id;

	if (list == NULL)
		return;
	if ((copy = strdup(list)) == NULL) {
		ps->nomem = 1;
		return;
	}
	for (tok = strtok_r(copy, " \t,", &save); tok != NULL;
	     tok = strtok_r(NULL, " \t,", &save)) {
		errno = 0;
		id = strtoul(tok, &end, 10);
		if (isdigit((unsigned char)tok[0]) && *end == '\0' && errno == 0) {
			principal_add(ps, is_group, id, why);
		} else if (!is_group && (pw = getpwnam(tok)) != NULL) {
			principal_add(ps, 0, pw->pw_uid, why);
		} else if (is_group && (gr = getgrnam(tok)) != NULL) {
			principal_add(ps, 1, gr->gr_gid, why);
		} else {
			add_finding(
			    subject(d, "config", d->conf->path), 0,
			    "unknown %s \"%s\" in %s of %s%s%s — the agent leaves it out of "
			    "the list (an error in its log); fix or remove the name ('mtls-agent "
			    "-n -c %s' checks the file)",
			    is_group ? "group" : "user", tok, key,
			    why != NULL ? "identity \"" : "[agent]", why != NULL ? why : "",
			    why != NULL ? "\"" : "", d->conf->path);
		}
	}
	free(copy);
}

static void principal_desc(const struct principal *p, char *buf, size_t len)
{
	char n[64];

	if (p->is_group)
		snprintf(buf, len, "group %s", group_name((gid_t)p->id, n, sizeof(n)));
	else
		snprintf(buf, len, "%s", user_name((uid_t)p->id, n, sizeof(n)));
}

static int principal_may_connect(const struct principal *p, const struct stat *ss, mode_t smode,
				 const struct stat *ds)
{
	if (p->is_group)
		return group_may((gid_t)p->id, ds, ds->st_mode, 1) &&
		       group_may((gid_t)p->id, ss, smode, 2);
	return user_may((uid_t)p->id, ds, ds->st_mode, 1) && user_may((uid_t)p->id, ss, smode, 2);
}

/*
 * With the configuration: every user and group an identity (or administration) allows must
 * be able to open the socket, and a socket every local user may open is too wide when they
 * all could do without it.
 */
static void check_socket_access(struct doctor *d, struct findings *fd, const char *dir,
				const struct stat *ss, const struct stat *ds)
{
	struct principals ps = {NULL, 0, 0};
	char desc[96], owner[64], group[64], pgroup[64], who[256];
	size_t i, len;
	int all_narrow = 1;

	if (d->conf == NULL) {
		if ((ss->st_mode & S_IWOTH) != 0)
			add_finding(
			    fd, 1,
			    "mode %04o lets every local user connect: the identities' "
			    "allow-lists are the only wall — unless every user needs the "
			    "agent, set socket-mode = 0660 and a socket-group holding the users "
			    "that do",
			    (unsigned)(ss->st_mode & 07777));
		return;
	}
	if (d->conf->admin_users == NULL)
		principal_add(&ps, 0, 0, NULL);
	principals_from_list(d, &ps, d->conf->admin_users, 0, NULL, "admin-users");
	principals_from_list(d, &ps, d->conf->admin_groups, 1, NULL, "admin-groups");
	for (i = 0; i < d->conf->n_ids; i++) {
		const struct dconf_identity *id = &d->conf->ids[i];

		if (d->only != NULL && strcmp(d->only, id->name) != 0)
			continue;
		principals_from_list(d, &ps, id->allow_users, 0, id->name, "allow-users");
		principals_from_list(d, &ps, id->allow_groups, 1, id->name, "allow-groups");
	}
	if (ps.nomem) {
		d->sink.nomem = 1;
		goto out;
	}
	user_name(ss->st_uid, owner, sizeof(owner));
	group_name(ss->st_gid, group, sizeof(group));
	for (i = 0; i < ps.n; i++) {
		const struct principal *p = &ps.p[i];
		char why[96];

		if (!p->is_group && p->id == 0)
			continue;
		if (p->why != NULL)
			snprintf(why, sizeof(why), "identity \"%s\"", p->why);
		else
			snprintf(why, sizeof(why), "the administrator commands");
		principal_desc(p, desc, sizeof(desc));
		if (principal_may_connect(p, ss, ss->st_mode, ds))
			continue;
		if (p->is_group && !group_may((gid_t)p->id, ds, ds->st_mode, 1))
			add_finding(fd, 0,
				    "%s may use %s but its members cannot enter the socket's "
				    "directory %s (mode %04o) — chmod 0755 %s",
				    desc, why, dir, (unsigned)(ds->st_mode & 07777), dir);
		else if (p->is_group)
			add_finding(fd, 0,
				    "%s may use %s but its members cannot open the socket (mode "
				    "%04o, group %s) — set socket-group = %s in [agent] "
				    "(SocketGroup= with socket activation)",
				    desc, why, (unsigned)(ss->st_mode & 07777), group, desc + 6);
		else if (!user_may((uid_t)p->id, ds, ds->st_mode, 1))
			add_finding(fd, 0,
				    "user %s may use %s but cannot enter the socket's directory %s "
				    "(mode %04o) — chmod 0755 %s",
				    desc, why, dir, (unsigned)(ds->st_mode & 07777), dir);
		else if (ss->st_gid != 0)
			add_finding(
			    fd, 0,
			    "user %s may use %s but cannot open the socket (mode %04o, owner "
			    "%s, group %s) — add %s to group %s (usermod -aG %s %s), or set "
			    "socket-group to a group %s is in",
			    desc, why, (unsigned)(ss->st_mode & 07777), owner, group, desc, group,
			    group, desc, desc);
		else
			add_finding(
			    fd, 0,
			    "user %s may use %s but cannot open the socket (mode %04o, owner "
			    "%s, group %s) — set socket-group in [agent] to a group %s is in, "
			    "such as %s (SocketGroup= with socket activation), and socket-mode "
			    "= 0660",
			    desc, why, (unsigned)(ss->st_mode & 07777), owner, group, desc,
			    primary_group((uid_t)p->id, pgroup, sizeof(pgroup)));
	}
	if ((ss->st_mode & S_IWOTH) == 0)
		goto out;
	/* Open to everyone: needed only if someone allowed gets in by the "others" bits. */
	who[0] = '\0';
	for (i = 0; i < ps.n; i++) {
		if (!principal_may_connect(&ps.p[i], ss, ss->st_mode & ~(mode_t)07, ds))
			all_narrow = 0;
		principal_desc(&ps.p[i], desc, sizeof(desc));
		len = strlen(who);
		if (i < 6)
			snprintf(who + len, sizeof(who) - len, "%s%s", i > 0 ? ", " : "", desc);
		else if (i == 6)
			snprintf(who + len, sizeof(who) - len, ", ...");
	}
	if (all_narrow)
		add_finding(
		    fd, 0,
		    "mode %04o lets every local user connect, though only %s may use the "
		    "agent — set socket-mode = 0660 in [agent] (SocketMode=0660 with socket "
		    "activation)",
		    (unsigned)(ss->st_mode & 07777), who[0] != '\0' ? who : "root");
	else
		add_finding(fd, 1,
			    "mode %04o lets every local user connect: the identities' allow-lists "
			    "are the only wall — put the allowed users in one group and set "
			    "socket-group to it with socket-mode = 0660",
			    (unsigned)(ss->st_mode & 07777));
out:
	free(ps.p);
}

static void check_socket(struct doctor *d)
{
	struct findings *fd = subject(d, "socket", d->sock);
	char *dir = strdup(d->sock), *slash, who[64];
	struct stat ss, ds;
	int have_dir = 0;

	if (dir == NULL) {
		d->sink.nomem = 1;
		return;
	}
	if ((slash = strrchr(dir, '/')) == NULL)
		snprintf(dir, strlen(dir) + 1, ".");
	else if (slash == dir)
		slash[1] = '\0';
	else
		*slash = '\0';
	if (stat(dir, &ds) == 0 && S_ISDIR(ds.st_mode)) {
		have_dir = 1;
		/* Whoever can write the directory can put their own socket in the agent's place. */
		if ((ds.st_mode & (S_IWGRP | S_IWOTH)) != 0)
			add_finding(
			    fd, 0,
			    "its directory %s is writable by %s (mode %04o): they can replace "
			    "the socket with their own and receive what applications send — "
			    "use a directory only root can write (chmod 0755 %s, or the "
			    "default socket = /run/mtls-agent/agent.sock)",
			    dir, (ds.st_mode & S_IWOTH) != 0 ? "every local user" : "its group",
			    (unsigned)(ds.st_mode & 07777), dir);
		else if (!agent_may_own(d, ds.st_uid))
			add_finding(fd, 0,
				    "its directory %s is owned by %s, who can replace the socket — "
				    "chown root %s",
				    dir, user_name(ds.st_uid, who, sizeof(who)), dir);
	}
	if (lstat(d->sock, &ss) != 0) {
		/* Missing: the reachability finding says it. */
		goto out;
	}
	if (!S_ISSOCK(ss.st_mode)) {
		add_finding(fd, 0,
			    "%s is not a socket — remove it and restart the agent, which creates "
			    "its socket",
			    d->sock);
		goto out;
	}
	if (!agent_may_own(d, ss.st_uid))
		add_finding(fd, 0,
			    "owned by %s, neither root nor the agent's user: another program's "
			    "socket? — stop that program, remove %s and restart the agent",
			    user_name(ss.st_uid, who, sizeof(who)), d->sock);
	if (have_dir)
		check_socket_access(d, fd, dir, &ss, &ds);
out:
	free(dir);
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
static void check_pin_files(struct doctor *d)
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

/* --- keystore and identity states from STATUS --- */

static const char *status_field(const struct mtls_agent_status_record *rec, const char *key)
{
	size_t i;

	for (i = 0; rec != NULL && i < rec->n_fields; i++)
		if (strcmp(rec->fields[i].key, key) == 0)
			return rec->fields[i].value;
	return NULL;
}

static const struct mtls_agent_status_record *status_record(const struct mtls_agent_status *st,
							    const char *kind, const char *name)
{
	size_t i;

	for (i = 0; st != NULL && name != NULL && i < st->n_records; i++)
		if (strcmp(st->records[i].kind, kind) == 0 &&
		    strcmp(st->records[i].name, name) == 0)
			return &st->records[i];
	return NULL;
}

/* An identity state that is about the identity itself, not about its keystore. */
static int identity_own_state(const char *s)
{
	return strcmp(s, "ok") == 0 || strcmp(s, "no certificate installed") == 0 ||
	       strstr(s, "matches none of the identity") != NULL || strncmp(s, "no key ", 7) == 0 ||
	       strncmp(s, "cannot read ", 12) == 0 || s[0] == '/';
}

/*
 * A keystore that is not "ok": PIN problems, TPM lockout, or unreachable (token absent,
 * wrong label, device or resource manager gone). prefix names the keystore when the
 * finding belongs to an identity.
 */
static void add_keystore_state(struct findings *fd, const char *prefix, const char *state,
			       const char *type, const char *ks, int admin)
{
	const char *who = admin ? "" : "for an administrator: ";

	if (strcasestr(state, "lockout") != NULL || strcasestr(state, "dictionary attack") != NULL)
		add_finding(
		    fd, 0,
		    "%sTPM lockout (%s) — %sfind what used a wrong authorization, then wait "
		    "for the lockout to expire or clear it with 'tpm2_dictionarylockout "
		    "--clear-lockout' (needs the lockout authorization), then '" PROG " reload'",
		    prefix, state, who);
	else if (strstr(state, "PIN locked") != NULL || strstr(state, "one try left") != NULL)
		add_finding(
		    fd, 0,
		    "%sPIN locked (%s) — %sreset the user PIN with the SO PIN ('pkcs11-tool "
		    "--login --login-type so --init-pin'), write it to the pin-file, then '" PROG
		    " reload'",
		    prefix, state, who);
	else if (strstr(state, "wrong PIN") != NULL)
		add_finding(fd, 0,
			    "%swrong PIN (%s) — %swrite the token's user PIN to the pin-file (the "
			    "agent tries again once the file changes), then '" PROG " reload'",
			    prefix, state, who);
	else if (strstr(state, "PIN") != NULL || strstr(state, "C_Login") != NULL ||
		 strstr(state, "accessible by group or others") != NULL ||
		 strstr(state, "must be owned by") != NULL ||
		 strstr(state, "usable secret") != NULL)
		add_finding(
		    fd, 0,
		    "%sPIN problem (%s) — %sfix the pin-file (owned by root, mode 0600, holding "
		    "the user PIN), then '" PROG " reload'",
		    prefix, state, who);
	else if ((type != NULL && strcmp(type, "tpm2") == 0) || strstr(state, "TPM") != NULL)
		add_finding(fd, 0,
			    "%sunreachable (%s) — %scheck that the TPM device in tcti = (default "
			    "/dev/tpmrm0) exists and the agent may open it, then '" PROG " reload'",
			    prefix, state, who);
	else
		add_finding(fd, 0,
			    "%sunreachable (%s) — %splug in the token, or fix token = in [keystore "
			    "\"%s\"] ('pkcs11-tool --module MODULE --list-token-slots' lists the "
			    "tokens), then '" PROG " reload'",
			    prefix, state, who, ks);
}

static void check_keystore_records(struct doctor *d)
{
	const struct mtls_agent_status_record *idrec;
	const char *only_ks = NULL, *state;
	size_t i;

	if (d->only != NULL) {
		if ((idrec = status_record(d->st, "identity", d->only)) == NULL ||
		    (only_ks = status_field(idrec, "keystore")) == NULL)
			return;
	}
	for (i = 0; i < d->st->n_records; i++) {
		const struct mtls_agent_status_record *rec = &d->st->records[i];
		struct findings *fd;

		if (strcmp(rec->kind, "keystore") != 0 ||
		    (only_ks != NULL && strcmp(only_ks, rec->name) != 0))
			continue;
		fd = subject(d, "keystore", rec->name);
		state = status_field(rec, "state");
		if (state != NULL && strcmp(state, "ok") != 0)
			add_keystore_state(fd, "", state, status_field(rec, "type"), rec->name, 1);
	}
}

/* --- identities --- */

/* Validity of a certificate against now; pos 0 is the leaf (chooses the advice). */
static void check_validity(struct findings *fd, X509 *x, size_t pos)
{
	const ASN1_TIME *nb = X509_get0_notBefore(x), *na = X509_get0_notAfter(x);
	char when[40];
	int days, secs;

	if (X509_cmp_current_time(nb) > 0) {
		fmt_asn1_time(nb, when, sizeof(when));
		if (pos == 0)
			add_finding(fd, 0,
				    "certificate not valid before %s — check the system "
				    "clock (date -u), or wait",
				    when);
		else
			add_finding(fd, 0,
				    "chain certificate #%zu not valid before %s — check the "
				    "system clock (date -u)",
				    pos, when);
	}
	fmt_asn1_time(na, when, sizeof(when));
	if (X509_cmp_current_time(na) < 0) {
		if (pos == 0)
			add_finding(fd, 0,
				    "certificate expired on %s — get a new one: '" PROG
				    " csr NAME --subject DN', then '" PROG
				    " import-cert NAME FILE'",
				    when);
		else
			add_finding(fd, 0,
				    "chain certificate #%zu expired on %s — get the "
				    "current CA certificate and import the chain again",
				    pos, when);
		return;
	}
	if (ASN1_TIME_diff(&days, &secs, NULL, na) == 1 && days < EXPIRY_WARN_DAYS) {
		if (pos == 0)
			add_finding(fd, 1, "certificate expires on %s (in %d days) — renew it soon",
				    when, days);
		else
			add_finding(fd, 1,
				    "chain certificate #%zu expires on %s (in %d days) — "
				    "get the CA's next certificate",
				    pos, when, days);
	}
}

/* Each certificate must be issued, and signed, by the one after it. */
static void check_chain(struct findings *fd, X509 **certs, size_t n)
{
	EVP_PKEY *ipk;
	size_t i;

	for (i = 1; i < n; i++)
		if (certs[i] != NULL)
			check_validity(fd, certs[i], i);
	for (i = 0; i + 1 < n; i++) {
		if (certs[i] == NULL || certs[i + 1] == NULL)
			continue;
		ipk = X509_get0_pubkey(certs[i + 1]);
		if (X509_check_issued(certs[i + 1], certs[i]) != X509_V_OK || ipk == NULL ||
		    X509_verify(certs[i], ipk) != 1)
			add_finding(fd, 0,
				    "certificate #%zu is not issued by certificate #%zu — "
				    "import the chain leaf first, each certificate followed "
				    "by its issuer",
				    i, i + 1);
	}
}

/* Whether the chain (leaf first) verifies up to an anchor in store; *err gets the reason. */
static int chain_verifies(X509_STORE *store, X509 **certs, size_t n, int *err, int *depth)
{
	STACK_OF(X509) *untrusted = sk_X509_new_null();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	size_t i;
	int ok = -1;

	*err = X509_V_ERR_UNSPECIFIED;
	*depth = 0;
	if (untrusted == NULL || ctx == NULL)
		goto out;
	for (i = 1; i < n; i++)
		if (certs[i] != NULL && !sk_X509_push(untrusted, certs[i]))
			goto out;
	if (!X509_STORE_CTX_init(ctx, store, certs[0], untrusted))
		goto out;
	/* Validity and usages have their own findings. */
	X509_STORE_CTX_set_flags(ctx, X509_V_FLAG_NO_CHECK_TIME);
	ok = X509_verify_cert(ctx) == 1;
	if (!ok) {
		*err = X509_STORE_CTX_get_error(ctx);
		*depth = X509_STORE_CTX_get_error_depth(ctx);
	}
out:
	X509_STORE_CTX_free(ctx);
	sk_X509_free(untrusted);
	return ok;
}

/*
 * Up to a trust anchor: the --ca file when given; else a leaf-only chain that does not
 * verify against OpenSSL's default store is suspect (a leaf-and-intermediates chain
 * without the root is the normal case and cannot be judged without the anchor).
 */
static void check_trust(struct doctor *d, struct findings *fd, X509 **certs, size_t n)
{
	int err, depth, r;

	if (d->anchors != NULL) {
		if ((r = chain_verifies(d->anchors, certs, n, &err, &depth)) < 0)
			fd->nomem = 1;
		else if (r == 0)
			add_finding(
			    fd, 0,
			    "chain does not lead to a trust anchor in %s (%s, at certificate "
			    "#%d) — append the missing intermediate certificate(s) after the "
			    "leaf and import the chain again: '" PROG " import-cert NAME FILE'",
			    d->ca_file, X509_verify_cert_error_string(err), depth);
		return;
	}
	if (n != 1 || X509_check_issued(certs[0], certs[0]) == X509_V_OK)
		return;
	if (!d->system_tried) {
		d->system_tried = 1;
		if ((d->system = X509_STORE_new()) != NULL &&
		    X509_STORE_set_default_paths(d->system) != 1) {
			X509_STORE_free(d->system);
			d->system = NULL;
		}
		ERR_clear_error();
	}
	if (d->system != NULL && chain_verifies(d->system, certs, n, &err, &depth) == 1)
		return;
	add_finding(fd, 1,
		    "the chain is only the leaf certificate: unless a root CA the servers trust "
		    "issued it directly, append the intermediate certificate(s) and import the "
		    "chain again — '" PROG " check --ca ROOT.pem' tells for sure");
}

static void check_leaf(struct findings *fd, const struct mtls_agent_identity *id, X509 *leaf)
{
	unsigned char *der = NULL;
	uint32_t flags;
	int len;

	if (id->key_type != MTLS_AGENT_KEY_NONE) {
		len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(leaf), &der);
		if (len <= 0 || (size_t)len != id->spki_len ||
		    memcmp(der, id->spki, id->spki_len) != 0)
			add_finding(fd, 0,
				    "certificate is for a different key than the identity's — "
				    "import the certificate issued for this key, or make a new CSR "
				    "with '" PROG " csr NAME --subject DN'");
		OPENSSL_free(der);
	}
	flags = X509_get_extension_flags(leaf);
	if ((flags & EXFLAG_INVALID) != 0)
		add_finding(fd, 0,
			    "certificate has malformed extensions — ask the CA for a new "
			    "certificate");
	if ((flags & EXFLAG_XKUSAGE) == 0 ||
	    (X509_get_extended_key_usage(leaf) & XKU_SSL_CLIENT) == 0)
		add_finding(fd, 0,
			    "certificate lacks extendedKeyUsage clientAuth — servers "
			    "refuse it for client authentication; ask the CA for a TLS "
			    "client certificate");
	if ((flags & EXFLAG_KUSAGE) == 0 || (X509_get_key_usage(leaf) & KU_DIGITAL_SIGNATURE) == 0)
		add_finding(fd, 0,
			    "certificate lacks keyUsage digitalSignature — ask the CA for a "
			    "certificate that allows digitalSignature");
	check_validity(fd, leaf, 0);
}

static const char *or_unknown(const char *s)
{
	return s != NULL ? s : "?";
}

/* The agent's own revocation check of the certificate (status field "revocation"). */
static void check_revocation(struct findings *fd, const char *revocation)
{
	if (revocation != NULL && strncmp(revocation, "revoked", 7) == 0)
		add_finding(fd, 0, "certificate %s — the agent is re-enrolling; see last-result",
			    revocation);
	else if (revocation != NULL && strncmp(revocation, "unknown", 7) == 0)
		add_finding(fd, 1, "revocation status %s — the certificate is still served",
			    revocation);
}

static void check_identity(struct doctor *d, struct findings *fd,
			   const struct mtls_agent_identity *id)
{
	const struct mtls_agent_status_record *rec, *ksrec;
	const char *state = NULL, *ks = NULL, *ks_state;
	char prefix[128];
	X509 **certs = NULL;
	EVP_PKEY *pk = NULL;
	size_t i;

	if ((rec = status_record(d->st, "identity", id->name)) != NULL) {
		const char *action = status_field(rec, "action");
		const char *failures = status_field(rec, "failures");

		state = status_field(rec, "state");
		ks = status_field(rec, "keystore");
		/* Automated renewal that needs an operator, or keeps failing. */
		check_revocation(fd, status_field(rec, "revocation"));
		if (action != NULL)
			add_finding(fd, 0, "renewal: %s", action);
		else if (failures != NULL && strcmp(failures, "0") != 0)
			add_finding(fd, 1, "renewal failing (%s attempts in a row): %s — next attempt %s",
				    failures, or_unknown(status_field(rec, "last-result")),
				    or_unknown(status_field(rec, "next-renewal")));
	}
	/* A keystore that does not work: say that, not what it hides (key "missing"). */
	if (state != NULL && !identity_own_state(state)) {
		ksrec = status_record(d->st, "keystore", ks);
		ks_state = status_field(ksrec, "state");
		if (ks_state != NULL && strcmp(ks_state, "ok") != 0) {
			add_finding(fd, 0,
				    "not usable while keystore %s is not (see its line) — fix the "
				    "keystore first",
				    ks);
		} else {
			snprintf(prefix, sizeof(prefix), "keystore %s: ", ks != NULL ? ks : "?");
			add_keystore_state(fd, prefix, state, status_field(ksrec, "type"),
					   ks != NULL ? ks : "?",
					   d->st != NULL && d->st->caller_is_admin);
		}
		return;
	}
	if (id->key_type == MTLS_AGENT_KEY_NONE) {
		if (id->chain_len == 0 || state == NULL ||
		    strstr(state, "matches none of the identity") == NULL) {
			add_finding(fd, 0,
				    "no key%s%s%s — create one with '" PROG " keygen NAME --type "
				    "ec-p256'",
				    state != NULL && strncmp(state, "no key ", 7) == 0 ? " (" : "",
				    state != NULL && strncmp(state, "no key ", 7) == 0 ? state : "",
				    state != NULL && strncmp(state, "no key ", 7) == 0 ? ")" : "");
			return;
		}
		add_finding(fd, 0,
			    "certificate and key do not match: %s — import the certificate issued "
			    "for this identity's key ('" PROG
			    " import-cert NAME FILE'), or get a new "
			    "one ('" PROG " csr NAME --subject DN')",
			    state);
	} else {
		int weak = 0;

		if ((pk = spki_decode(id->spki, id->spki_len)) == NULL) {
			add_finding(fd, 0,
				    "the agent reports a public key that does not parse — check "
				    "the keystore ('" PROG " status')");
		} else if (EVP_PKEY_get_base_id(pk) == EVP_PKEY_RSA &&
			   EVP_PKEY_get_bits(pk) < 2048) {
			add_finding(fd, 0,
				    "RSA key of %d bits is too weak — make a new key with '" PROG
				    " keygen NAME --type rsa-2048' (or ec-p256) and get a "
				    "certificate for it",
				    EVP_PKEY_get_bits(pk));
			weak = 1; /* which is also why the agent signs with no scheme */
		}
		EVP_PKEY_free(pk);
		if (id->n_schemes == 0 && !weak)
			add_finding(fd, 0,
				    "the agent offers no signature scheme for this key — check the "
				    "key type and the keystore ('" PROG " status')");
	}
	/* The certificate file on disk was replaced by something the agent would not
	 * take (it keeps serving the certificate it read before): the file is wrong. */
	if (id->chain_len > 0 && state != NULL &&
	    strstr(state, "still serving the certificate read before") != NULL)
		add_finding(fd, 0,
			    "%s — put a valid certificate there, or import one with '" PROG
			    " import-cert NAME FILE'",
			    state);
	if (id->chain_len == 0) {
		if (state != NULL && strcmp(state, "ok") != 0 &&
		    strcmp(state, "no certificate installed") != 0)
			add_finding(fd, 0,
				    "certificate not usable: %s — import a valid one with '" PROG
				    " import-cert NAME FILE'",
				    state);
		else
			add_finding(fd, 0,
				    "no certificate — make a CSR with '" PROG " csr NAME --subject "
				    "DN', have the CA sign it, then '" PROG
				    " import-cert NAME FILE'");
		return;
	}
	if ((certs = calloc(id->chain_len, sizeof(*certs))) == NULL) {
		fd->nomem = 1;
		return;
	}
	for (i = 0; i < id->chain_len; i++) {
		certs[i] = cert_decode(id->chain[i].der, id->chain[i].len);
		if (certs[i] == NULL && i == 0)
			add_finding(fd, 0,
				    "certificate does not parse — import a valid one with '" PROG
				    " import-cert NAME FILE'");
		else if (certs[i] == NULL)
			add_finding(fd, 0,
				    "chain certificate #%zu does not parse — import the "
				    "chain again",
				    i);
	}
	if (certs[0] != NULL) {
		check_leaf(fd, id, certs[0]);
		check_chain(fd, certs, id->chain_len);
		check_trust(d, fd, certs, id->chain_len);
	}
	for (i = 0; i < id->chain_len; i++)
		X509_free(certs[i]);
	free(certs);
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

static int cmd_check(struct ctx *c, int argc, char **argv)
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
			return command_help(find_command(c->cmd));
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
     "  config      with the agent's configuration: its permissions, the PIN files'\n"
     "              permissions, whether every allowed user and group can open the\n"
     "              socket, and whether the socket is open wider than they need\n"
     "Exit status 1 when any problem needs attention (warnings do not count).\n\n"
     "  -c, --config FILE  the agent's configuration; by default " MTLS_AGENT_DEFAULT_CONFIG "\n"
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
