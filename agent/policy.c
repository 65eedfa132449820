#include "config.h"

#include <string.h>

#include "conf/conf.h"
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

/*
 * TLS 1.2 and DTLS 1.2 client transcripts.
 *
 * In TLS 1.2 the client's CertificateVerify signs every handshake message
 * it has seen and sent so far (RFC 5246 section 7.4.8): ClientHello up to
 * its ClientKeyExchange. The recogniser parses each message completely,
 * with every length checked against its enclosing one and nothing left
 * over, so the caller's freedom is limited to what a real handshake lets a
 * client choose (randoms, session id, extension contents), and a blob that
 * only tiles handshake headers over arbitrary bytes (or another protocol's
 * signed octets) is refused.
 *
 * DTLS 1.2 (RFC 6347 section 4.2.6) hashes the same messages with 12-byte
 * headers in their reassembled form (fragment_offset 0, fragment_length =
 * length); the first ClientHello and the HelloVerifyRequest are not part of
 * the transcript, so the ClientHello seen here carries the cookie.
 */

/* Handshake message types (RFC 5246 section 7.4, RFC 6066, RFC 6347). */
enum {
	HS_CLIENT_HELLO = 1,
	HS_SERVER_HELLO = 2,
	HS_HELLO_VERIFY_REQUEST = 3,
	HS_CERTIFICATE = 11,
	HS_SERVER_KEY_EXCHANGE = 12,
	HS_CERTIFICATE_REQUEST = 13,
	HS_SERVER_HELLO_DONE = 14,
	HS_CLIENT_KEY_EXCHANGE = 16,
	HS_CERTIFICATE_STATUS = 22,
};

#define TLS12_VERSION 0x0303
#define DTLS12_VERSION 0xfefd
#define TLS_SCSV_RENEGOTIATION 0x00ff
#define EXT_RENEGOTIATION_INFO 0xff01

/* A bounded reader: every get fails rather than read past len. */
struct rd {
	const uint8_t *p;
	size_t len, off;
};

static size_t rd_left(const struct rd *r)
{
	return r->len - r->off;
}

static int rd_uint(struct rd *r, size_t n, size_t *v)
{
	size_t i;

	if (rd_left(r) < n)
		return 0;
	*v = 0;
	for (i = 0; i < n; i++)
		*v = (*v << 8) | r->p[r->off + i];
	r->off += n;
	return 1;
}

/* A vector with an n-byte length prefix whose length lies in [min, max]. */
static int rd_vec(struct rd *r, size_t n, size_t min, size_t max, struct rd *sub)
{
	size_t l;

	if (!rd_uint(r, n, &l) || l < min || l > max || l > rd_left(r))
		return 0;
	sub->p = r->p + r->off;
	sub->len = l;
	sub->off = 0;
	r->off += l;
	return 1;
}

static int rd_skip(struct rd *r, size_t n)
{
	if (rd_left(r) < n)
		return 0;
	r->off += n;
	return 1;
}

/*
 * One DER SEQUENCE (tag 0x30, definite minimal length) filling exactly
 * [off, len): a certificate, an OCSP response, a distinguished name.
 */
static int is_der_sequence(const uint8_t *p, size_t len)
{
	size_t l = 0, n, i;

	if (len < 2 || p[0] != 0x30)
		return 0;
	if (p[1] < 0x80)
		return (size_t)p[1] == len - 2;
	n = p[1] & 0x7f;
	/* Long form: 1..3 length bytes (handshake vectors are at most 2^24-1), minimal. */
	if (n == 0 || n > 3 || len - 2 < n || p[2] == 0)
		return 0;
	for (i = 0; i < n; i++)
		l = (l << 8) | p[2 + i];
	if (l < 0x80)
		return 0;
	return l == len - 2 - n;
}

/*
 * Extension bodies whose shape is one vector: check the vectors of the
 * extensions TLS 1.2 clients and servers commonly send; others are opaque
 * (their framing is still checked by the caller).
 */
static int ext_body_ok(unsigned type, int from_server, const struct rd *body)
{
	struct rd r = *body, v, e;
	size_t x, i;

	switch (type) {
	case 0: /* server_name: empty from the server, else a list of (type, name) */
		if (from_server)
			return body->len == 0;
		if (!rd_vec(&r, 2, 1, 0xffff, &v) || rd_left(&r) != 0)
			return 0;
		while (rd_left(&v) > 0)
			if (!rd_uint(&v, 1, &x) || !rd_vec(&v, 2, 1, 0xffff, &e))
				return 0;
		return 1;
	case 10: /* supported_groups */
		return !from_server && rd_vec(&r, 2, 2, 0xfffe, &v) && v.len % 2 == 0 &&
		       rd_left(&r) == 0;
	case 11: /* ec_point_formats */
		return rd_vec(&r, 1, 1, 0xff, &v) && rd_left(&r) == 0;
	case 13: /* signature_algorithms */
		return !from_server && rd_vec(&r, 2, 2, 0xfffe, &v) && v.len % 2 == 0 &&
		       rd_left(&r) == 0;
	case 16: /* application_layer_protocol_negotiation: a list of names */
		if (!rd_vec(&r, 2, 2, 0xffff, &v) || rd_left(&r) != 0)
			return 0;
		for (i = 0; rd_left(&v) > 0; i++)
			if (!rd_vec(&v, 1, 1, 0xff, &e))
				return 0;
		return !from_server || i == 1;
	case 21: /* padding: zeros only */
		for (i = 0; i < body->len; i++)
			if (body->p[i] != 0)
				return 0;
		return !from_server;
	case 22: /* encrypt_then_mac */
	case 23: /* extended_master_secret */
		return body->len == 0;
	case 43: /* supported_versions (a TLS 1.3 capable client): a list of versions */
		return !from_server && rd_vec(&r, 1, 2, 0xfe, &v) && v.len % 2 == 0 &&
		       rd_left(&r) == 0;
	case 45: /* psk_key_exchange_modes */
		return !from_server && rd_vec(&r, 1, 1, 0xff, &v) && rd_left(&r) == 0;
	case 51: /* key_share (TLS 1.3 offer in a ClientHello): (group, key) entries */
		if (from_server || !rd_vec(&r, 2, 0, 0xffff, &v) || rd_left(&r) != 0)
			return 0;
		while (rd_left(&v) > 0)
			if (!rd_uint(&v, 2, &x) || !rd_vec(&v, 2, 1, 0xffff, &e))
				return 0;
		return 1;
	case EXT_RENEGOTIATION_INFO:
		return rd_vec(&r, 1, 0, 0xff, &v) && rd_left(&r) == 0;
	default:
		return 1;
	}
}

/*
 * The extensions block at the end of a hello: absent, or a 2-byte length
 * covering exactly the rest of the body, each extension well-formed and of a
 * distinct type. seen: one bit per type, filled for the ClientHello and
 * checked for the ServerHello (a server answers only what was offered).
 */
static int parse_extensions(struct rd *r, int from_server, uint8_t *seen, int client_scsv,
			    const char **reason)
{
	uint8_t dup[65536 / 8];
	struct rd all, body;
	size_t type;

	if (rd_left(r) == 0)
		return 1;
	memset(dup, 0, sizeof(dup));
	if (!rd_vec(r, 2, 0, 0xffff, &all) || rd_left(r) != 0) {
		*reason = "hello extensions do not end exactly at the end of the message";
		return 0;
	}
	while (rd_left(&all) > 0) {
		if (!rd_uint(&all, 2, &type) || !rd_vec(&all, 2, 0, 0xffff, &body)) {
			*reason = "malformed hello extension";
			return 0;
		}
		if (dup[type / 8] & (1u << (type % 8))) {
			*reason = "the same hello extension twice";
			return 0;
		}
		dup[type / 8] |= (uint8_t)(1u << (type % 8));
		if (!ext_body_ok((unsigned)type, from_server, &body)) {
			*reason = "malformed hello extension body";
			return 0;
		}
		if (!from_server) {
			seen[type / 8] |= (uint8_t)(1u << (type % 8));
		} else if (!(seen[type / 8] & (1u << (type % 8))) &&
			   !(type == EXT_RENEGOTIATION_INFO && client_scsv)) {
			*reason = "ServerHello answers an extension the ClientHello did not offer";
			return 0;
		}
	}
	return 1;
}

/* What the parse of one transcript carries from message to message. */
struct t12 {
	int dtls;
	unsigned version;
	struct rd suites; /* the ClientHello's cipher suites */
	struct rd comp;	  /* and compression methods */
	int scsv;	  /* TLS_EMPTY_RENEGOTIATION_INFO_SCSV offered */
	int kx;		  /* from the ServerKeyExchange: 0 none (RSA), 1 ECDHE, 2 DHE */
	uint8_t exts[65536 / 8];
};

static int parse_client_hello(struct t12 *t, struct rd *m, const char **reason)
{
	struct rd sid, cookie;
	size_t v, i, s;

	if (!rd_uint(m, 2, &v) || v != t->version) {
		*reason = t->dtls ? "ClientHello is not DTLS 1.2 (0xfefd)"
				  : "ClientHello is not TLS 1.2 (0x0303)";
		return 0;
	}
	if (!rd_skip(m, 32) || !rd_vec(m, 1, 0, 32, &sid)) {
		*reason = "ClientHello random or session id malformed";
		return 0;
	}
	if (t->dtls && !rd_vec(m, 1, 0, 255, &cookie)) {
		*reason = "ClientHello cookie malformed";
		return 0;
	}
	if (!rd_vec(m, 2, 2, 0xfffe, &t->suites) || t->suites.len % 2 != 0) {
		*reason = "ClientHello cipher suites malformed";
		return 0;
	}
	for (i = 0; i < t->suites.len; i += 2) {
		s = ((size_t)t->suites.p[i] << 8) | t->suites.p[i + 1];
		if (s == TLS_SCSV_RENEGOTIATION)
			t->scsv = 1;
	}
	if (!rd_vec(m, 1, 1, 0xff, &t->comp) || memchr(t->comp.p, 0, t->comp.len) == NULL) {
		*reason = "ClientHello compression methods malformed (null must be offered)";
		return 0;
	}
	return parse_extensions(m, 0, t->exts, t->scsv, reason);
}

static int parse_server_hello(struct t12 *t, struct rd *m, const char **reason)
{
	struct rd sid;
	size_t v, suite, comp, i;
	int offered = 0;

	if (!rd_uint(m, 2, &v) || v != t->version) {
		*reason = "ServerHello does not select (D)TLS 1.2";
		return 0;
	}
	if (!rd_skip(m, 32) || !rd_vec(m, 1, 0, 32, &sid) || !rd_uint(m, 2, &suite) ||
	    !rd_uint(m, 1, &comp)) {
		*reason = "ServerHello malformed";
		return 0;
	}
	for (i = 0; i < t->suites.len; i += 2)
		if ((((size_t)t->suites.p[i] << 8) | t->suites.p[i + 1]) == suite)
			offered = 1;
	if (!offered || suite == TLS_SCSV_RENEGOTIATION ||
	    memchr(t->comp.p, (int)comp, t->comp.len) == NULL) {
		*reason = "ServerHello selects a cipher suite or compression not offered";
		return 0;
	}
	return parse_extensions(m, 1, t->exts, t->scsv, reason);
}

/* Certificate: a non-empty list of DER certificates, lengths consistent. */
static int parse_certificate(struct rd *m, const char **reason)
{
	struct rd list, cert;

	if (!rd_vec(m, 3, 1, 0xffffff, &list) || rd_left(m) != 0) {
		*reason = "Certificate message list length inconsistent";
		return 0;
	}
	while (rd_left(&list) > 0) {
		if (!rd_vec(&list, 3, 1, 0xffffff, &cert) || !is_der_sequence(cert.p, cert.len)) {
			*reason = "Certificate message holds something other than DER certificates";
			return 0;
		}
	}
	return 1;
}

/* CertificateStatus (RFC 6066 section 8): status_type ocsp(1), one OCSPResponse. */
static int parse_certificate_status(struct rd *m, const char **reason)
{
	struct rd resp;
	size_t type;

	if (!rd_uint(m, 1, &type) || type != 1 || !rd_vec(m, 3, 1, 0xffffff, &resp) ||
	    rd_left(m) != 0 || !is_der_sequence(resp.p, resp.len)) {
		*reason = "CertificateStatus malformed";
		return 0;
	}
	return 1;
}

/* The signed part of a ServerKeyExchange: SignatureAndHashAlgorithm, signature. */
static int rd_digitally_signed(struct rd *m)
{
	struct rd sig;
	size_t alg;

	return rd_uint(m, 2, &alg) && rd_vec(m, 2, 1, 0xffff, &sig) && rd_left(m) == 0;
}

/*
 * ServerKeyExchange for the suites that can ask for a client certificate:
 * ECDHE (named_curve, point) or DHE (p, g, Ys), each signed by the server.
 */
static int parse_server_key_exchange(struct t12 *t, struct rd *m, const char **reason)
{
	struct rd r = *m, v;
	size_t type, curve;

	if (rd_uint(&r, 1, &type) && type == 3 && rd_uint(&r, 2, &curve) &&
	    rd_vec(&r, 1, 1, 0xff, &v) && rd_digitally_signed(&r)) {
		t->kx = 1;
		*m = r;
		return 1;
	}
	r = *m;
	if (rd_vec(&r, 2, 1, 0xffff, &v) && rd_vec(&r, 2, 1, 0xffff, &v) &&
	    rd_vec(&r, 2, 1, 0xffff, &v) && rd_digitally_signed(&r)) {
		t->kx = 2;
		*m = r;
		return 1;
	}
	*reason = "ServerKeyExchange is neither a signed ECDHE nor a signed DHE exchange";
	return 0;
}

static int parse_certificate_request(struct rd *m, const char **reason)
{
	struct rd types, algs, cas, dn;

	if (!rd_vec(m, 1, 1, 0xff, &types) || !rd_vec(m, 2, 2, 0xfffe, &algs) ||
	    algs.len % 2 != 0 || !rd_vec(m, 2, 0, 0xffff, &cas) || rd_left(m) != 0) {
		*reason = "CertificateRequest malformed";
		return 0;
	}
	while (rd_left(&cas) > 0) {
		if (!rd_vec(&cas, 2, 1, 0xffff, &dn) || !is_der_sequence(dn.p, dn.len)) {
			*reason = "CertificateRequest names a CA that is not a DER Name";
			return 0;
		}
	}
	return 1;
}

/* ClientKeyExchange in the form the ServerKeyExchange (or its absence) calls for. */
static int parse_client_key_exchange(const struct t12 *t, struct rd *m, const char **reason)
{
	struct rd v;
	int ok;

	if (t->kx == 1)
		ok = rd_vec(m, 1, 1, 0xff, &v); /* ECDHE public point */
	else
		ok = rd_vec(m, 2, 1, 0xffff, &v); /* DHE Yc, or RSA-encrypted premaster */
	if (!ok || rd_left(m) != 0) {
		*reason = "ClientKeyExchange malformed for the key exchange in use";
		return 0;
	}
	return 1;
}

/*
 * The order of messages a client has seen and sent when it signs its
 * CertificateVerify in a full handshake with client authentication, and
 * who sent each (for DTLS message_seq, which counts per sender).
 */
static const struct {
	uint8_t type;
	uint8_t optional;
	uint8_t from_server;
} tls12_client_flight[] = {
	{HS_CLIENT_HELLO, 0, 0},	{HS_SERVER_HELLO, 0, 1},
	{HS_CERTIFICATE, 0, 1}, /* only anonymous servers omit it, and they cannot ask for ours */
	{HS_CERTIFICATE_STATUS, 1, 1},	/* OCSP stapling */
	{HS_SERVER_KEY_EXCHANGE, 1, 1}, /* absent for static RSA key exchange */
	{HS_CERTIFICATE_REQUEST, 0, 1}, /* we are asked for a certificate */
	{HS_SERVER_HELLO_DONE, 0, 1},	{HS_CERTIFICATE, 0, 0}, /* ours */
	{HS_CLIENT_KEY_EXCHANGE, 0, 0},
};

/*
 * DTLS message_seq counts each side's messages from 0 in every handshake;
 * after a HelloVerifyRequest both sides' next message has sequence 1 (the
 * exchange excluded from the transcript used 0).
 */
#define DTLS_MAX_FIRST_SEQ 1

static int parse_message(struct t12 *t, uint8_t type, struct rd *m, const char **reason)
{
	switch (type) {
	case HS_CLIENT_HELLO:
		return parse_client_hello(t, m, reason);
	case HS_SERVER_HELLO:
		return parse_server_hello(t, m, reason);
	case HS_CERTIFICATE:
		return parse_certificate(m, reason);
	case HS_CERTIFICATE_STATUS:
		return parse_certificate_status(m, reason);
	case HS_SERVER_KEY_EXCHANGE:
		return parse_server_key_exchange(t, m, reason);
	case HS_CERTIFICATE_REQUEST:
		return parse_certificate_request(m, reason);
	case HS_SERVER_HELLO_DONE:
		if (m->len != 0) {
			*reason = "ServerHelloDone is not empty";
			return 0;
		}
		return 1;
	case HS_CLIENT_KEY_EXCHANGE:
		return parse_client_key_exchange(t, m, reason);
	default:
		*reason = "unexpected handshake message";
		return 0;
	}
}

int policy_is_tls12_client_transcript(const uint8_t *data, size_t len, const char **reason)
{
	const size_t steps = sizeof(tls12_client_flight) / sizeof(tls12_client_flight[0]);
	struct t12 t;
	struct rd in = {data, len, 0}, body;
	size_t step = 0, hdr, type = 0, body_len = 0, seq = 0, frag_off = 0, frag_len = 0;
	size_t next_seq[2] = {0, 0};
	int seq_started[2] = {0, 0}, side;

	*reason = "not a TLS 1.2 client handshake transcript";
	memset(&t, 0, sizeof(t));
	/*
	 * TLS or DTLS: a TLS ClientHello body starts right after the 4-byte
	 * header with 0x0303; a DTLS one after the 12-byte header with 0xfefd.
	 */
	if (len >= 6 && data[4] == 0x03 && data[5] == 0x03) {
		t.version = TLS12_VERSION;
	} else if (len >= 14 && data[12] == 0xfe && data[13] == 0xfd) {
		t.dtls = 1;
		t.version = DTLS12_VERSION;
	} else {
		*reason = "ClientHello is neither TLS 1.2 nor DTLS 1.2";
		return 0;
	}
	hdr = t.dtls ? 12 : 4;
	while (rd_left(&in) > 0) {
		if (rd_left(&in) < hdr) {
			*reason = "truncated handshake message header";
			return 0;
		}
		rd_uint(&in, 1, &type);
		rd_uint(&in, 3, &body_len);
		if (t.dtls) {
			rd_uint(&in, 2, &seq);
			rd_uint(&in, 3, &frag_off);
			rd_uint(&in, 3, &frag_len);
			/* The transcript holds each message reassembled into one fragment. */
			if (frag_off != 0 || frag_len != body_len) {
				*reason = "DTLS handshake message not in reassembled form";
				return 0;
			}
		}
		if (body_len > rd_left(&in)) {
			*reason = "handshake message length runs past the end";
			return 0;
		}
		body.p = in.p + in.off;
		body.len = body_len;
		body.off = 0;
		in.off += body_len;
		if (type == HS_HELLO_VERIFY_REQUEST) {
			*reason = "HelloVerifyRequest is not part of a DTLS transcript";
			return 0;
		}
		while (step < steps && tls12_client_flight[step].type != type &&
		       tls12_client_flight[step].optional)
			step++;
		if (step >= steps || tls12_client_flight[step].type != type) {
			*reason = "handshake messages out of the client-authentication order";
			return 0;
		}
		side = tls12_client_flight[step].from_server;
		if (t.dtls) {
			if (!seq_started[side] ? seq > DTLS_MAX_FIRST_SEQ : seq != next_seq[side]) {
				*reason = "DTLS message_seq out of order";
				return 0;
			}
			seq_started[side] = 1;
			next_seq[side] = seq + 1;
		}
		if (!parse_message(&t, (uint8_t)type, &body, reason))
			return 0;
		if (rd_left(&body) != 0) {
			*reason = "handshake message has bytes after its content";
			return 0;
		}
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
	*reason = "neither a TLS 1.3 client CertificateVerify nor a (D)TLS 1.2 client transcript";
	return MTLS_AGENT_ERR_POLICY;
}
