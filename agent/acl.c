#include "config.h"

#include "agent/acl.h"

static int has_gid(const gid_t *groups, size_t n, gid_t gid)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (groups[i] == gid)
			return 1;
	return 0;
}

int acl_allows(const uid_t *users, size_t n_users, const gid_t *groups, size_t n_groups,
	       const struct peer *peer)
{
	size_t i;

	for (i = 0; i < n_users; i++)
		if (users[i] == peer->uid)
			return 1;
	if (has_gid(groups, n_groups, peer->gid))
		return 1;
	for (i = 0; i < peer->n_groups && i < PEER_MAX_GROUPS; i++)
		if (has_gid(groups, n_groups, peer->groups[i]))
			return 1;
	return 0;
}
