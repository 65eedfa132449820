/* Access-control decision. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_users),
		cmocka_unit_test(test_groups),
		cmocka_unit_test(test_empty_lists_admit_nobody),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
