#include "config.h"

#include <string.h>

#include "agent/conf.h"
#include "agent/policy.h"
#include "mtls-agent/client.h"

static const char tls13_client_context[] = "TLS 1.3, client CertificateVerify";

int policy_is_tls13_client_cv(const uint8_t *data, size_t len)
{
	size_t i, hash_len;

	if (len < TLS13_CV_PREFIX_LEN)
		return 0;
	hash_len = len - TLS13_CV_PREFIX_LEN;
	/* The transcript hash has the length of the cipher suite's hash. */
	if (hash_len != 32 && hash_len != 48 && hash_len != 64)
		return 0;
	for (i = 0; i < 64; i++)
		if (data[i] != 0x20)
			return 0;
	if (memcmp(data + 64, tls13_client_context, 33) != 0)
		return 0;
	return data[64 + 33] == 0x00;
}

/* TLS 1.2 handshake message types (RFC 5246 section 7.4). */
enum {
	HS_CLIENT_HELLO = 1,
	HS_SERVER_HELLO = 2,
	HS_CERTIFICATE = 11,
	HS_SERVER_KEY_EXCHANGE = 12,
	HS_CERTIFICATE_REQUEST = 13,
	HS_SERVER_HELLO_DONE = 14,
	HS_CLIENT_KEY_EXCHANGE = 16,
	HS_CERTIFICATE_STATUS = 22,
};

/*
 * The order of messages a client has seen and sent when it signs its
 * CertificateVerify in a full TLS 1.2 handshake with client authentication.
 * Each step lists the message expected and whether it may be absent.
 */
static const struct {
	uint8_t type;
	int optional;
} tls12_client_flight[] = {
	{HS_CLIENT_HELLO, 0},
	{HS_SERVER_HELLO, 0},
	{HS_CERTIFICATE, 1},          /* absent only for anonymous/PSK suites */
	{HS_CERTIFICATE_STATUS, 1},   /* OCSP stapling */
	{HS_SERVER_KEY_EXCHANGE, 1},  /* absent for static RSA key exchange */
	{HS_CERTIFICATE_REQUEST, 0},  /* we are asked for a certificate */
	{HS_SERVER_HELLO_DONE, 0},
	{HS_CERTIFICATE, 0},          /* ours */
	{HS_CLIENT_KEY_EXCHANGE, 0},
};

int policy_is_tls12_client_transcript(const uint8_t *data, size_t len, const char **reason)
{
	const size_t steps = sizeof(tls12_client_flight) / sizeof(tls12_client_flight[0]);
	size_t off = 0, step = 0, body_len;
	uint8_t type;

	*reason = "not a TLS 1.2 client handshake transcript";
	while (off < len) {
		if (len - off < 4) {
			*reason = "truncated handshake message header";
			return 0;
		}
		type = data[off];
		body_len = ((size_t)data[off + 1] << 16) | ((size_t)data[off + 2] << 8) |
			   data[off + 3];
		if (body_len > len - off - 4) {
			*reason = "handshake message length runs past the end";
			return 0;
		}
		while (step < steps && tls12_client_flight[step].type != type &&
		       tls12_client_flight[step].optional)
			step++;
		if (step >= steps || tls12_client_flight[step].type != type) {
			*reason = "handshake messages out of the client-authentication order";
			return 0;
		}
		/* ClientHello and ServerHello start with a TLS 1.x protocol version. */
		if ((type == HS_CLIENT_HELLO || type == HS_SERVER_HELLO) &&
		    (body_len < 2 || data[off + 4] != 3 || data[off + 5] > 4)) {
			*reason = "hello message without a TLS protocol version";
			return 0;
		}
		off += 4 + body_len;
		step++;
	}
	if (step != steps) {
		*reason = "transcript does not end with the client's ClientKeyExchange";
		return 0;
	}
	return 1;
}

int policy_check(int policy, const uint8_t *data, size_t len, int is_digest, const char **reason)
{
	*reason = NULL;
	if (policy == POLICY_ANY)
		return 0;
	if (is_digest) {
		/* The caller (dispatch) checks that the length is the scheme's hash length. */
		if (policy == POLICY_DIGEST)
			return 0;
		*reason = "pre-hashed digests (PKCS#11 raw-digest mechanisms, the OpenSSL engine) "
			  "need sign-policy = digest or any";
		return MTLS_AGENT_ERR_POLICY;
	}
	if (policy_is_tls13_client_cv(data, len))
		return 0;
	if (policy == POLICY_TLS13_CLIENT) {
		*reason = "only a TLS 1.3 client CertificateVerify may be signed (tls13-client)";
		return MTLS_AGENT_ERR_POLICY;
	}
	if (len > 0 && data[0] == HS_CLIENT_HELLO) {
		if (policy_is_tls12_client_transcript(data, len, reason))
			return 0;
		return MTLS_AGENT_ERR_POLICY;
	}
	*reason = "neither a TLS 1.3 client CertificateVerify nor a TLS 1.2 client transcript";
	return MTLS_AGENT_ERR_POLICY;
}
