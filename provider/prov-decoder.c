/*
 * Decoders for key reference files (PEM label "MTLS AGENT KEY" around the
 * DER of common/keyref.h): an application that reads its private key from a
 * file, such as curl --key or mosquitto_pub --key, gets the agent's key.
 *
 * Two steps, as OpenSSL 3.0 chains its own: "DER" with input=pem turns our
 * PEM block into DER with the structure name MtlsAgentKey (OpenSSL's PEM
 * decoder passes over labels it does not know), then "EC"/"RSA"/"ED25519" with
 * input=der,structure=MtlsAgentKey turn that DER into a key reference. A
 * decoder named "DER" is added by OpenSSL to every chain that has DER-input
 * decoders, ahead of the file store's catch-all, which is what makes both
 * SSL_CTX_use_PrivateKey_file() and `openssl pkey -in FILE` find it.
 *
 * While the agent runs, the identity's current public key comes from the
 * agent, so one file keeps working across key rotations; when it does not,
 * the file's own public key is used and only signing needs the agent.
 *
 * These decoders see every key file an application loads: anything that is
 * not a key reference is passed over quickly and silently ("empty handed").
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "common/keyref.h"
#include "provider/prov.h"

/* Key reference files are a few hundred bytes; anything far larger is something else. */
#define KEYREF_MAX_INPUT (64u * 1024u)
#define KEYREF_STRUCTURE "MtlsAgentKey"

static const char pem_begin[] = "-----BEGIN ";
static const char pem_begin_ours[] = "-----BEGIN " KEYREF_PEM_LABEL "-----";
static const char pem_end[] = "-----END ";

struct decctx {
	struct mtlsa_prov *prov;
	int key_type; /* DER to key: MTLS_AGENT_KEY_EC, _RSA or _ED25519; PEM to DER: 0 */
};

static void *dec_newctx(void *provctx, int key_type)
{
	struct decctx *ctx = calloc(1, sizeof(*ctx));

	if (ctx == NULL) {
		MTLSA_RAISE(provctx, MTLSA_R_OUT_OF_MEMORY, "no memory for a decoder");
		return NULL;
	}
	ctx->prov = provctx;
	ctx->key_type = key_type;
	return ctx;
}

static void *dec_pem_newctx(void *provctx)
{
	return dec_newctx(provctx, 0);
}

static void *dec_ec_newctx(void *provctx)
{
	return dec_newctx(provctx, MTLS_AGENT_KEY_EC);
}

static void *dec_rsa_newctx(void *provctx)
{
	return dec_newctx(provctx, MTLS_AGENT_KEY_RSA);
}

static void *dec_ed25519_newctx(void *provctx)
{
	return dec_newctx(provctx, MTLS_AGENT_KEY_ED25519);
}

static void dec_freectx(void *vctx)
{
	free(vctx);
}

static int dec_does_selection(void *provctx, int selection)
{
	(void)provctx;
	return selection == 0 || (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0;
}

/* --- PEM to DER ------------------------------------------------------------------------ */

/*
 * Reads the next PEM block, line by line, so the input stays positioned after
 * it (a file may hold more objects). Returns 1 with *text (NUL-terminated) when
 * the block is ours, 0 otherwise (not PEM, another label, too long, cut short).
 */
static int read_our_pem(struct decctx *ctx, OSSL_CORE_BIO *cin, char **text, size_t *text_len)
{
	char line[256], *buf = NULL;
	size_t n = 0, scanned = 0, l;
	int got, in_block = 0, at_bol = 1, done = 0;

	*text = NULL;
	*text_len = 0;
	while (!done && scanned < KEYREF_MAX_INPUT &&
	       (got = ctx->prov->bio_gets(cin, line, (int)sizeof(line))) > 0) {
		l = (size_t)got;
		scanned += l;
		if (at_bol && !in_block && l >= sizeof(pem_begin) - 1 &&
		    memcmp(line, pem_begin, sizeof(pem_begin) - 1) == 0) {
			/* One PEM object per attempt, as OpenSSL's own PEM decoder does. */
			if (l < sizeof(pem_begin_ours) - 1 ||
			    memcmp(line, pem_begin_ours, sizeof(pem_begin_ours) - 1) != 0)
				break;
			in_block = 1;
			if ((buf = malloc(KEYREF_MAX_INPUT + 1)) == NULL)
				break;
		}
		if (in_block) {
			if (l > KEYREF_MAX_INPUT - n)
				break;
			memcpy(buf + n, line, l);
			n += l;
			done = at_bol && l >= sizeof(pem_end) - 1 &&
			       memcmp(line, pem_end, sizeof(pem_end) - 1) == 0;
		}
		at_bol = line[l - 1] == '\n';
	}
	if (!done) {
		free(buf);
		return 0;
	}
	buf[n] = '\0';
	*text = buf;
	*text_len = n;
	return 1;
}

static int dec_pem2der_decode(void *vctx, OSSL_CORE_BIO *cin, int selection, OSSL_CALLBACK *data_cb,
			      void *data_cbarg, OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
	struct decctx *ctx = vctx;
	char *text = NULL, *name = NULL, *header = NULL;
	unsigned char *der = NULL;
	long der_len = 0;
	size_t text_len = 0;
	OSSL_PARAM params[4];
	BIO *mem = NULL;
	int type, ok = 1; /* 1 with nothing passed on: not ours */

	(void)pw_cb;
	(void)pw_cbarg;
	if (selection != 0 && (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) == 0)
		return 1;
	if (!read_our_pem(ctx, cin, &text, &text_len))
		return 1;
	ERR_set_mark();
	if ((mem = BIO_new_mem_buf(text, (int)text_len)) == NULL ||
	    PEM_read_bio(mem, &name, &header, &der, &der_len) != 1 ||
	    strcmp(name, KEYREF_PEM_LABEL) != 0 || header[0] != '\0') {
		ERR_pop_to_mark();
		mtlsa_debug("a " KEYREF_PEM_LABEL " block that is not valid PEM: ignored");
		goto out;
	}
	ERR_pop_to_mark();
	type = OSSL_OBJECT_PKEY;
	params[0] = OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type);
	params[1] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_STRUCTURE,
						     KEYREF_STRUCTURE, 0);
	params[2] = OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_DATA, der, (size_t)der_len);
	params[3] = OSSL_PARAM_construct_end();
	ok = data_cb(params, data_cbarg);
out:
	BIO_free(mem);
	OPENSSL_free(name);
	OPENSSL_free(header);
	OPENSSL_free(der);
	free(text);
	return ok;
}

/* --- DER to key ------------------------------------------------------------------------- */

/*
 * Cheap test for the DER of a key reference, SEQUENCE { INTEGER 1, UTF8String,
 * ... } filling the whole input, so other DER never reaches the parser.
 */
static int looks_like_keyref_der(const uint8_t *p, size_t len)
{
	size_t hdr, body;

	if (len < 6 || p[0] != 0x30)
		return 0;
	if (p[1] < 0x80) {
		hdr = 2;
		body = p[1];
	} else if (p[1] == 0x81) {
		hdr = 3;
		body = p[2];
	} else if (p[1] == 0x82) {
		hdr = 4;
		body = ((size_t)p[2] << 8) | p[3];
	} else {
		return 0;
	}
	return len >= hdr + 4 && body == len - hdr && p[hdr] == 0x02 && p[hdr + 1] == 0x01 &&
	       p[hdr + 2] == 0x01 && p[hdr + 3] == 0x0c;
}

/* Reads all of the input, up to KEYREF_MAX_INPUT + 1 bytes. */
static int read_all(struct decctx *ctx, OSSL_CORE_BIO *cin, uint8_t **data, size_t *len)
{
	size_t cap = KEYREF_MAX_INPUT + 1, n = 0, got;
	uint8_t *buf;

	*data = NULL;
	*len = 0;
	if ((buf = malloc(cap)) == NULL) {
		MTLSA_RAISE(ctx->prov, MTLSA_R_OUT_OF_MEMORY, "no memory for the input");
		return 0;
	}
	while (n < cap && ctx->prov->bio_read_ex(cin, buf + n, cap - n, &got) && got > 0)
		n += got;
	*data = buf;
	*len = n;
	return 1;
}

/* Whether key->spki is the DER OpenSSL writes for key->pub. */
static int spki_is_canonical(const struct mtlsa_key *key)
{
	unsigned char *der = NULL;
	int len, same;

	ERR_set_mark();
	len = i2d_PUBKEY(key->pub, &der);
	ERR_pop_to_mark();
	same = len > 0 && (size_t)len == key->spki_len &&
	       memcmp(der, key->spki, key->spki_len) == 0;
	OPENSSL_free(der);
	return same;
}

static int dec_der2key_decode(void *vctx, OSSL_CORE_BIO *cin, int selection, OSSL_CALLBACK *data_cb,
			      void *data_cbarg, OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
	struct decctx *ctx = vctx;
	struct mtlsa_key *key = NULL, *current = NULL;
	uint8_t *data = NULL, *spki = NULL;
	size_t len = 0, spki_len = 0;
	char *name = NULL;
	OSSL_PARAM params[4];
	int type, r, ok = 1; /* 1 with no object: not ours, let other decoders try */

	(void)pw_cb;
	(void)pw_cbarg;
	if (selection != 0 && (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) == 0)
		return 1;
	if (!read_all(ctx, cin, &data, &len))
		return 0;
	if (len > KEYREF_MAX_INPUT || !looks_like_keyref_der(data, len))
		goto out;
	ERR_set_mark();
	r = keyref_decode(data, len, &name, &spki, &spki_len);
	ERR_pop_to_mark();
	if (r != 0) {
		MTLSA_RAISE(ctx->prov, MTLSA_R_BAD_KEYREF, "key reference cannot be read: %s",
			    mtls_agent_strerror(r));
		ok = 0;
		goto out;
	}
	if ((key = mtlsa_key_new(ctx->prov, name, spki, spki_len)) == NULL) {
		ok = 0;
		goto out;
	}
	/* Another of our decoders (EC, RSA or ED25519) takes it. */
	if (key->type != ctx->key_type)
		goto out;
	/*
	 * The SPKI's hash selects the key generation at SIGN time and the agent
	 * hashes the DER it holds, which is canonical: a file whose public key
	 * decodes but re-encodes differently (found by fuzzing: a BIT STRING with
	 * unused bits) would load, then fail every signature as "key gone".
	 */
	if (!spki_is_canonical(key)) {
		MTLSA_RAISE(ctx->prov, MTLSA_R_BAD_KEYREF,
			    "key reference \"%s\": its public key is not canonical DER", name);
		ok = 0;
		goto out;
	}

	if (mtlsa_key_from_agent(ctx->prov, name, 0, &current, NULL) == 0) {
		if (current->spki_len != key->spki_len ||
		    memcmp(current->spki, key->spki, key->spki_len) != 0)
			mtlsa_debug("\"%s\": the agent's current key is not the one in the key "
				    "reference file; using the current one",
				    name);
		mtlsa_key_free(key);
		key = current;
	} else {
		mtlsa_debug("\"%s\": using the key reference file's public key", name);
	}

	type = OSSL_OBJECT_PKEY;
	params[0] = OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type);
	params[1] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE,
						     (char *)mtlsa_key_type_name(key), 0);
	params[2] =
		OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &key, sizeof(key));
	params[3] = OSSL_PARAM_construct_end();
	ok = data_cb(params, data_cbarg);
	mtlsa_debug("\"%s\": %s key (%d bits) %s", name, mtlsa_key_type_name(key), key->bits,
		    ok ? "loaded" : "not taken");
out:
	mtlsa_key_free(key);
	free(spki);
	free(name);
	free(data);
	return ok;
}

/*
 * Our keys cannot be exported to another provider's key management: that
 * would make them public-only keys there.
 */
static int dec_export_object(void *vctx, const void *objref, size_t objref_sz,
			     OSSL_CALLBACK *export_cb, void *export_cbarg)
{
	(void)vctx;
	(void)objref;
	(void)objref_sz;
	(void)export_cb;
	(void)export_cbarg;
	return 0;
}

const OSSL_DISPATCH mtlsa_decoder_pem2der_functions[] = {
	{OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))dec_pem_newctx},
	{OSSL_FUNC_DECODER_FREECTX, (void (*)(void))dec_freectx},
	{OSSL_FUNC_DECODER_DOES_SELECTION, (void (*)(void))dec_does_selection},
	{OSSL_FUNC_DECODER_DECODE, (void (*)(void))dec_pem2der_decode},
	{0, NULL},
};

const OSSL_DISPATCH mtlsa_decoder_ec_functions[] = {
	{OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))dec_ec_newctx},
	{OSSL_FUNC_DECODER_FREECTX, (void (*)(void))dec_freectx},
	{OSSL_FUNC_DECODER_DOES_SELECTION, (void (*)(void))dec_does_selection},
	{OSSL_FUNC_DECODER_DECODE, (void (*)(void))dec_der2key_decode},
	{OSSL_FUNC_DECODER_EXPORT_OBJECT, (void (*)(void))dec_export_object},
	{0, NULL},
};

const OSSL_DISPATCH mtlsa_decoder_rsa_functions[] = {
	{OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))dec_rsa_newctx},
	{OSSL_FUNC_DECODER_FREECTX, (void (*)(void))dec_freectx},
	{OSSL_FUNC_DECODER_DOES_SELECTION, (void (*)(void))dec_does_selection},
	{OSSL_FUNC_DECODER_DECODE, (void (*)(void))dec_der2key_decode},
	{OSSL_FUNC_DECODER_EXPORT_OBJECT, (void (*)(void))dec_export_object},
	{0, NULL},
};

const OSSL_DISPATCH mtlsa_decoder_ed25519_functions[] = {
	{OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))dec_ed25519_newctx},
	{OSSL_FUNC_DECODER_FREECTX, (void (*)(void))dec_freectx},
	{OSSL_FUNC_DECODER_DOES_SELECTION, (void (*)(void))dec_does_selection},
	{OSSL_FUNC_DECODER_DECODE, (void (*)(void))dec_der2key_decode},
	{OSSL_FUNC_DECODER_EXPORT_OBJECT, (void (*)(void))dec_export_object},
	{0, NULL},
};
