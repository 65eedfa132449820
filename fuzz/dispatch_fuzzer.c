/*
 * Fuzz target: the daemon's own dispatcher (agent/dispatch.c) fed with a
 * stream of request frames. Built as a libFuzzer target with clang
 * (-fsanitize=fuzzer), and as a plain replay program that `make check` runs
 * over fuzz/corpus/.
 *
 * Input: byte 0 selects the caller (bit 0: administrator, bit 1: skip
 * HELLO); the rest is split into frames exactly as the server would.
 * The runtime has a PKCS#11 keystore on SoftHSM with no token, so every
 * path up to the keystore is reached without hardware.
 */
#include "config.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf/conf.h"
#include "agent/dispatch.h"
#include "common/log.h"
#include "common/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static struct runtime *fuzz_rt;
/* The scratch directory (SoftHSM token dir, config, state): removed at exit so
 * that neither `make check` nor a fuzzing session leaves it behind in /tmp. */
static char fuzz_dir[] = "/tmp/mtls-fuzz-XXXXXX";

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)type;
	(void)ftw;
	remove(path);
	return 0;
}

static void remove_fuzz_dir(void)
{
	nftw(fuzz_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int write_text(const char *path, const char *text, mode_t mode)
{
	FILE *f = fopen(path, "w");

	if (f == NULL)
		return -1;
	fputs(text, f);
	fclose(f);
	return chmod(path, mode);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char *dir = fuzz_dir, path[512], text[2048], err[512];
	const char *module = getenv("SOFTHSM_MODULE");
	struct config *cfg = NULL;

	(void)argc;
	(void)argv;
	log_init("fuzz", 0, -1);
	if (module == NULL)
		module = "/usr/lib/softhsm/libsofthsm2.so";
	if (mkdtemp(dir) == NULL)
		abort();
	atexit(remove_fuzz_dir);
	snprintf(path, sizeof(path), "%s/tokens", dir);
	mkdir(path, 0700);
	snprintf(text, sizeof(text),
		 "directories.tokendir = %s/tokens\nobjectstore.backend = file\n", dir);
	snprintf(path, sizeof(path), "%s/softhsm2.conf", dir);
	if (write_text(path, text, 0600) != 0)
		abort();
	setenv("SOFTHSM2_CONF", path, 1);
	snprintf(text, sizeof(text),
		 "[agent]\nsocket = %s/agent.sock\nstate-dir = %s/state\nadmin-users = 0\n"
		 "[keystore \"hsm\"]\ntype = pkcs11\nmodule = %s\ntoken = absent\n"
		 "[identity \"device\"]\nkeystore = hsm\nkey = pkcs11:object=device\n"
		 "allow-users = 0 1\n"
		 "[identity \"open\"]\nkeystore = hsm\nkey = pkcs11:object=open\n"
		 "allow-users = 0 1\nsign-policy = any\n",
		 dir, dir, module);
	snprintf(path, sizeof(path), "%s/agent.conf", dir);
	if (write_text(path, text, 0600) != 0)
		abort();
	if (config_load(path, &cfg, err, sizeof(err)) != 0 ||
	    runtime_create(cfg, 0, &fuzz_rt, err, sizeof(err)) != 0) {
		fprintf(stderr, "fuzz set-up failed: %s\n", err);
		abort();
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dispatch_env env = {.rt = fuzz_rt, .reload = NULL, .now = 1700000000};
	struct conn_ctx conn;
	struct buf reply;
	size_t off = 1, frame_len;
	int r;

	if (size == 0)
		return 0;
	memset(&conn, 0, sizeof(conn));
	conn.peer.uid = (data[0] & 1) ? 0 : 1;
	conn.peer.gid = conn.peer.uid;
	conn.hello_done = (data[0] & 2) != 0;
	buf_init(&reply, PROTO_MAX_REPLY);
	while (off < size) {
		r = proto_frame_peek(data + off, size - off, PROTO_MAX_REQUEST, &frame_len);
		if (r != 0)
			break;
		buf_reset(&reply);
		r = dispatch(&env, &conn, data + off, frame_len, &reply);
		/* Every request gets exactly one well-formed reply frame. */
		if (proto_frame_peek(reply.data, reply.len, PROTO_MAX_REPLY, &frame_len) != 0 ||
		    frame_len != reply.len)
			abort();
		if (r != 0)
			break;
		off += frame_len;
	}
	buf_free(&reply);
	return 0;
}
