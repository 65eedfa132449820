#!/bin/bash
# EST enrollment (renew/enroll-est.c, driven by tests/est_client_check) against the test
# EST CA (tests/est-ca): cacerts, bootstrap with HTTP Basic, renewal over mTLS with key
# rotation, and each fault of the CA mapped to the outcome the scheduler acts on.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

BUILD=${top_builddir:-$TESTS_DIR/..}
EST_CA=$BUILD/tests/est-ca
EST_CHECK=$BUILD/tests/est_client_check
if [ ! -x "$EST_CA" ] || [ ! -x "$EST_CHECK" ]; then
	skip "tests/est-ca or tests/est_client_check not built (make check builds them)"
fi
need_cmd openssl
# Loopback only: a proxy from the caller's environment must not see these requests.
unset http_proxy https_proxy all_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY

cd "$WORK"
ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ec_key ca.key
openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj "/CN=EST test CA" \
	-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
	2>/dev/null || fail "cannot make the CA"
ec_key srv.key
openssl req -new -key srv.key -subj /CN=127.0.0.1 2>/dev/null |
	openssl x509 -req -CA ca.pem -CAkey ca.key -set_serial 7 -days 2 -out srv.pem \
		-extfile <(printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n') \
		2>/dev/null || fail "cannot make the server certificate"
PASSWORD=pw-$(od -An -N6 -tx1 /dev/urandom | tr -d ' ')
(umask 077 && printf '%s\n' "$PASSWORD" >pass && printf 'not-it\n' >wrong-pass)
ec_key key1.pem
ec_key key2.pem

"$EST_CA" --port-file port --tls-cert srv.pem --tls-key srv.key --ca-cert ca.pem \
	--ca-key ca.key --lifetime 3600 --fault-file faults --basic "device:$WORK/pass" \
	--log ca.log &
bg_track $!
wait_until 10 test -s port || fail "est-ca did not write its port file"
URL=https://127.0.0.1:$(cat port)/.well-known/est

# est EXPECTED_OUTCOME ARGS...: one transaction; the output is left in LAST_OUT.
est() {
	local expected=$1 outcome
	shift
	LAST_OUT=$(timeout -k 5 60 "$EST_CHECK" --url "$URL" --trust ca.pem "$@" 2>&1) || true
	outcome=$(sed -n 's/^outcome=\(.*\) retry_after=.*/\1/p' <<<"$LAST_OUT")
	[ "$outcome" = "$expected" ] ||
		fail "est_client_check $*: expected '$expected', got: $LAST_OUT"
}
renew() { est "$1" --renew --cert cur.pem --key key2.pem --new-key key2.pem "${@:2}"; }

assert_ok "$EST_CHECK" --url "$URL" --trust ca.pem --cacerts
assert_contains "$LAST_OUT" "cacerts[0]=/CN=EST test CA"

est "ok" --new-key key1.pem --subject /CN=device-1/O=tests --san DNS:device-1.test \
	--basic "device:$WORK/pass" --out cur.pem
assert_contains "$LAST_OUT" "msg=EST simpleenroll: certificate serial"
openssl x509 -in cur.pem -noout -ext subjectAltName | grep -q 'DNS:device-1.test' ||
	fail "the SAN of the CSR is not in the certificate"
est "not authorized" --new-key key1.pem --subject /CN=device-1/O=tests \
	--basic "device:$WORK/wrong-pass"
assert_contains "$LAST_OUT" "HTTP 401 from $URL"

# Renewal over mTLS with the current key, to a new key; then with that one.
est "ok" --renew --cert cur.pem --key key1.pem --new-key key2.pem --out next.pem
mv next.pem cur.pem
renew "ok" --out next.pem
mv next.pem cur.pem

fault() { printf '%s\n' "$1" >faults; }
fault "reject 1"
renew "rejected by the CA"
assert_contains "$LAST_OUT" "HTTP 400 from $URL: request rejected by policy"
fault "waiting 1 5"
renew "waiting for the CA"
assert_contains "$LAST_OUT" "retry_after=5"
renew "ok" # the fault is used up
for kind in http500 close garbage; do
	fault "$kind 1"
	renew "transient error"
done
for kind in wrongkey untrusted expired badsubject noeku; do
	fault "$kind 1"
	renew "bad certificate"
done
fault "delay 1 4"
renew "transient error" --timeout 1
assert_contains "$LAST_OUT" "timed out"
assert_contains "$(cat faults)" "delay 0 4"

# A certificate the CA did not issue does not authenticate a renewal.
openssl req -x509 -new -key key2.pem -subj /CN=device-1/O=tests -days 1 -out self.pem 2>/dev/null
est "not authorized" --renew --cert self.pem --key key2.pem --new-key key2.pem

assert_eq "$(grep -c 'issued serial=' ca.log)" 10 "certificates issued by est-ca"
assert_not_contains "$(cat ca.log)" "$PASSWORD" "the CA log"
log "all EST outcomes as expected"
