/* Key type names (keygen --type, key-type =, KEYGEN): common/keytype.h. */
#include "config.h"

#include <string.h>

#include "common/keytype.h"

int ks_keygen_type_from_name(const char *name)
{
	static const struct {
		const char *name;
		int type;
	} types[] = {
		{"ec-p256", KS_GEN_EC_P256},   {"ec-p384", KS_GEN_EC_P384},
		{"rsa-2048", KS_GEN_RSA_2048}, {"rsa-3072", KS_GEN_RSA_3072},
		{"rsa-4096", KS_GEN_RSA_4096}, {"ed25519", KS_GEN_ED25519},
	};
	size_t i;

	for (i = 0; name != NULL && i < sizeof(types) / sizeof(types[0]); i++)
		if (strcmp(types[i].name, name) == 0)
			return types[i].type;
	return 0;
}
