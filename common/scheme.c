#include "config.h"

#include <pthread.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <p11-kit/pkcs11.h>

#include "common/scheme.h"
#include "mtls-agent/client.h"

/*
 * The digests. DigestInfo prefixes are RFC 8017 section 9.2 note 1; the
 * AlgorithmIdentifiers are RFC 5758 (ecdsa-with-SHA256/384/512, no parameters) and
 * RFC 8017 appendix A.2.4 (sha256/384/512WithRSAEncryption, NULL parameters).
 */
static const struct scheme_md mds[SCHEME_N_HASHES] = {
	{SCHEME_SHA256,
	 "SHA256",
	 {"SHA256", "SHA2-256", "SHA-256", "2.16.840.1.101.3.4.2.1", NULL},
	 NID_sha256,
	 32,
	 CKM_SHA256,
	 CKG_MGF1_SHA256,
	 {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
	  0x05, 0x00, 0x04, 0x20},
	 {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02},
	 {0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05,
	  0x00}},
	{SCHEME_SHA384,
	 "SHA384",
	 {"SHA384", "SHA2-384", "SHA-384", "2.16.840.1.101.3.4.2.2", NULL},
	 NID_sha384,
	 48,
	 CKM_SHA384,
	 CKG_MGF1_SHA384,
	 {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
	  0x05, 0x00, 0x04, 0x30},
	 {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03},
	 {0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c, 0x05,
	  0x00}},
	{SCHEME_SHA512,
	 "SHA512",
	 {"SHA512", "SHA2-512", "SHA-512", "2.16.840.1.101.3.4.2.3", NULL},
	 NID_sha512,
	 64,
	 CKM_SHA512,
	 CKG_MGF1_SHA512,
	 {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
	  0x05, 0x00, 0x04, 0x40},
	 {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04},
	 {0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d, 0x05,
	  0x00}},
};

#define MD256 &mds[SCHEME_SHA256]
#define MD384 &mds[SCHEME_SHA384]
#define MD512 &mds[SCHEME_SHA512]
#define CKM(x) x, #x

/* Order matters to scheme_for_digest(): the first row that fits is taken. */
static const struct scheme schemes[] = {
	{MTLS_AGENT_ECDSA_SECP256R1_SHA256, "ecdsa_secp256r1_sha256", MTLS_AGENT_KEY_EC,
	 NID_X9_62_prime256v1, NID_sha256, 32, SIG_PAD_NONE, MD256, CKM(CKM_ECDSA_SHA256),
	 CKM(CKM_ECDSA)},
	{MTLS_AGENT_ECDSA_SECP384R1_SHA384, "ecdsa_secp384r1_sha384", MTLS_AGENT_KEY_EC,
	 NID_secp384r1, NID_sha384, 48, SIG_PAD_NONE, MD384, CKM(CKM_ECDSA_SHA384), CKM(CKM_ECDSA)},
	{MTLS_AGENT_ECDSA_SECP521R1_SHA512, "ecdsa_secp521r1_sha512", MTLS_AGENT_KEY_EC,
	 NID_secp521r1, NID_sha512, 64, SIG_PAD_NONE, MD512, CKM(CKM_ECDSA_SHA512), CKM(CKM_ECDSA)},
	{MTLS_AGENT_RSA_PSS_RSAE_SHA256, "rsa_pss_rsae_sha256", MTLS_AGENT_KEY_RSA, NID_undef,
	 NID_sha256, 32, SIG_PAD_PSS, MD256, CKM(CKM_SHA256_RSA_PKCS_PSS), CKM(CKM_RSA_PKCS_PSS)},
	{MTLS_AGENT_RSA_PSS_RSAE_SHA384, "rsa_pss_rsae_sha384", MTLS_AGENT_KEY_RSA, NID_undef,
	 NID_sha384, 48, SIG_PAD_PSS, MD384, CKM(CKM_SHA384_RSA_PKCS_PSS), CKM(CKM_RSA_PKCS_PSS)},
	{MTLS_AGENT_RSA_PSS_RSAE_SHA512, "rsa_pss_rsae_sha512", MTLS_AGENT_KEY_RSA, NID_undef,
	 NID_sha512, 64, SIG_PAD_PSS, MD512, CKM(CKM_SHA512_RSA_PKCS_PSS), CKM(CKM_RSA_PKCS_PSS)},
	{MTLS_AGENT_RSA_PKCS1_SHA256, "rsa_pkcs1_sha256", MTLS_AGENT_KEY_RSA, NID_undef, NID_sha256,
	 32, SIG_PAD_PKCS1, MD256, CKM(CKM_SHA256_RSA_PKCS), CKM(CKM_RSA_PKCS)},
	{MTLS_AGENT_RSA_PKCS1_SHA384, "rsa_pkcs1_sha384", MTLS_AGENT_KEY_RSA, NID_undef, NID_sha384,
	 48, SIG_PAD_PKCS1, MD384, CKM(CKM_SHA384_RSA_PKCS), CKM(CKM_RSA_PKCS)},
	{MTLS_AGENT_RSA_PKCS1_SHA512, "rsa_pkcs1_sha512", MTLS_AGENT_KEY_RSA, NID_undef, NID_sha512,
	 64, SIG_PAD_PKCS1, MD512, CKM(CKM_SHA512_RSA_PKCS), CKM(CKM_RSA_PKCS)},
	{MTLS_AGENT_ED25519, "ed25519", MTLS_AGENT_KEY_ED25519, NID_undef, NID_undef, 0,
	 SIG_PAD_NONE, NULL, CKM(CKM_EDDSA), CKM(CKM_EDDSA)},
};

const struct scheme_md *scheme_md_at(size_t i)
{
	return i < SCHEME_N_HASHES ? &mds[i] : NULL;
}

const struct scheme_md *scheme_md_by_name(const char *name)
{
	size_t i, j;

	for (i = 0; name != NULL && i < SCHEME_N_HASHES; i++)
		for (j = 0; mds[i].aliases[j] != NULL; j++)
			if (strcasecmp(name, mds[i].aliases[j]) == 0)
				return &mds[i];
	return NULL;
}

const struct scheme_md *scheme_md_by_nid(int nid)
{
	size_t i;

	for (i = 0; nid != NID_undef && i < SCHEME_N_HASHES; i++)
		if (mds[i].nid == nid)
			return &mds[i];
	return NULL;
}

const struct scheme_md *scheme_md_by_len(size_t len)
{
	size_t i;

	for (i = 0; i < SCHEME_N_HASHES; i++)
		if (mds[i].len == len)
			return &mds[i];
	return NULL;
}

const struct scheme_md *scheme_md_by_ckm(unsigned long ckm)
{
	size_t i;

	for (i = 0; i < SCHEME_N_HASHES; i++)
		if (mds[i].ckm == ckm)
			return &mds[i];
	return NULL;
}

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

const struct scheme *scheme_by_ckm(unsigned long ckm)
{
	const struct scheme *s;
	size_t i;

	for (i = 0; (s = scheme_at(i)) != NULL; i++)
		if (s->ckm == ckm)
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
static EVP_MD *fetched_md[SCHEME_N_HASHES];
static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;

static void fetch_digests(void)
{
	size_t i;

	for (i = 0; i < SCHEME_N_HASHES; i++)
		fetched_md[i] = EVP_MD_fetch(NULL, mds[i].name, NULL);
}

int scheme_hash(const struct scheme *s, const uint8_t *msg, size_t len, uint8_t *out)
{
	unsigned int outlen = 0;
	const EVP_MD *md;

	if (s->md == NULL)
		return -1;
	pthread_once(&fetch_once, fetch_digests);
	md = fetched_md[s->md->id];
	if (md == NULL || EVP_Digest(msg, len, out, &outlen, md, NULL) != 1 ||
	    outlen != s->hash_len)
		return -1;
	return 0;
}
