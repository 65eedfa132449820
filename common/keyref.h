/*
 * Key reference file: names an agent identity and carries its public key,
 * no secret. PEM label "MTLS AGENT KEY" around the DER of
 *
 *   MtlsAgentKeyRef ::= SEQUENCE {
 *       version    INTEGER (1),
 *       identity   UTF8String,            -- identity name in the agent
 *       publicKey  OCTET STRING           -- DER SubjectPublicKeyInfo
 *   }
 *
 * The public key lets an application load the key (and check it against its
 * certificate) while the agent is down; while the agent runs, the provider
 * takes the identity's current key from the agent instead.
 */
#ifndef MTLS_COMMON_KEYREF_H
#define MTLS_COMMON_KEYREF_H

#include <stddef.h>
#include <stdint.h>

#define KEYREF_PEM_LABEL "MTLS AGENT KEY"

/* PEM text (NUL-terminated, caller frees) for identity + spki. */
int keyref_encode_pem(const char *identity, const uint8_t *spki, size_t spki_len, char **pem,
		      size_t *pem_len);

/* DER of the structure (caller frees with free()). */
int keyref_encode_der(const char *identity, const uint8_t *spki, size_t spki_len, uint8_t **der,
		      size_t *der_len);

/*
 * Parses PEM (label KEYREF_PEM_LABEL, other text around it allowed) or DER.
 * *identity and *spki are the caller's to free(). Returns 0 or a negative
 * MTLS_AGENT_ERR_* code (BAD_MESSAGE when it is not a key reference).
 */
int keyref_decode(const uint8_t *data, size_t len, char **identity, uint8_t **spki,
		  size_t *spki_len);

/* True when data looks like a PEM key reference (cheap check, no parsing). */
int keyref_is_pem(const uint8_t *data, size_t len);

#endif
