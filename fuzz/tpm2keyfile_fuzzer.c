/*
 * Fuzz target: the TSS2 PRIVATE KEY file codec (keystore/tpm2-keyfile.c),
 * which the tpm2 keystore runs on key files that tpm2-openssl, tpm2-tss-engine
 * or an administrator put in place.
 *
 * Input starting with 0x30 (a DER SEQUENCE) is taken as one DER TPMKey and
 * wrapped into a TSS2 PRIVATE KEY PEM block here, so that the fuzzer works on
 * the DER parser directly; anything else is the file's text as it is.
 *
 * What the decoder accepts must survive a round trip: encoding the keys and
 * decoding that text gives the same keys (parent, TPM2B_PUBLIC and
 * TPM2B_PRIVATE as marshalled), and encoding those again gives the same text.
 * A key the decoder accepts but the encoder cannot write (the keystore
 * rewrites key files on keygen) is an asymmetry and aborts too.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/pem.h>

#include <tss2/tss2_mu.h>

#include "keystore/tpm2-keyfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

/* The DER input as a PEM block: a new buffer in *out (free it), or -1. */
static int wrap_der(const uint8_t *der, size_t len, uint8_t **out, size_t *outlen)
{
	BIO *bio;
	char *p;
	long n;
	int ret = -1;

	*out = NULL;
	if (len > 1 << 20 || (bio = BIO_new(BIO_s_mem())) == NULL)
		return -1;
	if (PEM_write_bio(bio, TPM2_KEYFILE_LABEL, "", der, (long)len) > 0 &&
	    (n = BIO_get_mem_data(bio, &p)) > 0 && (*out = malloc((size_t)n)) != NULL) {
		memcpy(*out, p, (size_t)n);
		*outlen = (size_t)n;
		ret = 0;
	}
	BIO_free(bio);
	return ret;
}

/* The same key: parent, and the public and private parts as the TPM gets them. */
static int same_key(const struct tpm_blob *a, const struct tpm_blob *b)
{
	uint8_t pa[sizeof(TPM2B_PUBLIC)], pb[sizeof(TPM2B_PUBLIC)];
	uint8_t sa[sizeof(TPM2B_PRIVATE)], sb[sizeof(TPM2B_PRIVATE)];
	size_t la = 0, lb = 0, ka = 0, kb = 0;

	if (Tss2_MU_TPM2B_PUBLIC_Marshal(&a->pub, pa, sizeof(pa), &la) != 0 ||
	    Tss2_MU_TPM2B_PUBLIC_Marshal(&b->pub, pb, sizeof(pb), &lb) != 0 ||
	    Tss2_MU_TPM2B_PRIVATE_Marshal(&a->priv, sa, sizeof(sa), &ka) != 0 ||
	    Tss2_MU_TPM2B_PRIVATE_Marshal(&b->priv, sb, sizeof(sb), &kb) != 0)
		return 0;
	return a->parent == b->parent && la == lb && memcmp(pa, pb, la) == 0 && ka == kb &&
	       memcmp(sa, sb, ka) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tpm_blob *blobs = NULL, *blobs2 = NULL;
	size_t n = 0, n2 = 0, i, inlen = size, pemlen = 0, pem2len = 0;
	char err[512], *pem = NULL, *pem2 = NULL;
	uint8_t *in = NULL;
	int r;

	if (size > 0 && data[0] == 0x30) {
		if (wrap_der(data, size, &in, &inlen) != 0)
			return 0;
	} else {
		/* A copy of exactly size bytes, so ASan sees any read past the end. */
		if ((in = malloc(size > 0 ? size : 1)) == NULL)
			return 0;
		memcpy(in, data, size);
	}
	err[0] = '\0';
	r = tpm2_keyfile_decode(in, inlen, "fuzz.pem", &blobs, &n, err, sizeof(err));
	if (r != 0) {
		/* Refused: nothing handed out, and one line saying why. */
		if (blobs != NULL || n != 0 || err[0] == '\0' || strlen(err) >= sizeof(err))
			abort();
		goto out;
	}
	if (n == 0) {
		if (blobs != NULL || inlen != 0)
			abort();
		goto out;
	}
	if (blobs == NULL || n > TPM2_KEYFILE_MAX_BLOCKS)
		abort();
	for (i = 0; i < n; i++)
		if (blobs[i].priv.size == 0 ||
		    (blobs[i].parent != TPM2_RH_OWNER &&
		     (blobs[i].parent >> TPM2_HR_SHIFT) != TPM2_HT_PERSISTENT))
			abort();
	if (tpm2_keyfile_encode(blobs, n, "fuzz.pem", &pem, &pemlen, err, sizeof(err)) != 0 ||
	    pem == NULL || strlen(pem) != pemlen)
		abort();
	if (tpm2_keyfile_decode((const uint8_t *)pem, pemlen, "fuzz.pem", &blobs2, &n2, err,
				sizeof(err)) != 0 ||
	    n2 != n)
		abort();
	for (i = 0; i < n; i++)
		if (!same_key(&blobs[i], &blobs2[i]))
			abort();
	if (tpm2_keyfile_encode(blobs2, n2, "fuzz.pem", &pem2, &pem2len, err, sizeof(err)) != 0 ||
	    pem2len != pemlen || memcmp(pem, pem2, pemlen) != 0)
		abort();
out:
	free(blobs);
	free(blobs2);
	free(pem);
	free(pem2);
	free(in);
	return 0;
}
