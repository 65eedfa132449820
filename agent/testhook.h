/*
 * Test-only hooks, compiled in only with ./configure --enable-test-hooks
 * (tests/ci.sh and make distcheck pass it; packages and installs do not).
 *
 * Crash-safety tests stop the agent with SIGKILL right after a given step
 * (MTLS_AGENT_TEST_CRASH_AT=preparing|unrecorded|keygen|requested|verifying|issued|
 * confirming|confirmed|installed|queued; "unrecorded": a new key exists but is not yet recorded
 * as pending). A real crash needs no permission; this only makes it land on
 * the step under test. Without the option the hook compiles to nothing and
 * the variable is ignored.
 */
#ifndef MTLS_AGENT_TESTHOOK_H
#define MTLS_AGENT_TESTHOOK_H

#ifdef MTLS_TEST_HOOKS
void test_crash_point(const char *step);
/*
 * MTLS_AGENT_TEST_CRASH_AT=keygen-inside: SIGKILL a random 0..MTLS_AGENT_TEST_CRASH_DELAY_MS
 * (default 100) ms after the key generation started, so that it lands inside the
 * keystore's call (C_GenerateKeyPair) as often as the timing allows.
 */
void test_crash_during_keygen(void);
#else
static inline void test_crash_point(const char *step)
{
	(void)step;
}
static inline void test_crash_during_keygen(void)
{
}
#endif

#endif
