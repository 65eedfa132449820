#include "config.h"

#include "mtls-agent/client.h"

const char *mtls_agent_strerror(int err)
{
	switch (err) {
	case MTLS_AGENT_OK:
		return "success";
	case MTLS_AGENT_ERR_INTERNAL:
		return "internal error";
	case MTLS_AGENT_ERR_NOMEM:
		return "out of memory";
	case MTLS_AGENT_ERR_TRUNCATED:
		return "message incomplete";
	case MTLS_AGENT_ERR_TOO_LARGE:
		return "length over the limit";
	case MTLS_AGENT_ERR_BAD_MESSAGE:
		return "malformed message";
	case MTLS_AGENT_ERR_UNSUPPORTED:
		return "unsupported operation or version";
	case MTLS_AGENT_ERR_NOT_FOUND:
		return "no such identity";
	case MTLS_AGENT_ERR_DENIED:
		return "access denied";
	case MTLS_AGENT_ERR_POLICY:
		return "refused by sign-policy";
	case MTLS_AGENT_ERR_SCHEME:
		return "signature scheme not usable with this key";
	case MTLS_AGENT_ERR_KEYSTORE:
		return "keystore operation failed";
	case MTLS_AGENT_ERR_KEY_UNAVAILABLE:
		return "key or token not available";
	case MTLS_AGENT_ERR_PIN:
		return "token login failed";
	case MTLS_AGENT_ERR_CERT:
		return "certificate rejected";
	case MTLS_AGENT_ERR_CONFIG:
		return "configuration error";
	case MTLS_AGENT_ERR_IO:
		return "system error";
	case MTLS_AGENT_ERR_CONNECT:
		return "agent not running or not reachable";
	case MTLS_AGENT_ERR_PROTOCOL:
		return "unexpected reply from the agent";
	case MTLS_AGENT_ERR_EXISTS:
		return "already exists";
	case MTLS_AGENT_ERR_BUSY:
		return "too many connections or requests";
	case MTLS_AGENT_ERR_INVALID_ARG:
		return "invalid argument";
	case MTLS_AGENT_ERR_KEY_GONE:
		return "requested key generation no longer held";
	case MTLS_AGENT_ERR_RENEWAL:
		return "renewal failed";
	}
	return "unknown error";
}
