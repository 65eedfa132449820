/* metrics-listen's HOST:PORT, parsed: apart from the HTTP listener so that the
 * configuration reader links without it. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "conf/metrics-addr.h"

int metrics_parse_addr(const char *value, struct sockaddr_storage *ss, char *err, size_t errlen)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	char host[64], *end;
	const char *colon;
	unsigned long port;
	size_t hlen;

	memset(ss, 0, sizeof(*ss));
	if ((colon = strrchr(value, ':')) == NULL) {
		snprintf(err, errlen, "want HOST:PORT or an absolute socket path");
		return -1;
	}
	errno = 0;
	port = strtoul(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || errno != 0 || port == 0 || port > 65535) {
		snprintf(err, errlen, "bad port \"%s\" (1..65535)", colon + 1);
		return -1;
	}
	hlen = (size_t)(colon - value);
	if (hlen >= sizeof(host)) {
		snprintf(err, errlen, "host too long");
		return -1;
	}
	memcpy(host, value, hlen);
	host[hlen] = '\0';
	if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
		host[hlen - 1] = '\0';
		if (inet_pton(AF_INET6, host + 1, &sin6->sin6_addr) != 1) {
			snprintf(err, errlen, "bad IPv6 address \"%s\"", host + 1);
			return -1;
		}
		if (!IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr)) {
			snprintf(err, errlen,
				 "only the loopback address [::1] is allowed (the "
				 "listener has no TLS or authentication: put a proxy in front)");
			return -1;
		}
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		return 0;
	}
	if (inet_pton(AF_INET, host, &sin->sin_addr) != 1) {
		snprintf(err, errlen, "bad address \"%s\" (numeric 127.x.y.z or [::1])", host);
		return -1;
	}
	if ((ntohl(sin->sin_addr.s_addr) >> 24) != 127) {
		snprintf(err, errlen,
			 "only loopback addresses (127.0.0.0/8, [::1]) are allowed (the "
			 "listener has no TLS or authentication: put a proxy in front)");
		return -1;
	}
	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)port);
	return 0;
}
