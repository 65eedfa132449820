#!/bin/bash
# A second, independent CMP peer: OpenSSL's own mock CMP server (`openssl cmp
# -port`) answers one KUR from the agent. The mock server always returns the
# one certificate it was given (-rsp_cert), so the test prepares it: a new key
# is made in the token first (keygen leaves it pending; a renewal reuses a
# pending key), and the test CA certifies that key. The mock server also only
# accepts a KUR whose oldCertId is the issuer and serial of that certificate,
# so it gets the old certificate's serial. The agent must send a KUR
# the mock server accepts (protection by the current key, checked against
# -srv_trusted; proof of possession by the pending key), verify the answer
# (protection by -srv_cert, chain to ca-trust, the pending key, the subject)
# and confirm it. Its genm after the KUR (root CA key update) gets the mock
# server's echo, which is no update. The mock server binds every interface, so the whole test
# runs in a private network namespace (unshare -n) with only loopback up.
set -eu
export NETNS_FOR="openssl cmp -port"
# shellcheck source=../netns.sh
. "$(dirname "$0")/../netns.sh"
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_cmd python3

testca_init
softhsm_setup ossl
port=$(free_port)
agent_config
agent_identity gw "renew = cmp" "ca-url = http://127.0.0.1:$port/pkix/" "ca-trust = $CA_DIR/root.crt"
agent_start
identity_setup gw ec-p256
old_serial=$(current_serial gw)
ctl cert gw >"$WORK/old.pem"
openssl x509 -in "$WORK/old.pem" -out "$WORK/old-leaf.pem"

# The certificate the mock server will hand out: for the pending key.
assert_ok ctl keygen gw --type ec-p256
ctl csr gw --subject "/CN=gw/O=mtls-agent tests" >"$WORK/next.csr" || fail "csr failed"
_csr_to_pem "$WORK/next.csr" "$WORK/next.csr.pem"
openssl x509 -req -in "$WORK/next.csr.pem" -CA "$CA_DIR/inter.crt" -CAkey "$CA_DIR/inter.key" \
	-set_serial "0x$old_serial" -days 30 -sha256 -extfile "$CA_DIR/ca.cnf" -extensions leaf \
	-out "$WORK/next-leaf.pem" 2>"$WORK/issue.log" || { cat "$WORK/issue.log" >&2; fail "issuing failed"; }
new_fp=$(openssl x509 -in "$WORK/next-leaf.pem" -noout -fingerprint -sha256)

openssl cmp -port "$port" -srv_cert "$CA_DIR/inter.crt" -srv_key "$CA_DIR/inter.key" \
	-srv_trusted "$CA_DIR/root.crt" -srv_untrusted "$CA_DIR/inter.crt" \
	-rsp_cert "$WORK/next-leaf.pem" -rsp_extracerts "$CA_DIR/inter.crt" -verbosity 7 \
	>"$WORK/mock.log" 2>&1 </dev/null &
bg_track $!
_wait_listen $! "$port" 10 || {
	show_log "$WORK/mock.log"
	fail "openssl cmp -port did not listen on $port"
}
log "openssl cmp mock server on port $port"

assert_ok ctl renew gw
ctl cert gw >"$WORK/now.pem"
assert_eq "$(openssl x509 -in "$WORK/now.pem" -noout -fingerprint -sha256)" "$new_fp" "certificate after the KUR"
cert_pubkey "$WORK/next-leaf.pem" "$WORK/next.pub"
identity_pubkey gw "$WORK/now.pub"
cmp -s "$WORK/next.pub" "$WORK/now.pub" || fail "the installed certificate is not the mock server's"
grep -q "received KUR" "$WORK/mock.log" || { show_log "$WORK/mock.log"; fail "the mock server saw no KUR"; }
# After the KUR, the root CA key update genm (RFC 9480 4.3): OpenSSL 3.0's mock server has
# no such service (3.2 added -newwithnew etc.) and echoes the genm's InfoTypeAndValue, which
# is no rootCaKeyUpdate: the renewal goes on, nothing said above debug level.
grep -q "received GENM" "$WORK/mock.log" || { show_log "$WORK/mock.log"; fail "the mock server saw no genm"; }
grep -q "sending GENP" "$WORK/mock.log" || { show_log "$WORK/mock.log"; fail "the mock server sent no genp"; }
! grep "root CA key update" "$AGENT_LOG" | grep -qv debug || fail "the mock server's genp caused a log line above debug"
grep -q "received CERTCONF" "$WORK/mock.log" || { show_log "$WORK/mock.log"; fail "the mock server saw no certConf"; }
grep -q "sending PKICONF" "$WORK/mock.log" || { show_log "$WORK/mock.log"; fail "the mock server sent no pkiConf"; }
assert_eq "$(status_field gw failures)" 0 "status failures"
log "OK: KUR to openssl cmp -port: new certificate ($new_fp) for the pending key, certConf/pkiConf exchanged"
agent_stop
