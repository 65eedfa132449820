/*
 * tests/est_client_check: runs one EST transaction through enroll_est() (or
 * est_get_cacerts()) with keys from files, for the tests that drive tests/est-ca.
 *
 *   est_client_check --url URL --trust CA.pem --new-key KEY.pem [--subject /CN=a/O=b]
 *                    [--san DNS:x,URI:y] [--renew --cert CHAIN.pem --key KEY.pem]
 *                    [--basic USER:PASSFILE | --cert CHAIN.pem --key KEY.pem]
 *                    [--key-provider NAME] [--timeout S] [--out CHAIN.pem] [--cacerts]
 *
 * --renew uses --cert/--key as the credential being renewed (simplereenroll); without it,
 * --basic or --cert/--key are the bootstrap credential (simpleenroll). --key-provider loads
 * --key through OSSL_STORE in a separate library context with that provider and "default"
 * (e.g. tpm2), the way the agent hands keystore keys to the enroller. The subject defaults
 * to the --cert leaf's. The commit callback checks the chain like the agent would (key,
 * subject, clientAuth leaf, chain to --trust) and writes it to --out.
 *
 * Prints "outcome=NAME retry_after=N" and "msg=..." and exits 0 on ENROLL_OK, else 1
 * (2 on usage errors).
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/store.h>
#include <openssl/x509v3.h>

#include "common/certcheck.h"
#include "renew/enroll-est.h"
#include "common/util.h"

struct check {
	X509_NAME *subject;
	EVP_PKEY *new_key;
	const char *trust_file, *out;
};

static void die(const char *what)
{
	fprintf(stderr, "est_client_check: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(2);
}

static STACK_OF(X509) * read_chain(const char *path)
{
	STACK_OF(X509) *chain = sk_X509_new_null();
	FILE *f = fopen(path, "r");
	X509 *x;

	if (f == NULL || chain == NULL)
		die(path);
	while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL)
		sk_X509_push(chain, x);
	ERR_clear_error();
	fclose(f);
	if (sk_X509_num(chain) == 0)
		die("no certificate in the --cert file");
	return chain;
}

/* A private key from a PEM file, or through OSSL_STORE in its own library context. */
static EVP_PKEY *read_key(const char *path, const char *provider, OSSL_LIB_CTX **libctx)
{
	OSSL_STORE_CTX *store;
	OSSL_STORE_INFO *info;
	EVP_PKEY *key = NULL;
	FILE *f;

	if (provider == NULL) {
		if ((f = fopen(path, "r")) == NULL)
			die(path);
		key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
		fclose(f);
		return key ? key : (die(path), NULL);
	}
	if (*libctx == NULL && ((*libctx = OSSL_LIB_CTX_new()) == NULL ||
				OSSL_PROVIDER_load(*libctx, provider) == NULL ||
				OSSL_PROVIDER_load(*libctx, "default") == NULL))
		die("cannot load the key provider");
	store = OSSL_STORE_open_ex(path, *libctx, NULL, NULL, NULL, NULL, NULL, NULL);
	while (store != NULL && key == NULL && !OSSL_STORE_eof(store)) {
		info = OSSL_STORE_load(store);
		if (info != NULL && OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
			key = OSSL_STORE_INFO_get1_PKEY(info);
		OSSL_STORE_INFO_free(info);
	}
	OSSL_STORE_close(store);
	return key ? key : (die(path), NULL);
}

static X509_NAME *parse_subject(const char *text)
{
	X509_NAME *name = X509_NAME_new();
	char *copy = strdup(text), *save = NULL, *rdn, *eq;

	for (rdn = strtok_r(copy, "/", &save); rdn != NULL; rdn = strtok_r(NULL, "/", &save)) {
		if ((eq = strchr(rdn, '=')) == NULL)
			die("--subject expects /TYPE=value/...");
		*eq = '\0';
		if (!X509_NAME_add_entry_by_txt(name, rdn, MBSTRING_UTF8, (unsigned char *)eq + 1,
						-1, -1, 0))
			die("bad --subject");
	}
	free(copy);
	return name;
}

static int make_csr(EVP_PKEY *key, const X509_NAME *subject, const char *san, uint8_t **der)
{
	X509_REQ *req = X509_REQ_new();
	STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
	X509_EXTENSION *ext;
	int len;

	if (req == NULL || !X509_REQ_set_version(req, 0) ||
	    !X509_REQ_set_subject_name(req, subject) || !X509_REQ_set_pubkey(req, key))
		die("cannot build the CSR");
	if (san != NULL) {
		ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
		if (ext == NULL || !sk_X509_EXTENSION_push(exts, ext) ||
		    !X509_REQ_add_extensions(req, exts))
			die("bad --san");
	}
	if (X509_REQ_sign(req, key, EVP_sha256()) <= 0)
		die("cannot sign the CSR");
	*der = NULL;
	len = i2d_X509_REQ(req, der);
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	X509_REQ_free(req);
	return len;
}

/* check_and_write() wrote the file already: this tool has no identity to switch. */
static int nothing_to_install(void *arg, char *err, size_t errlen)
{
	(void)arg;
	(void)err;
	(void)errlen;
	return 0;
}

/* What the agent's stage() does before installing, minus the installing. */
static int check_and_write(void *arg, STACK_OF(X509) * chain, int *local, char *err, size_t errlen)
{
	struct check *c = arg;
	X509 *leaf = sk_X509_value(chain, 0);
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	FILE *f;
	int i, ok = -1;

	*local = 0;
	if (store == NULL || ctx == NULL || !X509_STORE_load_file(store, c->trust_file)) {
		*local = 1;
		snprintf(err, errlen, "cannot load %s", c->trust_file);
	} else if (X509_check_private_key(leaf, c->new_key) != 1) {
		snprintf(err, errlen, "certificate is not for the new key");
	} else if (X509_NAME_cmp(X509_get_subject_name(leaf), c->subject) != 0) {
		snprintf(err, errlen, "certificate subject differs from the request's");
	} else if (certcheck_leaf(leaf, time(NULL), err, errlen) != 0) {
		/* err says why */
	} else if (!X509_STORE_CTX_init(ctx, store, leaf, chain) ||
		   !X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT) ||
		   X509_verify_cert(ctx) != 1) {
		snprintf(err, errlen, "chain does not verify: %s",
			 X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
	} else {
		ok = 0;
	}
	ERR_clear_error();
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	for (i = 0; i < sk_X509_num(chain); i++) {
		char name[256];

		X509_NAME_oneline(X509_get_subject_name(sk_X509_value(chain, i)), name,
				  sizeof(name));
		printf("chain[%d]=%s\n", i, name);
	}
	if (ok == 0 && c->out != NULL) {
		if ((f = fopen(c->out, "w")) == NULL)
			die(c->out);
		for (i = 0; i < sk_X509_num(chain); i++)
			PEM_write_X509(f, sk_X509_value(chain, i));
		fclose(f);
	}
	return ok;
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{"url", required_argument, NULL, 0},
		{"trust", required_argument, NULL, 0},
		{"new-key", required_argument, NULL, 0},
		{"subject", required_argument, NULL, 0},
		{"san", required_argument, NULL, 0},
		{"cert", required_argument, NULL, 0},
		{"key", required_argument, NULL, 0},
		{"basic", required_argument, NULL, 0},
		{"key-provider", required_argument, NULL, 0},
		{"timeout", required_argument, NULL, 0},
		{"out", required_argument, NULL, 0},
		{"renew", no_argument, NULL, 0},
		{"cacerts", no_argument, NULL, 0},
		{NULL, 0, NULL, 0},
	};
	/* clang-format off */
	enum { URL, TRUST, NEW_KEY, SUBJECT, SAN, CERT, KEY, BASIC, KEY_PROVIDER, TIMEOUT, OUT,
	       RENEW, CACERTS, N_OPTIONS };
	/* clang-format on */
	const char *arg[N_OPTIONS] = {NULL};
	struct enroll_request req = {0};
	struct enroll_result res = {0};
	struct check check = {0};
	STACK_OF(X509) *chain = NULL;
	OSSL_LIB_CTX *key_libctx = NULL;
	char err[512], *password = NULL, *user = NULL;
	uint8_t *csr = NULL;
	int opt, index = 0, csr_len, rc, i;

	while ((opt = getopt_long(argc, argv, "", options, &index)) == 0)
		arg[index] = optarg ? optarg : "";
	if (opt != -1 || optind != argc || !arg[URL] || !arg[TRUST])
		die("usage: see the comment at the top of tests/est_client_check.c");
	if (arg[CACERTS] != NULL) {
		if (est_get_cacerts(arg[URL], arg[TRUST], 10, &chain, err, sizeof(err)) != 0) {
			printf("cacerts failed\nmsg=%s\n", err);
			return 1;
		}
		for (i = 0; i < sk_X509_num(chain); i++) {
			X509_NAME_oneline(X509_get_subject_name(sk_X509_value(chain, i)), err,
					  sizeof(err));
			printf("cacerts[%d]=%s\n", i, err);
		}
		sk_X509_pop_free(chain, X509_free);
		return 0;
	}
	if (!arg[NEW_KEY] || (arg[RENEW] && (!arg[CERT] || !arg[KEY])))
		die("--new-key is needed, and --renew needs --cert and --key");

	req.kind = arg[RENEW] ? ENROLL_RENEW : ENROLL_BOOTSTRAP;
	req.url = arg[URL];
	req.trust_file = check.trust_file = arg[TRUST];
	req.timeout_s = arg[TIMEOUT] ? (unsigned)atoi(arg[TIMEOUT]) : 10;
	req.new_key = check.new_key = read_key(arg[NEW_KEY], NULL, NULL);
	if (arg[CERT] != NULL && arg[KEY] != NULL) {
		chain = read_chain(arg[CERT]);
		if (arg[RENEW]) {
			req.cur_key = read_key(arg[KEY], arg[KEY_PROVIDER], &key_libctx);
			req.cur_chain = chain;
		} else {
			req.boot_key = read_key(arg[KEY], arg[KEY_PROVIDER], &key_libctx);
			req.boot_chain = chain;
		}
	}
	req.libctx = key_libctx;
	if (arg[BASIC] != NULL) {
		char *colon = strchr(arg[BASIC], ':');

		if (colon == NULL || read_secret_file(colon + 1, &password, err, sizeof(err)) != 0)
			die("--basic USER:PASSFILE");
		user = strndup(arg[BASIC], (size_t)(colon - arg[BASIC]));
		req.basic_user = user;
		req.basic_pass = password;
	}
	if (arg[SUBJECT] != NULL)
		check.subject = parse_subject(arg[SUBJECT]);
	else if (chain != NULL)
		check.subject = X509_NAME_dup(X509_get_subject_name(sk_X509_value(chain, 0)));
	else
		die("--subject is needed without --cert");
	req.subject = check.subject;
	csr_len = make_csr(req.new_key, check.subject, arg[SAN], &csr);
	if (csr_len <= 0)
		die("cannot encode the CSR");
	req.csr_der = csr;
	req.csr_len = (size_t)csr_len;
	check.out = arg[OUT];
	req.stage = check_and_write;
	req.install = nothing_to_install;
	req.commit_arg = &check;

	rc = enroll_est(&req, &res);
	printf("outcome=%s retry_after=%ld\nmsg=%s\n", enroll_outcome_name(res.outcome),
	       res.retry_after, res.msg);
	if ((rc == 0) != (res.outcome == ENROLL_OK))
		printf("return value %d does not match the outcome\n", rc);

	if (password != NULL) {
		wipe(password, strlen(password));
		free(password);
	}
	free(user);
	OPENSSL_free(csr);
	X509_NAME_free(check.subject);
	EVP_PKEY_free(req.new_key);
	EVP_PKEY_free(req.cur_key);
	EVP_PKEY_free(req.boot_key);
	sk_X509_pop_free(chain, X509_free);
	OSSL_LIB_CTX_free(key_libctx);
	return res.outcome == ENROLL_OK && rc == 0 ? 0 : 1;
}
