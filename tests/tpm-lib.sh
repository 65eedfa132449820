# shellcheck shell=bash disable=SC2034 # variables set here are read by the tests
#
# tests/tpm-lib.sh: a private TPM for the integration tests, sourced after
# tests/lib.sh by tests/integration/tpm-*.sh.
#
# Each test gets its own swtpm (state in $WORK/tpm, TCP ports on 127.0.0.1
# that were free, with a bounded retry when the bind loses a race), so
# `make -j check` is safe. swtpm has no resource manager: every client's
# objects share its 3 object slots, and the agent flushes objects that are not
# its own when it needs a slot; so tests use tpm2-tools and tpm2-openssl
# while the agent is stopped. Tests end with swtpm_stop, a clean TPM2_Shutdown
# through the control channel; lib.sh's EXIT trap SIGTERMs swtpm if a test
# fails first.
#
#   swtpm_start / swtpm_stop / swtpm_kill9 / swtpm_alive   the simulator
#   tpm_agent_config [LINE...]   $CONF with [agent] and [keystore "tpm"] (type tpm2)
#   tpm_identity NAME [LINE...]  [identity "NAME"] with key = $TPM_KEYS/NAME.pem
#   tpm_tools CMD...             a tpm2-tools command against the swtpm
#   tpm_openssl ARGS...          openssl with the tpm2-openssl provider on the swtpm
#   tpm_lockout_counter          TPM2_PT_LOCKOUT_COUNTER (agent must be stopped)
#
# Environment: SWTPM (default swtpm), SWTPM_IOCTL (default swtpm_ioctl).

SWTPM=${SWTPM:-swtpm}
SWTPM_IOCTL=${SWTPM_IOCTL:-swtpm_ioctl}
TPM_DIR=$WORK/tpm
TPM_KEYS=$WORK/keys
SWTPM_PID=
SWTPM_PORT=
SWTPM_LOG=$WORK/swtpm.log
TPM_TCTI=

need_cmd "$SWTPM" "$SWTPM_IOCTL" ss
top_builddir=${top_builddir:-$(cd "$(dirname "$MTLS_AGENT")" && pwd)}
top_srcdir=${top_srcdir:-$(cd "$TESTS_DIR/.." && pwd)}
if [ -f "$top_builddir/config.h" ] && ! grep -q '^#define HAVE_TPM2 1' "$top_builddir/config.h"; then
	skip "built without the TPM 2.0 keystore (configure --disable-tpm2 or no tss2-esys)"
fi
mkdir -p "$TPM_DIR" "$TPM_KEYS"
chmod 0700 "$TPM_KEYS"

# Two consecutive TCP ports nobody listens on (swtpm: server P, control P+1).
_tpm_free_ports() {
	local p i
	for i in $(seq 1 100); do
		p=$((20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 12000))
		if [ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ] &&
			[ -z "$(ss -Hltn "sport = :$((p + 1))" 2>/dev/null)" ]; then
			printf '%s\n' "$p"
			return 0
		fi
		: "$i"
	done
	fail "no two free TCP ports found in 100 tries"
}

_tpm_listening() { # PID PORT
	ss -Hltnp "sport = :$2" 2>/dev/null | grep -q "pid=$1,"
}

# swtpm_start: starts the simulator on free ports (the first time) or on the
# ports it had (restarts, so that the agent's TCTI string stays valid), with
# the state kept in $TPM_DIR. Sets SWTPM_PID, SWTPM_PORT, TPM_TCTI and the
# tpm2-tools / tpm2-openssl TCTI variables.
swtpm_start() {
	local attempt port pid deadline
	[ -z "$SWTPM_PID" ] || fail "swtpm_start: swtpm already running (pid $SWTPM_PID)"
	for attempt in 1 2 3 4 5; do
		port=${SWTPM_PORT:-$(_tpm_free_ports)}
		"$SWTPM" socket --tpm2 --tpmstate "dir=$TPM_DIR" \
			--server "type=tcp,port=$port,bindaddr=127.0.0.1" \
			--ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" \
			--flags not-need-init,startup-clear --log "file=$SWTPM_LOG" </dev/null >>"$SWTPM_LOG" 2>&1 &
		pid=$!
		bg_track "$pid"
		deadline=$((SECONDS + 10))
		while ! { _tpm_listening "$pid" "$port" && _tpm_listening "$pid" $((port + 1)); }; do
			if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
				break
			fi
			sleep 0.05
		done
		if _tpm_listening "$pid" "$port" && _tpm_listening "$pid" $((port + 1)); then
			SWTPM_PID=$pid
			SWTPM_PORT=$port
			TPM_TCTI="swtpm:host=127.0.0.1,port=$port"
			export TPM2TOOLS_TCTI=$TPM_TCTI TPM2OPENSSL_TCTI=$TPM_TCTI
			log "swtpm on 127.0.0.1:$port/$((port + 1)) (pid $pid, state $TPM_DIR)"
			return 0
		fi
		_stop_pid "$pid"
		wait "$pid" 2>/dev/null || true
		if [ -n "$SWTPM_PORT" ]; then
			# A restart must reuse the ports; they may still be in TIME_WAIT or held by
			# a dying process: wait a little and try again.
			sleep 1
			continue
		fi
		log "swtpm: ports $port/$((port + 1)) taken meanwhile (attempt $attempt), trying others"
	done
	show_log "$SWTPM_LOG" 2>/dev/null || tail -n 20 "$SWTPM_LOG" >&2
	fail "swtpm did not start"
}

# swtpm_stop: a clean stop (TPM2_Shutdown through the control channel), as at
# the end of every test; then waits for the process to exit.
swtpm_stop() {
	local deadline
	[ -n "$SWTPM_PID" ] || return 0
	timeout -k 2 10 "$SWTPM_IOCTL" --tcp "127.0.0.1:$((SWTPM_PORT + 1))" -s >>"$SWTPM_LOG" 2>&1 ||
		log "swtpm_ioctl -s failed (see $SWTPM_LOG); stopping swtpm with SIGTERM"
	deadline=$((SECONDS + 10))
	while kill -0 "$SWTPM_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
		sleep 0.05
	done
	_stop_pid "$SWTPM_PID"
	wait "$SWTPM_PID" 2>/dev/null || true
	SWTPM_PID=
}

# swtpm_kill9: an unclean stop, as a power cut would do it.
swtpm_kill9() {
	[ -n "$SWTPM_PID" ] || fail "swtpm_kill9: swtpm not running"
	kill -KILL "$SWTPM_PID" 2>/dev/null || true
	wait "$SWTPM_PID" 2>/dev/null || true
	SWTPM_PID=
}

swtpm_alive() {
	[ -n "$SWTPM_PID" ] && kill -0 "$SWTPM_PID" 2>/dev/null
}

# tpm_agent_config [LINE...]: writes $CONF with [agent] (LINEs added there, as
# agent_config does) and [keystore "tpm"] of type tpm2 on this test's swtpm.
# TPM_KS_LINES (an array) adds lines to the keystore section. Sets CONF,
# SOCK, STATE_DIR, AGENT_LOG.
TPM_KS_LINES=()
tpm_agent_config() {
	[ -n "$TPM_TCTI" ] || fail "tpm_agent_config: call swtpm_start first"
	CONF=$WORK/agent.conf
	SOCK=$WORK/agent.sock
	STATE_DIR=$WORK/state
	AGENT_LOG=$WORK/agent.log
	mkdir -p "$STATE_DIR"
	chmod 0700 "$STATE_DIR"
	{
		printf '; written by tests/tpm-lib.sh for %s\n' "$TEST_NAME"
		printf '[agent]\n'
		_cfg_line socket "$SOCK" "$@"
		_cfg_line state-dir "$STATE_DIR" "$@"
		_cfg_line admin-users root "$@"
		printf '%s\n' "$@"
		printf '\n[keystore "tpm"]\n'
		printf 'type = tpm2\n'
		printf 'tcti = %s\n' "$TPM_TCTI"
		if [ ${#TPM_KS_LINES[@]} -gt 0 ]; then
			printf '%s\n' "${TPM_KS_LINES[@]}"
		fi
	} >"$CONF"
}

# tpm_identity NAME [LINE...]: an identity in keystore "tpm" whose key file is
# $TPM_KEYS/NAME.pem (LINEs as for agent_identity; "key = ..." replaces the file).
tpm_identity() {
	local name=$1
	shift
	agent_identity "$name" "keystore = tpm" "$(_tpm_default_key "$name" "$@")" "$@"
}

_tpm_default_key() { # NAME LINE...
	local name=$1 l
	shift
	for l in "$@"; do
		case "$l" in
		"key "* | "key="*) printf '; key given below\n'; return 0 ;;
		esac
	done
	printf 'key = %s\n' "$TPM_KEYS/$name.pem"
}

# tpm2-tools against this test's swtpm, bounded in time.
tpm_tools() {
	TPM2TOOLS_TCTI=$TPM_TCTI timeout -k 5 60 "$@"
}

# openssl with the tpm2-openssl provider (and default) on this test's swtpm.
tpm_openssl() {
	TPM2OPENSSL_TCTI=$TPM_TCTI timeout -k 5 60 "${CLEAN_ENV_TPM[@]}" openssl "$@"
}
CLEAN_ENV_TPM=(env -u OPENSSL_CONF -u OPENSSL_ENGINES -u MTLS_AGENT_SOCK)

# The tpm2-openssl provider module, or a loud skip. (Loading it needs a
# running TPM: the provider connects when it is initialised.)
need_tpm2_openssl() {
	local dir
	need_cmd tpm2_getcap
	dir=$(openssl version -m | sed -n 's/^MODULESDIR: *"\(.*\)"$/\1/p')
	[ -f "$dir/tpm2.so" ] ||
		skip "the tpm2-openssl provider is not installed ($dir/tpm2.so; apt-get install tpm2-openssl)"
}

# TPM2_PT_LOCKOUT_COUNTER (failed authorizations counted by the dictionary-attack
# protection), in decimal.
tpm_lockout_counter() {
	local v
	v=$(tpm_tools tpm2_getcap properties-variable | sed -n 's/^TPM2_PT_LOCKOUT_COUNTER: *//p')
	[ -n "$v" ] || fail "tpm2_getcap did not report TPM2_PT_LOCKOUT_COUNTER"
	printf '%d\n' "$v"
}

# Public key (PEM) of a TSS2 PRIVATE KEY file, through tpm2-openssl.
tss2_pubkey() { # KEYFILE OUT
	tpm_openssl pkey -provider tpm2 -provider default -in "$1" -pubout -out "$2" 2>"$WORK/tss2-pub.err" ||
		fail "tpm2-openssl cannot read $1: $(cat "$WORK/tss2-pub.err")"
}
