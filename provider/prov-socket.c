/*
 * OpenSSL 3 provider "mtlsagent": the application module's entry point and its
 * transport, the agent's Unix socket (libmtls-agent). Only the module links
 * this file: the daemon uses the same provider code with its in-daemon
 * transport (renew/renew-prov.c) and holds no connect code or entry point.
 *
 * Load it after the default provider (openssl.cnf: activate `default`, then
 * `mtlsagent`): libssl asks "which provider's EC key management comes first"
 * to decide which TLS groups are usable, and ours must not be the answer.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "provider/prov.h"

/*
 * The provider's shared agent connection, connecting on first use. Returns 0
 * with *agent set (owned by prov), or a negative MTLS_AGENT_ERR_* code with
 * mtls_agent_last_error() describing it.
 */
static int socket_agent(struct mtlsa_prov *prov, mtls_agent **agent)
{
	/* secure_getenv: a setuid/setgid program loading the provider ignores the caller's socket.
	 */
	const char *env = secure_getenv("MTLS_AGENT_SOCK");
	int r = 0;

	*agent = NULL;
	if ((r = pthread_mutex_lock(&prov->lock)) != 0)
		return MTLS_AGENT_ERR_INTERNAL;
	if (prov->agent == NULL) {
		/* The environment first, then the `socket` parameter, then the default. */
		const char *path = (env != NULL && env[0] != '\0') ? NULL : prov->socket;

		r = mtls_agent_connect(path, &prov->agent);
		mtlsa_debug("connect: %s",
			    r == 0 ? mtls_agent_socket_path(prov->agent) : mtls_agent_last_error());
	}
	*agent = prov->agent;
	pthread_mutex_unlock(&prov->lock);
	return r;
}

static int socket_get_identity(struct mtlsa_prov *prov, const char *name,
			       struct mtls_agent_identity **id, char *err, size_t errlen)
{
	mtls_agent *agent;
	int r;

	if ((r = socket_agent(prov, &agent)) != 0 ||
	    (r = mtls_agent_get_identity(agent, name, id)) != 0)
		snprintf(err, errlen, "%s", mtls_agent_last_error());
	return r;
}

static int socket_sign(struct mtlsa_prov *prov, const char *name, const uint8_t *spki_hash,
		       uint16_t scheme, unsigned flags, const uint8_t *data, size_t len,
		       uint8_t **sig, size_t *siglen, char *err, size_t errlen)
{
	mtls_agent *agent;
	int r;

	if ((r = socket_agent(prov, &agent)) != 0 ||
	    (r = mtls_agent_sign(agent, name, scheme, flags, spki_hash, data, len, sig, siglen)) !=
		    0)
		snprintf(err, errlen, "%s", mtls_agent_last_error());
	return r;
}

static int socket_init(struct mtlsa_prov *prov)
{
	prov->socket = mtlsa_config_param(prov, "socket");
	mtlsa_debug("provider loaded; socket: %s", secure_getenv("MTLS_AGENT_SOCK") != NULL
							   ? "$MTLS_AGENT_SOCK"
						   : prov->socket != NULL ? prov->socket
									  : "library default");
	return 1;
}

static void socket_teardown(struct mtlsa_prov *prov)
{
	mtls_agent_close(prov->agent);
	prov->agent = NULL;
	free(prov->socket);
	prov->socket = NULL;
}

static const struct mtlsa_transport socket_transport = {
	.key_files = 1,
	.init = socket_init,
	.teardown = socket_teardown,
	.get_identity = socket_get_identity,
	.sign = socket_sign,
};

__attribute__((visibility("default"))) int OSSL_provider_init(const OSSL_CORE_HANDLE *handle,
							      const OSSL_DISPATCH *in,
							      const OSSL_DISPATCH **out,
							      void **provctx)
{
	return mtlsa_provider_init(&socket_transport, handle, in, out, provctx);
}
