# shellcheck shell=bash disable=SC2034 # variables set here are read by the tests
#
# tests/lib.sh: sourced by every integration test (tests/integration/*.sh).
#
# Gives each test a private work directory (removed on exit, together with
# every process the test started), a private SoftHSM2 token, a small test CA
# driven by the openssl CLI, an agent configuration writer, agent start/stop
# with bounded waits, and assertion helpers.
#
# Exit codes follow automake: 0 pass, 1 fail, 77 skip.
#
# Environment:
#   MTLS_AGENT, MTLS_AGENTCTL  binaries under test (default: ../mtls-agent,
#                              ../mtls-agentctl relative to this directory)
#   SOFTHSM_MODULE             SoftHSM2 module (default /usr/lib/softhsm/libsofthsm2.so)
#   MTLS_AGENT_ARGS            extra daemon arguments (e.g. -v)
#   MTLS_TEST_TIMEOUT          seconds one CLI call may take (default 60)
#   MTLS_TEST_KEEP=1           keep the work directory for inspection

set -eu
set -o pipefail

TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEST_NAME=$(basename "$0" .sh)
MTLS_AGENT=${MTLS_AGENT:-$TESTS_DIR/../mtls-agent}
MTLS_AGENTCTL=${MTLS_AGENTCTL:-$TESTS_DIR/../mtls-agentctl}
SOFTHSM_MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
MTLS_AGENT_ARGS=${MTLS_AGENT_ARGS:-}
MTLS_TEST_TIMEOUT=${MTLS_TEST_TIMEOUT:-60}
export LC_ALL=C
# The CLI must find the agent through -s only, never through the caller's environment.
unset MTLS_AGENT_SOCK

AGENT_PID=
# stdout and stderr of the last assert_ok / assert_fails, for the tests to inspect.
LAST_OUT='' LAST_ERR=''
SOCK=
CONF=
STATE_DIR=
AGENT_LOG=

# --- reporting ----------------------------------------------------------------------

log() { printf '%s: %s\n' "$TEST_NAME" "$*" >&2; }

fail() {
	printf '\n%s: FAIL: %s\n' "$TEST_NAME" "$*" >&2
	exit 1
}

skip() {
	printf '\n%s: *** SKIP *** %s\n' "$TEST_NAME" "$*" >&2
	exit 77
}

# --- work directory and clean-up ------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mtls-$TEST_NAME.XXXXXX")
# sun_path holds 108 bytes; a long TMPDIR must not break the socket.
if [ ${#WORK} -gt 70 ]; then
	rmdir "$WORK"
	WORK=$(mktemp -d "/tmp/mtls-$TEST_NAME.XXXXXX")
fi
CA_DIR=$WORK/ca

# Stops a process we started: SIGTERM, up to 5 s, then SIGKILL. Never by name.
_stop_pid() {
	local pid=$1
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

_cleanup() {
	local rc=$? pid
	set +e
	if [ -n "$AGENT_PID" ]; then
		_stop_pid "$AGENT_PID"
	fi
	for pid in "${BG_PIDS[@]}"; do
		_stop_pid "$pid"
	done
	if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && [ -n "$AGENT_LOG" ] && [ -s "$AGENT_LOG" ]; then
		printf '\n--- %s: agent log (last 60 lines of %s) ---\n' "$TEST_NAME" "$AGENT_LOG" >&2
		tail -n 60 "$AGENT_LOG" >&2
		printf -- '--- end of agent log ---\n' >&2
	fi
	if [ "${MTLS_TEST_KEEP:-0}" = 1 ]; then
		printf '%s: work directory kept: %s\n' "$TEST_NAME" "$WORK" >&2
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
# Background processes a test starts (other than the agent) that the clean-up
# must stop: `some_cmd & bg_track $!`.
BG_PIDS=()
bg_track() { BG_PIDS+=("$@"); }
trap _cleanup EXIT
trap 'exit 1' INT TERM HUP

# --- prerequisites ----------------------------------------------------------------------

need_cmd() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || skip "required command '$c' is not installed"
	done
}

# need_test_hooks: the agent was configured with --enable-test-hooks (the
# crash-point hook behind MTLS_AGENT_TEST_CRASH_AT); tests/ci.sh and distcheck
# always pass it, so this skips only in a developer's build without it.
need_test_hooks() {
	[ "${MTLS_TEST_HOOKS:-}" = yes ] ||
		skip "the agent was built without ./configure --enable-test-hooks (MTLS_AGENT_TEST_CRASH_AT is ignored)"
}

need_root() {
	[ "$(id -u)" -eq 0 ] || skip "this test must run as root"
}

need_binaries() {
	[ -x "$MTLS_AGENT" ] || fail "daemon not found or not executable: MTLS_AGENT=$MTLS_AGENT"
	[ -x "$MTLS_AGENTCTL" ] || fail "CLI not found or not executable: MTLS_AGENTCTL=$MTLS_AGENTCTL"
}

need_cmd openssl softhsm2-util timeout od head cmp seq
need_binaries
[ -r "$SOFTHSM_MODULE" ] || skip "SoftHSM2 module not found: $SOFTHSM_MODULE"

# Sanitizer builds: full stacks for allocations, so that leak suppressions match
# allocations OpenSSL makes for SoftHSM; and LeakSanitizer must not blame the
# agent for what the PKCS#11 module keeps (unless the caller set its own).
case ":${ASAN_OPTIONS:-}:" in
*:fast_unwind_on_malloc=*) ;;
*) export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0" ;;
esac
if [ -z "${LSAN_OPTIONS:-}" ]; then
	printf 'leak:libsofthsm2.so\nleak:libp11-kit.so\nleak:pkcs11-spy.so\n' >"$WORK/lsan.supp"
	export LSAN_OPTIONS="suppressions=$WORK/lsan.supp:print_suppressions=0"
fi

# --- assertions -------------------------------------------------------------------------

assert_eq() { # ACTUAL EXPECTED [WHAT]
	[ "$1" = "$2" ] || fail "${3:-value}: expected '$2', got '$1'"
}

assert_contains() { # HAYSTACK NEEDLE [WHAT]   (fixed string)
	case "$1" in
	*"$2"*) ;;
	*) fail "${3:-output} does not contain '$2': $1" ;;
	esac
}

assert_not_contains() { # HAYSTACK NEEDLE [WHAT]
	case "$1" in
	*"$2"*) fail "${3:-output} contains '$2' but must not: $1" ;;
	*) ;;
	esac
}

assert_match() { # HAYSTACK ERE [WHAT]   (case-insensitive extended regex)
	grep -qiE -- "$2" <<<"$1" || fail "${3:-output} does not match /$2/: $1"
}

# Runs CMD...; it must succeed. stdout in $LAST_OUT, stderr in $LAST_ERR.
assert_ok() {
	local rc=0
	"$@" >"$WORK/.out" 2>"$WORK/.err" || rc=$?
	LAST_OUT=$(cat "$WORK/.out")
	LAST_ERR=$(cat "$WORK/.err")
	[ "$rc" -eq 0 ] || fail "command failed (exit $rc): $* -- stderr: $LAST_ERR"
}

# Runs CMD...; it must exit with exactly 1 and write exactly one line to stderr
# (the project's error contract). The line is left in $LAST_ERR.
assert_fails() {
	local rc=0 lines
	"$@" >"$WORK/.out" 2>"$WORK/.err" || rc=$?
	LAST_OUT=$(cat "$WORK/.out")
	LAST_ERR=$(cat "$WORK/.err")
	[ "$rc" -ne 0 ] || fail "command succeeded but must fail: $*"
	[ "$rc" -eq 1 ] || fail "command must exit 1, exited $rc: $* -- stderr: $LAST_ERR"
	lines=$(awk 'END { print NR }' "$WORK/.err")
	[ "$lines" -eq 1 ] || fail "expected exactly one line on stderr, got $lines: $* -- stderr: $LAST_ERR"
	[ -n "$LAST_ERR" ] || fail "stderr line is empty: $*"
}

# Like assert_fails, but the exit code must be exactly 2 (usage error).
assert_usage_error() {
	local rc=0
	"$@" >"$WORK/.out" 2>"$WORK/.err" || rc=$?
	LAST_ERR=$(cat "$WORK/.err")
	[ "$rc" -eq 2 ] || fail "usage error must exit 2, exited $rc: $* -- stderr: $LAST_ERR"
	[ -s "$WORK/.err" ] || fail "usage error printed nothing on stderr: $*"
}

# --- running things ------------------------------------------------------------------------

# The CLI against this test's agent, bounded in time.
ctl() {
	timeout -k 5 "$MTLS_TEST_TIMEOUT" "$MTLS_AGENTCTL" -s "$SOCK" "$@"
}

# run_as USER GROUP CMD...: CMD with that uid and gid and no supplementary
# groups, from the work dir.
run_as() {
	local user=$1 group=$2
	shift 2
	mkdir -p "$WORK/home-$user"
	chmod 0777 "$WORK/home-$user"
	(cd "$WORK" && HOME=$WORK/home-$user \
		setpriv --reuid="$user" --regid="$group" --clear-groups -- "$@")
}

# Runs CMD... as nobody:nogroup with no supplementary groups.
run_as_nobody() {
	run_as nobody nogroup "$@"
}

# A CLI nobody can execute, in $NOBODY_CTL (an array). The build tree may sit
# under a directory nobody cannot enter (/root): then the real binary (not
# libtool's wrapper script) and the build's shared libraries are copied into
# the work dir.
nobody_prepare() {
	need_cmd setpriv
	local d b real
	chmod a+x "$WORK"
	if run_as_nobody test -x "$MTLS_AGENTCTL" && run_as_nobody test -r "$MTLS_AGENTCTL"; then
		NOBODY_CTL=("$MTLS_AGENTCTL")
		return 0
	fi
	d=$(dirname "$MTLS_AGENTCTL")
	b=$(basename "$MTLS_AGENTCTL")
	real=$MTLS_AGENTCTL
	if [ "$(head -c 4 "$real" | od -An -c | tr -d ' ')" != '177ELF' ]; then
		for real in "$d/.libs/lt-$b" "$d/.libs/$b" ""; do
			[ -z "$real" ] || [ -x "$real" ] && break
		done
		[ -n "$real" ] || fail "cannot find the real binary behind libtool wrapper $MTLS_AGENTCTL"
	fi
	mkdir -p "$WORK/nobody-bin"
	cp "$real" "$WORK/nobody-bin/$b"
	if [ -d "$d/.libs" ]; then
		find "$d/.libs" -maxdepth 1 -name '*.so*' -exec cp -L {} "$WORK/nobody-bin/" \;
	fi
	chmod -R a+rX "$WORK/nobody-bin"
	NOBODY_CTL=(env "LD_LIBRARY_PATH=$WORK/nobody-bin" "$WORK/nobody-bin/$b")
	log "nobody cannot reach $MTLS_AGENTCTL; using a copy in $WORK/nobody-bin"
}

# The CLI as nobody against this test's agent.
nobody_ctl() {
	run_as_nobody timeout -k 5 "$MTLS_TEST_TIMEOUT" "${NOBODY_CTL[@]}" -s "$SOCK" "$@"
}

# The CLI as USER:GROUP (after nobody_prepare) against this test's agent.
ctl_as() { # USER GROUP ARGS...
	local user=$1 group=$2
	shift 2
	run_as "$user" "$group" timeout -k 5 "$MTLS_TEST_TIMEOUT" "${NOBODY_CTL[@]}" -s "$SOCK" "$@"
}

# Waits (bounded, up to SECONDS_MAX s) until CMD... succeeds.
wait_until() { # SECONDS_MAX CMD...
	local max=$1 deadline
	shift
	deadline=$((SECONDS + max))
	while [ "$SECONDS" -le "$deadline" ]; do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# --- SoftHSM2 ---------------------------------------------------------------------------

# softhsm_setup LABEL: a private token. Sets SOFTHSM2_CONF (exported), TOKEN_LABEL,
# USER_PIN, SO_PIN, PIN_FILE (mode 0600, the PIN followed by a newline).
softhsm_setup() {
	local label=$1
	mkdir -p "$WORK/softhsm/tokens"
	cat >"$WORK/softhsm/softhsm2.conf" <<EOF
directories.tokendir = $WORK/softhsm/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
	export SOFTHSM2_CONF=$WORK/softhsm/softhsm2.conf
	TOKEN_LABEL=$label
	SO_PIN=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')0
	USER_PIN=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')1
	softhsm2-util --init-token --free --label "$label" --so-pin "$SO_PIN" --pin "$USER_PIN" \
		>"$WORK/softhsm/init.log" 2>&1 || {
		cat "$WORK/softhsm/init.log" >&2
		fail "softhsm2-util --init-token failed"
	}
	PIN_FILE=$WORK/$label.pin
	write_pin_file "$USER_PIN"
}

# write_pin_file PIN: (re)writes $PIN_FILE with mode 0600.
write_pin_file() {
	(umask 077 && printf '%s\n' "$1" >"$PIN_FILE")
	chmod 0600 "$PIN_FILE"
}

# --- test CA (openssl CLI only) ----------------------------------------------------------

_ca_conf() { # DIR
	cat >"$1/ca.cnf" <<EOF
[ req ]
distinguished_name = req_dn
prompt = no
[ req_dn ]
CN = unused

[ v3_root ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ v3_inter ]
basicConstraints = critical, CA:TRUE, pathlen:0
# digitalSignature: the CMP test CA signs its responses with this certificate,
# and OpenSSL's CMP client requires that usage of a protection certificate.
keyUsage = critical, digitalSignature, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ ca ]
default_ca = inter_ca

[ inter_ca ]
dir = $1
database = \$dir/index.txt
new_certs_dir = \$dir/newcerts
certificate = \$dir/inter.crt
private_key = \$dir/inter.key
serial = \$dir/serial
default_md = sha256
default_days = 30
policy = policy_any
preserve = yes
unique_subject = no
copy_extensions = none
email_in_dn = no

[ policy_any ]
commonName = optional
organizationName = optional
organizationalUnitName = optional
countryName = optional

[ leaf ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ leaf_noclientauth ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ leaf_nodigsig ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, keyAgreement
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
}

# testca_init [DIR]: EC P-256 root and intermediate in DIR (default $CA_DIR).
# DIR/root.crt, DIR/inter.crt, DIR/chain.pem (intermediate then root).
testca_init() {
	local dir=${1:-$CA_DIR} name
	name=$(basename "$dir")
	mkdir -p "$dir/newcerts"
	: >"$dir/index.txt"
	printf '1000\n' >"$dir/serial"
	_ca_conf "$dir"
	(
		cd "$dir"
		openssl req -config ca.cnf -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
			-nodes -keyout root.key -out root.crt -days 3650 -sha256 \
			-subj "/CN=mtls-agent test root $name/O=mtls-agent tests" -extensions v3_root
		openssl req -config ca.cnf -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
			-nodes -keyout inter.key -out inter.csr -sha256 \
			-subj "/CN=mtls-agent test intermediate $name/O=mtls-agent tests"
		openssl x509 -req -in inter.csr -CA root.crt -CAkey root.key -set_serial 2 \
			-days 3650 -sha256 -extfile ca.cnf -extensions v3_inter -out inter.crt
		cat inter.crt root.crt >chain.pem
	) >"$dir/init.log" 2>&1 || {
		cat "$dir/init.log" >&2
		fail "testca_init failed"
	}
}

# Converts a CSR (PEM or DER) to PEM.
_csr_to_pem() { # IN OUT
	if grep -q -- '-----BEGIN CERTIFICATE REQUEST-----' "$1" 2>/dev/null; then
		openssl req -in "$1" -out "$2"
	else
		openssl req -inform DER -in "$1" -out "$2"
	fi
}

# testca_issue CSR OUT_CERT [--days N | --expired | --no-clientauth | --no-digitalsig | --ca DIR]
# Writes the leaf followed by the intermediate to OUT_CERT. The CSR may be PEM
# or DER; its own extensions are ignored (the CA decides).
testca_issue() {
	local csr=$1 out=$2 days=30 expired=0 ext=leaf dir=$CA_DIR start end
	shift 2
	while [ $# -gt 0 ]; do
		case "$1" in
		--days) days=$2; shift ;;
		--expired) expired=1 ;;
		--no-clientauth) ext=leaf_noclientauth ;;
		--no-digitalsig) ext=leaf_nodigsig ;;
		--ca) dir=$2; shift ;;
		*) fail "testca_issue: unknown option $1" ;;
		esac
		shift
	done
	if [ "$expired" = 1 ]; then
		start=$(date -u -d '-10 days' +%Y%m%d%H%M%SZ)
		end=$(date -u -d '-1 day' +%Y%m%d%H%M%SZ)
	else
		start=$(date -u -d '-1 hour' +%Y%m%d%H%M%SZ)
		end=$(date -u -d "+$days days" +%Y%m%d%H%M%SZ)
	fi
	_csr_to_pem "$csr" "$dir/req.pem" 2>"$dir/issue.log" || {
		cat "$dir/issue.log" >&2
		fail "testca_issue: cannot read CSR $csr"
	}
	openssl ca -config "$dir/ca.cnf" -batch -notext -in "$dir/req.pem" -out "$dir/leaf.pem" \
		-extensions "$ext" -startdate "$start" -enddate "$end" >>"$dir/issue.log" 2>&1 || {
		cat "$dir/issue.log" >&2
		fail "testca_issue: openssl ca failed for $csr"
	}
	cat "$dir/leaf.pem" "$dir/inter.crt" >"$out"
}

# A key and CSR made outside the agent (for "certificate for another key").
openssl_csr() { # OUT_KEY OUT_CSR SUBJECT
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1" \
		-out "$2" -subj "$3" 2>/dev/null || fail "openssl req failed"
}

# Public key (PEM) of the first certificate in a PEM file.
cert_pubkey() { # CERT_PEM OUT_PUB
	openssl x509 -in "$1" -noout -pubkey >"$2" || fail "cannot read public key from $1"
}

# notAfter of the first certificate, seconds since the epoch.
cert_not_after() { # CERT_PEM
	date -u -d "$(openssl x509 -in "$1" -noout -enddate | sed 's/^notAfter=//')" +%s
}

count_certs() { # PEM_FILE
	grep -c -- '-----BEGIN CERTIFICATE-----' "$1" || true
}

# --- PKCS#11 call counting (OpenSC's pkcs11-spy between the agent and SoftHSM) --------

# spy_setup: makes the next agent_config use pkcs11-spy in front of SoftHSM,
# logging every PKCS#11 call to $SPY_LOG. Returns 1 if pkcs11-spy is missing.
spy_setup() {
	local m
	SPY_LOG=$WORK/pkcs11-spy.log
	for m in /usr/lib/*/pkcs11-spy.so /usr/lib/*/pkcs11/pkcs11-spy.so /usr/lib/pkcs11-spy.so; do
		if [ -r "$m" ]; then
			KS_MODULE=$m
			export PKCS11SPY=$SOFTHSM_MODULE PKCS11SPY_OUTPUT=$SPY_LOG
			return 0
		fi
	done
	return 1
}

# Number of calls of PKCS#11 function FUNC (exact name, e.g. C_Login) logged so far.
spy_count() { # FUNC
	[ -f "$SPY_LOG" ] || { echo 0; return 0; }
	grep -cE "^[0-9]+: $1\$" "$SPY_LOG" || true
}

# --- agent configuration ------------------------------------------------------------------

# agent_config [LINE...]: writes $CONF with [agent] and [keystore "hsm"].
# LINEs ("key = value") are added to [agent]; one naming a default key
# replaces that default. Set KS_MODULE before calling to use another module.
# Sets CONF, SOCK, STATE_DIR, AGENT_LOG.
agent_config() {
	CONF=$WORK/agent.conf
	SOCK=$WORK/agent.sock
	STATE_DIR=$WORK/state
	AGENT_LOG=$WORK/agent.log
	mkdir -p "$STATE_DIR"
	chmod 0700 "$STATE_DIR"
	{
		printf '; written by tests/lib.sh for %s\n' "$TEST_NAME"
		printf '[agent]\n'
		_cfg_line socket "$SOCK" "$@"
		_cfg_line state-dir "$STATE_DIR" "$@"
		_cfg_line admin-users root "$@"
		printf '%s\n' "$@"
		printf '\n[keystore "hsm"]\n'
		printf 'type = pkcs11\n'
		printf 'module = %s\n' "${KS_MODULE:-$SOFTHSM_MODULE}"
		printf 'token = %s\n' "$TOKEN_LABEL"
		printf 'pin-file = %s\n' "$PIN_FILE"
	} >"$CONF"
}

# Prints "KEY = DEFAULT" unless one of LINEs sets KEY.
_cfg_line() { # KEY DEFAULT LINE...
	local key=$1 def=$2 l
	shift 2
	for l in "$@"; do
		case "$l" in
		"$key "* | "$key="*) return 0 ;;
		esac
	done
	printf '%s = %s\n' "$key" "$def"
}

# agent_identity NAME [LINE...]: appends [identity "NAME"] to $CONF with
# keystore = hsm, key = pkcs11:object=NAME, cert = $STATE_DIR/NAME.crt,
# allow-users = root, and LINEs (e.g. "sign-policy = any"; a LINE naming one of
# those keys replaces the default).
agent_identity() {
	local name=$1
	shift
	{
		printf '\n[identity "%s"]\n' "$name"
		_cfg_line keystore hsm "$@"
		_cfg_line key "pkcs11:object=$name" "$@"
		_cfg_line cert "$STATE_DIR/$name.crt" "$@"
		_cfg_line allow-users root "$@"
		printf '%s\n' "$@"
	} >>"$CONF"
}

# Line number of the first line of FILE that is exactly TEXT.
line_of() { # FILE TEXT
	local n
	n=$(grep -n -x -F -- "$2" "$1" | head -n 1 | cut -d: -f1)
	[ -n "$n" ] || fail "line_of: '$2' not in $1"
	printf '%s\n' "$n"
}

# --- agent process ---------------------------------------------------------------------------

# agent_start: runs the daemon in the foreground (in the background of this
# shell), output appended to $AGENT_LOG; waits up to 10 s for `status`.
agent_start() {
	local deadline rc
	[ -z "$AGENT_PID" ] || fail "agent_start: agent already running (pid $AGENT_PID)"
	printf '=== %s: agent_start %s\n' "$TEST_NAME" "$(date -u +%FT%TZ)" >>"$AGENT_LOG"
	# shellcheck disable=SC2086 # MTLS_AGENT_ARGS is a list of words
	"$MTLS_AGENT" -f -c "$CONF" $MTLS_AGENT_ARGS >>"$AGENT_LOG" 2>&1 </dev/null &
	AGENT_PID=$!
	deadline=$((SECONDS + 10))
	while :; do
		if ! kill -0 "$AGENT_PID" 2>/dev/null; then
			rc=0
			wait "$AGENT_PID" || rc=$?
			AGENT_PID=
			fail "agent exited with status $rc during start-up (log: $AGENT_LOG)"
		fi
		if timeout -k 2 5 "$MTLS_AGENTCTL" -s "$SOCK" status >/dev/null 2>&1; then
			break
		fi
		[ "$SECONDS" -lt "$deadline" ] || fail "agent (pid $AGENT_PID) did not answer 'status' on $SOCK within 10 s"
		sleep 0.1
	done
	log "agent started (pid $AGENT_PID)"
}

# agent_stop: SIGTERM, up to 10 s; the agent must exit 0 and remove its socket.
agent_stop() {
	local deadline rc=0
	[ -n "$AGENT_PID" ] || fail "agent_stop: no agent running"
	kill -TERM "$AGENT_PID" || fail "agent_stop: agent (pid $AGENT_PID) is gone already"
	deadline=$((SECONDS + 10))
	while kill -0 "$AGENT_PID" 2>/dev/null; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			kill -KILL "$AGENT_PID" 2>/dev/null || true
			wait "$AGENT_PID" 2>/dev/null || true
			AGENT_PID=
			fail "agent did not exit within 10 s of SIGTERM"
		fi
		sleep 0.1
	done
	wait "$AGENT_PID" || rc=$?
	AGENT_PID=
	[ "$rc" -eq 0 ] || fail "agent exited with status $rc after SIGTERM (expected 0)"
	[ ! -e "$SOCK" ] || fail "agent left its socket $SOCK behind after SIGTERM"
	log "agent stopped"
}

# agent_kill9: SIGKILL, as a crash would; the socket file stays.
agent_kill9() {
	[ -n "$AGENT_PID" ] || fail "agent_kill9: no agent running"
	kill -KILL "$AGENT_PID"
	wait "$AGENT_PID" 2>/dev/null || true
	AGENT_PID=
}

agent_alive() {
	[ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null
}

# Number of lines of the agent log matching ERE (case-insensitive).
log_count() { # ERE
	grep -ciE -- "$1" "$AGENT_LOG" || true
}

# --- identities ---------------------------------------------------------------------------

# identity_setup NAME TYPE [SUBJECT]: keygen, CSR, CA, import-cert. Leaves the
# chain in $WORK/NAME.chain.pem and the certified public key in $WORK/NAME.pub.pem.
# Unless IDENTITY_SETUP_NO_CERT=1 (for identities the admin running it may not
# use), `mtls-agentctl cert NAME` must then print that certificate.
identity_setup() {
	local name=$1 type=$2 subject=${3:-/CN=$1/O=mtls-agent tests}
	assert_ok ctl keygen "$name" --type "$type"
	ctl csr "$name" --subject "$subject" >"$WORK/$name.csr" ||
		fail "csr $name failed"
	testca_issue "$WORK/$name.csr" "$WORK/$name.chain.pem"
	assert_ok ctl import-cert "$name" "$WORK/$name.chain.pem"
	cert_pubkey "$WORK/$name.chain.pem" "$WORK/$name.pub.pem"
	if [ "${IDENTITY_SETUP_NO_CERT:-0}" != 1 ]; then
		identity_pubkey "$name" "$WORK/$name.cert-pub.pem"
		cmp -s "$WORK/$name.pub.pem" "$WORK/$name.cert-pub.pem" ||
			fail "mtls-agentctl cert $name does not print the certificate just imported"
	fi
}

# identity_pubkey NAME OUT: public key from the certificate `mtls-agentctl cert` prints.
identity_pubkey() {
	ctl cert "$1" >"$WORK/$1.cert-out.pem" || fail "cert $1 failed"
	cert_pubkey "$WORK/$1.cert-out.pem" "$2"
}

# --- signature helpers ----------------------------------------------------------------------

# Digest name (for openssl dgst) of a TLS signature scheme; empty for ed25519.
scheme_hash() {
	case "$1" in
	*sha256) echo sha256 ;;
	*sha384) echo sha384 ;;
	*sha512) echo sha512 ;;
	ed25519) echo "" ;;
	*) fail "scheme_hash: unknown scheme $1" ;;
	esac
}

# verify_sig PUB SCHEME MSG SIG: 0 if SIG is a valid SCHEME signature of MSG.
verify_sig() {
	local pub=$1 scheme=$2 msg=$3 sig=$4 h
	h=$(scheme_hash "$scheme")
	case "$scheme" in
	ed25519)
		openssl pkeyutl -verify -pubin -inkey "$pub" -rawin -in "$msg" -sigfile "$sig" >/dev/null 2>&1
		;;
	rsa_pss_*)
		openssl dgst "-$h" -verify "$pub" -sigopt rsa_padding_mode:pss \
			-sigopt rsa_pss_saltlen:digest -signature "$sig" "$msg" >/dev/null 2>&1
		;;
	*)
		openssl dgst "-$h" -verify "$pub" -signature "$sig" "$msg" >/dev/null 2>&1
		;;
	esac
}

# sign_verify NAME SCHEME MSG PUB [--digest]: the agent signs (MSG, or its
# digest with --digest) and the signature must verify over MSG with PUB.
sign_verify() {
	local name=$1 scheme=$2 msg=$3 pub=$4 mode=${5:-} in=$3 sig
	sig=$WORK/sig.$name.$scheme
	if [ "$mode" = --digest ]; then
		in=$WORK/digest.$name.$scheme
		openssl dgst "-$(scheme_hash "$scheme")" -binary "$msg" >"$in"
		assert_ok ctl sign "$name" --scheme "$scheme" --digest --in "$in" --out "$sig"
	else
		assert_ok ctl sign "$name" --scheme "$scheme" --in "$in" --out "$sig"
	fi
	[ -s "$sig" ] || fail "sign $name $scheme $mode wrote no signature"
	verify_sig "$pub" "$scheme" "$msg" "$sig" ||
		fail "signature by $name with $scheme ${mode:+($mode) }does not verify with $pub"
}

# Copy of FILE with its last byte XOR 0x01.
flip_last_byte() { # IN OUT
	local n b
	n=$(stat -c %s "$1")
	[ "$n" -gt 0 ] || fail "flip_last_byte: empty file $1"
	b=$(tail -c 1 "$1" | od -An -tu1 | tr -d ' ')
	head -c $((n - 1)) "$1" >"$2"
	# shellcheck disable=SC2059 # the format is the escaped byte
	printf "\\$(printf '%03o' $((b ^ 1)))" >>"$2"
}

# --- message builders (binary-safe: write to files, never through $(...)) ------------------

# N bytes, none of them 0x00, to stdout.
nonzero_bytes() { # N
	head -c "$1" /dev/urandom | tr '\000' '\001'
}

# TLS 1.3 CertificateVerify content: SPACES x 0x20, "TLS 1.3, ROLE CertificateVerify",
# 0x00 (unless SEP=none), HASHLEN bytes of transcript hash.
make_cv13() { # OUT [HASHLEN=32] [ROLE=client] [SPACES=64] [SEP=zero|none]
	local out=$1 hlen=${2:-32} role=${3:-client} spaces=${4:-64} sep=${5:-zero}
	{
		head -c "$spaces" /dev/zero | tr '\000' ' '
		printf 'TLS 1.3, %s CertificateVerify' "$role"
		[ "$sep" = none ] || printf '\000'
		nonzero_bytes "$hlen"
	} >"$out"
}

# Big-endian integers as raw bytes.
# shellcheck disable=SC2059 # the format is the escaped byte
u8() { printf "\\$(printf '%03o' $(($1 & 255)))"; }
u16() { u8 $(($1 >> 8)); u8 "$1"; }
u24() { u8 $(($1 >> 16)); u8 $(($1 >> 8)); u8 "$1"; }

# A TLS handshake message: type (1 byte), length (3 bytes), body from BODYFILE.
hs_msg() { # TYPE BODYFILE
	u8 "$1"
	u24 "$(stat -c %s "$2")"
	cat "$2"
}

# A minimal well-formed TLS 1.2 client handshake transcript (ECDHE-ECDSA with
# client authentication), ClientHello .. ClientKeyExchange, to OUT.
# SERVER_CERT_DER and CLIENT_CERT_DER are DER certificates.
make_tls12_transcript() { # OUT SERVER_CERT_DER CLIENT_CERT_DER
	local out=$1 scert=$2 ccert=$3 t=$WORK/tls12
	mkdir -p "$t"
	# ClientHello: version, random, session id, cipher suites, compression, extensions.
	{
		u16 0x0303
		nonzero_bytes 32
		u8 0
		u16 4; u16 0xc02b; u16 0xc02f
		u8 1; u8 0
		# extensions: signature_algorithms (ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256),
		# supported_groups (secp256r1), ec_point_formats (uncompressed)
		u16 $((4 + 6 + 4 + 4 + 4 + 2))
		u16 0x000d; u16 6; u16 4; u16 0x0403; u16 0x0804
		u16 0x000a; u16 4; u16 2; u16 0x0017
		u16 0x000b; u16 2; u8 1; u8 0
	} >"$t/ch"
	{
		u16 0x0303
		nonzero_bytes 32
		u8 0
		u16 0xc02b
		u8 0
	} >"$t/sh"
	{
		u24 $(($(stat -c %s "$scert") + 3))
		u24 "$(stat -c %s "$scert")"
		cat "$scert"
	} >"$t/scert"
	# ServerKeyExchange: named_curve secp256r1, 65-byte point, signed with ecdsa_secp256r1_sha256.
	{
		u8 3; u16 0x0017
		u8 65; u8 4; nonzero_bytes 64
		u16 0x0403; u16 70
		u8 0x30; u8 68; u8 2; u8 32; nonzero_bytes 32; u8 2; u8 32; nonzero_bytes 32
	} >"$t/ske"
	# CertificateRequest: types (ecdsa_sign, rsa_sign), signature algorithms, no CA names.
	{
		u8 2; u8 64; u8 1
		u16 4; u16 0x0403; u16 0x0804
		u16 0
	} >"$t/cr"
	: >"$t/shd"
	{
		u24 $(($(stat -c %s "$ccert") + 3))
		u24 "$(stat -c %s "$ccert")"
		cat "$ccert"
	} >"$t/ccert"
	{
		u8 65; u8 4; nonzero_bytes 64
	} >"$t/cke"
	{
		hs_msg 1 "$t/ch"
		hs_msg 2 "$t/sh"
		hs_msg 11 "$t/scert"
		hs_msg 12 "$t/ske"
		hs_msg 13 "$t/cr"
		hs_msg 14 "$t/shd"
		hs_msg 11 "$t/ccert"
		hs_msg 16 "$t/cke"
	} >"$out"
}
