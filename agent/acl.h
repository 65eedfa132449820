/* Access-control decision from a peer's credentials (pure function). */
#ifndef MTLS_AGENT_ACL_H
#define MTLS_AGENT_ACL_H

#include <stddef.h>
#include <sys/types.h>

#define PEER_MAX_GROUPS 64

/* Who is on the other end of a connection, from SO_PEERCRED / SO_PEERGROUPS. */
struct peer {
	uid_t uid;
	gid_t gid;
	pid_t pid;
	gid_t groups[PEER_MAX_GROUPS]; /* supplementary groups */
	size_t n_groups;
	/* Executable at connect time, for the audit trail only (never a decision); "" unknown. */
	char exe[256];
};

/*
 * True when the peer's uid is in users, or its primary or any supplementary
 * group is in groups. Empty lists admit nobody.
 */
int acl_allows(const uid_t *users, size_t n_users, const gid_t *groups, size_t n_groups,
	       const struct peer *peer);

#endif
