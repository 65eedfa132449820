/* mtls-agentctl check: the socket, and whether everyone allowed can reach it. */
#include "config.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conf/acl.h"
#include "conf/conf.h"
#include "client/ctl-check.h"

const char *user_name(uid_t uid, char *buf, size_t len)
{
	struct passwd *pw = getpwuid(uid);

	if (pw != NULL)
		snprintf(buf, len, "%s", pw->pw_name);
	else
		snprintf(buf, len, "%lu", (unsigned long)uid);
	return buf;
}

static const char *group_name(gid_t gid, char *buf, size_t len)
{
	struct group *gr = getgrgid(gid);

	if (gr != NULL)
		snprintf(buf, len, "%s", gr->gr_name);
	else
		snprintf(buf, len, "%lu", (unsigned long)gid);
	return buf;
}

/* Name of uid's primary group. */
static const char *primary_group(uid_t uid, char *buf, size_t len)
{
	struct passwd *pw = getpwuid(uid);

	if (pw == NULL) {
		snprintf(buf, len, "GROUP");
		return buf;
	}
	return group_name(pw->pw_gid, buf, len);
}

/*
 * Whether a process of uid would count as a member of gid, by the agent's own rule
 * (acl_allows: the primary or a supplementary group) applied to the groups the account
 * has, as SO_PEERGROUPS reports them for its processes.
 */
static int user_in_group(uid_t uid, gid_t gid)
{
	struct passwd *pw = getpwuid(uid);
	struct peer peer;
	int n = PEER_MAX_GROUPS;

	if (pw == NULL)
		return 0;
	memset(&peer, 0, sizeof(peer));
	peer.uid = uid;
	peer.gid = pw->pw_gid;
	/* More groups than a peer carries: the agent would see only as many. */
	if (getgrouplist(pw->pw_name, pw->pw_gid, peer.groups, &n) < 0)
		n = PEER_MAX_GROUPS;
	peer.n_groups = (size_t)n;
	return acl_allows(NULL, 0, &gid, 1, &peer);
}

/* Whether uid has permission bit (2: write, 1: search) on a file with st's owner, group, mode. */
static int user_may(uid_t uid, const struct stat *st, mode_t mode, unsigned bit)
{
	if (uid == 0)
		return 1;
	if (uid == st->st_uid)
		return ((mode >> 6) & bit) != 0;
	if (user_in_group(uid, st->st_gid))
		return ((mode >> 3) & bit) != 0;
	return (mode & bit) != 0;
}

/* The same for the members of group gid (as members of that group, not otherwise). */
static int group_may(gid_t gid, const struct stat *st, mode_t mode, unsigned bit)
{
	if (gid == st->st_gid)
		return ((mode >> 3) & bit) != 0;
	return (mode & bit) != 0;
}

/* The uid of whoever listens on path (SO_PEERCRED: the agent, or systemd with socket
 * activation). Returns 0 or -1. */
int listener_uid(const char *path, uid_t *uid)
{
	struct sockaddr_un sun;
	struct ucred cr;
	socklen_t len = sizeof(cr);
	int fd, ok = 0;

	if (strlen(path) >= sizeof(sun.sun_path))
		return -1;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, strlen(path) + 1);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0 &&
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0 && len == sizeof(cr)) {
		*uid = cr.uid;
		ok = 1;
	}
	close(fd);
	return ok ? 0 : -1;
}

/*
 * Owners the agent accepts for its configuration and PIN files: root or its own uid. The
 * listener's uid is the agent's unless systemd holds the socket; the packaged service user
 * "mtls-agent" is accepted too.
 */
int agent_may_own(const struct doctor *d, uid_t uid)
{
	struct passwd *pw;

	if (uid == 0 || (d->agent_uid_known && uid == d->agent_uid))
		return 1;
	return (pw = getpwnam("mtls-agent")) != NULL && pw->pw_uid == uid;
}

/* --- who must be able to open the socket --- */

struct principal {
	int is_group;
	unsigned long id;
	const char *why; /* identity name, or NULL for administrators */
};

struct principals {
	struct principal *p;
	size_t n;
	int nomem;
};

static void principal_add(struct principals *ps, int is_group, unsigned long id, const char *why)
{
	struct principal *np;
	size_t i;

	for (i = 0; i < ps->n; i++)
		if (ps->p[i].is_group == is_group && ps->p[i].id == id)
			return;
	if ((np = realloc(ps->p, (ps->n + 1) * sizeof(*np))) == NULL) {
		ps->nomem = 1;
		return;
	}
	ps->p = np;
	np[ps->n].is_group = is_group;
	np[ps->n].id = id;
	np[ps->n].why = why;
	ps->n++;
}

/* Adds the ids of an allow-list as the agent resolved them (unknown names are left out
 * there, and reported as configuration problems). */
static void principals_add(struct principals *ps, int is_group, const void *ids, size_t n,
			   const char *why)
{
	size_t i;

	for (i = 0; i < n; i++)
		principal_add(ps, is_group,
			      is_group ? (unsigned long)((const gid_t *)ids)[i]
				       : (unsigned long)((const uid_t *)ids)[i],
			      why);
}

static void principal_desc(const struct principal *p, char *buf, size_t len)
{
	char n[64];

	if (p->is_group)
		snprintf(buf, len, "group %s", group_name((gid_t)p->id, n, sizeof(n)));
	else
		snprintf(buf, len, "%s", user_name((uid_t)p->id, n, sizeof(n)));
}

static int principal_may_connect(const struct principal *p, const struct stat *ss, mode_t smode,
				 const struct stat *ds)
{
	if (p->is_group)
		return group_may((gid_t)p->id, ds, ds->st_mode, 1) &&
		       group_may((gid_t)p->id, ss, smode, 2);
	return user_may((uid_t)p->id, ds, ds->st_mode, 1) && user_may((uid_t)p->id, ss, smode, 2);
}

/* Everyone the configuration allows (administrators, and the identities checked). */
static void allowed_principals(const struct doctor *d, struct principals *ps)
{
	size_t i;

	principals_add(ps, 0, d->conf->admin_users, d->conf->n_admin_users, NULL);
	principals_add(ps, 1, d->conf->admin_groups, d->conf->n_admin_groups, NULL);
	for (i = 0; i < d->conf->n_identities; i++) {
		const struct cfg_identity *id = &d->conf->identities[i];

		if (d->only != NULL && strcmp(d->only, id->name) != 0)
			continue;
		principals_add(ps, 0, id->allow_users, id->n_allow_users, id->name);
		principals_add(ps, 1, id->allow_groups, id->n_allow_groups, id->name);
	}
}

/* Why p, allowed to use the agent, cannot reach it, and the remedy that fits. */
static void why_unreachable(struct findings *fd, const struct principal *p, const char *dir,
			    const struct stat *ss, const struct stat *ds)
{
	char desc[96], owner[64], group[64], pgroup[64], why[96];
	unsigned smode = (unsigned)(ss->st_mode & 07777), dmode = (unsigned)(ds->st_mode & 07777);

	if (p->why != NULL)
		snprintf(why, sizeof(why), "identity \"%s\"", p->why);
	else
		snprintf(why, sizeof(why), "the administrator commands");
	principal_desc(p, desc, sizeof(desc));
	user_name(ss->st_uid, owner, sizeof(owner));
	group_name(ss->st_gid, group, sizeof(group));
	if (p->is_group && !group_may((gid_t)p->id, ds, ds->st_mode, 1))
		add_finding(fd, 0,
			    "%s may use %s but its members cannot enter the socket's directory %s "
			    "(mode %04o) — chmod 0755 %s",
			    desc, why, dir, dmode, dir);
	else if (p->is_group)
		add_finding(
			fd, 0,
			"%s may use %s but its members cannot open the socket (mode %04o, group "
			"%s) — set socket-group = %s in [agent] (SocketGroup= with socket "
			"activation)",
			desc, why, smode, group, desc + 6);
	else if (!user_may((uid_t)p->id, ds, ds->st_mode, 1))
		add_finding(fd, 0,
			    "user %s may use %s but cannot enter the socket's directory %s (mode "
			    "%04o) — chmod 0755 %s",
			    desc, why, dir, dmode, dir);
	else if (ss->st_gid != 0)
		add_finding(
			fd, 0,
			"user %s may use %s but cannot open the socket (mode %04o, owner %s, "
			"group %s) — add %s to group %s (usermod -aG %s %s), or set socket-group "
			"to a group %s is in",
			desc, why, smode, owner, group, desc, group, group, desc, desc);
	else
		add_finding(
			fd, 0,
			"user %s may use %s but cannot open the socket (mode %04o, owner %s, "
			"group %s) — set socket-group in [agent] to a group %s is in, such as %s "
			"(SocketGroup= with socket activation), and socket-mode = 0660",
			desc, why, smode, owner, group, desc,
			primary_group((uid_t)p->id, pgroup, sizeof(pgroup)));
}

/* A socket open to everyone: needed only if someone allowed gets in by the "others" bits. */
static void check_open_to_all(struct findings *fd, const struct principals *ps,
			      const struct stat *ss, const struct stat *ds)
{
	char desc[96], who[256] = "";
	int all_narrow = 1;
	size_t i, len;

	for (i = 0; i < ps->n; i++) {
		if (!principal_may_connect(&ps->p[i], ss, ss->st_mode & ~(mode_t)07, ds))
			all_narrow = 0;
		principal_desc(&ps->p[i], desc, sizeof(desc));
		len = strlen(who);
		if (i < 6)
			snprintf(who + len, sizeof(who) - len, "%s%s", i > 0 ? ", " : "", desc);
		else if (i == 6)
			snprintf(who + len, sizeof(who) - len, ", ...");
	}
	if (all_narrow)
		add_finding(
			fd, 0,
			"mode %04o lets every local user connect, though only %s may use the "
			"agent — set socket-mode = 0660 in [agent] (SocketMode=0660 with socket "
			"activation)",
			(unsigned)(ss->st_mode & 07777), who[0] != '\0' ? who : "root");
	else
		add_finding(fd, 1,
			    "mode %04o lets every local user connect: the identities' allow-lists "
			    "are the only wall — put the allowed users in one group and set "
			    "socket-group to it with socket-mode = 0660",
			    (unsigned)(ss->st_mode & 07777));
}

/*
 * With the configuration: every user and group an identity (or administration) allows must
 * be able to open the socket, and a socket every local user may open is too wide when they
 * all could do without it.
 */
static void check_socket_access(struct doctor *d, struct findings *fd, const char *dir,
				const struct stat *ss, const struct stat *ds)
{
	struct principals ps = {NULL, 0, 0};
	size_t i;

	if (d->conf == NULL) {
		if ((ss->st_mode & S_IWOTH) != 0)
			add_finding(
				fd, 1,
				"mode %04o lets every local user connect: the identities' "
				"allow-lists are the only wall — unless every user needs the "
				"agent, set socket-mode = 0660 and a socket-group holding the users "
				"that do",
				(unsigned)(ss->st_mode & 07777));
		return;
	}
	allowed_principals(d, &ps);
	if (ps.nomem) {
		d->sink.nomem = 1;
		goto out;
	}
	for (i = 0; i < ps.n; i++)
		if ((ps.p[i].is_group || ps.p[i].id != 0) &&
		    !principal_may_connect(&ps.p[i], ss, ss->st_mode, ds))
			why_unreachable(fd, &ps.p[i], dir, ss, ds);
	if ((ss->st_mode & S_IWOTH) != 0)
		check_open_to_all(fd, &ps, ss, ds);
out:
	free(ps.p);
}

void check_socket(struct doctor *d)
{
	struct findings *fd = subject(d, "socket", d->sock);
	char *dir = strdup(d->sock), *slash, who[64];
	struct stat ss, ds;
	int have_dir = 0;

	if (dir == NULL) {
		d->sink.nomem = 1;
		return;
	}
	if ((slash = strrchr(dir, '/')) == NULL)
		snprintf(dir, strlen(dir) + 1, ".");
	else if (slash == dir)
		slash[1] = '\0';
	else
		*slash = '\0';
	if (stat(dir, &ds) == 0 && S_ISDIR(ds.st_mode)) {
		have_dir = 1;
		/* Whoever can write the directory can put their own socket in the agent's place. */
		if ((ds.st_mode & (S_IWGRP | S_IWOTH)) != 0)
			add_finding(
				fd, 0,
				"its directory %s is writable by %s (mode %04o): they can replace "
				"the socket with their own and receive what applications send — "
				"use a directory only root can write (chmod 0755 %s, or the "
				"default socket = /run/mtls-agent/agent.sock)",
				dir, (ds.st_mode & S_IWOTH) != 0 ? "every local user" : "its group",
				(unsigned)(ds.st_mode & 07777), dir);
		else if (!agent_may_own(d, ds.st_uid))
			add_finding(fd, 0,
				    "its directory %s is owned by %s, who can replace the socket — "
				    "chown root %s",
				    dir, user_name(ds.st_uid, who, sizeof(who)), dir);
	}
	if (lstat(d->sock, &ss) != 0) {
		/* Missing: the reachability finding says it. */
		goto out;
	}
	if (!S_ISSOCK(ss.st_mode)) {
		add_finding(fd, 0,
			    "%s is not a socket — remove it and restart the agent, which creates "
			    "its socket",
			    d->sock);
		goto out;
	}
	if (!agent_may_own(d, ss.st_uid))
		add_finding(fd, 0,
			    "owned by %s, neither root nor the agent's user: another program's "
			    "socket? — stop that program, remove %s and restart the agent",
			    user_name(ss.st_uid, who, sizeof(who)), d->sock);
	if (have_dir)
		check_socket_access(d, fd, dir, &ss, &ds);
out:
	free(dir);
}
