/* renew-verify's URL, parsed: apart from the handshake so that the configuration reader
 * (and with it mtls-agentctl check) links without a TLS client. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "renew/renew-verify.h"

int renew_verify_parse(const char *url, struct renew_verify_url *out, char *err, size_t errlen)
{
	const char *p, *host, *host_end, *port = NULL, *port_end = NULL;
	size_t n;

	memset(out, 0, sizeof(*out));
	if (strncmp(url, "https://", 8) == 0) {
		p = url + 8;
	} else if (strncmp(url, "mqtts://", 8) == 0) {
		out->mqtt = 1;
		p = url + 8;
	} else {
		snprintf(err, errlen, "want https://HOST[:PORT]/PATH or mqtts://HOST:PORT");
		return -1;
	}
	if (*p == '[') { /* [IPv6] */
		host = p + 1;
		if ((host_end = strchr(host, ']')) == NULL)
			goto bad;
		p = host_end + 1;
	} else {
		host = p;
		host_end = p + strcspn(p, ":/");
		p = host_end;
	}
	if (*p == ':') {
		port = p + 1;
		port_end = port + strspn(port, "0123456789");
		p = port_end;
	}
	n = (size_t)(host_end - host);
	if (n == 0 || n >= sizeof(out->host) || (port != NULL && port_end == port))
		goto bad;
	memcpy(out->host, host, n);
	if (port != NULL) {
		long v = strtol(port, NULL, 10);

		if ((size_t)(port_end - port) > 5 || v < 1 || v > 65535)
			goto bad;
		snprintf(out->port, sizeof(out->port), "%ld", v);
	} else if (out->mqtt) {
		snprintf(err, errlen, "mqtts:// needs a port (mqtts://HOST:8883)");
		return -1;
	} else {
		snprintf(out->port, sizeof(out->port), "443");
	}
	if (out->mqtt) {
		if (*p != '\0' && strcmp(p, "/") != 0)
			goto bad;
		return 0;
	}
	if (*p == '\0')
		p = "/";
	if (*p != '/' || strlen(p) >= sizeof(out->path) || strpbrk(p, " \r\n\t") != NULL)
		goto bad;
	snprintf(out->path, sizeof(out->path), "%s", p);
	return 0;
bad:
	snprintf(err, errlen, "want https://HOST[:PORT]/PATH or mqtts://HOST:PORT");
	return -1;
}
