#include "config.h"

/*
 * TPM 2.0 keystore backend, on tpm2-tss ESYS.
 *
 * One ESYS context per keystore, on the TCTI the configuration names
 * (device:/dev/tpmrm0 by default). A TPM runs one command at a time, so
 * everything that talks to it runs under a ticket lock: waiting threads take
 * their turn in arrival order, and one client's burst of signatures cannot
 * starve another client.
 *
 * Keys are children of a storage parent: the SRK that TPM2_CreatePrimary
 * re-creates deterministically in the owner hierarchy from the TCG ECC P-256
 * template (the one tpm2-openssl and tpm2-tss-engine use, so their key files
 * load here and ours there), or a persistent parent such as 0x81000001. The
 * SRK and the keys stay loaded while the context lives. When the TPM runs out
 * of object slots (3 on a TCTI straight to swtpm, 3 per /dev/tpmrm0
 * connection) the key used least recently is flushed; it is loaded again when
 * needed, from the context saved when it was first loaded (one slot, no
 * parent; valid until the TPM is reset), else from its blob. Behind
 * tpm2-abrmd that also matters after a broker was killed during a command:
 * what it had loaded stays in the TPM, out of every client's reach.
 *
 * Key references: a TSS2 PRIVATE KEY PEM file or handle:0x81xxxxxx (a
 * persistent key). A key file holds the generations of one identity's key,
 * one PEM block each. The first block is the current key (what other tools
 * load from the file); keygen appends a block; activate moves a key to the
 * front once its certificate is installed.
 *
 * Failures: a TCTI error (TPM, swtpm or resource manager restarted, device
 * gone) or a TPM that forgot our objects tears the context down; the call is
 * retried once on a new context, with the SRK re-created and keys loaded
 * again. TPM_RC_RETRY/YIELDED/TESTING are resubmitted (by ESYS, then by us,
 * bounded). An authorization failure is never retried: a TPM counts those
 * towards its dictionary-attack lockout. Lockout is reported in the state.
 */

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include "common/log.h"
#include "common/util.h"
#include "keystore/keystore.h"
#include "keystore/tpm2-keyfile.h"
#include "mtls-agent/client.h"

#define HANDLE_PREFIX "handle:"
#define DEFAULT_TCTI "device:/dev/tpmrm0"

#define TPM_MAX_KEY_FILE (256 * 1024)
#define TPM_MAX_GENERATIONS 8 /* keygen refuses to grow a file beyond this */
#define TPM_ID_LEN 20	      /* ks_key.id: SHA-256 of the TPM2B_PUBLIC, truncated */
#define TPM_MAX_PARENTS 4     /* persistent parents kept as ESYS_TRs */
#define TPM_RETRIES 3	      /* our resubmissions of RETRY/YIELDED/TESTING after ESYS's */
#define TPM_PROBE_MS 10000    /* how long a new connection may take to answer */

/*
 * Results that are not the TPM's: the layer TSS2 leaves to applications.
 * They are never "connection lost" and never retried.
 */
#define KS_RC_LAYER TSS2_RC_LAYER(0xf0)
#define KS_RC_OWNER_AUTH (KS_RC_LAYER | 1)   /* owner hierarchy has a password */
#define KS_RC_KEY_AUTH (KS_RC_LAYER | 2)     /* key refused its auth before: not tried again */
#define KS_RC_KEY_CHANGED (KS_RC_LAYER | 3)  /* persistent handle holds another key now */
#define KS_RC_BAD_REPLY (KS_RC_LAYER | 4)    /* TPM answer we cannot use */
#define KS_RC_NO_ANSWER (KS_RC_LAYER | 5)    /* new connection did not answer in time */
#define KS_RC_PRIMARY_AUTH (KS_RC_LAYER | 6) /* SRK creation was refused: not tried again */
#define KS_RC_NOMEM (KS_RC_LAYER | 7)
#define KS_RC_EVICT_AUTH (KS_RC_LAYER | 8)  /* owner hierarchy has a password: cannot evict */
#define KS_RC_PARENT_AUTH (KS_RC_LAYER | 9) /* TPM2_Create under the parent was refused */

/* Backend data of a ks_key. */
struct tpm_key {
	TPM2_HANDLE persistent; /* key = handle:...; 0 for a key from a file */
	struct tpm_blob blob;	/* file keys: what TPM2_Load needs; persistent: pub only */
	char *path;		/* file the key was last found in */
	ESYS_TR tr;		/* loaded object, valid in establishment gen */
	/*
	 * File keys: TPM2_ContextSave of the key once loaded. TPM2_ContextLoad
	 * brings it back in one object slot where TPM2_Load needs two (the
	 * parent too), across reconnections, until the TPM is reset. NULL: none.
	 */
	TPMS_CONTEXT *saved;
	unsigned long gen;
	uint64_t last_use; /* LRU clock */
	int checked;	   /* loaded once and, if RSA, PSS salt checked */
	int auth_failed;   /* the TPM refused our (empty) auth: never tried again */
	int retired;	   /* ks_delete removed it: never used or found again */
};

struct tpm_parent {
	TPM2_HANDLE handle;
	ESYS_TR tr;
};

struct tpm_ks {
	struct keystore base;
	char *tcti;
	char *srk;		/* configuration text, NULL: the template SRK */
	TPM2_HANDLE srk_handle; /* parent of new keys: TPM2_RH_OWNER or a persistent handle */

	pthread_mutex_t lock; /* tickets and state text only: never held during a TPM call */
	pthread_cond_t turn;
	unsigned long next_ticket;
	unsigned long serving;
	char state[320];

	/* Everything below belongs to the thread holding the current ticket. */
	TSS2_TCTI_CONTEXT *tctx;
	ESYS_CONTEXT *ectx;
	unsigned long gen; /* establishment counter */
	int owner_auth_set;
	int has_sha384;
	int has_sha512;
	ESYS_TR primary; /* template SRK; ESYS_TR_NONE until needed */
	int primary_auth_failed;
	int parent_auth_failed; /* TPM2_Create under srk_handle was refused: not tried again */
	int stale_checked;	/* flush_stale() ran on this connection */
	struct tpm_parent parents[TPM_MAX_PARENTS];
	size_t n_parents;
	uint64_t clock;
	const char *what; /* the TPM command that failed last, for messages */
	struct ks_key **keys;
	size_t n_keys;
	size_t cap_keys;
};

static struct tpm_ks *to_tpm(struct keystore *ks)
{
	return (struct tpm_ks *)ks;
}

/* --- state and fair serialisation ----------------------------------------------------- */

static void __attribute__((format(printf, 2, 3))) set_state(struct tpm_ks *ks, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&ks->lock);
	va_start(ap, fmt);
	vsnprintf(ks->state, sizeof(ks->state), fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&ks->lock);
}

/* Waits for this thread's turn at the TPM: first come, first served. */
static void tpm_enter(struct tpm_ks *ks)
{
	unsigned long me;

	pthread_mutex_lock(&ks->lock);
	me = ks->next_ticket++;
	while (me != ks->serving)
		pthread_cond_wait(&ks->turn, &ks->lock);
	pthread_mutex_unlock(&ks->lock);
}

static void tpm_leave(struct tpm_ks *ks)
{
	pthread_mutex_lock(&ks->lock);
	ks->serving++;
	pthread_cond_broadcast(&ks->turn);
	pthread_mutex_unlock(&ks->lock);
}

/* --- response codes ------------------------------------------------------------------- */

enum rc_kind {
	RCK_OK,
	RCK_RESET,	   /* connection or TPM state lost: new context, retry once */
	RCK_OBJECT_MEMORY, /* no free object slot: flush a key, try again */
	RCK_AUTH,	   /* authorization failure: never retried */
	RCK_LOCKOUT,	   /* dictionary-attack lockout */
	RCK_RETRY,	   /* TPM busy: resubmit after a pause */
	RCK_OTHER,
};

/* TPM response code without the handle/parameter/session number of format-one codes. */
static TSS2_RC tpm_base(TSS2_RC rc)
{
	TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;

	if (layer != TSS2_TPM_RC_LAYER && layer != TSS2_RESMGR_TPM_RC_LAYER)
		return rc;
	rc &= 0xfff;
	if (rc & TPM2_RC_FMT1)
		return rc & (TPM2_RC_FMT1 | 0x3f);
	return rc;
}

static enum rc_kind rc_kind(TSS2_RC rc)
{
	TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;

	if (rc == TSS2_RC_SUCCESS)
		return RCK_OK;
	if (layer == KS_RC_LAYER)
		return rc == KS_RC_NO_ANSWER ? RCK_RESET : RCK_OTHER;
	if (layer != TSS2_TPM_RC_LAYER && layer != TSS2_RESMGR_TPM_RC_LAYER) {
		/*
		 * Below the TPM: the TCTI lost its connection, or ESYS is in an
		 * error state after one (it then refuses every further call).
		 * Bad arguments are our own bug; a new context does not hurt.
		 */
		return (rc & ~TSS2_RC_LAYER_MASK) == TSS2_BASE_RC_MEMORY ? RCK_OTHER : RCK_RESET;
	}
	switch (tpm_base(rc)) {
	case TPM2_RC_RETRY:
	case TPM2_RC_YIELDED:
	case TPM2_RC_TESTING:
	case TPM2_RC_NV_RATE:
		return RCK_RETRY;
	case TPM2_RC_OBJECT_MEMORY:
		return RCK_OBJECT_MEMORY;
	case TPM2_RC_AUTH_FAIL:
	case TPM2_RC_BAD_AUTH:
		return RCK_AUTH;
	case TPM2_RC_LOCKOUT:
		return RCK_LOCKOUT;
	/* TPM restarted without TPM2_Startup, or a resource manager forgot our objects. */
	case TPM2_RC_INITIALIZE:
	case TPM2_RC_REFERENCE_H0:
	case TPM2_RC_REFERENCE_H1:
	case TPM2_RC_REFERENCE_H2:
		return RCK_RESET;
	default:
		return RCK_OTHER;
	}
}

static const char *rc_text(TSS2_RC rc)
{
	switch (rc) {
	case KS_RC_OWNER_AUTH:
		return "the owner hierarchy has a password, so the SRK cannot be created from the "
		       "template; configure srk = handle:0x81000001 (a persistent SRK)";
	case KS_RC_KEY_AUTH:
		return "the TPM refused this key's (or its parent's) authorization earlier; not "
		       "tried again (dictionary-attack protection)";
	case KS_RC_KEY_CHANGED:
		return "the persistent handle now holds a different key";
	case KS_RC_BAD_REPLY:
		return "unexpected answer from the TPM";
	case KS_RC_NO_ANSWER:
		return "no answer within 10 s (is another program holding the TPM connection?)";
	case KS_RC_PRIMARY_AUTH:
		return "the TPM refused the owner authorization for the SRK earlier; not tried "
		       "again (configure srk = handle:... or reload after fixing it)";
	case KS_RC_PARENT_AUTH:
		return "the TPM refused the parent key's authorization earlier; not tried again "
		       "(dictionary-attack protection): the agent uses parents without a password";
	case KS_RC_NOMEM:
		return "out of memory";
	case KS_RC_EVICT_AUTH:
		return "the owner hierarchy has a password, which the agent does not hold; evict "
		       "the key with tpm2_evictcontrol -C o -P ... -c HANDLE";
	default:
		return Tss2_RC_Decode(rc);
	}
}

/*
 * Turns a failed call into an error line (and, for conditions an operator
 * must see, the keystore state). Ticket held.
 */
static int tpm_fail(struct tpm_ks *ks, char *err, size_t errlen, TSS2_RC rc, const char *doing)
{
	const char *what = ks->what != NULL ? ks->what : "TPM";

	switch (rc_kind(rc)) {
	case RCK_RESET:
		set_state(ks, "TPM not reachable (tcti %s): %s: %s", ks->tcti, what, rc_text(rc));
		snprintf(err, errlen, "%s: TPM not reachable (tcti %s): %s: %s", doing, ks->tcti,
			 what, rc_text(rc));
		return MTLS_AGENT_ERR_KEY_UNAVAILABLE;
	case RCK_LOCKOUT:
		set_state(ks,
			  "TPM in dictionary-attack lockout (TPM_RC_LOCKOUT, 0x%x) at %s; "
			  "wait for its recovery time or reset it with the lockout authorization",
			  (unsigned)rc, what);
		snprintf(err, errlen, "%s: TPM in dictionary-attack lockout (TPM_RC_LOCKOUT, 0x%x)",
			 doing, (unsigned)rc);
		return MTLS_AGENT_ERR_KEYSTORE;
	case RCK_AUTH:
		snprintf(err, errlen, "%s: %s: TPM authorization failure (0x%x: %s); not retried",
			 doing, what, (unsigned)rc, rc_text(rc));
		return MTLS_AGENT_ERR_PIN;
	case RCK_OBJECT_MEMORY:
		/*
		 * Nothing of ours was left to flush (evict_lru). Look for objects
		 * that are not ours again on the next call (flush_stale).
		 */
		ks->stale_checked = 0;
		set_state(
			ks,
			"TPM object memory full (%s, 0x%x) with objects the agent cannot flush%s",
			what, (unsigned)rc,
			strncmp(ks->tcti, "tabrmd", 6) == 0
				? ": a tpm2-abrmd killed during a command leaves the objects it had "
				  "loaded in the TPM, out of reach of its successor's clients; "
				  "restart tpm2-abrmd with --flush-all"
				: " (another program keeps loading objects)");
		snprintf(err, errlen,
			 "%s: %s: TPM object memory full (0x%x) with objects that are "
			 "not the agent's",
			 doing, what, (unsigned)rc);
		return MTLS_AGENT_ERR_KEYSTORE;
	default:
		if (rc == KS_RC_OWNER_AUTH || rc == KS_RC_PRIMARY_AUTH || rc == KS_RC_PARENT_AUTH)
			set_state(ks, "%s", rc_text(rc));
		if (rc == KS_RC_NOMEM)
			return MTLS_AGENT_ERR_NOMEM;
		snprintf(err, errlen, "%s: %s: %s (0x%x)", doing, what, rc_text(rc), (unsigned)rc);
		return MTLS_AGENT_ERR_KEYSTORE;
	}
}

/* A command that reported success makes an earlier lockout or connection problem history. */
static void state_ok(struct tpm_ks *ks)
{
	pthread_mutex_lock(&ks->lock);
	if (strcmp(ks->state, "ok") != 0)
		snprintf(ks->state, sizeof(ks->state), "ok");
	pthread_mutex_unlock(&ks->lock);
}

static void backoff(unsigned n)
{
	struct timespec ts = {0, (long)(10 * 1000 * 1000) << (2 * n)}; /* 10, 40, 160 ms */

	nanosleep(&ts, NULL);
}

/*
 * Runs one ESYS call, resubmitting it a few more times if the TPM is still
 * busy after ESYS's own resubmissions (TPM_RC_RETRY, YIELDED, TESTING).
 */
#define TPM_CALL(ks, rc, name, call)                                                               \
	do {                                                                                       \
		unsigned tries_ = 0;                                                               \
		(ks)->what = (name);                                                               \
		for (;;) {                                                                         \
			(rc) = (call);                                                             \
			if (rc_kind(rc) != RCK_RETRY || tries_ >= TPM_RETRIES)                     \
				break;                                                             \
			backoff(tries_++);                                                         \
		}                                                                                  \
	} while (0)

/* --- public keys and key files -------------------------------------------------------- */

/* clang-format off */
static const struct {
	TPM2_ECC_CURVE curve;
	const char *group;
	size_t field_len;
} ec_curves[] = {
	{TPM2_ECC_NIST_P256, "prime256v1", 32},
	{TPM2_ECC_NIST_P384, "secp384r1", 48},
	{TPM2_ECC_NIST_P521, "secp521r1", 66},
};
/* clang-format on */

/* Left-pads a TPM2B value into out[want]; 0 if it does not fit. */
static int pad_into(const uint8_t *p, size_t len, uint8_t *out, size_t want)
{
	if (len > want)
		return 0;
	memset(out, 0, want - len);
	memcpy(out + want - len, p, len);
	return 1;
}

/*
 * The public half of a TPM key, after checking that the agent can use it to
 * sign: an unrestricted RSA or ECC signing key. NULL with *why otherwise.
 */
static EVP_PKEY *pub_from_tpm(const TPMT_PUBLIC *p, const char **why)
{
	OSSL_PARAM_BLD *bld = NULL;
	EVP_PKEY *pkey = NULL;
	BIGNUM *n = NULL, *e = NULL;
	uint8_t pt[1 + 2 * 66];
	size_t i, fl;

	if (!(p->objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT)) {
		*why = "not a signing key";
		return NULL;
	}
	/* A restricted key signs only digests the TPM made itself. */
	if (p->objectAttributes & TPMA_OBJECT_RESTRICTED) {
		*why = "restricted signing key (signs only TPM-made digests)";
		return NULL;
	}
	*why = "invalid public key";
	if ((bld = OSSL_PARAM_BLD_new()) == NULL)
		goto out;
	switch (p->type) {
	case TPM2_ALG_RSA:
		if (p->unique.rsa.size == 0 || p->unique.rsa.size > sizeof(p->unique.rsa.buffer) ||
		    (n = BN_bin2bn(p->unique.rsa.buffer, p->unique.rsa.size, NULL)) == NULL ||
		    (e = BN_new()) == NULL ||
		    BN_set_word(e, p->parameters.rsaDetail.exponent != 0
					   ? p->parameters.rsaDetail.exponent
					   : 65537) != 1 ||
		    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) != 1 ||
		    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) != 1)
			goto out;
		pkey = ks_pkey_fromdata("RSA", bld);
		break;
	case TPM2_ALG_ECC:
		for (i = 0; i < sizeof(ec_curves) / sizeof(ec_curves[0]); i++)
			if (ec_curves[i].curve == p->parameters.eccDetail.curveID)
				break;
		if (i == sizeof(ec_curves) / sizeof(ec_curves[0])) {
			*why = "unsupported EC curve";
			goto out;
		}
		fl = ec_curves[i].field_len;
		pt[0] = 0x04;
		if (!pad_into(p->unique.ecc.x.buffer, p->unique.ecc.x.size, pt + 1, fl) ||
		    !pad_into(p->unique.ecc.y.buffer, p->unique.ecc.y.size, pt + 1 + fl, fl) ||
		    OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME,
						    ec_curves[i].group, 0) != 1 ||
		    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt,
						     1 + 2 * fl) != 1)
			goto out;
		pkey = ks_pkey_fromdata("EC", bld);
		break;
	default:
		*why = "neither an RSA nor an EC key";
		break;
	}
out:
	OSSL_PARAM_BLD_free(bld);
	BN_free(n);
	BN_free(e);
	return pkey;
}

/* ks_key.id of a TPM key: SHA-256 of its marshalled TPM2B_PUBLIC, truncated. */
static int public_id(const TPM2B_PUBLIC *pub, uint8_t id[TPM_ID_LEN])
{
	uint8_t buf[sizeof(TPM2B_PUBLIC)], md[32];
	size_t len = 0;

	if (Tss2_MU_TPM2B_PUBLIC_Marshal(pub, buf, sizeof(buf), &len) != TSS2_RC_SUCCESS ||
	    EVP_Digest(buf, len, md, NULL, EVP_sha256(), NULL) != 1)
		return -1;
	memcpy(id, md, TPM_ID_LEN);
	return 0;
}

static int same_public(const TPM2B_PUBLIC *a, const TPM2B_PUBLIC *b)
{
	uint8_t ia[TPM_ID_LEN], ib[TPM_ID_LEN];

	return public_id(a, ia) == 0 && public_id(b, ib) == 0 && memcmp(ia, ib, sizeof(ia)) == 0;
}

/* --- key files ------------------------------------------------------------------------ */

/*
 * Reads every TSS2 PRIVATE KEY block of path into *blobs (caller frees).
 * A missing file is no keys, not an error. Returns 0 or an MTLS_AGENT_ERR_*
 * code with err set.
 */
static int read_key_file(const char *path, struct tpm_blob **blobs, size_t *n, char *err,
			 size_t errlen)
{
	uint8_t *data = NULL;
	size_t len = 0;
	int ret;

	*blobs = NULL;
	*n = 0;
	if (read_file(path, TPM_MAX_KEY_FILE, &data, &len) != 0) {
		if (errno == ENOENT)
			return 0;
		snprintf(err, errlen, "cannot read key file %s: %s", path, strerror(errno));
		return MTLS_AGENT_ERR_IO;
	}
	ret = tpm2_keyfile_decode(data, len, path, blobs, n, err, errlen);
	free(data);
	return ret;
}

/* Writes blobs to path atomically, keeping the mode of the file it replaces. */
static int write_key_file(const char *path, const struct tpm_blob *blobs, size_t n, char *err,
			  size_t errlen)
{
	struct stat st;
	mode_t mode = 0600;
	char *pem = NULL;
	size_t len = 0;
	int ret;

	if (stat(path, &st) == 0)
		mode = st.st_mode & 0777;
	if ((ret = tpm2_keyfile_encode(blobs, n, path, &pem, &len, err, errlen)) != 0)
		return ret;
	if (write_file_atomic(path, pem, len, mode) != 0) {
		snprintf(err, errlen, "cannot write key file %s: %s", path, strerror(errno));
		ret = MTLS_AGENT_ERR_IO;
	}
	free(pem);
	return ret;
}

/* handle:0x81xxxxxx -> handle; 0 when ref is not a handle reference, -1 when malformed. */
static int parse_handle(const char *ref, TPM2_HANDLE *h)
{
	unsigned long v;
	char *end;

	if (strncmp(ref, HANDLE_PREFIX, strlen(HANDLE_PREFIX)) != 0)
		return 0;
	ref += strlen(HANDLE_PREFIX);
	errno = 0;
	v = strtoul(ref, &end, 16);
	if (errno != 0 || end == ref || *end != '\0' || strncmp(ref, "0x", 2) != 0 ||
	    v > UINT32_MAX || (v >> TPM2_HR_SHIFT) != TPM2_HT_PERSISTENT)
		return -1;
	*h = (TPM2_HANDLE)v;
	return 1;
}

/* Key reference: a persistent handle or an absolute-or-relative file path. */
static int keyref_parse(const char *ref, TPM2_HANDLE *h, char *err, size_t errlen)
{
	int r;

	*h = 0;
	if (ref == NULL || *ref == '\0') {
		snprintf(err, errlen, "empty key reference");
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	if ((r = parse_handle(ref, h)) < 0) {
		snprintf(err, errlen,
			 "bad key reference: want handle:0x81000000..0x81ffffff or "
			 "the path of a TSS2 PRIVATE KEY file");
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	if (r == 0 && strncmp(ref, "pkcs11:", 7) == 0) {
		snprintf(err, errlen, "a pkcs11: URI names no key in a TPM keystore");
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	return 0;
}

/* --- establishment -------------------------------------------------------------------- */

static void keys_forget_loaded(struct tpm_ks *ks)
{
	size_t i;

	for (i = 0; i < ks->n_keys; i++)
		((struct tpm_key *)ks->keys[i]->backend)->tr = ESYS_TR_NONE;
	ks->primary = ESYS_TR_NONE;
	ks->n_parents = 0;
}

/*
 * Drops the ESYS context. With flush, first unloads what we loaded (on a
 * TCTI straight to a TPM, objects outlive the connection and would fill its
 * slots). Ticket held.
 */
static void teardown(struct tpm_ks *ks, int flush)
{
	struct tpm_key *tk;
	size_t i;

	if (ks->ectx != NULL && flush) {
		for (i = 0; i < ks->n_keys; i++) {
			tk = ks->keys[i]->backend;
			if (tk->tr != ESYS_TR_NONE && tk->gen == ks->gen && tk->persistent == 0)
				Esys_FlushContext(ks->ectx, tk->tr);
		}
		if (ks->primary != ESYS_TR_NONE)
			Esys_FlushContext(ks->ectx, ks->primary);
	}
	if (ks->ectx != NULL)
		Esys_Finalize(&ks->ectx);
	if (ks->tctx != NULL)
		Tss2_TctiLdr_Finalize(&ks->tctx);
	ks->ectx = NULL;
	ks->tctx = NULL;
	keys_forget_loaded(ks);
}

/*
 * The first command on a new connection, with a deadline: a TPM that does
 * not answer (a wedged device; a simulator busy with a client that keeps its
 * connection open: swtpm serves one at a time) must not hang the keystore.
 * Reads TPM2_PT_PERMANENT.
 */
static TSS2_RC probe(struct tpm_ks *ks, UINT32 *permanent)
{
	TPMS_CAPABILITY_DATA *cap = NULL;
	TPMI_YES_NO more = 0;
	uint64_t deadline;
	TSS2_RC rc;

	*permanent = 0;
	ks->what = "TPM2_GetCapability";
	rc = Esys_GetCapability_Async(ks->ectx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
				      TPM2_CAP_TPM_PROPERTIES, TPM2_PT_PERMANENT, 1);
	if (rc != TSS2_RC_SUCCESS)
		return rc;
	Esys_SetTimeout(ks->ectx, 200);
	deadline = monotonic_ms() + TPM_PROBE_MS;
	do {
		rc = Esys_GetCapability_Finish(ks->ectx, &more, &cap);
	} while ((rc & ~TSS2_RC_LAYER_MASK) == TSS2_BASE_RC_TRY_AGAIN && monotonic_ms() < deadline);
	Esys_SetTimeout(ks->ectx, TSS2_TCTI_TIMEOUT_BLOCK);
	if ((rc & ~TSS2_RC_LAYER_MASK) == TSS2_BASE_RC_TRY_AGAIN)
		return KS_RC_NO_ANSWER;
	if (rc != TSS2_RC_SUCCESS)
		return rc;
	if (cap->data.tpmProperties.count >= 1 &&
	    cap->data.tpmProperties.tpmProperty[0].property == TPM2_PT_PERMANENT)
		*permanent = cap->data.tpmProperties.tpmProperty[0].value;
	Esys_Free(cap);
	return TSS2_RC_SUCCESS;
}

static TSS2_RC read_algorithms(struct tpm_ks *ks)
{
	TPMS_CAPABILITY_DATA *cap = NULL;
	TPMI_YES_NO more = 0;
	TSS2_RC rc;
	UINT32 i;

	TPM_CALL(ks, rc, "TPM2_GetCapability",
		 Esys_GetCapability(ks->ectx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
				    TPM2_CAP_ALGS, TPM2_ALG_RSA, TPM2_MAX_CAP_ALGS, &more, &cap));
	if (rc != TSS2_RC_SUCCESS)
		return rc;
	ks->has_sha384 = ks->has_sha512 = 0;
	for (i = 0; i < cap->data.algorithms.count && i < TPM2_MAX_CAP_ALGS; i++) {
		if (cap->data.algorithms.algProperties[i].alg == TPM2_ALG_SHA384)
			ks->has_sha384 = 1;
		if (cap->data.algorithms.algProperties[i].alg == TPM2_ALG_SHA512)
			ks->has_sha512 = 1;
	}
	Esys_Free(cap);
	return TSS2_RC_SUCCESS;
}

/* RSA signatures with a hash the TPM lacks cannot be made: keys stop offering them. */
static unsigned hash_flags(const struct tpm_ks *ks)
{
	return (ks->has_sha384 ? 0 : KS_KEY_NO_SHA384) | (ks->has_sha512 ? 0 : KS_KEY_NO_SHA512);
}

/* Connects to the TPM if not connected. Ticket held. */
static TSS2_RC establish(struct tpm_ks *ks)
{
	UINT32 permanent = 0;
	TSS2_RC rc;
	size_t i;
	int started = 0;

	if (ks->ectx != NULL)
		return TSS2_RC_SUCCESS;
	ks->what = "connecting";
	if ((rc = Tss2_TctiLdr_Initialize(ks->tcti, &ks->tctx)) != TSS2_RC_SUCCESS) {
		ks->tctx = NULL;
		return rc;
	}
	ks->what = "Esys_Initialize";
	if ((rc = Esys_Initialize(&ks->ectx, ks->tctx, NULL)) != TSS2_RC_SUCCESS) {
		ks->ectx = NULL;
		goto fail;
	}
	for (;;) {
		rc = probe(ks, &permanent);
		/* A TPM (simulator) that was restarted without TPM2_Startup. */
		if (tpm_base(rc) == TPM2_RC_INITIALIZE && !started) {
			started = 1;
			TPM_CALL(ks, rc, "TPM2_Startup", Esys_Startup(ks->ectx, TPM2_SU_CLEAR));
			if (rc != TSS2_RC_SUCCESS && tpm_base(rc) != TPM2_RC_INITIALIZE)
				goto fail;
			continue;
		}
		break;
	}
	if (rc != TSS2_RC_SUCCESS || (rc = read_algorithms(ks)) != TSS2_RC_SUCCESS)
		goto fail;
	ks->owner_auth_set = (permanent & TPMA_PERMANENT_OWNERAUTHSET) != 0;
	if (permanent & TPMA_PERMANENT_INLOCKOUT)
		log_warn("keystore %s: the TPM is in dictionary-attack lockout; keys without noDA "
			 "cannot be used until it recovers",
			 ks->base.name);
	ks->stale_checked = 0;
	ks->gen++;
	keys_forget_loaded(ks);
	for (i = 0; i < ks->n_keys; i++)
		if (ks->keys[i]->type == MTLS_AGENT_KEY_RSA)
			__atomic_fetch_or(&ks->keys[i]->flags, hash_flags(ks), __ATOMIC_RELAXED);
	log_info("keystore %s: connected to the TPM (tcti %s)", ks->base.name, ks->tcti);
	return TSS2_RC_SUCCESS;
fail:
	teardown(ks, 0);
	return rc;
}

/*
 * After a failed attempt: drops a connection that is gone (the next call
 * makes a new one) and says whether to repeat the attempt now, which is done
 * once and only when the connection existed before the attempt: a TPM that
 * could not be reached just now will not be reachable a moment later.
 * Ticket held.
 */
static int retry_after(struct tpm_ks *ks, TSS2_RC rc, int attempt, int was_connected)
{
	if (rc_kind(rc) != RCK_RESET)
		return 0;
	if (ks->ectx != NULL && attempt == 0 && was_connected) {
		log_info("keystore %s: TPM connection lost (%s: %s); reconnecting", ks->base.name,
			 ks->what != NULL ? ks->what : "TPM", rc_text(rc));
		atomic_fetch_add(&ks->base.reconnects, 1);
	}
	teardown(ks, 0);
	return attempt == 0 && was_connected;
}

/* --- objects: SRK, parents, keys ------------------------------------------------------ */

static void touch(struct tpm_ks *ks, struct tpm_key *tk)
{
	tk->last_use = ++ks->clock;
}

static int key_loaded(const struct tpm_ks *ks, const struct tpm_key *tk)
{
	return tk->tr != ESYS_TR_NONE && tk->gen == ks->gen;
}

static void drop_saved(struct tpm_key *tk)
{
	if (tk->saved != NULL) {
		wipe(tk->saved, sizeof(*tk->saved));
		Esys_Free(tk->saved);
		tk->saved = NULL;
	}
}

/* Whether TPM handle h is one of the objects this keystore loaded. */
static int ours(struct tpm_ks *ks, TPM2_HANDLE h)
{
	struct tpm_key *tk;
	TPM2_HANDLE t;
	size_t i;

	if (ks->primary != ESYS_TR_NONE && Esys_TR_GetTpmHandle(ks->ectx, ks->primary, &t) == 0 &&
	    t == h)
		return 1;
	for (i = 0; i < ks->n_keys; i++) {
		tk = ks->keys[i]->backend;
		if (tk->persistent == 0 && key_loaded(ks, tk) &&
		    Esys_TR_GetTpmHandle(ks->ectx, tk->tr, &t) == 0 && t == h)
			return 1;
	}
	return 0;
}

/*
 * Closes an ESYS_TR that Esys_TR_FromTPMPublic handed out, unless the
 * keystore keeps it: tpm2-tss (3.2 here) hands out the ESYS_TR it already
 * has for a TPM handle, so after a loaded persistent key's or a parent's
 * handle was read again, closing blindly would leave that key or parent with
 * a dead ESYS_TR (and the next command would cost a reconnection). Ticket
 * held.
 */
static void close_read_tr(struct tpm_ks *ks, ESYS_TR *tr)
{
	struct tpm_key *tk;
	size_t i;

	if (*tr == ESYS_TR_NONE)
		return;
	for (i = 0; i < ks->n_keys; i++) {
		tk = ks->keys[i]->backend;
		if (tk->persistent != 0 && key_loaded(ks, tk) && tk->tr == *tr)
			goto kept;
	}
	for (i = 0; i < ks->n_parents; i++)
		if (ks->parents[i].tr == *tr)
			goto kept;
	Esys_TR_Close(ks->ectx, tr);
kept:
	*tr = ESYS_TR_NONE;
}

/*
 * Transient objects that are not ours, on a TPM with no resource manager
 * (swtpm, /dev/tpm0): left by a process that exited without flushing them
 * (a killed agent or tool), or loaded by another program that talks to the
 * TPM between our commands, which a TPM the agent owns should not have.
 * Behind a resource manager we see only our own. Flushed when we need their
 * slots, once per connection. Returns how many. Ticket held.
 */
/*
 * TPM2_TRANSIENT_FIRST from tss2_tpm2_types.h shifts the int 0x80 into the
 * sign bit (undefined behaviour, caught by UBSan): spell the value out.
 */
#define TRANSIENT_FIRST ((TPM2_HC)0x80000000u)

static unsigned flush_stale(struct tpm_ks *ks)
{
	TPMS_CAPABILITY_DATA *cap = NULL;
	TPMI_YES_NO more = 0;
	ESYS_TR tr;
	UINT32 i;
	unsigned n = 0;

	if (Esys_GetCapability(ks->ectx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES,
			       TRANSIENT_FIRST, TPM2_MAX_CAP_HANDLES, &more,
			       &cap) != TSS2_RC_SUCCESS)
		return 0;
	for (i = 0; i < cap->data.handles.count && i < TPM2_MAX_CAP_HANDLES; i++) {
		if (ours(ks, cap->data.handles.handle[i]) ||
		    Esys_TR_FromTPMPublic(ks->ectx, cap->data.handles.handle[i], ESYS_TR_NONE,
					  ESYS_TR_NONE, ESYS_TR_NONE, &tr) != TSS2_RC_SUCCESS)
			continue;
		if (Esys_FlushContext(ks->ectx, tr) == TSS2_RC_SUCCESS)
			n++;
		else
			Esys_TR_Close(ks->ectx, &tr);
	}
	Esys_Free(cap);
	if (n > 0)
		log_info("keystore %s: flushed %u transient object(s) another TPM user left loaded",
			 ks->base.name, n);
	return n;
}

/*
 * Frees an object slot: flushes transient objects that are not ours (the
 * first time), else the loaded file key used least recently (other than
 * keep), else the SRK when the caller does not need it.
 * Returns 1 if something was flushed. Ticket held.
 */
static int evict_lru(struct tpm_ks *ks, const struct tpm_key *keep, int need_primary)
{
	struct tpm_key *tk, *victim = NULL;
	size_t i;

	/* Objects that are not ours go first. */
	if (!ks->stale_checked) {
		ks->stale_checked = 1;
		if (flush_stale(ks) > 0)
			return 1;
	}
	for (i = 0; i < ks->n_keys; i++) {
		tk = ks->keys[i]->backend;
		if (tk == keep || tk->persistent != 0 || !key_loaded(ks, tk))
			continue;
		if (victim == NULL || tk->last_use < victim->last_use)
			victim = tk;
	}
	if (victim != NULL) {
		Esys_FlushContext(ks->ectx, victim->tr);
		victim->tr = ESYS_TR_NONE;
		log_debug("keystore %s: TPM object slots full; flushed the key used least recently",
			  ks->base.name);
		return 1;
	}
	if (!need_primary && ks->primary != ESYS_TR_NONE) {
		Esys_FlushContext(ks->ectx, ks->primary);
		ks->primary = ESYS_TR_NONE;
		log_debug("keystore %s: TPM object slots full; flushed the SRK", ks->base.name);
		return 1;
	}
	return 0;
}

/* The TCG ECC P-256 storage key template, as tpm2-openssl and tpm2-tss-engine use it. */
/* clang-format off */
static const TPM2B_PUBLIC srk_template = {
	.publicArea = {
		.type = TPM2_ALG_ECC,
		.nameAlg = TPM2_ALG_SHA256,
		.objectAttributes = TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_RESTRICTED |
				    TPMA_OBJECT_DECRYPT | TPMA_OBJECT_NODA |
				    TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
				    TPMA_OBJECT_SENSITIVEDATAORIGIN,
		.authPolicy = {.size = 0},
		.parameters.eccDetail = {
			.symmetric = {
				.algorithm = TPM2_ALG_AES,
				.keyBits.aes = 128,
				.mode.aes = TPM2_ALG_CFB,
			},
			.scheme = {.scheme = TPM2_ALG_NULL},
			.curveID = TPM2_ECC_NIST_P256,
			.kdf = {.scheme = TPM2_ALG_NULL},
		},
		.unique.ecc = {.x = {.size = 0}, .y = {.size = 0}},
	},
};
/* clang-format on */

/* The parent object for handle (TPM2_RH_OWNER: the template SRK). Ticket held. */
static TSS2_RC get_parent(struct tpm_ks *ks, TPM2_HANDLE handle, const struct tpm_key *keep,
			  ESYS_TR *out)
{
	static const TPM2B_SENSITIVE_CREATE no_auth = {.size = 0};
	static const TPM2B_DATA no_outside = {.size = 0};
	static const TPML_PCR_SELECTION no_pcrs = {.count = 0};
	TSS2_RC rc;
	size_t i;

	*out = ESYS_TR_NONE;
	if (handle == TPM2_RH_OWNER) {
		if (ks->primary != ESYS_TR_NONE) {
			*out = ks->primary;
			return TSS2_RC_SUCCESS;
		}
		/* With an owner password, CreatePrimary would fail (and count as a bad try). */
		if (ks->owner_auth_set)
			return KS_RC_OWNER_AUTH;
		if (ks->primary_auth_failed)
			return KS_RC_PRIMARY_AUTH;
		for (;;) {
			TPM_CALL(ks, rc, "TPM2_CreatePrimary (SRK)",
				 Esys_CreatePrimary(ks->ectx, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD,
						    ESYS_TR_NONE, ESYS_TR_NONE, &no_auth,
						    &srk_template, &no_outside, &no_pcrs,
						    &ks->primary, NULL, NULL, NULL, NULL));
			if (rc_kind(rc) == RCK_OBJECT_MEMORY && evict_lru(ks, keep, 1))
				continue;
			break;
		}
		if (rc != TSS2_RC_SUCCESS) {
			ks->primary = ESYS_TR_NONE;
			if (rc_kind(rc) == RCK_AUTH)
				ks->primary_auth_failed = 1;
			return rc;
		}
		*out = ks->primary;
		return TSS2_RC_SUCCESS;
	}
	for (i = 0; i < ks->n_parents; i++) {
		if (ks->parents[i].handle == handle) {
			*out = ks->parents[i].tr;
			return TSS2_RC_SUCCESS;
		}
	}
	if (ks->n_parents == TPM_MAX_PARENTS) {
		Esys_TR_Close(ks->ectx, &ks->parents[0].tr);
		memmove(&ks->parents[0], &ks->parents[1],
			(TPM_MAX_PARENTS - 1) * sizeof(ks->parents[0]));
		ks->n_parents--;
	}
	TPM_CALL(ks, rc, "reading the persistent parent",
		 Esys_TR_FromTPMPublic(ks->ectx, handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
				       out));
	if (rc != TSS2_RC_SUCCESS)
		return rc;
	ks->parents[ks->n_parents].handle = handle;
	ks->parents[ks->n_parents].tr = *out;
	ks->n_parents++;
	return TSS2_RC_SUCCESS;
}

/* Reads the public area of a persistent object. Ticket held. */
static TSS2_RC read_persistent(struct tpm_ks *ks, TPM2_HANDLE h, ESYS_TR *tr, TPM2B_PUBLIC *pub)
{
	TPM2B_PUBLIC *out = NULL;
	TSS2_RC rc;

	*tr = ESYS_TR_NONE;
	TPM_CALL(ks, rc, "reading the persistent key",
		 Esys_TR_FromTPMPublic(ks->ectx, h, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, tr));
	if (rc != TSS2_RC_SUCCESS)
		return rc;
	TPM_CALL(ks, rc, "TPM2_ReadPublic",
		 Esys_ReadPublic(ks->ectx, *tr, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &out,
				 NULL, NULL));
	if (rc != TSS2_RC_SUCCESS) {
		close_read_tr(ks, tr);
		return rc;
	}
	*pub = *out;
	Esys_Free(out);
	return TSS2_RC_SUCCESS;
}

/*
 * Loads a file key from its saved context (one object slot, no parent).
 * Behind a resource manager that can be the difference between signing and
 * not: a tpm2-abrmd killed in the middle of a command leaves the objects it
 * had loaded in the TPM, where no client of its successor can flush them.
 * A context the TPM no longer accepts (it was reset since) is dropped:
 * *tr stays ESYS_TR_NONE, tk->saved NULL, and the caller loads the blob.
 * Ticket held.
 */
static TSS2_RC load_saved(struct tpm_ks *ks, struct tpm_key *tk, ESYS_TR *tr)
{
	TSS2_RC rc, layer;

	for (;;) {
		TPM_CALL(ks, rc, "TPM2_ContextLoad", Esys_ContextLoad(ks->ectx, tk->saved, tr));
		if (rc_kind(rc) == RCK_OBJECT_MEMORY && evict_lru(ks, tk, 0))
			continue;
		break;
	}
	if (rc == TSS2_RC_SUCCESS)
		return rc;
	*tr = ESYS_TR_NONE;
	layer = rc & TSS2_RC_LAYER_MASK;
	/* No slot, busy, or the connection is gone: TPM2_Load would not do better. */
	if (rc_kind(rc) == RCK_OBJECT_MEMORY || rc_kind(rc) == RCK_RETRY ||
	    rc == TSS2_ESYS_RC_IO_ERROR || rc == TSS2_ESYS_RC_TRY_AGAIN ||
	    (layer != TSS2_TPM_RC_LAYER && layer != TSS2_RESMGR_TPM_RC_LAYER &&
	     layer != TSS2_ESAPI_RC_LAYER))
		return rc;
	log_debug("keystore %s: saved key context refused (%s); loading the key again",
		  ks->base.name, rc_text(rc));
	drop_saved(tk);
	return rc;
}

/* Makes the key usable in this establishment (loads it, or finds its persistent object). */
static TSS2_RC load_key(struct tpm_ks *ks, struct tpm_key *tk)
{
	TPM2B_PUBLIC pub;
	ESYS_TR parent, tr = ESYS_TR_NONE;
	TSS2_RC rc = TSS2_RC_SUCCESS;

	if (key_loaded(ks, tk)) {
		touch(ks, tk);
		return TSS2_RC_SUCCESS;
	}
	if (tk->auth_failed)
		return KS_RC_KEY_AUTH;
	if (tk->persistent != 0) {
		if ((rc = read_persistent(ks, tk->persistent, &tr, &pub)) != TSS2_RC_SUCCESS)
			return rc;
		/* Someone may have evicted the key and put another one at the handle. */
		if (!same_public(&pub, &tk->blob.pub)) {
			close_read_tr(ks, &tr);
			return KS_RC_KEY_CHANGED;
		}
	} else if (tk->saved == NULL || (rc = load_saved(ks, tk, &tr)) != TSS2_RC_SUCCESS) {
		if (tk->saved != NULL)
			return rc;
		for (;;) {
			if ((rc = get_parent(ks, tk->blob.parent, tk, &parent)) != TSS2_RC_SUCCESS)
				return rc;
			TPM_CALL(ks, rc, "TPM2_Load",
				 Esys_Load(ks->ectx, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE,
					   ESYS_TR_NONE, &tk->blob.priv, &tk->blob.pub, &tr));
			if (rc_kind(rc) == RCK_OBJECT_MEMORY && evict_lru(ks, tk, 1))
				continue;
			break;
		}
		/* The parent's authorization: a password we do not hold is not tried again. */
		if (rc_kind(rc) == RCK_AUTH)
			tk->auth_failed = 1;
		if (rc != TSS2_RC_SUCCESS)
			return rc;
		/* Best effort: without it the key is loaded from its blob next time. */
		TPM_CALL(ks, rc, "TPM2_ContextSave", Esys_ContextSave(ks->ectx, tr, &tk->saved));
		if (rc != TSS2_RC_SUCCESS)
			tk->saved = NULL;
	}
	tk->tr = tr;
	tk->gen = ks->gen;
	touch(ks, tk);
	return TSS2_RC_SUCCESS;
}

/* The TPM's id of each digest in common/scheme.c (common/ does not know tpm2-tss). */
static const TPMI_ALG_HASH tpm_hash_alg[SCHEME_N_HASHES] = {
	[SCHEME_SHA256] = TPM2_ALG_SHA256,
	[SCHEME_SHA384] = TPM2_ALG_SHA384,
	[SCHEME_SHA512] = TPM2_ALG_SHA512,
};

/* The hash of a digest of len bytes, or TPM2_ALG_NULL. */
static TPMI_ALG_HASH hash_alg(size_t len)
{
	const struct scheme_md *md = scheme_md_by_len(len);

	return md != NULL ? tpm_hash_alg[md->id] : TPM2_ALG_NULL;
}

/* TPM2_Sign of a digest the agent computed (allowed: our keys are not restricted). */
static TSS2_RC sign_raw(struct tpm_ks *ks, struct tpm_key *tk, const TPMT_SIG_SCHEME *scheme,
			const TPM2B_DIGEST *digest, TPMT_SIGNATURE **sig)
{
	static const TPMT_TK_HASHCHECK null_ticket = {
		.tag = TPM2_ST_HASHCHECK,
		.hierarchy = TPM2_RH_NULL,
		.digest = {.size = 0},
	};
	TSS2_RC rc;

	*sig = NULL;
	for (;;) {
		if ((rc = load_key(ks, tk)) != TSS2_RC_SUCCESS)
			return rc;
		TPM_CALL(ks, rc, "TPM2_Sign",
			 Esys_Sign(ks->ectx, tk->tr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
				   digest, scheme, &null_ticket, sig));
		/* Using a persistent key needs a free slot for the duration of the command. */
		if (rc_kind(rc) == RCK_OBJECT_MEMORY && evict_lru(ks, tk, 0))
			continue;
		break;
	}
	if (rc_kind(rc) == RCK_AUTH)
		tk->auth_failed = 1;
	return rc;
}

/*
 * TLS 1.3 needs RSA-PSS with salt length = hash length. libtpms does that;
 * some hardware TPMs use the largest salt. One signature, verified here,
 * tells. On a mismatch the key stops offering PSS. Ticket held, key RSA.
 */
static TSS2_RC check_pss(struct tpm_ks *ks, struct ks_key *k)
{
	TPMT_SIG_SCHEME scheme = {.scheme = TPM2_ALG_RSAPSS};
	TPMT_SIGNATURE *sig = NULL;
	TPM2B_DIGEST digest = {.size = 32};
	EVP_PKEY_CTX *vctx = NULL;
	TSS2_RC rc;
	int ok = 0;

	scheme.details.rsapss.hashAlg = TPM2_ALG_SHA256;
	if (RAND_bytes(digest.buffer, 32) != 1)
		return KS_RC_NOMEM;
	if ((rc = sign_raw(ks, k->backend, &scheme, &digest, &sig)) != TSS2_RC_SUCCESS)
		return rc;
	if (sig->sigAlg == TPM2_ALG_RSAPSS && (vctx = EVP_PKEY_CTX_new(k->pub, NULL)) != NULL &&
	    EVP_PKEY_verify_init(vctx) == 1 &&
	    EVP_PKEY_CTX_set_rsa_padding(vctx, RSA_PKCS1_PSS_PADDING) == 1 &&
	    EVP_PKEY_CTX_set_rsa_pss_saltlen(vctx, RSA_PSS_SALTLEN_DIGEST) == 1 &&
	    EVP_PKEY_CTX_set_signature_md(vctx, EVP_sha256()) == 1 &&
	    EVP_PKEY_CTX_set_rsa_mgf1_md(vctx, EVP_sha256()) == 1)
		ok = EVP_PKEY_verify(vctx, sig->signature.rsapss.sig.buffer,
				     sig->signature.rsapss.sig.size, digest.buffer, 32) == 1;
	ERR_clear_error();
	EVP_PKEY_CTX_free(vctx);
	Esys_Free(sig);
	if (!ok) {
		__atomic_fetch_or(&k->flags, KS_KEY_NO_PSS, __ATOMIC_RELAXED);
		log_warn("keystore %s: the TPM's RSA-PSS signatures do not use salt length = hash "
			 "length (TLS 1.3 needs that); not offering RSA-PSS for this key",
			 ks->base.name);
	}
	return TSS2_RC_SUCCESS;
}

/*
 * First use of a key in this keystore: load it (so a blob from another TPM
 * or under a missing parent shows up now, not at the first handshake) and,
 * for RSA, check the PSS salt. Ticket held, connected.
 */
static TSS2_RC first_use(struct tpm_ks *ks, struct ks_key *k)
{
	struct tpm_key *tk = k->backend;
	TPMA_OBJECT attrs = tk->blob.pub.publicArea.objectAttributes;
	TSS2_RC rc;

	if (tk->checked)
		return TSS2_RC_SUCCESS;
	if ((rc = load_key(ks, tk)) != TSS2_RC_SUCCESS)
		return rc;
	if (k->type == MTLS_AGENT_KEY_RSA && (rc = check_pss(ks, k)) != TSS2_RC_SUCCESS)
		return rc;
	if (!(attrs & TPMA_OBJECT_NODA))
		log_warn(
			"keystore %s: key %s is not noDA: every unclean TPM shutdown after using it "
			"counts towards the TPM's dictionary-attack lockout",
			ks->base.name, tk->persistent != 0 ? "at a persistent handle" : tk->path);
	tk->checked = 1;
	return TSS2_RC_SUCCESS;
}

/* --- key cache ------------------------------------------------------------------------ */

static void key_free(struct ks_key *k)
{
	struct tpm_key *tk;

	if (k == NULL)
		return;
	if ((tk = k->backend) != NULL) {
		drop_saved(tk);
		wipe(&tk->blob, sizeof(tk->blob));
		free(tk->path);
		free(tk);
	}
	ks_key_free_public(k);
	free(k);
}

/*
 * The cached key with blob's public area, or a new one made from blob.
 * path: the file it is in now (NULL for a persistent key). Ticket held.
 */
static int cache_key(struct tpm_ks *ks, const struct tpm_blob *blob, TPM2_HANDLE persistent,
		     const char *path, struct ks_key **out, char *err, size_t errlen)
{
	struct ks_key *k = NULL, **nk;
	struct tpm_key *tk;
	uint8_t id[TPM_ID_LEN];
	const char *why = "";
	EVP_PKEY *pub;
	char *npath = NULL;
	size_t i, ncap;
	int ret;

	*out = NULL;
	if (public_id(&blob->pub, id) != 0) {
		snprintf(err, errlen, "cannot encode a TPM public key");
		return MTLS_AGENT_ERR_KEYSTORE;
	}
	if (path != NULL && (npath = strdup(path)) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	for (i = 0; i < ks->n_keys; i++) {
		k = ks->keys[i];
		tk = k->backend;
		if (k->id_len == TPM_ID_LEN && memcmp(k->id, id, TPM_ID_LEN) == 0 &&
		    tk->persistent == persistent) {
			if (npath != NULL) {
				free(tk->path);
				tk->path = npath;
			}
			*out = k;
			return 0;
		}
	}
	k = NULL;
	if ((pub = pub_from_tpm(&blob->pub.publicArea, &why)) == NULL) {
		snprintf(err, errlen, "%s%s%s: %s",
			 persistent != 0 ? "persistent key" : "key file ", path != NULL ? path : "",
			 persistent != 0 ? "" : "", why);
		ret = MTLS_AGENT_ERR_KEYSTORE;
		goto out;
	}
	if (ks->n_keys == ks->cap_keys) {
		ncap = ks->cap_keys == 0 ? 8 : ks->cap_keys * 2;
		if ((nk = realloc(ks->keys, ncap * sizeof(*nk))) == NULL) {
			EVP_PKEY_free(pub);
			ret = MTLS_AGENT_ERR_NOMEM;
			goto out;
		}
		ks->keys = nk;
		ks->cap_keys = ncap;
	}
	if ((k = calloc(1, sizeof(*k))) == NULL || (tk = calloc(1, sizeof(*tk))) == NULL) {
		EVP_PKEY_free(pub);
		ret = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	k->backend = tk;
	k->ks = &ks->base;
	memcpy(k->id, id, TPM_ID_LEN);
	k->id_len = TPM_ID_LEN;
	tk->persistent = persistent;
	tk->blob = *blob;
	tk->path = npath;
	npath = NULL;
	tk->tr = ESYS_TR_NONE;
	if ((ret = ks_key_set_public(k, pub)) != 0)
		goto out;
	if (k->type != MTLS_AGENT_KEY_EC && k->type != MTLS_AGENT_KEY_RSA) {
		ret = MTLS_AGENT_ERR_KEYSTORE;
		goto out;
	}
	if (k->type == MTLS_AGENT_KEY_RSA && ks->ectx != NULL)
		k->flags |= hash_flags(ks);
	ks->keys[ks->n_keys++] = k;
	*out = k;
	k = NULL;
	ret = 0;
out:
	free(npath);
	key_free(k);
	return ret;
}

/*
 * Adds k to the result unless it is already there or was retired (a key file
 * restored from a backup brings back its block, but the key stays out of
 * service until the keystore is opened again).
 */
static int result_add(struct ks_key ***arr, size_t *n, struct ks_key *k)
{
	struct ks_key **na;
	size_t i;

	if (((const struct tpm_key *)k->backend)->retired)
		return 0;
	for (i = 0; i < *n; i++)
		if ((*arr)[i] == k)
			return 0;
	if ((na = realloc(*arr, (*n + 1) * sizeof(*na))) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	*arr = na;
	(*arr)[(*n)++] = k;
	return 0;
}

/* --- backend operations --------------------------------------------------------------- */

static void tpm_close(struct keystore *base)
{
	struct tpm_ks *ks = to_tpm(base);
	size_t i;

	tpm_enter(ks);
	teardown(ks, 1);
	tpm_leave(ks);
	for (i = 0; i < ks->n_keys; i++)
		key_free(ks->keys[i]);
	free(ks->keys);
	pthread_mutex_destroy(&ks->lock);
	pthread_cond_destroy(&ks->turn);
	free(ks->tcti);
	free(ks->srk);
	free(ks->base.name);
	free(ks);
}

/* Checks that the TCTI named in the configuration exists, without connecting. */
static int tcti_known(const char *conf)
{
	TSS2_TCTI_INFO *info = NULL;
	char name[64];
	size_t len = strcspn(conf, ":");

	if (len == 0 || len >= sizeof(name))
		return 0;
	memcpy(name, conf, len);
	name[len] = '\0';
	if (Tss2_TctiLdr_GetInfo(name, &info) != TSS2_RC_SUCCESS)
		return 0;
	Tss2_TctiLdr_FreeInfo(&info);
	return 1;
}

static int tpm_open(const struct ks_params *params, struct keystore **out, char *err, size_t errlen)
{
	struct tpm_ks *ks = NULL;
	const char *name = params->name != NULL ? params->name : "";
	const char *tcti = params->tcti != NULL ? params->tcti : DEFAULT_TCTI;
	char rerr[MTLSA_ERRMSG_MAX];
	TSS2_RC rc;
	int ret;

	*out = NULL;
	if ((ks = calloc(1, sizeof(*ks))) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	ks->base.backend = &ks_tpm2_backend;
	pthread_mutex_init(&ks->lock, NULL);
	pthread_cond_init(&ks->turn, NULL);
	ks->primary = ESYS_TR_NONE;
	ks->srk_handle = TPM2_RH_OWNER;
	ks->has_sha384 = ks->has_sha512 = 1;
	snprintf(ks->state, sizeof(ks->state), "not connected");
	if ((ks->base.name = strdup(name)) == NULL || (ks->tcti = strdup(tcti)) == NULL ||
	    (params->srk != NULL && (ks->srk = strdup(params->srk)) == NULL)) {
		ret = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	if (ks->srk != NULL && parse_handle(ks->srk, &ks->srk_handle) != 1) {
		snprintf(err, errlen, "keystore \"%s\": srk must be handle:0x81000000..0x81ffffff",
			 name);
		ret = MTLS_AGENT_ERR_CONFIG;
		goto out;
	}
	if (!tcti_known(tcti)) {
		snprintf(err, errlen,
			 "keystore \"%s\": tcti \"%s\": no such TCTI (want "
			 "device:/dev/tpmrm0, swtpm:host=H,port=P, mssim:..., tabrmd)",
			 name, tcti);
		ret = MTLS_AGENT_ERR_CONFIG;
		goto out;
	}
	/* A TPM that is not there yet is a state, not an open failure. */
	tpm_enter(ks);
	if ((rc = establish(ks)) != TSS2_RC_SUCCESS) {
		tpm_fail(ks, rerr, sizeof(rerr), rc, "opening");
		log_warn("keystore %s: %s", name, rerr);
	} else {
		state_ok(ks);
	}
	tpm_leave(ks);
	*out = &ks->base;
	ks = NULL;
	ret = 0;
out:
	if (ks != NULL)
		tpm_close(&ks->base);
	return ret;
}

static int tpm_same_params(const struct keystore *base, const struct ks_params *params)
{
	const struct tpm_ks *ks = (const struct tpm_ks *)base;

	return str_eq(ks->tcti, params->tcti != NULL ? params->tcti : DEFAULT_TCTI) &&
	       str_eq(ks->srk, params->srk);
}

static void tpm_state(struct keystore *base, char *buf, size_t len)
{
	struct tpm_ks *ks = to_tpm(base);

	pthread_mutex_lock(&ks->lock);
	snprintf(buf, len, "%s", ks->state);
	pthread_mutex_unlock(&ks->lock);
}

/*
 * Runs first_use on the keys in res: keys the TPM refuses are dropped from
 * the result (with a warning), keys it cannot check now (not connected) stay.
 * Ticket held.
 */
static int check_found(struct tpm_ks *ks, struct ks_key **res, size_t *n, char *err, size_t errlen)
{
	char why[MTLSA_ERRMSG_MAX] = "";
	TSS2_RC rc;
	size_t i, kept = 0, total = *n;
	int attempt, was;

	for (i = 0; i < total; i++) {
		for (attempt = 0;; attempt++) {
			was = ks->ectx != NULL;
			if ((rc = establish(ks)) == TSS2_RC_SUCCESS &&
			    (rc = first_use(ks, res[i])) == TSS2_RC_SUCCESS)
				break;
			if (!retry_after(ks, rc, attempt, was))
				break;
		}
		if (rc != TSS2_RC_SUCCESS && rc_kind(rc) != RCK_RESET) {
			tpm_fail(ks, why, sizeof(why), rc, "loading key");
			log_warn("keystore %s: %s: %s", ks->base.name,
				 ((struct tpm_key *)res[i]->backend)->path != NULL
					 ? ((struct tpm_key *)res[i]->backend)->path
					 : "persistent key",
				 why);
			continue;
		}
		if (rc != TSS2_RC_SUCCESS)
			tpm_fail(ks, why, sizeof(why), rc, "checking key");
		res[kept++] = res[i];
	}
	*n = kept;
	if (kept == 0 && total > 0) {
		snprintf(err, errlen, "no usable key: %s", why);
		return MTLS_AGENT_ERR_KEYSTORE;
	}
	return 0;
}

static int tpm_find_keys(struct keystore *base, const char *key_ref, struct ks_key ***keys,
			 size_t *n, char *err, size_t errlen)
{
	struct tpm_ks *ks = to_tpm(base);
	struct ks_key **res = NULL, *k;
	struct tpm_blob *blobs = NULL, pblob;
	TPM2_HANDLE h;
	ESYS_TR tr = ESYS_TR_NONE;
	size_t nb = 0, nres = 0, i;
	TSS2_RC rc = TSS2_RC_SUCCESS;
	int ret, attempt, was;

	*keys = NULL;
	*n = 0;
	if ((ret = keyref_parse(key_ref, &h, err, errlen)) != 0)
		return ret;
	tpm_enter(ks);
	if (h != 0) {
		memset(&pblob, 0, sizeof(pblob));
		for (attempt = 0;; attempt++) {
			was = ks->ectx != NULL;
			if ((rc = establish(ks)) == TSS2_RC_SUCCESS &&
			    (rc = read_persistent(ks, h, &tr, &pblob.pub)) == TSS2_RC_SUCCESS)
				break;
			if (!retry_after(ks, rc, attempt, was))
				break;
		}
		if (rc == TSS2_RC_SUCCESS) {
			/* Only the public area is kept; the key's ESYS_TR is made when it signs. */
			close_read_tr(ks, &tr);
			if ((ret = cache_key(ks, &pblob, h, NULL, &k, err, errlen)) != 0 ||
			    (ret = result_add(&res, &nres, k)) != 0)
				goto out;
		} else if (tpm_base(rc) != TPM2_RC_HANDLE) {
			/* TPM2_RC_HANDLE: nothing at that handle yet, which is "no key". */
			ret = tpm_fail(ks, err, errlen, rc, "reading the persistent key");
			goto out;
		}
	} else {
		if ((ret = read_key_file(key_ref, &blobs, &nb, err, errlen)) != 0)
			goto out;
		for (i = 0; i < nb; i++)
			if ((ret = cache_key(ks, &blobs[i], 0, key_ref, &k, err, errlen)) != 0 ||
			    (ret = result_add(&res, &nres, k)) != 0)
				goto out;
	}
	if ((ret = check_found(ks, res, &nres, err, errlen)) != 0)
		goto out;
	if (ks->ectx != NULL)
		state_ok(ks);
	*keys = res;
	*n = nres;
	res = NULL;
	ret = 0;
out:
	tpm_leave(ks);
	if (blobs != NULL) {
		wipe(blobs, nb * sizeof(*blobs));
		free(blobs);
	}
	free(res);
	return ret;
}

/* Public template of a new key: sign only, fixed to this TPM and parent, noDA, no auth. */
static int key_template(int gen_type, TPM2B_PUBLIC *t)
{
	memset(t, 0, sizeof(*t));
	t->publicArea.nameAlg = TPM2_ALG_SHA256;
	t->publicArea.objectAttributes = TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_FIXEDTPM |
					 TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
					 TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA;
	switch (gen_type) {
	case KS_GEN_EC_P256:
	case KS_GEN_EC_P384:
		t->publicArea.type = TPM2_ALG_ECC;
		t->publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
		/* No fixed scheme: each TPM2_Sign names ECDSA and the hash. */
		t->publicArea.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
		t->publicArea.parameters.eccDetail.curveID =
			gen_type == KS_GEN_EC_P256 ? TPM2_ECC_NIST_P256 : TPM2_ECC_NIST_P384;
		t->publicArea.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
		return 0;
	case KS_GEN_RSA_2048:
	case KS_GEN_RSA_3072:
	case KS_GEN_RSA_4096:
		t->publicArea.type = TPM2_ALG_RSA;
		t->publicArea.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_NULL;
		/* No fixed scheme: each TPM2_Sign names RSASSA or RSAPSS and the hash. */
		t->publicArea.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
		t->publicArea.parameters.rsaDetail.keyBits = gen_type == KS_GEN_RSA_2048   ? 2048
							     : gen_type == KS_GEN_RSA_3072 ? 3072
											   : 4096;
		t->publicArea.parameters.rsaDetail.exponent = 0; /* 65537 */
		return 0;
	default:
		return -1;
	}
}

/* TPM2_Create under the SRK, then, for a handle reference, TPM2_EvictControl. Ticket held. */
static TSS2_RC create_key(struct tpm_ks *ks, const TPM2B_PUBLIC *tmpl, TPM2_HANDLE persistent,
			  struct tpm_blob *blob)
{
	static const TPM2B_SENSITIVE_CREATE no_auth = {.size = 0};
	static const TPM2B_DATA no_outside = {.size = 0};
	static const TPML_PCR_SELECTION no_pcrs = {.count = 0};
	TPM2B_PRIVATE *priv = NULL;
	TPM2B_PUBLIC *pub = NULL;
	ESYS_TR parent, tr = ESYS_TR_NONE, ptr = ESYS_TR_NONE;
	TSS2_RC rc;

	memset(blob, 0, sizeof(*blob));
	blob->parent = ks->srk_handle;
	if (ks->parent_auth_failed)
		return KS_RC_PARENT_AUTH;
	for (;;) {
		if ((rc = get_parent(ks, ks->srk_handle, NULL, &parent)) != TSS2_RC_SUCCESS)
			return rc;
		TPM_CALL(ks, rc, "TPM2_Create",
			 Esys_Create(ks->ectx, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
				     &no_auth, tmpl, &no_outside, &no_pcrs, &priv, &pub, NULL, NULL,
				     NULL));
		/* TPM2_Create loads the parent's sensitive area, not a new object: rare. */
		if (rc_kind(rc) == RCK_OBJECT_MEMORY && evict_lru(ks, NULL, 1))
			continue;
		break;
	}
	/* A parent with a password: each try would count towards the TPM's lockout. */
	if (rc_kind(rc) == RCK_AUTH)
		ks->parent_auth_failed = 1;
	if (rc != TSS2_RC_SUCCESS)
		return rc;
	blob->pub = *pub;
	blob->priv = *priv;
	Esys_Free(pub);
	Esys_Free(priv);
	if (persistent == 0)
		return TSS2_RC_SUCCESS;
	for (;;) {
		TPM_CALL(ks, rc, "TPM2_Load",
			 Esys_Load(ks->ectx, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
				   &blob->priv, &blob->pub, &tr));
		if (rc_kind(rc) == RCK_OBJECT_MEMORY && evict_lru(ks, NULL, 1))
			continue;
		break;
	}
	if (rc != TSS2_RC_SUCCESS)
		return rc;
	TPM_CALL(ks, rc, "TPM2_EvictControl",
		 Esys_EvictControl(ks->ectx, ESYS_TR_RH_OWNER, tr, ESYS_TR_PASSWORD, ESYS_TR_NONE,
				   ESYS_TR_NONE, persistent, &ptr));
	Esys_FlushContext(ks->ectx, tr);
	if (rc == TSS2_RC_SUCCESS)
		Esys_TR_Close(ks->ectx, &ptr);
	return rc;
}

static int tpm_keygen(struct keystore *base, const char *key_ref, int gen_type, struct ks_key **out,
		      char *err, size_t errlen)
{
	struct tpm_ks *ks = to_tpm(base);
	struct tpm_blob *blobs = NULL, *nb, blob;
	TPM2B_PUBLIC tmpl, pub;
	TPM2_HANDLE h;
	ESYS_TR tr;
	struct ks_key *k = NULL;
	size_t n = 0;
	TSS2_RC rc = TSS2_RC_SUCCESS;
	int ret, attempt, was;

	*out = NULL;
	memset(&blob, 0, sizeof(blob));
	if ((ret = keyref_parse(key_ref, &h, err, errlen)) != 0)
		return ret;
	if (key_template(gen_type, &tmpl) != 0) {
		snprintf(err, errlen, "key type not supported by the TPM keystore");
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	tpm_enter(ks);
	if (h == 0) {
		/* Read under the ticket: two keygens on one file run one after the other. */
		if ((ret = read_key_file(key_ref, &blobs, &n, err, errlen)) != 0)
			goto out;
		if (n >= TPM_MAX_GENERATIONS) {
			snprintf(err, errlen,
				 "key file %s already holds %zu keys (the current one, "
				 "older ones kept until their certificates expire, keys "
				 "waiting for a certificate); no new key until one is retired",
				 key_ref, n);
			ret = MTLS_AGENT_ERR_EXISTS;
			goto out;
		}
	}
	for (attempt = 0;; attempt++) {
		was = ks->ectx != NULL;
		if ((rc = establish(ks)) == TSS2_RC_SUCCESS && h != 0) {
			rc = read_persistent(ks, h, &tr, &pub);
			if (rc == TSS2_RC_SUCCESS) {
				close_read_tr(ks, &tr);
				snprintf(err, errlen,
					 "persistent handle 0x%08x is in use; evict "
					 "it first (tpm2_evictcontrol -c 0x%08x)",
					 h, h);
				ret = MTLS_AGENT_ERR_EXISTS;
				goto out;
			}
			if (tpm_base(rc) == TPM2_RC_HANDLE)
				rc = TSS2_RC_SUCCESS;
		}
		/* Nothing is left in the TPM by a failed TPM2_Create, so retrying is safe. */
		if (rc == TSS2_RC_SUCCESS && (rc = create_key(ks, &tmpl, h, &blob)) == 0)
			break;
		if (!retry_after(ks, rc, attempt, was)) {
			ret = tpm_fail(ks, err, errlen, rc, "generating key");
			goto out;
		}
	}
	if (h == 0) {
		if ((nb = realloc(blobs, (n + 1) * sizeof(*nb))) == NULL) {
			ret = MTLS_AGENT_ERR_NOMEM;
			goto out;
		}
		blobs = nb;
		blobs[n++] = blob;
		if ((ret = write_key_file(key_ref, blobs, n, err, errlen)) != 0)
			goto out;
	}
	if ((ret = cache_key(ks, &blob, h, h == 0 ? key_ref : NULL, &k, err, errlen)) != 0)
		goto out;
	if ((rc = first_use(ks, k)) != TSS2_RC_SUCCESS && rc_kind(rc) != RCK_RESET) {
		ret = tpm_fail(ks, err, errlen, rc, "loading the new key");
		goto out;
	}
	state_ok(ks);
	*out = k;
	ret = 0;
out:
	tpm_leave(ks);
	if (blobs != NULL) {
		wipe(blobs, n * sizeof(*blobs));
		free(blobs);
	}
	wipe(&blob, sizeof(blob));
	return ret;
}

/*
 * Moves key to the front of its file (the block tpm2-openssl and other tools
 * load) and keeps every other block, in its order: the generation it
 * replaces, older generations whose certificates have not expired yet (long
 * running clients may still sign with them), and keys still waiting for a
 * certificate. Deleting a generation is the caller's decision, through
 * ks_delete once its certificate has expired: the keystore cannot tell which
 * keys still have a valid certificate.
 */
static int tpm_activate(struct keystore *base, struct ks_key *key, char *err, size_t errlen)
{
	struct tpm_ks *ks = to_tpm(base);
	struct tpm_key *tk = key->backend;
	struct tpm_blob *blobs = NULL, first;
	size_t n = 0, i;
	int ret;

	if (tk->persistent != 0 || tk->path == NULL)
		return 0;
	tpm_enter(ks);
	if ((ret = read_key_file(tk->path, &blobs, &n, err, errlen)) != 0)
		goto out;
	for (i = 0; i < n; i++)
		if (same_public(&blobs[i].pub, &tk->blob.pub))
			break;
	if (i == n) {
		snprintf(err, errlen, "the key is no longer in %s", tk->path);
		ret = MTLS_AGENT_ERR_KEY_GONE;
		goto out;
	}
	if (i == 0) {
		ret = 0;
		goto out;
	}
	first = blobs[i];
	memmove(&blobs[1], &blobs[0], i * sizeof(*blobs));
	blobs[0] = first;
	wipe(&first, sizeof(first));
	if ((ret = write_key_file(tk->path, blobs, n, err, errlen)) != 0)
		goto out;
	log_info("keystore %s: %s: the certified key is now the first of %zu (the others stay "
		 "until they are retired)",
		 ks->base.name, tk->path, n);
out:
	tpm_leave(ks);
	if (blobs != NULL) {
		wipe(blobs, n * sizeof(*blobs));
		free(blobs);
	}
	return ret;
}

/* For messages: "in FILE" or "at persistent handle 0x81xxxxxx". */
static const char *key_where(const struct tpm_key *tk, char *buf, size_t len)
{
	char path[128];

	if (tk->persistent != 0)
		snprintf(buf, len, "at persistent handle 0x%08x", tk->persistent);
	else
		snprintf(buf, len, "in %s",
			 log_sanitize(tk->path != NULL ? tk->path : "?", path, sizeof(path)));
	return buf;
}

/*
 * Evicts a persistent key, unless its handle is empty now or holds another
 * key (which is not ours to evict). *evicted: whether it did. Ticket held,
 * connected.
 */
static TSS2_RC evict_key(struct tpm_ks *ks, struct tpm_key *tk, int *evicted)
{
	TPM2B_PUBLIC pub;
	ESYS_TR tr = ESYS_TR_NONE, out = ESYS_TR_NONE;
	TSS2_RC rc;

	*evicted = 0;
	/* Our ESYS_TR for the handle goes: after the eviction it would name nothing. */
	if (key_loaded(ks, tk))
		Esys_TR_Close(ks->ectx, &tk->tr);
	tk->tr = ESYS_TR_NONE;
	rc = read_persistent(ks, tk->persistent, &tr, &pub);
	if (tpm_base(rc) == TPM2_RC_HANDLE)
		return TSS2_RC_SUCCESS;
	if (rc != TSS2_RC_SUCCESS)
		return rc;
	if (!same_public(&pub, &tk->blob.pub)) {
		close_read_tr(ks, &tr);
		return TSS2_RC_SUCCESS;
	}
	/* Checked only now: an empty handle needs no owner authorization. */
	if (ks->owner_auth_set) {
		close_read_tr(ks, &tr);
		return KS_RC_EVICT_AUTH;
	}
	for (;;) {
		TPM_CALL(ks, rc, "TPM2_EvictControl",
			 Esys_EvictControl(ks->ectx, ESYS_TR_RH_OWNER, tr, ESYS_TR_PASSWORD,
					   ESYS_TR_NONE, ESYS_TR_NONE, tk->persistent, &out));
		/* The TPM loads a persistent object into a free slot to work on it. */
		if (rc_kind(rc) == RCK_OBJECT_MEMORY && evict_lru(ks, NULL, 0))
			continue;
		break;
	}
	/* Some ESYS versions drop the evicted object's ESYS_TR themselves: errors do not matter. */
	Esys_TR_Close(ks->ectx, &tr);
	if (rc == TSS2_RC_SUCCESS && out != ESYS_TR_NONE)
		Esys_TR_Close(ks->ectx, &out);
	*evicted = rc == TSS2_RC_SUCCESS;
	return rc;
}

/*
 * Drops key's block from its key file (rewritten atomically, the other
 * blocks in their order) and unloads it. *dropped: whether the file held it.
 * Ticket held.
 */
static int drop_from_file(struct tpm_ks *ks, struct tpm_key *tk, int *dropped, char *err,
			  size_t errlen)
{
	struct tpm_blob *blobs = NULL;
	size_t n = 0, i, kept = 0;
	int ret;

	*dropped = 0;
	if ((ret = read_key_file(tk->path, &blobs, &n, err, errlen)) != 0)
		return ret;
	for (i = 0; i < n; i++)
		if (!same_public(&blobs[i].pub, &tk->blob.pub))
			blobs[kept++] = blobs[i];
	/* A file left without keys stays (empty): keygen fills it again, as it would a new one. */
	if (kept < n && (ret = write_key_file(tk->path, blobs, kept, err, errlen)) == 0)
		*dropped = 1;
	if (ret == 0 && key_loaded(ks, tk)) {
		/* A failure means a lost connection: the object goes with it, or flush_stale. */
		Esys_FlushContext(ks->ectx, tk->tr);
		tk->tr = ESYS_TR_NONE;
	}
	if (ret == 0)
		drop_saved(tk);
	if (blobs != NULL) {
		wipe(blobs, n * sizeof(*blobs));
		free(blobs);
	}
	return ret;
}

static int tpm_delete_key(struct keystore *base, struct ks_key *key, char *err, size_t errlen)
{
	struct tpm_ks *ks = to_tpm(base);
	struct tpm_key *tk = key->backend;
	char where[160];
	TSS2_RC rc = TSS2_RC_SUCCESS;
	int ret = 0, attempt, was, removed = 0;

	key_where(tk, where, sizeof(where));
	tpm_enter(ks);
	if (tk->persistent == 0) {
		if ((ret = drop_from_file(ks, tk, &removed, err, errlen)) != 0)
			goto out;
	} else {
		for (attempt = 0;; attempt++) {
			was = ks->ectx != NULL;
			if ((rc = establish(ks)) == TSS2_RC_SUCCESS &&
			    (rc = evict_key(ks, tk, &removed)) == TSS2_RC_SUCCESS)
				break;
			if (!retry_after(ks, rc, attempt, was)) {
				ret = tpm_fail(ks, err, errlen, rc, "deleting key");
				goto out;
			}
		}
		state_ok(ks);
	}
	tk->retired = 1;
	if (removed)
		log_info("keystore %s: deleted key %s", ks->base.name, where);
	else
		log_debug("keystore %s: key to delete was already gone (%s)", ks->base.name, where);
out:
	tpm_leave(ks);
	return ret;
}

static int tpm_sign(struct keystore *base, struct ks_key *key, const struct scheme *scheme,
		    const uint8_t *in, size_t inlen, uint8_t **sig, size_t *siglen, char *err,
		    size_t errlen)
{
	struct tpm_ks *ks = to_tpm(base);
	struct tpm_key *tk = key->backend;
	TPMT_SIG_SCHEME ts = {.scheme = TPM2_ALG_NULL};
	TPMT_SIGNATURE *tsig = NULL;
	TPM2B_DIGEST digest = {.size = 0};
	TPMI_ALG_HASH halg;
	uint8_t raw[2 * 66], *out = NULL;
	size_t fl, dlen = inlen;
	TSS2_RC rc = TSS2_RC_SUCCESS;
	char where[160];
	int ret, attempt, was, entered = 0;

	*sig = NULL;
	*siglen = 0;
	switch (key->type) {
	case MTLS_AGENT_KEY_EC:
		/*
		 * ECDSA uses the leftmost curve-size bytes of the hash (exact for curves
		 * of whole bytes). Cutting here lets TLS 1.2 pair any hash with any curve
		 * without needing that hash in the TPM.
		 */
		fl = ((size_t)key->bits + 7) / 8;
		if (key->bits % 8 == 0 && dlen > fl)
			dlen = fl;
		if ((halg = hash_alg(dlen)) == TPM2_ALG_NULL)
			goto bad_scheme;
		ts.scheme = TPM2_ALG_ECDSA;
		ts.details.ecdsa.hashAlg = halg;
		break;
	case MTLS_AGENT_KEY_RSA:
		if (!ks_key_fits_scheme(key, scheme) || (halg = hash_alg(dlen)) == TPM2_ALG_NULL)
			goto bad_scheme;
		if (scheme->pad == SIG_PAD_PKCS1) {
			ts.scheme = TPM2_ALG_RSASSA;
			ts.details.rsassa.hashAlg = halg;
		} else if (scheme->pad == SIG_PAD_PSS) {
			ts.scheme = TPM2_ALG_RSAPSS;
			ts.details.rsapss.hashAlg = halg;
		} else {
			goto bad_scheme;
		}
		fl = ((size_t)key->bits + 7) / 8;
		break;
	default:
		goto bad_scheme;
	}
	if (dlen > sizeof(digest.buffer))
		goto bad_scheme;
	digest.size = (UINT16)dlen;
	memcpy(digest.buffer, in, dlen);

	tpm_enter(ks);
	entered = 1;
	if (tk->retired) {
		snprintf(err, errlen, "key %s was retired (deleted from the TPM keystore)",
			 key_where(tk, where, sizeof(where)));
		ret = MTLS_AGENT_ERR_KEY_UNAVAILABLE;
		goto out;
	}
	for (attempt = 0;; attempt++) {
		was = ks->ectx != NULL;
		if ((rc = establish(ks)) == TSS2_RC_SUCCESS && (rc = first_use(ks, key)) == 0) {
			/* The PSS check may just have found the salt wrong. */
			if (ts.scheme == TPM2_ALG_RSAPSS && !ks_key_fits_scheme(key, scheme))
				goto bad_scheme;
			rc = sign_raw(ks, tk, &ts, &digest, &tsig);
		}
		if (rc == TSS2_RC_SUCCESS)
			break;
		if (!retry_after(ks, rc, attempt, was)) {
			ret = tpm_fail(ks, err, errlen, rc, "signing");
			goto out;
		}
	}
	state_ok(ks);
	tpm_leave(ks);
	entered = 0;

	ret = MTLS_AGENT_ERR_KEYSTORE;
	if (key->type == MTLS_AGENT_KEY_EC) {
		if (tsig->sigAlg != TPM2_ALG_ECDSA ||
		    !pad_into(tsig->signature.ecdsa.signatureR.buffer,
			      tsig->signature.ecdsa.signatureR.size, raw, fl) ||
		    !pad_into(tsig->signature.ecdsa.signatureS.buffer,
			      tsig->signature.ecdsa.signatureS.size, raw + fl, fl)) {
			snprintf(err, errlen, "TPM returned a malformed ECDSA signature");
			goto out;
		}
		if ((ret = ks_ecdsa_raw_to_der(raw, 2 * fl, sig, siglen)) != 0)
			snprintf(err, errlen, "cannot encode ECDSA signature");
		goto out;
	}
	/* rsassa and rsapss share one layout. */
	if (tsig->sigAlg != ts.scheme || tsig->signature.rsassa.sig.size != fl) {
		snprintf(err, errlen, "TPM returned a %u-byte RSA signature, expected %zu",
			 (unsigned)tsig->signature.rsassa.sig.size, fl);
		goto out;
	}
	if ((out = malloc(fl)) == NULL) {
		ret = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	memcpy(out, tsig->signature.rsassa.sig.buffer, fl);
	*sig = out;
	*siglen = fl;
	ret = 0;
	goto out;
bad_scheme:
	snprintf(err, errlen, "scheme %s does not fit this key%s", scheme->name,
		 key->type == MTLS_AGENT_KEY_RSA &&
				 (__atomic_load_n(&key->flags, __ATOMIC_RELAXED) & KS_KEY_NO_PSS)
			 ? " (this TPM's RSA-PSS salt length is not the hash length)"
			 : "");
	ret = MTLS_AGENT_ERR_SCHEME;
out:
	if (entered)
		tpm_leave(ks);
	wipe(&digest, sizeof(digest));
	wipe(raw, sizeof(raw));
	Esys_Free(tsig);
	return ret;
}

/* clang-format off */
const struct ks_backend ks_tpm2_backend = {
	.type = "tpm2",
	.max_generations = TPM_MAX_GENERATIONS,
	.open = tpm_open,
	.close = tpm_close,
	.same_params = tpm_same_params,
	.find_keys = tpm_find_keys,
	.keygen = tpm_keygen,
	.sign = tpm_sign,
	.state = tpm_state,
	.activate = tpm_activate,
	.delete_key = tpm_delete_key,
};
/* clang-format on */
