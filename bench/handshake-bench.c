/*
 * Full mTLS handshakes per second from one client process, for one key route:
 *   file    software key from a PEM file (SSL_CTX_use_PrivateKey_file)
 *   engine  PKCS#11 key in-process through the libp11 engine "pkcs11"
 *           (ENGINE_load_private_key with a pkcs11: URI)
 *   agent   key held by mtls-agent: the key reference file given to
 *           SSL_CTX_use_PrivateKey_file, with the mtlsagent provider loaded
 *           by OPENSSL_CONF (the environment decides; this program does not)
 * Each handshake is a fresh TCP connection and a fresh SSL (no session reuse,
 * no tickets) to `openssl s_server -Verify 1 -verify_return_error -www`; the
 * client sends GET / and reads the page to the end, so the server has verified
 * the client's certificate and CertificateVerify before the next one starts,
 * and the page must say so.
 *
 * Set-up, then the first handshake and WARMUP untimed ones; then one line of
 * key=value pairs (times in ms / us, rates in handshakes/s):
 *   init_ms     library set-up before the key load (OPENSSL_init_ssl, which
 *               loads OPENSSL_CONF and its providers; for engine: ENGINE_by_id
 *               + MODULE_PATH + ENGINE_init)
 *   load_ms     the key load: SSL_CTX_use_PrivateKey_file, or
 *               ENGINE_load_private_key + SSL_CTX_use_PrivateKey
 *   first_ms    the first handshake (lazy set-up: agent connection, sessions)
 *   total       handshakes done so far (first + warmup + timed)
 * and, for N timed handshakes (-n N; -n 0: the set-up figures only):
 *   hs_per_s    N / their wall time
 *   p50_us      median wall time of one handshake
 *   cpu_us      this process's CPU time (user+sys) per timed handshake
 * With -s (batches), the first line is "ready ..." without the timed figures;
 * then for every line "N" read from standard input, N timed handshakes and a
 * line "batch n=N hs_per_s=... p50_us=... cpu_us=... wall_us=..."; it exits at
 * end of input. bench/run-handshake-bench.sh keeps one such process per
 * configuration and gives them batches in turn, so that all configurations
 * share the machine's changing load; never a test, asserts nothing about time.
 *
 * usage: handshake-bench -r file|engine|agent -p 1.2|1.3 -k KEY -c CHAIN -a SERVER_CA
 *                        -P PORT [-n N | -s] [-w WARMUP] [-m PKCS11_MODULE]
 */
#include "config.h"

/* The ENGINE API (route "engine") is deprecated in OpenSSL 3. */
#ifndef OPENSSL_API_COMPAT
#define OPENSSL_API_COMPAT 0x10100000L
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define PAGE_MAX (256 * 1024)

static const char *route, *proto, *key_arg, *chain, *server_ca, *module;
static int port, n_hs = 400, warmup = 10, serve;
static char page[PAGE_MAX + 1];

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static double cpu_us(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void die(const char *what)
{
	fprintf(stderr, "handshake-bench (%s, TLS %s, %s): %s\n", route ? route : "?",
		proto ? proto : "?", key_arg ? key_arg : "?", what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static void usage(void)
{
	fprintf(stderr, "usage: handshake-bench -r file|engine|agent -p 1.2|1.3 -k KEY -c CHAIN "
			"-a SERVER_CA -P PORT [-n N | -s] [-w WARMUP] [-m PKCS11_MODULE]\n");
	exit(2);
}

/* Value of "NAME: value" in the server's page, or "" (for the report). */
static void page_field(const char *name, char *out, size_t outlen)
{
	const char *p = strstr(page, name);
	size_t n = 0;

	out[0] = '\0';
	if (p == NULL)
		return;
	p += strlen(name);
	while (*p == ' ')
		p++;
	while (p[n] != '\0' && p[n] != '\n' && p[n] != '\r' && n + 1 < outlen) {
		out[n] = p[n] == ' ' ? '_' : p[n];
		n++;
	}
	out[n] = '\0';
}

/* One full handshake + GET / + the whole page. Dies on any failure. */
static void handshake(SSL_CTX *ctx, const struct sockaddr_in *sa)
{
	static const char req[] = "GET / HTTP/1.0\r\n\r\n";
	size_t len = 0;
	int fd, one = 1, r;
	SSL *ssl;

	if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		die("socket");
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) != 0) {
		fprintf(stderr, "connect: %s\n", strerror(errno));
		die("cannot connect to the server");
	}
	if ((ssl = SSL_new(ctx)) == NULL || !SSL_set_fd(ssl, fd))
		die("SSL_new");
	if (SSL_connect(ssl) != 1)
		die("handshake failed");
	if (SSL_write(ssl, req, (int)sizeof(req) - 1) != (int)sizeof(req) - 1)
		die("SSL_write failed (server refused the client's certificate?)");
	while (len < PAGE_MAX && (r = SSL_read(ssl, page + len, (int)(PAGE_MAX - len))) > 0)
		len += (size_t)r;
	page[len] = '\0';
	/* The server verified the client (-verify_return_error refuses otherwise) and says so. */
	if (strncmp(page, "HTTP/1.0 200", 12) != 0 ||
	    strstr(page, "\nClient certificate") == NULL ||
	    strstr(page, "Verify return code: 0 (ok)") == NULL) {
		fprintf(stderr, "%.2000s\n", page);
		die("the server's page does not show a verified client certificate");
	}
	ERR_clear_error(); /* the server's close without close_notify, if any */
	SSL_shutdown(ssl);
	SSL_free(ssl);
	close(fd);
}

struct timed_result {
	double wall_us, cpu_us, p50_us;
};

/* N handshakes, timed one by one. */
static void timed(SSL_CTX *ctx, const struct sockaddr_in *sa, int n, struct timed_result *r)
{
	double c0, t0, *lat;
	int i;

	if ((lat = calloc((size_t)n, sizeof(*lat))) == NULL)
		die("out of memory");
	c0 = cpu_us();
	t0 = now_us();
	for (i = 0; i < n; i++) {
		double h0 = now_us();

		handshake(ctx, sa);
		lat[i] = now_us() - h0;
	}
	r->wall_us = now_us() - t0;
	r->cpu_us = cpu_us() - c0;
	qsort(lat, (size_t)n, sizeof(*lat), cmp_double);
	r->p50_us = n % 2 ? lat[n / 2] : (lat[n / 2 - 1] + lat[n / 2]) / 2;
	free(lat);
}

int main(int argc, char **argv)
{
	double t0, t_init, t_load, t_first;
	struct timed_result r;
	long total;
	const char *ver_want;
	struct sockaddr_in sa;
	char sigtype[64], sigdig[64], version[32], cipher[64];
	const char *kprov = "-";
	ENGINE *e = NULL;
	EVP_PKEY *pkey;
	SSL_CTX *ctx;
	int opt, i, v;

	while ((opt = getopt(argc, argv, "r:p:k:c:a:P:n:sw:m:")) != -1) {
		switch (opt) {
		case 'r':
			route = optarg;
			break;
		case 'p':
			proto = optarg;
			break;
		case 'k':
			key_arg = optarg;
			break;
		case 'c':
			chain = optarg;
			break;
		case 'a':
			server_ca = optarg;
			break;
		case 'P':
			port = atoi(optarg);
			break;
		case 'n':
			n_hs = atoi(optarg);
			break;
		case 's':
			serve = 1;
			break;
		case 'w':
			warmup = atoi(optarg);
			break;
		case 'm':
			module = optarg;
			break;
		default:
			usage();
		}
	}
	if (route == NULL || proto == NULL || key_arg == NULL || chain == NULL ||
	    server_ca == NULL || port <= 0 || port > 65535 || n_hs < 0 || warmup < 0 ||
	    (strcmp(route, "file") != 0 && strcmp(route, "engine") != 0 &&
	     strcmp(route, "agent") != 0))
		usage();
	if (strcmp(proto, "1.2") == 0) {
		v = TLS1_2_VERSION;
		ver_want = "TLSv1.2";
	} else if (strcmp(proto, "1.3") == 0) {
		v = TLS1_3_VERSION;
		ver_want = "TLSv1.3";
	} else {
		usage();
	}

	/* A server that closes first must not kill us when SSL_shutdown writes. */
	signal(SIGPIPE, SIG_IGN);

	/* --- set-up: libraries (and OPENSSL_CONF's providers), engine ---------------------- */
	t0 = now_us();
	if (!OPENSSL_init_ssl(OPENSSL_INIT_LOAD_CONFIG, NULL))
		die("OPENSSL_init_ssl");
	if (strcmp(route, "engine") == 0) {
		if ((e = ENGINE_by_id("pkcs11")) == NULL)
			die("no engine \"pkcs11\" (apt-get install libengine-pkcs11-openssl)");
		if (module != NULL && !ENGINE_ctrl_cmd_string(e, "MODULE_PATH", module, 0))
			die("engine ctrl MODULE_PATH");
		if (!ENGINE_init(e))
			die("ENGINE_init");
	}
	if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL)
		die("SSL_CTX_new");
	t_init = now_us() - t0;
	SSL_CTX_set_min_proto_version(ctx, v);
	SSL_CTX_set_max_proto_version(ctx, v);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (!SSL_CTX_load_verify_locations(ctx, server_ca, NULL))
		die("cannot load the server CA");
	if (!X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(ctx), "127.0.0.1"))
		die("X509_VERIFY_PARAM_set1_ip_asc");
	if (!SSL_CTX_use_certificate_chain_file(ctx, chain))
		die("cannot load the certificate chain");

	/* --- the key load --------------------------------------------------------------------- */
	t0 = now_us();
	if (e != NULL) {
		if ((pkey = ENGINE_load_private_key(e, key_arg, NULL, NULL)) == NULL)
			die("ENGINE_load_private_key");
		if (!SSL_CTX_use_PrivateKey(ctx, pkey))
			die("SSL_CTX_use_PrivateKey (does the key match the certificate?)");
		EVP_PKEY_free(pkey);
	} else if (!SSL_CTX_use_PrivateKey_file(ctx, key_arg, SSL_FILETYPE_PEM)) {
		die("SSL_CTX_use_PrivateKey_file (does the key match the certificate?)");
	}
	t_load = now_us() - t0;
	/* The key is where the route says: default provider, engine (legacy), or mtlsagent. */
	pkey = SSL_CTX_get0_privatekey(ctx);
	if (pkey != NULL && EVP_PKEY_get0_provider(pkey) != NULL)
		kprov = OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(pkey));
	else if (pkey != NULL)
		kprov = "legacy";
	if ((strcmp(route, "file") == 0 && strcmp(kprov, "default") != 0) ||
	    (strcmp(route, "agent") == 0 && strcmp(kprov, "mtlsagent") != 0) ||
	    (e != NULL && strcmp(kprov, "legacy") != 0)) {
		fprintf(stderr, "key held by provider '%s'\n", kprov);
		die("the key is not where this route expects it");
	}

	/* --- handshakes ------------------------------------------------------------------------
	 */
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	t0 = now_us();
	handshake(ctx, &sa);
	t_first = now_us() - t0;
	/* What the server saw, from the first page. */
	page_field("\nNew,", version, sizeof(version));
	if (strncmp(version, ver_want, strlen(ver_want)) != 0) {
		fprintf(stderr, "protocol: %s\n", version);
		die("the server did not report the requested protocol");
	}
	page_field("Cipher is", cipher, sizeof(cipher));
	page_field("Peer signature type:", sigtype, sizeof(sigtype));
	page_field("Peer signing digest:", sigdig, sizeof(sigdig));
	for (i = 0; i < warmup; i++)
		handshake(ctx, &sa);
	total = 1 + warmup;
	printf("%sroute=%s proto=%s init_ms=%.2f load_ms=%.2f first_ms=%.2f key_provider=%s "
	       "cipher=%s peer_sig=%s/%s",
	       serve ? "ready " : "", route, proto, t_init / 1e3, t_load / 1e3, t_first / 1e3,
	       kprov, cipher, sigtype[0] ? sigtype : "?", sigdig[0] ? sigdig : "?");
	if (serve) {
		char cmd[32];

		printf(" total=%ld\n", total);
		fflush(stdout);
		while (fgets(cmd, sizeof(cmd), stdin) != NULL) {
			int n = atoi(cmd);

			if (n < 1 || n > 1000000)
				die("bad batch size on standard input");
			timed(ctx, &sa, n, &r);
			total += n;
			printf("batch n=%d hs_per_s=%.1f p50_us=%.0f cpu_us=%.0f wall_us=%.0f total=%ld\n",
			       n, n / (r.wall_us / 1e6), r.p50_us, r.cpu_us / n, r.wall_us, total);
			fflush(stdout);
		}
	} else if (n_hs > 0) {
		timed(ctx, &sa, n_hs, &r);
		total += n_hs;
		printf(" n=%d total=%ld hs_per_s=%.1f p50_us=%.0f cpu_us=%.0f\n", n_hs, total,
		       n_hs / (r.wall_us / 1e6), r.p50_us, r.cpu_us / n_hs);
	} else {
		printf(" n=0 total=%ld\n", total);
	}
	SSL_CTX_free(ctx);
	if (e != NULL) {
		ENGINE_finish(e);
		ENGINE_free(e);
	}
	return 0;
}
