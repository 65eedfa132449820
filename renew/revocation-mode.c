/* revocation-check's modes by name: apart from the OCSP and CRL client so that the
 * configuration reader (and with it mtls-agentctl check) links without libcurl. */
#include "config.h"

#include <string.h>

#include "renew/revocation.h"

static const char *const mode_names[] = {"auto", "ocsp", "crl", "off"};

int rev_mode_from_name(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(mode_names) / sizeof(mode_names[0]); i++)
		if (strcmp(name, mode_names[i]) == 0)
			return (int)i;
	return -1;
}
