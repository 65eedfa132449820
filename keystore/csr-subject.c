/*
 * The subject of a certificate request, parsed: the pure half of csr.c (OpenSSL only, no
 * keystore), so that the configuration reader (subject = ...) links without a keystore.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "common/log.h"
#include "keystore/csr.h"
#include "mtls-agent/client.h"

#define CSR_MAX_SUBJECT 1024
#define CSR_MAX_RDNS 32

static const struct {
	const char *name;
	int nid;
} dn_attrs[] = {{"CN", NID_commonName},
		{"C", NID_countryName},
		{"ST", NID_stateOrProvinceName},
		{"L", NID_localityName},
		{"O", NID_organizationName},
		{"OU", NID_organizationalUnitName},
		{"DC", NID_domainComponent},
		{"UID", NID_userId},
		{"emailAddress", NID_pkcs9_emailAddress},
		{"serialNumber", NID_serialNumber},
		{"street", NID_streetAddress},
		{"title", NID_title},
		{"SN", NID_surname},
		{"GN", NID_givenName},
		{"initials", NID_initials},
		{"pseudonym", NID_pseudonym},
		{"postalCode", NID_postalCode}};

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
		*--e = '\0';
	return s;
}

/*
 * One "TYPE=value" (already unescaped); eq is the offset of its first
 * unescaped '=', more_eq says whether another unescaped '=' followed.
 */
static int add_rdn(X509_NAME *name, char *part, long eq, int more_eq, int loc, char *err,
		   size_t errlen)
{
	char *type, *val, tbuf[48];
	const char *why;
	size_t i;
	int nid = NID_undef;

	if (part[0] == '\0') {
		snprintf(err, errlen, "subject has an empty part");
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	if (eq < 0) {
		snprintf(err, errlen, "subject part '%s' has no '='",
			 log_sanitize(part, tbuf, sizeof(tbuf)));
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	part[eq] = '\0';
	type = trim(part);
	val = trim(part + eq + 1);
	for (i = 0; i < sizeof(dn_attrs) / sizeof(dn_attrs[0]); i++)
		if (strcasecmp(dn_attrs[i].name, type) == 0)
			nid = dn_attrs[i].nid;
	log_sanitize(type, tbuf, sizeof(tbuf));
	if (nid == NID_undef) {
		snprintf(
			err, errlen,
			"unknown subject attribute '%s' (known: CN C ST L O OU DC UID emailAddress "
			"serialNumber street title SN GN initials pseudonym postalCode)",
			tbuf);
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	if (val[0] == '\0') {
		snprintf(err, errlen, "subject attribute %s has an empty value", tbuf);
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	/* Most likely two attributes run together ("CN=a/O=b" without the leading '/'). */
	if (more_eq) {
		snprintf(err, errlen,
			 "subject attribute %s: '=' in the value (write \\= if meant, or separate "
			 "attributes: /CN=a/O=b or CN=a,O=b)",
			 tbuf);
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	for (i = 0; val[i] != '\0'; i++) {
		if ((unsigned char)val[i] < 0x20 || val[i] == 0x7f) {
			snprintf(err, errlen, "subject attribute %s: control character in value",
				 tbuf);
			return MTLS_AGENT_ERR_INVALID_ARG;
		}
	}
	if (X509_NAME_add_entry_by_NID(name, nid, MBSTRING_UTF8, (unsigned char *)val, -1, loc,
				       0) != 1) {
		why = ERR_reason_error_string(ERR_peek_last_error());
		snprintf(err, errlen, "subject attribute %s: value not acceptable (%s)", tbuf,
			 why != NULL ? why : "unknown reason");
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	return 0;
}

/*
 * "/A=x/B=y" is encoded in the order written; "B=y,A=x" is RFC 4514, which
 * writes the most specific RDN first, so each RDN goes in front.
 */
static int parse_subject(const char *subject, X509_NAME *name, char *err, size_t errlen)
{
	char *buf = NULL, sep;
	size_t len, pos, o, n_rdns = 0;
	long eq;
	int slash, more_eq, ret = 0;

	len = strlen(subject);
	if (len == 0 || (len == 1 && subject[0] == '/')) {
		snprintf(err, errlen, "subject is empty");
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	if (len > CSR_MAX_SUBJECT) {
		snprintf(err, errlen, "subject is longer than %d bytes", CSR_MAX_SUBJECT);
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	if ((buf = malloc(len + 1)) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	slash = subject[0] == '/';
	sep = slash ? '/' : ',';
	pos = slash ? 1 : 0;
	for (;;) {
		o = 0;
		eq = -1;
		more_eq = 0;
		while (subject[pos] != '\0' && subject[pos] != sep) {
			if (subject[pos] == '\\') {
				if (subject[pos + 1] == '\0') {
					snprintf(err, errlen, "subject ends with a backslash");
					ret = MTLS_AGENT_ERR_INVALID_ARG;
					goto out;
				}
				buf[o++] = subject[pos + 1];
				pos += 2;
				continue;
			}
			if (subject[pos] == '=') {
				if (eq < 0)
					eq = (long)o;
				else
					more_eq = 1;
			}
			buf[o++] = subject[pos++];
		}
		buf[o] = '\0';
		if (++n_rdns > CSR_MAX_RDNS) {
			snprintf(err, errlen, "subject has more than %d attributes", CSR_MAX_RDNS);
			ret = MTLS_AGENT_ERR_INVALID_ARG;
			goto out;
		}
		if ((ret = add_rdn(name, buf, eq, more_eq, slash ? -1 : 0, err, errlen)) != 0)
			goto out;
		if (subject[pos] == '\0')
			break;
		pos++;
	}
out:
	free(buf);
	return ret;
}

int csr_parse_subject(const char *subject, X509_NAME **out, char *err, size_t errlen)
{
	X509_NAME *name;
	int ret;

	*out = NULL;
	if (subject == NULL) {
		snprintf(err, errlen, "subject is empty");
		return MTLS_AGENT_ERR_INVALID_ARG;
	}
	if ((name = X509_NAME_new()) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	if ((ret = parse_subject(subject, name, err, errlen)) != 0) {
		X509_NAME_free(name);
		ERR_clear_error();
		return ret;
	}
	*out = name;
	return 0;
}
