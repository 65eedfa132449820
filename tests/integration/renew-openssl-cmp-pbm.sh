#!/bin/bash
# Bootstrap by a MAC-protected IR (shared secret, PasswordBasedMac) against
# OpenSSL's own mock CMP server (`openssl cmp -port -srv_secret`), an
# independent verifier of the MAC. OpenSSL 3.0's client MACs requests with 500
# PBM iterations; the agent re-protects each one with CMP_PBM_ITERATIONS
# (renew/cmp-pbm.h, 100000). A small recording proxy between the agent and the
# mock server keeps every request (the mock server has no -reqout), and the
# IR's and certConf's iterationCount is read back with `openssl asn1parse`.
# The mock server hands out one fixed certificate (-rsp_cert), so the key is
# made first (keygen leaves it pending, and a bootstrap uses a pending key)
# with no bootstrap configured, and the certificate is issued for it. The mock
# server makes the agent poll twice (-poll_count 2, checkAfter 1 s): each pollReq is
# MAC-protected and re-protected too. The mock server binds every interface: the
# test runs in a private network namespace.
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

ITER=100000 # CMP_PBM_ITERATIONS in renew/cmp-pbm.h

testca_init
softhsm_setup pbm
(umask 077 && printf 'boot-secret-%s\n' "$(rand_token)" >"$WORK/boot.secret")
mport=$(free_port)
pport=$(free_port)
[ "$pport" != "$mport" ] || pport=$(free_port)
id_lines=("renew = cmp" "ca-url = http://127.0.0.1:$pport/pkix/" "ca-trust = $CA_DIR/root.crt"
	"subject = /CN=gw/O=mtls-agent tests" "key-type = ec-p256")

# 1. A pending key and a certificate for it, with no bootstrap configured (nothing enrolls).
agent_config
agent_identity gw "${id_lines[@]}"
agent_start
assert_ok ctl keygen gw --type ec-p256
ctl csr gw --subject "/CN=gw/O=mtls-agent tests" >"$WORK/next.csr" || fail "csr failed"
agent_stop
_csr_to_pem "$WORK/next.csr" "$WORK/next.csr.pem"
openssl x509 -req -in "$WORK/next.csr.pem" -CA "$CA_DIR/inter.crt" -CAkey "$CA_DIR/inter.key" \
	-set_serial 0x5eed -days 30 -sha256 -extfile "$CA_DIR/ca.cnf" -extensions leaf \
	-out "$WORK/next-leaf.pem" 2>"$WORK/issue.log" || { cat "$WORK/issue.log" >&2; fail "issuing failed"; }
new_fp=$(openssl x509 -in "$WORK/next-leaf.pem" -noout -fingerprint -sha256)

# 2. The mock server, verifying MACs with the secret, and the recording proxy in front of it.
openssl cmp -port "$mport" -srv_ref boot -srv_secret "file:$WORK/boot.secret" \
	-rsp_cert "$WORK/next-leaf.pem" -rsp_extracerts "$CA_DIR/inter.crt" -poll_count 2 -check_after 1 \
	-verbosity 7 \
	>"$WORK/mock.log" 2>&1 </dev/null &
bg_track $!
_wait_listen $! "$mport" 10 || {
	show_log "$WORK/mock.log"
	fail "openssl cmp -port did not listen on $mport"
}
mkdir -p "$WORK/reqs"
cat >"$WORK/proxy.py" <<'PY'
import http.server, sys, urllib.request
listen, upstream, outdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
count = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global count
        n = int(self.headers.get("Content-Length", "0"))
        if n <= 0 or n > 1 << 20:
            self.send_error(400)
            return
        body = self.rfile.read(n)
        count += 1
        with open("%s/req.%d.der" % (outdir, count), "wb") as f:
            f.write(body)
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (upstream, self.path), data=body,
                                     headers={"Content-Type": "application/pkixcmp"})
        with urllib.request.urlopen(req, timeout=20) as r:
            data = r.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/pkixcmp")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, fmt, *args):
        sys.stderr.write(fmt % args + "\n")
http.server.HTTPServer(("127.0.0.1", listen), H).serve_forever()
PY
python3 "$WORK/proxy.py" "$pport" "$mport" "$WORK/reqs" >"$WORK/proxy.log" 2>&1 </dev/null &
bg_track $!
_wait_listen $! "$pport" 10 || {
	show_log "$WORK/proxy.log"
	fail "the recording proxy did not listen on $pport"
}
log "openssl cmp mock server on port $mport, recording proxy on $pport"

# 3. Bootstrap: the agent enrolls at start with the pending key.
agent_config
agent_identity gw "${id_lines[@]}" "bootstrap = secret:boot:$WORK/boot.secret"
agent_start
wait_new_serial gw "" 40 >/dev/null
ctl cert gw >"$WORK/now.pem"
assert_eq "$(openssl x509 -in "$WORK/now.pem" -noout -fingerprint -sha256)" "$new_fp" "certificate after the IR"
grep -q "received IR" "$WORK/mock.log" || { show_log "$WORK/mock.log"; fail "the mock server saw no IR"; }
[ "$(grep -c "received POLLREQ" "$WORK/mock.log")" -eq 2 ] || {
	show_log "$WORK/mock.log"
	fail "the mock server did not get the two pollReqs it asked for"
}
grep -q "received CERTCONF" "$WORK/mock.log" || { show_log "$WORK/mock.log"; fail "the mock server saw no certConf"; }
grep -q "sending PKICONF" "$WORK/mock.log" || { show_log "$WORK/mock.log"; fail "the mock server sent no pkiConf"; }
assert_eq "$(status_field gw failures)" 0 "status failures"

# 4. What went over the wire: every request PBM-protected with ITER iterations, as parsed by
# openssl asn1parse (PBMParameter follows the OID: salt, owf, iterationCount, mac).
pbm_iterations() { # DER
	openssl asn1parse -inform DER -in "$1" |
		awk '/:PasswordBasedMAC|:password based MAC/ { pbm = 1; next }
		     pbm && /prim: INTEGER/ { sub(/.*:/, ""); print; exit }'
}
n=0
for req in "$WORK"/reqs/req.*.der; do
	[ -f "$req" ] || fail "the proxy recorded no request"
	n=$((n + 1))
	hex=$(pbm_iterations "$req")
	[ -n "$hex" ] || {
		openssl asn1parse -inform DER -in "$req" | head -40 >&2
		fail "$(basename "$req"): no PBM iterationCount found"
	}
	assert_eq "$((16#$hex))" "$ITER" "$(basename "$req") iterationCount"
	openssl asn1parse -inform DER -in "$req" | grep -q ":hmacWithSHA256" ||
		fail "$(basename "$req"): the PBM mac is not hmacWithSHA256"
done
[ "$n" -ge 4 ] || fail "expected the IR, two pollReqs and the certConf, the proxy saw $n requests"
log "OK: MAC-protected IR, pollReqs and certConf ($n requests) with iterationCount $ITER, verified by openssl cmp -port; certificate $new_fp installed"
agent_stop
