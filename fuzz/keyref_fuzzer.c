/*
 * Fuzz target: the key-reference parser (common/keyref.c), PEM or DER, as
 * the provider's decoder and the engine feed it from files applications
 * name. A decoded reference must re-encode and decode to the same identity
 * and public key.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "common/keyref.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *identity = NULL, *identity2 = NULL, *pem = NULL;
	uint8_t *spki = NULL, *spki2 = NULL, *copy;
	size_t spki_len = 0, spki2_len = 0, pem_len = 0;

	if ((copy = malloc(size > 0 ? size : 1)) == NULL)
		return 0;
	memcpy(copy, data, size);
	(void)keyref_is_pem(copy, size);
	if (keyref_decode(copy, size, &identity, &spki, &spki_len) == 0) {
		if (identity == NULL || spki == NULL)
			abort();
		if (keyref_encode_pem(identity, spki, spki_len, &pem, &pem_len) == 0) {
			if (keyref_decode((const uint8_t *)pem, pem_len, &identity2, &spki2,
					  &spki2_len) != 0 ||
			    strcmp(identity, identity2) != 0 || spki_len != spki2_len ||
			    memcmp(spki, spki2, spki_len) != 0)
				abort();
		}
	}
	free(identity);
	free(identity2);
	free(spki);
	free(spki2);
	free(pem);
	free(copy);
	return 0;
}
