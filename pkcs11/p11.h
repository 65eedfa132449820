/*
 * mtls-agent-pkcs11.so: a PKCS#11 front end to the agent.
 *
 * The module holds no key and touches no hardware: every identity the caller
 * may use (the agent's LIST) becomes a private-key, a public-key and
 * certificate objects on one token, and C_Sign is one SIGN request, so the
 * agent's allow-lists and sign-policy decide everything.
 */
#ifndef MTLS_PKCS11_P11_H
#define MTLS_PKCS11_P11_H

#include <stddef.h>
#include <stdint.h>

#include <p11-kit/pkcs11.h>

#include "mtls-agent/client.h"

#define P11_SLOT_ID 1
#define P11_TOKEN_LABEL "mtls-agent"

struct p11_attr {
	CK_ATTRIBUTE_TYPE type;
	void *value;
	CK_ULONG len;
};

/*
 * One object. Handles are never reused: an object that the agent no longer
 * lists stays in the registry as absent (findable by nobody, its handle
 * invalid for new operations), and comes back under the same handle.
 */
struct p11_object {
	CK_OBJECT_HANDLE handle;
	uint8_t key[32]; /* SHA-256 of class, label and value: what "the same object" means */
	int present;
	CK_OBJECT_CLASS cls;
	char *name; /* CKA_LABEL: the identity (keys, leaf certificate) or NAME:caN */
	uint8_t spki_hash[MTLS_AGENT_SPKI_HASH_LEN]; /* keys: the generation to sign with */
	int key_type;				     /* MTLS_AGENT_KEY_* (keys) */
	unsigned bits;				     /* RSA modulus / EC order bits */
	struct p11_attr *attrs;
	size_t n_attrs;
};

/*
 * Builds the objects of one identity record and hands each to add(), which
 * takes ownership. Returns 0, or -1 if a record cannot be turned into objects
 * (it is then skipped, with a debug line).
 */
int p11_objects_from_identity(const struct mtls_agent_identity *id,
			      void (*add)(struct p11_object *obj, void *arg), void *arg);
void p11_object_free(struct p11_object *obj);
/* The signature mechanisms offered for keys of key_type (MTLS_AGENT_KEY_*): at most
 * max into out (CKA_ALLOWED_MECHANISMS). Returns how many were written. */
size_t p11_sign_mechanisms(int key_type, CK_MECHANISM_TYPE *out, size_t max);
/* The attribute, or NULL when the object has none of that type. */
const struct p11_attr *p11_object_attr(const struct p11_object *obj, CK_ATTRIBUTE_TYPE type);

/* Debug line on stderr when MTLS_AGENT_DEBUG is set. */
void p11_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
