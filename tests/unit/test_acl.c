/* Access-control decision. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "agent/acl.h"

static struct peer make_peer(uid_t uid, gid_t gid, const gid_t *groups, size_t n)
{
	struct peer p;

	memset(&p, 0, sizeof(p));
	p.uid = uid;
	p.gid = gid;
	p.pid = 1234;
	if (n > 0)
		memcpy(p.groups, groups, n * sizeof(gid_t));
	p.n_groups = n;
	return p;
}

static void test_users(void **state)
{
	const uid_t users[] = {0, 1000};
	struct peer p;

	(void)state;
	p = make_peer(1000, 1000, NULL, 0);
	assert_true(acl_allows(users, 2, NULL, 0, &p));
	p = make_peer(1001, 1000, NULL, 0);
	assert_false(acl_allows(users, 2, NULL, 0, &p));
	/* The uid list does not match gids. */
	p = make_peer(5, 0, NULL, 0);
	assert_false(acl_allows(users, 2, NULL, 0, &p));
}

static void test_groups(void **state)
{
	const gid_t groups[] = {300};
	const gid_t supp[] = {20, 300, 44};
	const gid_t other[] = {20, 44};
	struct peer p;

	(void)state;
	p = make_peer(1000, 300, NULL, 0);
	assert_true(acl_allows(NULL, 0, groups, 1, &p));
	p = make_peer(1000, 1000, supp, 3);
	assert_true(acl_allows(NULL, 0, groups, 1, &p));
	p = make_peer(1000, 1000, other, 2);
	assert_false(acl_allows(NULL, 0, groups, 1, &p));
	/* A group id equal to the uid is not a match by uid. */
	p = make_peer(300, 1000, NULL, 0);
	assert_false(acl_allows(NULL, 0, groups, 1, &p));
}

static void test_empty_lists_admit_nobody(void **state)
{
	struct peer p = make_peer(0, 0, NULL, 0);

	(void)state;
	assert_false(acl_allows(NULL, 0, NULL, 0, &p));
}

static void test_cgroup_units(void **state)
{
	char u[256];

	(void)state;
	assert_true(acl_cgroup_has_unit("0::/system.slice/mosquitto.service\n", "mosquitto.service"));
	/* Nested slices are skipped; scopes are units too. */
	assert_true(acl_cgroup_has_unit("0::/system.slice/foo.slice/bar.service\n", "bar.service"));
	assert_false(acl_cgroup_has_unit("0::/system.slice/foo.slice/bar.service\n", "foo.slice"));
	assert_true(acl_cgroup_has_unit("0::/user.slice/user-1000.slice/session-3.scope\n",
					"session-3.scope"));
	/* A service's own sub-cgroups (Delegate=) still belong to it. */
	assert_true(acl_cgroup_has_unit("0::/system.slice/mosquitto.service/payload\n",
					"mosquitto.service"));
	/*
	 * A user's own systemd instance names its units as it likes
	 * (systemd-run --user --unit=mosquitto.service): the system unit of all of
	 * them is user@UID.service.
	 */
	assert_false(acl_cgroup_has_unit("0::/user.slice/user-1000.slice/user@1000.service/app.slice/"
					 "mosquitto.service\n",
					 "mosquitto.service"));
	assert_true(acl_cgroup_unit("0::/user.slice/user-1000.slice/user@1000.service/app.slice/"
				    "mosquitto.service\n",
				    u, sizeof(u)));
	assert_string_equal(u, "user@1000.service");
	assert_false(acl_cgroup_has_unit("0::/system.slice/mosquitto.service\n", "mosquitto"));
	assert_false(acl_cgroup_has_unit("0::/system.slice/mosquitto.service.d\n",
					 "mosquitto.service"));
	/* The controllers field is not a path: a unit name there does not count. */
	assert_false(acl_cgroup_has_unit("0:myapp.service:/\n", "myapp.service"));
	/* Only the root, or only slices: no unit. */
	assert_false(acl_cgroup_unit("0::/\n", u, sizeof(u)));
	assert_false(acl_cgroup_unit("0::/system.slice\n", u, sizeof(u)));
	/* cgroup v1: the name=systemd hierarchy decides, not other controllers' paths. */
	assert_true(acl_cgroup_has_unit("12:pids:/system.slice/b.service\n"
					"1:name=systemd:/system.slice/a.service\n",
					"a.service"));
	assert_false(acl_cgroup_has_unit("12:pids:/system.slice/a.service\n1:name=systemd:/\n",
					 "a.service"));
	assert_false(acl_cgroup_has_unit("", "a.service"));
	assert_false(acl_cgroup_has_unit("garbage without colons", "a.service"));
}

/* This very process as the caller: by pid (pidfd_open) and by a pidfd, as SO_PEERPIDFD gives. */

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

/* Whether this kernel gives a socket's peer as a pidfd (else acl falls back to the pid). */
static int kernel_has_peerpidfd(int sock)
{
	int pidfd = -1;
	socklen_t len = sizeof(pidfd);

	if (getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) != 0)
		return 0;
	close(pidfd);
	return 1;
}

static void test_caller_exe(void **state)
{
	char *self = realpath("/proc/self/exe", NULL), why[512];
	char *other[] = {"/nonexistent/prog"}, *units[] = {"no-such-unit-mtls.service"};
	struct peer p;
	pid_t child;
	int sv[2];

	(void)state;
	assert_non_null(self);
	memset(&p, 0, sizeof(p));
	p.pid = getpid();
	assert_true(acl_caller_allowed(NULL, 0, NULL, 0, &p, why, sizeof(why)));
	assert_true(acl_caller_allowed(&self, 1, NULL, 0, &p, why, sizeof(why)));
	assert_false(acl_caller_allowed(other, 1, NULL, 0, &p, why, sizeof(why)));
	assert_non_null(strstr(why, "is not in allow-exe"));
	assert_false(acl_caller_allowed(&self, 1, units, 1, &p, why, sizeof(why)));
	assert_non_null(strstr(why, "allow-unit"));
	/*
	 * With the connection's socket, the kernel's record of the connecting
	 * process (SO_PEERPIDFD, Linux 6.5+) decides, not the pid: here a
	 * socketpair, whose peer is this process.
	 */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	p.sock = sv[0];
	p.has_sock = 1;
	p.pid = 1; /* ignored when the socket names the process */
	if (kernel_has_peerpidfd(sv[0]))
		assert_true(acl_caller_allowed(&self, 1, NULL, 0, &p, why, sizeof(why)));
	close(sv[0]);
	close(sv[1]);
	/* A caller that has exited (and been reaped) is refused, never judged by its pid. */
	child = fork();
	assert_true(child >= 0);
	if (child == 0)
		_exit(0);
	assert_int_equal(waitpid(child, NULL, 0), child);
	memset(&p, 0, sizeof(p));
	p.pid = child;
	assert_false(acl_caller_allowed(&self, 1, NULL, 0, &p, why, sizeof(why)));
	assert_non_null(strstr(why, "gone"));
	free(self);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_users),
		cmocka_unit_test(test_groups),
		cmocka_unit_test(test_empty_lists_admit_nobody),
		cmocka_unit_test(test_cgroup_units),
		cmocka_unit_test(test_caller_exe),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
