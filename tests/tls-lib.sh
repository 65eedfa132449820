# shellcheck shell=bash
#
# tests/tls-lib.sh: real TLS peers for the integration tests, sourced after
# tests/lib.sh by tests/integration/tls-*.sh.
#
# Everything listens on 127.0.0.1 only, on a port the server picked (s_server
# binds port 0 and reports it) or a free port chosen here with a bounded retry
# when the bind loses a race (nginx, mosquitto). Every process started here is
# put on lib.sh's BG_PIDS list, so lib.sh's EXIT trap stops it; every wait is
# bounded. Servers always run with a clean OpenSSL environment (no
# OPENSSL_CONF / OPENSSL_ENGINES / MTLS_AGENT_SOCK): only the clients use the
# agent.
#
#   server_cert_setup          server CA + server certificate (127.0.0.1,
#                              localhost, serverAuth); a second, unrelated client CA
#   s_server_start [--client-ca FILE] [ARGS...]   openssl s_server -Verify 1 -www
#   s_server_get, https_get_identity, s_client_get, s_client_identity: clients
#                              against it; page_protocol, page_cipher, page_peer_sig
#                              read what the server reported
#   nginx_start [--client-ca FILE], nginx_get, nginx_get_identity
#   mosquitto_start [--client-ca FILE], mqtt_roundtrip PUB_ARGS -- SUB_ARGS, mqtt_pub
#   need_provider, provider_env     the OpenSSL provider "mtlsagent" via openssl.cnf
#   need_engine, engine_env         the OpenSSL engine "mtlsagent" via OPENSSL_ENGINES
#   identity_files NAME        key reference file + chain from mtls-agentctl keyref / cert
#   id_counter NAME FIELD      the agent's "signatures" / "refused" count for an identity
#   file_client_cert NAME      a client key file + certificate without the agent (controls)
#
# Environment:
#   top_builddir           build tree (set by `make check`; default: the directory of $MTLS_AGENT)
#   MTLS_PROVIDER_MODULE   provider module (default $top_builddir/provider/.libs/mtlsagent.so,
#                          then $top_builddir/.libs/mtlsagent.so)
#   MTLS_ENGINE_MODULE     engine module (default $top_builddir/engine/.libs/mtlsagent-engine.so,
#                          then $top_builddir/.libs/mtlsagent-engine.so)
#   MTLS_TLS_TIMEOUT       seconds one TLS client run may take (default 30)

top_builddir=${top_builddir:-$(cd "$(dirname "$MTLS_AGENT")" && pwd)}
MTLS_TLS_TIMEOUT=${MTLS_TLS_TIMEOUT:-30}
TLS_DIR=$WORK/tls
mkdir -p "$TLS_DIR"

need_cmd ss

# Loud skip for the peers and clients the TLS tests drive (installed in CI).
need_tls_cmd() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 ||
			skip "'$c' is not installed: the TLS integration tests need curl, nginx, mosquitto, mosquitto_pub and mosquitto_sub (apt-get install curl nginx-light mosquitto mosquitto-clients)"
	done
}

# Runs CMD... without the client-side OpenSSL settings (servers stay plain
# OpenSSL). An array, not a function, so that "${CLEAN_ENV[@]}" CMD & leaves
# the server's own pid in $! (env execs it).
CLEAN_ENV=(env -u OPENSSL_CONF -u OPENSSL_ENGINES -u MTLS_AGENT_SOCK)
clean_env() {
	"${CLEAN_ENV[@]}" "$@"
}

# A client command bounded in time.
tls_timeout() {
	timeout -k 5 "$MTLS_TLS_TIMEOUT" "$@"
}

# Short random token for topics, messages and client ids.
rand_token() {
	od -An -N6 -tx1 /dev/urandom | tr -d ' \n'
}

# --- ports -------------------------------------------------------------------------------

# A TCP port nobody listens on right now, below the ephemeral range (so outgoing
# connections do not take it meanwhile). Servers that lose the race retry.
free_port() {
	local p i
	for i in $(seq 1 100); do
		p=$((20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 12000))
		if [ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; then
			printf '%s\n' "$p"
			return 0
		fi
		: "$i"
	done
	fail "free_port: no free TCP port found in 100 tries"
}

# True when process PID (or a child sharing its socket) listens on 127.0.0.1:PORT.
_listening() { # PID PORT
	ss -Hltnp "sport = :$2" 2>/dev/null | grep -q "pid=$1,"
}

# Waits up to SECS for PID to listen on PORT. 0: listening; 1: PID died; 2: timeout.
_wait_listen() { # PID PORT SECS
	local pid=$1 port=$2 deadline=$((SECONDS + $3))
	while :; do
		_listening "$pid" "$port" && return 0
		kill -0 "$pid" 2>/dev/null || return 1
		[ "$SECONDS" -lt "$deadline" ] || return 2
		sleep 0.1
	done
}

# Prints the last lines of FILE to stderr under a heading (for failure reports).
show_log() { # FILE [LINES]
	[ -f "$1" ] || return 0
	printf -- '--- %s (last %s lines) ---\n' "$1" "${2:-40}" >&2
	tail -n "${2:-40}" "$1" >&2
	printf -- '--- end of %s ---\n' "$1" >&2
}

# --- certificates ------------------------------------------------------------------------

# server_cert_setup: a server CA (EC P-256 root, $SRV_CA) and a server
# certificate issued by it ($SRV_CERT / $SRV_KEY: CN=localhost, subjectAltName
# IP:127.0.0.1, DNS:localhost, extendedKeyUsage serverAuth); clients trust
# $SRV_CA. The servers trust client certificates from lib.sh's test CA
# ($CLIENT_CA = $CA_DIR/chain.pem: call testca_init first). A second,
# unrelated CA (root + intermediate, made by testca_init) is in $OTHER_CA_DIR,
# its chain in $OTHER_CA, for "the server does not trust the client's CA".
server_cert_setup() {
	local d=$TLS_DIR/server
	[ -f "$CA_DIR/chain.pem" ] || fail "server_cert_setup: call testca_init first (it makes the client CA)"
	mkdir -p "$d"
	cat >"$d/srv.cnf" <<'EOF'
[ req ]
distinguished_name = req_dn
prompt = no
[ req_dn ]
CN = unused
[ v3_root ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ v3_server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
	(
		cd "$d"
		clean_env openssl req -config srv.cnf -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
			-nodes -keyout srvca.key -out srvca.crt -days 30 -sha256 \
			-subj "/CN=mtls-agent test server CA/O=mtls-agent tests" -extensions v3_root
		clean_env openssl req -config srv.cnf -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
			-nodes -keyout srv.key -out srv.csr -subj "/CN=localhost/O=mtls-agent tests"
		clean_env openssl x509 -req -in srv.csr -CA srvca.crt -CAkey srvca.key \
			-set_serial "0x$(rand_token)" -days 30 -sha256 -extfile srv.cnf -extensions v3_server \
			-out srv.crt
		chmod 0644 srvca.crt srv.crt
	) >"$d/setup.log" 2>&1 || {
		cat "$d/setup.log" >&2
		fail "server_cert_setup: openssl failed"
	}
	SRV_CA=$d/srvca.crt
	SRV_CERT=$d/srv.crt
	SRV_KEY=$d/srv.key
	CLIENT_CA=$CA_DIR/chain.pem
	OTHER_CA_DIR=$WORK/otherca
	testca_init "$OTHER_CA_DIR"
	OTHER_CA=$OTHER_CA_DIR/chain.pem
	chmod 0644 "$CLIENT_CA" "$OTHER_CA"
}

# file_client_cert NAME [TYPE [TESTCA_ISSUE_OPTS...]]: a client key and
# certificate made without the agent (for the harness and for controls):
# $TLS_DIR/NAME.key and $TLS_DIR/NAME.chain.pem (leaf + intermediate), subject
# /CN=NAME/O=mtls-agent tests. TYPE: ec-p256 (default), ec-p384, rsa-2048.
file_client_cert() {
	local name=$1 type=${2:-ec-p256} newkey
	shift
	[ $# -eq 0 ] || shift
	case "$type" in
	ec-p256) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
	ec-p384) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-384) ;;
	rsa-2048) newkey=(-newkey rsa:2048) ;;
	*) fail "file_client_cert: unknown key type $type" ;;
	esac
	clean_env openssl req -new "${newkey[@]}" -nodes -keyout "$TLS_DIR/$name.key" \
		-out "$TLS_DIR/$name.csr" -subj "/CN=$name/O=mtls-agent tests" 2>"$TLS_DIR/$name.req.log" || {
		cat "$TLS_DIR/$name.req.log" >&2
		fail "file_client_cert: openssl req failed"
	}
	testca_issue "$TLS_DIR/$name.csr" "$TLS_DIR/$name.chain.pem" "$@"
	chmod 0644 "$TLS_DIR/$name.key" "$TLS_DIR/$name.chain.pem"
}

# Subject of the first certificate in a PEM file, RFC 2253 (as nginx prints it).
cert_subject() { # PEM
	openssl x509 -in "$1" -noout -subject -nameopt RFC2253 | sed 's/^subject=//'
}

# Serial of the first certificate in a PEM file, upper-case hex without separators.
cert_serial() { # PEM
	openssl x509 -in "$1" -noout -serial | sed 's/^serial=//' | tr 'a-f' 'A-F'
}

# assert_cn DN CN [WHAT]: the RFC 2253 distinguished name DN has commonName CN.
assert_cn() {
	local cn
	cn=$(printf '%s\n' "$1" | tr ',' '\n' | sed -n 's/^ *CN *= *//p' | head -n 1)
	[ "$cn" = "$2" ] || fail "${3:-subject}: expected CN=$2, got '$1'"
}

# --- openssl s_server ----------------------------------------------------------------------

S_SERVER_N=0
S_SERVER_PID=
S_SERVER_PORT=
S_SERVER_LOG=

# s_server_start [--client-ca FILE] [ARGS...]: openssl s_server on
# 127.0.0.1 (port 0: the kernel picks, s_server reports it) requiring a client
# certificate from FILE (default $CLIENT_CA) that verifies (-verify_return_error:
# without it s_server only logs a failed verification) and answering GET / with its
# status page (-www), which shows the client certificate, the protocol and the
# client's signature algorithm. ARGS are added (-tls1_2, -client_sigalgs ...).
# Sets S_SERVER_PID, S_SERVER_PORT, S_SERVER_LOG (the latest server).
s_server_start() {
	local ca=$CLIENT_CA pid log deadline
	if [ "${1:-}" = --client-ca ]; then
		ca=$2
		shift 2
	fi
	S_SERVER_N=$((S_SERVER_N + 1))
	log=$TLS_DIR/s_server.$S_SERVER_N.log
	"${CLEAN_ENV[@]}" openssl s_server -accept 127.0.0.1:0 -Verify 1 -verify_return_error -CAfile "$ca" \
		-cert "$SRV_CERT" -key "$SRV_KEY" -www "$@" >"$log" 2>&1 </dev/null &
	pid=$!
	BG_PIDS+=("$pid")
	deadline=$((SECONDS + 10))
	until grep -qs '^ACCEPT 127\.0\.0\.1:[0-9]' "$log"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			show_log "$log"
			fail "openssl s_server exited during start-up: s_server $*"
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			show_log "$log"
			fail "openssl s_server did not report ACCEPT within 10 s"
		fi
		sleep 0.1
	done
	S_SERVER_PORT=$(sed -n 's/^ACCEPT 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$log" | head -n 1)
	_wait_listen "$pid" "$S_SERVER_PORT" 10 || {
		show_log "$log"
		fail "openssl s_server (pid $pid) does not listen on 127.0.0.1:$S_SERVER_PORT"
	}
	S_SERVER_PID=$pid
	S_SERVER_LOG=$log
	log "s_server on 127.0.0.1:$S_SERVER_PORT (pid $pid, client CA $(basename "$(dirname "$ca")")/$(basename "$ca")${*:+, $*})"
}

s_server_stop() {
	[ -n "$S_SERVER_PID" ] || return 0
	_stop_pid "$S_SERVER_PID"
	wait "$S_SERVER_PID" 2>/dev/null || true
	S_SERVER_PID=
}

# s_server_get [CURL_ARGS...]: curl GET / from the latest s_server. The page
# goes to $TLS_DIR/page.txt, curl's stderr to $TLS_DIR/curl.err ($CURL_ERR
# too). Returns curl's exit status; never fails by itself.
CURL_ERR=
s_server_get() {
	local rc=0
	tls_timeout curl -sS --max-time "$MTLS_TLS_TIMEOUT" --cacert "$SRV_CA" "$@" \
		"https://127.0.0.1:$S_SERVER_PORT/" >"$TLS_DIR/page.txt" 2>"$TLS_DIR/curl.err" || rc=$?
	CURL_ERR=$(cat "$TLS_DIR/curl.err")
	return "$rc"
}

# page_identity PAGE: checks that the s_server status page PAGE shows a client
# certificate that the server verified (Verify return code: 0), saves that
# certificate to $TLS_DIR/peer.pem and prints its subject (RFC 2253).
page_identity() {
	local page=$1
	grep -q '^Client certificate' "$page" || {
		show_log "$page"
		fail "the server's page shows no client certificate"
	}
	grep -q 'Verify return code: 0 (ok)' "$page" || {
		show_log "$page"
		fail "the server did not verify the client certificate (no 'Verify return code: 0 (ok)')"
	}
	sed -n '/^Client certificate/,$p' "$page" |
		sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' |
		sed '/-----END CERTIFICATE-----/q' >"$TLS_DIR/peer.pem"
	cert_subject "$TLS_DIR/peer.pem" || fail "cannot read the client certificate from the server's page"
}

# https_get_identity [CURL_ARGS...]: curl to the latest s_server must succeed;
# prints the subject (RFC 2253) of the client certificate the server saw and
# verified. That certificate is left in $TLS_DIR/peer.pem, the page in
# $TLS_DIR/page.txt (see page_protocol, page_peer_sig).
https_get_identity() {
	local rc=0
	s_server_get "$@" || rc=$?
	if [ "$rc" -ne 0 ]; then
		show_log "$S_SERVER_LOG" 20
		fail "curl to s_server failed (exit $rc): curl $* -- $CURL_ERR"
	fi
	page_identity "$TLS_DIR/page.txt"
}

# Protocol of the connection the page was served on (TLSv1.2, TLSv1.3).
page_protocol() { # [PAGE]
	sed -n 's/^New, \(TLSv[0-9.]*\), Cipher is.*/\1/p' "${1:-$TLS_DIR/page.txt}" | head -n 1
}

# Cipher suite of the connection the page was served on (TLS_AES_256_GCM_SHA384, ...).
page_cipher() { # [PAGE]
	sed -n 's/^New, TLSv[0-9.]*, Cipher is \(.*\)/\1/p' "${1:-$TLS_DIR/page.txt}" | head -n 1
}

# The client's signature as the server saw it: "TYPE DIGEST", e.g. "RSA-PSS SHA384", "ECDSA SHA256".
page_peer_sig() { # [PAGE]
	local page=${1:-$TLS_DIR/page.txt} t d
	t=$(sed -n 's/^Peer signature type: *//p' "$page" | head -n 1)
	d=$(sed -n 's/^Peer signing digest: *//p' "$page" | head -n 1)
	printf '%s %s\n' "$t" "$d"
}

# s_client_get ARGS...: openssl s_client to the latest s_server, sending GET /
# and reading the page until the server closes. Transcript in
# $TLS_DIR/sclient.out, stderr in $TLS_DIR/sclient.err. Returns s_client's status.
s_client_get() {
	local rc=0
	printf 'GET / HTTP/1.0\r\n\r\n' |
		tls_timeout openssl s_client -connect "127.0.0.1:$S_SERVER_PORT" -CAfile "$SRV_CA" \
			-verify_return_error -verify_ip 127.0.0.1 -ign_eof "$@" \
			>"$TLS_DIR/sclient.out" 2>"$TLS_DIR/sclient.err" || rc=$?
	return "$rc"
}

# s_client_identity ARGS...: s_client_get must succeed and the server must have
# verified the client certificate; prints its subject (as https_get_identity).
s_client_identity() {
	local rc=0
	s_client_get "$@" || rc=$?
	if [ "$rc" -ne 0 ] || ! grep -q '^Client certificate' "$TLS_DIR/sclient.out"; then
		show_log "$TLS_DIR/sclient.err" 20
		show_log "$S_SERVER_LOG" 20
		fail "openssl s_client to s_server failed (exit $rc): s_client $*"
	fi
	page_identity "$TLS_DIR/sclient.out"
}

# --- nginx ---------------------------------------------------------------------------------

NGINX_PID=
NGINX_PORT=
NGINX_DIR=$TLS_DIR/nginx

# nginx_start [--client-ca FILE]: nginx in the foreground with a private
# prefix in the work dir, listening on 127.0.0.1:$NGINX_PORT with TLS,
# ssl_verify_client on against FILE (default $CLIENT_CA), no session cache or
# tickets (every connection is a full handshake). GET / answers
# "$ssl_client_verify|$ssl_client_s_dn|$ssl_client_serial|$ssl_protocol".
# NGINX_SERVER_EXTRA, if set, is added to the server block (more locations).
# The access log ($NGINX_ACCESS_LOG) has one line per request:
# "verify|serial|status|protocol|s_dn".
nginx_start() {
	local ca=$CLIENT_CA attempt port pid rc conf
	if [ "${1:-}" = --client-ca ]; then
		ca=$2
		shift 2
	fi
	need_tls_cmd nginx
	[ -z "$NGINX_PID" ] || fail "nginx_start: nginx already running (pid $NGINX_PID)"
	mkdir -p "$NGINX_DIR/logs" "$NGINX_DIR/tmp"
	conf=$NGINX_DIR/nginx.conf
	NGINX_ACCESS_LOG=$NGINX_DIR/logs/access.log
	for attempt in 1 2 3 4 5; do
		port=$(free_port)
		{
			[ "$(id -u)" -ne 0 ] || printf 'user root;\n'
			cat <<EOF
worker_processes 1;
error_log $NGINX_DIR/logs/error.log info;
events { worker_connections 256; }
http {
	log_format mtls '\$ssl_client_verify|\$ssl_client_serial|\$status|\$ssl_protocol|\$ssl_client_s_dn';
	access_log $NGINX_ACCESS_LOG mtls;
	client_body_temp_path $NGINX_DIR/tmp/body;
	proxy_temp_path $NGINX_DIR/tmp/proxy;
	fastcgi_temp_path $NGINX_DIR/tmp/fastcgi;
	uwsgi_temp_path $NGINX_DIR/tmp/uwsgi;
	scgi_temp_path $NGINX_DIR/tmp/scgi;
	server {
		listen 127.0.0.1:$port ssl;
		server_name localhost;
		ssl_certificate $SRV_CERT;
		ssl_certificate_key $SRV_KEY;
		ssl_protocols TLSv1.2 TLSv1.3;
		ssl_client_certificate $ca;
		ssl_verify_client on;
		ssl_verify_depth 2;
		ssl_session_cache off;
		ssl_session_tickets off;
		${NGINX_SERVER_EXTRA:-}
		location / {
			default_type text/plain;
			return 200 "\$ssl_client_verify|\$ssl_client_s_dn|\$ssl_client_serial|\$ssl_protocol\n";
		}
	}
}
EOF
		} >"$conf"
		: >"$NGINX_DIR/logs/error.log"
		"${CLEAN_ENV[@]}" nginx -e "$NGINX_DIR/logs/error.log" -p "$NGINX_DIR" -c "$conf" \
			-g "daemon off; pid $NGINX_DIR/nginx.pid;" >>"$NGINX_DIR/logs/stdout.log" 2>&1 </dev/null &
		pid=$!
		BG_PIDS+=("$pid")
		rc=0
		_wait_listen "$pid" "$port" 15 || rc=$?
		if [ "$rc" -eq 0 ]; then
			NGINX_PID=$pid
			NGINX_PORT=$port
			log "nginx on 127.0.0.1:$port (pid $pid, client CA $(basename "$(dirname "$ca")")/$(basename "$ca"))"
			return 0
		fi
		_stop_pid "$pid"
		if grep -q 'Address already in use' "$NGINX_DIR/logs/error.log" "$NGINX_DIR/logs/stdout.log"; then
			log "nginx: port $port taken meanwhile (attempt $attempt), trying another"
			continue
		fi
		show_log "$NGINX_DIR/logs/stdout.log"
		show_log "$NGINX_DIR/logs/error.log"
		fail "nginx did not start (see logs above; conf $conf)"
	done
	fail "nginx: no free port after 5 attempts"
}

nginx_stop() {
	[ -n "$NGINX_PID" ] || return 0
	_stop_pid "$NGINX_PID"
	wait "$NGINX_PID" 2>/dev/null || true
	NGINX_PID=
}

# nginx_get [CURL_ARGS...]: curl GET / from nginx; body in $TLS_DIR/nginx.out,
# stderr in $CURL_ERR. Returns curl's exit status (4xx/5xx are failures: --fail).
nginx_get() {
	local rc=0
	tls_timeout curl -sS --fail --max-time "$MTLS_TLS_TIMEOUT" --cacert "$SRV_CA" "$@" \
		"https://127.0.0.1:$NGINX_PORT/" >"$TLS_DIR/nginx.out" 2>"$TLS_DIR/curl.err" || rc=$?
	CURL_ERR=$(cat "$TLS_DIR/curl.err")
	return "$rc"
}

# nginx_get_identity [CURL_ARGS...]: the request must succeed with
# $ssl_client_verify = SUCCESS; prints "s_dn|serial|protocol".
nginx_get_identity() {
	local rc=0 body
	nginx_get "$@" || rc=$?
	if [ "$rc" -ne 0 ]; then
		show_log "$NGINX_DIR/logs/error.log" 20
		fail "curl to nginx failed (exit $rc): curl $* -- $CURL_ERR"
	fi
	body=$(cat "$TLS_DIR/nginx.out")
	case "$body" in
	SUCCESS\|*) printf '%s\n' "${body#SUCCESS|}" ;;
	*)
		show_log "$NGINX_DIR/logs/error.log" 20
		fail "nginx did not verify the client certificate: $body"
		;;
	esac
}

# nginx_logged_request BEFORE ERE: the request logged after the first BEFORE lines of
# nginx's access log (BEFORE: nginx_requests before it was made) matches ERE; prints its
# line. nginx logs a request after it sent the answer, so the client (curl --fail stops at
# the status line) can be done before the line is written: waits up to 5 s for it.
nginx_logged_request() {
	local deadline=$((SECONDS + 5)) line
	until [ "$(nginx_requests)" -gt "$1" ]; do
		[ "$SECONDS" -lt "$deadline" ] || {
			printf 'no request logged after line %s\n' "$1"
			return 1
		}
		sleep 0.1
	done
	line=$(sed -n "$(($1 + 1))p" "$NGINX_ACCESS_LOG")
	printf '%s\n' "$line"
	grep -qE -- "$2" <<<"$line"
}

# Number of requests in nginx's access log.
nginx_requests() {
	[ -f "$NGINX_ACCESS_LOG" ] || { echo 0; return 0; }
	awk 'END { print NR }' "$NGINX_ACCESS_LOG"
}

# --- mosquitto -------------------------------------------------------------------------------

MQTT_PID=
MQTT_PORT=
MQTT_DIR=$TLS_DIR/mosquitto
MQTT_LOG=$MQTT_DIR/mosquitto.log
MQTT_N=0

# mosquitto_start [--client-ca FILE]: a mosquitto broker on
# 127.0.0.1:$MQTT_PORT, TLS only, require_certificate true against FILE
# (default $CLIENT_CA), use_identity_as_username true (the certificate's CN is
# the username), anonymous clients refused; everything logged to $MQTT_LOG.
mosquitto_start() {
	local ca=$CLIENT_CA attempt port pid rc conf
	if [ "${1:-}" = --client-ca ]; then
		ca=$2
		shift 2
	fi
	need_tls_cmd mosquitto mosquitto_pub mosquitto_sub
	[ -z "$MQTT_PID" ] || fail "mosquitto_start: broker already running (pid $MQTT_PID)"
	mkdir -p "$MQTT_DIR"
	conf=$MQTT_DIR/mosquitto.conf
	for attempt in 1 2 3 4 5; do
		port=$(free_port)
		{
			[ "$(id -u)" -ne 0 ] || printf 'user root\n'
			cat <<EOF
per_listener_settings false
persistence false
log_dest file $MQTT_LOG
log_type all
connection_messages true
log_timestamp true
allow_anonymous false
listener $port 127.0.0.1
cafile $ca
certfile $SRV_CERT
keyfile $SRV_KEY
require_certificate true
use_identity_as_username true
EOF
		} >"$conf"
		: >"$MQTT_LOG"
		"${CLEAN_ENV[@]}" mosquitto -c "$conf" >"$MQTT_DIR/stdout.log" 2>&1 </dev/null &
		pid=$!
		BG_PIDS+=("$pid")
		rc=0
		_wait_listen "$pid" "$port" 15 || rc=$?
		if [ "$rc" -eq 0 ]; then
			MQTT_PID=$pid
			MQTT_PORT=$port
			log "mosquitto on 127.0.0.1:$port (pid $pid, client CA $(basename "$(dirname "$ca")")/$(basename "$ca"))"
			return 0
		fi
		_stop_pid "$pid"
		if grep -q 'Address already in use' "$MQTT_LOG" "$MQTT_DIR/stdout.log"; then
			log "mosquitto: port $port taken meanwhile (attempt $attempt), trying another"
			continue
		fi
		show_log "$MQTT_DIR/stdout.log"
		show_log "$MQTT_LOG"
		fail "mosquitto did not start (see logs above; conf $conf)"
	done
	fail "mosquitto: no free port after 5 attempts"
}

mosquitto_stop() {
	[ -n "$MQTT_PID" ] || return 0
	_stop_pid "$MQTT_PID"
	wait "$MQTT_PID" 2>/dev/null || true
	MQTT_PID=
}

# The username the broker gave client id ID (its certificate's CN), from the broker log.
mqtt_username() { # CLIENT_ID
	sed -n "s/.* as $1 (.*u'\\([^']*\\)').*/\\1/p" "$MQTT_LOG" | tail -n 1
}

# mqtt_pub ARGS...: mosquitto_pub of one random message (QoS 1) to the broker
# with a fresh client id ($MQTT_PUB_ID). stderr in $TLS_DIR/pub.err. Returns its status.
mqtt_pub() {
	local rc=0
	MQTT_N=$((MQTT_N + 1))
	MQTT_PUB_ID=pub-$MQTT_N-$(rand_token)
	tls_timeout mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" --cafile "$SRV_CA" -i "$MQTT_PUB_ID" \
		-q 1 -t "mtls-agent/test/$MQTT_N" -m "hello $(rand_token)" "$@" \
		>"$TLS_DIR/pub.out" 2>"$TLS_DIR/pub.err" || rc=$?
	return "$rc"
}

# mqtt_roundtrip PUB_ARGS... -- SUB_ARGS...: mosquitto_sub (-C 1 -W 15) with
# SUB_ARGS subscribes to a fresh topic; once the broker has acknowledged the
# subscription, mosquitto_pub with PUB_ARGS publishes a random message (QoS 1);
# the subscriber must print exactly it. The usernames the broker gave them
# (their certificates' CNs) are left in MQTT_PUB_USER and MQTT_SUB_USER.
# Host, port, server CA, client ids and topic are added here.
mqtt_roundtrip() {
	local pub=() sub=() topic msg subpid rc=0 deadline
	while [ $# -gt 0 ] && [ "$1" != -- ]; do
		pub+=("$1")
		shift
	done
	[ $# -gt 0 ] || fail "mqtt_roundtrip: usage: PUB_ARGS... -- SUB_ARGS..."
	shift
	sub=("$@")
	MQTT_N=$((MQTT_N + 1))
	topic=mtls-agent/test/$MQTT_N/$(rand_token)
	msg="hello $MQTT_N $(rand_token)"
	MQTT_SUB_ID=sub-$MQTT_N-$(rand_token)
	MQTT_PUB_ID=pub-$MQTT_N-$(rand_token)
	timeout -k 5 "$MTLS_TLS_TIMEOUT" mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" --cafile "$SRV_CA" -i "$MQTT_SUB_ID" \
		-q 1 -t "$topic" -C 1 -W 15 "${sub[@]}" >"$TLS_DIR/sub.out" 2>"$TLS_DIR/sub.err" </dev/null &
	subpid=$!
	BG_PIDS+=("$subpid")
	deadline=$((SECONDS + 15))
	until grep -q "Sending SUBACK to $MQTT_SUB_ID\$" "$MQTT_LOG"; do
		if ! kill -0 "$subpid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
			show_log "$TLS_DIR/sub.err" 20
			show_log "$MQTT_LOG" 20
			fail "mosquitto_sub did not subscribe: mosquitto_sub ${sub[*]}"
		fi
		sleep 0.1
	done
	tls_timeout mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" --cafile "$SRV_CA" -i "$MQTT_PUB_ID" \
		-q 1 -t "$topic" -m "$msg" "${pub[@]}" >"$TLS_DIR/pub.out" 2>"$TLS_DIR/pub.err" </dev/null || rc=$?
	if [ "$rc" -ne 0 ]; then
		show_log "$TLS_DIR/pub.err" 20
		show_log "$MQTT_LOG" 20
		fail "mosquitto_pub failed (exit $rc): mosquitto_pub ${pub[*]}"
	fi
	rc=0
	wait "$subpid" || rc=$?
	if [ "$rc" -ne 0 ] || [ "$(cat "$TLS_DIR/sub.out")" != "$msg" ]; then
		show_log "$TLS_DIR/sub.err" 20
		show_log "$MQTT_LOG" 20
		fail "mosquitto_sub (exit $rc) did not print the message '$msg', got: '$(cat "$TLS_DIR/sub.out")'"
	fi
	MQTT_PUB_USER=$(mqtt_username "$MQTT_PUB_ID")
	MQTT_SUB_USER=$(mqtt_username "$MQTT_SUB_ID")
	log "mqtt: '$msg' from $MQTT_PUB_USER to $MQTT_SUB_USER"
}

# --- the provider and the engine -----------------------------------------------------------------

# Build-tree shared libraries (libmtls-agent) for modules loaded by system
# programs, which have no libtool wrapper to find them.
_build_libs_path() {
	local d
	for d in "$top_builddir/.libs" "$top_builddir/client/.libs"; do
		if [ -d "$d" ]; then
			case ":${LD_LIBRARY_PATH:-}:" in
			*":$d:"*) ;;
			*) export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
			esac
		fi
	done
}

# need_provider: sets PROVIDER_MODULE, or skips loudly when the module is not built.
need_provider() {
	local m
	if [ -n "${MTLS_PROVIDER_MODULE:-}" ]; then
		PROVIDER_MODULE=$MTLS_PROVIDER_MODULE
	else
		PROVIDER_MODULE=$top_builddir/provider/.libs/mtlsagent.so
		for m in "$top_builddir/provider/.libs/mtlsagent.so" "$top_builddir/.libs/mtlsagent.so"; do
			if [ -f "$m" ]; then
				PROVIDER_MODULE=$m
				break
			fi
		done
	fi
	[ -f "$PROVIDER_MODULE" ] ||
		skip "OpenSSL provider module not built: $PROVIDER_MODULE (set MTLS_PROVIDER_MODULE)"
	PROVIDER_MODULE=$(cd "$(dirname "$PROVIDER_MODULE")" && pwd)/$(basename "$PROVIDER_MODULE")
	# For -provider-path: a directory where the module is called mtlsagent.so.
	PROVIDER_DIR=$TLS_DIR/ossl-modules
	mkdir -p "$PROVIDER_DIR"
	ln -sf "$PROVIDER_MODULE" "$PROVIDER_DIR/mtlsagent.so"
}

# provider_env: writes $TLS_DIR/openssl-provider.cnf activating "default"
# then "mtlsagent" (in that order: see notes/openssl-integration.md) and
# exports OPENSSL_CONF to it and MTLS_AGENT_SOCK=$SOCK. Fails if OpenSSL
# cannot load the provider.
provider_env() {
	[ -n "${PROVIDER_MODULE:-}" ] || need_provider
	[ -n "$SOCK" ] || fail "provider_env: call agent_config first"
	PROVIDER_CONF=$TLS_DIR/openssl-provider.cnf
	cat >"$PROVIDER_CONF" <<EOF
# written by tests/tls-lib.sh for $TEST_NAME
openssl_conf = openssl_init

[openssl_init]
providers = provider_sect

[provider_sect]
default = default_sect
mtlsagent = mtlsagent_sect

[default_sect]
activate = 1

[mtlsagent_sect]
module = $PROVIDER_MODULE
activate = 1
EOF
	chmod 0644 "$PROVIDER_CONF"
	_build_libs_path
	export OPENSSL_CONF=$PROVIDER_CONF
	export MTLS_AGENT_SOCK=$SOCK
	openssl list -providers >"$TLS_DIR/providers.txt" 2>&1 || {
		cat "$TLS_DIR/providers.txt" >&2
		fail "OpenSSL cannot load the provider $PROVIDER_MODULE through $PROVIDER_CONF"
	}
	grep -q 'mtlsagent' "$TLS_DIR/providers.txt" || {
		cat "$TLS_DIR/providers.txt" >&2
		fail "provider mtlsagent not listed by 'openssl list -providers'"
	}
	log "provider: $PROVIDER_MODULE (OPENSSL_CONF=$PROVIDER_CONF)"
}

# need_engine: sets ENGINE_MODULE, or skips loudly when the module is not built.
need_engine() {
	local m
	if [ -n "${MTLS_ENGINE_MODULE:-}" ]; then
		ENGINE_MODULE=$MTLS_ENGINE_MODULE
	else
		ENGINE_MODULE=$top_builddir/engine/.libs/mtlsagent-engine.so
		for m in "$top_builddir/engine/.libs/mtlsagent-engine.so" "$top_builddir/.libs/mtlsagent-engine.so"; do
			if [ -f "$m" ]; then
				ENGINE_MODULE=$m
				break
			fi
		done
	fi
	[ -f "$ENGINE_MODULE" ] ||
		skip "OpenSSL engine module not built: $ENGINE_MODULE (set MTLS_ENGINE_MODULE)"
	ENGINE_MODULE=$(cd "$(dirname "$ENGINE_MODULE")" && pwd)/$(basename "$ENGINE_MODULE")
}

# engine_env: a directory $TLS_DIR/engines with the engine as mtlsagent.so
# (what ENGINE_by_id("mtlsagent") looks for), exported as OPENSSL_ENGINES, and
# MTLS_AGENT_SOCK=$SOCK. No openssl.cnf: mosquitto looks the engine up before
# reading the config (notes/openssl-integration.md). Fails if OpenSSL cannot
# load the engine.
engine_env() {
	[ -n "${ENGINE_MODULE:-}" ] || need_engine
	[ -n "$SOCK" ] || fail "engine_env: call agent_config first"
	ENGINE_DIR=$TLS_DIR/engines
	mkdir -p "$ENGINE_DIR"
	ln -sf "$ENGINE_MODULE" "$ENGINE_DIR/mtlsagent.so"
	_build_libs_path
	export OPENSSL_ENGINES=$ENGINE_DIR
	export MTLS_AGENT_SOCK=$SOCK
	openssl engine -t mtlsagent >"$TLS_DIR/engine.txt" 2>&1 || {
		cat "$TLS_DIR/engine.txt" >&2
		fail "OpenSSL cannot load the engine mtlsagent from $ENGINE_DIR ($ENGINE_MODULE)"
	}
	log "engine: $ENGINE_MODULE (OPENSSL_ENGINES=$ENGINE_DIR): $(tr '\n' ' ' <"$TLS_DIR/engine.txt")"
}

# identity_files NAME: the key reference file ($TLS_DIR/NAME.keyref.pem, from
# `mtls-agentctl keyref`) and the chain ($TLS_DIR/NAME.chain.pem, from
# `mtls-agentctl cert`) an application is given, both mode 0644.
identity_files() {
	local name=$1
	ctl keyref "$name" -o "$TLS_DIR/$name.keyref.pem" || fail "keyref $name failed"
	grep -q -- '-----BEGIN MTLS AGENT KEY-----' "$TLS_DIR/$name.keyref.pem" ||
		fail "keyref $name did not write a PEM 'MTLS AGENT KEY'"
	ctl cert "$name" >"$TLS_DIR/$name.chain.pem" || fail "cert $name failed"
	chmod 0644 "$TLS_DIR/$name.keyref.pem" "$TLS_DIR/$name.chain.pem"
}

# Counter FIELD ("signatures", "refused") of identity NAME from `mtls-agentctl --json status`.
id_counter() { # NAME FIELD
	ctl --json status >"$TLS_DIR/status.json" || fail "status failed"
	python3 - "$TLS_DIR/status.json" "$1" "$2" <<'PY' || fail "status --json: no $2 for identity $1: $(cat "$TLS_DIR/status.json")"
import json, sys
doc = json.load(open(sys.argv[1]))
name, field = sys.argv[2], sys.argv[3]
def objs(x):
    if isinstance(x, dict):
        yield x
        for v in x.values(): yield from objs(v)
    elif isinstance(x, list):
        for v in x: yield from objs(v)
for o in objs(doc):
    if o.get("name") == name and o.get("kind", "identity") == "identity":
        fields = dict(o)
        if isinstance(o.get("fields"), dict):
            fields.update(o["fields"])
        for k, v in fields.items():
            if k.replace("_", "-") == field:
                print(int(v))
                sys.exit(0)
sys.exit(1)
PY
}
