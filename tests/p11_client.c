/*
 * p11_client: drives mtls-agent-pkcs11.so the way applications do, for
 * tests/integration/pkcs11-fork.sh.
 *
 *   p11_client MODULE LABEL fork N      load the key, sign once, fork N children
 *                                       that each sign (without C_Initialize)
 *                                       and N more that call C_Initialize
 *                                       afresh; all signatures verified
 *   p11_client MODULE LABEL threads N   N threads sign concurrently, 10 each
 *   p11_client MODULE LABEL restart F   sign; print "ready"; wait for file F;
 *                                       sign again with the same session and
 *                                       key handle; find the key again: same handle
 *   p11_client MODULE LABEL spec        C_Initialize/C_Finalize argument rules
 *
 * What is signed is a TLS 1.3 client CertificateVerify content with
 * CKM_ECDSA_SHA256 (the agent sees the whole message, so the default
 * sign-policy admits it) and every signature is checked against the
 * object's CKA_PUBLIC_KEY_INFO. Exit 0 when everything held, 1 otherwise,
 * with one line on stderr saying what failed.
 */
#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR p11;
static const char *label;
static EVP_PKEY *pub;

#define FAIL(...)                                                                                  \
	do {                                                                                       \
		fprintf(stderr, "p11_client[%ld]: ", (long)getpid());                              \
		fprintf(stderr, __VA_ARGS__);                                                      \
		fputc('\n', stderr);                                                               \
		return -1;                                                                         \
	} while (0)

static int find_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *key)
{
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE templ[] = {
		{CKA_CLASS, &cls, sizeof(cls)},
		{CKA_LABEL, (void *)label, strlen(label)},
	};
	CK_ULONG n = 0;
	CK_RV rv;

	if ((rv = p11->C_FindObjectsInit(s, templ, 2)) != CKR_OK)
		FAIL("C_FindObjectsInit: 0x%lx", rv);
	rv = p11->C_FindObjects(s, key, 1, &n);
	p11->C_FindObjectsFinal(s);
	if (rv != CKR_OK || n != 1)
		FAIL("no private key labelled \"%s\" (rv 0x%lx, %lu found)", label, rv, n);
	return 0;
}

static int load_pub(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
	unsigned char buf[4096];
	const unsigned char *p = buf;
	CK_ATTRIBUTE a = {CKA_PUBLIC_KEY_INFO, buf, sizeof(buf)};
	CK_RV rv;

	if ((rv = p11->C_GetAttributeValue(s, key, &a, 1)) != CKR_OK)
		FAIL("CKA_PUBLIC_KEY_INFO: 0x%lx", rv);
	if ((pub = d2i_PUBKEY(NULL, &p, (long)a.ulValueLen)) == NULL)
		FAIL("CKA_PUBLIC_KEY_INFO does not parse");
	return 0;
}

/* A TLS 1.3 client CertificateVerify content with a random transcript hash. */
static void cv_content(unsigned char *m, size_t *len)
{
	static const char ctx[] = "TLS 1.3, client CertificateVerify";

	memset(m, 0x20, 64);
	memcpy(m + 64, ctx, sizeof(ctx)); /* with its NUL */
	RAND_bytes(m + 64 + sizeof(ctx), 32);
	*len = 64 + sizeof(ctx) + 32;
}

static int verify(const unsigned char *msg, size_t len, const unsigned char *sig, size_t siglen)
{
	ECDSA_SIG *es = ECDSA_SIG_new();
	unsigned char *der = NULL;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	int derlen, ok = 0;

	if (es != NULL && md != NULL && siglen % 2 == 0 &&
	    ECDSA_SIG_set0(es, BN_bin2bn(sig, (int)siglen / 2, NULL),
			   BN_bin2bn(sig + siglen / 2, (int)siglen / 2, NULL)) &&
	    (derlen = i2d_ECDSA_SIG(es, &der)) > 0 &&
	    EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub) == 1 &&
	    EVP_DigestVerify(md, der, (size_t)derlen, msg, len) == 1)
		ok = 1;
	OPENSSL_free(der);
	ECDSA_SIG_free(es);
	EVP_MD_CTX_free(md);
	return ok ? 0 : -1;
}

static int sign_once(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
	CK_MECHANISM mech = {CKM_ECDSA_SHA256, NULL, 0};
	unsigned char msg[256], sig[256];
	CK_ULONG siglen = 0;
	size_t len;
	CK_RV rv;

	cv_content(msg, &len);
	if ((rv = p11->C_SignInit(s, &mech, key)) != CKR_OK)
		FAIL("C_SignInit: 0x%lx", rv);
	/* The size query first, as applications do. */
	if ((rv = p11->C_Sign(s, msg, len, NULL, &siglen)) != CKR_OK || siglen > sizeof(sig))
		FAIL("C_Sign (size): 0x%lx", rv);
	if ((rv = p11->C_Sign(s, msg, len, sig, &siglen)) != CKR_OK)
		FAIL("C_Sign: 0x%lx", rv);
	if (verify(msg, len, sig, siglen) != 0)
		FAIL("signature does not verify");
	return 0;
}

static int open_and_find(CK_SESSION_HANDLE *s, CK_OBJECT_HANDLE *key)
{
	CK_SLOT_ID slot;
	CK_ULONG n = 1;
	CK_RV rv;

	if ((rv = p11->C_GetSlotList(CK_TRUE, &slot, &n)) != CKR_OK || n != 1)
		FAIL("C_GetSlotList: 0x%lx", rv);
	if ((rv = p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, s)) != CKR_OK)
		FAIL("C_OpenSession: 0x%lx", rv);
	return find_key(*s, key);
}

static int init(void)
{
	CK_C_INITIALIZE_ARGS args;
	CK_RV rv;

	memset(&args, 0, sizeof(args));
	args.flags = CKF_OS_LOCKING_OK;
	if ((rv = p11->C_Initialize(&args)) != CKR_OK)
		FAIL("C_Initialize: 0x%lx", rv);
	return 0;
}

static int run_fork(int n)
{
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE key;
	int i, status, bad = 0;
	pid_t pid;

	if (init() != 0 || open_and_find(&s, &key) != 0 || load_pub(s, key) != 0 ||
	    sign_once(s, key) != 0)
		return -1;
	for (i = 0; i < 2 * n; i++) {
		if ((pid = fork()) < 0)
			FAIL("fork: %s", strerror(errno));
		if (pid == 0) {
			int r;

			if (i < n) {
				/* Carry on with the parent's session and handles. */
				r = sign_once(s, key);
			} else {
				/* Start afresh, as PKCS#11 says a child should. */
				CK_SESSION_HANDLE s2;
				CK_OBJECT_HANDLE k2;

				r = init() != 0 || open_and_find(&s2, &k2) != 0 ||
						    sign_once(s2, k2) != 0
					    ? -1
					    : 0;
				if (r == 0 && p11->C_Finalize(NULL) != CKR_OK)
					r = -1;
			}
			_exit(r == 0 ? 0 : 1);
		}
	}
	for (i = 0; i < 2 * n; i++) {
		if (wait(&status) < 0)
			FAIL("wait: %s", strerror(errno));
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			bad++;
	}
	if (bad > 0)
		FAIL("%d of %d children failed", bad, 2 * n);
	/* The parent still signs after its children used the connection state it gave them. */
	if (sign_once(s, key) != 0)
		return -1;
	printf("fork: %d children signed and verified\n", 2 * n);
	return p11->C_Finalize(NULL) == CKR_OK ? 0 : -1;
}

struct thread_arg {
	CK_OBJECT_HANDLE key;
	int result;
};

static void *thread_main(void *v)
{
	struct thread_arg *t = v;
	CK_SESSION_HANDLE s;
	CK_SLOT_ID slot;
	CK_ULONG n = 1;
	int i;

	t->result = -1;
	if (p11->C_GetSlotList(CK_TRUE, &slot, &n) != CKR_OK ||
	    p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
		return NULL;
	for (i = 0; i < 10; i++)
		if (sign_once(s, t->key) != 0)
			return NULL;
	t->result = p11->C_CloseSession(s) == CKR_OK ? 0 : -1;
	return NULL;
}

static int run_threads(int n)
{
	struct thread_arg args[64];
	pthread_t th[64];
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE key;
	int i, bad = 0;

	if (n < 1 || n > 64)
		FAIL("1..64 threads");
	if (init() != 0 || open_and_find(&s, &key) != 0 || load_pub(s, key) != 0)
		return -1;
	for (i = 0; i < n; i++) {
		args[i].key = key;
		if (pthread_create(&th[i], NULL, thread_main, &args[i]) != 0)
			FAIL("pthread_create");
	}
	for (i = 0; i < n; i++) {
		pthread_join(th[i], NULL);
		bad += args[i].result != 0;
	}
	if (bad > 0)
		FAIL("%d of %d threads failed", bad, n);
	printf("threads: %d x 10 signatures verified\n", n);
	return p11->C_Finalize(NULL) == CKR_OK ? 0 : -1;
}

static int run_restart(const char *flag)
{
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE key, again;
	struct stat st;
	int i;

	if (init() != 0 || open_and_find(&s, &key) != 0 || load_pub(s, key) != 0 ||
	    sign_once(s, key) != 0)
		return -1;
	printf("ready\n");
	fflush(stdout);
	for (i = 0; stat(flag, &st) != 0; i++) {
		if (i >= 600)
			FAIL("%s did not appear within 60 s", flag);
		usleep(100000);
	}
	if (sign_once(s, key) != 0)
		FAIL("the same session and key handle no longer sign after the agent restarted");
	if (find_key(s, &again) != 0)
		return -1;
	if (again != key)
		FAIL("key handle changed across the agent restart: %lu, then %lu", key, again);
	printf("restart: same handle %lu signs\n", key);
	return p11->C_Finalize(NULL) == CKR_OK ? 0 : -1;
}

static CK_RV dummy_create(void **m)
{
	*m = NULL;
	return CKR_OK;
}

static CK_RV dummy_mutex(void *m)
{
	(void)m;
	return CKR_OK;
}

static int run_spec(void)
{
	CK_C_INITIALIZE_ARGS args;
	CK_INFO info;
	CK_RV rv;
	int x = 0;

	if ((rv = p11->C_GetInfo(&info)) != CKR_CRYPTOKI_NOT_INITIALIZED)
		FAIL("C_GetInfo before C_Initialize: 0x%lx", rv);
	memset(&args, 0, sizeof(args));
	args.pReserved = &x;
	if ((rv = p11->C_Initialize(&args)) != CKR_ARGUMENTS_BAD)
		FAIL("C_Initialize with pReserved: 0x%lx", rv);
	memset(&args, 0, sizeof(args));
	args.CreateMutex = dummy_create;
	args.DestroyMutex = dummy_mutex;
	args.LockMutex = dummy_mutex;
	args.UnlockMutex = dummy_mutex;
	if ((rv = p11->C_Initialize(&args)) != CKR_CANT_LOCK)
		FAIL("C_Initialize with only application mutexes: 0x%lx", rv);
	args.flags = CKF_OS_LOCKING_OK;
	if ((rv = p11->C_Initialize(&args)) != CKR_OK)
		FAIL("C_Initialize with CKF_OS_LOCKING_OK: 0x%lx", rv);
	if ((rv = p11->C_Initialize(NULL)) != CKR_CRYPTOKI_ALREADY_INITIALIZED)
		FAIL("second C_Initialize: 0x%lx", rv);
	if ((rv = p11->C_Finalize(&x)) != CKR_ARGUMENTS_BAD)
		FAIL("C_Finalize with pReserved: 0x%lx", rv);
	if ((rv = p11->C_Finalize(NULL)) != CKR_OK)
		FAIL("C_Finalize: 0x%lx", rv);
	if ((rv = p11->C_Finalize(NULL)) != CKR_CRYPTOKI_NOT_INITIALIZED)
		FAIL("second C_Finalize: 0x%lx", rv);
	printf("spec: C_Initialize/C_Finalize rules hold\n");
	return 0;
}

int main(int argc, char **argv)
{
	CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
	void *h;
	int r;

	if (argc < 4) {
		fprintf(stderr,
			"usage: p11_client MODULE LABEL fork N|threads N|restart FILE|spec\n");
		return 2;
	}
	label = argv[2];
	if ((h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL)) == NULL) {
		fprintf(stderr, "p11_client: %s\n", dlerror());
		return 1;
	}
	*(void **)&get_list = dlsym(h, "C_GetFunctionList");
	if (get_list == NULL || get_list(&p11) != CKR_OK) {
		fprintf(stderr, "p11_client: no C_GetFunctionList in %s\n", argv[1]);
		return 1;
	}
	if (strcmp(argv[3], "fork") == 0 && argc == 5)
		r = run_fork(atoi(argv[4]));
	else if (strcmp(argv[3], "threads") == 0 && argc == 5)
		r = run_threads(atoi(argv[4]));
	else if (strcmp(argv[3], "restart") == 0 && argc == 5)
		r = run_restart(argv[4]);
	else if (strcmp(argv[3], "spec") == 0)
		r = run_spec();
	else
		return 2;
	EVP_PKEY_free(pub);
	return r == 0 ? 0 : 1;
}
