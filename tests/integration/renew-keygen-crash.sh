#!/bin/bash
# No debris after a crash inside key generation (issue 12). A SIGKILL that lands inside
# C_GenerateKeyPair can leave a public key object without its private key; repeated, such
# half pairs fill a real token's object slots until key generation fails.
#
# The renewal journal names the new key's CKA_ID before the call; start-up reconciliation
# (and every renewal) removes the objects of that id when its private key does not exist.
# Soak: SOAK_KILLS times (default 30; `make soak` runs more) the agent is started with
# MTLS_AGENT_TEST_CRASH_AT=keygen-inside (SIGKILL a random 0..D ms after the RSA key
# generation started, D about one key generation), a renewal is forced, the agent dies;
# after each restart the token must hold exactly the keys the agent knows (current +
# pending + queued for retirement), each a complete pair, and the agent must serve a
# certificate that matches its key.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_tls_cmd curl
need_cmd pkcs11-tool python3
need_provider
need_test_hooks

KILLS=${SOAK_KILLS:-30}
testca_init
server_cert_setup
softhsm_setup keygencrash
est_ca_start --lifetime 3600
agent_config
renew_lines est "key-type = rsa-2048"
agent_identity gw "${RENEW_LINES[@]}"
agent_start
identity_setup gw rsa-2048
provider_env
s_server_start

# Objects of class CLASS (privkey, pubkey) on the token, one CKA_ID per line, sorted.
token_ids() { # CLASS
	pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$TOKEN_LABEL" --login --pin "$USER_PIN" \
		--list-objects --type "$1" 2>/dev/null | sed -n 's/^ *ID: *//p' | sort
}

# How long one RSA-2048 key generation takes here: the crash delays are spread over it.
t0=$(date +%s%N)
assert_ok ctl renew gw
ms=$((($(date +%s%N) - t0) / 1000000))
DELAY_MS=${SOAK_DELAY_MS:-$((ms > 50 ? ms : 50))}
log "one renewal took $ms ms; crash delays 0..$DELAY_MS ms"
agent_stop

# The invariant after a restart: every private key on the token is the current one or
# recorded (pending, queued for retirement), and every public key has its private key.
check_token() { # WHAT
	local priv pub known extra missing
	priv=$(token_ids privkey)
	pub=$(token_ids pubkey)
	# What the agent records besides the current key: pending and queued for retirement.
	known=$({
		[ ! -s "$STATE_DIR/gw.pending" ] || cat "$STATE_DIR/gw.pending"
		[ ! -s "$STATE_DIR/gw.retire" ] || cut -d' ' -f1 "$STATE_DIR/gw.retire"
	} | grep . | sort -u)
	extra=$(comm -23 <(printf '%s\n' "$priv") <(printf '%s\n' "$known") | grep -c . || true)
	missing=$(comm -13 <(printf '%s\n' "$priv") <(printf '%s\n' "$known") | grep . || true)
	[ "$extra" -eq 1 ] || {
		show_log "$AGENT_LOG" 30
		fail "$1: $extra private keys on the token are neither pending nor queued for retirement (expected 1, the current key): $(printf '%s\n' "$priv" | grep -c .) on the token, recorded: $(printf '%s\n' "$known" | tr '\n' ' ')"
	}
	[ -z "$missing" ] || log "$1: recorded but already gone from the token: $missing"
	[ "$pub" = "$priv" ] || {
		show_log "$AGENT_LOG" 30
		fail "$1: public keys on the token differ from the private keys: half pairs left: $(comm -3 <(printf '%s\n' "$pub") <(printf '%s\n' "$priv") | tr '\n' ' ')"
	}
}

inside=0
for i in $(seq 1 "$KILLS"); do
	what="kill $i/$KILLS"
	MTLS_AGENT_TEST_CRASH_DELAY_MS=$DELAY_MS MTLS_AGENT_TEST_CRASH_AT=keygen-inside agent_start
	ctl renew gw >/dev/null 2>&1 || true
	# A renewal that made no key (a complete key left by the last kill is certified now)
	# does not reach the timer: then this is an ordinary kill after the renewal.
	deadline=$((SECONDS + 5))
	while kill -0 "$AGENT_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
	kill -KILL "$AGENT_PID" 2>/dev/null || true
	rc=0
	{ wait "$AGENT_PID" || rc=$?; } 2>/dev/null
	AGENT_PID=
	[ "$rc" -eq 137 ] || fail "$what: the agent exited with $rc, not by SIGKILL"
	if [ -s "$STATE_DIR/gw.renew" ] && grep -qx 'step=preparing' "$STATE_DIR/gw.renew"; then
		inside=$((inside + 1))
	fi
	agent_start
	wait_until 20 test ! -e "$STATE_DIR/gw.renew" || fail "$what: the journal was not reconciled"
	check_token "$what"
	agent_stop
done
purged=$(grep -c 'that an interrupted key generation left without its private key' "$AGENT_LOG" || true)
log "$KILLS kills, $inside during key generation (journal at 'preparing'), $purged half pairs removed; token: $(token_ids privkey | wc -l) keys, no half pair"
[ "$inside" -gt 0 ] || fail "no kill landed inside key generation: the soak proves nothing (delay 0..$DELAY_MS ms)"

agent_start
identity_files gw
assert_cn "$(https_get_identity --cert "$TLS_DIR/gw.chain.pem" --key "$TLS_DIR/gw.keyref.pem")" gw \
	"after the soak the server saw"
assert_ok ctl renew gw
check_token "renewal after the soak"
agent_stop
log "ok"
