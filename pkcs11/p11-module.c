/*
 * mtls-agent-pkcs11.so: slot, token, sessions, object search and signing.
 *
 * One slot with one token ("mtls-agent"). Its objects are the identities the
 * agent lists for the calling process, rebuilt at every C_FindObjectsInit;
 * handles are local and never reused, so they survive an agent restart. No
 * PIN: the agent authenticates the caller by its peer credentials (the token
 * has no CKF_LOGIN_REQUIRED; C_Login is accepted and changes nothing).
 *
 * Locking: one mutex around all module state and every agent request (the
 * client library serialises requests on a handle anyway). It is taken around
 * fork(), so a child never inherits it held; a child may call C_Initialize
 * again (a fresh start) or carry on with the parent's sessions (the client
 * library opens its own connection in the child).
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>

#include "client/client-internal.h"
#include "common/proto.h"
#include "common/scheme.h"
#include "common/util.h"
#include "pkcs11/p11.h"

/* PKCS#11 3.0 CK_EDDSA_PARAMS (not in p11-kit's 2.40 header). */
struct eddsa_params {
	CK_BBOOL ph_flag;
	CK_ULONG context_len;
	CK_BYTE_PTR context;
};

/* --- mechanisms ------------------------------------------------------------------------- */

enum mech_input {
	IN_MESSAGE,   /* the agent gets the whole message, hashes it and applies its policy */
	IN_DIGEST,    /* CKM_ECDSA, CKM_RSA_PKCS_PSS: a bare hash */
	IN_DIGESTINFO /* CKM_RSA_PKCS: a DER DigestInfo, never raw RSA */
};

struct mech {
	CK_MECHANISM_TYPE type;
	const char *name;
	int key_type;
	enum mech_input input;
	int pad;		     /* enum sig_pad: SIG_PAD_PSS takes CK_RSA_PKCS_PSS_PARAMS */
	const struct scheme *scheme; /* IN_MESSAGE: the TLS scheme; NULL: chosen from the input */
};

/*
 * The mechanisms, from the scheme table in common/scheme.c: each scheme's
 * hash-and-sign mechanism (CKM_ECDSA_SHA256 ... CKM_EDDSA), then the
 * mechanisms that sign what the application hashed (CKM_ECDSA, CKM_RSA_PKCS,
 * CKM_RSA_PKCS_PSS), each once.
 */
static struct mech mechs[32];
static size_t n_mechs;
static pthread_once_t mechs_once = PTHREAD_ONCE_INIT;

static void add_mech(CK_MECHANISM_TYPE type, const char *name, const struct scheme *sc,
		     enum mech_input input)
{
	size_t i;

	for (i = 0; i < n_mechs; i++)
		if (mechs[i].type == type)
			return;
	if (n_mechs == sizeof(mechs) / sizeof(mechs[0]))
		return;
	mechs[n_mechs].type = type;
	mechs[n_mechs].name = name;
	mechs[n_mechs].key_type = sc->key_type;
	mechs[n_mechs].input = input;
	mechs[n_mechs].pad = sc->pad;
	mechs[n_mechs].scheme = input == IN_MESSAGE ? sc : NULL;
	n_mechs++;
}

static void mechs_init(void)
{
	const struct scheme *sc;
	size_t i;

	for (i = 0; (sc = scheme_at(i)) != NULL; i++)
		add_mech(sc->ckm, sc->ckm_name, sc, IN_MESSAGE);
	for (i = 0; (sc = scheme_at(i)) != NULL; i++)
		add_mech(sc->ckm_raw, sc->ckm_raw_name, sc,
			 sc->pad == SIG_PAD_PKCS1 ? IN_DIGESTINFO : IN_DIGEST);
}

static const struct mech *mech_by_type(CK_MECHANISM_TYPE type)
{
	size_t i;

	pthread_once(&mechs_once, mechs_init);
	for (i = 0; i < n_mechs; i++)
		if (mechs[i].type == type)
			return &mechs[i];
	return NULL;
}

size_t p11_sign_mechanisms(int key_type, CK_MECHANISM_TYPE *out, size_t max)
{
	size_t i, n = 0;

	pthread_once(&mechs_once, mechs_init);
	for (i = 0; i < n_mechs && n < max; i++)
		if (mechs[i].key_type == key_type)
			out[n++] = mechs[i].type;
	return n;
}

/*
 * Plain SHA-2 digests (the digest rows of common/scheme.c), computed here in
 * software (nothing secret is involved). They exist because Java's SunPKCS11
 * accepts RSA-PSS parameters only when the token lists the hash they name as
 * a mechanism; without them Java cannot sign a TLS 1.3 CertificateVerify with
 * an RSA key.
 */
static const char *digest_by_type(CK_MECHANISM_TYPE type)
{
	const struct scheme_md *md = scheme_md_by_ckm(type);

	return md != NULL ? md->name : NULL;
}

/* The scheme of a key type, padding and digest; 0 when there is none. */
static uint16_t scheme_code(int key_type, int pad, const struct scheme_md *md)
{
	const struct scheme *sc = md != NULL ? scheme_for_digest(key_type, pad, md->nid, 0) : NULL;

	return sc != NULL ? sc->code : 0;
}

/* --- state ------------------------------------------------------------------------------ */

struct sign_op {
	int active;
	const struct mech *mech;
	char *name;
	uint8_t spki_hash[MTLS_AGENT_SPKI_HASH_LEN];
	int key_type;
	unsigned bits;
	size_t max_sig;
	uint16_t scheme; /* fixed by the mechanism or its PSS parameters; 0: from the input */
	int multipart;	 /* C_SignUpdate was called */
	uint8_t *msg;	 /* multi-part input so far */
	size_t msg_len, msg_cap;
};

struct session {
	CK_SESSION_HANDLE handle;
	CK_FLAGS flags;
	int finding;
	CK_OBJECT_HANDLE *found;
	size_t n_found, found_pos;
	struct sign_op sign;
	EVP_MD_CTX *digest; /* C_DigestInit .. C_Digest/C_DigestFinal */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static int initialized;
static pid_t init_pid;
static int logged_in;
static mtls_agent *agent;

static struct p11_object **objs;
static size_t n_objs;
static CK_OBJECT_HANDLE next_object = 1;

static struct session **sessions;
static size_t n_sessions;
static CK_SESSION_HANDLE next_session = 1;

static void atfork_prepare(void)
{
	pthread_mutex_lock(&lock);
}

static void atfork_release(void)
{
	pthread_mutex_unlock(&lock);
}

static void register_atfork(void)
{
	pthread_atfork(atfork_prepare, atfork_release, atfork_release);
}

/* Space-padded, not NUL-terminated, as PKCS#11 wants its text fields. */
static void pad(unsigned char *dst, size_t size, const char *src)
{
	size_t n = strlen(src);

	memset(dst, ' ', size);
	memcpy(dst, src, n < size ? n : size);
}

static void sign_op_clear(struct sign_op *op)
{
	if (op->msg != NULL) {
		wipe(op->msg, op->msg_cap);
		free(op->msg);
	}
	free(op->name);
	memset(op, 0, sizeof(*op));
}

static void session_free(struct session *s)
{
	if (s == NULL)
		return;
	sign_op_clear(&s->sign);
	EVP_MD_CTX_free(s->digest);
	free(s->found);
	free(s);
}

static void sessions_free(void)
{
	size_t i;

	for (i = 0; i < n_sessions; i++)
		session_free(sessions[i]);
	free(sessions);
	sessions = NULL;
	n_sessions = 0;
	logged_in = 0;
}

static void objects_free(void)
{
	size_t i;

	for (i = 0; i < n_objs; i++)
		p11_object_free(objs[i]);
	free(objs);
	objs = NULL;
	n_objs = 0;
}

static struct session *session_get(CK_SESSION_HANDLE h)
{
	size_t i;

	for (i = 0; i < n_sessions; i++)
		if (sessions[i]->handle == h)
			return sessions[i];
	return NULL;
}

static struct p11_object *object_get(CK_OBJECT_HANDLE h)
{
	size_t i;

	for (i = 0; i < n_objs; i++)
		if (objs[i]->handle == h)
			return objs[i]->present ? objs[i] : NULL;
	return NULL;
}

/* The agent connection, opened on first use (and again after a failed attempt). */
static int get_agent(mtls_agent **out)
{
	int r = 0;

	if (agent == NULL && (r = mtls_agent_connect(NULL, &agent)) != 0)
		agent = NULL;
	*out = agent;
	return r;
}

/* --- the object registry ---------------------------------------------------------------- */

/* Keeps an object's handle if it was seen before, else gives it the next one. */
static void registry_add(struct p11_object *obj, void *arg)
{
	struct p11_object **grown;
	size_t i;

	(void)arg;
	for (i = 0; i < n_objs; i++) {
		if (memcmp(objs[i]->key, obj->key, sizeof(obj->key)) == 0) {
			obj->handle = objs[i]->handle;
			obj->present = 1;
			p11_object_free(objs[i]);
			objs[i] = obj;
			return;
		}
	}
	if ((grown = realloc(objs, (n_objs + 1) * sizeof(*objs))) == NULL) {
		p11_object_free(obj);
		return;
	}
	objs = grown;
	obj->handle = next_object++;
	obj->present = 1;
	objs[n_objs++] = obj;
}

/* Re-reads the identities this process may use. The agent unreachable: no objects. */
static void registry_refresh(void)
{
	struct mtls_agent_identity *ids = NULL;
	size_t i, n = 0;
	mtls_agent *a;
	int r;

	for (i = 0; i < n_objs; i++)
		objs[i]->present = 0;
	/* Only what this process may sign with, even for an administrator. */
	if ((r = get_agent(&a)) == 0 &&
	    (r = mtlsc_list_usable(a, &ids, &n)) == MTLS_AGENT_ERR_BAD_MESSAGE)
		r = mtls_agent_list(a, &ids, &n); /* an agent older than the LIST flag */
	if (r != 0) {
		p11_debug("listing identities: %s", mtls_agent_last_error());
		return;
	}
	for (i = 0; i < n; i++)
		if (p11_objects_from_identity(&ids[i], registry_add, NULL) != 0)
			p11_debug("identity \"%s\" skipped", ids[i].name);
	mtls_agent_identities_free(ids, n);
}

/* --- general ---------------------------------------------------------------------------- */

#define CHECK_INIT()                                                                               \
	do {                                                                                       \
		if (!initialized) {                                                                \
			pthread_mutex_unlock(&lock);                                               \
			return CKR_CRYPTOKI_NOT_INITIALIZED;                                       \
		}                                                                                  \
	} while (0)

static CK_RV mt_Initialize(void *init_args)
{
	CK_C_INITIALIZE_ARGS *args = init_args;
	CK_RV rv = CKR_OK;

	pthread_once(&atfork_once, register_atfork);
	if (args != NULL) {
		int have = (args->CreateMutex != NULL) + (args->DestroyMutex != NULL) +
			   (args->LockMutex != NULL) + (args->UnlockMutex != NULL);

		if (args->pReserved != NULL || (have != 0 && have != 4))
			return CKR_ARGUMENTS_BAD;
		/* Only the application's own mutex functions would do: we use the OS's. */
		if (have == 4 && !(args->flags & CKF_OS_LOCKING_OK))
			return CKR_CANT_LOCK;
	}
	pthread_mutex_lock(&lock);
	if (initialized && init_pid == getpid()) {
		rv = CKR_CRYPTOKI_ALREADY_INITIALIZED;
	} else {
		/* A forked child starting afresh: the parent's state is not its own. */
		if (initialized) {
			sessions_free();
			objects_free();
			mtls_agent_close(agent);
			agent = NULL;
		}
		initialized = 1;
		init_pid = getpid();
	}
	pthread_mutex_unlock(&lock);
	return rv;
}

static CK_RV mt_Finalize(void *reserved)
{
	if (reserved != NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	sessions_free();
	objects_free();
	mtls_agent_close(agent);
	agent = NULL;
	initialized = 0;
	pthread_mutex_unlock(&lock);
	return CKR_OK;
}

static CK_RV mt_GetInfo(CK_INFO_PTR info)
{
	unsigned major = 0, minor = 0;

	if (info == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	pthread_mutex_unlock(&lock);
	memset(info, 0, sizeof(*info));
	info->cryptokiVersion.major = CRYPTOKI_VERSION_MAJOR;
	info->cryptokiVersion.minor = CRYPTOKI_VERSION_MINOR;
	pad(info->manufacturerID, sizeof(info->manufacturerID), "mtls-agent");
	pad(info->libraryDescription, sizeof(info->libraryDescription),
	    "mtls-agent PKCS#11 front end");
	if (sscanf(PACKAGE_VERSION, "%u.%u", &major, &minor) >= 1) {
		info->libraryVersion.major = (CK_BYTE)major;
		info->libraryVersion.minor = (CK_BYTE)minor;
	}
	return CKR_OK;
}

static CK_RV mt_GetSlotList(CK_BBOOL token_present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
	CK_RV rv = CKR_OK;

	(void)token_present;
	if (count == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	pthread_mutex_unlock(&lock);
	if (list != NULL) {
		if (*count < 1)
			rv = CKR_BUFFER_TOO_SMALL;
		else
			list[0] = P11_SLOT_ID;
	}
	*count = 1;
	return rv;
}

static CK_RV mt_GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info)
{
	if (info == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	pthread_mutex_unlock(&lock);
	if (slot != P11_SLOT_ID)
		return CKR_SLOT_ID_INVALID;
	memset(info, 0, sizeof(*info));
	pad(info->slotDescription, sizeof(info->slotDescription),
	    "mtls-agent (keys held by the agent)");
	pad(info->manufacturerID, sizeof(info->manufacturerID), "mtls-agent");
	info->flags = CKF_TOKEN_PRESENT;
	return CKR_OK;
}

static CK_RV mt_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
	if (info == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	pthread_mutex_unlock(&lock);
	if (slot != P11_SLOT_ID)
		return CKR_SLOT_ID_INVALID;
	memset(info, 0, sizeof(*info));
	pad(info->label, sizeof(info->label), P11_TOKEN_LABEL);
	pad(info->manufacturerID, sizeof(info->manufacturerID), "mtls-agent");
	pad(info->model, sizeof(info->model), "agent");
	pad(info->serialNumber, sizeof(info->serialNumber), "1");
	/* No CKF_LOGIN_REQUIRED: the agent checks who is calling, no PIN is involved. */
	info->flags = CKF_TOKEN_INITIALIZED | CKF_WRITE_PROTECTED;
	info->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
	info->ulSessionCount = CK_UNAVAILABLE_INFORMATION;
	info->ulMaxRwSessionCount = 0;
	info->ulRwSessionCount = CK_UNAVAILABLE_INFORMATION;
	info->ulMaxPinLen = 0;
	info->ulMinPinLen = 0;
	info->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
	info->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
	info->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
	info->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
	return CKR_OK;
}

static CK_RV mt_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count)
{
	CK_RV rv = CKR_OK;
	size_t i;

	if (count == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	pthread_mutex_unlock(&lock);
	if (slot != P11_SLOT_ID)
		return CKR_SLOT_ID_INVALID;
	pthread_once(&mechs_once, mechs_init);
	if (list != NULL) {
		if (*count < n_mechs + SCHEME_N_HASHES) {
			rv = CKR_BUFFER_TOO_SMALL;
		} else {
			for (i = 0; i < n_mechs; i++)
				list[i] = mechs[i].type;
			for (i = 0; i < SCHEME_N_HASHES; i++)
				list[n_mechs + i] = scheme_md_at(i)->ckm;
		}
	}
	*count = n_mechs + SCHEME_N_HASHES;
	return rv;
}

static CK_RV mt_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type,
				 CK_MECHANISM_INFO_PTR info)
{
	const struct mech *m;

	if (info == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	pthread_mutex_unlock(&lock);
	if (slot != P11_SLOT_ID)
		return CKR_SLOT_ID_INVALID;
	memset(info, 0, sizeof(*info));
	if (digest_by_type(type) != NULL) {
		info->flags = CKF_DIGEST;
		return CKR_OK;
	}
	if ((m = mech_by_type(type)) == NULL)
		return CKR_MECHANISM_INVALID;
	info->flags = CKF_SIGN;
	switch (m->key_type) {
	case MTLS_AGENT_KEY_EC:
		info->ulMinKeySize = 256;
		info->ulMaxKeySize = 521;
		info->flags |= CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
		break;
	case MTLS_AGENT_KEY_RSA:
		info->ulMinKeySize = 2048;
		info->ulMaxKeySize = 8192;
		break;
	default:
		info->ulMinKeySize = 255;
		info->ulMaxKeySize = 255;
		info->flags |= CKF_EC_NAMEDCURVE;
		break;
	}
	return CKR_OK;
}

/* --- sessions --------------------------------------------------------------------------- */

static CK_RV mt_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, void *app, CK_NOTIFY notify,
			    CK_SESSION_HANDLE_PTR out)
{
	struct session *s, **grown;

	(void)app;
	(void)notify;
	if (out == NULL)
		return CKR_ARGUMENTS_BAD;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return CKR_HOST_MEMORY;
	/*
	 * One lock hold from the initialized check to the insertion: a
	 * C_Finalize in between would otherwise leave a session alive after it.
	 */
	pthread_mutex_lock(&lock);
	if (!initialized) {
		pthread_mutex_unlock(&lock);
		free(s);
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	}
	if (slot != P11_SLOT_ID || !(flags & CKF_SERIAL_SESSION) || (flags & CKF_RW_SESSION)) {
		pthread_mutex_unlock(&lock);
		free(s);
		/* Nothing on this token can be written. */
		return slot != P11_SLOT_ID	       ? CKR_SLOT_ID_INVALID
		       : !(flags & CKF_SERIAL_SESSION) ? CKR_SESSION_PARALLEL_NOT_SUPPORTED
						       : CKR_TOKEN_WRITE_PROTECTED;
	}
	if ((grown = realloc(sessions, (n_sessions + 1) * sizeof(*sessions))) == NULL) {
		pthread_mutex_unlock(&lock);
		free(s);
		return CKR_HOST_MEMORY;
	}
	sessions = grown;
	s->handle = next_session++;
	s->flags = flags;
	sessions[n_sessions++] = s;
	*out = s->handle;
	pthread_mutex_unlock(&lock);
	return CKR_OK;
}

static CK_RV mt_CloseSession(CK_SESSION_HANDLE h)
{
	size_t i;

	pthread_mutex_lock(&lock);
	CHECK_INIT();
	for (i = 0; i < n_sessions; i++) {
		if (sessions[i]->handle == h) {
			session_free(sessions[i]);
			sessions[i] = sessions[--n_sessions];
			if (n_sessions == 0)
				logged_in = 0; /* the login state ends with the last session */
			pthread_mutex_unlock(&lock);
			return CKR_OK;
		}
	}
	pthread_mutex_unlock(&lock);
	return CKR_SESSION_HANDLE_INVALID;
}

static CK_RV mt_CloseAllSessions(CK_SLOT_ID slot)
{
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if (slot != P11_SLOT_ID) {
		pthread_mutex_unlock(&lock);
		return CKR_SLOT_ID_INVALID;
	}
	sessions_free();
	pthread_mutex_unlock(&lock);
	return CKR_OK;
}

static CK_RV mt_GetSessionInfo(CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR info)
{
	struct session *s;

	if (info == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if ((s = session_get(h)) == NULL) {
		pthread_mutex_unlock(&lock);
		return CKR_SESSION_HANDLE_INVALID;
	}
	memset(info, 0, sizeof(*info));
	info->slotID = P11_SLOT_ID;
	info->state = logged_in ? CKS_RO_USER_FUNCTIONS : CKS_RO_PUBLIC_SESSION;
	info->flags = s->flags;
	pthread_mutex_unlock(&lock);
	return CKR_OK;
}

/* Accepted for programs that always log in; the PIN is not looked at, nor needed. */
static CK_RV mt_Login(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len)
{
	CK_RV rv = CKR_OK;

	(void)pin;
	(void)pin_len;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if (session_get(h) == NULL)
		rv = CKR_SESSION_HANDLE_INVALID;
	else if (user != CKU_USER && user != CKU_CONTEXT_SPECIFIC)
		rv = CKR_USER_TYPE_INVALID;
	else if (user == CKU_USER && logged_in)
		rv = CKR_USER_ALREADY_LOGGED_IN;
	else if (user == CKU_USER)
		logged_in = 1;
	pthread_mutex_unlock(&lock);
	return rv;
}

static CK_RV mt_Logout(CK_SESSION_HANDLE h)
{
	CK_RV rv = CKR_OK;

	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if (session_get(h) == NULL)
		rv = CKR_SESSION_HANDLE_INVALID;
	else if (!logged_in)
		rv = CKR_USER_NOT_LOGGED_IN;
	else
		logged_in = 0;
	pthread_mutex_unlock(&lock);
	return rv;
}

/* --- objects ---------------------------------------------------------------------------- */

/* Private-key attributes that exist on a software key and never here. */
static int is_sensitive(const struct p11_object *obj, CK_ATTRIBUTE_TYPE type)
{
	if (obj->cls != CKO_PRIVATE_KEY)
		return 0;
	switch (type) {
	case CKA_VALUE:
	case CKA_PRIVATE_EXPONENT:
	case CKA_PRIME_1:
	case CKA_PRIME_2:
	case CKA_EXPONENT_1:
	case CKA_EXPONENT_2:
	case CKA_COEFFICIENT:
		return 1;
	}
	return 0;
}

static CK_RV mt_GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE oh, CK_ATTRIBUTE_PTR templ,
				  CK_ULONG count)
{
	const struct p11_attr *a;
	struct p11_object *obj;
	CK_RV rv = CKR_OK;
	CK_ULONG i;

	if (templ == NULL && count > 0)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if (session_get(h) == NULL) {
		pthread_mutex_unlock(&lock);
		return CKR_SESSION_HANDLE_INVALID;
	}
	if ((obj = object_get(oh)) == NULL) {
		pthread_mutex_unlock(&lock);
		return CKR_OBJECT_HANDLE_INVALID;
	}
	/* Every entry is answered; the error returned is one of those met (PKCS#11 5.7). */
	for (i = 0; i < count; i++) {
		if (is_sensitive(obj, templ[i].type)) {
			templ[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
			rv = CKR_ATTRIBUTE_SENSITIVE;
		} else if ((a = p11_object_attr(obj, templ[i].type)) == NULL) {
			templ[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
			rv = CKR_ATTRIBUTE_TYPE_INVALID;
		} else if (templ[i].pValue == NULL) {
			templ[i].ulValueLen = a->len;
		} else if (templ[i].ulValueLen < a->len) {
			templ[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
			rv = CKR_BUFFER_TOO_SMALL;
		} else {
			memcpy(templ[i].pValue, a->value, a->len);
			templ[i].ulValueLen = a->len;
		}
	}
	pthread_mutex_unlock(&lock);
	return rv;
}

static CK_RV mt_GetObjectSize(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE oh, CK_ULONG_PTR size)
{
	CK_RV rv = CKR_OK;

	if (size == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if (session_get(h) == NULL)
		rv = CKR_SESSION_HANDLE_INVALID;
	else if (object_get(oh) == NULL)
		rv = CKR_OBJECT_HANDLE_INVALID;
	else
		*size = CK_UNAVAILABLE_INFORMATION;
	pthread_mutex_unlock(&lock);
	return rv;
}

static int matches(const struct p11_object *obj, const CK_ATTRIBUTE *templ, CK_ULONG count)
{
	const struct p11_attr *a;
	CK_ULONG i;

	for (i = 0; i < count; i++) {
		if ((a = p11_object_attr(obj, templ[i].type)) == NULL ||
		    a->len != templ[i].ulValueLen)
			return 0;
		if (a->len > 0 &&
		    (templ[i].pValue == NULL || memcmp(a->value, templ[i].pValue, a->len) != 0))
			return 0;
	}
	return 1;
}

static CK_RV mt_FindObjectsInit(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR templ, CK_ULONG count)
{
	struct session *s;
	CK_RV rv = CKR_OK;
	size_t i;

	if (templ == NULL && count > 0)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if ((s = session_get(h)) == NULL) {
		rv = CKR_SESSION_HANDLE_INVALID;
		goto out;
	}
	if (s->finding) {
		rv = CKR_OPERATION_ACTIVE;
		goto out;
	}
	registry_refresh();
	free(s->found);
	s->n_found = s->found_pos = 0;
	if ((s->found = calloc(n_objs > 0 ? n_objs : 1, sizeof(*s->found))) == NULL) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	for (i = 0; i < n_objs; i++)
		if (objs[i]->present && matches(objs[i], templ, count))
			s->found[s->n_found++] = objs[i]->handle;
	s->finding = 1;
out:
	pthread_mutex_unlock(&lock);
	return rv;
}

static CK_RV mt_FindObjects(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR out, CK_ULONG max,
			    CK_ULONG_PTR count)
{
	struct session *s;
	CK_RV rv = CKR_OK;

	if (out == NULL || count == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if ((s = session_get(h)) == NULL)
		rv = CKR_SESSION_HANDLE_INVALID;
	else if (!s->finding)
		rv = CKR_OPERATION_NOT_INITIALIZED;
	else
		for (*count = 0; *count < max && s->found_pos < s->n_found; (*count)++)
			out[*count] = s->found[s->found_pos++];
	pthread_mutex_unlock(&lock);
	return rv;
}

static CK_RV mt_FindObjectsFinal(CK_SESSION_HANDLE h)
{
	struct session *s;
	CK_RV rv = CKR_OK;

	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if ((s = session_get(h)) == NULL) {
		rv = CKR_SESSION_HANDLE_INVALID;
	} else if (!s->finding) {
		rv = CKR_OPERATION_NOT_INITIALIZED;
	} else {
		free(s->found);
		s->found = NULL;
		s->n_found = s->found_pos = 0;
		s->finding = 0;
	}
	pthread_mutex_unlock(&lock);
	return rv;
}

/* --- signing ---------------------------------------------------------------------------- */

/* PSS parameters the agent can honour: MGF1 with the same hash, salt = hash length. */
static CK_RV pss_scheme(const CK_MECHANISM *m, CK_MECHANISM_TYPE want_hash, uint16_t *scheme)
{
	const CK_RSA_PKCS_PSS_PARAMS *pp = m->pParameter;
	const struct scheme_md *md;

	if (pp == NULL || m->ulParameterLen != sizeof(*pp)) {
		fprintf(stderr, "mtls-agent-pkcs11: RSA-PSS needs CK_RSA_PKCS_PSS_PARAMS\n");
		return CKR_MECHANISM_PARAM_INVALID;
	}
	md = scheme_md_by_ckm(pp->hashAlg);
	if (md == NULL || (want_hash != 0 && pp->hashAlg != want_hash) || pp->mgf != md->ckg_mgf1 ||
	    pp->sLen != md->len) {
		fprintf(stderr,
			"mtls-agent-pkcs11: RSA-PSS parameters not supported: the agent "
			"signs SHA-256/384/512 with MGF1 of the same hash and salt length = "
			"hash length\n");
		return CKR_MECHANISM_PARAM_INVALID;
	}
	*scheme = scheme_code(MTLS_AGENT_KEY_RSA, SIG_PAD_PSS, md);
	return CKR_OK;
}

static CK_RV mt_SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key)
{
	const struct eddsa_params *ep;
	const struct p11_object *obj;
	const struct mech *mech;
	struct session *s;
	uint16_t scheme;
	CK_RV rv = CKR_OK;

	if (m == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if ((s = session_get(h)) == NULL) {
		rv = CKR_SESSION_HANDLE_INVALID;
		goto out;
	}
	if (s->sign.active) {
		rv = CKR_OPERATION_ACTIVE;
		goto out;
	}
	if ((obj = object_get(key)) == NULL || obj->cls != CKO_PRIVATE_KEY) {
		rv = CKR_KEY_HANDLE_INVALID;
		goto out;
	}
	if ((mech = mech_by_type(m->mechanism)) == NULL) {
		rv = CKR_MECHANISM_INVALID;
		goto out;
	}
	if (mech->key_type != obj->key_type) {
		rv = CKR_KEY_TYPE_INCONSISTENT;
		goto out;
	}
	scheme = mech->scheme != NULL ? mech->scheme->code : 0;
	if (mech->pad == SIG_PAD_PSS) {
		/* CKM_SHA256/384/512_RSA_PKCS_PSS fix the hash; CKM_RSA_PKCS_PSS takes any. */
		if ((rv = pss_scheme(m, mech->scheme != NULL ? mech->scheme->md->ckm : 0,
				     &scheme)) != CKR_OK)
			goto out;
	} else if (mech->type == CKM_EDDSA && m->pParameter != NULL) {
		/* Ed25519ph and contexts are other signatures than the one TLS uses. */
		ep = m->pParameter;
		if (m->ulParameterLen != sizeof(*ep) || ep->ph_flag || ep->context_len != 0) {
			rv = CKR_MECHANISM_PARAM_INVALID;
			goto out;
		}
	}
	if ((s->sign.name = strdup(obj->name)) == NULL) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	s->sign.active = 1;
	s->sign.mech = mech;
	memcpy(s->sign.spki_hash, obj->spki_hash, sizeof(s->sign.spki_hash));
	s->sign.key_type = obj->key_type;
	s->sign.bits = obj->bits;
	s->sign.scheme = scheme;
	switch (obj->key_type) {
	case MTLS_AGENT_KEY_EC:
		s->sign.max_sig = 2 * ((obj->bits + 7) / 8); /* r || s */
		break;
	case MTLS_AGENT_KEY_RSA:
		s->sign.max_sig = (obj->bits + 7) / 8;
		break;
	default:
		s->sign.max_sig = 64;
		break;
	}
out:
	pthread_mutex_unlock(&lock);
	return rv;
}

/* What the agent refuses, said once on stderr: CK_RV alone cannot tell a policy refusal. */
static CK_RV agent_error(const struct sign_op *op, int r)
{
	fprintf(stderr, "mtls-agent-pkcs11: %s with \"%s\": %s\n", op->mech->name, op->name,
		mtls_agent_last_error());
	switch (r) {
	case MTLS_AGENT_ERR_POLICY:
	case MTLS_AGENT_ERR_DENIED:
		return CKR_FUNCTION_REJECTED;
	case MTLS_AGENT_ERR_NOT_FOUND:
	case MTLS_AGENT_ERR_KEY_GONE:
		return CKR_KEY_HANDLE_INVALID;
	case MTLS_AGENT_ERR_SCHEME:
		return CKR_KEY_FUNCTION_NOT_PERMITTED;
	case MTLS_AGENT_ERR_INVALID_ARG:
	case MTLS_AGENT_ERR_TOO_LARGE:
		return CKR_DATA_LEN_RANGE;
	case MTLS_AGENT_ERR_NOMEM:
		return CKR_HOST_MEMORY;
	case MTLS_AGENT_ERR_CONNECT:
	case MTLS_AGENT_ERR_KEY_UNAVAILABLE:
		return CKR_DEVICE_REMOVED;
	}
	return CKR_DEVICE_ERROR;
}

/*
 * One SIGN request for the operation's input; the signature in PKCS#11 form
 * (ECDSA as r || s) in out, which holds op->max_sig bytes.
 */
static CK_RV do_sign(struct sign_op *op, const uint8_t *data, size_t len, uint8_t *out,
		     size_t *out_len)
{
	const struct scheme_md *md;
	uint16_t scheme = op->scheme;
	unsigned flags = 0;
	uint8_t *sig = NULL;
	size_t sig_len = 0, i;
	mtls_agent *a;
	CK_RV rv;
	int r;

	if (len > PROTO_MAX_SIGN_INPUT)
		return CKR_DATA_LEN_RANGE;
	switch (op->mech->input) {
	case IN_MESSAGE:
		break;
	case IN_DIGEST:
		flags = MTLS_AGENT_SIGN_DIGEST;
		if (op->key_type == MTLS_AGENT_KEY_EC) {
			if ((md = scheme_md_by_len(len)) == NULL) {
				fprintf(stderr,
					"mtls-agent-pkcs11: CKM_ECDSA with \"%s\": the agent signs "
					"SHA-256/384/512 digests (32, 48 or 64 bytes), not %zu bytes\n",
					op->name, len);
				return CKR_DATA_LEN_RANGE;
			}
			scheme = scheme_code(MTLS_AGENT_KEY_EC, SIG_PAD_NONE, md);
		} else {
			const struct scheme *sc = scheme_by_code(scheme);

			if (sc == NULL || sc->hash_len != len)
				return CKR_DATA_LEN_RANGE;
		}
		break;
	case IN_DIGESTINFO:
		flags = MTLS_AGENT_SIGN_DIGEST;
		for (i = 0; (md = scheme_md_at(i)) != NULL; i++)
			if (len == sizeof(md->digestinfo) + md->len &&
			    memcmp(data, md->digestinfo, sizeof(md->digestinfo)) == 0)
				break;
		if (md == NULL) {
			fprintf(stderr,
				"mtls-agent-pkcs11: CKM_RSA_PKCS with \"%s\": only a "
				"SHA-256/384/512 DigestInfo is signed, never raw RSA\n",
				op->name);
			return CKR_DATA_INVALID;
		}
		scheme = scheme_code(MTLS_AGENT_KEY_RSA, SIG_PAD_PKCS1, md);
		data += sizeof(md->digestinfo);
		len = md->len;
		break;
	}
	if ((r = get_agent(&a)) != 0 ||
	    (r = mtls_agent_sign(a, op->name, scheme, flags, op->spki_hash, data, len, &sig,
				 &sig_len)) != 0)
		return agent_error(op, r);
	rv = CKR_OK;
	if (op->key_type == MTLS_AGENT_KEY_EC) {
		const unsigned char *p = sig;
		ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)sig_len);
		size_t half = op->max_sig / 2;

		if (es == NULL || p != sig + sig_len ||
		    BN_bn2binpad(ECDSA_SIG_get0_r(es), out, (int)half) < 0 ||
		    BN_bn2binpad(ECDSA_SIG_get0_s(es), out + half, (int)half) < 0)
			rv = CKR_DEVICE_ERROR;
		else
			*out_len = op->max_sig;
		ECDSA_SIG_free(es);
	} else if (sig_len > op->max_sig) {
		rv = CKR_DEVICE_ERROR;
	} else {
		memcpy(out, sig, sig_len);
		*out_len = sig_len;
	}
	free(sig);
	p11_debug("\"%s\" %s: %zu bytes%s signed: %s", op->name, op->mech->name, len,
		  flags ? " (digest)" : "", rv == CKR_OK ? "ok" : "bad signature from the agent");
	return rv;
}

/*
 * The common end of C_Sign and C_SignFinal: a size query or a short buffer
 * leaves the operation active (PKCS#11 5.2), anything else ends it.
 */
static CK_RV finish_sign(struct session *s, const uint8_t *data, size_t len, CK_BYTE_PTR sig,
			 CK_ULONG_PTR sig_len)
{
	uint8_t out[1024];
	size_t out_len = 0;
	CK_RV rv;

	if (sig == NULL) {
		*sig_len = s->sign.max_sig;
		return CKR_OK;
	}
	if (*sig_len < s->sign.max_sig) {
		*sig_len = s->sign.max_sig;
		return CKR_BUFFER_TOO_SMALL;
	}
	if (s->sign.max_sig > sizeof(out))
		rv = CKR_KEY_SIZE_RANGE;
	else
		rv = do_sign(&s->sign, data, len, out, &out_len);
	if (rv == CKR_OK) {
		memcpy(sig, out, out_len);
		*sig_len = out_len;
	}
	sign_op_clear(&s->sign);
	return rv;
}

static CK_RV mt_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig,
		     CK_ULONG_PTR sig_len)
{
	struct session *s;
	CK_RV rv;

	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if ((s = session_get(h)) == NULL) {
		rv = CKR_SESSION_HANDLE_INVALID;
	} else if (!s->sign.active) {
		rv = CKR_OPERATION_NOT_INITIALIZED;
	} else if (sig_len == NULL || (data == NULL && len > 0)) {
		sign_op_clear(&s->sign);
		rv = CKR_ARGUMENTS_BAD;
	} else if (s->sign.multipart) {
		sign_op_clear(&s->sign);
		rv = CKR_OPERATION_ACTIVE;
	} else {
		rv = finish_sign(s, data != NULL ? data : (const uint8_t *)"", len, sig, sig_len);
	}
	pthread_mutex_unlock(&lock);
	return rv;
}

static CK_RV mt_SignUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR part, CK_ULONG len)
{
	struct session *s;
	struct sign_op *op;
	CK_RV rv = CKR_OK;
	uint8_t *p;
	size_t cap;

	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if ((s = session_get(h)) == NULL) {
		rv = CKR_SESSION_HANDLE_INVALID;
		goto out;
	}
	op = &s->sign;
	if (!op->active) {
		rv = CKR_OPERATION_NOT_INITIALIZED;
		goto out;
	}
	/* Digest mechanisms and EdDSA are single-part by definition. */
	if (op->mech->input != IN_MESSAGE || op->key_type == MTLS_AGENT_KEY_ED25519) {
		rv = CKR_FUNCTION_NOT_SUPPORTED;
		goto fail;
	}
	if (part == NULL && len > 0) {
		rv = CKR_ARGUMENTS_BAD;
		goto fail;
	}
	if (len > PROTO_MAX_SIGN_INPUT - op->msg_len) {
		rv = CKR_DATA_LEN_RANGE;
		goto fail;
	}
	op->multipart = 1;
	if (op->msg_len + len > op->msg_cap) {
		cap = op->msg_cap > 0 ? op->msg_cap : 4096;
		while (cap < op->msg_len + len)
			cap *= 2;
		if (cap > PROTO_MAX_SIGN_INPUT)
			cap = PROTO_MAX_SIGN_INPUT;
		/* Not realloc: the old buffer is wiped. */
		if ((p = malloc(cap)) == NULL) {
			rv = CKR_HOST_MEMORY;
			goto fail;
		}
		if (op->msg_len > 0)
			memcpy(p, op->msg, op->msg_len);
		if (op->msg != NULL) {
			wipe(op->msg, op->msg_cap);
			free(op->msg);
		}
		op->msg = p;
		op->msg_cap = cap;
	}
	if (len > 0)
		memcpy(op->msg + op->msg_len, part, len);
	op->msg_len += len;
	goto out;
fail:
	sign_op_clear(&s->sign);
out:
	pthread_mutex_unlock(&lock);
	return rv;
}

static CK_RV mt_SignFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
	struct session *s;
	CK_RV rv;

	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if ((s = session_get(h)) == NULL) {
		rv = CKR_SESSION_HANDLE_INVALID;
	} else if (!s->sign.active) {
		rv = CKR_OPERATION_NOT_INITIALIZED;
	} else if (sig_len == NULL) {
		sign_op_clear(&s->sign);
		rv = CKR_ARGUMENTS_BAD;
	} else if (s->sign.mech->input != IN_MESSAGE ||
		   s->sign.key_type == MTLS_AGENT_KEY_ED25519) {
		sign_op_clear(&s->sign);
		rv = CKR_FUNCTION_NOT_SUPPORTED;
	} else {
		rv = finish_sign(s, s->sign.msg != NULL ? s->sign.msg : (const uint8_t *)"",
				 s->sign.msg_len, sig, sig_len);
	}
	pthread_mutex_unlock(&lock);
	return rv;
}

/* --- digests (software, see digest_by_type) -------------------------------------------- */

static CK_RV mt_DigestInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m)
{
	struct session *s;
	const char *name;
	CK_RV rv = CKR_OK;

	if (m == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if ((s = session_get(h)) == NULL)
		rv = CKR_SESSION_HANDLE_INVALID;
	else if (s->digest != NULL)
		rv = CKR_OPERATION_ACTIVE;
	else if ((name = digest_by_type(m->mechanism)) == NULL)
		rv = CKR_MECHANISM_INVALID;
	else if ((s->digest = EVP_MD_CTX_new()) == NULL ||
		 !EVP_DigestInit_ex2(s->digest, EVP_get_digestbyname(name), NULL)) {
		EVP_MD_CTX_free(s->digest);
		s->digest = NULL;
		rv = CKR_HOST_MEMORY;
	}
	pthread_mutex_unlock(&lock);
	return rv;
}

/* Output of the active digest; a size query or short buffer keeps it active. */
static CK_RV digest_out(struct session *s, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
	size_t need = (size_t)EVP_MD_CTX_get_size(s->digest);
	unsigned int n = 0;
	CK_RV rv = CKR_OK;

	if (out == NULL) {
		*out_len = need;
		return CKR_OK;
	}
	if (*out_len < need) {
		*out_len = need;
		return CKR_BUFFER_TOO_SMALL;
	}
	if (!EVP_DigestFinal_ex(s->digest, out, &n))
		rv = CKR_FUNCTION_FAILED;
	else
		*out_len = n;
	EVP_MD_CTX_free(s->digest);
	s->digest = NULL;
	return rv;
}

static CK_RV digest_end(struct session *s, CK_RV rv)
{
	EVP_MD_CTX_free(s->digest);
	s->digest = NULL;
	return rv;
}

static CK_RV mt_Digest(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR out,
		       CK_ULONG_PTR out_len)
{
	struct session *s;
	CK_RV rv;

	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if ((s = session_get(h)) == NULL)
		rv = CKR_SESSION_HANDLE_INVALID;
	else if (s->digest == NULL)
		rv = CKR_OPERATION_NOT_INITIALIZED;
	else if (out_len == NULL || (data == NULL && len > 0))
		rv = digest_end(s, CKR_ARGUMENTS_BAD);
	else if (out == NULL || *out_len < (CK_ULONG)EVP_MD_CTX_get_size(s->digest))
		rv = digest_out(s, out, out_len); /* nothing hashed yet: it stays active */
	else if (len > 0 && !EVP_DigestUpdate(s->digest, data, len))
		rv = digest_end(s, CKR_FUNCTION_FAILED);
	else
		rv = digest_out(s, out, out_len);
	pthread_mutex_unlock(&lock);
	return rv;
}

static CK_RV mt_DigestUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR part, CK_ULONG len)
{
	struct session *s;
	CK_RV rv = CKR_OK;

	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if ((s = session_get(h)) == NULL)
		rv = CKR_SESSION_HANDLE_INVALID;
	else if (s->digest == NULL)
		rv = CKR_OPERATION_NOT_INITIALIZED;
	else if (part == NULL && len > 0)
		rv = digest_end(s, CKR_ARGUMENTS_BAD);
	else if (len > 0 && !EVP_DigestUpdate(s->digest, part, len))
		rv = digest_end(s, CKR_FUNCTION_FAILED);
	pthread_mutex_unlock(&lock);
	return rv;
}

static CK_RV mt_DigestFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
	struct session *s;
	CK_RV rv;

	pthread_mutex_lock(&lock);
	CHECK_INIT();
	if ((s = session_get(h)) == NULL)
		rv = CKR_SESSION_HANDLE_INVALID;
	else if (s->digest == NULL)
		rv = CKR_OPERATION_NOT_INITIALIZED;
	else if (out_len == NULL)
		rv = digest_end(s, CKR_ARGUMENTS_BAD);
	else
		rv = digest_out(s, out, out_len);
	pthread_mutex_unlock(&lock);
	return rv;
}

static CK_RV mt_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list);

#include "pkcs11/p11-functions.h"

static CK_RV mt_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
	if (list == NULL)
		return CKR_ARGUMENTS_BAD;
	*list = &function_list;
	return CKR_OK;
}

/* The module's one exported symbol. */
__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
	return mt_GetFunctionList(list);
}
