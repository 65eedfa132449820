/* File helpers: bounded reads, atomic writes, secret-file permission checks. */
#include "config.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/obj_mac.h>

#include "common/log.h"
#include "common/scheme.h"
#include "common/util.h"
#include "mtls-agent/client.h"

static char dir[64];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/mtls-util-XXXXXX");
	return mkdtemp(dir) == NULL ? -1 : 0;
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void put(const char *name, const char *text, mode_t mode, char *path, size_t len)
{
	FILE *f;

	snprintf(path, len, "%s/%s", dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(chmod(path, mode), 0);
}

static void test_read_file_bounds(void **state)
{
	char path[256], big[10000];
	uint8_t *data;
	size_t len;

	(void)state;
	put("small", "0123456789abcdef0123456789abcdef\n", 0600, path, sizeof(path));
	/* A small max must not refuse a file that fits (a past bug). */
	assert_int_equal(read_file(path, 256, &data, &len), 0);
	assert_int_equal(len, 33);
	assert_int_equal(data[len], '\0');
	free(data);
	assert_int_equal(read_file(path, 33, &data, &len), 0);
	free(data);
	assert_int_equal(read_file(path, 32, &data, &len), -1);
	assert_null(data);
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	put("big", big, 0600, path, sizeof(path));
	assert_int_equal(read_file(path, sizeof(big) - 1, &data, &len), 0);
	assert_int_equal(len, sizeof(big) - 1);
	free(data);
	assert_int_equal(read_file(path, 5000, &data, &len), -1);
}

static const char *path_link(const char *target)
{
	static char link[300];

	snprintf(link, sizeof(link), "%s.link", target);
	return link;
}

static void test_write_file_atomic(void **state)
{
	char path[256];
	uint8_t *data;
	size_t len;
	struct stat st;

	(void)state;
	put("target", "old", 0644, path, sizeof(path));
	assert_int_equal(write_file_atomic(path, "new contents", 12, 0640), 0);
	assert_int_equal(read_file(path, 100, &data, &len), 0);
	assert_memory_equal(data, "new contents", 12);
	free(data);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0640);
	/* Never replaces what is not a regular file (a past bug replaced /dev/null). */
	assert_int_equal(write_file_atomic(dir, "x", 1, 0600), -1);
	assert_int_equal(symlink("target", path_link(path)), 0);
	assert_int_equal(write_file_atomic(path_link(path), "x", 1, 0600), -1);
	assert_int_equal(read_file(path, 100, &data, &len), 0);
	assert_memory_equal(data, "new contents", 12);
	free(data);
	/* A directory that does not exist: error, nothing created. */
	assert_int_equal(write_file_atomic("/nonexistent-dir/x", "a", 1, 0600), -1);
}

/*
 * cert-out as root into a directory another user controls: a symlink there
 * must not redirect the write (issue: a chain landed in a root-only 0700
 * directory). A world-writable directory stands in for "another user's".
 */
static void test_write_file_symlinked_dir(void **state)
{
	char pub[256], secret[256], link[300], through[400], in_secret[400], ok[400];
	uint8_t *data;
	size_t len;
	struct stat st;

	(void)state;
	snprintf(pub, sizeof(pub), "%s/public", dir);
	snprintf(secret, sizeof(secret), "%s/secret", dir);
	assert_int_equal(mkdir(pub, 0700), 0);
	assert_int_equal(chmod(pub, 0777), 0);
	assert_int_equal(mkdir(secret, 0700), 0);
	/* public/link -> secret: refused, nothing written into secret/. */
	snprintf(link, sizeof(link), "%s/link", pub);
	assert_int_equal(symlink(secret, link), 0);
	snprintf(through, sizeof(through), "%s/chain.pem", link);
	errno = 0;
	assert_int_equal(write_file_atomic(through, "chain", 5, 0644), -1);
	assert_int_equal(errno, ELOOP);
	snprintf(in_secret, sizeof(in_secret), "%s/chain.pem", secret);
	assert_int_equal(lstat(in_secret, &st), -1);
	/* Deeper: public/link/../secret/x goes through the link as well. */
	snprintf(through, sizeof(through), "%s/link/../secret/x", pub);
	assert_int_equal(write_file_atomic(through, "chain", 5, 0644), -1);
	/* A plain file in the public directory itself is fine (its own name, our mode). */
	snprintf(ok, sizeof(ok), "%s/chain.pem", pub);
	assert_int_equal(write_file_atomic(ok, "chain", 5, 0644), 0);
	assert_int_equal(lstat(ok, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0644);
	/* A symlink we made in a directory only we can write is followed. */
	snprintf(link, sizeof(link), "%s/mine", dir);
	assert_int_equal(symlink("secret", link), 0);
	snprintf(through, sizeof(through), "%s/mine/chain.pem", dir);
	assert_int_equal(write_file_atomic(through, "chain", 5, 0644), 0);
	assert_int_equal(read_file(in_secret, 100, &data, &len), 0);
	assert_memory_equal(data, "chain", 5);
	free(data);
	/* A missing component is an error, not a creation. */
	snprintf(through, sizeof(through), "%s/nope/chain.pem", dir);
	assert_int_equal(write_file_atomic(through, "chain", 5, 0644), -1);
	assert_int_equal(errno, ENOENT);
}

static void test_secret_file(void **state)
{
	char path[256], err[256], *secret;

	(void)state;
	put("pin", "1234\n", 0600, path, sizeof(path));
	assert_int_equal(read_secret_file(path, &secret, err, sizeof(err)), 0);
	assert_string_equal(secret, "1234");
	free(secret);
	put("pin-open", "1234\n", 0640, path, sizeof(path));
	assert_int_equal(read_secret_file(path, &secret, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "group or others"));
	put("pin-empty", "\n", 0600, path, sizeof(path));
	assert_int_equal(read_secret_file(path, &secret, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "no usable secret"));
}

/*
 * A child started by spawn_clean() from a process that ignores SIGPIPE and
 * blocks HUP/INT/TERM (as the agent does) has neither: the shell reports its
 * own SigIgn and SigBlk masks from /proc.
 */
static void test_spawn_clean(void **state)
{
	char out[256], script[512], *argv[4], *envp[] = {NULL};
	sigset_t block, old;
	struct sigaction ign, old_pipe;
	uint8_t *data;
	size_t len;
	pid_t pid;
	int status;

	(void)state;
	snprintf(out, sizeof(out), "%s/sig", dir);
	/* Builtins only: the shell reads its own status (no child it would wait for). */
	snprintf(script, sizeof(script),
		 "while read -r k v; do case $k in SigBlk:|SigIgn:) echo \"$k $v\";; esac; "
		 "done < /proc/$$/status > '%s'",
		 out);
	argv[0] = "/bin/sh";
	argv[1] = "-c";
	argv[2] = script;
	argv[3] = NULL;
	memset(&ign, 0, sizeof(ign));
	ign.sa_handler = SIG_IGN;
	assert_int_equal(sigaction(SIGPIPE, &ign, &old_pipe), 0);
	sigemptyset(&block);
	sigaddset(&block, SIGHUP);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	assert_int_equal(sigprocmask(SIG_BLOCK, &block, &old), 0);
	assert_int_equal(spawn_clean("/bin/sh", argv, envp, &pid), 0);
	assert_int_equal(sigprocmask(SIG_SETMASK, &old, NULL), 0);
	assert_int_equal(sigaction(SIGPIPE, &old_pipe, NULL), 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_int_equal(read_file(out, 4096, &data, &len), 0);
	/*
	 * Signals 1..31 (SIGPIPE, HUP, INT, TERM among them) neither blocked nor
	 * ignored. Bits 31..32 are glibc's internal SIGCANCEL/SIGSETXID, which
	 * glibc lets no program change: they stay as the agent inherited them
	 * (ignored when it was started through posix_spawn, as make does).
	 */
	{
		const char *blk = strstr((char *)data, "SigBlk: "),
			   *igns = strstr((char *)data, "SigIgn: ");

		assert_non_null(blk);
		assert_non_null(igns);
		assert_int_equal(strtoull(blk + 8, NULL, 16) & 0x7fffffffull, 0);
		assert_int_equal(strtoull(igns + 8, NULL, 16) & 0x7fffffffull, 0);
		assert_int_equal(strtoull(blk + 8, NULL, 16) & ~0x180000000ull, 0);
	}
	free(data);
	/* A missing program is an error value, not a crash. */
	argv[0] = "/nonexistent/prog";
	assert_int_not_equal(spawn_clean("/nonexistent/prog", argv, envp, &pid), 0);
}

/* Text from outside is logged escaped: no new line, no terminal control, a visible cut. */
static void test_log_escape(void **state)
{
	char out[64];
	const char forged[] = "bad\nmtls-agent: info: FORGED\r\x1b[31m\t\\ \x7f\xc3\xa9";

	(void)state;
	assert_string_equal(log_escape(forged, sizeof(forged) - 1, out, sizeof(out)),
			    "bad\\nmtls-agent: info: FORGED\\r\\x1b[31m\\t\\\\ \\x7f\\xc3\\xa9");
	/* NUL bytes inside a length-delimited body are data too. */
	assert_string_equal(log_escape("a\0b", 3, out, sizeof(out)), "a\\x00b");
	assert_string_equal(log_sanitize("plain text", out, sizeof(out)), "plain text");
	assert_string_equal(log_sanitize(NULL, out, sizeof(out)), "");
	/* Cut: what fits, then "...", never half an escape. */
	assert_string_equal(log_escape("0123456789", 10, out, 8), "0123...");
	assert_string_equal(log_escape("ab\n\n\n", 5, out, 8), "ab\\n...");
	assert_string_equal(log_escape("ab\n\n", 4, out, 8), "ab\\n\\n");
	assert_string_equal(log_escape("abc", 3, out, 4), "abc");
	assert_string_equal(log_escape("abcd", 4, out, 4), "...");
	assert_string_equal(log_escape("x", 1, out, 1), "");
}

/* The client library's variant keeps readable UTF-8 and escapes everything else. */
static void test_log_escape_utf8(void **state)
{
	char out[64];

	(void)state;
	/* é, €, U+1F512 kept; controls, DEL and the backslash escaped as by log_escape. */
	assert_string_equal(
		log_escape_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x92", out, sizeof(out)),
		"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x92");
	assert_string_equal(log_escape_utf8("a\nb\x1b[2J\\\x7f", out, sizeof(out)),
			    "a\\nb\\x1b[2J\\\\\\x7f");
	/* C1 controls (U+009B is CSI to some terminals), overlong forms, surrogates,
	 * stray continuation bytes and cut sequences are bytes, escaped. */
	assert_string_equal(log_escape_utf8("\xc2\x9b", out, sizeof(out)), "\\xc2\\x9b");
	assert_string_equal(log_escape_utf8("\xc0\xaf", out, sizeof(out)), "\\xc0\\xaf");
	/* Bidirectional overrides and isolates, line separators: escaped, not kept. */
	assert_string_equal(log_escape_utf8("a\xe2\x80\xae"
					    "b",
					    out, sizeof(out)),
			    "a\\xe2\\x80\\xaeb");
	assert_string_equal(log_escape_utf8("\xe2\x81\xa6", out, sizeof(out)), "\\xe2\\x81\\xa6");
	assert_string_equal(log_escape_utf8("\xe2\x80\xa8", out, sizeof(out)), "\\xe2\\x80\\xa8");
	assert_string_equal(log_escape_utf8("\xed\xa0\x80", out, sizeof(out)), "\\xed\\xa0\\x80");
	assert_string_equal(log_escape_utf8("\x80x", out, sizeof(out)), "\\x80x");
	assert_string_equal(log_escape_utf8("\xe2\x82", out, sizeof(out)), "\\xe2\\x82");
	assert_string_equal(log_escape_utf8("\xf4\x90\x80\x80", out, sizeof(out)),
			    "\\xf4\\x90\\x80\\x80");
	assert_string_equal(log_escape_utf8(NULL, out, sizeof(out)), "");
	/* A cut never splits a character: "ab" + "..." rather than half of the euro sign. */
	assert_string_equal(log_escape_utf8("ab\xe2\x82\xac\xe2\x82\xac", out, 8), "ab...");
	assert_string_equal(log_escape_utf8("ab\xe2\x82\xac", out, 8), "ab\xe2\x82\xac");
}

/* The characters mtls-agentctl defuses: C0 (not NUL), DEL, and C1 in UTF-8; not UTF-8 text. */
static void test_log_control_len(void **state)
{
	(void)state;
	assert_int_equal(log_control_len(""), 0);
	assert_int_equal(log_control_len("a"), 0);
	assert_int_equal(log_control_len("\x1b[2J"), 1);
	assert_int_equal(log_control_len("\n"), 1);
	assert_int_equal(log_control_len("\x7f"), 1);
	assert_int_equal(log_control_len("\xc2\x9b"
					 "2J"),
			 2); /* CSI */
	assert_int_equal(log_control_len("\xc2\x80"), 2);
	assert_int_equal(log_control_len("\xc2\xa0"), 0); /* no-break space */
	assert_int_equal(log_control_len("\xc3\xa9"), 0); /* é */
	assert_int_equal(log_control_len("\xc2"), 0);	  /* truncated: not a control */
}

/* The one scheme table answers the provider's and the engine's digest questions. */
static void test_scheme_for_digest(void **state)
{
	const struct scheme *s;

	(void)state;
	s = scheme_for_digest(MTLS_AGENT_KEY_EC, SIG_PAD_NONE, NID_undef, 48);
	assert_non_null(s);
	assert_int_equal(s->code, MTLS_AGENT_ECDSA_SECP384R1_SHA384);
	s = scheme_for_digest(MTLS_AGENT_KEY_RSA, SIG_PAD_PSS, NID_sha512, 0);
	assert_non_null(s);
	assert_int_equal(s->code, MTLS_AGENT_RSA_PSS_RSAE_SHA512);
	s = scheme_for_digest(MTLS_AGENT_KEY_RSA, SIG_PAD_PKCS1, NID_undef, 32);
	assert_non_null(s);
	assert_int_equal(s->code, MTLS_AGENT_RSA_PKCS1_SHA256);
	assert_null(scheme_for_digest(MTLS_AGENT_KEY_EC, SIG_PAD_NONE, NID_undef, 20));
	assert_null(scheme_for_digest(MTLS_AGENT_KEY_RSA, SIG_PAD_PKCS1, NID_sha1, 0));
	assert_null(scheme_for_digest(MTLS_AGENT_KEY_RSA, SIG_PAD_PKCS1, NID_undef, 0));
	/* Ed25519 signs messages: no scheme for a digest. */
	assert_null(scheme_for_digest(MTLS_AGENT_KEY_ED25519, SIG_PAD_NONE, NID_undef, 0));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_read_file_bounds),
		cmocka_unit_test(test_write_file_atomic),
		cmocka_unit_test(test_write_file_symlinked_dir),
		cmocka_unit_test(test_secret_file),
		cmocka_unit_test(test_spawn_clean),
		cmocka_unit_test(test_log_escape),
		cmocka_unit_test(test_log_control_len),
		cmocka_unit_test(test_log_escape_utf8),
		cmocka_unit_test(test_scheme_for_digest),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
