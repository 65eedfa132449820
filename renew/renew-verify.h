/*
 * renew-verify: before a renewed certificate replaces the one in use, one mTLS
 * connection with the NEW key and chain to a server the device must keep reaching.
 * A CA that issues from an intermediate the servers do not trust yet, or with a
 * subject they refuse, then costs a failed renewal (retried with backoff) instead of
 * taking the device offline at its next handshake.
 *
 *   https://HOST[:PORT]/PATH  TLS, then GET PATH: any HTTP answer means the server
 *                             accepted the certificate (with TLS 1.3 a refusal of
 *                             the client certificate arrives only after the
 *                             handshake, so a request is needed to see it).
 *   mqtts://HOST:PORT         TLS, then MQTT 3.1.1 CONNECT: a CONNACK (whatever its
 *                             return code) means the TLS layer accepted it.
 *
 * The server's certificate is verified against the trust file given (the identity's
 * ca-trust) and the system's default store, and its name against HOST.
 */
#ifndef MTLS_AGENT_RENEW_VERIFY_H
#define MTLS_AGENT_RENEW_VERIFY_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

struct renew_verify_url {
	int mqtt;	/* 0: https, 1: mqtts */
	char host[256]; /* without brackets */
	char port[8];
	char path[512]; /* https: "/..." */
};

/* Parses a renew-verify value. Returns 0, or -1 with one line in err. */
int renew_verify_parse(const char *url, struct renew_verify_url *out, char *err, size_t errlen);

/*
 * One connection to url with key (an EVP_PKEY of libctx, e.g. a keystore key) and chain
 * (leaf first). timeout_s bounds all of it. Returns 0 when the server accepted the
 * client certificate; otherwise -1 with one line in err naming the server's alert when
 * it sent one ("the server refused the new certificate: TLS alert unknown ca").
 */
int renew_verify(const char *url, const char *trust_file, OSSL_LIB_CTX *libctx, EVP_PKEY *key,
		 STACK_OF(X509) * chain, unsigned timeout_s, char *err, size_t errlen);

#endif
