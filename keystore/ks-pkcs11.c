#include "config.h"

/*
 * PKCS#11 keystore backend.
 *
 * The module is loaded by p11-kit in managed mode, so every keystore (and
 * the keystore a reload creates next to the old one) gets its own view of
 * the module: its own sessions, its own C_Initialize/C_Finalize count.
 *
 * Locking: ks->lock guards the establishment state, the session pool and
 * the key cache. Establishing (slot lookup, sessions, login, re-finding the
 * keys) runs with the lock held; it only happens while the keystore has no
 * session at all, so no other thread of this keystore is inside the module.
 * Signing and finding run without the lock, on a session taken from the
 * pool; holding a session keeps the establishment (and so every handle
 * found in it) alive. Deleting a key waits until no lease signs with it.
 */

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

#include "common/log.h"
#include "common/util.h"
#include "keystore/keystore.h"
#include "mtls-agent/client.h"

#define P11_MAX_SESSIONS 256
#define P11_MAX_OBJECTS 4096
#define P11_MAX_ATTR 16384
#define P11_MAX_SIG 2048
#define P11_MAX_CERT (1024 * 1024) /* larger certificate objects are not ours to judge */
#define P11_NEW_ID_LEN 16
#define WRONG_PIN_SLOTS 16
#define TOKEN_KEY_LEN 48 /* serialNumber + label of CK_TOKEN_INFO */

/* Per-key backend data (under ks->lock): where the private key is in this establishment. */
struct p11_key {
	CK_OBJECT_HANDLE handle; /* CK_INVALID_HANDLE when the key was not found again */
	unsigned long gen;	 /* establishment the handle belongs to */
	unsigned users;		 /* leases signing with this key right now */
	int deleted;		 /* ks_delete retired it: never used or found again */
};

struct p11_ks {
	struct keystore base;
	char *module_path;
	char *token;
	char *pin_file;
	unsigned n_sessions;
	CK_FUNCTION_LIST *mod;
	P11KitUri *token_uri;
	char token_desc[96]; /* for messages: sanitised, never a secret */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* Serialises key generation so two requests cannot both pass the id check. */
	pthread_mutex_t keygen_lock;

	/* Everything below is guarded by lock. */
	int initialized;
	int need_reinit;
	int up;
	int resetting;
	unsigned long gen;
	CK_SLOT_ID slot;
	CK_TOKEN_INFO tinfo;
	CK_SESSION_HANDLE *pool; /* pool[0..n_free) are free, the rest are lent out */
	unsigned n_open;
	unsigned n_free;
	char state[256];
	struct ks_key **keys;
	size_t n_keys;
	size_t cap_keys;
};

/* A session lent out of the pool; valid until lease_put. */
struct lease {
	CK_SESSION_HANDLE s;
	CK_SLOT_ID slot;
	unsigned long gen;
	CK_OBJECT_HANDLE hkey;
	struct p11_key *pk; /* the key signed with, counted in its users */
};

/* A key object read from the token. */
struct key_info {
	uint8_t id[KS_MAX_ID];
	size_t id_len;
	char *label;
	EVP_PKEY *pub;
	const char *why; /* when pub is NULL: why the key is unusable */
};

struct keyref {
	P11KitUri *uri;
	CK_ATTRIBUTE *label;
	CK_ATTRIBUTE *id;
};

/*
 * Wrong-PIN memory: process-wide so that a keystore created by a reload
 * still knows which PIN the token refused. One entry per token.
 */
struct wrong_pin {
	int used;
	uint8_t token[TOKEN_KEY_LEN];
	uint8_t hash[32];
	unsigned long stamp;
};

static pthread_mutex_t wrong_pin_lock = PTHREAD_MUTEX_INITIALIZER;
static struct wrong_pin wrong_pins[WRONG_PIN_SLOTS];
static unsigned long wrong_pin_clock;
static uint8_t wrong_pin_salt[32];
static int wrong_pin_salted;

/* clang-format off */
static const struct {
	CK_RV rv;
	const char *name;
} ckr_names[] = {
#define CKR_NAME(x) {x, #x}
	CKR_NAME(CKR_OK),
	CKR_NAME(CKR_CANCEL),
	CKR_NAME(CKR_HOST_MEMORY),
	CKR_NAME(CKR_SLOT_ID_INVALID),
	CKR_NAME(CKR_GENERAL_ERROR),
	CKR_NAME(CKR_FUNCTION_FAILED),
	CKR_NAME(CKR_ARGUMENTS_BAD),
	CKR_NAME(CKR_NO_EVENT),
	CKR_NAME(CKR_NEED_TO_CREATE_THREADS),
	CKR_NAME(CKR_CANT_LOCK),
	CKR_NAME(CKR_ATTRIBUTE_READ_ONLY),
	CKR_NAME(CKR_ATTRIBUTE_SENSITIVE),
	CKR_NAME(CKR_ATTRIBUTE_TYPE_INVALID),
	CKR_NAME(CKR_ATTRIBUTE_VALUE_INVALID),
	CKR_NAME(CKR_ACTION_PROHIBITED),
	CKR_NAME(CKR_DATA_INVALID),
	CKR_NAME(CKR_DATA_LEN_RANGE),
	CKR_NAME(CKR_DEVICE_ERROR),
	CKR_NAME(CKR_DEVICE_MEMORY),
	CKR_NAME(CKR_DEVICE_REMOVED),
	CKR_NAME(CKR_FUNCTION_CANCELED),
	CKR_NAME(CKR_FUNCTION_NOT_PARALLEL),
	CKR_NAME(CKR_FUNCTION_NOT_SUPPORTED),
	CKR_NAME(CKR_KEY_HANDLE_INVALID),
	CKR_NAME(CKR_KEY_SIZE_RANGE),
	CKR_NAME(CKR_KEY_TYPE_INCONSISTENT),
	CKR_NAME(CKR_KEY_FUNCTION_NOT_PERMITTED),
	CKR_NAME(CKR_MECHANISM_INVALID),
	CKR_NAME(CKR_MECHANISM_PARAM_INVALID),
	CKR_NAME(CKR_OBJECT_HANDLE_INVALID),
	CKR_NAME(CKR_OPERATION_ACTIVE),
	CKR_NAME(CKR_OPERATION_NOT_INITIALIZED),
	CKR_NAME(CKR_PIN_INCORRECT),
	CKR_NAME(CKR_PIN_INVALID),
	CKR_NAME(CKR_PIN_LEN_RANGE),
	CKR_NAME(CKR_PIN_EXPIRED),
	CKR_NAME(CKR_PIN_LOCKED),
	CKR_NAME(CKR_SESSION_CLOSED),
	CKR_NAME(CKR_SESSION_COUNT),
	CKR_NAME(CKR_SESSION_HANDLE_INVALID),
	CKR_NAME(CKR_SESSION_PARALLEL_NOT_SUPPORTED),
	CKR_NAME(CKR_SESSION_READ_ONLY),
	CKR_NAME(CKR_SESSION_EXISTS),
	CKR_NAME(CKR_SESSION_READ_ONLY_EXISTS),
	CKR_NAME(CKR_SESSION_READ_WRITE_SO_EXISTS),
	CKR_NAME(CKR_SIGNATURE_INVALID),
	CKR_NAME(CKR_SIGNATURE_LEN_RANGE),
	CKR_NAME(CKR_TEMPLATE_INCOMPLETE),
	CKR_NAME(CKR_TEMPLATE_INCONSISTENT),
	CKR_NAME(CKR_TOKEN_NOT_PRESENT),
	CKR_NAME(CKR_TOKEN_NOT_RECOGNIZED),
	CKR_NAME(CKR_TOKEN_WRITE_PROTECTED),
	CKR_NAME(CKR_USER_ALREADY_LOGGED_IN),
	CKR_NAME(CKR_USER_NOT_LOGGED_IN),
	CKR_NAME(CKR_USER_PIN_NOT_INITIALIZED),
	CKR_NAME(CKR_USER_TYPE_INVALID),
	CKR_NAME(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
	CKR_NAME(CKR_USER_TOO_MANY_TYPES),
	CKR_NAME(CKR_DOMAIN_PARAMS_INVALID),
	CKR_NAME(CKR_CURVE_NOT_SUPPORTED),
	CKR_NAME(CKR_BUFFER_TOO_SMALL),
	CKR_NAME(CKR_RANDOM_NO_RNG),
	CKR_NAME(CKR_CRYPTOKI_NOT_INITIALIZED),
	CKR_NAME(CKR_CRYPTOKI_ALREADY_INITIALIZED),
	CKR_NAME(CKR_MUTEX_BAD),
	CKR_NAME(CKR_LIBRARY_LOAD_FAILED),
	CKR_NAME(CKR_PIN_TOO_WEAK),
	CKR_NAME(CKR_FUNCTION_REJECTED),
#undef CKR_NAME
};
/* clang-format on */

struct ckr_buf {
	char s[32];
};

static const char *ckr_name(CK_RV rv, struct ckr_buf *b)
{
	size_t i;

	for (i = 0; i < sizeof(ckr_names) / sizeof(ckr_names[0]); i++)
		if (ckr_names[i].rv == rv)
			return ckr_names[i].name;
	snprintf(b->s, sizeof(b->s), "CKR_0x%lx", (unsigned long)rv);
	return b->s;
}

static int ckr_to_err(CK_RV rv)
{
	switch (rv) {
	case CKR_OK:
		return 0;
	case CKR_HOST_MEMORY:
		return MTLS_AGENT_ERR_NOMEM;
	case CKR_TOKEN_NOT_PRESENT:
	case CKR_DEVICE_REMOVED:
	case CKR_SLOT_ID_INVALID:
	case CKR_TOKEN_NOT_RECOGNIZED:
	case CKR_KEY_HANDLE_INVALID:
	case CKR_OBJECT_HANDLE_INVALID:
		return MTLS_AGENT_ERR_KEY_UNAVAILABLE;
	case CKR_PIN_INCORRECT:
	case CKR_PIN_INVALID:
	case CKR_PIN_LEN_RANGE:
	case CKR_PIN_EXPIRED:
	case CKR_PIN_LOCKED:
	case CKR_USER_PIN_NOT_INITIALIZED:
	case CKR_USER_NOT_LOGGED_IN:
		return MTLS_AGENT_ERR_PIN;
	default:
		return MTLS_AGENT_ERR_KEYSTORE;
	}
}

/* Errors after which sessions (and maybe the module) must be set up again. */
static int ckr_needs_reset(CK_RV rv)
{
	switch (rv) {
	case CKR_SESSION_HANDLE_INVALID:
	case CKR_SESSION_CLOSED:
	case CKR_DEVICE_REMOVED:
	case CKR_TOKEN_NOT_PRESENT:
	case CKR_USER_NOT_LOGGED_IN:
	case CKR_DEVICE_ERROR:
	case CKR_CRYPTOKI_NOT_INITIALIZED:
	case CKR_GENERAL_ERROR:
	/* A stale object handle: re-find the key by CKA_ID. */
	case CKR_KEY_HANDLE_INVALID:
	case CKR_OBJECT_HANDLE_INVALID:
		return 1;
	default:
		return 0;
	}
}

/* Errors after which only C_Finalize + C_Initialize bring the module back. */
static int ckr_needs_reinit(CK_RV rv)
{
	return rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_GENERAL_ERROR ||
	       rv == CKR_DEVICE_REMOVED || rv == CKR_DEVICE_ERROR;
}

static int ckr_fail(char *err, size_t errlen, CK_RV rv, const char *what)
{
	struct ckr_buf b;

	snprintf(err, errlen, "%s: %s", what, ckr_name(rv, &b));
	return ckr_to_err(rv);
}

static struct p11_ks *to_p11(struct keystore *ks)
{
	return (struct p11_ks *)ks;
}

/* Records an establishment failure as the keystore's state and as err. Lock held. */
static int __attribute__((format(printf, 5, 6)))
est_fail(struct p11_ks *ks, char *err, size_t errlen, int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(ks->state, sizeof(ks->state), fmt, ap);
	va_end(ap);
	snprintf(err, errlen, "%s", ks->state);
	return code;
}

static int est_fail_ckr(struct p11_ks *ks, char *err, size_t errlen, CK_RV rv, const char *what)
{
	struct ckr_buf b;

	return est_fail(ks, err, errlen, ckr_to_err(rv), "token %s: %s: %s", ks->token_desc, what,
			ckr_name(rv, &b));
}

/* --- wrong-PIN memory ---------------------------------------------------- */

static void token_key(const CK_TOKEN_INFO *ti, uint8_t out[TOKEN_KEY_LEN])
{
	memcpy(out, ti->serialNumber, sizeof(ti->serialNumber));
	memcpy(out + sizeof(ti->serialNumber), ti->label, sizeof(ti->label));
}

/*
 * Salted so that the memory holds nothing a short numeric PIN could be
 * recovered from by hashing candidates. wrong_pin_lock held.
 */
static int pin_hash(const uint8_t tkey[TOKEN_KEY_LEN], const char *pin, uint8_t out[32])
{
	EVP_MD_CTX *md = NULL;
	int ret = -1;

	if (!wrong_pin_salted) {
		if (RAND_bytes(wrong_pin_salt, sizeof(wrong_pin_salt)) != 1)
			return -1;
		wrong_pin_salted = 1;
	}
	if ((md = EVP_MD_CTX_new()) == NULL)
		goto out;
	if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(md, wrong_pin_salt, sizeof(wrong_pin_salt)) != 1 ||
	    EVP_DigestUpdate(md, tkey, TOKEN_KEY_LEN) != 1 ||
	    EVP_DigestUpdate(md, pin, strlen(pin)) != 1 || EVP_DigestFinal_ex(md, out, NULL) != 1)
		goto out;
	ret = 0;
out:
	EVP_MD_CTX_free(md);
	return ret;
}

static struct wrong_pin *wrong_pin_find(const uint8_t tkey[TOKEN_KEY_LEN])
{
	size_t i;

	for (i = 0; i < WRONG_PIN_SLOTS; i++)
		if (wrong_pins[i].used && memcmp(wrong_pins[i].token, tkey, TOKEN_KEY_LEN) == 0)
			return &wrong_pins[i];
	return NULL;
}

static void wrong_pin_remember(const uint8_t tkey[TOKEN_KEY_LEN], const uint8_t hash[32])
{
	struct wrong_pin *w = wrong_pin_find(tkey);
	size_t i;

	if (w == NULL) {
		/* Reuse a free entry, else the oldest one. */
		w = &wrong_pins[0];
		for (i = 0; i < WRONG_PIN_SLOTS; i++) {
			if (!wrong_pins[i].used) {
				w = &wrong_pins[i];
				break;
			}
			if (wrong_pins[i].stamp < w->stamp)
				w = &wrong_pins[i];
		}
	}
	w->used = 1;
	memcpy(w->token, tkey, TOKEN_KEY_LEN);
	memcpy(w->hash, hash, 32);
	w->stamp = ++wrong_pin_clock;
}

static void wrong_pin_forget(const uint8_t tkey[TOKEN_KEY_LEN])
{
	struct wrong_pin *w = wrong_pin_find(tkey);

	if (w != NULL)
		memset(w, 0, sizeof(*w));
}

/* --- establishment ------------------------------------------------------- */

static void close_sessions_locked(struct p11_ks *ks)
{
	unsigned i;

	for (i = 0; i < ks->n_open; i++)
		ks->mod->C_CloseSession(ks->pool[i]);
	ks->n_open = 0;
	ks->n_free = 0;
	ks->up = 0;
}

/*
 * Logs the application in, unless the token or the wrong-PIN memory says
 * a login would only burn one of the token's tries. pin is the PIN read at
 * open (NULL: read the file now).
 */
static int login_locked(struct p11_ks *ks, CK_SESSION_HANDLE s, const char *pin, char *err,
			size_t errlen)
{
	CK_SESSION_INFO si;
	CK_TOKEN_INFO ti;
	char *own = NULL, rerr[256];
	uint8_t tkey[TOKEN_KEY_LEN], hash[32];
	struct wrong_pin *w;
	struct ckr_buf b;
	CK_RV rv;
	int ret;

	if (ks->pin_file == NULL)
		return 0;
	/* Login state belongs to the application: another keystore may have done it. */
	rv = ks->mod->C_GetSessionInfo(s, &si);
	if (rv == CKR_OK &&
	    (si.state == CKS_RO_USER_FUNCTIONS || si.state == CKS_RW_USER_FUNCTIONS))
		return 0;
	if ((rv = ks->mod->C_GetTokenInfo(ks->slot, &ti)) != CKR_OK)
		return est_fail_ckr(ks, err, errlen, rv, "C_GetTokenInfo");
	if (ti.flags & CKF_USER_PIN_LOCKED)
		return est_fail(ks, err, errlen, MTLS_AGENT_ERR_PIN, "token %s: user PIN locked",
				ks->token_desc);
	if (ti.flags & CKF_USER_PIN_FINAL_TRY)
		return est_fail(ks, err, errlen, MTLS_AGENT_ERR_PIN,
				"token %s: user PIN has one try left; not logging in "
				"(reset the PIN with the SO PIN)",
				ks->token_desc);
	if (pin == NULL) {
		if (read_secret_file(ks->pin_file, &own, rerr, sizeof(rerr)) != 0)
			return est_fail(ks, err, errlen, MTLS_AGENT_ERR_PIN, "token %s: %s",
					ks->token_desc, rerr);
		pin = own;
	}
	token_key(&ti, tkey);
	/* Held across check, login and update: two keystores must not both try one bad PIN. */
	pthread_mutex_lock(&wrong_pin_lock);
	if (pin_hash(tkey, pin, hash) != 0) {
		ret = est_fail(ks, err, errlen, MTLS_AGENT_ERR_INTERNAL,
			       "token %s: cannot hash PIN", ks->token_desc);
		goto unlock;
	}
	w = wrong_pin_find(tkey);
	if (w != NULL && memcmp(w->hash, hash, sizeof(hash)) == 0) {
		ret = est_fail(ks, err, errlen, MTLS_AGENT_ERR_PIN,
			       "token %s: wrong PIN in %s; not retried until the PIN file changes",
			       ks->token_desc, ks->pin_file);
		goto unlock;
	}
	rv = ks->mod->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin));
	switch (rv) {
	case CKR_OK:
	case CKR_USER_ALREADY_LOGGED_IN:
		wrong_pin_forget(tkey);
		ret = 0;
		break;
	case CKR_PIN_INCORRECT:
	case CKR_PIN_INVALID:
	case CKR_PIN_LEN_RANGE:
		wrong_pin_remember(tkey, hash);
		log_warn("keystore %s: login to token %s failed: wrong PIN in %s (%s); not retried "
			 "until the file changes",
			 ks->base.name, ks->token_desc, ks->pin_file, ckr_name(rv, &b));
		ret = est_fail(ks, err, errlen, MTLS_AGENT_ERR_PIN,
			       "token %s: wrong PIN in %s; not retried until the PIN file changes",
			       ks->token_desc, ks->pin_file);
		break;
	case CKR_PIN_LOCKED:
		ret = est_fail(ks, err, errlen, MTLS_AGENT_ERR_PIN, "token %s: user PIN locked",
			       ks->token_desc);
		break;
	case CKR_PIN_EXPIRED:
		ret = est_fail(ks, err, errlen, MTLS_AGENT_ERR_PIN, "token %s: user PIN expired",
			       ks->token_desc);
		break;
	default:
		ret = est_fail_ckr(ks, err, errlen, rv, "C_Login");
		break;
	}
unlock:
	pthread_mutex_unlock(&wrong_pin_lock);
	wipe(hash, sizeof(hash));
	if (own != NULL) {
		wipe(own, strlen(own));
		free(own);
	}
	return ret;
}

static CK_RV find_objects(CK_FUNCTION_LIST *m, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
			  const CK_KEY_TYPE *kt, const void *label, size_t label_len,
			  const void *id, size_t id_len, CK_OBJECT_HANDLE **out, size_t *n)
{
	CK_ATTRIBUTE tmpl[4];
	CK_OBJECT_HANDLE batch[32], *all = NULL, *na;
	CK_ULONG nt = 0, got;
	size_t cnt = 0, cap = 0;
	CK_RV rv, frv;

	*out = NULL;
	*n = 0;
	tmpl[nt++] = (CK_ATTRIBUTE){CKA_CLASS, &cls, sizeof(cls)};
	if (label != NULL)
		tmpl[nt++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, (CK_ULONG)label_len};
	if (id != NULL)
		tmpl[nt++] = (CK_ATTRIBUTE){CKA_ID, (void *)id, (CK_ULONG)id_len};
	if (kt != NULL)
		tmpl[nt++] = (CK_ATTRIBUTE){CKA_KEY_TYPE, (void *)kt, sizeof(*kt)};
	if ((rv = m->C_FindObjectsInit(s, tmpl, nt)) != CKR_OK)
		return rv;
	for (;;) {
		got = 0;
		rv = m->C_FindObjects(s, batch, sizeof(batch) / sizeof(batch[0]), &got);
		if (rv != CKR_OK || got == 0)
			break;
		if (got > sizeof(batch) / sizeof(batch[0]) || cnt + got > P11_MAX_OBJECTS) {
			rv = CKR_GENERAL_ERROR;
			break;
		}
		if (cnt + got > cap) {
			cap = cap == 0 ? 64 : cap * 2;
			if ((na = realloc(all, cap * sizeof(*all))) == NULL) {
				rv = CKR_HOST_MEMORY;
				break;
			}
			all = na;
		}
		memcpy(all + cnt, batch, got * sizeof(*all));
		cnt += got;
	}
	frv = m->C_FindObjectsFinal(s);
	if (rv == CKR_OK)
		rv = frv;
	if (rv != CKR_OK) {
		free(all);
		return rv;
	}
	*out = all;
	*n = cnt;
	return CKR_OK;
}

/*
 * Reads one attribute into a new buffer. An attribute the object does not
 * have (or will not show) is not an error: *val stays NULL.
 */
static CK_RV get_attr(CK_FUNCTION_LIST *m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
		      CK_ATTRIBUTE_TYPE type, uint8_t **val, size_t *len)
{
	CK_ATTRIBUTE a = {type, NULL, 0};
	uint8_t *p = NULL;
	CK_RV rv;

	*val = NULL;
	*len = 0;
	rv = m->C_GetAttributeValue(s, h, &a, 1);
	if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE ||
	    (rv == CKR_OK && a.ulValueLen == CK_UNAVAILABLE_INFORMATION))
		return CKR_OK;
	if (rv != CKR_OK)
		return rv;
	if (a.ulValueLen > P11_MAX_ATTR)
		return CKR_GENERAL_ERROR;
	/* One spare byte keeps strings NUL-terminated. */
	if ((p = calloc(1, a.ulValueLen + 1)) == NULL)
		return CKR_HOST_MEMORY;
	a.pValue = p;
	rv = m->C_GetAttributeValue(s, h, &a, 1);
	if (rv != CKR_OK) {
		free(p);
		return rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE ? CKR_OK
											 : rv;
	}
	*val = p;
	*len = a.ulValueLen;
	return CKR_OK;
}

/* --- public keys --------------------------------------------------------- */

static const struct {
	int nid;
	const char *group;
	size_t field_len;
} ec_curves[] = {{NID_X9_62_prime256v1, "prime256v1", 32},
		 {NID_secp384r1, "secp384r1", 48},
		 {NID_secp521r1, "secp521r1", 66}};

static const uint8_t oid_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const uint8_t oid_p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
static const uint8_t oid_ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
static const uint8_t str_ed25519[] = {0x13, 0x0c, 'e', 'd', 'w', 'a', 'r',
				      'd',  's',  '2', '5', '5', '1', '9'};

/* NID named by a DER OBJECT IDENTIFIER (CKA_EC_PARAMS), NID_undef otherwise. */
static int params_nid(const uint8_t *p, size_t len)
{
	const unsigned char *q = p;
	ASN1_OBJECT *obj;
	int nid = NID_undef;

	if (len == sizeof(str_ed25519) && memcmp(p, str_ed25519, len) == 0)
		return NID_ED25519;
	if (len < 2 || p[0] != 0x06)
		return NID_undef;
	if ((obj = d2i_ASN1_OBJECT(NULL, &q, (long)len)) != NULL && q == p + len)
		nid = OBJ_obj2nid(obj);
	ASN1_OBJECT_free(obj);
	return nid;
}

/*
 * CKA_EC_POINT is meant to be a DER OCTET STRING around the point, but
 * some modules hand out the bare point; the expected length tells which.
 */
static const uint8_t *point_unwrap(const uint8_t *p, size_t len, size_t want)
{
	size_t hdr;

	if (len == want)
		return p;
	if (len < 2 || p[0] != 0x04)
		return NULL;
	if (p[1] < 0x80)
		hdr = 2;
	else if (p[1] == 0x81 && len >= 3 && p[2] >= 0x80)
		hdr = 3;
	else
		return NULL;
	if (len - hdr != want || (hdr == 2 ? p[1] : p[2]) != want)
		return NULL;
	return p + hdr;
}

static EVP_PKEY *pub_ec(const uint8_t *params, size_t plen, const uint8_t *pt, size_t ptlen,
			const char **why)
{
	OSSL_PARAM_BLD *bld = NULL;
	EVP_PKEY *pkey = NULL;
	const uint8_t *q;
	size_t i;
	int nid = params_nid(params, plen);

	for (i = 0; i < sizeof(ec_curves) / sizeof(ec_curves[0]); i++)
		if (ec_curves[i].nid == nid)
			break;
	if (i == sizeof(ec_curves) / sizeof(ec_curves[0])) {
		*why = "unsupported EC curve";
		return NULL;
	}
	q = point_unwrap(pt, ptlen, 1 + 2 * ec_curves[i].field_len);
	if (q == NULL || q[0] != 0x04) {
		*why = "CKA_EC_POINT is not an uncompressed point";
		return NULL;
	}
	if ((bld = OSSL_PARAM_BLD_new()) == NULL ||
	    OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, ec_curves[i].group,
					    0) != 1 ||
	    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, q,
					     1 + 2 * ec_curves[i].field_len) != 1)
		goto out;
	if ((pkey = ks_pkey_fromdata("EC", bld)) == NULL)
		*why = "invalid EC public key";
out:
	OSSL_PARAM_BLD_free(bld);
	return pkey;
}

static EVP_PKEY *pub_rsa(const uint8_t *n, size_t nlen, const uint8_t *e, size_t elen,
			 const char **why)
{
	OSSL_PARAM_BLD *bld = NULL;
	EVP_PKEY *pkey = NULL;
	BIGNUM *bn = NULL, *be = NULL;

	if ((bn = BN_bin2bn(n, (int)nlen, NULL)) == NULL ||
	    (be = BN_bin2bn(e, (int)elen, NULL)) == NULL || (bld = OSSL_PARAM_BLD_new()) == NULL ||
	    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) != 1 ||
	    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) != 1)
		goto out;
	if ((pkey = ks_pkey_fromdata("RSA", bld)) == NULL)
		*why = "invalid RSA public key";
out:
	OSSL_PARAM_BLD_free(bld);
	BN_free(bn);
	BN_free(be);
	return pkey;
}

static EVP_PKEY *pub_ed25519(const uint8_t *params, size_t plen, const uint8_t *pt, size_t ptlen,
			     const char **why)
{
	OSSL_PARAM_BLD *bld = NULL;
	EVP_PKEY *pkey = NULL;
	const uint8_t *q;

	if (params != NULL && params_nid(params, plen) != NID_ED25519) {
		*why = "unsupported Edwards curve";
		return NULL;
	}
	if ((q = point_unwrap(pt, ptlen, 32)) == NULL) {
		*why = "CKA_EC_POINT is not an Ed25519 public key";
		return NULL;
	}
	if ((bld = OSSL_PARAM_BLD_new()) == NULL ||
	    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, q, 32) != 1)
		goto out;
	if ((pkey = ks_pkey_fromdata("ED25519", bld)) == NULL)
		*why = "invalid Ed25519 public key";
out:
	OSSL_PARAM_BLD_free(bld);
	return pkey;
}

/* Public key from one object's attributes; *pub stays NULL when they are not all there. */
static CK_RV pub_from_object(CK_FUNCTION_LIST *m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
			     CK_KEY_TYPE kt, EVP_PKEY **pub, const char **why)
{
	uint8_t *a = NULL, *b = NULL;
	size_t alen = 0, blen = 0;
	CK_RV rv;

	*pub = NULL;
	switch (kt) {
	case CKK_EC:
	case CKK_EC_EDWARDS:
		if ((rv = get_attr(m, s, h, CKA_EC_PARAMS, &a, &alen)) != CKR_OK ||
		    (rv = get_attr(m, s, h, CKA_EC_POINT, &b, &blen)) != CKR_OK)
			goto out;
		if (b == NULL || (kt == CKK_EC && a == NULL))
			goto out;
		*pub = kt == CKK_EC ? pub_ec(a, alen, b, blen, why)
				    : pub_ed25519(a, alen, b, blen, why);
		break;
	case CKK_RSA:
		if ((rv = get_attr(m, s, h, CKA_MODULUS, &a, &alen)) != CKR_OK ||
		    (rv = get_attr(m, s, h, CKA_PUBLIC_EXPONENT, &b, &blen)) != CKR_OK)
			goto out;
		if (a == NULL || b == NULL || alen == 0 || blen == 0)
			goto out;
		*pub = pub_rsa(a, alen, b, blen, why);
		break;
	default:
		*why = "unsupported key type";
		rv = CKR_OK;
		break;
	}
out:
	free(a);
	free(b);
	return rv;
}

static void key_info_clear(struct key_info *ki)
{
	free(ki->label);
	EVP_PKEY_free(ki->pub);
	memset(ki, 0, sizeof(*ki));
}

/*
 * Reads a private key object: id, label and public half (from the object
 * itself, else from a public key object with the same CKA_ID). A key that
 * cannot be used is CKR_OK with ki->pub NULL and ki->why set; only module
 * failures are returned, and then ki holds nothing.
 */
static CK_RV load_key(CK_FUNCTION_LIST *m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
		      struct key_info *ki)
{
	CK_OBJECT_HANDLE *pubs = NULL;
	CK_KEY_TYPE kt = 0;
	uint8_t *id = NULL, *label = NULL, *ktv = NULL;
	size_t idlen, labellen, ktlen, npubs = 0, i;
	CK_RV rv;

	memset(ki, 0, sizeof(*ki));
	ki->why = "public key not readable";
	if ((rv = get_attr(m, s, h, CKA_ID, &id, &idlen)) != CKR_OK ||
	    (rv = get_attr(m, s, h, CKA_LABEL, &label, &labellen)) != CKR_OK ||
	    (rv = get_attr(m, s, h, CKA_KEY_TYPE, &ktv, &ktlen)) != CKR_OK)
		goto out;
	if (id == NULL || idlen == 0 || idlen > KS_MAX_ID) {
		/* Without a usable CKA_ID the key could not be found again after a reset. */
		ki->why = "no usable CKA_ID";
		goto out;
	}
	memcpy(ki->id, id, idlen);
	ki->id_len = idlen;
	if (label != NULL && labellen > 0) {
		ki->label = (char *)label;
		label = NULL;
	}
	if (ktv == NULL || ktlen != sizeof(kt)) {
		ki->why = "no CKA_KEY_TYPE";
		goto out;
	}
	memcpy(&kt, ktv, sizeof(kt));
	if ((rv = pub_from_object(m, s, h, kt, &ki->pub, &ki->why)) != CKR_OK || ki->pub != NULL)
		goto out;
	if ((rv = find_objects(m, s, CKO_PUBLIC_KEY, &kt, NULL, 0, ki->id, ki->id_len, &pubs,
			       &npubs)) != CKR_OK)
		goto out;
	for (i = 0; i < npubs && ki->pub == NULL; i++)
		if ((rv = pub_from_object(m, s, pubs[i], kt, &ki->pub, &ki->why)) != CKR_OK)
			goto out;
out:
	if (rv != CKR_OK)
		key_info_clear(ki);
	free(pubs);
	free(id);
	free(label);
	free(ktv);
	return rv;
}

/* Whether pub encodes to key's SubjectPublicKeyInfo. */
static int same_spki(EVP_PKEY *pub, const struct ks_key *key)
{
	unsigned char *der = NULL;
	int len, same;

	if (pub == NULL || (len = i2d_PUBKEY(pub, &der)) <= 0)
		return 0;
	same = (size_t)len == key->spki_len && memcmp(der, key->spki, key->spki_len) == 0;
	OPENSSL_free(der);
	return same;
}

/* Whether the object at h is still the key we knew (same id and same public key). */
static CK_RV key_matches(CK_FUNCTION_LIST *m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
			 const struct ks_key *key, int *match)
{
	struct key_info ki;
	CK_RV rv;

	*match = 0;
	if ((rv = load_key(m, s, h, &ki)) != CKR_OK)
		return rv;
	*match = same_spki(ki.pub, key);
	key_info_clear(&ki);
	return CKR_OK;
}

/*
 * Finds every known key again by its CKA_ID after a (re)establishment:
 * object handles from the previous one mean nothing now. Lock held.
 */
static CK_RV refind_keys_locked(struct p11_ks *ks, CK_SESSION_HANDLE s)
{
	CK_OBJECT_HANDLE *hs = NULL;
	struct p11_key *pk;
	struct ks_key *k;
	size_t i, j, nh;
	int match;
	CK_RV rv = CKR_OK;
	char lbuf[64];

	for (i = 0; i < ks->n_keys; i++) {
		k = ks->keys[i];
		pk = k->backend;
		pk->handle = CK_INVALID_HANDLE;
		pk->gen = ks->gen;
		if ((rv = find_objects(ks->mod, s, CKO_PRIVATE_KEY, NULL, NULL, 0, k->id, k->id_len,
				       &hs, &nh)) != CKR_OK)
			return rv;
		for (j = 0, match = 0; j < nh && !match; j++) {
			if ((rv = key_matches(ks->mod, s, hs[j], k, &match)) != CKR_OK)
				goto out;
			if (match)
				pk->handle = hs[j];
		}
		/* A retired key is still looked for: its deletion may yet fail and be undone. */
		if (!match && !pk->deleted)
			log_warn("keystore %s: key '%s' is no longer on token %s", ks->base.name,
				 log_sanitize(k->label != NULL ? k->label : "(no label)", lbuf,
					      sizeof(lbuf)),
				 ks->token_desc);
		free(hs);
		hs = NULL;
	}
out:
	free(hs);
	return rv;
}

/*
 * Sets up the module, slot, sessions and login, and re-finds the known
 * keys. Lock held, no session open.
 */
static int establish_locked(struct p11_ks *ks, const char *pin, char *err, size_t errlen)
{
	CK_SLOT_ID *slots = NULL;
	CK_TOKEN_INFO ti;
	CK_ULONG n = 0, i;
	CK_RV rv;
	unsigned k, tries;
	int ret;
	struct ckr_buf b;

	if (ks->need_reinit && ks->initialized) {
		p11_kit_module_finalize(ks->mod);
		ks->initialized = 0;
	}
	ks->need_reinit = 0;
	if (!ks->initialized) {
		rv = p11_kit_module_initialize(ks->mod);
		if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			ret = est_fail_ckr(ks, err, errlen, rv, "C_Initialize");
			goto out;
		}
		ks->initialized = 1;
	}
	for (tries = 0;; tries++) {
		n = 0;
		if ((rv = ks->mod->C_GetSlotList(CK_TRUE, NULL, &n)) != CKR_OK)
			break;
		if (n == 0)
			break;
		if (n > P11_MAX_OBJECTS) {
			rv = CKR_GENERAL_ERROR;
			break;
		}
		free(slots);
		if ((slots = calloc(n, sizeof(*slots))) == NULL) {
			rv = CKR_HOST_MEMORY;
			break;
		}
		rv = ks->mod->C_GetSlotList(CK_TRUE, slots, &n);
		if (rv != CKR_BUFFER_TOO_SMALL || tries >= 4)
			break;
	}
	if (rv != CKR_OK) {
		ks->need_reinit = ckr_needs_reinit(rv);
		ret = est_fail_ckr(ks, err, errlen, rv, "C_GetSlotList");
		goto out;
	}
	for (i = 0; i < n; i++)
		if (ks->mod->C_GetTokenInfo(slots[i], &ti) == CKR_OK &&
		    p11_kit_uri_match_token_info(ks->token_uri, &ti))
			break;
	if (i >= n) {
		/* Some modules only notice a re-plugged token or reader after C_Initialize. */
		ks->need_reinit = 1;
		ret = est_fail(ks, err, errlen, MTLS_AGENT_ERR_KEY_UNAVAILABLE,
			       "token %s not present", ks->token_desc);
		goto out;
	}
	if (!(ti.flags & CKF_TOKEN_INITIALIZED)) {
		ret = est_fail(ks, err, errlen, MTLS_AGENT_ERR_KEY_UNAVAILABLE,
			       "token %s is not initialised", ks->token_desc);
		goto out;
	}
	ks->slot = slots[i];
	ks->tinfo = ti;
	rv = CKR_OK;
	for (k = 0; k < ks->n_sessions; k++) {
		rv = ks->mod->C_OpenSession(ks->slot, CKF_SERIAL_SESSION, NULL, NULL, &ks->pool[k]);
		if (rv != CKR_OK)
			break;
	}
	ks->n_open = k;
	if (k == 0) {
		ks->need_reinit = ckr_needs_reinit(rv);
		ret = est_fail_ckr(ks, err, errlen, rv, "C_OpenSession");
		goto out;
	}
	if (k < ks->n_sessions)
		log_warn("keystore %s: token %s gave %u of %u sessions (%s)", ks->base.name,
			 ks->token_desc, k, ks->n_sessions, ckr_name(rv, &b));
	if ((ret = login_locked(ks, ks->pool[0], pin, err, errlen)) != 0) {
		close_sessions_locked(ks);
		goto out;
	}
	ks->gen++;
	if ((rv = refind_keys_locked(ks, ks->pool[0])) != CKR_OK) {
		close_sessions_locked(ks);
		ks->need_reinit = ckr_needs_reinit(rv);
		ret = est_fail_ckr(ks, err, errlen, rv, "finding keys again");
		goto out;
	}
	ks->n_free = ks->n_open;
	ks->up = 1;
	snprintf(ks->state, sizeof(ks->state), "ok");
	ret = 0;
out:
	free(slots);
	return ret;
}

/*
 * Closes every session of this establishment once none is lent out. Lock
 * held; the caller has returned its own session.
 */
static void teardown_locked(struct p11_ks *ks, CK_RV why)
{
	struct ckr_buf b;

	ks->resetting = 1;
	while (ks->n_free < ks->n_open)
		pthread_cond_wait(&ks->cond, &ks->lock);
	close_sessions_locked(ks);
	if (ckr_needs_reinit(why))
		ks->need_reinit = 1;
	ks->resetting = 0;
	snprintf(ks->state, sizeof(ks->state), "token %s: session lost (%s); re-establishing",
		 ks->token_desc, ckr_name(why, &b));
	log_info("keystore %s: %s", ks->base.name, ks->state);
	atomic_fetch_add(&ks->base.reconnects, 1);
	pthread_cond_broadcast(&ks->cond);
}

/*
 * Lends a pool session, establishing first when needed. With key, also the
 * key's object handle in this establishment.
 */
static int lease_get(struct p11_ks *ks, struct ks_key *key, struct lease *l, char *err,
		     size_t errlen)
{
	struct p11_key *pk;
	char lbuf[64];
	int ret = 0;

	l->pk = NULL;
	pthread_mutex_lock(&ks->lock);
	for (;;) {
		if (ks->resetting) {
			pthread_cond_wait(&ks->cond, &ks->lock);
			continue;
		}
		if (!ks->up) {
			if ((ret = establish_locked(ks, NULL, err, errlen)) != 0)
				goto out;
			continue;
		}
		if (ks->n_free > 0)
			break;
		pthread_cond_wait(&ks->cond, &ks->lock);
	}
	if (key != NULL) {
		pk = key->backend;
		if (pk->deleted) {
			snprintf(err, errlen, "key '%s' was retired (deleted from token %s)",
				 log_sanitize(key->label != NULL ? key->label : "(no label)", lbuf,
					      sizeof(lbuf)),
				 ks->token_desc);
			ret = MTLS_AGENT_ERR_KEY_UNAVAILABLE;
			goto out;
		}
		if (pk->gen != ks->gen || pk->handle == CK_INVALID_HANDLE) {
			snprintf(err, errlen, "key '%s' is no longer on token %s",
				 log_sanitize(key->label != NULL ? key->label : "(no label)", lbuf,
					      sizeof(lbuf)),
				 ks->token_desc);
			ret = MTLS_AGENT_ERR_KEY_UNAVAILABLE;
			goto out;
		}
		l->hkey = pk->handle;
		l->pk = pk;
		pk->users++;
	}
	l->s = ks->pool[--ks->n_free];
	l->slot = ks->slot;
	l->gen = ks->gen;
out:
	pthread_mutex_unlock(&ks->lock);
	return ret;
}

/* Returns a session; rv is the result of what was done with it. */
static void lease_put(struct p11_ks *ks, struct lease *l, CK_RV rv)
{
	pthread_mutex_lock(&ks->lock);
	ks->pool[ks->n_free++] = l->s;
	if (l->pk != NULL)
		l->pk->users--; /* the broadcast below wakes a p11_delete_key waiting for it */
	/* Only the first of several failing signers of one establishment resets it. */
	if (ckr_needs_reset(rv) && l->gen == ks->gen && ks->up) {
		if (ckr_needs_reinit(rv))
			ks->need_reinit = 1;
		if (!ks->resetting)
			teardown_locked(ks, rv);
	}
	pthread_cond_broadcast(&ks->cond);
	pthread_mutex_unlock(&ks->lock);
}

/* --- key cache ----------------------------------------------------------- */

static void key_free(struct ks_key *k)
{
	if (k == NULL)
		return;
	ks_key_free_public(k);
	free(k->label);
	free(k->backend);
	free(k);
}

/*
 * The cached key for what was read from the token, or a new cached key
 * made from it (taking ki->pub and ki->label). Called while holding a
 * lease, so the handle belongs to the current establishment.
 */
static int cache_key(struct p11_ks *ks, const struct lease *l, CK_OBJECT_HANDLE h,
		     struct key_info *ki, struct ks_key **out)
{
	struct ks_key *k = NULL, *c, **nk;
	struct p11_key *pk;
	unsigned char *der = NULL;
	uint8_t hash[32];
	size_t i, ncap;
	int len, ret;

	*out = NULL;
	if ((len = i2d_PUBKEY(ki->pub, &der)) <= 0 ||
	    EVP_Digest(der, (size_t)len, hash, NULL, EVP_sha256(), NULL) != 1) {
		OPENSSL_free(der);
		return MTLS_AGENT_ERR_KEYSTORE;
	}
	OPENSSL_free(der);
	pthread_mutex_lock(&ks->lock);
	for (i = 0; i < ks->n_keys; i++) {
		c = ks->keys[i];
		if (c->id_len == ki->id_len && memcmp(c->id, ki->id, ki->id_len) == 0 &&
		    memcmp(c->spki_hash, hash, sizeof(hash)) == 0) {
			pk = c->backend;
			pk->handle = h;
			pk->gen = l->gen;
			*out = c;
			ret = 0;
			goto out;
		}
	}
	if (ks->n_keys == ks->cap_keys) {
		ncap = ks->cap_keys == 0 ? 8 : ks->cap_keys * 2;
		if ((nk = realloc(ks->keys, ncap * sizeof(*nk))) == NULL) {
			ret = MTLS_AGENT_ERR_NOMEM;
			goto out;
		}
		ks->keys = nk;
		ks->cap_keys = ncap;
	}
	if ((k = calloc(1, sizeof(*k))) == NULL || (pk = calloc(1, sizeof(*pk))) == NULL) {
		ret = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	k->backend = pk;
	k->ks = &ks->base;
	memcpy(k->id, ki->id, ki->id_len);
	k->id_len = ki->id_len;
	pk->handle = h;
	pk->gen = l->gen;
	ret = ks_key_set_public(k, ki->pub);
	ki->pub = NULL;
	if (ret != 0)
		goto out;
	if (k->type == MTLS_AGENT_KEY_NONE) {
		ret = MTLS_AGENT_ERR_KEYSTORE;
		goto out;
	}
	k->label = ki->label;
	ki->label = NULL;
	ks->keys[ks->n_keys++] = k;
	*out = k;
	k = NULL;
	ret = 0;
out:
	pthread_mutex_unlock(&ks->lock);
	key_free(k);
	return ret;
}

static int key_deleted(struct p11_ks *ks, const struct ks_key *k)
{
	int deleted;

	pthread_mutex_lock(&ks->lock);
	deleted = ((const struct p11_key *)k->backend)->deleted;
	pthread_mutex_unlock(&ks->lock);
	return deleted;
}

/* --- key references ------------------------------------------------------ */

static void keyref_clear(struct keyref *kr)
{
	p11_kit_uri_free(kr->uri);
	memset(kr, 0, sizeof(*kr));
}

static int keyref_parse(const char *ref, struct keyref *kr, char *err, size_t errlen)
{
	int rc;

	memset(kr, 0, sizeof(*kr));
	if (ref == NULL || strncmp(ref, "pkcs11:", 7) != 0) {
		snprintf(err, errlen, "key reference is not a PKCS#11 URI (pkcs11:object=...)");
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	if ((kr->uri = p11_kit_uri_new()) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	if ((rc = p11_kit_uri_parse(ref, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, kr->uri)) !=
	    P11_KIT_URI_OK) {
		snprintf(err, errlen, "bad key URI: %s", p11_kit_uri_message(rc));
		goto fail;
	}
	if (p11_kit_uri_any_unrecognized(kr->uri)) {
		snprintf(err, errlen, "key URI has attributes that do not name a key on a token");
		goto fail;
	}
	kr->label = p11_kit_uri_get_attribute(kr->uri, CKA_LABEL);
	kr->id = p11_kit_uri_get_attribute(kr->uri, CKA_ID);
	if (kr->label != NULL && (kr->label->pValue == NULL || kr->label->ulValueLen == 0))
		kr->label = NULL;
	if (kr->id != NULL &&
	    (kr->id->pValue == NULL || kr->id->ulValueLen == 0 || kr->id->ulValueLen > KS_MAX_ID)) {
		snprintf(err, errlen, "key URI: id= must be 1..%d bytes", KS_MAX_ID);
		goto fail;
	}
	if (kr->label == NULL && kr->id == NULL) {
		snprintf(err, errlen, "key URI names neither object= nor id=");
		goto fail;
	}
	return 0;
fail:
	keyref_clear(kr);
	return MTLS_AGENT_ERR_INVALID_ARG;
}

/* A key URI may name the token too; then it must be this keystore's. Lease held. */
static int keyref_token_ok(struct p11_ks *ks, const struct keyref *kr, char *err, size_t errlen)
{
	int ok;

	pthread_mutex_lock(&ks->lock);
	ok = p11_kit_uri_match_token_info(kr->uri, &ks->tinfo);
	pthread_mutex_unlock(&ks->lock);
	if (!ok) {
		snprintf(err, errlen, "key URI names a token other than %s", ks->token_desc);
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	return 0;
}

/* --- backend operations -------------------------------------------------- */

static void p11_close(struct keystore *base)
{
	struct p11_ks *ks = to_p11(base);
	size_t i;

	if (ks->mod != NULL) {
		pthread_mutex_lock(&ks->lock);
		while (ks->n_free < ks->n_open)
			pthread_cond_wait(&ks->cond, &ks->lock);
		close_sessions_locked(ks);
		if (ks->initialized)
			p11_kit_module_finalize(ks->mod);
		ks->initialized = 0;
		pthread_mutex_unlock(&ks->lock);
		p11_kit_module_release(ks->mod);
	}
	for (i = 0; i < ks->n_keys; i++)
		key_free(ks->keys[i]);
	free(ks->keys);
	if (ks->token_uri != NULL)
		p11_kit_uri_free(ks->token_uri);
	pthread_mutex_destroy(&ks->lock);
	pthread_cond_destroy(&ks->cond);
	pthread_mutex_destroy(&ks->keygen_lock);
	free(ks->pool);
	free(ks->module_path);
	free(ks->token);
	free(ks->pin_file);
	free(ks->base.name);
	free(ks);
}

static int set_token(struct p11_ks *ks, const char *token, char *err, size_t errlen)
{
	CK_TOKEN_INFO *ti;
	char tmp[64];
	size_t len;
	int rc;

	if ((ks->token_uri = p11_kit_uri_new()) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	if (strncmp(token, "pkcs11:", 7) == 0) {
		rc = p11_kit_uri_parse(token, P11_KIT_URI_FOR_TOKEN, ks->token_uri);
		if (rc != P11_KIT_URI_OK) {
			snprintf(err, errlen, "keystore \"%s\": bad token URI: %s", ks->base.name,
				 p11_kit_uri_message(rc));
			return MTLS_AGENT_ERR_CONFIG;
		}
		if (p11_kit_uri_any_unrecognized(ks->token_uri)) {
			snprintf(err, errlen,
				 "keystore \"%s\": token URI has attributes that do not name a "
				 "token (use token=, serial=, model=, manufacturer=)",
				 ks->base.name);
			return MTLS_AGENT_ERR_CONFIG;
		}
		log_sanitize(token, ks->token_desc, sizeof(ks->token_desc));
		return 0;
	}
	/* A bare label: the same as pkcs11:token=LABEL (space padded, as CK_TOKEN_INFO has it). */
	len = strlen(token);
	ti = p11_kit_uri_get_token_info(ks->token_uri);
	if (len == 0 || len > sizeof(ti->label)) {
		snprintf(err, errlen, "keystore \"%s\": token label must be 1..%zu bytes",
			 ks->base.name, sizeof(ti->label));
		return MTLS_AGENT_ERR_CONFIG;
	}
	memset(ti->label, ' ', sizeof(ti->label));
	memcpy(ti->label, token, len);
	snprintf(ks->token_desc, sizeof(ks->token_desc), "'%s'",
		 log_sanitize(token, tmp, sizeof(tmp)));
	return 0;
}

static int p11_open(const struct ks_params *params, struct keystore **out, char *err, size_t errlen)
{
	struct p11_ks *ks = NULL;
	char *pin = NULL, rerr[256];
	const char *name = params->name != NULL ? params->name : "";
	int ret;

	*out = NULL;
	if (params->module == NULL || params->token == NULL) {
		snprintf(err, errlen, "keystore \"%s\": module and token are required", name);
		return MTLS_AGENT_ERR_CONFIG;
	}
	if (params->sessions < 1 || params->sessions > P11_MAX_SESSIONS) {
		snprintf(err, errlen, "keystore \"%s\": sessions must be 1..%d", name,
			 P11_MAX_SESSIONS);
		return MTLS_AGENT_ERR_CONFIG;
	}
	if ((ks = calloc(1, sizeof(*ks))) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	ks->base.backend = &ks_pkcs11_backend;
	ks->n_sessions = params->sessions;
	pthread_mutex_init(&ks->lock, NULL);
	pthread_cond_init(&ks->cond, NULL);
	pthread_mutex_init(&ks->keygen_lock, NULL);
	snprintf(ks->state, sizeof(ks->state), "not established");
	if ((ks->base.name = strdup(name)) == NULL ||
	    (ks->module_path = strdup(params->module)) == NULL ||
	    (ks->token = strdup(params->token)) == NULL ||
	    (params->pin_file != NULL && (ks->pin_file = strdup(params->pin_file)) == NULL) ||
	    (ks->pool = calloc(ks->n_sessions, sizeof(*ks->pool))) == NULL) {
		ret = MTLS_AGENT_ERR_NOMEM;
		goto out;
	}
	if ((ret = set_token(ks, params->token, err, errlen)) != 0)
		goto out;
	if (ks->pin_file != NULL && read_secret_file(ks->pin_file, &pin, rerr, sizeof(rerr)) != 0) {
		snprintf(err, errlen, "keystore \"%s\": pin-file: %s", name, rerr);
		ret = MTLS_AGENT_ERR_CONFIG;
		goto out;
	}
	if ((ks->mod = p11_kit_module_load(params->module, 0)) == NULL) {
		snprintf(err, errlen, "keystore \"%s\": cannot load PKCS#11 module %s: %s", name,
			 params->module, p11_kit_message() != NULL ? p11_kit_message() : "");
		ret = MTLS_AGENT_ERR_CONFIG;
		goto out;
	}
	/* A missing token or failed login is a state, not an open failure. */
	pthread_mutex_lock(&ks->lock);
	if (establish_locked(ks, pin, rerr, sizeof(rerr)) != 0)
		log_warn("keystore %s: %s", name, ks->state);
	pthread_mutex_unlock(&ks->lock);
	*out = &ks->base;
	ks = NULL;
	ret = 0;
out:
	if (pin != NULL) {
		wipe(pin, strlen(pin));
		free(pin);
	}
	if (ks != NULL)
		p11_close(&ks->base);
	return ret;
}

static int p11_same_params(const struct keystore *base, const struct ks_params *params)
{
	const struct p11_ks *ks = (const struct p11_ks *)base;

	return str_eq(ks->module_path, params->module) && str_eq(ks->token, params->token) &&
	       str_eq(ks->pin_file, params->pin_file) && ks->n_sessions == params->sessions;
}

static void p11_state(struct keystore *base, char *buf, size_t len)
{
	struct p11_ks *ks = to_p11(base);

	pthread_mutex_lock(&ks->lock);
	snprintf(buf, len, "%s", ks->state);
	pthread_mutex_unlock(&ks->lock);
}

/* Adds k to the result unless it is already there (two objects, one CKA_ID). */
static int result_add(struct ks_key ***arr, size_t *n, size_t *cap, struct ks_key *k)
{
	struct ks_key **na;
	size_t i;

	for (i = 0; i < *n; i++)
		if ((*arr)[i] == k)
			return 0;
	if (*n == *cap) {
		*cap = *cap == 0 ? 4 : *cap * 2;
		if ((na = realloc(*arr, *cap * sizeof(*na))) == NULL)
			return MTLS_AGENT_ERR_NOMEM;
		*arr = na;
	}
	(*arr)[(*n)++] = k;
	return 0;
}

static int p11_find_keys(struct keystore *base, const char *key_ref, struct ks_key ***keys,
			 size_t *n, char *err, size_t errlen)
{
	struct p11_ks *ks = to_p11(base);
	struct keyref kr;
	struct lease l;
	struct key_info ki;
	struct ks_key **res = NULL, *k;
	CK_OBJECT_HANDLE *hs = NULL;
	size_t nh = 0, nres = 0, cap = 0, i;
	const char *why = NULL;
	CK_RV rv = CKR_OK;
	int ret, attempt;

	*keys = NULL;
	*n = 0;
	memset(&ki, 0, sizeof(ki));
	if ((ret = keyref_parse(key_ref, &kr, err, errlen)) != 0)
		return ret;
	for (attempt = 0;; attempt++) {
		if ((ret = lease_get(ks, NULL, &l, err, errlen)) != 0)
			goto out;
		if ((ret = keyref_token_ok(ks, &kr, err, errlen)) != 0) {
			lease_put(ks, &l, CKR_OK);
			goto out;
		}
		nres = 0;
		rv = find_objects(ks->mod, l.s, CKO_PRIVATE_KEY, NULL,
				  kr.label != NULL ? kr.label->pValue : NULL,
				  kr.label != NULL ? kr.label->ulValueLen : 0,
				  kr.id != NULL ? kr.id->pValue : NULL,
				  kr.id != NULL ? kr.id->ulValueLen : 0, &hs, &nh);
		for (i = 0; rv == CKR_OK && ret == 0 && i < nh; i++) {
			if ((rv = load_key(ks->mod, l.s, hs[i], &ki)) != CKR_OK)
				break;
			if (ki.pub == NULL) {
				why = ki.why;
			} else if ((ret = cache_key(ks, &l, hs[i], &ki, &k)) == 0 &&
				   !key_deleted(ks, k)) {
				ret = result_add(&res, &nres, &cap, k);
			}
			key_info_clear(&ki);
		}
		lease_put(ks, &l, rv);
		free(hs);
		hs = NULL;
		if (ret != 0) {
			snprintf(err, errlen, "cannot record key found on token %s",
				 ks->token_desc);
			goto out;
		}
		if (rv == CKR_OK)
			break;
		if (attempt > 0 || !ckr_needs_reset(rv)) {
			ret = ckr_fail(err, errlen, rv, "finding keys");
			goto out;
		}
	}
	if (nres == 0 && why != NULL) {
		snprintf(err, errlen, "no usable key on token %s: %s", ks->token_desc, why);
		ret = MTLS_AGENT_ERR_KEYSTORE;
		goto out;
	}
	*keys = res;
	*n = nres;
	res = NULL;
	ret = 0;
out:
	key_info_clear(&ki);
	free(hs);
	free(res);
	keyref_clear(&kr);
	return ret;
}

static CK_RV sign_once(CK_FUNCTION_LIST *m, const struct lease *l, CK_MECHANISM *mech,
		       const uint8_t *data, size_t dlen, uint8_t **raw, size_t *rawlen)
{
	/*
	 * One C_Sign into a buffer large enough for any key we use (no size
	 * query: on a remote or hardware token that would be a round trip more).
	 */
	uint8_t buf[P11_MAX_SIG];
	CK_ULONG len = sizeof(buf);
	CK_RV rv;

	*raw = NULL;
	*rawlen = 0;
	if ((rv = m->C_SignInit(l->s, mech, l->hkey)) != CKR_OK)
		return rv;
	if ((rv = m->C_Sign(l->s, (CK_BYTE_PTR)data, (CK_ULONG)dlen, buf, &len)) != CKR_OK)
		return rv;
	if (len == 0 || len > sizeof(buf))
		return CKR_GENERAL_ERROR;
	if ((*raw = malloc(len)) == NULL)
		return CKR_HOST_MEMORY;
	memcpy(*raw, buf, len);
	*rawlen = len;
	return CKR_OK;
}

static int p11_sign(struct keystore *base, struct ks_key *key, const struct scheme *scheme,
		    const uint8_t *in, size_t inlen, uint8_t **sig, size_t *siglen, char *err,
		    size_t errlen)
{
	struct p11_ks *ks = to_p11(base);
	CK_MECHANISM mech = {0, NULL, 0};
	CK_RSA_PKCS_PSS_PARAMS pss;
	const struct scheme_md *md = scheme->md;
	uint8_t di[sizeof(md->digestinfo) + EVP_MAX_MD_SIZE], *raw = NULL;
	const uint8_t *data = in;
	size_t dlen = inlen, rawlen = 0, want;
	struct lease l;
	CK_RV rv;
	int ret, attempt;

	*sig = NULL;
	*siglen = 0;
	/* ks_sign() checked that the scheme is one for this key type and inlen its hash length. */
	mech.mechanism = scheme->ckm_raw;
	switch (key->type) {
	case MTLS_AGENT_KEY_EC:
		/*
		 * TLS 1.2 may pair a longer hash with a smaller curve. ECDSA uses the
		 * leftmost bits of the hash; cut it here for tokens that refuse long
		 * input (exact for curves whose size is a whole number of bytes).
		 */
		if (key->bits % 8 == 0 && dlen > key->bits / 8)
			dlen = key->bits / 8;
		want = 2 * (((size_t)key->bits + 7) / 8);
		break;
	case MTLS_AGENT_KEY_RSA:
		want = ((size_t)key->bits + 7) / 8;
		if (md == NULL || inlen != md->len)
			goto bad_scheme;
		if (scheme->pad == SIG_PAD_PKCS1) {
			/* CKM_RSA_PKCS signs a DigestInfo: the same for every token. */
			memcpy(di, md->digestinfo, sizeof(md->digestinfo));
			memcpy(di + sizeof(md->digestinfo), in, inlen);
			data = di;
			dlen = sizeof(md->digestinfo) + inlen;
		} else if (scheme->pad == SIG_PAD_PSS) {
			/* MGF1 with the same hash, salt = hash length: what TLS 1.3 asks. */
			pss = (CK_RSA_PKCS_PSS_PARAMS){md->ckm, md->ckg_mgf1, md->len};
			mech.pParameter = &pss;
			mech.ulParameterLen = sizeof(pss);
		} else {
			goto bad_scheme;
		}
		break;
	case MTLS_AGENT_KEY_ED25519:
		want = 64;
		break;
	default:
		goto bad_scheme;
	}
	for (attempt = 0;; attempt++) {
		if ((ret = lease_get(ks, key, &l, err, errlen)) != 0)
			goto out;
		rv = sign_once(ks->mod, &l, &mech, data, dlen, &raw, &rawlen);
		lease_put(ks, &l, rv);
		if (rv == CKR_OK)
			break;
		if (attempt > 0 || !ckr_needs_reset(rv)) {
			ret = ckr_fail(err, errlen, rv, "C_Sign");
			goto out;
		}
	}
	if (rawlen != want) {
		snprintf(err, errlen, "token returned a %zu-byte signature, expected %zu", rawlen,
			 want);
		ret = MTLS_AGENT_ERR_KEYSTORE;
		goto out;
	}
	if (key->type == MTLS_AGENT_KEY_EC) {
		if ((ret = ks_ecdsa_raw_to_der(raw, rawlen, sig, siglen)) != 0)
			snprintf(err, errlen, "cannot encode ECDSA signature");
		goto out;
	}
	*sig = raw;
	*siglen = rawlen;
	raw = NULL;
	ret = 0;
	goto out;
bad_scheme:
	snprintf(err, errlen, "scheme %s does not fit this key", scheme->name);
	ret = MTLS_AGENT_ERR_SCHEME;
out:
	wipe(di, sizeof(di));
	free(raw);
	return ret;
}

static int p11_keygen(struct keystore *base, const char *key_ref, int gen_type, struct ks_key **out,
		      char *err, size_t errlen)
{
	static const CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	static const CK_BYTE e65537[] = {0x01, 0x00, 0x01};
	struct p11_ks *ks = to_p11(base);
	CK_MECHANISM mech = {0, NULL, 0};
	CK_ATTRIBUTE pubt[12], privt[12];
	CK_ULONG npub = 0, npriv = 0, bits = 0, params_at = 0;
	CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE, *hs = NULL;
	CK_SESSION_HANDLE rw = CK_INVALID_HANDLE;
	uint8_t id[KS_MAX_ID];
	size_t id_len, nh = 0;
	const void *label = NULL;
	size_t label_len = 0;
	struct keyref kr;
	struct key_info ki;
	struct lease l;
	int ret, attempt, generated = 0, leased = 0, locked = 0;
	CK_RV rv = CKR_OK;

	*out = NULL;
	memset(&ki, 0, sizeof(ki));
	if ((ret = keyref_parse(key_ref, &kr, err, errlen)) != 0)
		return ret;
	if (kr.id != NULL) {
		memcpy(id, kr.id->pValue, kr.id->ulValueLen);
		id_len = kr.id->ulValueLen;
	} else {
		id_len = P11_NEW_ID_LEN;
		if (RAND_bytes(id, (int)id_len) != 1) {
			snprintf(err, errlen, "cannot make a random key id");
			ret = MTLS_AGENT_ERR_INTERNAL;
			goto out;
		}
	}
	if (kr.label != NULL) {
		label = kr.label->pValue;
		label_len = kr.label->ulValueLen;
	}

	pubt[npub++] = (CK_ATTRIBUTE){CKA_TOKEN, (void *)&yes, sizeof(yes)};
	pubt[npub++] = (CK_ATTRIBUTE){CKA_PRIVATE, (void *)&no, sizeof(no)};
	pubt[npub++] = (CK_ATTRIBUTE){CKA_VERIFY, (void *)&yes, sizeof(yes)};
	pubt[npub++] = (CK_ATTRIBUTE){CKA_ENCRYPT, (void *)&no, sizeof(no)};
	pubt[npub++] = (CK_ATTRIBUTE){CKA_WRAP, (void *)&no, sizeof(no)};
	pubt[npub++] = (CK_ATTRIBUTE){CKA_VERIFY_RECOVER, (void *)&no, sizeof(no)};
	pubt[npub++] = (CK_ATTRIBUTE){CKA_ID, id, (CK_ULONG)id_len};
	privt[npriv++] = (CK_ATTRIBUTE){CKA_TOKEN, (void *)&yes, sizeof(yes)};
	privt[npriv++] = (CK_ATTRIBUTE){CKA_PRIVATE, (void *)&yes, sizeof(yes)};
	privt[npriv++] = (CK_ATTRIBUTE){CKA_SENSITIVE, (void *)&yes, sizeof(yes)};
	privt[npriv++] = (CK_ATTRIBUTE){CKA_EXTRACTABLE, (void *)&no, sizeof(no)};
	privt[npriv++] = (CK_ATTRIBUTE){CKA_SIGN, (void *)&yes, sizeof(yes)};
	privt[npriv++] = (CK_ATTRIBUTE){CKA_DECRYPT, (void *)&no, sizeof(no)};
	privt[npriv++] = (CK_ATTRIBUTE){CKA_UNWRAP, (void *)&no, sizeof(no)};
	privt[npriv++] = (CK_ATTRIBUTE){CKA_DERIVE, (void *)&no, sizeof(no)};
	privt[npriv++] = (CK_ATTRIBUTE){CKA_SIGN_RECOVER, (void *)&no, sizeof(no)};
	privt[npriv++] = (CK_ATTRIBUTE){CKA_ID, id, (CK_ULONG)id_len};
	if (label != NULL) {
		pubt[npub++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, (CK_ULONG)label_len};
		privt[npriv++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, (CK_ULONG)label_len};
	}
	params_at = npub;
	switch (gen_type) {
	case KS_GEN_EC_P256:
		mech.mechanism = CKM_EC_KEY_PAIR_GEN;
		pubt[npub++] = (CK_ATTRIBUTE){CKA_EC_PARAMS, (void *)oid_p256, sizeof(oid_p256)};
		break;
	case KS_GEN_EC_P384:
		mech.mechanism = CKM_EC_KEY_PAIR_GEN;
		pubt[npub++] = (CK_ATTRIBUTE){CKA_EC_PARAMS, (void *)oid_p384, sizeof(oid_p384)};
		break;
	case KS_GEN_RSA_2048:
	case KS_GEN_RSA_3072:
	case KS_GEN_RSA_4096:
		mech.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
		bits = gen_type == KS_GEN_RSA_2048   ? 2048
		       : gen_type == KS_GEN_RSA_3072 ? 3072
						     : 4096;
		pubt[npub++] = (CK_ATTRIBUTE){CKA_MODULUS_BITS, &bits, sizeof(bits)};
		pubt[npub++] = (CK_ATTRIBUTE){CKA_PUBLIC_EXPONENT, (void *)e65537, sizeof(e65537)};
		break;
	case KS_GEN_ED25519:
		mech.mechanism = CKM_EC_EDWARDS_KEY_PAIR_GEN;
		pubt[npub++] =
			(CK_ATTRIBUTE){CKA_EC_PARAMS, (void *)oid_ed25519, sizeof(oid_ed25519)};
		break;
	default:
		snprintf(err, errlen, "unknown key type");
		ret = MTLS_AGENT_ERR_INVALID_ARG;
		goto out;
	}

	pthread_mutex_lock(&ks->keygen_lock);
	locked = 1;
	for (attempt = 0;; attempt++) {
		if ((ret = lease_get(ks, NULL, &l, err, errlen)) != 0)
			goto out;
		leased = 1;
		if ((ret = keyref_token_ok(ks, &kr, err, errlen)) != 0)
			goto out;
		rv = CKR_OK;
		if (kr.id != NULL) {
			rv = find_objects(ks->mod, l.s, CKO_PRIVATE_KEY, NULL, NULL, 0, id, id_len,
					  &hs, &nh);
			free(hs);
			hs = NULL;
			if (rv == CKR_OK && nh > 0) {
				snprintf(err, errlen,
					 "a key with this id already exists on token %s",
					 ks->token_desc);
				ret = MTLS_AGENT_ERR_EXISTS;
				goto out;
			}
		}
		/* Creating token objects needs a read/write session; only for this call. */
		if (rv == CKR_OK)
			rv = ks->mod->C_OpenSession(l.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
						    NULL, NULL, &rw);
		if (rv == CKR_OK) {
			rv = ks->mod->C_GenerateKeyPair(rw, &mech, pubt, npub, privt, npriv, &hpub,
							&hpriv);
			/*
			 * The PKCS#11 3.0 text form of the Ed25519 parameters, for tokens
			 * that do not take the OID.
			 */
			if (gen_type == KS_GEN_ED25519 &&
			    (rv == CKR_ATTRIBUTE_VALUE_INVALID || rv == CKR_CURVE_NOT_SUPPORTED ||
			     rv == CKR_DOMAIN_PARAMS_INVALID)) {
				pubt[params_at] = (CK_ATTRIBUTE){CKA_EC_PARAMS, (void *)str_ed25519,
								 sizeof(str_ed25519)};
				rv = ks->mod->C_GenerateKeyPair(rw, &mech, pubt, npub, privt, npriv,
								&hpub, &hpriv);
			}
			ks->mod->C_CloseSession(rw);
			rw = CK_INVALID_HANDLE;
		}
		if (rv == CKR_OK) {
			generated = 1;
			rv = load_key(ks->mod, l.s, hpriv, &ki);
		}
		if (rv == CKR_OK)
			break;
		lease_put(ks, &l, rv);
		leased = 0;
		/* Never retry once a key exists: that would leave a second one behind. */
		if (generated || attempt > 0 || !ckr_needs_reset(rv)) {
			ret = ckr_fail(err, errlen, rv,
				       generated ? "reading the generated key" : "generating key");
			goto out;
		}
	}
	if (ki.pub == NULL) {
		snprintf(err, errlen, "generated key is unusable: %s", ki.why);
		ret = MTLS_AGENT_ERR_KEYSTORE;
		goto out;
	}
	/* Cached while the lease is held, so a reset re-finds it like every other key. */
	if ((ret = cache_key(ks, &l, hpriv, &ki, out)) != 0)
		snprintf(err, errlen, "cannot record the generated key");
out:
	if (leased)
		lease_put(ks, &l, CKR_OK);
	if (locked)
		pthread_mutex_unlock(&ks->keygen_lock);
	key_info_clear(&ki);
	keyref_clear(&kr);
	return ret;
}

/* Whether certificate object h certifies key's public key. */
static CK_RV cert_of_key(CK_FUNCTION_LIST *m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
			 const struct ks_key *key, int *match)
{
	CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};
	const unsigned char *p;
	uint8_t *der = NULL;
	X509 *cert = NULL;
	CK_RV rv;

	*match = 0;
	/* Not get_attr(): its limit suits key attributes, not a certificate with many names. */
	rv = m->C_GetAttributeValue(s, h, &a, 1);
	if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE)
		return CKR_OK;
	if (rv != CKR_OK)
		return rv;
	if (a.ulValueLen == 0 || a.ulValueLen == CK_UNAVAILABLE_INFORMATION ||
	    a.ulValueLen > P11_MAX_CERT)
		return CKR_OK;
	if ((der = malloc(a.ulValueLen)) == NULL)
		return CKR_HOST_MEMORY;
	a.pValue = der;
	if ((rv = m->C_GetAttributeValue(s, h, &a, 1)) == CKR_OK) {
		p = der;
		if ((cert = d2i_X509(NULL, &p, (long)a.ulValueLen)) != NULL)
			*match = same_spki(X509_get0_pubkey(cert), key);
		X509_free(cert);
		ERR_clear_error();
	}
	free(der);
	return rv;
}

/*
 * Whether object h of class cls belongs to key: the private key itself, its
 * public key object or a certificate for it. Judged by the public key, not
 * by the label: another key may share the CKA_ID, and a certificate written
 * by another tool may carry any label.
 */
static CK_RV object_of_key(CK_FUNCTION_LIST *m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
			   CK_OBJECT_CLASS cls, const struct ks_key *key, int *match)
{
	EVP_PKEY *pub = NULL;
	const char *why = NULL;
	uint8_t *ktv = NULL;
	size_t ktlen = 0;
	CK_KEY_TYPE kt;
	CK_RV rv;

	*match = 0;
	switch (cls) {
	case CKO_PRIVATE_KEY:
		return key_matches(m, s, h, key, match);
	case CKO_CERTIFICATE:
		return cert_of_key(m, s, h, key, match);
	default:
		if ((rv = get_attr(m, s, h, CKA_KEY_TYPE, &ktv, &ktlen)) != CKR_OK)
			return rv;
		if (ktv != NULL && ktlen == sizeof(kt)) {
			memcpy(&kt, ktv, sizeof(kt));
			if ((rv = pub_from_object(m, s, h, kt, &pub, &why)) == CKR_OK)
				*match = same_spki(pub, key);
		}
		EVP_PKEY_free(pub);
		free(ktv);
		return rv;
	}
}

/*
 * Destroys the objects with key's CKA_ID that belong to key. The private key
 * goes first: once it is gone, so is the key for ks_find_keys, whatever
 * fails next; and it is matched while its public key object still exists.
 * Counts what it destroyed in *n_priv (private keys) and *n_all.
 */
static CK_RV destroy_key_objects(struct p11_ks *ks, const struct lease *l, const struct ks_key *key,
				 unsigned *n_priv, unsigned *n_all)
{
	static const CK_OBJECT_CLASS order[] = {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKO_CERTIFICATE};
	CK_SESSION_HANDLE rw = CK_INVALID_HANDLE;
	CK_OBJECT_HANDLE *hs = NULL;
	size_t nh = 0, c, i;
	int match;
	CK_RV rv;

	/* Destroying token objects needs a read/write session; only for this call. */
	rv = ks->mod->C_OpenSession(l->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &rw);
	if (rv != CKR_OK)
		return rv;
	for (c = 0; rv == CKR_OK && c < sizeof(order) / sizeof(order[0]); c++) {
		rv = find_objects(ks->mod, rw, order[c], NULL, NULL, 0, key->id, key->id_len, &hs,
				  &nh);
		for (i = 0; rv == CKR_OK && i < nh; i++) {
			rv = object_of_key(ks->mod, rw, hs[i], order[c], key, &match);
			if (rv == CKR_OK && match)
				rv = ks->mod->C_DestroyObject(rw, hs[i]);
			/* Destroyed in the meantime by another program: just as good. */
			if (rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID) {
				rv = CKR_OK;
				continue;
			}
			if (rv == CKR_OK && match) {
				(*n_all)++;
				if (order[c] == CKO_PRIVATE_KEY)
					(*n_priv)++;
			}
		}
		free(hs);
		hs = NULL;
	}
	ks->mod->C_CloseSession(rw);
	return rv;
}

static int p11_delete_key(struct keystore *base, struct ks_key *key, char *err, size_t errlen)
{
	struct p11_ks *ks = to_p11(base);
	struct p11_key *pk = key->backend;
	struct lease l;
	char lbuf[64], what[192];
	unsigned n_priv = 0, n_all = 0;
	int ret = 0, attempt, was_deleted;
	CK_RV rv;

	log_sanitize(key->label != NULL ? key->label : "(no label)", lbuf, sizeof(lbuf));
	/* Token objects are created and destroyed one request at a time. */
	pthread_mutex_lock(&ks->keygen_lock);
	pthread_mutex_lock(&ks->lock);
	was_deleted = pk->deleted;
	/*
	 * No signature starts with the key from now on. Those under way finish
	 * first: a C_Sign whose key vanishes fails with a stale handle, and that
	 * resets the sessions every other key is signing on.
	 */
	pk->deleted = 1;
	while (pk->users > 0)
		pthread_cond_wait(&ks->cond, &ks->lock);
	pthread_mutex_unlock(&ks->lock);
	for (attempt = 0;; attempt++) {
		if ((ret = lease_get(ks, NULL, &l, err, errlen)) != 0)
			goto out;
		rv = destroy_key_objects(ks, &l, key, &n_priv, &n_all);
		lease_put(ks, &l, rv);
		if (rv == CKR_OK)
			break;
		if (attempt > 0 || !ckr_needs_reset(rv)) {
			snprintf(what, sizeof(what), "deleting key '%s' from token %s", lbuf,
				 ks->token_desc);
			ret = ckr_fail(err, errlen, rv, what);
			goto out;
		}
	}
	if (n_all > 0)
		log_info("keystore %s: deleted key '%s' from token %s (%u object(s))",
			 ks->base.name, lbuf, ks->token_desc, n_all);
	else
		log_debug("keystore %s: key '%s' to delete was already gone from token %s",
			  ks->base.name, lbuf, ks->token_desc);
out:
	pthread_mutex_lock(&ks->lock);
	if (ret == 0)
		pk->handle = CK_INVALID_HANDLE;
	else if (n_priv == 0 && !was_deleted)
		pk->deleted = 0; /* the private key is still there: the key stays in service */
	pthread_mutex_unlock(&ks->lock);
	pthread_mutex_unlock(&ks->keygen_lock);
	return ret;
}

/* clang-format off */
/*
 * A crash inside C_GenerateKeyPair can leave the public key object without its private key
 * (SoftHSM writes one object file after the other). key_ref names the key that was being
 * made, by label and the id chosen before the call, so only its objects are looked at.
 */
static int p11_purge_half(struct keystore *base, const char *key_ref, unsigned *purged, char *err,
			  size_t errlen)
{
	static const CK_OBJECT_CLASS leftovers[] = {CKO_PUBLIC_KEY, CKO_CERTIFICATE};
	struct p11_ks *ks = to_p11(base);
	CK_SESSION_HANDLE rw = CK_INVALID_HANDLE;
	CK_OBJECT_HANDLE *hs = NULL;
	size_t nh = 0, c, i;
	struct keyref kr;
	struct lease l;
	char what[160];
	int ret;
	CK_RV rv;

	*purged = 0;
	if ((ret = keyref_parse(key_ref, &kr, err, errlen)) != 0)
		return ret;
	if (kr.label == NULL || kr.id == NULL) {
		snprintf(err, errlen, "a half-made key is named by object= and id=");
		keyref_clear(&kr);
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	pthread_mutex_lock(&ks->keygen_lock);
	if ((ret = lease_get(ks, NULL, &l, err, errlen)) != 0)
		goto out_unlock;
	rv = ks->mod->C_OpenSession(l.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &rw);
	if (rv == CKR_OK)
		rv = find_objects(ks->mod, rw, CKO_PRIVATE_KEY, NULL, kr.label->pValue,
				  kr.label->ulValueLen, kr.id->pValue, kr.id->ulValueLen, &hs, &nh);
	free(hs);
	hs = NULL;
	/* The private key exists: a complete pair, adopted by the caller, never purged. */
	for (c = 0; rv == CKR_OK && nh == 0 && c < sizeof(leftovers) / sizeof(leftovers[0]); c++) {
		size_t n = 0;

		rv = find_objects(ks->mod, rw, leftovers[c], NULL, kr.label->pValue,
				  kr.label->ulValueLen, kr.id->pValue, kr.id->ulValueLen, &hs, &n);
		for (i = 0; rv == CKR_OK && i < n; i++) {
			rv = ks->mod->C_DestroyObject(rw, hs[i]);
			if (rv == CKR_OBJECT_HANDLE_INVALID)
				rv = CKR_OK;
			else if (rv == CKR_OK)
				(*purged)++;
		}
		free(hs);
		hs = NULL;
	}
	if (rw != CK_INVALID_HANDLE)
		ks->mod->C_CloseSession(rw);
	lease_put(ks, &l, rv);
	if (rv != CKR_OK) {
		snprintf(what, sizeof(what), "removing a half-made key from token %s",
			 ks->token_desc);
		ret = ckr_fail(err, errlen, rv, what);
	}
out_unlock:
	pthread_mutex_unlock(&ks->keygen_lock);
	keyref_clear(&kr);
	return ret;
}

const struct ks_backend ks_pkcs11_backend = {
	.type = "pkcs11",
	.open = p11_open,
	.close = p11_close,
	.same_params = p11_same_params,
	.find_keys = p11_find_keys,
	.keygen = p11_keygen,
	.sign = p11_sign,
	.state = p11_state,
	.delete_key = p11_delete_key,
	.purge_half = p11_purge_half,
};
/* clang-format on */
