/*
 * TPM benchmarks, driven by bench/run-tpm-bench.sh; never a test.
 *
 * tpm-bench sign -t TCTI -s AGENT_SOCKET -k EC_KEYFILE:EC_IDENTITY -k RSA_KEYFILE:RSA_IDENTITY
 *                [-r ROUNDS] [-n OPS]
 *   Latency of one signature over a 130-byte TLS 1.3 CertificateVerify
 *   content (SHA-256 + sign), interleaved in rounds:
 *     direct  in-process ESYS on TCTI, the key loaded once (TPM2_Load under
 *             the SRK re-created from the TCG template), TPM2_Sign per op
 *     agent   mtls_agent_sign() through mtls-agent (the same key file, on a
 *             TPM with the same seeds: run-tpm-bench.sh clones the swtpm state)
 *   Prints the median and p90 per key and route, and agent - direct.
 *
 * tpm-bench tls -P PORT -c CHAIN -k KEY -a SERVER_CA -e KEY_PROVIDER [-p 1.2|1.3]
 *   Full mTLS handshakes (fresh TCP connection and SSL, no resumption) to
 *   `openssl s_server -www` on 127.0.0.1:PORT. The key file is loaded with
 *   SSL_CTX_use_PrivateKey_file, so the providers OPENSSL_CONF activates
 *   decide where it lives; it must end up in provider KEY_PROVIDER
 *   ("mtlsagent", "tpm2", "default"). Prints "ready load_ms=..", then for every
 *   number N read from standard input runs N handshakes and prints
 *   "batch n=N hs_per_s=.. p50_us=..". Each page must show the client
 *   certificate the server verified.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/asn1t.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_tctildr.h>

#include "mtls-agent/client.h"

#define MAX_SAMPLES 100000

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n == 0 ? 0 : v[(size_t)(p * (double)(n - 1))];
}

static void __attribute__((noreturn, format(printf, 1, 2))) die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "tpm-bench: ");
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	ERR_print_errors_fp(stderr);
	exit(1);
}

/* --- sign ---------------------------------------------------------------------------- */

/* The loadable-key part of a TSS2 PRIVATE KEY file (see keystore/ks-tpm2.c). */
typedef struct {
	ASN1_OBJECT *type;
	ASN1_BOOLEAN empty_auth;
	ASN1_INTEGER *parent;
	ASN1_OCTET_STRING *pubkey;
	ASN1_OCTET_STRING *privkey;
} BENCH_TSS2_KEY;

ASN1_SEQUENCE(BENCH_TSS2_KEY) =
	{
		ASN1_SIMPLE(BENCH_TSS2_KEY, type, ASN1_OBJECT),
		ASN1_EXP_OPT(BENCH_TSS2_KEY, empty_auth, ASN1_BOOLEAN, 0),
		ASN1_SIMPLE(BENCH_TSS2_KEY, parent, ASN1_INTEGER),
		ASN1_SIMPLE(BENCH_TSS2_KEY, pubkey, ASN1_OCTET_STRING),
		ASN1_SIMPLE(BENCH_TSS2_KEY, privkey, ASN1_OCTET_STRING),
} static_ASN1_SEQUENCE_END(BENCH_TSS2_KEY)

		struct bkey {
	const char *file;
	const char *identity;
	TPM2B_PUBLIC pub;
	TPM2B_PRIVATE priv;
	ESYS_TR tr;
	int rsa;
};

static void read_key(struct bkey *k)
{
	unsigned char *der = NULL;
	const unsigned char *p;
	char *name = NULL, *hdr = NULL;
	long len = 0;
	BENCH_TSS2_KEY *t;
	FILE *f;

	if ((f = fopen(k->file, "r")) == NULL)
		die("%s: %s", k->file, strerror(errno));
	if (PEM_read(f, &name, &hdr, &der, &len) != 1 || strcmp(name, "TSS2 PRIVATE KEY") != 0)
		die("%s: no TSS2 PRIVATE KEY", k->file);
	fclose(f);
	p = der;
	t = (BENCH_TSS2_KEY *)ASN1_item_d2i(NULL, &p, len, ASN1_ITEM_rptr(BENCH_TSS2_KEY));
	if (t == NULL ||
	    Tss2_MU_TPM2B_PUBLIC_Unmarshal(t->pubkey->data, (size_t)t->pubkey->length, NULL,
					   &k->pub) != 0 ||
	    Tss2_MU_TPM2B_PRIVATE_Unmarshal(t->privkey->data, (size_t)t->privkey->length, NULL,
					    &k->priv) != 0)
		die("%s: cannot parse", k->file);
	k->rsa = k->pub.publicArea.type == TPM2_ALG_RSA;
	ASN1_item_free((ASN1_VALUE *)t, ASN1_ITEM_rptr(BENCH_TSS2_KEY));
	OPENSSL_free(der);
	OPENSSL_free(name);
	OPENSSL_free(hdr);
}

static const TPM2B_PUBLIC srk_template = {
	.publicArea =
		{
			.type = TPM2_ALG_ECC,
			.nameAlg = TPM2_ALG_SHA256,
			.objectAttributes = TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_RESTRICTED |
					    TPMA_OBJECT_DECRYPT | TPMA_OBJECT_NODA |
					    TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
					    TPMA_OBJECT_SENSITIVEDATAORIGIN,
			.parameters.eccDetail =
				{
					.symmetric = {.algorithm = TPM2_ALG_AES,
						      .keyBits.aes = 128,
						      .mode.aes = TPM2_ALG_CFB},
					.scheme = {.scheme = TPM2_ALG_NULL},
					.curveID = TPM2_ECC_NIST_P256,
					.kdf = {.scheme = TPM2_ALG_NULL},
				},
		},
};

static uint8_t cv[130];

static void direct_sign(ESYS_CONTEXT *e, const struct bkey *k)
{
	static const TPMT_TK_HASHCHECK null_ticket = {.tag = TPM2_ST_HASHCHECK,
						      .hierarchy = TPM2_RH_NULL};
	TPMT_SIG_SCHEME scheme;
	TPMT_SIGNATURE *sig = NULL;
	TPM2B_DIGEST d = {.size = 32};
	TSS2_RC rc;

	if (EVP_Digest(cv, sizeof(cv), d.buffer, NULL, EVP_sha256(), NULL) != 1)
		die("sha256");
	memset(&scheme, 0, sizeof(scheme));
	scheme.scheme = k->rsa ? TPM2_ALG_RSAPSS : TPM2_ALG_ECDSA;
	scheme.details.any.hashAlg = TPM2_ALG_SHA256;
	rc = Esys_Sign(e, k->tr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &d, &scheme,
		       &null_ticket, &sig);
	if (rc != TSS2_RC_SUCCESS)
		die("Esys_Sign: 0x%x", (unsigned)rc);
	Esys_Free(sig);
}

static void agent_sign(mtls_agent *a, const struct bkey *k)
{
	uint8_t *sig = NULL;
	size_t siglen = 0;

	if (mtls_agent_sign(a, k->identity,
			    k->rsa ? MTLS_AGENT_RSA_PSS_RSAE_SHA256
				   : MTLS_AGENT_ECDSA_SECP256R1_SHA256,
			    0, NULL, cv, sizeof(cv), &sig, &siglen) != 0)
		die("agent sign %s: %s", k->identity, mtls_agent_last_error());
	free(sig);
}

static int cmd_sign(int argc, char **argv)
{
	static const TPM2B_SENSITIVE_CREATE no_auth;
	static const TPM2B_DATA no_outside;
	static const TPML_PCR_SELECTION no_pcrs;
	const char *tcti = NULL, *sock = NULL;
	struct bkey keys[2];
	size_t nkeys = 0, ns[2][2] = {{0}}, i, r, m;
	double *lat[2][2], t;
	int rounds = 10, ops = 100, c, o;
	TSS2_TCTI_CONTEXT *tctx = NULL;
	ESYS_CONTEXT *e = NULL;
	ESYS_TR srk;
	mtls_agent *a = NULL;
	char *colon;

	memset(keys, 0, sizeof(keys));
	while ((c = getopt(argc, argv, "t:s:k:r:n:")) != -1) {
		switch (c) {
		case 't':
			tcti = optarg;
			break;
		case 's':
			sock = optarg;
			break;
		case 'k':
			if (nkeys == 2 || (colon = strchr(optarg, ':')) == NULL)
				die("-k FILE:IDENTITY, twice");
			*colon = '\0';
			keys[nkeys].file = optarg;
			keys[nkeys++].identity = colon + 1;
			break;
		case 'r':
			rounds = atoi(optarg);
			break;
		case 'n':
			ops = atoi(optarg);
			break;
		default:
			return 2;
		}
	}
	if (tcti == NULL || sock == NULL || nkeys == 0 || rounds < 1 || ops < 1 ||
	    (size_t)rounds * (size_t)ops > MAX_SAMPLES)
		die("usage: tpm-bench sign -t TCTI -s SOCKET -k FILE:ID [-k FILE:ID] [-r R] [-n N]");
	for (i = 0; i < 2; i++)
		for (m = 0; m < 2; m++)
			if ((lat[i][m] = calloc((size_t)rounds * (size_t)ops, sizeof(double))) ==
			    NULL)
				die("out of memory");
	memset(cv, ' ', 64);
	memcpy(cv + 64, "TLS 1.3, client CertificateVerify", 33);
	cv[97] = 0;
	for (i = 98; i < sizeof(cv); i++)
		cv[i] = (uint8_t)(i * 7);

	if (Tss2_TctiLdr_Initialize(tcti, &tctx) != 0 || Esys_Initialize(&e, tctx, NULL) != 0)
		die("cannot connect to the TPM at %s", tcti);
	if (Esys_CreatePrimary(e, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
			       &no_auth, &srk_template, &no_outside, &no_pcrs, &srk, NULL, NULL,
			       NULL, NULL) != 0)
		die("TPM2_CreatePrimary");
	for (i = 0; i < nkeys; i++) {
		read_key(&keys[i]);
		if (Esys_Load(e, srk, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &keys[i].priv,
			      &keys[i].pub, &keys[i].tr) != 0)
			die("TPM2_Load %s (a TPM with other seeds?)", keys[i].file);
	}
	if (mtls_agent_connect(sock, &a) != 0)
		die("agent: %s", mtls_agent_last_error());
	for (i = 0; i < nkeys; i++)
		for (o = 0; o < 5; o++) {
			direct_sign(e, &keys[i]);
			agent_sign(a, &keys[i]);
		}
	for (r = 0; r < (size_t)rounds; r++) {
		for (i = 0; i < nkeys; i++) {
			/* Alternate which route goes first, so neither always follows the other. */
			for (m = 0; m < 2; m++) {
				size_t mode = (m + r) % 2;

				for (o = 0; o < ops; o++) {
					t = now_us();
					if (mode == 0)
						direct_sign(e, &keys[i]);
					else
						agent_sign(a, &keys[i]);
					lat[i][mode][ns[i][mode]++] = now_us() - t;
				}
			}
		}
	}
	printf("%-8s %-7s %10s %10s %8s\n", "key", "route", "p50_us", "p90_us", "samples");
	for (i = 0; i < nkeys; i++) {
		double d50 = pct(lat[i][0], ns[i][0], 0.5), d90 = pct(lat[i][0], ns[i][0], 0.9);
		double a50 = pct(lat[i][1], ns[i][1], 0.5), a90 = pct(lat[i][1], ns[i][1], 0.9);
		const char *kn = keys[i].rsa ? "RSA-2048" : "P-256";

		printf("%-8s %-7s %10.0f %10.0f %8zu\n", kn, "direct", d50, d90, ns[i][0]);
		printf("%-8s %-7s %10.0f %10.0f %8zu\n", kn, "agent", a50, a90, ns[i][1]);
		printf("%-8s agent - direct: %+.0f us (median), ratio %.3f\n", kn, a50 - d50,
		       d50 > 0 ? a50 / d50 : 0);
	}
	mtls_agent_close(a);
	for (i = 0; i < nkeys; i++)
		Esys_FlushContext(e, keys[i].tr);
	Esys_FlushContext(e, srk);
	Esys_Finalize(&e);
	Tss2_TctiLdr_Finalize(&tctx);
	return 0;
}

/* --- tls ------------------------------------------------------------------------------ */

static int tls_port;
static const char *tls_proto = "1.3";

static void handshake(SSL_CTX *ctx)
{
	static const char req[] = "GET / HTTP/1.0\r\n\r\n";
	struct sockaddr_in sin;
	char buf[16384], page[65536];
	size_t plen = 0;
	SSL *ssl;
	int fd, one = 1, n;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)tls_port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if ((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
	    connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0)
		die("connect: %s", strerror(errno));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if ((ssl = SSL_new(ctx)) == NULL || SSL_set_fd(ssl, fd) != 1 || SSL_connect(ssl) != 1)
		die("TLS handshake failed");
	if (SSL_write(ssl, req, (int)strlen(req)) != (int)strlen(req))
		die("TLS write failed");
	while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0) {
		if (plen + (size_t)n < sizeof(page)) {
			memcpy(page + plen, buf, (size_t)n);
			plen += (size_t)n;
		}
	}
	page[plen] = '\0';
	if (strstr(page, "Client certificate") == NULL)
		die("the server's page shows no verified client certificate");
	SSL_shutdown(ssl);
	SSL_free(ssl);
	close(fd);
}

static int cmd_tls(int argc, char **argv)
{
	const char *chain = NULL, *key = NULL, *ca = NULL, *want = NULL, *prov;
	SSL_CTX *ctx;
	EVP_PKEY *pk;
	double t0, t, *lat;
	char line[64];
	int c, n, i, ver;

	while ((c = getopt(argc, argv, "P:c:k:a:e:p:")) != -1) {
		switch (c) {
		case 'P':
			tls_port = atoi(optarg);
			break;
		case 'c':
			chain = optarg;
			break;
		case 'k':
			key = optarg;
			break;
		case 'a':
			ca = optarg;
			break;
		case 'e':
			want = optarg;
			break;
		case 'p':
			tls_proto = optarg;
			break;
		default:
			return 2;
		}
	}
	if (tls_port <= 0 || chain == NULL || key == NULL || ca == NULL || want == NULL)
		die("usage: tpm-bench tls -P PORT -c CHAIN -k KEY -a SERVER_CA -e PROVIDER [-p 1.3]");
	ver = strcmp(tls_proto, "1.2") == 0 ? TLS1_2_VERSION : TLS1_3_VERSION;
	if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL ||
	    SSL_CTX_set_min_proto_version(ctx, ver) != 1 ||
	    SSL_CTX_set_max_proto_version(ctx, ver) != 1 ||
	    SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
		die("SSL_CTX set-up");
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	t0 = now_us();
	if (SSL_CTX_use_certificate_chain_file(ctx, chain) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1)
		die("cannot load %s / %s", chain, key);
	t = now_us() - t0;
	pk = SSL_CTX_get0_privatekey(ctx);
	prov = EVP_PKEY_get0_provider(pk) != NULL
		       ? OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(pk))
		       : "legacy";
	if (strcmp(prov, want) != 0)
		die("the key is in provider %s, not %s", prov, want);
	handshake(ctx);
	printf("ready key_provider=%s load_ms=%.2f\n", prov, t / 1e3);
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin) != NULL) {
		if ((n = atoi(line)) <= 0 || n > MAX_SAMPLES)
			die("bad batch size");
		if ((lat = calloc((size_t)n, sizeof(*lat))) == NULL)
			die("out of memory");
		t0 = now_us();
		for (i = 0; i < n; i++) {
			t = now_us();
			handshake(ctx);
			lat[i] = now_us() - t;
		}
		t = now_us() - t0;
		printf("batch n=%d hs_per_s=%.1f p50_us=%.0f\n", n, n / (t / 1e6),
		       pct(lat, (size_t)n, 0.5));
		fflush(stdout);
		free(lat);
	}
	SSL_CTX_free(ctx);
	return 0;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc >= 2 && strcmp(argv[1], "sign") == 0)
		return cmd_sign(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "tls") == 0)
		return cmd_tls(argc - 1, argv + 1);
	fprintf(stderr, "usage: tpm-bench sign|tls ... (see bench/tpm-bench.c)\n");
	return 2;
}
