/*
 * Key types by their KEYGEN names (docs/PROTOCOL.md): the agent's keystores, its
 * configuration (key-type =) and mtls-agentctl keygen --type share this one list.
 */
#ifndef MTLS_COMMON_KEYTYPE_H
#define MTLS_COMMON_KEYTYPE_H

enum ks_keygen_type {
	KS_GEN_EC_P256 = 1,
	KS_GEN_EC_P384,
	KS_GEN_RSA_2048,
	KS_GEN_RSA_3072,
	KS_GEN_RSA_4096,
	KS_GEN_ED25519,
};

/* "ec-p256" ... "ed25519" -> enum, 0 if unknown. */
int ks_keygen_type_from_name(const char *name);

#endif
