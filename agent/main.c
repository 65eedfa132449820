/* mtls-agent: keeps TLS client keys in hardware and signs for local programs. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "conf/conf.h"
#include "agent/server.h"
#include "agent/state.h"
#include "common/log.h"
#include "common/util.h"

static void usage(FILE *out)
{
	fprintf(out,
		"usage: mtls-agent [-f] [-n] [-v] [-c FILE]\n"
		"  -c, --config FILE  configuration file (default %s)\n"
		"  -f, --foreground   stay in the foreground and log to stderr\n"
		"  -n, --check        check the configuration and exit\n"
		"  -v, --verbose      more logging (repeat for debug)\n"
		"      --version      print the version and exit\n",
		MTLS_AGENT_DEFAULT_CONFIG);
}

/* No core dumps and no ptrace by other processes of our uid: keys' PINs live here. */
static int harden_process(void)
{
	struct rlimit rl = {0, 0};

	if (setrlimit(RLIMIT_CORE, &rl) != 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
		return -1;
	return 0;
}

/* -n: besides parsing, check what start-up would refuse (PIN file permissions). */
static int check_secrets(const struct config *cfg)
{
	char err[512], *pin = NULL;
	size_t i;

	for (i = 0; i < cfg->n_keystores; i++) {
		if (cfg->keystores[i].pin_file == NULL)
			continue;
		if (read_secret_file(cfg->keystores[i].pin_file, &pin, err, sizeof(err)) != 0) {
			fprintf(stderr, "%s: keystore \"%s\": %s\n", cfg->path,
				cfg->keystores[i].name, err);
			return -1;
		}
		wipe(pin, strlen(pin));
		free(pin);
	}
	return 0;
}

/*
 * Detaches from the terminal. The parent waits until the child reports that
 * it is serving (or why it is not), so `mtls-agent` exits non-zero when
 * start-up fails. Returns the write end of the report pipe in the child.
 * The child's start-up errors come through the same pipe (log_mirror_errors)
 * and the parent prints them, so a failed start says why on the terminal even
 * when syslog is not there; report_ready() ends the pipe with a status byte.
 */
static int daemonize(void)
{
	int fds[2], devnull;
	char buf[512], status = 1;
	int have_status = 0;
	ssize_t n;
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC) != 0)
		return -1;
	if ((pid = fork()) < 0)
		return -1;
	if (pid > 0) {
		close(fds[1]);
		/* Text, then the status byte (0 = serving) as the last byte. */
		while ((n = read(fds[0], buf, sizeof(buf))) != 0) {
			if (n < 0) {
				if (errno == EINTR)
					continue;
				break;
			}
			if (have_status)
				(void)!write(2, &status, 1);
			(void)!write(2, buf, (size_t)n - 1);
			status = buf[n - 1];
			have_status = 1;
		}
		if (!have_status)
			fprintf(stderr, "mtls-agent: start-up failed (see the system log)\n");
		_exit(have_status && status == 0 ? 0 : 1);
	}
	close(fds[0]);
	log_mirror_errors(fds[1]);
	if (setsid() < 0)
		return -1;
	if (chdir("/") != 0)
		return -1;
	if ((devnull = open("/dev/null", O_RDWR | O_CLOEXEC)) >= 0) {
		dup2(devnull, 0);
		dup2(devnull, 1);
		dup2(devnull, 2);
		if (devnull > 2)
			close(devnull);
	}
	return fds[1];
}

/*
 * Socket activation (systemd's LISTEN_FDS protocol, sd_listen_fds(3)): the
 * listening socket the service manager passed us, or -1 if it passed none
 * (or there is no libsystemd), or -2 with err set if what it passed is not
 * one listening Unix stream socket.
 */
static int activated_socket(char *err, size_t errlen)
{
#ifdef HAVE_LIBSYSTEMD
	int n, fd = SD_LISTEN_FDS_START;

	/* 1: unset LISTEN_* so that nothing we start inherits them. */
	if ((n = sd_listen_fds(1)) == 0)
		return -1;
	if (n < 0) {
		snprintf(err, errlen,
			 "socket activation: cannot use the descriptors in LISTEN_FDS: "
			 "%s",
			 strerror(-n));
		return -2;
	}
	if (n != 1) {
		snprintf(err, errlen,
			 "socket activation: %d descriptors passed, expected one "
			 "(ListenStream= in mtls-agent.socket)",
			 n);
		return -2;
	}
	if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0) {
		snprintf(err, errlen,
			 "socket activation: descriptor %d is not a listening Unix "
			 "stream socket",
			 fd);
		return -2;
	}
	return fd;
#else
	(void)err;
	(void)errlen;
	return -1;
#endif
}

/*
 * The path a passed socket is bound to (malloc'ed; "@name" for an abstract
 * one). Warns where it differs from what the configuration says, since
 * clients find the agent through the configuration's path.
 */
static char *activated_socket_path(int fd, const struct config *cfg)
{
	struct sockaddr_un sun;
	socklen_t len = sizeof(sun);
	size_t n;
	struct stat st;
	char *path;

	memset(&sun, 0, sizeof(sun));
	if (getsockname(fd, (struct sockaddr *)&sun, &len) != 0 ||
	    len <= offsetof(struct sockaddr_un, sun_path))
		return strdup("(unnamed socket)");
	n = len - offsetof(struct sockaddr_un, sun_path);
	if (sun.sun_path[0] == '\0') {
		sun.sun_path[0] = '@';
		path = strndup(sun.sun_path, n);
	} else {
		path = strndup(sun.sun_path, strnlen(sun.sun_path, n));
	}
	if (path == NULL)
		return NULL;
	if (strcmp(path, cfg->socket) != 0) {
		log_warn(
			"the socket passed by systemd is %s but the configuration says socket = %s;"
			" clients using the configured path will not find the agent",
			path, cfg->socket);
	} else if (stat(path, &st) == 0) {
		/* Its owner and mode are systemd's (SocketMode=, SocketGroup=), not ours. */
		if ((st.st_mode & 07777) != cfg->socket_mode)
			log_warn(
				"%s has mode %04o (SocketMode= in mtls-agent.socket), not socket-mode "
				"%04o",
				path, (unsigned)(st.st_mode & 07777), (unsigned)cfg->socket_mode);
		if (cfg->has_socket_group && st.st_gid != cfg->socket_group)
			log_warn("%s has group %ld (SocketGroup= in mtls-agent.socket), not "
				 "socket-group %ld",
				 path, (long)st.st_gid, (long)cfg->socket_group);
	}
	return path;
}

/*
 * Blocks the signals the event loop reads through its signalfd (SIGHUP:
 * reload; SIGTERM, SIGINT: clean stop; see server_run), in this thread
 * before any other thread exists. Threads inherit their creator's mask, and
 * libraries start threads of their own while keystores open (the tabrmd TCTI
 * runs a GLib thread); a process-directed signal is delivered to any thread
 * that does not block it, so one such thread would let SIGHUP kill the agent
 * and SIGTERM skip the clean stop. A signal that arrives before the loop
 * runs stays pending and is handled then.
 */
static int block_loop_signals(void)
{
	sigset_t mask;

	sigemptyset(&mask);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	return pthread_sigmask(SIG_BLOCK, &mask, NULL);
}

static void report_ready(int fd, char status)
{
	log_mirror_errors(-1);
	if (fd >= 0) {
		(void)!write(fd, &status, 1);
		close(fd);
	}
}

struct options {
	const char *config_path;
	int foreground, check_only, verbosity;
};

/* Returns -1 to go on, else the exit status (after --help, --version or a usage error). */
static int parse_options(int argc, char **argv, struct options *o)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"foreground", no_argument, NULL, 'f'},
		{"check", no_argument, NULL, 'n'},
		{"verbose", no_argument, NULL, 'v'},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int ch;

	*o = (struct options){.config_path = MTLS_AGENT_DEFAULT_CONFIG, .verbosity = LOG_LVL_INFO};
	while ((ch = getopt_long(argc, argv, "c:fnvh", opts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			o->config_path = optarg;
			break;
		case 'f':
			o->foreground = 1;
			break;
		case 'n':
			o->check_only = 1;
			break;
		case 'v':
			if (o->verbosity < LOG_LVL_DEBUG)
				o->verbosity++;
			break;
		case 'V':
			printf("mtls-agent %s\n", PACKAGE_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	return -1;
}

/* --check: the configuration and its secret files, nothing opened or started. */
static int check_only(const char *config_path, struct config *cfg)
{
	int r = check_secrets(cfg);

	if (r == 0)
		printf("%s: configuration OK (%zu keystores, %zu identities)\n", config_path,
		       cfg->n_keystores, cfg->n_identities);
	config_free(cfg);
	return r == 0 ? 0 : 1;
}

/*
 * The socket systemd passed (made non-blocking: the loop accepts until EAGAIN), -1 when
 * there is none, -2 on error (logged). Before daemonize(): LISTEN_PID names this process.
 */
static int passed_socket(void)
{
	char err[1024];
	int fd;

	if ((fd = activated_socket(err, sizeof(err))) == -2) {
		log_error("%s", err);
		return -2;
	}
	if (fd >= 0 && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
		log_error("socket activation: fcntl: %s", strerror(errno));
		return -2;
	}
	return fd;
}

/*
 * Opens the keystores and the socket (unless systemd passed one), reports readiness to
 * the parent and serves until stopped. Owns cfg.
 */
static int serve(const struct options *o, struct config *cfg, int listen_fd, int ready_fd)
{
	int activated = listen_fd >= 0, r;
	struct runtime *rt = NULL;
	char err[1024], *socket_path;

	if (runtime_create(cfg, time(NULL), &rt, err, sizeof(err)) != 0) {
		log_error("%s", err);
		report_ready(ready_fd, 1);
		return 1;
	}
	if (activated) {
		socket_path = activated_socket_path(listen_fd, rt->cfg);
		log_info("using the socket passed by systemd (%s)",
			 socket_path ? socket_path : "?");
	} else if ((listen_fd = server_listen(rt->cfg, err, sizeof(err))) < 0) {
		log_error("%s", err);
		runtime_unref(rt);
		report_ready(ready_fd, 1);
		return 1;
	} else {
		/* The runtime (and its copy of the path) may be replaced by a reload. */
		socket_path = strdup(rt->cfg->socket);
	}
	if (socket_path == NULL) {
		log_error("out of memory");
		report_ready(ready_fd, 1);
		return 1;
	}
	report_ready(ready_fd, 0);
	/* A passed socket is systemd's: it stays for the next activation. */
	r = server_run(listen_fd, socket_path, !activated, o->config_path, rt);
	free(socket_path);
	return r == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	struct config *cfg = NULL;
	struct options o;
	int r, listen_fd, ready_fd = -1;
	char err[1024];

	if ((r = parse_options(argc, argv, &o)) >= 0)
		return r;
	if (harden_process() != 0) {
		fprintf(stderr, "mtls-agent: cannot disable core dumps: %s\n", strerror(errno));
		return 1;
	}
	if (config_load(o.config_path, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "mtls-agent: %s\n", err);
		return 1;
	}
	if (o.check_only)
		return check_only(o.config_path, cfg);
	log_init("mtls-agent", !o.foreground, o.verbosity);
	/* Until it serves, a daemon that cannot start says why on stderr too. */
	if (!o.foreground)
		log_mirror_errors(2);
	if ((listen_fd = passed_socket()) == -2) {
		config_free(cfg);
		return 1;
	}
	/* Fork before any PKCS#11 module is initialised: modules do not survive fork. */
	if (!o.foreground && (ready_fd = daemonize()) < 0) {
		fprintf(stderr, "mtls-agent: cannot daemonize: %s\n", strerror(errno));
		config_free(cfg);
		return 1;
	}
	/* After the fork (the parent stays killable), before any keystore or TCTI is opened. */
	if ((errno = block_loop_signals()) != 0) {
		log_error("cannot block signals: %s", strerror(errno));
		report_ready(ready_fd, 1);
		config_free(cfg);
		return 1;
	}
	return serve(&o, cfg, listen_fd, ready_fd);
}
