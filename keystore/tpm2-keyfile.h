/*
 * TSS2 PRIVATE KEY files, the format of tpm2-tss-engine and tpm2-openssl: one
 * PEM block per key, each a DER TPMKey (a TPM2B_PUBLIC, a TPM2B_PRIVATE and
 * the parent's handle). Encoding and decoding only, no TPM, so that the
 * parser is unit-tested without one (tests/unit/test_tpm2_keyfile.c); the
 * tpm2 keystore (ks-tpm2.c) reads and writes the files.
 */
#ifndef MTLS_TPM2_KEYFILE_H
#define MTLS_TPM2_KEYFILE_H

#include <stddef.h>
#include <stdint.h>

#include <tss2/tss2_tpm2_types.h>

#define TPM2_KEYFILE_LABEL "TSS2 PRIVATE KEY"
#define TPM2_KEYFILE_MAX_BLOCKS 16 /* blocks read from one key file */

/* One key as the TPM needs it. */
struct tpm_blob {
	TPM2_HANDLE parent; /* TPM2_RH_OWNER: the template SRK; else a persistent handle */
	TPM2B_PUBLIC pub;
	TPM2B_PRIVATE priv;
};

/*
 * Decodes the contents of a key file (name: its path, for messages) into
 * *blobs (a new array the caller wipes and frees; NULL when *n is 0) and *n.
 * Empty data holds no keys, which is not an error. Blocks other than
 * TSS2 PRIVATE KEY, keys with a password (emptyAuth not TRUE), a policy or
 * an import secret, parents other than the owner hierarchy or a persistent
 * handle, more than TPM2_KEYFILE_MAX_BLOCKS blocks and malformed PEM are
 * refused. Returns 0, or MTLS_AGENT_ERR_KEYSTORE or _NOMEM with one line in
 * err.
 */
int tpm2_keyfile_decode(const uint8_t *data, size_t len, const char *name, struct tpm_blob **blobs,
			size_t *n, char *err, size_t errlen);

/*
 * The PEM text of blobs, in their order (emptyAuth TRUE: tpm2-openssl asks
 * for a password otherwise): *pem is a new NUL-terminated string of *len
 * bytes the caller frees. Returns 0 or an MTLS_AGENT_ERR_* code with err set.
 */
int tpm2_keyfile_encode(const struct tpm_blob *blobs, size_t n, const char *name, char **pem,
			size_t *len, char *err, size_t errlen);

#endif
