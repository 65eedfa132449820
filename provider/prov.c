/*
 * OpenSSL 3 provider "mtlsagent": instance creation, algorithm tables and
 * errors, for both transports (the socket's entry point is in prov-socket.c).
 */
#include "config.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/params.h>

#include "provider/prov.h"

/* Core functions, the same for every instance of the provider in a process. */
static OSSL_FUNC_core_get_params_fn *c_get_params;
static OSSL_FUNC_core_new_error_fn *c_new_error;
static OSSL_FUNC_core_set_error_debug_fn *c_set_error_debug;
static OSSL_FUNC_core_vset_error_fn *c_vset_error;

static int debug_enabled;

/* --- diagnostics ------------------------------------------------------------------------ */

void mtlsa_debug(const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	if (!debug_enabled)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "mtlsagent[%ld]: %s\n", (long)getpid(), line);
}

void mtlsa_raise(const struct mtlsa_prov *prov, const char *file, int line, const char *func,
		 int reason, const char *fmt, ...)
{
	va_list ap;

	if (debug_enabled) {
		char text[1024];

		va_start(ap, fmt);
		vsnprintf(text, sizeof(text), fmt, ap);
		va_end(ap);
		mtlsa_debug("error %d in %s: %s", reason, func, text);
	}
	if (prov == NULL || c_new_error == NULL || c_set_error_debug == NULL ||
	    c_vset_error == NULL)
		return;
	c_new_error(prov->handle);
	c_set_error_debug(prov->handle, file, line, func);
	va_start(ap, fmt);
	c_vset_error(prov->handle, (uint32_t)reason, fmt, ap);
	va_end(ap);
}

/*
 * Reason strings: the agent's error codes keep their numbers (so the reason
 * says what the agent refused and the error data carries its words), ours
 * start at 100. Filled once from mtls_agent_strerror().
 */
static const struct {
	int reason;
	const char *text;
} our_reasons[] = {
	{MTLSA_R_BAD_KEYREF, "bad key reference"},
	{MTLSA_R_BAD_KEY, "unusable public key"},
	{MTLSA_R_UNSUPPORTED_DIGEST, "unsupported digest"},
	{MTLSA_R_UNSUPPORTED_PADDING, "unsupported padding mode"},
	{MTLSA_R_UNSUPPORTED_SALTLEN, "unsupported PSS salt length"},
	{MTLSA_R_MGF1_MISMATCH, "MGF1 digest differs from the signature digest"},
	{MTLSA_R_BUFFER_TOO_SMALL, "signature buffer too small"},
	{MTLSA_R_BAD_URI, "bad agent URI"},
	{MTLSA_R_MESSAGE_TOO_LONG, "message too long"},
	{MTLSA_R_NOT_INITIALISED, "operation not initialised"},
	{MTLSA_R_BAD_PARAMETER, "bad parameter"},
	{MTLSA_R_OUT_OF_MEMORY, "out of memory"},
	{MTLSA_R_NO_KEY, "no key"},
};
#define N_OUR_REASONS (sizeof(our_reasons) / sizeof(our_reasons[0]))

/* The agent's codes, ours, and a zero terminator. */
static OSSL_ITEM reason_strings[-MTLS_AGENT_ERR_MIN + N_OUR_REASONS + 1];
static pthread_once_t reason_once = PTHREAD_ONCE_INIT;

static void reasons_init(void)
{
	size_t i, n = 0;

	for (i = 1; i <= (size_t)-MTLS_AGENT_ERR_MIN; i++) {
		reason_strings[n].id = (unsigned int)i;
		reason_strings[n++].ptr = (void *)mtls_agent_strerror(-(int)i);
	}
	/*
	 * curl prints the reason string of an error, not its data: this one must
	 * say what users look for when the agent is down.
	 */
	reason_strings[-MTLS_AGENT_ERR_CONNECT - 1].ptr =
		(void *)"agent not running or not reachable";
	for (i = 0; i < N_OUR_REASONS; i++) {
		reason_strings[n].id = (unsigned int)our_reasons[i].reason;
		reason_strings[n++].ptr = (void *)our_reasons[i].text;
	}
}

static const OSSL_ITEM *prov_get_reason_strings(void *provctx)
{
	(void)provctx;
	return reason_strings;
}

/* --- algorithms ---------------------------------------------------------------------------- */

/* The names as the default provider spells them, so they share its name numbers. */
#define NAMES_EC "EC:id-ecPublicKey:1.2.840.10045.2.1"
#define NAMES_RSA "RSA:rsaEncryption:1.2.840.113549.1.1.1"
#define NAMES_ED25519 "ED25519:1.3.101.112"

static const OSSL_ALGORITHM keymgmt_algs[] = {
	{NAMES_EC, MTLSA_PROPS, mtlsa_keymgmt_ec_functions, "EC key held by mtls-agent"},
	{NAMES_RSA, MTLSA_PROPS, mtlsa_keymgmt_rsa_functions, "RSA key held by mtls-agent"},
	{NAMES_ED25519, MTLSA_PROPS, mtlsa_keymgmt_ed25519_functions,
	 "Ed25519 key held by mtls-agent"},
	{NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM signature_algs[] = {
	{"ECDSA", MTLSA_PROPS, mtlsa_signature_ecdsa_functions, "ECDSA signed by mtls-agent"},
	{NAMES_RSA, MTLSA_PROPS, mtlsa_signature_rsa_functions, "RSA signed by mtls-agent"},
	{NAMES_ED25519, MTLSA_PROPS, mtlsa_signature_ed25519_functions,
	 "Ed25519 (one-shot, as TLS 1.3 uses it) signed by mtls-agent"},
	{NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM store_algs[] = {
	{"agent", MTLSA_PROPS, mtlsa_store_functions, "mtls-agent identities (agent:NAME)"},
	{NULL, NULL, NULL, NULL},
};

/*
 * Key reference files (see prov-decoder.c): our PEM block to DER, then DER to
 * a key. Key decoders are found by the key type they produce.
 */
#define KEYREF_PROPS_DER MTLSA_PROPS ",input=der,structure=MtlsAgentKey"
static const OSSL_ALGORITHM decoder_algs[] = {
	{"DER", MTLSA_PROPS ",input=pem", mtlsa_decoder_pem2der_functions,
	 "mtls-agent key reference, PEM to DER"},
	{"EC", KEYREF_PROPS_DER, mtlsa_decoder_ec_functions, "mtls-agent key reference"},
	{"RSA", KEYREF_PROPS_DER, mtlsa_decoder_rsa_functions, "mtls-agent key reference"},
	{"ED25519", KEYREF_PROPS_DER, mtlsa_decoder_ed25519_functions, "mtls-agent key reference"},
	{NULL, NULL, NULL, NULL},
};

/* Nothing else: digests, ciphers, RNGs or key exchange would be used by libssl itself. */
static const OSSL_ALGORITHM *prov_query_operation(void *provctx, int operation_id, int *no_cache)
{
	const struct mtlsa_prov *prov = provctx;

	*no_cache = 0;
	/* In the agent itself there are no key reference files to decode. */
	if (!prov->transport->key_files && operation_id == OSSL_OP_DECODER)
		return NULL;
	switch (operation_id) {
	case OSSL_OP_KEYMGMT:
		return keymgmt_algs;
	case OSSL_OP_SIGNATURE:
		return signature_algs;
	case OSSL_OP_STORE:
		return store_algs;
	case OSSL_OP_DECODER:
		return decoder_algs;
	}
	return NULL;
}

/* --- provider parameters and life cycle ----------------------------------------------------- */

static const OSSL_PARAM *prov_gettable_params(void *provctx)
{
	static const OSSL_PARAM params[] = {
		OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_NAME, NULL, 0),
		OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_VERSION, NULL, 0),
		OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_BUILDINFO, NULL, 0),
		OSSL_PARAM_int(OSSL_PROV_PARAM_STATUS, NULL),
		OSSL_PARAM_END,
	};

	(void)provctx;
	return params;
}

static int prov_get_params(void *provctx, OSSL_PARAM params[])
{
	OSSL_PARAM *p;

	(void)provctx;
	if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_NAME)) != NULL &&
	    !OSSL_PARAM_set_utf8_ptr(p, "mtls-agent provider"))
		return 0;
	if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_VERSION)) != NULL &&
	    !OSSL_PARAM_set_utf8_ptr(p, PACKAGE_VERSION))
		return 0;
	if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_BUILDINFO)) != NULL &&
	    !OSSL_PARAM_set_utf8_ptr(p, PACKAGE_STRING))
		return 0;
	if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_STATUS)) != NULL &&
	    !OSSL_PARAM_set_int(p, 1))
		return 0;
	return 1;
}

static void prov_teardown(void *provctx)
{
	struct mtlsa_prov *prov = provctx;

	if (prov == NULL)
		return;
	if (prov->transport != NULL && prov->transport->teardown != NULL)
		prov->transport->teardown(prov);
	OSSL_LIB_CTX_free(prov->libctx);
	pthread_mutex_destroy(&prov->lock);
	free(prov);
}

static const OSSL_DISPATCH prov_functions[] = {
	{OSSL_FUNC_PROVIDER_TEARDOWN, (void (*)(void))prov_teardown},
	{OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))prov_gettable_params},
	{OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))prov_get_params},
	{OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))prov_query_operation},
	{OSSL_FUNC_PROVIDER_GET_REASON_STRINGS, (void (*)(void))prov_get_reason_strings},
	{0, NULL},
};

char *mtlsa_config_param(const struct mtlsa_prov *prov, const char *name)
{
	char *value = NULL;
	OSSL_PARAM params[] = {
		OSSL_PARAM_utf8_ptr(name, &value, 0),
		OSSL_PARAM_END,
	};

	if (c_get_params == NULL || !c_get_params(prov->handle, params) || value == NULL ||
	    value[0] == '\0')
		return NULL;
	return strdup(value);
}

static const struct mtlsa_transport *internal_transport;

void mtlsa_set_internal_transport(const struct mtlsa_transport *transport)
{
	internal_transport = transport;
}

int mtlsa_internal_provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
				 const OSSL_DISPATCH **out, void **provctx)
{
	if (internal_transport == NULL)
		return 0;
	return mtlsa_provider_init(internal_transport, handle, in, out, provctx);
}

int mtlsa_provider_init(const struct mtlsa_transport *transport, const OSSL_CORE_HANDLE *handle,
			const OSSL_DISPATCH *in, const OSSL_DISPATCH **out, void **provctx)
{
	struct mtlsa_prov *prov;
	const char *dbg = secure_getenv("MTLS_AGENT_DEBUG");

	debug_enabled = dbg != NULL && dbg[0] != '\0' && strcmp(dbg, "0") != 0;
	pthread_once(&reason_once, reasons_init);
	*provctx = NULL;
	if ((prov = calloc(1, sizeof(*prov))) == NULL)
		return 0;
	for (; in->function_id != 0; in++) {
		switch (in->function_id) {
		case OSSL_FUNC_CORE_GET_PARAMS:
			c_get_params = OSSL_FUNC_core_get_params(in);
			break;
		case OSSL_FUNC_CORE_NEW_ERROR:
			c_new_error = OSSL_FUNC_core_new_error(in);
			break;
		case OSSL_FUNC_CORE_SET_ERROR_DEBUG:
			c_set_error_debug = OSSL_FUNC_core_set_error_debug(in);
			break;
		case OSSL_FUNC_CORE_VSET_ERROR:
			c_vset_error = OSSL_FUNC_core_vset_error(in);
			break;
		case OSSL_FUNC_BIO_READ_EX:
			prov->bio_read_ex = OSSL_FUNC_BIO_read_ex(in);
			break;
		case OSSL_FUNC_BIO_GETS:
			prov->bio_gets = OSSL_FUNC_BIO_gets(in);
			break;
		}
	}
	prov->handle = handle;
	prov->transport = transport;
	if (pthread_mutex_init(&prov->lock, NULL) != 0) {
		free(prov);
		return 0;
	}
	/* A fresh library context loads the default provider on first use, and nothing else. */
	if ((prov->libctx = OSSL_LIB_CTX_new()) == NULL || prov->bio_read_ex == NULL ||
	    prov->bio_gets == NULL) {
		prov_teardown(prov);
		return 0;
	}
	if (transport->init != NULL && !transport->init(prov)) {
		prov_teardown(prov);
		return 0;
	}
	*out = prov_functions;
	*provctx = prov;
	return 1;
}
