/*
 * Signature latency and throughput, interleaved in one run:
 *   direct  C_SignInit + C_Sign on the SoftHSM token, in-process
 *   agent   mtls_agent_sign() through mtls-agent (same token)
 *   rpc     C_SignInit + C_Sign through p11-kit RPC (p11-kit-client.so -> p11-kit server)
 * for ECDSA P-256 and RSA-2048-PSS over a 130-byte TLS 1.3 CertificateVerify
 * content (hash + sign), with 1 and N concurrent client processes. Prints
 * medians and ratios; run by bench/run-sign-bench.sh, never as a test.
 *
 * usage: sign-bench AGENT_SOCKET AGENT_PID DIRECT_MODULE RPC_MODULE TOKEN PIN
 */
#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <p11-kit/pkcs11.h>

#include "common/scheme.h"
#include "mtls-agent/client.h"

#define ROUNDS 5
#define OPS_PER_BATCH 200
#define MAX_CLIENTS 8

enum mode { MODE_DIRECT, MODE_AGENT, MODE_RPC, N_MODES };
static const char *const mode_names[] = {"direct", "agent", "rpc"};

/* The token mechanism and its parameters come from the scheme (common/scheme.c). */
struct keydef {
	const char *label; /* identity name = CKA_LABEL */
	uint16_t scheme;
};
static const struct keydef keys[] = {
	{"bench-p256", MTLS_AGENT_ECDSA_SECP256R1_SHA256},
	{"bench-rsa", MTLS_AGENT_RSA_PSS_RSAE_SHA256},
};

static const char *agent_sock, *direct_module, *rpc_module, *token, *pin;
static uint8_t cv[130];

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

struct p11 {
	CK_FUNCTION_LIST_PTR f;
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE key;
};

static int p11_open_once(CK_FUNCTION_LIST_PTR f, const struct keydef *kd, struct p11 *p)
{
	CK_SLOT_ID slots[16];
	CK_ULONG n = 16, i = 0, found = 0;
	CK_TOKEN_INFO ti;
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)},
			       {CKA_LABEL, (void *)kd->label, strlen(kd->label)}};
	char label[33];
	CK_RV rv;

	p->f = f;
	n = 16;
	if (p->f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
		n = 0;
	for (i = 0; i < n; i++) {
		if (p->f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
			continue;
		memcpy(label, ti.label, 32);
		label[32] = '\0';
		for (int k = 31; k >= 0 && label[k] == ' '; k--)
			label[k] = '\0';
		if (strcmp(label, token) == 0)
			break;
	}
	if (i == n) {
		return -1;
	}
	if ((rv = p->f->C_OpenSession(slots[i], CKF_SERIAL_SESSION, NULL, NULL, &p->s)) != CKR_OK)
		goto fail;
	rv = p->f->C_Login(p->s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
		goto fail;
	if ((rv = p->f->C_FindObjectsInit(p->s, tmpl, 2)) != CKR_OK ||
	    (rv = p->f->C_FindObjects(p->s, &p->key, 1, &found)) != CKR_OK ||
	    (rv = p->f->C_FindObjectsFinal(p->s)) != CKR_OK)
		goto fail;
	if (found != 1) {
		fprintf(stderr, "no private key labelled %s\n", kd->label);
		return -1;
	}
	return 0;
fail:
	return -1;
}

/*
 * SoftHSM starting in a new process while others hold its token files now
 * and then lists no token or fails a call: initialise again and retry
 * (set-up only, never inside the timed loop).
 */
static int p11_open(const char *module, const struct keydef *kd, struct p11 *p)
{
	CK_C_GetFunctionList gfl;
	CK_FUNCTION_LIST_PTR f;
	int attempt;
	void *h;

	if ((h = dlopen(module, RTLD_NOW | RTLD_LOCAL)) == NULL ||
	    (gfl = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList")) == NULL ||
	    gfl(&f) != CKR_OK)
		return -1;
	for (attempt = 0; attempt < 20; attempt++) {
		if (f->C_Initialize(NULL) == CKR_OK && p11_open_once(f, kd, p) == 0)
			return 0;
		f->C_Finalize(NULL);
		usleep(50000);
	}
	return -1;
}

static int p11_sign(struct p11 *p, const struct keydef *kd)
{
	const struct scheme *sc = scheme_by_code(kd->scheme);
	CK_RSA_PKCS_PSS_PARAMS pss = {sc->md->ckm, sc->md->ckg_mgf1, sc->md->len};
	CK_MECHANISM mech = {sc->ckm_raw, NULL, 0};
	uint8_t digest[32], sig[512];
	CK_ULONG siglen = sizeof(sig);

	if (sc->pad == SIG_PAD_PSS) {
		mech.pParameter = &pss;
		mech.ulParameterLen = sizeof(pss);
	}
	/* The same work the agent does: hash the content, then sign the digest. */
	EVP_Digest(cv, sizeof(cv), digest, NULL, EVP_sha256(), NULL);
	if (p->f->C_SignInit(p->s, &mech, p->key) != CKR_OK ||
	    p->f->C_Sign(p->s, digest, sizeof(digest), sig, &siglen) != CKR_OK)
		return -1;
	return 0;
}

/* One client process: ops signatures, latencies (µs) written to fd. */
static void client(enum mode m, const struct keydef *kd, int ops, int fd)
{
	double *lat = calloc((size_t)ops, sizeof(double)), t, span[2];
	struct p11 p;
	mtls_agent *a = NULL;
	uint8_t *sig;
	size_t siglen;
	int i;

	if (lat == NULL)
		_exit(1);
	if (m == MODE_AGENT) {
		if (mtls_agent_connect(agent_sock, &a) != 0)
			_exit(1);
	} else if (p11_open(m == MODE_DIRECT ? direct_module : rpc_module, kd, &p) != 0) {
		fprintf(stderr, "sign-bench: %s: cannot open key %s (%s)\n", mode_names[m],
			kd->label, "no token, login or key after 20 attempts");
		_exit(1);
	}
	/* Warm-up outside the measurement. */
	for (i = 0; i < 5; i++) {
		if (m == MODE_AGENT) {
			if (mtls_agent_sign(a, kd->label, kd->scheme, 0, NULL, cv, sizeof(cv), &sig,
					    &siglen) != 0)
				_exit(1);
			free(sig);
		} else if (p11_sign(&p, kd) != 0) {
			_exit(1);
		}
	}
	span[0] = now_us();
	for (i = 0; i < ops; i++) {
		t = now_us();
		if (m == MODE_AGENT) {
			if (mtls_agent_sign(a, kd->label, kd->scheme, 0, NULL, cv, sizeof(cv), &sig,
					    &siglen) != 0)
				_exit(1);
			free(sig);
		} else if (p11_sign(&p, kd) != 0) {
			_exit(1);
		}
		lat[i] = now_us() - t;
	}
	span[1] = now_us();
	if (write(fd, lat, (size_t)ops * sizeof(double)) !=
		    (ssize_t)((size_t)ops * sizeof(double)) ||
	    write(fd, span, sizeof(span)) != (ssize_t)sizeof(span))
		_exit(1);
	_exit(0);
}

/*
 * Runs `clients` processes of `ops` signatures each; returns the total
 * throughput (signatures/s over the wall time) and appends latencies.
 */
static double batch(enum mode m, const struct keydef *kd, int clients, int ops, double *lat,
		    size_t *n_lat)
{
	int fds[MAX_CLIENTS][2], i, st, ok = 1;
	pid_t pids[MAX_CLIENTS];
	double t0 = 0, t1 = 0, span[2];
	ssize_t r;
	size_t got;

	for (i = 0; i < clients; i++) {
		if (pipe(fds[i]) != 0)
			exit(1);
		if ((pids[i] = fork()) == 0) {
			close(fds[i][0]);
			client(m, kd, ops, fds[i][1]);
		}
		close(fds[i][1]);
	}
	for (i = 0; i < clients; i++) {
		got = 0;
		while (got < (size_t)ops * sizeof(double)) {
			r = read(fds[i][0], (char *)(lat + *n_lat) + got,
				 (size_t)ops * sizeof(double) - got);
			if (r <= 0)
				break;
			got += (size_t)r;
		}
		if (read(fds[i][0], span, sizeof(span)) != (ssize_t)sizeof(span))
			ok = 0;
		/* The measured window: first signature of any client to the last of any. */
		if (i == 0 || span[0] < t0)
			t0 = span[0];
		if (i == 0 || span[1] > t1)
			t1 = span[1];
		close(fds[i][0]);
		if (waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 ||
		    got != (size_t)ops * sizeof(double))
			ok = 0;
		else
			*n_lat += (size_t)ops;
	}
	if (!ok) {
		fprintf(stderr, "sign-bench: a %s client failed\n", mode_names[m]);
		exit(1);
	}
	/* Clients start at slightly different moments: the window from the first
	 * signature to the last slightly understates concurrency, equally for all routes. */
	return (double)clients * ops / ((t1 - t0) / 1e6);
}

static double median(double *v, size_t n)
{
	qsort(v, n, sizeof(double), cmp_double);
	return n == 0 ? 0 : v[n / 2];
}

static long rss_kb(const char *pid)
{
	char path[64], line[256];
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%s/status", pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

int main(int argc, char **argv)
{
	static const int client_counts[] = {1, MAX_CLIENTS};
	double *lat[2][N_MODES][2], tput[2][N_MODES][2][ROUNDS], med[2][N_MODES][2],
		tp[2][N_MODES][2];
	size_t n_lat[2][N_MODES][2];
	mtls_agent *idle[100];
	size_t k, c, r, i;
	int m;

	if (argc != 7) {
		fprintf(stderr, "usage: sign-bench AGENT_SOCKET AGENT_PID DIRECT_MODULE RPC_MODULE "
				"TOKEN PIN\n");
		return 2;
	}
	agent_sock = argv[1];
	direct_module = argv[3];
	rpc_module = argv[4];
	token = argv[5];
	pin = argv[6];
	signal(SIGPIPE, SIG_IGN);
	memset(cv, 0x20, 64);
	memcpy(cv + 64, "TLS 1.3, client CertificateVerify", 33);
	cv[97] = 0;
	memset(cv + 98, 0x3c, 32);

	for (k = 0; k < 2; k++)
		for (m = 0; m < N_MODES; m++)
			for (c = 0; c < 2; c++) {
				lat[k][m][c] = calloc((size_t)ROUNDS * OPS_PER_BATCH * MAX_CLIENTS,
						      sizeof(double));
				n_lat[k][m][c] = 0;
			}
	/* Interleaved: every round runs every configuration once, in turn. */
	for (r = 0; r < ROUNDS; r++)
		for (k = 0; k < 2; k++)
			for (c = 0; c < 2; c++)
				for (m = 0; m < N_MODES; m++)
					tput[k][m][c][r] =
						batch((enum mode)m, &keys[k], client_counts[c],
						      OPS_PER_BATCH, lat[k][m][c], &n_lat[k][m][c]);
	printf("Signature of a 130-byte TLS 1.3 CertificateVerify content, %d rounds x %d "
	       "signatures per client, medians\n\n",
	       ROUNDS, OPS_PER_BATCH);
	printf("%-14s %-7s %12s %12s %14s %14s %10s\n", "key", "route", "1 client µs",
	       "8 clients µs", "1 client sig/s", "8 clients sig/s", "8 vs 1");
	for (k = 0; k < 2; k++) {
		for (m = 0; m < N_MODES; m++) {
			for (c = 0; c < 2; c++) {
				med[k][m][c] = median(lat[k][m][c], n_lat[k][m][c]);
				tp[k][m][c] = median(tput[k][m][c], ROUNDS);
			}
			printf("%-14s %-7s %12.1f %12.1f %14.0f %14.0f %9.2fx\n", keys[k].label,
			       mode_names[m], med[k][m][0], med[k][m][1], tp[k][m][0], tp[k][m][1],
			       tp[k][m][1] / tp[k][m][0]);
		}
		printf("%-14s agent latency / direct: %.2fx   rpc latency / direct: %.2fx\n\n",
		       keys[k].label, med[k][MODE_AGENT][0] / med[k][MODE_DIRECT][0],
		       med[k][MODE_RPC][0] / med[k][MODE_DIRECT][0]);
	}
	/* Agent memory with 100 idle clients connected. */
	printf("agent RSS: %ld kB with 0 extra clients", rss_kb(argv[2]));
	for (i = 0; i < 100; i++)
		if (mtls_agent_connect(agent_sock, &idle[i]) != 0) {
			fprintf(stderr, "idle connection %zu failed: %s\n", i,
				mtls_agent_last_error());
			return 1;
		}
	usleep(200000);
	printf(", %ld kB with 100 idle clients\n", rss_kb(argv[2]));
	for (i = 0; i < 100; i++)
		mtls_agent_close(idle[i]);
	return 0;
}
