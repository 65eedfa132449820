# shellcheck shell=bash
#
# tests/integration/systemd-lib.sh: sourced (after tests/lib.sh) by the
# systemd-*.sh tests. Stand-ins for what systemd does to a service, so that
# they run without systemd as PID 1:
#
#   sd_run_passed SOCK [--mdwe] [--fds N] CMD...  exec CMD the way systemd starts a
#       socket-activated service: SOCK bound and listening (mode 0660) on fd 3,
#       LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES set, same PID (so $! is CMD's pid).
#       --fds N passes N sockets (N-1 extra on SOCK.2, ...); --mdwe first sets
#       PR_SET_MDWE (what MemoryDenyWriteExecute=yes enforces), inherited by CMD.
#   notify_listen: a NOTIFY_SOCKET ($NOTIFY_SOCK) whose datagrams are appended
#       to $NOTIFY_LOG, one line each, newlines shown as '|'.
#   notify_wait SECONDS ERE [AFTER_LINE]: waits until a line after AFTER_LINE
#       matches ERE; prints its line number.

need_cmd python3

SD_HELPER=$WORK/sd-helper.py
cat >"$SD_HELPER" <<'EOF'
import ctypes, os, socket, sys

def passed(args):
    path, mdwe, nfds = args[0], False, 1
    args = args[1:]
    while args and args[0].startswith('--'):
        if args[0] == '--mdwe':
            mdwe = True
            args = args[1:]
        elif args[0] == '--fds':
            nfds = int(args[1])
            args = args[2:]
        else:
            break
    if args and args[0] == '--':
        args = args[1:]
    socks = []
    for i in range(nfds):
        p = path if i == 0 else '%s.%d' % (path, i + 1)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        s.bind(p)
        os.umask(old)
        os.chmod(p, 0o660)
        s.listen(128)
        socks.append(s)
    import fcntl
    high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 100) for s in socks]
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i, inheritable=True)
        os.close(fd)
    if mdwe:
        libc = ctypes.CDLL(None, use_errno=True)
        # PR_SET_MDWE (65), PR_MDWE_REFUSE_EXEC_GAIN (1): Linux >= 6.3
        if libc.prctl(65, 1, 0, 0, 0) != 0:
            sys.stderr.write('sd-helper: PR_SET_MDWE: %s\n' % os.strerror(ctypes.get_errno()))
            sys.exit(77)
    os.environ['LISTEN_FDS'] = str(nfds)
    os.environ['LISTEN_PID'] = str(os.getpid())
    os.environ['LISTEN_FDNAMES'] = ':'.join(['mtls-agent.socket'] * nfds)
    os.execvp(args[0], args)

def listen(path, out):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    with open(out, 'a', buffering=1) as f:
        while True:
            data = s.recv(65536)
            f.write(data.decode('utf-8', 'replace').replace('\n', '|') + '\n')

def mdwe_supported():
    libc = ctypes.CDLL(None, use_errno=True)
    # PR_GET_MDWE (66): fails with EINVAL before Linux 6.3
    sys.exit(0 if libc.prctl(66, 0, 0, 0, 0) >= 0 else 1)

if sys.argv[1] == 'passed':
    passed(sys.argv[2:])
elif sys.argv[1] == 'listen':
    listen(sys.argv[2], sys.argv[3])
elif sys.argv[1] == 'mdwe-supported':
    mdwe_supported()
EOF

sd_run_passed() {
	exec python3 "$SD_HELPER" passed "$@"
}

mdwe_supported() {
	python3 "$SD_HELPER" mdwe-supported
}

NOTIFY_SOCK=$WORK/notify.sock
NOTIFY_LOG=$WORK/notify.log

notify_listen() {
	: >"$NOTIFY_LOG"
	python3 "$SD_HELPER" listen "$NOTIFY_SOCK" "$NOTIFY_LOG" &
	bg_track $!
	wait_until 10 test -S "$NOTIFY_SOCK" || fail "notification listener did not bind $NOTIFY_SOCK"
}

# notify_wait SECONDS ERE [AFTER_LINE]: line number of the first line after
# AFTER_LINE (default 0) matching ERE, waiting up to SECONDS.
notify_wait() {
	local max=$1 ere=$2 after=${3:-0} deadline n
	deadline=$((SECONDS + max))
	while :; do
		n=$(awk -v after="$after" -v ere="$ere" 'NR > after && $0 ~ ere { print NR; exit }' "$NOTIFY_LOG")
		if [ -n "$n" ]; then
			printf '%s\n' "$n"
			return 0
		fi
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.05
	done
}

# notify_line N: line N of the notification log.
notify_line() {
	sed -n "${1}p" "$NOTIFY_LOG"
}
