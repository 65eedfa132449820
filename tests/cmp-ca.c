/*
 * cmp-ca: a small CMP (RFC 4210) test CA for the integration tests of CMP renewal, built on
 * OpenSSL's CMP server framework and a one-connection-at-a-time HTTP/1.1 loop on 127.0.0.1.
 *
 *   cmp-ca --port-file FILE --ca-cert CA.pem --ca-key CA.key [--chain EXTRA.pem]
 *          [--lifetime SECONDS | --days DAYS] [--fault-file FAULTS] [--secret REF:SECRETFILE]
 *          [--log FILE] [--port N] [--srv-cert CERT.pem --srv-key KEY.pem]
 *          [--extra-certs chain|none|reversed] [--capubs yes|no] [--implicit-confirm]
 *          [--status-text TEXT] [--client-trust CERTS.pem]
 *          [--root-update NWN.pem[,NWO.pem[,OWN.pem]]]
 *
 * Listens on 127.0.0.1:N (default 0: the kernel picks) and, once listening, writes the port to
 * --port-file (atomically). Serves POST application/pkixcmp (DER, at most 256 KiB), any path.
 * Each ir/cr/kur/p10cr gets a fresh certificate for the public key it carries: 64-bit random
 * serial, issuer = CA, subject from the request (kur without one: the old certificate's),
 * notBefore = now - 1 s, notAfter = now + --lifetime (default 60 s), basicConstraints CA:FALSE,
 * keyUsage digitalSignature, extendedKeyUsage clientAuth, SKI, AKI, subjectAltName copied from
 * the request, SHA-256 by the CA key (RSA or EC). extraCerts carry CA + --chain, and so do an
 * ip's caPubs. Answers are signed by the CA key, but a MAC-protected transaction is answered
 * with the shared secret (the framework's choice). rr is answered with an error, and so is
 * genm unless --root-update (below) is given.
 * Authentication: ir/cr/p10cr protected by the --secret (reference value REF, secret = the
 * file minus trailing newlines) or signed by a currently valid certificate that chains to the
 * CA; kur only signed so, by the certificate its oldCertId names. Otherwise the request is
 * rejected: unknown reference or expired signer -> notAuthorized, foreign signer ->
 * signerNotTrusted, bad MAC or signature -> badMessageCheck, oldCertId mismatch -> badCertId.
 * Implicit confirmation is granted only with --implicit-confirm, and then only when the
 * client asks for it (RFC 4210 5.1.1.1); otherwise the client sends certConf and gets pkiConf.
 *
 * Response shapes (each an RFC 9483 option, so that a client can be tried against all):
 *   --srv-cert/--srv-key  protect the answers with this certificate and key instead of the
 *                         CA's (an RA certificate with id-kp-cmcRA; or, to test a client's
 *                         refusal, any other certificate). Its chain is built from the CA
 *                         certificate and --chain.
 *   --extra-certs MODE    chain (default): as OpenSSL's framework sends them (protection
 *                         certificate and its chain, then the issued certificate's chain);
 *                         none: no extraCerts at all; reversed: the same certificates in
 *                         reverse order (the protection certificate last). extraCerts are
 *                         outside the protected part, so they are rewritten in the DER.
 *   --capubs yes|no       whether an ip carries caPubs (default yes: CA + --chain).
 *   --client-trust FILE   more certificates that authenticate requests besides the CA's
 *                         own (the CA before a rollover to a new intermediate).
 *   --root-update NWN[,NWO[,OWN]]  answer a genm asking for id-it-rootCaCert with
 *                         id-it-rootCaKeyUpdate (RFC 9480 4.3): newWithNew NWN, newWithOld
 *                         NWO, oldWithNew OWN (PEM files; an empty NWO or OWN is left out,
 *                         e.g. "new.pem,,own.pem"). Logged: "genm rootCaKeyUpdate answered
 *                         (rootCaCert <subject of the value, or absent>; ...)".
 *   --status-text TEXT    the statusString of an injected rejection (default
 *                         "injected fault"); the CA's log shows it with control
 *                         characters as \xNN.
 *
 * Log (--log FILE, else stderr), one line per event, "<UTC time> cmp-ca: ...":
 *   <type> issued serial=<HEX> subject=</CN=..>    <type> rejected failInfo=<name> (<why>)
 *   <type> waiting checkAfter=<s>                 pollReq waiting checkAfter=<s> | pollReq ready
 *   certConf accepted serial=<HEX>                certConf rejected serial=<HEX> failInfo=<a,b>
 *   fault <kind> (<N> left)                       http <status> <reason>
 * <HEX> is the serial as `openssl x509 -noout -serial` prints it; "openssl: ..." lines are
 * the framework's own messages.
 *
 * Fault file (--fault-file), re-read on every HTTP request; missing or COUNT 0 = no fault.
 * One line "KIND COUNT [ARG]". COUNT is decremented after each request the fault hits and
 * the file rewritten atomically (it stays, with COUNT 0, when used up).
 *   Counting every HTTP request:
 *     http500 N       answer 500 and close          close N     close without answering
 *     delay N SECS    sleep SECS (default 1), then answer normally
 *     garbage N       200 application/pkixcmp with a random non-DER body
 *   Counting ir/cr/kur/p10cr that pass authentication (not the pollReq that later delivers):
 *     reject N NAME   reject with failInfo NAME (RFC 4210 bit name, default badRequest)
 *     waiting N SECS  status waiting; pollReqs get checkAfter until SECS (default 1) passed
 *     wrongkey N      certificate for another, freshly generated key
 *     untrusted N     certificate from a freshly generated self-signed CA (sent as chain)
 *     expired N       validity now-3600 .. now-60       badsubject N  subject /CN=cmp-ca-badsubject
 *     noeku N         no extendedKeyUsage
 *
 * SIGTERM/SIGINT end it cleanly. One client at a time: a request must arrive within 20 s, an
 * idle keep-alive connection is dropped after 30 s or as soon as another client connects.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <openssl/asn1t.h>
#include <openssl/cmp.h>
#include <openssl/crmf.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "common/util.h"

#define HEADER_MAX (16 * 1024)
#define BODY_MAX (256 * 1024)
#define IO_TIMEOUT_S 10 /* each socket read or write */
#define IDLE_TIMEOUT_MS 30000
#define REQUEST_TIMEOUT_MS 20000 /* a whole request, however slowly it trickles in */

struct fault {
	char kind[16];
	long count;
	char arg[64];
};

struct http_req {
	int post, pkixcmp, keep_alive, expect_continue, chunked;
	long content_length;
	size_t header_len;
};

/* clang-format off */
/* PKIBody choice numbers (RFC 4210 5.1.2); OpenSSL 3.0 keeps its names internal. */
enum { BODY_IR = 0, BODY_CR = 2, BODY_P10CR = 4, BODY_KUR = 7, BODY_RR = 11, BODY_GENM = 21,
       BODY_ERROR = 23 };
static const char *const body_names[] = {
	"ir", "ip", "cr", "cp", "p10cr", "popdecc", "popdecr", "kur", "kup", "krr", "krp", "rr",
	"rp", "ccr", "ccp", "ckuann", "cann", "rann", "crlann", "pkiconf", "nested", "genm",
	"genp", "error", "certConf", "pollReq", "pollRep",
};
/* PKIFailureInfo bit names, index = OSSL_CMP_PKIFAILUREINFO_* */
static const char *const fail_names[] = {
	"badAlg", "badMessageCheck", "badRequest", "badTime", "badCertId", "badDataFormat",
	"wrongAuthority", "incorrectData", "missingTimeStamp", "badPOP", "certRevoked",
	"certConfirmed", "wrongIntegrity", "badRecipientNonce", "timeNotAvailable",
	"unacceptedPolicy", "unacceptedExtension", "addInfoNotAvailable", "badSenderNonce",
	"badCertTemplate", "signerNotTrusted", "transactionIdInUse", "unsupportedVersion",
	"notAuthorized", "systemUnavail", "systemFailure", "duplicateCertReq",
};
static const char *const http_faults[] = { "http500", "close", "delay", "garbage", NULL };
static const char *const request_faults[] = {
	"reject", "waiting", "wrongkey", "untrusted", "expired", "badsubject", "noeku", NULL,
};
/* clang-format on */

/* DER element found inside a SEQUENCE: whole TLV and contents. */
struct der {
	const unsigned char *tlv, *val;
	long tlv_len, val_len;
};

static struct {
	X509 *ca_cert, *rogue_cert;
	EVP_PKEY *ca_key, *rogue_key;
	STACK_OF(X509) * extra;
	STACK_OF(X509) * untrusted; /* CA certificate + extra */
	X509_STORE *store;
	long lifetime;
	const char *fault_path;
	char *ref;
	uint8_t *secret;
	size_t secret_len;
	FILE *log;
	OSSL_CMP_SRV_CTX *srv;
	struct fault fault;    /* as read for the current HTTP request */
	OSSL_CMP_MSG *pending; /* request held back by a "waiting" fault */
	uint64_t pending_ready_ms;
	int redeliver; /* the cert request callback now runs for a polled request */
	int cb_ran;
	X509 *issued;	/* in the current transaction, for certConf */
	X509 *srv_cert; /* protects the answers (NULL: the CA certificate) */
	EVP_PKEY *srv_key;
	const char *extra_mode;
	int capubs, implicit_confirm;
	const char *status_text;
	X509 *root_upd[3]; /* --root-update: newWithNew, newWithOld, oldWithNew (or NULL) */
	int root_upd_set;
} g;

static volatile sig_atomic_t stop;
static unsigned char inbuf[HEADER_MAX + BODY_MAX];
static size_t inlen;

__attribute__((format(printf, 1, 2))) static void logline(const char *fmt, ...)
{
	char stamp[32];
	time_t now = time(NULL);
	struct tm tm;
	va_list ap;

	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
	fprintf(g.log, "%s cmp-ca: ", stamp);
	va_start(ap, fmt);
	vfprintf(g.log, fmt, ap);
	va_end(ap);
	fputc('\n', g.log);
	fflush(g.log);
}

static int openssl_log(const char *func, const char *file, int line, OSSL_CMP_severity level,
		       const char *msg)
{
	char text[512], *p;

	snprintf(text, sizeof(text), "%s", msg);
	for (p = text; *p != '\0'; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	logline("openssl: %s", text);
	return 1;
}

static const char *body_name(int type)
{
	return type >= 0 && type < (int)(sizeof(body_names) / sizeof(*body_names))
		       ? body_names[type]
		       : "unknown";
}

static int in_list(const char *const *list, const char *s)
{
	for (; *list != NULL; list++)
		if (strcmp(*list, s) == 0)
			return 1;
	return 0;
}

/* Finds the child with class cls and tag in the DER SEQUENCE (or explicit tag) at p. */
static int der_find(const unsigned char *p, long len, int cls, int tag, struct der *out)
{
	const unsigned char *end, *start;
	long clen;
	int t, c, r;

	r = ASN1_get_object(&p, &clen, &t, &c, len);
	if ((r & 0x80) || (r & 1) || !(r & V_ASN1_CONSTRUCTED))
		return 0;
	for (end = p + clen; p < end;) {
		start = p;
		r = ASN1_get_object(&p, &clen, &t, &c, end - p);
		if ((r & 0x80) || (r & 1))
			return 0;
		if (c == cls && t == tag) {
			*out = (struct der){start, p, p + clen - start, clen};
			return 1;
		}
		p += clen;
	}
	return 0;
}

/* The NID of the request's protectionAlg (header [1]), NID_undef when unprotected. */
static int protection_nid(const unsigned char *msg, long len)
{
	struct der hdr, alg;
	const unsigned char *p;
	X509_ALGOR *a;
	int nid = NID_undef;

	if (der_find(msg, len, V_ASN1_UNIVERSAL, V_ASN1_SEQUENCE, &hdr) &&
	    der_find(hdr.tlv, hdr.tlv_len, V_ASN1_CONTEXT_SPECIFIC, 1, &alg)) {
		p = alg.val;
		if ((a = d2i_X509_ALGOR(NULL, &p, alg.val_len)) != NULL)
			nid = OBJ_obj2nid(a->algorithm);
		X509_ALGOR_free(a);
	}
	return nid;
}

/* Serial as `openssl x509 -serial` prints it (upper-case hex). */
static void serial_hex(const X509 *cert, char *out, size_t n)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
	char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;

	snprintf(out, n, "%s", hex != NULL ? hex : "?");
	OPENSSL_free(hex);
	BN_free(bn);
}

static void load_fault(void)
{
	uint8_t *data = NULL;
	size_t len;

	memset(&g.fault, 0, sizeof(g.fault));
	if (g.fault_path == NULL || read_file(g.fault_path, 4096, &data, &len) != 0)
		return;
	if (sscanf((char *)data, "%15s %ld %63s", g.fault.kind, &g.fault.count, g.fault.arg) < 2 ||
	    (!in_list(http_faults, g.fault.kind) && !in_list(request_faults, g.fault.kind))) {
		logline("fault file: cannot parse \"KIND COUNT [ARG]\", ignored");
		memset(&g.fault, 0, sizeof(g.fault));
	}
	free(data);
}

/* Takes one use of the current fault if it is one of kinds; returns it in f. */
static int take_fault(const char *const *kinds, struct fault *f)
{
	char line[128];
	int n;

	if (g.fault.count <= 0 || !in_list(kinds, g.fault.kind))
		return 0;
	*f = g.fault;
	g.fault.count--;
	n = snprintf(line, sizeof(line), "%s %ld%s%s\n", g.fault.kind, g.fault.count,
		     g.fault.arg[0] != '\0' ? " " : "", g.fault.arg);
	if (write_file_atomic(g.fault_path, line, (size_t)n, 0644) != 0)
		logline("fault file: cannot rewrite %s: %s", g.fault_path, strerror(errno));
	logline("fault %s (%ld left)", g.fault.kind, g.fault.count);
	return 1;
}

static long fault_arg(const struct fault *f, long dflt)
{
	long v = f->arg[0] != '\0' ? strtol(f->arg, NULL, 10) : dflt;

	return v > 0 && v < 3600 ? v : dflt;
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	ok = ext != NULL && X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return ok;
}

/* A certificate valid from now+from to now+to seconds; issuer NULL = self-signed. */
static X509 *build_cert(EVP_PKEY *pub, const X509_NAME *subject, X509 *issuer, EVP_PKEY *signer,
			long from, long to, int ca, int eku,
			const STACK_OF(X509_EXTENSION) * req_exts)
{
	X509 *cert = X509_new();
	unsigned char serial[8] = {0};
	BIGNUM *bn = NULL;
	const char *bc = ca ? "critical,CA:TRUE" : "critical,CA:FALSE";
	const char *ku = ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature";
	int ok, i;

	ok = cert != NULL && RAND_bytes(serial, sizeof(serial)) == 1;
	/* 64 random bits, first byte 01..7f: positive and always 16 hex digits. */
	serial[0] = (serial[0] & 0x7f) | ((serial[0] & 0x7f) == 0);
	ok = ok && (bn = BN_bin2bn(serial, sizeof(serial), NULL)) != NULL &&
	     BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL &&
	     X509_set_version(cert, X509_VERSION_3) && X509_set_subject_name(cert, subject) &&
	     X509_set_issuer_name(cert, X509_get_subject_name(issuer != NULL ? issuer : cert)) &&
	     X509_gmtime_adj(X509_getm_notBefore(cert), from) &&
	     X509_gmtime_adj(X509_getm_notAfter(cert), to) && X509_set_pubkey(cert, pub);
	if (issuer == NULL)
		issuer = cert;
	ok = ok && add_ext(cert, issuer, NID_basic_constraints, bc) &&
	     add_ext(cert, issuer, NID_key_usage, ku) &&
	     (!eku || add_ext(cert, issuer, NID_ext_key_usage, "clientAuth")) &&
	     add_ext(cert, issuer, NID_subject_key_identifier, "hash");
	if (issuer != cert)
		ok = ok && add_ext(cert, issuer, NID_authority_key_identifier, "keyid:always");
	if (ok && (i = X509v3_get_ext_by_NID(req_exts, NID_subject_alt_name, -1)) >= 0)
		ok = X509_add_ext(cert, X509v3_get_ext(req_exts, i), -1);
	ok = ok && X509_sign(cert, signer, EVP_sha256()) > 0;
	BN_free(bn);
	if (!ok) {
		X509_free(cert);
		return NULL;
	}
	return cert;
}

static STACK_OF(X509) * cert_list(X509 *first, STACK_OF(X509) * more)
{
	STACK_OF(X509) *sk = sk_X509_new_null();

	if (sk != NULL && (!X509_add_cert(sk, first, X509_ADD_FLAG_UP_REF) ||
			   !X509_add_certs(sk, more, X509_ADD_FLAG_UP_REF))) {
		sk_X509_pop_free(sk, X509_free);
		return NULL;
	}
	return sk;
}

static X509_NAME *cn_name(const char *cn)
{
	X509_NAME *name = X509_NAME_new();

	if (name != NULL && !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
							(const unsigned char *)cn, -1, -1, 0)) {
		X509_NAME_free(name);
		return NULL;
	}
	return name;
}

/* Issues the certificate, bent as fault f asks; *chain gets the certificates to send along. */
static X509 *issue(EVP_PKEY *pub, const X509_NAME *subject,
		   const STACK_OF(X509_EXTENSION) * req_exts, const struct fault *f,
		   STACK_OF(X509) * *chain)
{
	X509 *issuer = g.ca_cert, *cert = NULL;
	EVP_PKEY *signer = g.ca_key, *other = NULL;
	X509_NAME *name = NULL;
	long from = -1, to = g.lifetime;

	if (strcmp(f->kind, "wrongkey") == 0 && (pub = other = EVP_EC_gen("P-256")) == NULL)
		return NULL;
	if (strcmp(f->kind, "untrusted") == 0) {
		if (g.rogue_cert == NULL) {
			EVP_PKEY_free(g.rogue_key);
			name = cn_name("cmp-ca untrusted CA");
			if ((g.rogue_key = EVP_EC_gen("P-256")) != NULL && name != NULL)
				g.rogue_cert = build_cert(g.rogue_key, name, NULL, g.rogue_key, -60,
							  365L * 86400, 1, 0, NULL);
			X509_NAME_free(name);
			name = NULL;
		}
		if (g.rogue_cert == NULL)
			return NULL;
		issuer = g.rogue_cert;
		signer = g.rogue_key;
	}
	if (strcmp(f->kind, "expired") == 0) {
		from = -3600;
		to = -60;
	}
	if (strcmp(f->kind, "badsubject") == 0 &&
	    (subject = name = cn_name("cmp-ca-badsubject")) == NULL)
		goto out;
	cert = build_cert(pub, subject, issuer, signer, from, to, 0, strcmp(f->kind, "noeku") != 0,
			  req_exts);
	/* The untrusted CA comes alone: the client must not find a path to the real one. */
	if (cert != NULL && (*chain = issuer == g.ca_cert ? cert_list(g.ca_cert, g.extra)
							  : cert_list(issuer, NULL)) == NULL) {
		X509_free(cert);
		cert = NULL;
	}
out:
	X509_NAME_free(name);
	EVP_PKEY_free(other);
	return cert;
}

/* -1 when the signer is valid now and chains to the CA, else the failInfo bit. */
static int check_signer(X509 *cert, const char **why)
{
	X509_STORE_CTX *sc = X509_STORE_CTX_new();
	int err = X509_V_ERR_UNSPECIFIED;

	if (sc != NULL && X509_STORE_CTX_init(sc, g.store, cert, g.extra))
		err = X509_verify_cert(sc) == 1 ? X509_V_OK : X509_STORE_CTX_get_error(sc);
	X509_STORE_CTX_free(sc);
	if (err == X509_V_OK)
		return -1;
	*why = X509_verify_cert_error_string(err);
	return err == X509_V_ERR_CERT_HAS_EXPIRED || err == X509_V_ERR_CERT_NOT_YET_VALID
		       ? OSSL_CMP_PKIFAILUREINFO_notAuthorized
		       : OSSL_CMP_PKIFAILUREINFO_signerNotTrusted;
}

/*
 * Checks the protection of a certificate request (which the framework let through: it cannot
 * say why protection is bad). A fresh OSSL_CMP_CTX each time: a context caches the validated
 * sender certificate. Returns -1 when acceptable (*signer: the protecting certificate, if
 * signed), else the failInfo bit to reject with.
 */
static int check_protection(const OSSL_CMP_MSG *req, int type, X509 **signer, const char **why)
{
	unsigned char *der = NULL;
	const unsigned char *p;
	int len = i2d_OSSL_CMP_MSG(req, &der), nid, fail = OSSL_CMP_PKIFAILUREINFO_badMessageCheck;
	OSSL_CMP_CTX *vctx = OSSL_CMP_CTX_new(NULL, NULL);
	ASN1_OCTET_STRING *kid = NULL;
	X509 *cert = NULL;
	struct der hdr, field, first;

	*why = "cannot parse request";
	if (len <= 0 || vctx == NULL ||
	    !der_find(der, len, V_ASN1_UNIVERSAL, V_ASN1_SEQUENCE, &hdr))
		goto out;
	nid = protection_nid(der, len);
	*why = "unprotected request";
	if (nid == NID_undef)
		goto out;
	if (nid == NID_id_PasswordBasedMAC) {
		fail = OSSL_CMP_PKIFAILUREINFO_notAuthorized;
		*why = "kur must be signed with the certificate it renews";
		if (type == BODY_KUR)
			goto out;
		*why = "no shared secret configured";
		if (g.secret == NULL)
			goto out;
		*why = "unknown reference value";
		if (!der_find(hdr.tlv, hdr.tlv_len, V_ASN1_CONTEXT_SPECIFIC, 2, &field))
			goto out;
		p = field.val;
		kid = d2i_ASN1_OCTET_STRING(NULL, &p, field.val_len);
		if (kid == NULL || (size_t)kid->length != strlen(g.ref) ||
		    memcmp(kid->data, g.ref, strlen(g.ref)) != 0)
			goto out;
		fail = OSSL_CMP_PKIFAILUREINFO_badMessageCheck;
		*why = "MAC check failed (wrong secret)";
		if (OSSL_CMP_CTX_set1_secretValue(vctx, g.secret, (int)g.secret_len) &&
		    OSSL_CMP_validate_msg(vctx, req))
			fail = -1;
		goto out;
	}
	/* Signed: the sender's certificate comes first in extraCerts ([1]). */
	fail = OSSL_CMP_PKIFAILUREINFO_signerNotTrusted;
	*why = "no sender certificate in extraCerts";
	if (!der_find(der, len, V_ASN1_CONTEXT_SPECIFIC, 1, &field) ||
	    !der_find(field.val, field.val_len, V_ASN1_UNIVERSAL, V_ASN1_SEQUENCE, &first))
		goto out;
	p = first.tlv;
	if ((cert = d2i_X509(NULL, &p, first.tlv_len)) == NULL ||
	    (fail = check_signer(cert, why)) >= 0)
		goto out;
	fail = OSSL_CMP_PKIFAILUREINFO_badMessageCheck;
	*why = "signature check failed";
	if (OSSL_CMP_CTX_set1_srvCert(vctx, cert) && OSSL_CMP_validate_msg(vctx, req)) {
		fail = -1;
		*signer = cert;
		cert = NULL;
	}
out:
	X509_free(cert);
	ASN1_OCTET_STRING_free(kid);
	OSSL_CMP_CTX_free(vctx);
	OPENSSL_free(der);
	ERR_clear_error();
	return fail;
}

/* The [6] publicKey of a CRMF CertTemplate (no getter in OpenSSL 3.0): from its DER. */
static EVP_PKEY *template_pubkey(const OSSL_CRMF_CERTTEMPLATE *tmpl)
{
	unsigned char *der = NULL, *spki = NULL;
	const unsigned char *p;
	int len = tmpl != NULL ? i2d_OSSL_CRMF_CERTTEMPLATE(tmpl, &der) : 0;
	struct der field;
	EVP_PKEY *pub = NULL;

	/* IMPLICIT [6] SubjectPublicKeyInfo: retag as the SEQUENCE it stands for. */
	if (len > 0 && der_find(der, len, V_ASN1_CONTEXT_SPECIFIC, 6, &field) &&
	    (spki = OPENSSL_memdup(field.tlv, field.tlv_len)) != NULL) {
		spki[0] = V_ASN1_SEQUENCE | V_ASN1_CONSTRUCTED;
		p = spki;
		pub = d2i_PUBKEY(NULL, &p, field.tlv_len);
	}
	OPENSSL_free(spki);
	OPENSSL_free(der);
	return pub;
}

static OSSL_CMP_PKISI *on_cert_request(OSSL_CMP_SRV_CTX *srv, const OSSL_CMP_MSG *req,
				       int cert_req_id, const OSSL_CRMF_MSG *crm,
				       const X509_REQ *p10cr, X509 **cert_out,
				       STACK_OF(X509) * *chain_out, STACK_OF(X509) * *ca_pubs)
{
	int type = OSSL_CMP_MSG_get_bodytype(req), fail, i;
	const char *why = "", *name = body_name(type);
	X509 *signer = NULL, *cert;
	EVP_PKEY *pub = NULL;
	const X509_NAME *subject = NULL;
	STACK_OF(X509_EXTENSION) *p10_exts = NULL;
	const STACK_OF(X509_EXTENSION) *exts = NULL;
	const OSSL_CRMF_CERTID *old_id;
	struct fault f = {"", 0, ""};
	OSSL_CMP_PKISI *si = NULL;
	char serial[64], subj[256];

	g.cb_ran = 1;
	fail = check_protection(req, type, &signer, &why);
	if (fail < 0 && type == BODY_KUR) {
		old_id = OSSL_CRMF_MSG_get0_regCtrl_oldCertID(crm);
		if (old_id == NULL || OSSL_CRMF_CERTID_get0_issuer(old_id) == NULL ||
		    X509_NAME_cmp(OSSL_CRMF_CERTID_get0_issuer(old_id),
				  X509_get_issuer_name(signer)) != 0 ||
		    ASN1_INTEGER_cmp(OSSL_CRMF_CERTID_get0_serialNumber(old_id),
				     X509_get0_serialNumber(signer)) != 0) {
			fail = OSSL_CMP_PKIFAILUREINFO_badCertId;
			why = "oldCertId does not name the protecting certificate";
		}
	}
	if (p10cr != NULL) {
		pub = X509_REQ_get_pubkey((X509_REQ *)p10cr);
		subject = X509_REQ_get_subject_name(p10cr);
		exts = p10_exts = X509_REQ_get_extensions((X509_REQ *)p10cr);
	} else if (crm != NULL) {
		pub = template_pubkey(OSSL_CRMF_MSG_get0_tmpl(crm));
		subject = OSSL_CRMF_CERTTEMPLATE_get0_subject(OSSL_CRMF_MSG_get0_tmpl(crm));
		exts = OSSL_CRMF_CERTTEMPLATE_get0_extensions(OSSL_CRMF_MSG_get0_tmpl(crm));
	}
	if ((subject == NULL || X509_NAME_entry_count(subject) == 0) && signer != NULL &&
	    type == BODY_KUR)
		subject = X509_get_subject_name(signer);
	if (fail < 0 && (pub == NULL || subject == NULL || X509_NAME_entry_count(subject) == 0)) {
		fail = OSSL_CMP_PKIFAILUREINFO_badCertTemplate;
		why = pub == NULL ? "no public key in request" : "no subject in request";
	}
	if (fail < 0 && !g.redeliver && take_fault(request_faults, &f) &&
	    strcmp(f.kind, "reject") == 0) {
		fail = OSSL_CMP_PKIFAILUREINFO_badRequest;
		for (i = 0; i <= OSSL_CMP_PKIFAILUREINFO_MAX; i++)
			if (strcmp(f.arg, fail_names[i]) == 0)
				fail = i;
		why = g.status_text;
	}
	g.redeliver = 0;
	if (fail >= 0) {
		char shown[512];
		size_t k, o = 0;

		/* The log is line-based: the CA's own text is data here too. */
		for (k = 0; why[k] != '\0' && o + 5 < sizeof(shown); k++) {
			unsigned char c = (unsigned char)why[k];

			if (c < 0x20 || c == 0x7f)
				o += (size_t)snprintf(shown + o, sizeof(shown) - o, "\\x%02x", c);
			else
				shown[o++] = (char)c;
		}
		shown[o] = '\0';
		logline("%s rejected failInfo=%s (%s)", name, fail_names[fail], shown);
		si = OSSL_CMP_STATUSINFO_new(OSSL_CMP_PKISTATUS_rejection, 1 << fail, why);
	} else if (strcmp(f.kind, "waiting") == 0) {
		OSSL_CMP_MSG_free(g.pending);
		g.pending = OSSL_CMP_MSG_dup(req);
		g.pending_ready_ms = monotonic_ms() + 1000 * (uint64_t)fault_arg(&f, 1);
		logline("%s waiting checkAfter=%ld", name, fault_arg(&f, 1));
		si = OSSL_CMP_STATUSINFO_new(OSSL_CMP_PKISTATUS_waiting, 0, NULL);
	} else if ((cert = issue(pub, subject, exts, &f, chain_out)) == NULL) {
		logline("%s rejected failInfo=systemFailure (cannot issue)", name);
		si = OSSL_CMP_STATUSINFO_new(OSSL_CMP_PKISTATUS_rejection,
					     1 << OSSL_CMP_PKIFAILUREINFO_systemFailure,
					     "cannot issue");
	} else {
		*cert_out = cert;
		X509_free(g.issued);
		X509_up_ref(cert);
		g.issued = cert;
		if (type == BODY_IR && g.capubs)
			*ca_pubs = cert_list(g.ca_cert, g.extra);
		serial_hex(cert, serial, sizeof(serial));
		X509_NAME_oneline(X509_get_subject_name(cert), subj, sizeof(subj));
		logline("%s issued serial=%s subject=%s", name, serial, subj);
		si = OSSL_CMP_STATUSINFO_new(OSSL_CMP_PKISTATUS_accepted, 0, NULL);
	}
	sk_X509_EXTENSION_pop_free(p10_exts, X509_EXTENSION_free);
	EVP_PKEY_free(pub);
	X509_free(signer);
	return si;
}

static int on_poll_req(OSSL_CMP_SRV_CTX *srv, const OSSL_CMP_MSG *req, int cert_req_id,
		       OSSL_CMP_MSG **cert_req, int64_t *check_after)
{
	uint64_t now = monotonic_ms();

	*cert_req = NULL;
	if (g.pending == NULL) {
		logline("pollReq rejected: nothing pending");
		return 0;
	}
	if (now < g.pending_ready_ms) {
		*check_after = (int64_t)((g.pending_ready_ms - now + 999) / 1000);
		logline("pollReq waiting checkAfter=%lld", (long long)*check_after);
		return 1;
	}
	logline("pollReq ready");
	*cert_req = g.pending;
	g.pending = NULL;
	g.redeliver = 1;
	return 1;
}

/* Status and failInfo names of a PKIStatusInfo (no getters in OpenSSL 3.0): from its DER. */
static long pkisi_status(const OSSL_CMP_PKISI *si, char *names, size_t n)
{
	unsigned char *der = NULL;
	const unsigned char *p;
	int len = i2d_OSSL_CMP_PKISI(si, &der), i;
	long status = -1;
	struct der field;
	ASN1_INTEGER *st;
	ASN1_BIT_STRING *bits;
	size_t used = 0;

	snprintf(names, n, "none");
	if (len > 0 && der_find(der, len, V_ASN1_UNIVERSAL, V_ASN1_INTEGER, &field)) {
		p = field.tlv;
		if ((st = d2i_ASN1_INTEGER(NULL, &p, field.tlv_len)) != NULL)
			status = ASN1_INTEGER_get(st);
		ASN1_INTEGER_free(st);
	}
	if (len > 0 && der_find(der, len, V_ASN1_UNIVERSAL, V_ASN1_BIT_STRING, &field)) {
		p = field.tlv;
		bits = d2i_ASN1_BIT_STRING(NULL, &p, field.tlv_len);
		for (i = 0; bits != NULL && i <= OSSL_CMP_PKIFAILUREINFO_MAX; i++)
			if (ASN1_BIT_STRING_get_bit(bits, i) && used < n)
				used += snprintf(names + used, n - used, "%s%s", used ? "," : "",
						 fail_names[i]);
		ASN1_BIT_STRING_free(bits);
	}
	OPENSSL_free(der);
	return status;
}

static int on_cert_conf(OSSL_CMP_SRV_CTX *srv, const OSSL_CMP_MSG *req, int cert_req_id,
			const ASN1_OCTET_STRING *cert_hash, const OSSL_CMP_PKISI *si)
{
	char serial[64], names[512];
	ASN1_OCTET_STRING *hash;
	long status = 0;
	int match;

	if (g.issued == NULL) {
		logline("certConf rejected: no certificate issued in this transaction");
		return 0;
	}
	serial_hex(g.issued, serial, sizeof(serial));
	if (cert_hash != NULL) {
		hash = X509_digest_sig(g.issued, NULL, NULL);
		match = hash != NULL && ASN1_OCTET_STRING_cmp(hash, cert_hash) == 0;
		ASN1_OCTET_STRING_free(hash);
		if (!match) {
			logline("certConf certHash mismatch serial=%s", serial);
			return 0;
		}
	}
	snprintf(names, sizeof(names), "none");
	if (si != NULL)
		status = pkisi_status(si, names, sizeof(names));
	if (status == OSSL_CMP_PKISTATUS_accepted || status == OSSL_CMP_PKISTATUS_grantedWithMods)
		logline("certConf accepted serial=%s", serial);
	else
		logline("certConf rejected serial=%s failInfo=%s", serial, names);
	return 1;
}

static void on_error(OSSL_CMP_SRV_CTX *srv, const OSSL_CMP_MSG *req, const OSSL_CMP_PKISI *si,
		     const ASN1_INTEGER *code, const OSSL_CMP_PKIFREETEXT *details)
{
	char buf[OSSL_CMP_PKISI_BUFLEN];

	logline("error from client: %s",
		si != NULL && OSSL_CMP_snprint_PKIStatusInfo(si, buf, sizeof(buf)) != NULL ? buf
											   : "?");
}

/*
 * RFC 9480 4.3 root CA key update, written from the RFC (OpenSSL 3.0 has no helper):
 *   RootCaKeyUpdateContent ::= SEQUENCE { newWithNew CMPCertificate,
 *      newWithOld [0] EXPLICIT CMPCertificate OPTIONAL, oldWithNew [1] EXPLICIT ... OPTIONAL }
 */
typedef struct {
	X509 *nwn, *nwo, *own;
} ROOT_UPDATE;

ASN1_SEQUENCE(ROOT_UPDATE) =
	{
		ASN1_SIMPLE(ROOT_UPDATE, nwn, X509),
		ASN1_EXP_OPT(ROOT_UPDATE, nwo, X509, 0),
		ASN1_EXP_OPT(ROOT_UPDATE, own, X509, 1),
} static_ASN1_SEQUENCE_END(ROOT_UPDATE)

#define OID_ROOTCA_KEY_UPDATE "1.3.6.1.5.5.7.4.18"
#define OID_ROOTCA_CERT "1.3.6.1.5.5.7.4.20"

	/*
	 * genm: with --root-update, id-it-rootCaCert is answered with id-it-rootCaKeyUpdate
	 * carrying the configured certificates; anything else (or no --root-update) with an error
	 * message.
	 */
	static int on_genm(OSSL_CMP_SRV_CTX * srv, const OSSL_CMP_MSG *req,
			   const STACK_OF(OSSL_CMP_ITAV) * in, STACK_OF(OSSL_CMP_ITAV) * *out)
{
	ASN1_OBJECT *want = OBJ_txt2obj(OID_ROOTCA_CERT, 1), *type = NULL;
	ROOT_UPDATE upd = {g.root_upd[0], g.root_upd[1], g.root_upd[2]};
	const OSSL_CMP_ITAV *itav = NULL;
	ASN1_TYPE *value = NULL, *v;
	ASN1_STRING *str = NULL;
	OSSL_CMP_ITAV *reply = NULL;
	unsigned char *der = NULL;
	char asked[256] = "absent";
	int i, len, ok = 0;

	(void)srv;
	(void)req;
	for (i = 0; want != NULL && i < sk_OSSL_CMP_ITAV_num(in); i++)
		if (OBJ_cmp(OSSL_CMP_ITAV_get0_type(sk_OSSL_CMP_ITAV_value(in, i)), want) == 0)
			itav = sk_OSSL_CMP_ITAV_value(in, i);
	if (itav == NULL || !g.root_upd_set) {
		logline("genm answered with error (%s)",
			itav == NULL ? "no id-it-rootCaCert" : "no --root-update");
		goto out;
	}
	if ((v = OSSL_CMP_ITAV_get0_value(itav)) != NULL) {
		const unsigned char *p;
		X509 *old;

		snprintf(asked, sizeof(asked), "not a certificate");
		if (v->type == V_ASN1_SEQUENCE && (p = v->value.sequence->data) != NULL &&
		    (old = d2i_X509(NULL, &p, v->value.sequence->length)) != NULL) {
			X509_NAME_oneline(X509_get_subject_name(old), asked, sizeof(asked));
			X509_free(old);
		}
	}
	if ((len = ASN1_item_i2d((ASN1_VALUE *)&upd, &der, ASN1_ITEM_rptr(ROOT_UPDATE))) <= 0 ||
	    (str = ASN1_STRING_new()) == NULL || !ASN1_STRING_set(str, der, len) ||
	    (value = ASN1_TYPE_new()) == NULL || !ASN1_TYPE_set1(value, V_ASN1_SEQUENCE, str) ||
	    (type = OBJ_txt2obj(OID_ROOTCA_KEY_UPDATE, 1)) == NULL ||
	    (reply = OSSL_CMP_ITAV_create(type, value)) == NULL ||
	    (*out = sk_OSSL_CMP_ITAV_new_null()) == NULL || !sk_OSSL_CMP_ITAV_push(*out, reply)) {
		logline("genm: cannot make the rootCaKeyUpdate answer");
		sk_OSSL_CMP_ITAV_free(*out);
		*out = NULL;
		if (reply == NULL) {
			ASN1_OBJECT_free(type);
			ASN1_TYPE_free(value);
		}
		OSSL_CMP_ITAV_free(reply);
		goto out;
	}
	logline("genm rootCaKeyUpdate answered (rootCaCert %s; newWithOld %s, oldWithNew %s)",
		asked, upd.nwo != NULL ? "present" : "absent",
		upd.own != NULL ? "present" : "absent");
	ok = 1;
out:
	ASN1_STRING_free(str);
	OPENSSL_free(der);
	ASN1_OBJECT_free(want);
	return ok;
}

/*
 * A fresh server context per transaction: nothing (polling state, cached sender cert,
 * collected extraCerts) leaks from an abandoned transaction into the next one.
 */
static int new_transaction(const unsigned char *der, long len)
{
	int pbm = protection_nid(der, len) == NID_id_PasswordBasedMAC;
	OSSL_CMP_CTX *ctx;

	OSSL_CMP_SRV_CTX_free(g.srv);
	OSSL_CMP_MSG_free(g.pending);
	g.pending = NULL;
	X509_free(g.issued);
	g.issued = NULL;
	if ((g.srv = OSSL_CMP_SRV_CTX_new(NULL, NULL)) == NULL ||
	    (ctx = OSSL_CMP_SRV_CTX_get0_cmp_ctx(g.srv)) == NULL)
		return 0;
	/* The secret only for a MAC-protected transaction: it would also protect the answers. */
	return OSSL_CMP_SRV_CTX_init(g.srv, NULL, on_cert_request, NULL, on_genm, on_error,
				     on_cert_conf, on_poll_req) &&
	       OSSL_CMP_SRV_CTX_set_grant_implicit_confirm(g.srv, g.implicit_confirm) &&
	       OSSL_CMP_CTX_set_log_cb(ctx, openssl_log) &&
	       OSSL_CMP_CTX_set_log_verbosity(ctx, OSSL_CMP_LOG_INFO) &&
	       OSSL_CMP_CTX_set1_cert(ctx, g.srv_cert != NULL ? g.srv_cert : g.ca_cert) &&
	       OSSL_CMP_CTX_set1_pkey(ctx, g.srv_key != NULL ? g.srv_key : g.ca_key) &&
	       /* The CA and --chain: for the protection certificate's chain in extraCerts. */
	       OSSL_CMP_CTX_set1_untrusted(ctx, g.untrusted) && X509_STORE_up_ref(g.store) &&
	       OSSL_CMP_CTX_set0_trustedStore(ctx, g.store) &&
	       (!pbm || g.secret == NULL ||
		(OSSL_CMP_CTX_set1_secretValue(ctx, g.secret, (int)g.secret_len) &&
		 OSSL_CMP_CTX_set1_referenceValue(ctx, (unsigned char *)g.ref,
						  (int)strlen(g.ref))));
}

static OSSL_CMP_MSG *process_cmp(const OSSL_CMP_MSG *req, const unsigned char *der, long len)
{
	int type = OSSL_CMP_MSG_get_bodytype(req);
	int cert_req = type == BODY_IR || type == BODY_CR || type == BODY_KUR || type == BODY_P10CR;
	OSSL_CMP_MSG *rsp = NULL;

	if ((cert_req || type == BODY_GENM || type == BODY_RR || g.srv == NULL) &&
	    !new_transaction(der, len)) {
		logline("%s: cannot set up the server context", body_name(type));
		goto out;
	}
	/* A cert request reaches on_cert_request whatever its protection, to get a precise
	 * failInfo; all other messages are checked by the framework itself. */
	OSSL_CMP_SRV_CTX_set_accept_unprotected(g.srv, cert_req);
	g.cb_ran = 0;
	g.redeliver = 0;
	rsp = OSSL_CMP_SRV_process_request(g.srv, req);
	if (rsp == NULL)
		logline("%s: no response (server framework error)", body_name(type));
	else if (OSSL_CMP_MSG_get_bodytype(rsp) == BODY_ERROR)
		logline("%s answered with error", body_name(type));
	else if (cert_req && !g.cb_ran)
		logline("%s rejected by the server framework (%s)", body_name(type),
			body_name(OSSL_CMP_MSG_get_bodytype(rsp)));
out:
	ERR_clear_error();
	return rsp;
}

static int send_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	ssize_t n;

	while (len > 0) {
		if ((n = send(fd, p, len, MSG_NOSIGNAL)) < 0) {
			if (errno == EINTR && !stop)
				continue;
			return 0;
		}
		p += n;
		len -= (size_t)n;
	}
	return 1;
}

static int send_response(int fd, int status, const void *body, size_t len, int keep)
{
	/* clang-format off */
	static const struct { int status; const char *text; } reasons[] = {
		{ 200, "OK" }, { 400, "Bad Request" }, { 405, "Method Not Allowed" },
		{ 411, "Length Required" }, { 413, "Content Too Large" },
		{ 415, "Unsupported Media Type" }, { 431, "Request Header Fields Too Large" },
		{ 500, "Internal Server Error" }, { 501, "Not Implemented" },
	};
	/* clang-format on */
	const char *reason = "Error";
	char head[256];
	size_t i;
	int n;

	for (i = 0; i < sizeof(reasons) / sizeof(*reasons); i++)
		if (reasons[i].status == status)
			reason = reasons[i].text;
	n = snprintf(head, sizeof(head),
		     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
		     "Connection: %s\r\n\r\n",
		     status, reason, status == 200 ? "application/pkixcmp" : "text/plain", len,
		     keep ? "keep-alive" : "close");

	if (status != 200)
		logline("http %d %s", status, reason);
	return send_all(fd, head, (size_t)n) && send_all(fd, body, len);
}

/* Reads what the client sent so far; fails once the request's deadline has passed. */
static ssize_t read_some(int fd, uint64_t deadline)
{
	ssize_t n;

	if (monotonic_ms() > deadline)
		return -1;
	do
		n = recv(fd, inbuf + inlen, sizeof(inbuf) - inlen, 0);
	while (n < 0 && errno == EINTR && !stop);
	if (n > 0)
		inlen += (size_t)n;
	return n;
}

static void parse_header_line(char *line, struct http_req *r, int *conn_close, int *conn_keep)
{
	char *v = strchr(line, ':');

	if (v == NULL)
		return;
	*v++ = '\0';
	v += strspn(v, " \t");
	if (strcasecmp(line, "Content-Length") == 0)
		r->content_length = v[0] >= '0' && v[0] <= '9' && strlen(v) <= 9 ? atol(v) : -2;
	else if (strcasecmp(line, "Content-Type") == 0)
		r->pkixcmp = strncasecmp(v, "application/pkixcmp", 19) == 0;
	else if (strcasecmp(line, "Transfer-Encoding") == 0)
		r->chunked = 1;
	else if (strcasecmp(line, "Expect") == 0)
		r->expect_continue = strcasestr(v, "100-continue") != NULL;
	else if (strcasecmp(line, "Connection") == 0) {
		*conn_close = strcasestr(v, "close") != NULL;
		*conn_keep = strcasestr(v, "keep-alive") != NULL;
	}
}

/* Reads one request: 1 complete, 0 peer closed, -1 drop, >= 400 status to answer and close. */
static int read_request(int fd, struct http_req *r)
{
	static char head[HEADER_MAX + 1];
	char method[8], *line, *save;
	unsigned char *end;
	int major, minor, conn_close = 0, conn_keep = 0;
	uint64_t deadline = monotonic_ms() + REQUEST_TIMEOUT_MS;

	memset(r, 0, sizeof(*r));
	r->content_length = -1;
	while ((end = memmem(inbuf, inlen, "\r\n\r\n", 4)) == NULL || end - inbuf > HEADER_MAX) {
		if (inlen >= HEADER_MAX)
			return 431;
		if (read_some(fd, deadline) <= 0)
			return inlen == 0 ? 0 : -1;
	}
	r->header_len = (size_t)(end - inbuf) + 4;
	memcpy(head, inbuf, r->header_len - 4);
	head[r->header_len - 4] = '\0';
	line = strtok_r(head, "\r\n", &save);
	if (line == NULL || sscanf(line, "%7s %*s HTTP/%d.%d", method, &major, &minor) != 3 ||
	    major != 1)
		return 400;
	r->post = strcmp(method, "POST") == 0;
	while ((line = strtok_r(NULL, "\r\n", &save)) != NULL)
		parse_header_line(line, r, &conn_close, &conn_keep);
	r->keep_alive = minor >= 1 ? !conn_close : conn_keep;
	if (!r->post)
		return 405;
	if (r->chunked)
		return 501;
	if (r->content_length == -1)
		return 411;
	if (r->content_length < 0 || r->content_length > BODY_MAX)
		return 413;
	if (r->expect_continue && !send_all(fd, "HTTP/1.1 100 Continue\r\n\r\n", 25))
		return -1;
	while (inlen < r->header_len + (size_t)r->content_length)
		if (read_some(fd, deadline) <= 0)
			return -1;
	return 1;
}

/* DER length octets of n into out (at most 5 bytes); returns their count. */
static size_t der_len(size_t n, unsigned char *out)
{
	size_t k = 0, i;

	if (n < 0x80) {
		out[0] = (unsigned char)n;
		return 1;
	}
	for (i = n; i > 0; i >>= 8)
		k++;
	out[0] = (unsigned char)(0x80 | k);
	for (i = 0; i < k; i++)
		out[1 + i] = (unsigned char)(n >> (8 * (k - 1 - i)));
	return 1 + k;
}

/*
 * --extra-certs none|reversed: rebuilds the PKIMessage DER without its [1] extraCerts or
 * with them in reverse order. header, body and protection stay byte for byte (extraCerts
 * are not protected, RFC 4210 5.1.3). Returns 0 on a parse or memory failure.
 */
static int rewrite_extra_certs(unsigned char **der, int *len)
{
	const unsigned char *p = *der, *end, *start, *certs[64];
	long clen, certlen[64];
	int tag, cls, r;
	size_t n_certs = 0, i, body = 0, seq = 0, o = 0, h;
	unsigned char *out, lenbuf[8];
	struct der ec;

	if (strcmp(g.extra_mode, "chain") == 0)
		return 1;
	r = ASN1_get_object(&p, &clen, &tag, &cls, *len);
	if ((r & 0x80) || !(r & V_ASN1_CONSTRUCTED))
		return 0;
	end = p + clen;
	/* header, body, [0] protection: everything before [1] */
	for (start = p; p < end;) {
		r = ASN1_get_object(&p, &clen, &tag, &cls, end - p);
		if (r & 0x80)
			return 0;
		if (cls == V_ASN1_CONTEXT_SPECIFIC && tag == 1)
			break;
		p += clen;
		body = (size_t)(p - start);
	}
	if (strcmp(g.extra_mode, "reversed") == 0 &&
	    der_find(*der, *len, V_ASN1_CONTEXT_SPECIFIC, 1, &ec)) {
		const unsigned char *q = ec.val, *qend;

		r = ASN1_get_object(&q, &clen, &tag, &cls, ec.val_len);
		if (r & 0x80)
			return 0;
		for (qend = q + clen; q < qend && n_certs < 64; n_certs++) {
			certs[n_certs] = q;
			r = ASN1_get_object(&q, &clen, &tag, &cls, qend - q);
			if (r & 0x80)
				return 0;
			q += clen;
			certlen[n_certs] = q - certs[n_certs];
		}
		for (i = 0; i < n_certs; i++)
			seq += (size_t)certlen[i];
	}
	if ((out = OPENSSL_malloc((size_t)*len + 32)) == NULL)
		return 0;
	/* outer SEQUENCE { header body protection [1] { SEQUENCE { certs reversed } } } */
	h = n_certs > 0 ? 1 + der_len(seq, lenbuf) + seq : 0;
	out[o++] = 0x30;
	o += der_len(body + (h > 0 ? 1 + der_len(h, lenbuf) + h : 0), out + o);
	memcpy(out + o, start, body);
	o += body;
	if (n_certs > 0) {
		out[o++] = 0xa1;
		o += der_len(h, out + o);
		out[o++] = 0x30;
		o += der_len(seq, out + o);
		for (i = n_certs; i-- > 0;) {
			memcpy(out + o, certs[i], (size_t)certlen[i]);
			o += (size_t)certlen[i];
		}
	}
	OPENSSL_free(*der);
	*der = out;
	*len = (int)o;
	return 1;
}

/* Answers one complete request; returns whether the connection may be kept. */
static int handle_request(int fd, const struct http_req *r)
{
	const unsigned char *p = inbuf + r->header_len;
	unsigned char *der = NULL, junk[64];
	OSSL_CMP_MSG *req, *rsp;
	struct fault f;
	int len, ok;
	long i;

	if (!r->pkixcmp) {
		send_response(fd, 415, "", 0, 0);
		return 0;
	}
	load_fault();
	if (take_fault(http_faults, &f)) {
		if (strcmp(f.kind, "close") == 0)
			return 0;
		if (strcmp(f.kind, "http500") == 0) {
			send_response(fd, 500, "", 0, 0);
			return 0;
		}
		if (strcmp(f.kind, "garbage") == 0) {
			RAND_bytes(junk, sizeof(junk));
			junk[0] = 0xff; /* never a SEQUENCE */
			return send_response(fd, 200, junk, sizeof(junk), r->keep_alive) &&
			       r->keep_alive;
		}
		for (i = 0; i < 10 * fault_arg(&f, 1) && !stop; i++)
			usleep(100 * 1000);
	}
	if ((req = d2i_OSSL_CMP_MSG(NULL, &p, r->content_length)) == NULL) {
		ERR_clear_error();
		logline("request body is not a CMP message");
		send_response(fd, 400, "", 0, 0);
		return 0;
	}
	rsp = process_cmp(req, inbuf + r->header_len, r->content_length);
	OSSL_CMP_MSG_free(req);
	if (rsp == NULL || (len = i2d_OSSL_CMP_MSG(rsp, &der)) <= 0 ||
	    !rewrite_extra_certs(&der, &len)) {
		send_response(fd, 500, "", 0, 0);
		ok = 0;
	} else {
		ok = send_response(fd, 200, der, (size_t)len, r->keep_alive);
	}
	OPENSSL_free(der);
	OSSL_CMP_MSG_free(rsp);
	return ok && r->keep_alive;
}

/* Waits for the next request on a kept connection; gives up when idle and someone else knocks. */
static int wait_for_request(int fd, int listen_fd)
{
	struct pollfd pfd[2] = {{fd, POLLIN, 0}, {listen_fd, POLLIN, 0}};
	uint64_t deadline = monotonic_ms() + IDLE_TIMEOUT_MS;

	while (!stop && monotonic_ms() < deadline) {
		if (poll(pfd, 2, 1000) < 0 && errno != EINTR)
			return 0;
		if (pfd[0].revents != 0)
			return 1;
		if (pfd[1].revents != 0)
			return 0;
	}
	return 0;
}

static void serve_connection(int fd, int listen_fd)
{
	struct timeval tv = {IO_TIMEOUT_S, 0};
	struct http_req r;
	size_t used;
	int rc;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	inlen = 0;
	while (!stop && (inlen > 0 || wait_for_request(fd, listen_fd))) {
		if ((rc = read_request(fd, &r)) != 1) {
			if (rc >= 400)
				send_response(fd, rc, "", 0, 0);
			return;
		}
		if (!handle_request(fd, &r))
			return;
		used = r.header_len + (size_t)r.content_length;
		memmove(inbuf, inbuf + used, inlen - used);
		inlen -= used;
	}
}

static void on_signal(int sig)
{
	stop = 1;
}

static int load_pem(const char *path, X509 **cert, EVP_PKEY **key, STACK_OF(X509) * *certs)
{
	BIO *bio = BIO_new_file(path, "r");
	X509 *x;
	int ok = bio != NULL;

	if (ok && cert != NULL)
		ok = (*cert = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL;
	if (ok && key != NULL)
		ok = (*key = PEM_read_bio_PrivateKey(bio, NULL, NULL, "")) != NULL;
	while (ok && certs != NULL && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL)
		ok = sk_X509_push(*certs, x) > 0;
	BIO_free(bio);
	if (!ok)
		fprintf(stderr, "cmp-ca: cannot read %s\n", path);
	ERR_clear_error();
	return ok;
}

/* --root-update NWN[,NWO[,OWN]]: an empty element leaves that certificate out. */
static int load_root_update(const char *spec)
{
	char *copy = OPENSSL_strdup(spec), *p = copy, *next;
	int k;

	for (k = 0; p != NULL && k < 3; k++, p = next) {
		if ((next = strchr(p, ',')) != NULL)
			*next++ = '\0';
		if (*p != '\0' && !load_pem(p, &g.root_upd[k], NULL, NULL))
			break;
	}
	OPENSSL_free(copy);
	/* p is left set by a file that did not load, or by a fourth element. */
	if (copy == NULL || g.root_upd[0] == NULL || p != NULL) {
		fprintf(stderr, "cmp-ca: --root-update wants NWN.pem[,NWO.pem[,OWN.pem]]\n");
		return 0;
	}
	g.root_upd_set = 1;
	return 1;
}

int main(int argc, char **argv)
{
	/* clang-format off */
	enum { PORT_FILE, CA_CERT, CA_KEY, CHAIN, LIFETIME, DAYS, FAULT_FILE, SECRET, LOG, PORT,
	       SRV_CERT, SRV_KEY, EXTRA_CERTS, CAPUBS, IMPLICIT, STATUS_TEXT, CLIENT_TRUST,
	       ROOT_UPDATE_OPT, N };
	static const char *const names[N] = { "port-file", "ca-cert", "ca-key", "chain", "lifetime",
					      "days", "fault-file", "secret", "log", "port",
					      "srv-cert", "srv-key", "extra-certs", "capubs",
					      "implicit-confirm", "status-text", "client-trust",
					      "root-update" };
	/* clang-format on */
	const char *arg[N] = {NULL}, *colon;
	struct option opts[N + 1] = {{NULL, 0, NULL, 0}};
	struct sockaddr_in addr = {.sin_family = AF_INET};
	socklen_t alen = sizeof(addr);
	struct sigaction sa = {.sa_handler = on_signal};
	struct pollfd pfd;
	long port;
	char line[32];
	int opt, fd = -1, c, ret = 1;

	for (opt = 0; opt < N; opt++)
		opts[opt] = (struct option){
			names[opt], opt == IMPLICIT ? no_argument : required_argument, NULL, opt};
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) >= 0 && opt < N)
		arg[opt] = optarg != NULL ? optarg : "yes";
	g.lifetime = arg[DAYS] != NULL ? 86400 * atol(arg[DAYS]) : 60;
	g.lifetime = arg[LIFETIME] != NULL ? atol(arg[LIFETIME]) : g.lifetime;
	g.fault_path = arg[FAULT_FILE];
	port = arg[PORT] != NULL ? atol(arg[PORT]) : 0;
	g.extra_mode = arg[EXTRA_CERTS] != NULL ? arg[EXTRA_CERTS] : "chain";
	g.capubs = arg[CAPUBS] == NULL || strcmp(arg[CAPUBS], "yes") == 0;
	g.implicit_confirm = arg[IMPLICIT] != NULL;
	g.status_text = arg[STATUS_TEXT] != NULL ? arg[STATUS_TEXT] : "injected fault";
	if (opt != -1 || optind != argc || arg[PORT_FILE] == NULL || arg[CA_CERT] == NULL ||
	    arg[CA_KEY] == NULL || g.lifetime <= 0 || g.lifetime > 100L * 365 * 86400 || port < 0 ||
	    port > 65535 || (arg[SRV_CERT] == NULL) != (arg[SRV_KEY] == NULL) ||
	    (strcmp(g.extra_mode, "chain") != 0 && strcmp(g.extra_mode, "none") != 0 &&
	     strcmp(g.extra_mode, "reversed") != 0) ||
	    (arg[CAPUBS] != NULL && strcmp(arg[CAPUBS], "yes") != 0 &&
	     strcmp(arg[CAPUBS], "no") != 0)) {
		fprintf(stderr,
			"usage: cmp-ca --port-file FILE --ca-cert CA.pem --ca-key CA.key "
			"[--chain EXTRA.pem] [--lifetime SECONDS | --days DAYS] "
			"[--fault-file FAULTS] [--secret REF:SECRETFILE] [--log FILE] [--port N] "
			"[--srv-cert CERT.pem --srv-key KEY.pem] [--extra-certs chain|none|reversed] "
			"[--capubs yes|no] [--implicit-confirm] [--status-text TEXT] "
			"[--client-trust CERTS.pem] [--root-update NWN.pem[,NWO.pem[,OWN.pem]]]\n");
		return 2;
	}
	g.log = stderr;
	if (arg[LOG] != NULL && (g.log = fopen(arg[LOG], "a")) == NULL) {
		fprintf(stderr, "cmp-ca: cannot open %s: %s\n", arg[LOG], strerror(errno));
		return 1;
	}
	if ((g.extra = sk_X509_new_null()) == NULL || (g.store = X509_STORE_new()) == NULL ||
	    !load_pem(arg[CA_CERT], &g.ca_cert, NULL, NULL) ||
	    !load_pem(arg[CA_KEY], NULL, &g.ca_key, NULL) ||
	    (arg[CHAIN] != NULL && !load_pem(arg[CHAIN], NULL, NULL, &g.extra)) ||
	    (arg[SRV_CERT] != NULL && (!load_pem(arg[SRV_CERT], &g.srv_cert, NULL, NULL) ||
				       !load_pem(arg[SRV_KEY], NULL, &g.srv_key, NULL))) ||
	    (g.untrusted = cert_list(g.ca_cert, g.extra)) == NULL)
		goto out;
	if (!X509_check_private_key(g.ca_cert, g.ca_key)) {
		fprintf(stderr, "cmp-ca: %s does not match %s\n", arg[CA_KEY], arg[CA_CERT]);
		goto out;
	}
	if (!EVP_PKEY_is_a(g.ca_key, "RSA") && !EVP_PKEY_is_a(g.ca_key, "EC")) {
		fprintf(stderr,
			"cmp-ca: the CA key must be RSA or EC (OpenSSL 3.0 CMP signs no other)\n");
		goto out;
	}
	/* The issuing CA is the trust anchor even when it is an intermediate. */
	if (!X509_STORE_add_cert(g.store, g.ca_cert) ||
	    !X509_STORE_set_flags(g.store, X509_V_FLAG_PARTIAL_CHAIN) ||
	    (arg[CLIENT_TRUST] != NULL && X509_STORE_load_file(g.store, arg[CLIENT_TRUST]) != 1)) {
		fprintf(stderr, "cmp-ca: cannot set up the trust store%s%s\n",
			arg[CLIENT_TRUST] != NULL ? " with " : "",
			arg[CLIENT_TRUST] != NULL ? arg[CLIENT_TRUST] : "");
		goto out;
	}
	if (arg[ROOT_UPDATE_OPT] != NULL && !load_root_update(arg[ROOT_UPDATE_OPT]))
		goto out;
	if (arg[SECRET] != NULL) {
		if ((colon = strchr(arg[SECRET], ':')) == NULL || colon == arg[SECRET] ||
		    (g.ref = OPENSSL_strndup(arg[SECRET], (size_t)(colon - arg[SECRET]))) == NULL ||
		    read_file(colon + 1, 4096, &g.secret, &g.secret_len) != 0) {
			fprintf(stderr, "cmp-ca: --secret wants REF:FILE with a readable FILE\n");
			goto out;
		}
		while (g.secret_len > 0 &&
		       (g.secret[g.secret_len - 1] == '\n' || g.secret[g.secret_len - 1] == '\r'))
			g.secret[--g.secret_len] = '\0';
	}
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	addr.sin_port = htons((uint16_t)port);
	opt = 1;
	if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &opt, sizeof(opt)) != 0 ||
	    bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, 16) != 0 ||
	    getsockname(fd, (struct sockaddr *)&addr, &alen) != 0) {
		fprintf(stderr, "cmp-ca: cannot listen on 127.0.0.1:%ld: %s\n", port,
			strerror(errno));
		goto out;
	}
	snprintf(line, sizeof(line), "%u\n", ntohs(addr.sin_port));
	if (write_file_atomic(arg[PORT_FILE], line, strlen(line), 0644) != 0) {
		fprintf(stderr, "cmp-ca: cannot write %s: %s\n", arg[PORT_FILE], strerror(errno));
		goto out;
	}
	logline("listening on 127.0.0.1:%u", ntohs(addr.sin_port));
	while (!stop) {
		pfd = (struct pollfd){fd, POLLIN, 0};
		if (poll(&pfd, 1, 1000) <= 0)
			continue;
		if ((c = accept4(fd, NULL, NULL, SOCK_CLOEXEC)) < 0)
			continue;
		serve_connection(c, fd);
		close(c);
	}
	logline("stopping");
	ret = 0;
out:
	if (fd >= 0)
		close(fd);
	OSSL_CMP_SRV_CTX_free(g.srv);
	OSSL_CMP_MSG_free(g.pending);
	X509_free(g.issued);
	for (c = 0; c < 3; c++)
		X509_free(g.root_upd[c]);
	X509_free(g.ca_cert);
	X509_free(g.srv_cert);
	EVP_PKEY_free(g.srv_key);
	sk_X509_pop_free(g.untrusted, X509_free);
	X509_free(g.rogue_cert);
	EVP_PKEY_free(g.ca_key);
	EVP_PKEY_free(g.rogue_key);
	sk_X509_pop_free(g.extra, X509_free);
	X509_STORE_free(g.store);
	if (g.secret != NULL)
		OPENSSL_cleanse(g.secret, g.secret_len);
	free(g.secret);
	OPENSSL_free(g.ref);
	if (g.log != stderr)
		fclose(g.log);
	return ret;
}
