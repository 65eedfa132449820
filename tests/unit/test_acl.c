/* Access-control decision. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "conf/acl.h"

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
	assert_true(
		acl_cgroup_has_unit("0::/system.slice/mosquitto.service\n", "mosquitto.service"));
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
	assert_false(
		acl_cgroup_has_unit("0::/user.slice/user-1000.slice/user@1000.service/app.slice/"
				    "mosquitto.service\n",
				    "mosquitto.service"));
	assert_true(acl_cgroup_unit("0::/user.slice/user-1000.slice/user@1000.service/app.slice/"
				    "mosquitto.service\n",
				    u, sizeof(u)));
	assert_string_equal(u, "user@1000.service");
	assert_false(acl_cgroup_has_unit("0::/system.slice/mosquitto.service\n", "mosquitto"));
	assert_false(
		acl_cgroup_has_unit("0::/system.slice/mosquitto.service.d\n", "mosquitto.service"));
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
	/* By pid, the start time recorded at accept must match: else the pid may be reused. */
	assert_false(acl_caller_allowed(&self, 1, NULL, 0, &p, why, sizeof(why)));
	assert_non_null(strstr(why, "start time"));
	p.starttime = acl_proc_starttime(getpid()) + 1;
	assert_false(acl_caller_allowed(&self, 1, NULL, 0, &p, why, sizeof(why)));
	assert_non_null(strstr(why, "not the process that connected"));
	p.starttime = acl_proc_starttime(getpid());
	assert_true(p.starttime > 0);
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

/*
 * The agent as an unprivileged uid, the caller another uid: as the shipped
 * unit runs it. With CAP_SYS_PTRACE the agent may read the caller's
 * /proc/PID/exe, but not signal it: the liveness check must need no
 * permission over the caller. Without CAP_SYS_PTRACE the refusal says what
 * the agent needs. Needs root to set the scene up.
 */
static void judge_as(uid_t uid, int ptrace_cap, pid_t caller, const char *caller_exe, int *ok,
		     char *why, size_t whylen)
{
	struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct data[2];
	char *exes[1];
	struct peer p;
	int pipefd[2];
	pid_t judge;

	memset(&p, 0, sizeof(p));
	p.pid = caller;
	p.starttime = acl_proc_starttime(caller);
	exes[0] = (char *)caller_exe;
	assert_int_equal(pipe(pipefd), 0);
	judge = fork();
	assert_true(judge >= 0);
	if (judge == 0) {
		char buf[512];
		int r;

		close(pipefd[0]);
		if (prctl(PR_SET_KEEPCAPS, 1) != 0 || setresgid(uid, uid, uid) != 0 ||
		    setresuid(uid, uid, uid) != 0)
			_exit(2);
		memset(data, 0, sizeof(data));
		if (ptrace_cap)
			data[0].effective = data[0].permitted = 1u << CAP_SYS_PTRACE;
		if (syscall(SYS_capset, &hdr, data) != 0)
			_exit(2);
		r = acl_caller_allowed(exes, 1, NULL, 0, &p, buf, sizeof(buf));
		if (write(pipefd[1], r ? "1" : "0", 1) != 1 ||
		    write(pipefd[1], buf, strlen(buf)) < 0)
			_exit(2);
		_exit(0);
	}
	close(pipefd[1]);
	memset(why, 0, whylen);
	{
		char c = '?';
		ssize_t n;

		assert_int_equal(read(pipefd[0], &c, 1), 1);
		*ok = c == '1';
		n = read(pipefd[0], why, whylen - 1);
		assert_true(n >= 0);
	}
	close(pipefd[0]);
	{
		int st;

		assert_int_equal(waitpid(judge, &st, 0), judge);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
}

static void test_caller_other_uid(void **state)
{
	char *self = realpath("/proc/self/exe", NULL), why[512];
	pid_t caller;
	int ok;

	(void)state;
	if (geteuid() != 0) {
		free(self);
		skip();
	}
	assert_non_null(self);
	caller = fork();
	assert_true(caller >= 0);
	if (caller == 0) {
		if (setresuid(65534, 65534, 65534) != 0)
			_exit(2);
		pause();
		_exit(0);
	}
	judge_as(65533, 1, caller, self, &ok, why, sizeof(why));
	assert_true(ok);
	judge_as(65533, 0, caller, self, &ok, why, sizeof(why));
	assert_false(ok);
	assert_non_null(strstr(why, "CAP_SYS_PTRACE"));
	kill(caller, SIGKILL);
	waitpid(caller, NULL, 0);
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
		cmocka_unit_test(test_caller_other_uid),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
