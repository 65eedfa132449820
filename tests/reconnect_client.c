/*
 * One client handle across an agent restart:
 *   reconnect_client SOCKET IDENTITY GO_FILE
 * signs, prints "signed 1", waits (at most 60 s) until GO_FILE exists (the
 * test restarts the agent meanwhile), signs again on the same handle and
 * verifies both signatures with the identity's public key.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "mtls-agent/client.h"

static int sign_and_verify(mtls_agent *a, const char *name)
{
	struct mtls_agent_identity *id = NULL;
	uint8_t m[64 + 33 + 1 + 32], *sig = NULL;
	size_t sig_len = 0;
	const unsigned char *p;
	EVP_PKEY *pub = NULL;
	EVP_MD_CTX *ctx = NULL;
	int ok = 0;

	memset(m, 0x20, 64);
	memcpy(m + 64, "TLS 1.3, client CertificateVerify", 33);
	m[97] = 0;
	memset(m + 98, 0x77, 32);
	if (mtls_agent_sign(a, name, MTLS_AGENT_ECDSA_SECP256R1_SHA256, 0, NULL, m, sizeof(m), &sig,
			    &sig_len) != 0 ||
	    mtls_agent_get_identity(a, name, &id) != 0) {
		fprintf(stderr, "reconnect_client: %s\n", mtls_agent_last_error());
		goto out;
	}
	p = id->spki;
	if ((pub = d2i_PUBKEY(NULL, &p, (long)id->spki_len)) == NULL ||
	    (ctx = EVP_MD_CTX_new()) == NULL ||
	    EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pub) != 1)
		goto out;
	ok = EVP_DigestVerify(ctx, sig, sig_len, m, sizeof(m)) == 1;
	if (!ok)
		fprintf(stderr, "reconnect_client: signature does not verify\n");
out:
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(pub);
	free(sig);
	mtls_agent_identity_free(id);
	return ok;
}

int main(int argc, char **argv)
{
	mtls_agent *a = NULL;
	int i, ok;

	if (argc != 4) {
		fprintf(stderr, "usage: reconnect_client SOCKET IDENTITY GO_FILE\n");
		return 2;
	}
	if (mtls_agent_connect(argv[1], &a) != 0) {
		fprintf(stderr, "reconnect_client: %s\n", mtls_agent_last_error());
		return 1;
	}
	if (!sign_and_verify(a, argv[2]))
		return 1;
	printf("signed 1\n");
	fflush(stdout);
	for (i = 0; i < 600 && access(argv[3], F_OK) != 0; i++)
		usleep(100000);
	if (i == 600) {
		fprintf(stderr, "reconnect_client: %s never appeared\n", argv[3]);
		return 1;
	}
	ok = sign_and_verify(a, argv[2]);
	mtls_agent_close(a);
	if (!ok)
		return 1;
	printf("signed 2\n");
	return 0;
}
