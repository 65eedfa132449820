#include "config.h"

#include <pthread.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/obj_mac.h>

#include "common/scheme.h"
#include "mtls-agent/client.h"

static const struct scheme schemes[] = {
	{MTLS_AGENT_ECDSA_SECP256R1_SHA256, "ecdsa_secp256r1_sha256", MTLS_AGENT_KEY_EC,
	 NID_X9_62_prime256v1, NID_sha256, 32, SIG_PAD_NONE},
	{MTLS_AGENT_ECDSA_SECP384R1_SHA384, "ecdsa_secp384r1_sha384", MTLS_AGENT_KEY_EC,
	 NID_secp384r1, NID_sha384, 48, SIG_PAD_NONE},
	{MTLS_AGENT_ECDSA_SECP521R1_SHA512, "ecdsa_secp521r1_sha512", MTLS_AGENT_KEY_EC,
	 NID_secp521r1, NID_sha512, 64, SIG_PAD_NONE},
	{MTLS_AGENT_RSA_PSS_RSAE_SHA256, "rsa_pss_rsae_sha256", MTLS_AGENT_KEY_RSA, NID_undef,
	 NID_sha256, 32, SIG_PAD_PSS},
	{MTLS_AGENT_RSA_PSS_RSAE_SHA384, "rsa_pss_rsae_sha384", MTLS_AGENT_KEY_RSA, NID_undef,
	 NID_sha384, 48, SIG_PAD_PSS},
	{MTLS_AGENT_RSA_PSS_RSAE_SHA512, "rsa_pss_rsae_sha512", MTLS_AGENT_KEY_RSA, NID_undef,
	 NID_sha512, 64, SIG_PAD_PSS},
	{MTLS_AGENT_RSA_PKCS1_SHA256, "rsa_pkcs1_sha256", MTLS_AGENT_KEY_RSA, NID_undef, NID_sha256,
	 32, SIG_PAD_PKCS1},
	{MTLS_AGENT_RSA_PKCS1_SHA384, "rsa_pkcs1_sha384", MTLS_AGENT_KEY_RSA, NID_undef, NID_sha384,
	 48, SIG_PAD_PKCS1},
	{MTLS_AGENT_RSA_PKCS1_SHA512, "rsa_pkcs1_sha512", MTLS_AGENT_KEY_RSA, NID_undef, NID_sha512,
	 64, SIG_PAD_PKCS1},
	{MTLS_AGENT_ED25519, "ed25519", MTLS_AGENT_KEY_ED25519, NID_undef, NID_undef, 0,
	 SIG_PAD_NONE},
};

const struct scheme *scheme_at(size_t i)
{
	return i < sizeof(schemes) / sizeof(schemes[0]) ? &schemes[i] : NULL;
}

const struct scheme *scheme_by_code(uint16_t code)
{
	const struct scheme *s;
	size_t i;

	for (i = 0; (s = scheme_at(i)) != NULL; i++)
		if (s->code == code)
			return s;
	return NULL;
}

const struct scheme *scheme_by_name(const char *name)
{
	const struct scheme *s;
	size_t i;

	for (i = 0; (s = scheme_at(i)) != NULL; i++)
		if (strcmp(s->name, name) == 0)
			return s;
	return NULL;
}

const struct scheme *scheme_for_digest(int key_type, int pad, int hash_nid, size_t hash_len)
{
	const struct scheme *s;
	size_t i;

	for (i = 0; (s = scheme_at(i)) != NULL; i++)
		if (s->key_type == key_type && s->pad == pad && s->hash_len != 0 &&
		    (hash_nid != NID_undef ? s->hash_nid == hash_nid : s->hash_len == hash_len))
			return s;
	return NULL;
}

const char *mtls_agent_scheme_name(uint16_t code)
{
	const struct scheme *s = scheme_by_code(code);

	return s != NULL ? s->name : NULL;
}

uint16_t mtls_agent_scheme_from_name(const char *name)
{
	const struct scheme *s = name != NULL ? scheme_by_name(name) : NULL;

	return s != NULL ? s->code : 0;
}

int scheme_fits_key(const struct scheme *s, int key_type, unsigned key_bits)
{
	if (s->key_type != key_type)
		return 0;
	if (s->key_type == MTLS_AGENT_KEY_RSA) {
		if (key_bits < 2048)
			return 0;
		/* EMSA-PSS with salt = hash length: emLen >= 2*hLen + 2. */
		if (s->pad == SIG_PAD_PSS && (key_bits + 7) / 8 < 2 * s->hash_len + 2)
			return 0;
	}
	return 1;
}

/*
 * Digest implementations fetched once: an implicit fetch per signature costs
 * measurable time on the agent's hot path.
 */
static EVP_MD *fetched_md[3];
static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;

static void fetch_digests(void)
{
	fetched_md[0] = EVP_MD_fetch(NULL, "SHA256", NULL);
	fetched_md[1] = EVP_MD_fetch(NULL, "SHA384", NULL);
	fetched_md[2] = EVP_MD_fetch(NULL, "SHA512", NULL);
}

int scheme_hash(const struct scheme *s, const uint8_t *msg, size_t len, uint8_t *out)
{
	unsigned int outlen = 0;
	const EVP_MD *md;

	pthread_once(&fetch_once, fetch_digests);
	switch (s->hash_nid) {
	case NID_sha256:
		md = fetched_md[0];
		break;
	case NID_sha384:
		md = fetched_md[1];
		break;
	case NID_sha512:
		md = fetched_md[2];
		break;
	default:
		return -1;
	}
	if (md == NULL || EVP_Digest(msg, len, out, &outlen, md, NULL) != 1 ||
	    outlen != s->hash_len)
		return -1;
	return 0;
}
