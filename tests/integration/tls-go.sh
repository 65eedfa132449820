#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# Go's crypto/tls as the server: an implementation independent of OpenSSL
# verifies the CertificateVerify signatures the agent makes for curl through
# the OpenSSL provider (key reference file as curl's --key, openssl.cnf).
#
# tests/go/mtls-server.go (standard library only) is built in the work dir
# (GOCACHE, GOPATH, HOME, GOTMPDIR there; GO111MODULE=off, GOPROXY=off: no
# network) and run with tls.RequireAndVerifyClientCert, trusting only the
# test root (curl sends leaf + intermediate; Go builds the chain), one server
# forced to TLS 1.2, one to TLS 1.3. For EC P-256, EC P-384,
# RSA-2048, RSA-3072 and Ed25519 identities, over each version, curl must get
# the page, on which Go reports the client certificate it verified (CN, serial,
# key type, root), the version and the cipher suite; and the agent's audit
# log must show exactly one signature for that identity, requested by curl,
# with the scheme the protocol allows (TLS 1.3: the curve's own ECDSA hash,
# RSA-PSS for RSA). TLS_AES_256_GCM_SHA384 and a TLS 1.2 SHA-384 suite too.
# Controls: the TLS 1.3-only server refuses a TLS 1.2 client; a server that
# trusts only another CA refuses the agent's identities (and accepts a client
# certificate from that CA, so the refusal is about trust); the servers
# refuse that foreign certificate and a client without a certificate.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
command -v go >/dev/null 2>&1 ||
	skip "'go' is not installed: this test runs a Go crypto/tls server (apt-get install golang-go)"
need_tls_cmd curl
need_provider

GO_SRC=$TESTS_DIR/go/mtls-server.go
[ -f "$GO_SRC" ] || fail "Go server source not found: $GO_SRC"

# --- the Go server ---------------------------------------------------------------------------

# Builds $GO_SRC into $GO_SRV. Everything the go command writes stays in the
# work dir (its cache included: each run builds afresh, about 1 s, linking the
# standard library Debian ships precompiled; CGO_ENABLED=0 would recompile
# net and its dependants, 8 s more); GOENV=off: no user go/env file is read;
# GOTOOLCHAIN=local: a newer go command never fetches another toolchain.
GO_DIR=$WORK/go
GO_SRV=$GO_DIR/mtls-server
mkdir -p "$GO_DIR/cache" "$GO_DIR/path" "$GO_DIR/tmp" "$GO_DIR/home"
rc=0
t0=$SECONDS
env -u GOFLAGS -u GOROOT -u CGO_ENABLED HOME="$GO_DIR/home" XDG_CONFIG_HOME="$GO_DIR/home/.config" \
	XDG_CACHE_HOME="$GO_DIR/home/.cache" GOCACHE="$GO_DIR/cache" GOPATH="$GO_DIR/path" \
	GOTMPDIR="$GO_DIR/tmp" GOENV=off GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local \
	timeout -k 5 120 go build -o "$GO_SRV" "$GO_SRC" >"$GO_DIR/build.log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
	show_log "$GO_DIR/build.log"
	fail "go build of $GO_SRC failed (exit $rc)"
fi
log "built $(basename "$GO_SRC") with $(go version) in $((SECONDS - t0)) s"

# go_start NAME SERVER_ARGS...: the Go server on 127.0.0.1 (port 0: the
# kernel picks, the server prints it) with the test server certificate;
# SERVER_ARGS give -client-ca and the versions. Sets GO_PORT[NAME],
# GO_LOG[NAME] (its stderr: "accepted ..." and "TLS handshake error" lines).
declare -A GO_PORT GO_LOG
go_start() {
	local name=$1 out pid deadline port
	shift
	out=$GO_DIR/$name.out
	GO_LOG[$name]=$GO_DIR/$name.log
	"${CLEAN_ENV[@]}" "$GO_SRV" -listen 127.0.0.1:0 -cert "$SRV_CERT" -key "$SRV_KEY" "$@" \
		>"$out" 2>"${GO_LOG[$name]}" </dev/null &
	pid=$!
	BG_PIDS+=("$pid")
	deadline=$((SECONDS + 10))
	until grep -qs '^LISTEN 127\.0\.0\.1:[0-9]' "$out"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			show_log "${GO_LOG[$name]}"
			fail "Go server $name exited during start-up: $*"
		fi
		[ "$SECONDS" -lt "$deadline" ] || fail "Go server $name did not report LISTEN within 10 s"
		sleep 0.1
	done
	port=$(sed -n 's/^LISTEN 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$out" | head -n 1)
	_wait_listen "$pid" "$port" 10 || fail "Go server $name (pid $pid) does not listen on 127.0.0.1:$port"
	GO_PORT[$name]=$port
	log "Go server $name on 127.0.0.1:$port (pid $pid): $*"
}

# go_get NAME [CURL_ARGS...]: curl GET / from Go server NAME; the page in
# $TLS_DIR/go.page, curl's stderr in $CURL_ERR. Returns curl's exit status.
go_get() {
	local name=$1 rc=0
	shift
	tls_timeout curl -sS --fail --max-time "$MTLS_TLS_TIMEOUT" --cacert "$SRV_CA" "$@" \
		"https://127.0.0.1:${GO_PORT[$name]}/" >"$TLS_DIR/go.page" 2>"$TLS_DIR/curl.err" || rc=$?
	CURL_ERR=$(cat "$TLS_DIR/curl.err")
	return "$rc"
}

# A field of the Go server's page (cn, serial, keytype, root, version, cipher, resumed).
field() { # KEY
	sed -n "s/^$1=//p" "$TLS_DIR/go.page" | head -n 1
}

# Upper-case hex without leading zeros (openssl pads the serial to whole bytes, Go does not).
hexnorm() {
	printf '%s\n' "$1" | tr 'a-f' 'A-F' | sed 's/^0*//'
}

# Lines of FILE after the first N (what a step added to a log).
lines_after() { # FILE N
	tail -n "+$(($2 + 1))" "$1"
}

nlines() { # FILE
	awk 'END { print NR }' "$1"
}

# True when a line FILE got after its first N lines matches ERE.
log_added() { # FILE N ERE
	lines_after "$1" "$2" | grep -qE -- "$3"
}

# --- agent and identities ------------------------------------------------------------------------

softhsm_setup tlsgo
testca_init
server_cert_setup
agent_config
declare -A TYPE=([p256]=ec-p256 [p384]=ec-p384 [rsa2048]=rsa-2048 [rsa3072]=rsa-3072 [ed]=ed25519)
declare -A KEYTYPE=([p256]=ECDSA [p384]=ECDSA [rsa2048]=RSA [rsa3072]=RSA [ed]=Ed25519)
IDS="p256 p384 rsa2048 rsa3072 ed"
for id in $IDS; do
	agent_identity "$id"
done
agent_start
for id in $IDS; do
	identity_setup "$id" "${TYPE[$id]}"
	identity_files "$id"
done
provider_env
ROOT_CN=$(openssl x509 -in "$CA_DIR/root.crt" -noout -subject -nameopt multiline |
	sed -n 's/^ *commonName *= *//p')

go_start go12 -client-ca "$CA_DIR/root.crt" -min 1.2 -max 1.2
go_start go13 -client-ca "$CA_DIR/root.crt" -min 1.3 -max 1.3

# get SERVER ID VERSION SCHEME_ERE [CURL_ARGS...]: curl as ID (key reference
# file + chain) to SERVER must get the page; Go must report ID's certificate
# (CN, serial, key type) verified to the test root, over VERSION, without
# resumption; the agent must have logged exactly one signature for ID in the
# meantime, made for curl, with a scheme matching SCHEME_ERE. Leaves that
# scheme in $SCHEME.
get() {
	local srv=$1 id=$2 ver=$3 want=$4 what n0 g0 lines rc=0
	shift 4
	what="$id via $srv${*:+ ($*)}"
	n0=$(nlines "$AGENT_LOG")
	g0=$(nlines "${GO_LOG[$srv]}")
	go_get "$srv" --cert "$TLS_DIR/$id.chain.pem" --key "$TLS_DIR/$id.keyref.pem" "$@" || rc=$?
	if [ "$rc" -ne 0 ]; then
		show_log "${GO_LOG[$srv]}" 20
		fail "$what: curl failed (exit $rc): $CURL_ERR"
	fi
	assert_eq "$(field cn)" "$id" "$what: CN of the client certificate Go verified"
	assert_eq "$(hexnorm "$(field serial)")" "$(hexnorm "$(cert_serial "$TLS_DIR/$id.chain.pem")")" \
		"$what: serial of the certificate Go verified"
	assert_eq "$(field keytype)" "${KEYTYPE[$id]}" "$what: key type Go saw"
	assert_eq "$(field root)" "$ROOT_CN" "$what: root Go verified the chain to"
	assert_eq "$(field version)" "$ver" "$what: protocol"
	assert_eq "$(field resumed)" false "$what: resumed"
	assert_eq "$(lines_after "${GO_LOG[$srv]}" "$g0")" "mtls-server: accepted cn=$id version=$ver cipher=$(field cipher)" \
		"$what: Go server log"
	lines=$(lines_after "$AGENT_LOG" "$n0" | grep 'audit: sign identity=' || true)
	[ -n "$lines" ] || fail "$what: Go accepted the handshake but the agent logged no signature"
	[ "$(printf '%s\n' "$lines" | awk 'END { print NR }')" -eq 1 ] ||
		fail "$what: one handshake, but the agent logged more than one signature: $lines"
	assert_match "$lines" "audit: sign identity=$id uid=[0-9]+ pid=[0-9]+ exe=[^ ]*/curl scheme=[a-z0-9_]+ result=ok" \
		"$what: the agent's audit line"
	SCHEME=$(printf '%s\n' "$lines" | sed -n 's/.* scheme=\([a-z0-9_]*\) .*/\1/p')
	assert_match "$SCHEME" "$want" "$what: scheme the agent signed with"
	log "ok: $what: Go verified CN=$id, $ver, $(field cipher); agent signed $SCHEME"
}

# --- every key type, TLS 1.3 and 1.2 ----------------------------------------------------------------
# TLS 1.3 ties ECDSA to the curve's hash and allows only RSA-PSS for RSA
# (RFC 8446 section 4.2.3). In TLS 1.2 OpenSSL takes the first of the
# server's signature algorithms that fits, and Go 1.19 lists
# rsa_pss_rsae_sha256 and ecdsa_secp256r1_sha256 (0x0403) first: in TLS 1.2
# that code point means ECDSA with SHA-256 on any curve, so the P-384 key
# signs with SHA-256 there and the agent names the scheme by its code point.
# Both versions use RSA-PSS (SHA-256) for RSA.
get go13 p256 TLSv1.3 '^ecdsa_secp256r1_sha256$'
get go12 p256 TLSv1.2 '^ecdsa_secp256r1_sha256$'
get go13 p384 TLSv1.3 '^ecdsa_secp384r1_sha384$'
get go12 p384 TLSv1.2 '^ecdsa_secp256r1_sha256$'
for id in rsa2048 rsa3072; do
	get go13 "$id" TLSv1.3 '^rsa_pss_rsae_sha256$'
	get go12 "$id" TLSv1.2 '^rsa_pss_rsae_sha256$'
done
get go13 ed TLSv1.3 '^ed25519$'
get go12 ed TLSv1.2 '^ed25519$'

# The cipher suites Go chose are ones the version allows (the server key is EC P-256).
get go13 p256 TLSv1.3 '^ecdsa_secp256r1_sha256$'
assert_match "$(field cipher)" '^TLS_(AES_128_GCM_SHA256|AES_256_GCM_SHA384|CHACHA20_POLY1305_SHA256)$' "TLS 1.3 cipher suite"
get go12 p256 TLSv1.2 '^ecdsa_secp256r1_sha256$'
assert_match "$(field cipher)" '^TLS_ECDHE_ECDSA_WITH_' "TLS 1.2 cipher suite"

# SHA-384 suites: TLS 1.3 signs a 48-byte transcript hash; TLS 1.2 a SHA-384 PRF handshake.
get go13 rsa2048 TLSv1.3 '^rsa_pss_rsae_sha256$' --tls13-ciphers TLS_AES_256_GCM_SHA384
assert_eq "$(field cipher)" TLS_AES_256_GCM_SHA384 "curl --tls13-ciphers TLS_AES_256_GCM_SHA384: cipher suite"
get go13 p384 TLSv1.3 '^ecdsa_secp384r1_sha384$' --tls13-ciphers TLS_AES_256_GCM_SHA384
assert_eq "$(field cipher)" TLS_AES_256_GCM_SHA384 "curl --tls13-ciphers TLS_AES_256_GCM_SHA384: cipher suite"
get go12 rsa2048 TLSv1.2 '^rsa_pss_rsae_sha256$' --ciphers ECDHE-ECDSA-AES256-GCM-SHA384
assert_eq "$(field cipher)" TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 "curl --ciphers ECDHE-ECDSA-AES256-GCM-SHA384: cipher suite"

# --- controls: what Go must refuse ----------------------------------------------------------------

# refused SERVER WHAT ERE [CURL_ARGS...]: curl must fail against SERVER, which
# must log a handshake error matching ERE and accept nothing meanwhile.
refused() {
	local srv=$1 what=$2 ere=$3 n0 new
	shift 3
	n0=$(nlines "${GO_LOG[$srv]}")
	if go_get "$srv" "$@"; then
		fail "$what: Go server $srv accepted the request: $(tr '\n' ' ' <"$TLS_DIR/go.page")"
	fi
	# Go logs the handshake error once its side of the connection is done: bounded wait.
	wait_until 5 log_added "${GO_LOG[$srv]}" "$n0" "$ere" || true
	new=$(lines_after "${GO_LOG[$srv]}" "$n0")
	assert_match "$new" "http: TLS handshake error from 127\.0\.0\.1:[0-9]+: .*$ere" "$what: Go server $srv log"
	assert_not_contains "$new" "accepted " "$what: Go server $srv log"
	log "ok: $what: refused (curl: $CURL_ERR; Go: $(printf '%s\n' "$new" | grep -m1 -oE 'tls: .*'))"
}

# The version is the server's choice: the TLS 1.3-only server refuses TLS 1.2.
refused go13 "TLS 1.2 client to the TLS 1.3-only server" 'client offered only unsupported versions' \
	--cert "$TLS_DIR/p256.chain.pem" --key "$TLS_DIR/p256.keyref.pem" --tls-max 1.2

# No client certificate at all.
refused go13 "no client certificate (TLS 1.3)" "didn't provide a certificate"
refused go12 "no client certificate (TLS 1.2)" "didn't provide a certificate"

# A server that trusts only the other CA: the agent's identities are refused ...
go_start goother -client-ca "$OTHER_CA_DIR/root.crt" -min 1.2 -max 1.3
for id in p256 rsa2048 ed; do
	refused goother "$id, server trusting another CA (TLS 1.3)" 'certificate signed by unknown authority' \
		--cert "$TLS_DIR/$id.chain.pem" --key "$TLS_DIR/$id.keyref.pem"
	refused goother "$id, server trusting another CA (TLS 1.2)" 'certificate signed by unknown authority' \
		--cert "$TLS_DIR/$id.chain.pem" --key "$TLS_DIR/$id.keyref.pem" --tls-max 1.2
done
# ... while a certificate from that CA (an ordinary key file) is accepted there,
file_client_cert stranger ec-p256 --ca "$OTHER_CA_DIR"
go_get goother --cert "$TLS_DIR/stranger.chain.pem" --key "$TLS_DIR/stranger.key" ||
	fail "the server trusting the other CA refused a certificate from it (exit $?): $CURL_ERR"
assert_eq "$(field cn)" stranger "server trusting the other CA: CN it verified"
log "ok: the server trusting the other CA accepts a client certificate from that CA"
# ... and refused by the servers that trust the test CA.
refused go13 "certificate from another CA (TLS 1.3)" 'certificate signed by unknown authority' \
	--cert "$TLS_DIR/stranger.chain.pem" --key "$TLS_DIR/stranger.key"
refused go12 "certificate from another CA (TLS 1.2)" 'certificate signed by unknown authority' \
	--cert "$TLS_DIR/stranger.chain.pem" --key "$TLS_DIR/stranger.key"

agent_stop
log "PASS (${SECONDS} s)"
