#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# git over https with the agent's key through mtls-agent-pkcs11.so: Debian's
# git fetches with libcurl-gnutls, so http.sslKey takes a PKCS#11 URI
# (pkcs11:token=mtls-agent;object=NAME). `git ls-remote` against nginx with
# ssl_verify_client on (a bare repository served over git's dumb HTTP
# protocol) must list the repository's branch, nginx must have logged the
# verified client certificate, and the agent must have signed. Without a
# client key nginx refuses (the control). git runs as a non-root user allowed
# to use the identity (p11-kit reads per-user module configs only for
# non-root users).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_cmd python3
need_cmd git
need_cmd setpriv
need_tls_cmd nginx

P11_MODULE=${MTLS_PKCS11_MODULE:-$top_builddir/pkcs11/.libs/mtls-agent-pkcs11.so}
[ -f "$P11_MODULE" ] || skip "PKCS#11 module not built: $P11_MODULE (set MTLS_PKCS11_MODULE)"
mkdir -p "$WORK/p11"
cp "$P11_MODULE" "$WORK/p11/mtls-agent-pkcs11.so"
chmod -R a+rX "$WORK/p11"
chmod a+x "$WORK"

softhsm_setup p11git
testca_init
server_cert_setup
agent_config "socket-mode = 0666"
agent_identity g-ec "sign-policy = digest" "allow-users = root daemon"
agent_start
identity_setup g-ec ec-p256
identity_files g-ec
unset OPENSSL_CONF OPENSSL_ENGINES

# A bare repository with one commit on branch "main", served as static files.
GIT_ROOT=$WORK/git
mkdir -p "$GIT_ROOT"
git init -q -b main "$WORK/src"
git -C "$WORK/src" -c user.name=t -c user.email=t@example.invalid commit -q --allow-empty -m one
git clone -q --bare "$WORK/src" "$GIT_ROOT/repo.git"
git -C "$GIT_ROOT/repo.git" update-server-info
want=$(git -C "$WORK/src" rev-parse HEAD)
chmod -R a+rX "$GIT_ROOT" "$TLS_DIR"

NGINX_SERVER_EXTRA="location /repo.git/ { root $GIT_ROOT; default_type application/octet-stream; }"
nginx_start

run_as daemon daemon true
HOME_D=$WORK/home-daemon
mkdir -p "$HOME_D/.config/pkcs11/modules"
printf 'module: %s\n' "$WORK/p11/mtls-agent-pkcs11.so" >"$HOME_D/.config/pkcs11/modules/mtls-agent.module"
chmod -R a+rX "$HOME_D"

git_ls_remote() { # extra git -c options...
	# GIT_SSL_CAINFO (which some environments export) would override http.sslCAInfo.
	run_as daemon daemon env MTLS_AGENT_SOCK="$SOCK" GIT_TERMINAL_PROMPT=0 GIT_SSL_CAINFO="$SRV_CA" \
		timeout -k 5 "$MTLS_TLS_TIMEOUT" git -c http.sslCAInfo="$SRV_CA" "$@" \
		ls-remote "https://127.0.0.1:$NGINX_PORT/repo.git"
}

# Control: no client key, nginx answers 400 and git fails.
rc=0
git_ls_remote >"$WORK/ls0.out" 2>"$WORK/ls0.err" || rc=$?
[ "$rc" -ne 0 ] || fail "git ls-remote without a client certificate succeeded"
assert_contains "$(cat "$WORK/ls0.err")" "error: 400" "git ls-remote without a client certificate"

before=$(id_counter g-ec signatures)
rc=0
git_ls_remote -c http.sslCert="$TLS_DIR/g-ec.chain.pem" \
	-c http.sslKey='pkcs11:token=mtls-agent;object=g-ec' >"$WORK/ls.out" 2>"$WORK/ls.err" || rc=$?
if [ "$rc" -ne 0 ]; then
	show_log "$WORK/ls.err" 20
	show_log "$NGINX_DIR/logs/error.log" 20
	fail "git ls-remote with http.sslKey=pkcs11:... failed (exit $rc)"
fi
assert_contains "$(cat "$WORK/ls.out")" "$want	refs/heads/main" "git ls-remote"
grep -q '^SUCCESS|.*|200|.*CN=g-ec' "$NGINX_ACCESS_LOG" || {
	show_log "$NGINX_ACCESS_LOG" 10
	fail "nginx did not log a verified request from CN=g-ec"
}
[ "$(id_counter g-ec signatures)" -gt "$before" ] ||
	fail "git ls-remote worked but the agent made no signature"
log "ok: git ls-remote with http.sslKey=pkcs11:token=mtls-agent;object=g-ec: $(tr '\t' ' ' <"$WORK/ls.out" | head -n 1)"
nginx_stop

agent_stop
log "PASS"
