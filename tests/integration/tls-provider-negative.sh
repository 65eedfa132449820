#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# What the provider route must refuse, with applications that are otherwise
# set up correctly (each refusal next to a control that works):
#   - under the default sign-policy (tls-client), the key signs TLS client
#     handshakes only: openssl dgst -sign, openssl pkeyutl -sign and a CSR
#     (openssl req -new -key) with the key reference file fail, and the agent
#     makes no signature;
#   - sign-policy = tls13-client: TLS 1.3 works, TLS 1.2 (curl --tls-max 1.2) fails;
#   - a caller not on the identity's allow-list (curl as nobody; the socket is
#     0666 so it reaches the agent) fails the handshake and the agent logs the
#     refusal, while nobody can use an identity that allows it;
#   - the agent stopped: curl fails and says so ("agent not running");
#     started again, the same command works.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_tls_cmd curl
need_cmd python3 setpriv
need_root
if ! id nobody >/dev/null 2>&1 || ! getent group nogroup >/dev/null; then
	skip "user nobody or group nogroup does not exist on this system"
fi
need_provider

softhsm_setup tlsneg
testca_init
server_cert_setup
agent_config "socket-mode = 0666"
agent_identity dev
agent_identity t13 "sign-policy = tls13-client"
agent_identity shared "allow-users = root nobody"
chmod 0755 "$WORK"
agent_start
identity_setup dev ec-p256
identity_setup t13 ec-p256
identity_setup shared ec-p256
for id in dev t13 shared; do
	identity_files "$id"
done
provider_env
# What curl running as nobody reads: the server CA, the key reference files and
# chains (0644 from identity_files), the openssl.cnf (0644 from provider_env).
chmod a+rx "$TLS_DIR" "$(dirname "$SRV_CA")"
chmod a+r "$SRV_CA"
s_server_start

cert_key() { # ID: curl options for ID's chain and key reference file
	printf '%s\n' --cert "$TLS_DIR/$1.chain.pem" --key "$TLS_DIR/$1.keyref.pem"
}
mapfile -t DEV < <(cert_key dev)
mapfile -t T13 < <(cert_key t13)
mapfile -t SHARED < <(cert_key shared)

# Control: dev works.
assert_cn "$(https_get_identity "${DEV[@]}")" dev "control: the server saw"

# --- default policy: no signatures outside a TLS client handshake ---------------------------
head -c 1000 /dev/urandom >"$TLS_DIR/msg"
openssl dgst -sha256 -binary "$TLS_DIR/msg" >"$TLS_DIR/msg.sha256"
signed=$(id_counter dev signatures)
refused=$(id_counter dev refused)
# refused_op WHAT OUT CMD...: CMD must fail and leave no signature in OUT.
refused_op() {
	local what=$1 out=$2 rc=0
	shift 2
	rm -f "$out"
	tls_timeout "$@" >"$TLS_DIR/op.out" 2>"$TLS_DIR/op.err" || rc=$?
	[ "$rc" -ne 0 ] || fail "$what with dev's key reference file succeeded under sign-policy tls-client"
	[ ! -s "$out" ] || fail "$what failed but wrote a signature to $out"
	log "ok: $what refused (exit $rc): $(grep -v '^ *$' "$TLS_DIR/op.err" | head -n 2 | tr '\n' ' ')"
}
refused_op "openssl dgst -sign" "$TLS_DIR/dgst.sig" \
	openssl dgst -sha256 -sign "$TLS_DIR/dev.keyref.pem" -out "$TLS_DIR/dgst.sig" "$TLS_DIR/msg"
refused_op "openssl pkeyutl -sign" "$TLS_DIR/pkeyutl.sig" \
	openssl pkeyutl -sign -inkey "$TLS_DIR/dev.keyref.pem" -in "$TLS_DIR/msg.sha256" -out "$TLS_DIR/pkeyutl.sig"
refused_op "openssl req -new (a CSR signed by the key)" "$TLS_DIR/evil.csr" \
	openssl req -new -key "$TLS_DIR/dev.keyref.pem" -subj "/CN=evil" -out "$TLS_DIR/evil.csr"
assert_eq "$(id_counter dev signatures)" "$signed" "agent signatures for dev after dgst/pkeyutl/req"
log "agent refusals for dev during dgst/pkeyutl/req: $(($(id_counter dev refused) - refused)) (the rest were refused by the provider before reaching the agent)"
# Still fine for TLS.
assert_cn "$(https_get_identity "${DEV[@]}")" dev "after the refusals: the server saw"

# --- sign-policy = tls13-client ---------------------------------------------------------------------
assert_cn "$(https_get_identity "${T13[@]}")" t13 "tls13-client over TLS 1.3: the server saw"
assert_eq "$(page_protocol)" TLSv1.3 "tls13-client: protocol"
refused=$(id_counter t13 refused)
signed=$(id_counter t13 signatures)
if s_server_get "${T13[@]}" --tls-max 1.2; then
	fail "identity with sign-policy = tls13-client completed a TLS 1.2 handshake"
fi
log "ok: tls13-client over TLS 1.2 refused: $CURL_ERR"
assert_eq "$(id_counter t13 signatures)" "$signed" "agent signatures for t13 over TLS 1.2"
[ "$(id_counter t13 refused)" -gt "$refused" ] ||
	fail "the agent did not count a refusal for t13 over TLS 1.2"
grep -qiE 'refused.*t13' "$AGENT_LOG" || fail "the agent log shows no refusal for t13"

# --- a caller not on the allow-list ----------------------------------------------------------------
NOBODY_UID=$(id -u nobody)
NOBODY_CONF=$PROVIDER_CONF
if ! run_as_nobody test -r "$PROVIDER_MODULE"; then
	# The build tree may sit where nobody cannot read (/root): a copy nobody can load.
	mkdir -p "$WORK/nobody-mod"
	cp -L "$PROVIDER_MODULE" "$WORK/nobody-mod/mtlsagent.so"
	for d in "$top_builddir/.libs" "$top_builddir/client/.libs"; do
		[ ! -d "$d" ] || find "$d" -maxdepth 1 -name 'libmtls-agent.so*' -exec cp -L {} "$WORK/nobody-mod/" \;
	done
	chmod -R a+rX "$WORK/nobody-mod"
	NOBODY_CONF=$TLS_DIR/openssl-provider-nobody.cnf
	sed "s|^module = .*|module = $WORK/nobody-mod/mtlsagent.so|" "$PROVIDER_CONF" >"$NOBODY_CONF"
	chmod 0644 "$NOBODY_CONF"
	export LD_LIBRARY_PATH="$WORK/nobody-mod${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
	log "nobody cannot read $PROVIDER_MODULE; using a copy in $WORK/nobody-mod"
fi
nobody_curl() { # CURL_ARGS...: GET / from s_server as nobody; returns curl's status
	local rc=0
	run_as_nobody env OPENSSL_CONF="$NOBODY_CONF" timeout -k 5 "$MTLS_TLS_TIMEOUT" \
		curl -sS --max-time "$MTLS_TLS_TIMEOUT" --cacert "$SRV_CA" "$@" \
		"https://127.0.0.1:$S_SERVER_PORT/" >"$TLS_DIR/page.txt" 2>"$TLS_DIR/curl.err" || rc=$?
	CURL_ERR=$(cat "$TLS_DIR/curl.err")
	return "$rc"
}
# Control: nobody may use "shared".
nobody_curl "${SHARED[@]}" || fail "nobody could not use identity shared (allow-users = root nobody): $CURL_ERR"
assert_cn "$(page_identity "$TLS_DIR/page.txt")" shared "nobody with shared: the server saw"
nobody_refusals() { log_count "refused uid $NOBODY_UID .*: dev: "; }
nobody_refusals_above() { [ "$(nobody_refusals)" -gt "$1" ]; }
before=$(nobody_refusals)
signed=$(id_counter dev signatures)
if nobody_curl "${DEV[@]}"; then
	fail "nobody, not on dev's allow-list, completed a handshake with dev's key"
fi
log "ok: nobody refused for dev: $CURL_ERR"
wait_until 5 nobody_refusals_above "$before" ||
	fail "the agent log shows no refusal of uid $NOBODY_UID for dev"
assert_eq "$(id_counter dev signatures)" "$signed" "agent signatures for dev after nobody's attempt"
log "agent log: $(grep -iE "refused uid $NOBODY_UID .*: dev: " "$AGENT_LOG" | tail -n 1)"

# --- the agent stopped ---------------------------------------------------------------------------------
agent_stop
if s_server_get -v "${DEV[@]}"; then
	fail "curl completed a handshake with dev's key while the agent was stopped"
fi
# curl 7.88 prints only the REASON STRING of the first queued error
# (ERR_error_string_n), never the error's data text: the provider's reason
# string itself must say it.
assert_match "$CURL_ERR" 'agent not running' "curl's stderr with the agent stopped (only the provider's reason string reaches it)"
log "ok: agent stopped: $(grep -iE 'agent not running' "$TLS_DIR/curl.err" | head -n 1)"
# openssl s_client prints the whole error queue: the reason must be there too.
if s_client_get -key "$TLS_DIR/dev.keyref.pem" -cert "$TLS_DIR/dev.chain.pem" &&
	grep -q '^Client certificate' "$TLS_DIR/sclient.out"; then
	fail "s_client completed a handshake with dev's key while the agent was stopped"
fi
grep -qi 'agent not running' "$TLS_DIR/sclient.err" ||
	fail "s_client with the agent stopped does not say 'agent not running': $(cat "$TLS_DIR/sclient.err")"
agent_start
assert_cn "$(https_get_identity "${DEV[@]}")" dev "agent started again: the server saw"

# Killed (the socket file stays, nobody listens): fails too.
agent_kill9
if s_server_get -v "${DEV[@]}"; then
	fail "curl completed a handshake with dev's key after the agent was killed"
fi
log "ok: agent killed: $(tail -n 1 "$TLS_DIR/curl.err")"
s_server_stop
log "PASS"
