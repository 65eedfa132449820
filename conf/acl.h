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
	/*
	 * The connection's socket (not owned; valid only when has_sock). The
	 * SO_PEERPIDFD pidfd is read from it only when allow-exe/allow-unit must
	 * be checked, so connections hold no second descriptor (see fd_budget).
	 */
	int sock;
	int has_sock;
	/* Executable at connect time, for the audit trail only (never a decision); "" unknown. */
	char exe[256];
	/* Start time of pid (/proc/PID/stat field 22) at accept; 0 unknown. */
	unsigned long long starttime;
};

/*
 * True when the peer's uid is in users, or its primary or any supplementary
 * group is in groups. Empty lists admit nobody.
 */
int acl_allows(const uid_t *users, size_t n_users, const gid_t *groups, size_t n_groups,
	       const struct peer *peer);

/*
 * The caller's program and systemd unit against an identity's allow-exe and
 * allow-unit lists (empty lists: no condition). The process is pinned by
 * its pidfd (SO_PEERPIDFD on the socket, else pidfd_open of the SO_PEERCRED pid) and
 * checked still alive after /proc/PID/exe and /proc/PID/cgroup were read, so
 * what was read belongs to it and not to a process that reused the pid. Without
 * SO_PEERPIDFD the pid's start time must equal peer->starttime (recorded at
 * accept), else the pid may since have gone to another process: refused.
 * Returns 1 if allowed; 0 with why (the rule that failed) otherwise.
 */
int acl_caller_allowed(char *const *exes, size_t n_exes, char *const *units, size_t n_units,
		       const struct peer *peer, char *why, size_t whylen);

/*
 * The system unit of a process from the text of its /proc/PID/cgroup, as
 * sd_pid_get_unit() finds it: slices skipped, the first other component. A
 * process of a user's own systemd instance gets user@UID.service, never the
 * unit names the user chose. 1 with the name in out, 0 when there is none.
 */
int acl_cgroup_unit(const char *cgroup_text, char *out, size_t outlen);

/* True when acl_cgroup_unit() of cgroup_text is unit. */
int acl_cgroup_has_unit(const char *cgroup_text, const char *unit);

/* Start time of a process (/proc/PID/stat field 22, clock ticks after boot); 0 on error. */
unsigned long long acl_proc_starttime(pid_t pid);

#endif
