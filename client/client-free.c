/*
 * libmtls-agent: freeing the records its calls return. Apart from client.c
 * (the connection and the requests) so that code which only hands identity
 * records around, such as the agent's in-daemon provider transport, links
 * this without the socket code.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "client/client-internal.h"

void mtls_agent_chain_free(struct mtls_agent_cert *chain, size_t chain_len)
{
	size_t i;

	if (chain == NULL)
		return;
	for (i = 0; i < chain_len; i++)
		free(chain[i].der);
	free(chain);
}

void mtlsc_identity_clear(struct mtls_agent_identity *id)
{
	free(id->name);
	free(id->spki);
	free(id->schemes);
	mtls_agent_chain_free(id->chain, id->chain_len);
	memset(id, 0, sizeof(*id));
}

void mtls_agent_identity_free(struct mtls_agent_identity *id)
{
	if (id == NULL)
		return;
	mtlsc_identity_clear(id);
	free(id);
}

void mtls_agent_identities_free(struct mtls_agent_identity *ids, size_t n_ids)
{
	size_t i;

	if (ids == NULL)
		return;
	for (i = 0; i < n_ids; i++)
		mtlsc_identity_clear(&ids[i]);
	free(ids);
}
