#include "config.h"

#include <dirent.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "conf/conf.h"
#include "renew/revocation.h"
#include "keystore/keystore.h"

#ifndef MTLS_AGENT_DEFAULT_SOCKET
#define MTLS_AGENT_DEFAULT_SOCKET "/run/mtls-agent/agent.sock"
#endif
#ifndef MTLS_AGENT_DEFAULT_STATE_DIR
#define MTLS_AGENT_DEFAULT_STATE_DIR "/var/lib/mtls-agent"
#endif

/* Exists and is root-owned on Debian with softhsm2 installed (a symlink to the real .so). */
#define SOFTHSM "/usr/lib/softhsm/libsofthsm2.so"

static char tmpdir[256];
static char last_path[PATH_MAX]; /* of the last config written, for expected messages */

static int group_setup(void **state)
{
	const char *base = getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";

	(void)state;
	/* Short enough that every path built from it fits in PATH_MAX. */
	if (strlen(base) > 200)
		base = "/tmp";
	snprintf(tmpdir, sizeof(tmpdir), "%s/test_config.XXXXXX", base);
	return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

/* Also removes what a failed test left behind (cmocka leaves a test at its first failure). */
static int group_teardown(void **state)
{
	char path[PATH_MAX];
	struct dirent *de;
	DIR *d;

	(void)state;
	if ((d = opendir(tmpdir)) != NULL) {
		while ((de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			snprintf(path, sizeof(path), "%s/%s", tmpdir, de->d_name);
			unlink(path);
		}
		closedir(d);
	}
	return rmdir(tmpdir);
}

/* Writes text to a fresh 0600 file in tmpdir; the caller unlinks last_path. */
static void write_conf(const char *text, mode_t mode)
{
	int fd;
	size_t len = strlen(text);

	snprintf(last_path, sizeof(last_path), "%s/agent.conf.XXXXXX", tmpdir);
	fd = mkstemp(last_path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	assert_int_equal(fchmod(fd, mode), 0);
	assert_int_equal(close(fd), 0);
}

static struct config *load_ok(const char *text)
{
	struct config *cfg = NULL;
	char err[512] = "";
	int r;

	write_conf(text, 0600);
	r = config_load(last_path, &cfg, err, sizeof(err));
	unlink(last_path);
	if (r != 0)
		fail_msg("config_load failed: %s", err);
	assert_non_null(cfg);
	assert_string_equal(err, "");
	return cfg;
}

/* Loads text (written with mode) and checks the exact "FILE:LINE: msg" (line 0: "FILE: msg"). */
static void expect_error_mode(const char *text, mode_t mode, int line, const char *msg)
{
	struct config *cfg = (struct config *)1;
	char err[1024], want[1024 + PATH_MAX];
	int r;

	write_conf(text, mode);
	r = config_load(last_path, &cfg, err, sizeof(err));
	if (line > 0)
		snprintf(want, sizeof(want), "%s:%d: %s", last_path, line, msg);
	else
		snprintf(want, sizeof(want), "%s: %s", last_path, msg);
	unlink(last_path);
	assert_int_equal(r, -1);
	assert_null(cfg);
	assert_string_equal(err, want);
}

static void expect_error(const char *text, int line, const char *msg)
{
	expect_error_mode(text, 0600, line, msg);
}

static gid_t gid_of(const char *name)
{
	struct group *gr = getgrnam(name);

	assert_non_null(gr);
	return gr->gr_gid;
}

static uid_t uid_of(const char *name)
{
	struct passwd *pw = getpwnam(name);

	assert_non_null(pw);
	return pw->pw_uid;
}

/* A file of our own to point "module" at, with the given mode (and owner, if root). */
static void make_module(char *path, size_t len, mode_t mode)
{
	int fd;

	snprintf(path, len, "%s/module.XXXXXX", tmpdir);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "\177ELF", 4), 4);
	assert_int_equal(fchmod(fd, mode), 0);
	assert_int_equal(close(fd), 0);
}

static const char minimal_tail[] = "[keystore \"k\"]\n"
				   "type = tpm2\n"
				   "[identity \"i\"]\n"
				   "keystore = k\n"
				   "key = handle:0x81000010\n";

/* ---- valid configurations ---- */

static void test_full(void **state)
{
	const struct cfg_keystore *hsm, *tpm;
	const struct cfg_identity *dev, *web;
	struct config *cfg;

	(void)state;
	/* Identity before its keystore, and [agent] (with state-dir) last. */
	cfg = load_ok("; full example\n"
		      "[identity \"device\"]\n"
		      "keystore = hsm\n"
		      "key = pkcs11:object=device\n"
		      "allow-users = root, 65534\n"
		      "allow-groups = 0\n"
		      "sign-policy = tls13-client\n"
		      "\n"
		      "[identity \"web.2\"]\n"
		      "keystore = tpm\n"
		      "key = handle:0x81000010\n"
		      "cert = /etc/mtls-agent/web.pem\n"
		      "sign-policy = any\n"
		      "[keystore \"hsm\"]\n"
		      "type = pkcs11\n"
		      "module = " SOFTHSM "\n"
		      "token = pkcs11:token=gateway\n"
		      "pin-file = /etc/mtls-agent/hsm.pin\n"
		      "sessions = 8\n"
		      "[keystore \"tpm\"]\n"
		      "type = tpm2\n"
		      "tcti = swtpm:port=2321\n"
		      "[agent]\n"
		      "socket = /run/test/agent.sock\n"
		      "socket-mode = 0600\n"
		      "socket-group = 0\n"
		      "state-dir = /srv/state/\n"
		      "admin-users = 0 nobody\n"
		      "admin-groups = root\n"
		      "workers = 16\n"
		      "max-clients = 65536\n"
		      "max-clients-per-uid = 1\n"
		      "admin-reserve = 65535\n"
		      "idle-timeout = 0\n"
		      "metrics-listen = 127.0.0.1:9464\n"
		      "metrics-identities = yes\n");

	assert_non_null(cfg->path);
	assert_string_equal(cfg->socket, "/run/test/agent.sock");
	assert_int_equal(cfg->socket_mode, 0600);
	assert_int_equal(cfg->has_socket_group, 1);
	assert_int_equal(cfg->socket_group, 0);
	assert_string_equal(cfg->state_dir, "/srv/state/");
	assert_int_equal(cfg->n_admin_users, 2);
	assert_int_equal(cfg->admin_users[0], 0);
	assert_int_equal(cfg->admin_users[1], uid_of("nobody"));
	assert_int_equal(cfg->n_admin_groups, 1);
	assert_int_equal(cfg->admin_groups[0], 0);
	assert_int_equal(cfg->workers, 16);
	assert_int_equal(cfg->max_clients, 65536);
	assert_int_equal(cfg->max_clients_per_uid, 1);
	assert_int_equal(cfg->admin_reserve, 65535);
	assert_int_equal(cfg->idle_timeout, 0);
	assert_string_equal(cfg->metrics_listen, "127.0.0.1:9464");
	assert_int_equal(cfg->metrics_identities, 1);

	assert_int_equal(cfg->n_keystores, 2);
	hsm = config_keystore(cfg, "hsm");
	assert_non_null(hsm);
	assert_string_equal(hsm->type, "pkcs11");
	assert_string_equal(hsm->module, SOFTHSM);
	assert_string_equal(hsm->token, "pkcs11:token=gateway");
	assert_string_equal(hsm->pin_file, "/etc/mtls-agent/hsm.pin");
	assert_int_equal(hsm->sessions, 8);
	assert_null(hsm->tcti);
	assert_int_equal(hsm->line, 14);
	tpm = config_keystore(cfg, "tpm");
	assert_non_null(tpm);
	assert_string_equal(tpm->type, "tpm2");
	assert_string_equal(tpm->tcti, "swtpm:port=2321");
	assert_null(tpm->module);
	assert_null(tpm->token);
	assert_null(tpm->pin_file);
	assert_int_equal(tpm->line, 20);

	assert_int_equal(cfg->n_identities, 2);
	dev = config_identity(cfg, "device");
	assert_non_null(dev);
	assert_int_equal(dev->line, 2);
	assert_string_equal(dev->keystore, "hsm");
	assert_string_equal(dev->key, "pkcs11:object=device");
	/* Default cert path uses the state-dir given later in the file, without "//". */
	assert_string_equal(dev->cert, "/srv/state/device.crt");
	assert_int_equal(dev->n_allow_users, 2);
	assert_int_equal(dev->allow_users[0], 0);
	assert_int_equal(dev->allow_users[1], 65534);
	assert_int_equal(dev->n_allow_groups, 1);
	assert_int_equal(dev->allow_groups[0], 0);
	assert_int_equal(dev->sign_policy, POLICY_TLS13_CLIENT);
	web = config_identity(cfg, "web.2");
	assert_non_null(web);
	assert_string_equal(web->keystore, "tpm");
	assert_string_equal(web->cert, "/etc/mtls-agent/web.pem");
	assert_int_equal(web->n_allow_users, 0);
	assert_null(web->allow_users);
	assert_int_equal(web->sign_policy, POLICY_ANY);

	assert_null(config_keystore(cfg, "nope"));
	assert_null(config_identity(cfg, "hsm"));
	config_free(cfg);
}

static void test_defaults(void **state)
{
	const struct cfg_identity *id;
	const struct cfg_keystore *ks;
	struct config *cfg;

	(void)state;
	cfg = load_ok(minimal_tail);
	assert_string_equal(cfg->socket, MTLS_AGENT_DEFAULT_SOCKET);
	assert_string_equal(cfg->state_dir, MTLS_AGENT_DEFAULT_STATE_DIR);
	assert_int_equal(cfg->socket_mode, 0660);
	assert_int_equal(cfg->has_socket_group, 0);
	assert_int_equal(cfg->n_admin_users, 1);
	assert_int_equal(cfg->admin_users[0], 0);
	assert_int_equal(cfg->n_admin_groups, 0);
	assert_int_equal(cfg->workers, 4);
	assert_int_equal(cfg->max_clients, 1024);
	assert_int_equal(cfg->max_clients_per_uid, 128);
	assert_int_equal(cfg->admin_reserve, 16);
	assert_int_equal(cfg->idle_timeout, 300);
	assert_null(cfg->metrics_listen);
	assert_int_equal(cfg->metrics_identities, 0);
	ks = config_keystore(cfg, "k");
	assert_non_null(ks);
	assert_string_equal(ks->tcti, "device:/dev/tpmrm0");
	assert_int_equal(ks->sessions, 4);
	id = config_identity(cfg, "i");
	assert_non_null(id);
	assert_string_equal(id->cert, MTLS_AGENT_DEFAULT_STATE_DIR "/i.crt");
	assert_int_equal(id->sign_policy, POLICY_TLS_CLIENT);
	assert_int_equal(id->n_allow_users, 0);
	assert_int_equal(id->n_allow_groups, 0);
	config_free(cfg);
}

static void test_empty_file(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = load_ok("");
	assert_int_equal(cfg->n_keystores, 0);
	assert_int_equal(cfg->n_identities, 0);
	assert_string_equal(cfg->socket, MTLS_AGENT_DEFAULT_SOCKET);
	config_free(cfg);
}

static void test_ids_resolve(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = load_ok("[agent]\n"
		      "socket-group = nogroup\n"
		      "admin-users = root,nobody , 1234,root\n"
		      "admin-groups = nogroup 4321\n");
	assert_int_equal(cfg->has_socket_group, 1);
	assert_int_equal(cfg->socket_group, gid_of("nogroup"));
	/* The repeated "root" is dropped. */
	assert_int_equal(cfg->n_admin_users, 3);
	assert_int_equal(cfg->admin_users[0], 0);
	assert_int_equal(cfg->admin_users[1], uid_of("nobody"));
	assert_int_equal(cfg->admin_users[2], 1234);
	assert_int_equal(cfg->n_admin_groups, 2);
	assert_int_equal(cfg->admin_groups[0], gid_of("nogroup"));
	assert_int_equal(cfg->admin_groups[1], 4321);
	config_free(cfg);

	cfg = load_ok("[agent]\nsocket-group = 4242\n");
	assert_int_equal(cfg->socket_group, 4242);
	config_free(cfg);
}

static void test_inline_comments(void **state)
{
	const struct cfg_identity *id;
	struct config *cfg;

	(void)state;
	cfg = load_ok("# a comment\n"
		      "; another\n"
		      "[agent] ; section comment\n"
		      "socket = /run/x.sock ; where clients connect\n"
		      "  workers = 8\t# indented, not a continuation\n"
		      "\tmax-clients = 10 #\n"
		      "[keystore \"k\"] # tpm\n"
		      "type = tpm2 # the TPM\n"
		      "[identity \"i\"]\n"
		      "keystore = k\n"
		      "key = a;b#c ; only the spaced ';' starts a comment\n");
	assert_string_equal(cfg->socket, "/run/x.sock");
	assert_int_equal(cfg->workers, 8);
	assert_int_equal(cfg->max_clients, 10);
	/* The default reserve shrinks with a small max-clients rather than refuse it. */
	assert_int_equal(cfg->admin_reserve, 2);
	id = config_identity(cfg, "i");
	assert_non_null(id);
	assert_string_equal(id->key, "a;b#c");
	config_free(cfg);
}

static void test_sign_policy_names(void **state)
{
	int pol;

	(void)state;
	for (pol = POLICY_TLS_CLIENT; pol <= POLICY_DIGEST; pol++)
		assert_int_equal(sign_policy_from_name(sign_policy_name(pol)), pol);
	assert_string_equal(sign_policy_name(POLICY_TLS_CLIENT), "tls-client");
	assert_string_equal(sign_policy_name(POLICY_TLS13_CLIENT), "tls13-client");
	assert_string_equal(sign_policy_name(POLICY_ANY), "any");
	assert_string_equal(sign_policy_name(POLICY_DIGEST), "digest");
	assert_int_equal(sign_policy_from_name("digest"), POLICY_DIGEST);
	assert_int_equal(sign_policy_from_name("bogus"), -1);
	assert_int_equal(sign_policy_from_name("ANY"), -1);
	assert_int_equal(sign_policy_from_name(NULL), -1);
	assert_non_null(sign_policy_name(42));
	config_free(NULL);
}

static void test_module_root_owned_copy(void **state)
{
	char mod[PATH_MAX], text[2 * PATH_MAX];
	const struct cfg_keystore *ks;
	struct config *cfg;

	(void)state;
	if (geteuid() != 0)
		skip();
	make_module(mod, sizeof(mod), 0644);
	snprintf(text, sizeof(text), "[keystore \"p\"]\ntype = pkcs11\ntoken = t\nmodule = %s\n",
		 mod);
	cfg = load_ok(text);
	ks = config_keystore(cfg, "p");
	assert_non_null(ks);
	assert_string_equal(ks->module, mod);
	config_free(cfg);
	unlink(mod);
}

/* ---- errors ---- */

/* ---- renewal settings ---- */

static void test_renewal(void **state)
{
	const struct cfg_identity *id;
	struct config *cfg;

	(void)state;
	cfg = load_ok("[keystore \"k\"]\ntype = tpm2\n"
		      "[identity \"a\"]\nkeystore = k\nkey = handle:0x81000010\n"
		      "renew = cmp\nca-url = http://127.0.0.1:8080/pkix/\nca-trust = /etc/ca.pem\n"
		      "bootstrap = secret:dev-17:/etc/boot.secret\nrenew-at = 7d\nrotate-key = no\n"
		      "cert-out = /a/one.pem /b/two.pem\npost-renew = systemctl reload app\n"
		      "subject = /CN=gw-1/O=Fleet\nkey-type = rsa-2048\nca-timeout = 30\n"
		      "ca-signer = /etc/ra.pem\nca-sender = /CN=Fleet RA/O=Fleet\n"
		      "implicit-confirm = yes\nrevocation-check = crl\nrevocation-interval = 15m\n"
		      "[identity \"b\"]\nkeystore = k\nkey = handle:0x81000011\n"
		      "renew = est\nca-url = https://est.example/.well-known/est\n"
		      "ca-trust = /etc/ca.pem\nbootstrap = identity:a\nrenew-auth = identity:c\n"
		      "renew-verify = mqtts://broker.example:8883\n"
		      "[identity \"c\"]\nkeystore = k\nkey = handle:0x81000012\n");
	id = config_identity(cfg, "a");
	assert_non_null(id);
	assert_int_equal(id->renew, RENEW_CMP);
	assert_string_equal(id->ca_url, "http://127.0.0.1:8080/pkix/");
	assert_string_equal(id->ca_trust, "/etc/ca.pem");
	assert_int_equal(id->bootstrap, BOOTSTRAP_SECRET);
	assert_string_equal(id->bootstrap_ref, "dev-17");
	assert_string_equal(id->bootstrap_file, "/etc/boot.secret");
	assert_int_equal(id->renew_permille, 0);
	assert_int_equal(id->renew_before, 7 * 86400);
	assert_int_equal(id->rotate_key, 0);
	assert_int_equal(id->n_cert_out, 2);
	assert_string_equal(id->cert_out[1], "/b/two.pem");
	assert_string_equal(id->post_renew, "systemctl reload app");
	assert_string_equal(id->subject, "/CN=gw-1/O=Fleet");
	assert_int_equal(id->key_type, KS_GEN_RSA_2048);
	assert_int_equal(id->ca_timeout, 30);
	assert_string_equal(id->ca_signer, "/etc/ra.pem");
	assert_string_equal(id->ca_sender, "/CN=Fleet RA/O=Fleet");
	assert_int_equal(id->implicit_confirm, 1);
	assert_int_equal(id->revocation_check, REV_CRL);
	assert_int_equal(id->revocation_interval, 15 * 60);
	id = config_identity(cfg, "b");
	assert_int_equal(id->revocation_check, REV_AUTO); /* default */
	assert_int_equal(id->revocation_interval, REV_DEFAULT_INTERVAL_S);
	assert_int_equal(id->implicit_confirm, 0);
	assert_null(id->ca_signer);
	assert_null(id->ca_sender);
	assert_int_equal(id->renew, RENEW_EST);
	assert_int_equal(id->bootstrap, BOOTSTRAP_IDENTITY);
	assert_string_equal(id->bootstrap_identity, "a");
	assert_string_equal(id->renew_auth, "c");
	assert_string_equal(id->renew_verify, "mqtts://broker.example:8883");
	assert_int_equal(id->renew_permille, 660); /* default 66% */
	assert_int_equal(id->rotate_key, 1);
	assert_int_equal(id->ca_timeout, 60);
	id = config_identity(cfg, "c");
	assert_int_equal(id->renew, RENEW_NONE);
	config_free(cfg);
}

/* Without renewal, the revocation check is still the identity's own. */
static void test_revocation_without_renewal(void **state)
{
	struct config *cfg;
	const struct cfg_identity *id;

	(void)state;
	cfg = load_ok("[keystore \"k\"]\ntype = tpm2\n[identity \"i\"]\nkeystore = k\n"
		      "key = handle:0x81000010\nrevocation-check = ocsp\nrevocation-interval = 2s\n"
		      "[identity \"j\"]\nkeystore = k\nkey = handle:0x81000011\n");
	id = config_identity(cfg, "i");
	assert_int_equal(id->renew, RENEW_NONE);
	assert_int_equal(id->revocation_check, REV_OCSP);
	assert_int_equal(id->revocation_interval, 2);
	assert_null(id->ca_trust);
	id = config_identity(cfg, "j");
	assert_int_equal(id->revocation_check, REV_AUTO);
	assert_int_equal(id->revocation_interval, REV_DEFAULT_INTERVAL_S);
	config_free(cfg);
}

#define RENEW_HEAD                                                                                 \
	"[keystore \"k\"]\ntype = tpm2\n[identity \"i\"]\nkeystore = k\nkey = handle:0x81000010\n"

static void test_err_renewal(void **state)
{
	(void)state;
	expect_error(RENEW_HEAD "renew = scep\n", 6, "bad renew \"scep\": want cmp, est or none");
	expect_error(RENEW_HEAD "renew = cmp\nca-trust = /ca.pem\n", 6,
		     "identity \"i\": renew = cmp needs ca-url and ca-trust");
	expect_error(RENEW_HEAD "renew = est\nca-url = http://x/.well-known/est\nca-trust = /c\n",
		     7, "identity \"i\": EST needs an https:// ca-url");
	expect_error(RENEW_HEAD "ca-url = http://x/\n", 6,
		     "identity \"i\": \"ca-url\" needs renew = cmp or est");
	expect_error(RENEW_HEAD "renew = cmp\nca-url = ftp://x/\n", 7,
		     "bad ca-url \"ftp://x/\": want http(s)://HOST[:PORT]/PATH");
	expect_error(RENEW_HEAD "renew = est\nca-url = https://x/.well-known/est\nca-trust = /c\n"
				"bootstrap = secret:r:/s\n",
		     9, "identity \"i\": bootstrap secret: is for CMP, not est");
	expect_error(RENEW_HEAD "renew = cmp\nca-url = http://x/\nca-trust = /c\n"
				"bootstrap = identity:nobody\n",
		     9, "identity \"i\": bootstrap identity \"nobody\" is not configured");
	expect_error(RENEW_HEAD "renew = cmp\nca-url = http://x/\nca-trust = /c\n"
				"renew-auth = identity:i\n",
		     9, "identity \"i\": renew-auth identity \"i\" is itself");
	expect_error(RENEW_HEAD "renew = cmp\nca-url = http://x/\nca-trust = /c\n"
				"renew-auth = basic:/x\n",
		     9, "bad renew-auth \"basic:/x\": want identity:NAME");
	expect_error(
		RENEW_HEAD "renew = cmp\nca-url = http://x/\nca-trust = /c\n"
			   "renew-verify = mqtts://broker\n",
		9,
		"bad renew-verify \"mqtts://broker\": mqtts:// needs a port (mqtts://HOST:8883)");
	expect_error(RENEW_HEAD "renew = cmp\nca-url = http://x/\nca-trust = /c\n"
				"renew-verify = http://x/\n",
		     9,
		     "bad renew-verify \"http://x/\": want https://HOST[:PORT]/PATH or "
		     "mqtts://HOST:PORT");
	expect_error(RENEW_HEAD "renew = cmp\nca-url = http://x/\nca-trust = /c\n"
				"renew-verify = https://x:99999/\n",
		     9,
		     "bad renew-verify \"https://x:99999/\": want https://HOST[:PORT]/PATH or "
		     "mqtts://HOST:PORT");
	expect_error(RENEW_HEAD "renew = cmp\nca-url = http://x/\nca-trust = /c\n"
				"revocation-check = always\n",
		     9, "bad revocation-check \"always\": want auto, ocsp, crl or off");
	expect_error(RENEW_HEAD "renew = cmp\nca-url = http://x/\nca-trust = /c\n"
				"revocation-interval = 50%\n",
		     9,
		     "bad revocation-interval \"50%\": want a duration from 1s to 30d (\"1h\", "
		     "\"30m\", \"45s\")");
	expect_error(RENEW_HEAD "renew = cmp\nca-url = http://x/\nca-trust = /c\n"
				"revocation-interval = 31d\n",
		     9,
		     "bad revocation-interval \"31d\": want a duration from 1s to 30d (\"1h\", "
		     "\"30m\", \"45s\")");
	expect_error(RENEW_HEAD "renew = cmp\nca-url = http://x/\nca-trust = /c\n"
				"revocation-interval = 0\n",
		     9,
		     "bad revocation-interval \"0\": want a duration from 1s to 30d (\"1h\", "
		     "\"30m\", \"45s\")");
	expect_error(RENEW_HEAD "renew-verify = https://x/\n", 6,
		     "identity \"i\": \"renew-verify\" needs renew = cmp or est");
	expect_error(RENEW_HEAD "renew-auth = identity:e\n", 6,
		     "identity \"i\": \"renew-auth\" needs renew = cmp or est");
	/* The renewal credential must be one no application may use. */
	expect_error(RENEW_HEAD "renew = est\nca-url = https://x/.well-known/est\nca-trust = /c\n"
				"renew-auth = identity:e\n"
				"[identity \"e\"]\nkeystore = k\nkey = handle:0x81000011\n"
				"allow-users = root\n",
		     9,
		     "identity \"i\": renew-auth identity \"e\" is usable by applications "
		     "(allow-users at line 13): a renewal credential must have no allow-users or "
		     "allow-groups, or whoever may use it can re-enroll");
	expect_error(
		RENEW_HEAD "renew = cmp\nca-url = http://x/\nca-trust = /c\nbootstrap = pin:1\n", 9,
		"bad bootstrap \"pin:1\": want secret:REFERENCE:/path (CMP), basic:/path (EST) or "
		"identity:NAME");
	expect_error(
		RENEW_HEAD "renew = cmp\nrenew-at = 100%\n", 7,
		"bad renew-at \"100%\": want a share of the lifetime (\"66%\") or a time before "
		"expiry (\"7d\", \"12h\", \"30m\", \"45s\")");
	expect_error(
		RENEW_HEAD "renew = cmp\nsubject = /CN=x/XX=y\n", 7,
		"bad subject \"/CN=x/XX=y\": unknown subject attribute 'XX' (known: CN C ST L O "
		"OU DC UID emailAddress serialNumber street title SN GN initials pseudonym "
		"postalCode)");
	expect_error(RENEW_HEAD "renew = cmp\nsubject = /CN\n", 7,
		     "bad subject \"/CN\": subject part 'CN' has no '='");
	expect_error(RENEW_HEAD "renew = cmp\nrotate-key = maybe\n", 7,
		     "bad rotate-key \"maybe\": want yes or no");
	expect_error(RENEW_HEAD "renew = cmp\ncert-out = rel/path.pem\n", 7,
		     "cert-out must be an absolute path, not \"rel/path.pem\"");
	expect_error(RENEW_HEAD "renew = cmp\nca-signer = ra.pem\n", 7,
		     "ca-signer must be an absolute path, not \"ra.pem\"");
	expect_error(RENEW_HEAD "renew = cmp\nca-sender = /CN\n", 7,
		     "bad ca-sender \"/CN\": subject part 'CN' has no '='");
	expect_error(
		RENEW_HEAD "renew = est\nca-url = https://x/.well-known/est\nca-trust = /c\n"
			   "ca-signer = /ra.pem\n",
		9, "identity \"i\": ca-signer, ca-sender and implicit-confirm are for renew = cmp");
	expect_error(RENEW_HEAD "renew = cmp\nimplicit-confirm = maybe\n", 7,
		     "bad implicit-confirm \"maybe\": want yes or no");
	expect_error(RENEW_HEAD "ca-signer = /ra.pem\n", 6,
		     "identity \"i\": \"ca-signer\" needs renew = cmp or est");
}

/* Whether allow-exe/allow-unit can work (root, or CAP_SYS_PTRACE = bit 19 of CapEff). */
static void test_can_inspect_others(void **state)
{
	(void)state;
	assert_true(config_can_inspect_others(0, ""));
	assert_false(config_can_inspect_others(
		998, "Name:\tmtls-agent\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\n"));
	assert_true(config_can_inspect_others(998, "Name:\tx\nCapEff:\t0000000000080000\n"));
	assert_false(config_can_inspect_others(998, "Name:\tx\nCapEff:\t0000000000040000\n"));
	assert_false(config_can_inspect_others(998, NULL));
}

/* The estimate behind the short-bootstrap-secret warning: length x log2(classes used). */
static void test_secret_bits(void **state)
{
	(void)state;
	/* 32 hex digits: 128 bits; 31: 124 */
	assert_true(config_secret_bits("0123456789abcdef0123456789abcdef", 32) > 127.9);
	assert_true(config_secret_bits("0123456789abcdef0123456789abcde", 31) < 128);
	/* digits only: log2(10) each */
	assert_true(config_secret_bits("1234567890", 10) > 33.2 &&
		    config_secret_bits("1234567890", 10) < 33.3);
	/* lower + other ("boot-secret"): log2(59) each */
	assert_true(config_secret_bits("boot-secret", 11) > 64.7 &&
		    config_secret_bits("boot-secret", 11) < 64.8);
	/* all four classes: log2(95) each; 20 characters are 131 bits */
	assert_true(config_secret_bits("Aa1!Aa1!Aa1!Aa1!Aa1!", 20) > 131);
	assert_true(config_secret_bits("", 0) == 0);
}

static void test_err_unknown_key(void **state)
{
	(void)state;
	expect_error("[agent]\nsocket = /run/a.sock\n\nsokcet = /x\n", 4,
		     "unknown key \"sokcet\" in [agent]");
	expect_error("[keystore \"hsm\"]\ntype = tpm2\nmodul = /x\n", 3,
		     "unknown key \"modul\" in [keystore \"hsm\"]");
}

static void test_err_metrics(void **state)
{
	(void)state;
	expect_error(
		"[agent]\nmetrics-listen = 0.0.0.0:9464\n", 2,
		"bad metrics-listen \"0.0.0.0:9464\": only loopback addresses (127.0.0.0/8, "
		"[::1]) are allowed (the listener has no TLS or authentication: put a proxy in "
		"front)");
	expect_error(
		"[agent]\nmetrics-listen = [2001:db8::1]:9464\n", 2,
		"bad metrics-listen \"[2001:db8::1]:9464\": only the loopback address [::1] is "
		"allowed (the listener has no TLS or authentication: put a proxy in front)");
	expect_error("[agent]\nmetrics-listen = 127.0.0.1:0\n", 2,
		     "bad metrics-listen \"127.0.0.1:0\": bad port \"0\" (1..65535)");
	expect_error("[agent]\nmetrics-listen = localhost:9464\n", 2,
		     "bad metrics-listen \"localhost:9464\": bad address \"localhost\" (numeric "
		     "127.x.y.z or [::1])");
	expect_error("[agent]\nmetrics-listen = 9464\n", 2,
		     "bad metrics-listen \"9464\": want HOST:PORT or an absolute socket path");
	expect_error("[agent]\nmetrics-identities = true\n", 2,
		     "bad metrics-identities \"true\": want yes or no");
}

static void test_err_unknown_section(void **state)
{
	(void)state;
	expect_error("[agent]\nworkers = 2\n[agents]\n", 3, "unknown section [agents]");
	expect_error("\n[agent \"x\"]\n", 2, "unknown section [agent \"x\"]");
	expect_error("[keystore]\n", 1, "section [keystore] needs a name: [keystore \"NAME\"]");
	expect_error("[identity \"a b\"]\n", 1,
		     "bad identity name \"a b\": want 1-64 of A-Z a-z 0-9 . _ -");
	expect_error("[keystore \"x/y\"]\n", 1,
		     "bad keystore name \"x/y\": want 1-64 of A-Z a-z 0-9 . _ -");
	expect_error("[keystore \"\"]\n", 1,
		     "bad keystore name \"\": want 1-64 of A-Z a-z 0-9 . _ -");
	expect_error("[keystore hsm]\n", 1,
		     "bad section header [keystore hsm]: want [keystore \"NAME\"]");
	expect_error("[agent\n", 1,
		     "bad section header: want [agent], [keystore \"NAME\"] or "
		     "[identity \"NAME\"]");
	expect_error("workers = 2\n", 1, "key \"workers\" outside of any section");
	expect_error("[agent]\nworkers\n", 2, "expected \"key = value\"");
	expect_error("[agent]\nworkers: 2\n", 2, "expected \"key = value\"");
}

static void test_err_long_name(void **state)
{
	char text[256], name[66];
	struct config *cfg;

	(void)state;
	/* 64 is fine (longer than inih's own section buffer), 65 is not. */
	memset(name, 'n', 64);
	name[64] = '\0';
	snprintf(text, sizeof(text), "[keystore \"%s\"]\ntype = tpm2\n", name);
	cfg = load_ok(text);
	assert_non_null(config_keystore(cfg, name));
	config_free(cfg);
	name[64] = 'n';
	name[65] = '\0';
	snprintf(text, sizeof(text), "[keystore \"%s\"]\ntype = tpm2\n", name);
	expect_error(text, 1,
		     "bad keystore name "
		     "\"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn\": "
		     "want 1-64 of A-Z a-z 0-9 . _ -");
}

static void test_err_socket_mode(void **state)
{
	(void)state;
	expect_error("[agent]\nsocket-mode = 0999\n", 2,
		     "bad socket-mode \"0999\": want an octal mode <= 0777");
	expect_error("[agent]\nsocket-mode = 01660\n", 2,
		     "bad socket-mode \"01660\": want an octal mode <= 0777");
	expect_error("[agent]\nsocket-mode = rw\n", 2,
		     "bad socket-mode \"rw\": want an octal mode <= 0777");
	expect_error("[agent]\n\nsocket-mode = 0460\n", 3,
		     "bad socket-mode \"0460\": the owner needs read and write");
}

static void test_err_numbers(void **state)
{
	(void)state;
	expect_error("[agent]\nworkers = 65\n", 2, "bad workers \"65\": want a number in 1..64");
	expect_error("[agent]\nworkers = 0\n", 2, "bad workers \"0\": want a number in 1..64");
	expect_error("[agent]\nworkers = -1\n", 2, "bad workers \"-1\": want a number in 1..64");
	expect_error("[agent]\nworkers = 4x\n", 2, "bad workers \"4x\": want a number in 1..64");
	expect_error("[agent]\nmax-clients = 99999999999999999999999\n", 2,
		     "bad max-clients \"99999999999999999999999\": want a number in 1..65536");
	expect_error("[agent]\nmax-clients-per-uid = 65537\n", 2,
		     "bad max-clients-per-uid \"65537\": want a number in 1..65536");
	expect_error("[agent]\nidle-timeout = 86401\n", 2,
		     "bad idle-timeout \"86401\": want a number in 0..86400");
	expect_error("[agent]\nidle-timeout = 5m\n", 2,
		     "bad idle-timeout \"5m\": want a number in 0..86400");
	expect_error("[agent]\nadmin-reserve = -1\n", 2,
		     "bad admin-reserve \"-1\": want a number in 0..65535");
	/* Checked once the file is read: the keys may come in either order. */
	expect_error("[agent]\nadmin-reserve = 10\nmax-clients = 10\n", 2,
		     "admin-reserve (10) must be less than max-clients (10)");
	expect_error("[agent]\nmax-clients = 4\n\nadmin-reserve = 4\n", 4,
		     "admin-reserve (4) must be less than max-clients (4)");
	expect_error("[keystore \"k\"]\ntype = pkcs11\nsessions = 65\n", 3,
		     "bad sessions \"65\": want a number in 1..64");
}

static void test_err_unknown_user(void **state)
{
	(void)state;
	assert_null(getpwnam("no-such-user-mtls"));
	/* socket-group must resolve: the socket would get the wrong owner. */
	expect_error("[agent]\nsocket-group = no-such-group-mtls\n", 2,
		     "unknown group \"no-such-group-mtls\"");
	expect_error("[agent]\nadmin-users = 4294967295\n", 2, "bad user id \"4294967295\"");
	expect_error("[agent]\nadmin-users = , ,\n", 2, "empty user list");
}

/*
 * An account named in an allow-list or admin list that no longer exists is
 * left out (a problem, logged), not a reason to refuse the whole file: the
 * agent keeps serving the others, and the uid it had does not stay allowed.
 */
static void test_missing_accounts_left_out(void **state)
{
	struct config *cfg;
	const struct cfg_identity *id;
	struct passwd *nobody = getpwnam("nobody");
	uid_t nobody_uid;

	(void)state;
	assert_non_null(nobody);
	nobody_uid = nobody->pw_uid; /* getpwnam's buffer is reused by config_load */
	cfg = load_ok("[agent]\nadmin-users = no-such-user-mtls\nadmin-groups = root, "
		      "no-such-group-mtls\n"
		      "[keystore \"k\"]\ntype = tpm2\n"
		      "[identity \"i\"]\nkeystore = k\nkey = handle:0x81000010\n"
		      "allow-users = nobody no-such-user-mtls\n"
		      "[identity \"j\"]\nkeystore = k\nkey = handle:0x81000011\n"
		      "allow-users = no-such-user-mtls\n");
	assert_int_equal(cfg->n_problems, 4);
	assert_non_null(strstr(cfg->problems[0], ":2: unknown user \"no-such-user-mtls\""));
	assert_non_null(strstr(cfg->problems[1], ":3: unknown group \"no-such-group-mtls\""));
	assert_non_null(strstr(cfg->problems[2], ":9: unknown user \"no-such-user-mtls\""));
	assert_non_null(strstr(cfg->problems[3], ":13: unknown user \"no-such-user-mtls\""));
	/* admin-users named only a missing account: no administrator, not root by default. */
	assert_int_equal(cfg->n_admin_users, 0);
	assert_int_equal(cfg->n_admin_groups, 1);
	id = config_identity(cfg, "i");
	assert_non_null(id);
	assert_int_equal(id->n_allow_users, 1);
	assert_int_equal(id->allow_users[0], nobody_uid);
	id = config_identity(cfg, "j");
	assert_non_null(id);
	assert_int_equal(id->n_allow_users, 0);
	config_free(cfg);
}

/* allow-exe paths are kept canonical; allow-unit names are checked; both errors have FILE:LINE. */
static void test_allow_exe_unit(void **state)
{
	struct config *cfg;
	const struct cfg_identity *id;
	char *sh = realpath("/bin/sh", NULL);

	(void)state;
	assert_non_null(sh);
	cfg = load_ok(
		"[keystore \"k\"]\ntype = tpm2\n"
		"[identity \"i\"]\nkeystore = k\nkey = handle:0x81000010\n"
		"allow-exe = /bin/sh /nonexistent/prog\nallow-unit = myapp.service a@b.scope\n");
	id = config_identity(cfg, "i");
	assert_non_null(id);
	assert_int_equal(id->n_allow_exe, 2);
	assert_string_equal(id->allow_exe[0], sh);
	assert_string_equal(id->allow_exe[1], "/nonexistent/prog");
	assert_int_equal(id->n_allow_unit, 2);
	assert_string_equal(id->allow_unit[1], "a@b.scope");
	config_free(cfg);
	free(sh);
	expect_error("[keystore \"k\"]\ntype = tpm2\n[identity \"i\"]\nallow-exe = sh\n", 4,
		     "allow-exe must be an absolute path, not \"sh\"");
	expect_error("[keystore \"k\"]\ntype = tpm2\n[identity \"i\"]\nallow-unit = my/app\n", 4,
		     "bad allow-unit \"my/app\": want systemd unit names (myapp.service)");
	expect_error("[keystore \"k\"]\ntype = tpm2\n[identity \"i\"]\nallow-unit = myapp\n", 4,
		     "bad allow-unit \"myapp\": want systemd unit names (myapp.service)");
}

static void test_err_duplicates(void **state)
{
	(void)state;
	expect_error("[agent]\nworkers = 2\nsocket = /a\nworkers = 3\n", 4,
		     "duplicate key \"workers\" in [agent] (first at line 2)");
	expect_error("[keystore \"k\"]\ntype = tpm2\ntype = tpm2\n", 3,
		     "duplicate key \"type\" in [keystore \"k\"] (first at line 2)");
	expect_error("[keystore \"k\"]\ntype = tpm2\n[agent]\n[keystore \"k\"]\n", 4,
		     "duplicate section [keystore \"k\"] (first at line 1)");
	/* An empty duplicate is still a duplicate (inih alone would not report it). */
	expect_error("[agent]\n\n[agent]\n", 3, "duplicate section [agent] (first at line 1)");
	expect_error("[identity \"i\"]\n[identity \"i\"]\n", 2,
		     "duplicate section [identity \"i\"] (first at line 1)");
}

static void test_err_missing_and_refs(void **state)
{
	(void)state;
	expect_error("[keystore \"k\"]\ntype = tpm2\n\n[identity \"device\"]\nkey = x\n", 4,
		     "identity \"device\": missing \"keystore\"");
	expect_error("[keystore \"k\"]\ntype = tpm2\n[identity \"device\"]\nkeystore = k\n", 3,
		     "identity \"device\": missing \"key\"");
	/* An identity without any key at all is still seen. */
	expect_error("[keystore \"k\"]\ntype = tpm2\n[identity \"empty\"]\n", 3,
		     "identity \"empty\": missing \"keystore\"");
	expect_error("[keystore \"k\"]\ntype = tpm2\n[identity \"d\"]\nkey = x\nkeystore = hsm\n",
		     5, "identity \"d\": no [keystore \"hsm\"] section");
	expect_error("[agent]\n[keystore \"k\"]\ntoken = t\n", 2,
		     "keystore \"k\": missing \"type\"");
	expect_error("[keystore \"k\"]\ntype = pkcs11\nmodule = " SOFTHSM "\n", 1,
		     "keystore \"k\": missing \"token\"");
	expect_error("[keystore \"k\"]\ntype = tpm2\ntoken = t\n", 3,
		     "keystore \"k\": \"token\" is only for type pkcs11");
	expect_error("[keystore \"k\"]\ntype = pkcs11\ntoken = t\nmodule = " SOFTHSM
		     "\ntcti = device:/dev/tpm0\n",
		     5, "keystore \"k\": \"tcti\" is only for type tpm2");
}

static void test_err_values(void **state)
{
	(void)state;
	expect_error("[agent]\nsocket = run/agent.sock\n", 2,
		     "socket must be an absolute path, not \"run/agent.sock\"");
	expect_error("[agent]\nstate-dir = state\n", 2,
		     "state-dir must be an absolute path, not \"state\"");
	expect_error("[keystore \"k\"]\ntype = pkcs11\ntoken = t\nmodule = libsofthsm2.so\n", 4,
		     "module must be an absolute path, not \"libsofthsm2.so\"");
	expect_error("[keystore \"k\"]\ntype = pkcs11\npin-file = hsm.pin\n", 3,
		     "pin-file must be an absolute path, not \"hsm.pin\"");
	expect_error("[identity \"i\"]\ncert = i.crt\n", 2,
		     "cert must be an absolute path, not \"i.crt\"");
	expect_error("[agent]\nsocket =\n", 2, "empty value for \"socket\"");
	expect_error("[agent]\nsocket = ; nothing\n", 2, "empty value for \"socket\"");
	expect_error("[keystore \"k\"]\ntype = tpm2;\n", 2,
		     "bad type \"tpm2;\": want pkcs11 or tpm2");
	expect_error("[identity \"i\"]\nsign-policy = tls12\n", 2,
		     "bad sign-policy \"tls12\": want tls-client, tls13-client, digest or any");
	expect_error("[agent]\nsocket = /run/"
		     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\n",
		     2, "socket path too long (max 107 bytes)");
}

static void test_err_long_line(void **state)
{
	char text[600];
	int n;

	(void)state;
	n = snprintf(text, sizeof(text), "[agent]\n\nstate-dir = /");
	memset(text + n, 'd', 400);
	strcpy(text + n + 400, "\nworkers = 2\n");
	expect_error(text, 3, "line too long (max 198 characters without comments)");
}

static void test_err_module_group_writable(void **state)
{
	char mod[PATH_MAX], text[2 * PATH_MAX], msg[2 * PATH_MAX];

	(void)state;
	make_module(mod, sizeof(mod), 0664);
	snprintf(text, sizeof(text), "[keystore \"p\"]\ntype = pkcs11\ntoken = t\nmodule = %s\n",
		 mod);
	snprintf(msg, sizeof(msg), "module %s is writable by group or others (mode 0664)", mod);
	expect_error(text, 4, msg);
	unlink(mod);

	snprintf(mod, sizeof(mod), "%s/no-such-module.so", tmpdir);
	snprintf(text, sizeof(text), "[keystore \"p\"]\ntype = pkcs11\ntoken = t\n\nmodule = %s\n",
		 mod);
	snprintf(msg, sizeof(msg), "module %s: No such file or directory", mod);
	expect_error(text, 5, msg);

	snprintf(text, sizeof(text), "[keystore \"p\"]\ntype = pkcs11\ntoken = t\nmodule = %s\n",
		 tmpdir);
	snprintf(msg, sizeof(msg), "module %s is not a regular file", tmpdir);
	expect_error(text, 4, msg);
}

static void test_err_module_not_root(void **state)
{
	char mod[PATH_MAX], text[2 * PATH_MAX], msg[2 * PATH_MAX];
	uid_t nobody = uid_of("nobody");

	(void)state;
	make_module(mod, sizeof(mod), 0644);
	if (geteuid() == 0)
		assert_int_equal(chown(mod, nobody, (gid_t)-1), 0);
	snprintf(text, sizeof(text), "[keystore \"p\"]\ntype = pkcs11\ntoken = t\nmodule = %s\n",
		 mod);
	snprintf(msg, sizeof(msg), "module %s is not owned by root (uid %lu)", mod,
		 (unsigned long)(geteuid() == 0 ? nobody : geteuid()));
	expect_error(text, 4, msg);
	unlink(mod);
}

static void test_err_config_file(void **state)
{
	struct config *cfg = NULL;
	char err[1024], want[1024 + PATH_MAX], path[PATH_MAX];

	(void)state;
	expect_error_mode(minimal_tail, 0666, 0,
			  "refusing a config file writable by group or others (mode 0666)");
	expect_error_mode(minimal_tail, 0620, 0,
			  "refusing a config file writable by group or others (mode 0620)");

	snprintf(path, sizeof(path), "%s/missing.conf", tmpdir);
	assert_int_equal(config_load(path, &cfg, err, sizeof(err)), -1);
	assert_null(cfg);
	snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
	assert_string_equal(err, want);

	assert_int_equal(config_load(tmpdir, &cfg, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "%s: not a regular file", tmpdir);
	assert_string_equal(err, want);
}

static void test_err_config_owner(void **state)
{
	struct config *cfg = NULL;
	char err[1024], want[1024 + PATH_MAX];
	uid_t nobody = uid_of("nobody");

	(void)state;
	if (geteuid() != 0)
		skip();
	write_conf(minimal_tail, 0600);
	assert_int_equal(chown(last_path, nobody, (gid_t)-1), 0);
	assert_int_equal(config_load(last_path, &cfg, err, sizeof(err)), -1);
	snprintf(want, sizeof(want),
		 "%s: refusing a config file owned by uid %lu (neither root nor the agent's uid)",
		 last_path, (unsigned long)nobody);
	unlink(last_path);
	assert_null(cfg);
	assert_string_equal(err, want);
}

/*
 * config_check (mtls-agentctl check) is config_load for the agent: the same verdict and
 * messages, the file owned by the agent's uid accepted, warnings kept in cfg->warnings.
 */
static void test_config_check(void **state)
{
	char secret[PATH_MAX], text[2 * PATH_MAX], err1[1024], err2[1024];
	struct config *cfg = NULL;
	uid_t nobody = uid_of("nobody");
	int fd;

	(void)state;
	snprintf(secret, sizeof(secret), "%s/boot.XXXXXX", tmpdir);
	assert_true((fd = mkstemp(secret)) >= 0);
	assert_int_equal(write(fd, "short", 5), 5);
	assert_int_equal(close(fd), 0);
	snprintf(text, sizeof(text),
		 "%s[identity \"r\"]\nkeystore = k\nkey = handle:0x81000011\nrenew = cmp\n"
		 "ca-url = http://127.0.0.1:8080/pkix/\nca-trust = /etc/ca.pem\n"
		 "bootstrap = secret:dev-17:%s\n",
		 minimal_tail, secret);
	write_conf(text, 0600);
	assert_int_equal(config_check(last_path, geteuid(), &cfg, err1, sizeof(err1)), 0);
	assert_int_equal(cfg->n_warnings, 2);
	/* FILE:LINE: as the agent logs them. */
	assert_int_equal(strncmp(cfg->warnings[0], last_path, strlen(last_path)), 0);
	assert_true(cfg->warnings[0][strlen(last_path)] == ':');
	assert_non_null(strstr(cfg->warnings[0], ": identity \"r\": the bootstrap secret protects "
						 "an IR sent over http://"));
	assert_non_null(strstr(cfg->warnings[1], ": identity \"r\": the bootstrap secret in "));
	assert_non_null(strstr(cfg->warnings[1], "is short: 5 characters"));
	config_free(cfg);
	cfg = NULL;
	if (geteuid() == 0) {
		/* Owned by the agent's user: config_load as root refuses it, the agent would not.
		 */
		assert_int_equal(chown(last_path, nobody, (gid_t)-1), 0);
		assert_int_equal(config_load(last_path, &cfg, err1, sizeof(err1)), -1);
		assert_int_equal(config_check(last_path, nobody, &cfg, err1, sizeof(err1)), 0);
		config_free(cfg);
		cfg = NULL;
	}
	unlink(last_path);
	unlink(secret);
	/* (uid_t)-1 is refused by both, in the same words. */
	write_conf("[agent]\nadmin-users = 4294967295\n", 0600);
	assert_int_equal(config_load(last_path, &cfg, err1, sizeof(err1)), -1);
	assert_int_equal(config_check(last_path, geteuid(), &cfg, err2, sizeof(err2)), -1);
	unlink(last_path);
	assert_null(cfg);
	assert_string_equal(err1, err2);
	assert_non_null(strstr(err1, ":2: bad user id \"4294967295\""));
}

/* The first error wins, even when a later line is also wrong. */
static void test_err_first_only(void **state)
{
	(void)state;
	expect_error("[agent]\nworkers = 0\nbogus = 1\n[nope]\n", 2,
		     "bad workers \"0\": want a number in 1..64");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_can_inspect_others),
		cmocka_unit_test(test_full),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_empty_file),
		cmocka_unit_test(test_ids_resolve),
		cmocka_unit_test(test_inline_comments),
		cmocka_unit_test(test_sign_policy_names),
		cmocka_unit_test(test_renewal),
		cmocka_unit_test(test_err_renewal),
		cmocka_unit_test(test_revocation_without_renewal),
		cmocka_unit_test(test_module_root_owned_copy),
		cmocka_unit_test(test_secret_bits),
		cmocka_unit_test(test_err_unknown_key),
		cmocka_unit_test(test_err_unknown_section),
		cmocka_unit_test(test_err_metrics),
		cmocka_unit_test(test_err_long_name),
		cmocka_unit_test(test_err_socket_mode),
		cmocka_unit_test(test_err_numbers),
		cmocka_unit_test(test_err_unknown_user),
		cmocka_unit_test(test_missing_accounts_left_out),
		cmocka_unit_test(test_config_check),
		cmocka_unit_test(test_allow_exe_unit),
		cmocka_unit_test(test_err_duplicates),
		cmocka_unit_test(test_err_missing_and_refs),
		cmocka_unit_test(test_err_values),
		cmocka_unit_test(test_err_long_line),
		cmocka_unit_test(test_err_module_group_writable),
		cmocka_unit_test(test_err_module_not_root),
		cmocka_unit_test(test_err_config_file),
		cmocka_unit_test(test_err_config_owner),
		cmocka_unit_test(test_err_first_only),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
