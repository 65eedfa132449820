/*
 * The metrics-listen address parser, shared by the config reader (conf/config.c) and the
 * metrics endpoint (agent/metrics-http.c).
 */
#ifndef MTLS_AGENT_METRICS_ADDR_H
#define MTLS_AGENT_METRICS_ADDR_H

#include <stddef.h>
#include <sys/socket.h>

/* Parses a loopback HOST:PORT (IPv4 "127.x.y.z:P", IPv6 "[::1]:P"); refuses other hosts. */
int metrics_parse_addr(const char *value, struct sockaddr_storage *ss, char *err, size_t errlen);

#endif
