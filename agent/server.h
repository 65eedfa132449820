/*
 * The socket side of the daemon: `workers` threads share one epoll set; the
 * thread that receives a request reads it, signs and replies (see server.c).
 */
#ifndef MTLS_AGENT_SERVER_H
#define MTLS_AGENT_SERVER_H

#include <stddef.h>

#include "agent/state.h"

/*
 * Creates the listening socket for cfg: checks its directory, refuses to
 * replace a live agent's socket, binds under umask 0177, then applies
 * socket-mode and socket-group. Returns the fd or -1 with err set.
 */
int server_listen(const struct config *cfg, char *err, size_t errlen);

/*
 * Serves listen_fd until SIGTERM/SIGINT. rt is the initial runtime (its
 * reference passes to the server); config_path is re-read on SIGHUP and
 * RELOAD. Removes socket_path on exit if unlink_socket. Returns 0 on a clean stop.
 */
int server_run(int listen_fd, const char *socket_path, int unlink_socket, const char *config_path,
	       struct runtime *rt);

#endif
