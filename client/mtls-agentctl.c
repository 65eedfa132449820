#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
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
	if (optind == argc)
		return usage_error(c, "missing identity NAME");
	name = argv[optind++];
	if (optind != argc)
		return usage_error(c, "unexpected argument '%s'", argv[optind]);
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
	if (optind == argc)
		return usage_error(c, "missing identity NAME");
	name = argv[optind++];
	if (optind != argc)
		return usage_error(c, "unexpected argument '%s'", argv[optind]);
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
	if (optind == argc)
		return usage_error(c, "missing identity NAME");
	name = argv[optind++];
	if (optind != argc)
		return usage_error(c, "unexpected argument '%s'", argv[optind]);
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
	if (optind == argc) {
		usage_error(c, "missing identity NAME");
		goto out;
	}
	name = argv[optind++];
	if (optind != argc) {
		usage_error(c, "unexpected argument '%s'", argv[optind]);
		goto out;
	}
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
	if (optind == argc)
		return usage_error(c, "missing identity NAME");
	name = argv[optind++];
	if (optind != argc)
		return usage_error(c, "unexpected argument '%s'", argv[optind]);
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

/* Validity of a certificate against now; is_leaf chooses the advice. */
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

static void check_leaf(struct findings *fd, const struct mtls_agent_identity *id, X509 *leaf)
{
	unsigned char *der = NULL;
	uint32_t flags;
	int len;

	len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(leaf), &der);
	if (len <= 0 || (size_t)len != id->spki_len || memcmp(der, id->spki, id->spki_len) != 0)
		add_finding(fd, 0,
			    "certificate is for a different key than the identity's — "
			    "import the certificate issued for this key, or make a new CSR "
			    "with '" PROG " csr NAME --subject DN'");
	OPENSSL_free(der);
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

static void check_identity(struct findings *fd, const struct mtls_agent_identity *id)
{
	X509 **certs = NULL;
	EVP_PKEY *pk = NULL;
	size_t i;

	if (id->key_type == MTLS_AGENT_KEY_NONE) {
		add_finding(fd, 0,
			    "no key — create one with '" PROG " keygen NAME --type "
			    "ec-p256'");
		return;
	}
	if ((pk = spki_decode(id->spki, id->spki_len)) == NULL) {
		add_finding(fd, 0,
			    "the agent reports a public key that does not parse — check "
			    "the keystore ('" PROG " status')");
	} else if (EVP_PKEY_get_base_id(pk) == EVP_PKEY_RSA && EVP_PKEY_get_bits(pk) < 2048) {
		add_finding(fd, 0,
			    "RSA key of %d bits is too weak — make a new key with '" PROG
			    " keygen NAME --type rsa-2048' (or ec-p256) and get a "
			    "certificate for it",
			    EVP_PKEY_get_bits(pk));
	}
	EVP_PKEY_free(pk);
	if (id->n_schemes == 0)
		add_finding(fd, 0,
			    "the agent offers no signature scheme for this key — check the "
			    "key type and the keystore ('" PROG " status')");
	if (id->chain_len == 0) {
		add_finding(fd, 0,
			    "no certificate — make a CSR with '" PROG " csr NAME --subject "
			    "DN', have the CA sign it, then '" PROG " import-cert NAME FILE'");
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
	if (certs[0] != NULL)
		check_leaf(fd, id, certs[0]);
	check_chain(fd, certs, id->chain_len);
	for (i = 0; i < id->chain_len; i++)
		X509_free(certs[i]);
	free(certs);
}

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

static void check_report(const struct mtls_agent_identity *id, const struct findings *fd)
{
	size_t i;

	for (i = 0; i < fd->n_warnings; i++) {
		put_text(id->name);
		fputs(": warning: ", stdout);
		put_advice(fd->warnings[i], id->name);
		putchar('\n');
	}
	for (i = 0; i < fd->n_problems; i++) {
		put_text(id->name);
		fputs(": ", stdout);
		put_advice(fd->problems[i], id->name);
		putchar('\n');
	}
	if (fd->n_problems == 0) {
		put_text(id->name);
		fputs(": ok\n", stdout);
	}
}

static int check_json_list(char **list, size_t n, const char *name)
{
	size_t i;
	char *s;

	putchar('[');
	for (i = 0; i < n; i++) {
		if ((s = advice_string(list[i], name)) == NULL)
			return -1;
		if (i > 0)
			putchar(',');
		json_str(s);
		free(s);
	}
	putchar(']');
	return 0;
}

static int cmd_check(struct ctx *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct mtls_agent_identity *ids = NULL, *one = NULL;
	struct findings fd;
	const char *name = NULL;
	size_t n = 0, i;
	int ch, r, bad = 0, ret = EXIT_FAIL;

	memset(&fd, 0, sizeof(fd));
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
	if (optind < argc)
		name = argv[optind++];
	if (optind != argc)
		return usage_error(c, "unexpected argument '%s'", argv[optind]);
	if ((r = connect_agent(c)) != 0)
		return r;
	if (name != NULL) {
		if ((r = mtls_agent_get_identity(c->agent, name, &one)) != 0)
			return agent_error(c, r);
		ids = one;
		n = 1;
	} else if ((r = mtls_agent_list(c->agent, &ids, &n)) != 0) {
		return agent_error(c, r);
	}
	if (n == 0) {
		errmsg(c, "no identities for this user (none configured, or none allows uid %ld)",
		       (long)getuid());
		goto out;
	}
	if (c->json)
		fputs("{\"identities\":[", stdout);
	for (i = 0; i < n; i++) {
		check_identity(&fd, &ids[i]);
		if (fd.nomem) {
			errmsg(c, "out of memory");
			goto out;
		}
		bad += fd.n_problems > 0;
		if (c->json) {
			fputs(i > 0 ? ",{\"name\":" : "{\"name\":", stdout);
			json_str(ids[i].name);
			printf(",\"ok\":%s,\"problems\":", fd.n_problems == 0 ? "true" : "false");
			if (check_json_list(fd.problems, fd.n_problems, ids[i].name) != 0 ||
			    fputs(",\"warnings\":", stdout) < 0 ||
			    check_json_list(fd.warnings, fd.n_warnings, ids[i].name) != 0) {
				errmsg(c, "out of memory");
				goto out;
			}
			putchar('}');
		} else {
			check_report(&ids[i], &fd);
		}
		findings_free(&fd);
	}
	if (c->json)
		puts("]}");
	ret = EXIT_OK;
	if (bad > 0) {
		/* The report is on stdout; this is the one-line verdict of a failure. */
		errmsg(c, "%d of %zu %s not usable", bad, n,
		       n == 1 ? "identity is" : "identities are");
		ret = EXIT_FAIL;
	}
out:
	findings_free(&fd);
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
     "  -d, --digest     the input is a precomputed hash (needs sign-policy = any)\n"},
    {"check", cmd_check, "[NAME] [--json]", "find what stops identities from working",
     "Checks that each identity (or NAME) can authenticate: key present, certificate\n"
     "present and matching the key, clientAuth and digitalSignature usages, validity\n"
     "(warns under 7 days), chain order and signatures, key strength. Prints \"NAME: ok\"\n"
     "or one line per problem with how to fix it. Exit status 1 when any problem.\n\n"
     "  --json      print {\"identities\":[{\"name\":..,\"ok\":..,\"problems\":[..],\n"
     "              \"warnings\":[..]}]}\n"},
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
