/* mtls-agentctl's key and certificate commands: list, cert, keyref, sign, keygen, csr,
 * import-cert. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "client/ctl.h"
#include "common/keyref.h"
#include "common/keytype.h"
#include "common/proto.h"
#include "common/scheme.h"
#include "common/util.h"

/* ---- input ------------------------------------------------------------------------------ */

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
EVP_PKEY *spki_decode(const uint8_t *der, size_t len)
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

X509 *cert_decode(const uint8_t *der, size_t len)
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

int cmd_list(struct ctx *c, int argc, char **argv)
{
	struct mtls_agent_identity *ids = NULL;
	size_t n = 0, i;
	int r;

	if ((r = ctl_no_operands(c, argc, argv, 1)) != CTL_CONTINUE)
		return r;
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

/* ---- cert ------------------------------------------------------------------------------- */

int cmd_cert(struct ctx *c, int argc, char **argv)
{
	struct mtls_agent_cert *chain = NULL;
	const char *name;
	size_t n = 0, i;
	char *pem;
	int r, ret = EXIT_FAIL;

	if ((r = ctl_simple_options(c, argc, argv, 1)) != CTL_CONTINUE)
		return r;
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

/* A TLS SignatureScheme name (the agent's table, common/scheme.c) or 0xNNNN; 0 when neither. */
static uint16_t parse_scheme(const char *s)
{
	const struct scheme *sch;
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
	return (sch = scheme_by_name(s)) != NULL ? sch->code : 0;
}

/* The signature to out (NULL or "-": standard output), opened only now so that a refusal
 * leaves the file untouched. 0, or -1 after the message. */
static int write_signature(const struct ctx *c, const char *out, const uint8_t *sig, size_t len)
{
	int to_file = out != NULL && strcmp(out, "-") != 0, ok, e;
	FILE *f = to_file ? fopen(out, "wb") : stdout;

	ok = f != NULL && fwrite(sig, 1, len, f) == len;
	e = errno;
	if (f != NULL && (to_file ? fclose(f) : fflush(f)) != 0 && ok) {
		ok = 0;
		e = errno;
	}
	if (!ok)
		errmsg(c, "cannot write %s: %s", to_file ? out : "standard output", strerror(e));
	return ok ? 0 : -1;
}

int cmd_sign(struct ctx *c, int argc, char **argv)
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
			return command_help(c);
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
	if (write_signature(c, out, sig, sig_len) == 0)
		ret = EXIT_OK;
out:
	if (data != NULL)
		wipe(data, len);
	free(data);
	free(sig);
	return ret;
}

/* ---- keygen / csr / import-cert / reload ---------------------------------------------- */

int cmd_keygen(struct ctx *c, int argc, char **argv)
{
	const char *name, *type = NULL;
	uint8_t *spki = NULL;
	size_t len = 0;
	int r, ret = EXIT_FAIL;

	if ((r = ctl_value_option(c, argc, argv, "type", 't', &type)) != CTL_CONTINUE)
		return r;
	if ((name = identity_arg(c, argc, argv)) == NULL)
		return EXIT_USAGE;
	if (type == NULL)
		return usage_error(c, "missing --type");
	/* The agent's list (common/keytype.c): a typo is a usage error, not a refusal. */
	if (ks_keygen_type_from_name(type) == 0)
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

int cmd_csr(struct ctx *c, int argc, char **argv)
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
			ret = command_help(c);
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

int cmd_keyref(struct ctx *c, int argc, char **argv)
{
	struct mtls_agent_identity *id = NULL;
	const char *name, *out = NULL;
	char *pem = NULL;
	size_t pem_len = 0;
	int r, ret = EXIT_FAIL;

	if ((r = ctl_value_option(c, argc, argv, "out", 'o', &out)) != CTL_CONTINUE)
		return r;
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

int cmd_import_cert(struct ctx *c, int argc, char **argv)
{
	const char *name, *file;
	uint8_t *data = NULL;
	uint64_t not_after = 0;
	size_t len = 0;
	char when[40];
	int r, ret = EXIT_FAIL;

	if ((r = ctl_simple_options(c, argc, argv, 0)) != CTL_CONTINUE)
		return r;
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
