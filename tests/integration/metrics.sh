#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# Metrics and the audit trail (docs/METRICS.md):
#  - `mtls-agentctl metrics` passes `promtool check metrics`, counts exactly the
#    signatures and refusals made, agrees with `status --json`, and shows a
#    non-administrator only the identities it may use;
#  - metrics-listen serves GET /metrics over HTTP (400/404/405 otherwise), and a
#    real Prometheus server scraping it returns the same values through its API;
#  - a forced renewal (CMP test CA) and a failed one show in the renewal series;
#  - every signature, refusal and import-cert leaves one audit line.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"

need_cmd promtool
need_cmd curl
need_cmd python3

softhsm_setup metrics
testca_init
cmp_ca_start --days 30
renew_lines cmp
MPORT=$(free_port)
agent_config "socket-mode = 0666" "metrics-listen = 127.0.0.1:$MPORT" "metrics-identities = yes"
agent_identity gw
agent_identity fornobody "allow-users = nobody"
agent_identity rn "${RENEW_LINES[@]}"
agent_start
identity_setup gw ec-p256
# fornobody's certificate expires in 3 days: the expiry alert must pick it up.
assert_ok ctl keygen fornobody --type ec-p256
ctl csr fornobody --subject /CN=fornobody >"$WORK/fornobody.csr" || fail "csr fornobody failed"
testca_issue "$WORK/fornobody.csr" "$WORK/fornobody.chain.pem" --days 3
assert_ok ctl import-cert fornobody "$WORK/fornobody.chain.pem"
S=ecdsa_secp256r1_sha256

make_cv13 "$WORK/cv"
make_cv13 "$WORK/server-cv" 32 server
sign_ok() { assert_ok ctl sign gw --scheme "$S" --in "$WORK/cv" --out "$WORK/sig"; }
sign_refused() { assert_fails ctl sign gw --scheme "$S" --in "$WORK/server-cv" --out "$WORK/sig"; }
identity_setup rn ec-p256
# A renewal now (it succeeds), then one the CA rejects.
BEFORE_RENEW=$(date +%s)
assert_ok ctl renew rn
RENEWED_AT=$(date +%s)
# The CA keeps rejecting until the checks below are done: the scheduler retries a failed
# renewal by itself after 1-60 s, and that retry must not succeed meanwhile.
ca_fault reject 1000
assert_fails ctl renew rn
for _ in 1 2 3; do sign_ok; done
sign_refused
sign_refused

# Value of the series SERIES (exact name{labels}) in FILE.
series() { # FILE SERIES
	awk -v s="$2" '$1 == s { print $2; found = 1 } END { exit !found }' "$1" ||
		fail "series $2 missing from $1"
}

# --- the example alert rules of docs/METRICS.md ----------------------------------------------
RULES=${top_srcdir:-$TESTS_DIR/../..}/docs/mtls-agent-alerts.yml
promtool check rules "$RULES" >"$WORK/rules.out" 2>&1 || fail "promtool check rules: $(cat "$WORK/rules.out")"
python3 - "${top_srcdir:-$TESTS_DIR/../..}/docs/METRICS.md" "$RULES" <<'PY' || fail "docs/METRICS.md and docs/mtls-agent-alerts.yml differ"
import re, sys
doc = re.search(r"```yaml\n(.*?)```", open(sys.argv[1]).read(), re.S).group(1)
sys.exit(doc != open(sys.argv[2]).read())
PY

# --- mtls-agentctl metrics -----------------------------------------------------------------
ctl metrics >"$WORK/m.txt" || fail "mtls-agentctl metrics failed"
promtool check metrics <"$WORK/m.txt" >"$WORK/promtool.out" 2>&1 ||
	fail "promtool check metrics: $(cat "$WORK/promtool.out")"
[ ! -s "$WORK/promtool.out" ] || fail "promtool check metrics complains: $(cat "$WORK/promtool.out")"
assert_eq "$(series "$WORK/m.txt" 'mtls_agent_signatures_total{identity="gw",result="ok"}')" 3 "ok signatures"
assert_eq "$(series "$WORK/m.txt" 'mtls_agent_signatures_total{identity="gw",result="refused"}')" 2 "refused signatures"
assert_eq "$(series "$WORK/m.txt" 'mtls_agent_signatures_total{identity="gw",result="error"}')" 0 "failed signatures"
assert_eq "$(series "$WORK/m.txt" 'mtls_agent_sign_duration_seconds_count{identity="gw"}')" 3 "histogram count"
assert_eq "$(series "$WORK/m.txt" 'mtls_agent_sign_duration_seconds_bucket{identity="gw",le="+Inf"}')" 3 "+Inf bucket"
NA=$(cert_not_after "$WORK/gw.chain.pem")
NB=$(date -u -d "$(openssl x509 -in "$WORK/gw.chain.pem" -noout -startdate | cut -d= -f2)" +%s)
assert_eq "$(series "$WORK/m.txt" 'mtls_agent_certificate_not_after_seconds{identity="gw"}')" "$NA" "notAfter"
assert_eq "$(series "$WORK/m.txt" 'mtls_agent_certificate_not_before_seconds{identity="gw"}')" "$NB" "notBefore"
assert_eq "$(series "$WORK/m.txt" 'mtls_agent_keystore_up{keystore="hsm",type="pkcs11"}')" 1 "keystore up"
assert_eq "$(series "$WORK/m.txt" 'mtls_agent_identities')" 3 "identities"
# The connection of `ctl metrics` itself is open while it renders.
assert_eq "$(series "$WORK/m.txt" 'mtls_agent_clients_connected')" 1 "clients connected"
assert_contains "$(cat "$WORK/m.txt")" 'mtls_agent_build_info{version="' "build info"
LAST_OK=$(series "$WORK/m.txt" 'mtls_agent_renewal_last_success_seconds{identity="rn"}')
# (the renewal thread may record the time a moment after answering)
[ "$LAST_OK" -ge "$BEFORE_RENEW" ] && [ "$LAST_OK" -le $((RENEWED_AT + 5)) ] ||
	fail "renewal last success $LAST_OK, renewed between $BEFORE_RENEW and $RENEWED_AT"
FAILS=$(series "$WORK/m.txt" 'mtls_agent_renewal_failures{identity="rn"}')
[ "$FAILS" -ge 1 ] || fail "renewal failures $FAILS after a rejected renewal"
assert_eq "$(series "$WORK/m.txt" 'mtls_agent_renewal_state{identity="rn",state="failing"}')" 1 "renewal state failing"
assert_eq "$(series "$WORK/m.txt" 'mtls_agent_renewal_state{identity="rn",state="ok"}')" 0 "renewal state ok"
NEXT=$(series "$WORK/m.txt" 'mtls_agent_renewal_next_attempt_seconds{identity="rn"}')
[ "$NEXT" -gt "$RENEWED_AT" ] || fail "next renewal attempt $NEXT is not in the future"
assert_not_contains "$(cat "$WORK/m.txt")" 'mtls_agent_renewal_failures{identity="gw"}' "renewal series of an identity without renew"
ca_fault_clear

# One source of truth: status --json counts the same.
ctl status --json >"$WORK/status.json" || fail "status --json failed"
python3 - "$WORK/status.json" <<'PY' || fail "status --json disagrees with metrics"
import json, sys
st = json.load(open(sys.argv[1]))
text = json.dumps(st)
gw = None
def walk(o):
    global gw
    if isinstance(o, dict):
        if o.get("name") == "gw" and "fields" in o:
            gw = o["fields"]
        for v in o.values():
            walk(v)
    elif isinstance(o, list):
        for v in o:
            walk(v)
walk(st)
assert gw is not None, text
assert gw["signatures"] == "3" and gw["refused"] == "2", gw
PY

# A non-administrator sees its identities only, and no keystores.
nobody_prepare
nobody_ctl metrics >"$WORK/m-nobody.txt" || fail "metrics as nobody failed"
promtool check metrics <"$WORK/m-nobody.txt" || fail "promtool: metrics as nobody"
assert_not_contains "$(cat "$WORK/m-nobody.txt")" 'identity="gw"' "nobody sees gw"
assert_contains "$(cat "$WORK/m-nobody.txt")" 'identity="fornobody"' "nobody sees its identity"
assert_not_contains "$(cat "$WORK/m-nobody.txt")" 'mtls_agent_keystore_up' "nobody sees keystores"

# --- metrics-listen ------------------------------------------------------------------------
URL=http://127.0.0.1:$MPORT/metrics
curl -fsS --max-time 10 -o "$WORK/h.txt" -D "$WORK/h.hdr" "$URL" || fail "GET $URL failed"
assert_contains "$(cat "$WORK/h.hdr")" 'Content-Type: text/plain; version=0.0.4' "content type"
promtool check metrics <"$WORK/h.txt" || fail "promtool: HTTP metrics"
assert_eq "$(series "$WORK/h.txt" 'mtls_agent_signatures_total{identity="gw",result="ok"}')" 3 "HTTP ok signatures"
code() { curl -s --max-time 10 -o /dev/null -w '%{http_code}' "$@"; }
assert_eq "$(code "http://127.0.0.1:$MPORT/other")" 404 "other path"
assert_eq "$(code -X POST "$URL")" 405 "POST"
# A malformed request line, and a request head over the 8 KiB cap.
raw_http() { # REQUEST-BYTES-FILE
	python3 - "$MPORT" "$1" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
try:
    s.sendall(open(sys.argv[2], "rb").read())
except OSError:
    pass
print(s.recv(100).decode(errors="replace").split("\r\n")[0])
PY
}
printf 'GARBAGE\r\n\r\n' >"$WORK/bad.req"
assert_eq "$(raw_http "$WORK/bad.req")" "HTTP/1.1 400 Bad Request" "bad request line"
{ printf 'GET /metrics HTTP/1.1\r\nX: '; head -c 9000 /dev/zero | tr '\0' a; printf '\r\n\r\n'; } >"$WORK/big.req"
assert_eq "$(raw_http "$WORK/big.req")" "HTTP/1.1 431 Request Header Fields Too Large" "oversized request"
# A client that never finishes its request does not block the listener for long.
python3 - "$MPORT" <<'PY' &
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET /metrics HTTP/1.1\r\n")
time.sleep(8)
PY
bg_track $!
sleep 0.5
START=$SECONDS
curl -fsS --max-time 15 -o /dev/null "$URL" || fail "GET after a stalled client failed"
[ $((SECONDS - START)) -le 7 ] || fail "a stalled client held the listener $((SECONDS - START)) s"
agent_alive || fail "agent died serving bad HTTP requests"

# --- a real Prometheus scrapes it ------------------------------------------------------------
if command -v prometheus >/dev/null 2>&1; then
	PPORT=$(free_port)
	mkdir -p "$WORK/prom"
	cat >"$WORK/prometheus.yml" <<EOT
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ['$RULES']
scrape_configs:
  - job_name: mtls-agent
    static_configs:
      - targets: ['127.0.0.1:$MPORT']
EOT
	prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prom" \
		--web.listen-address="127.0.0.1:$PPORT" >"$WORK/prometheus.log" 2>&1 &
	bg_track $!
	# Value of an instant query (first result), "" when none yet.
	pq() {
		curl -s --max-time 5 "http://127.0.0.1:$PPORT/api/v1/query" --data-urlencode "query=$1" |
			python3 -c 'import json,sys
d = json.load(sys.stdin)
r = d.get("data", {}).get("result", [])
print(r[0]["value"][1] if r else "")' 2>/dev/null || true
	}
	pq_is() { [ "$(pq "$1")" = "$2" ]; }
	wait_until 60 pq_is 'mtls_agent_signatures_total{identity="gw",result="ok"}' 3 ||
		fail "Prometheus never saw 3 signatures (log: $(tail -5 "$WORK/prometheus.log"))"
	for _ in 1 2; do sign_ok; done
	sign_refused
	wait_until 30 pq_is 'mtls_agent_signatures_total{identity="gw",result="ok"}' 5 ||
		fail "Prometheus did not see 5 signatures: $(pq 'mtls_agent_signatures_total{identity="gw",result="ok"}')"
	wait_until 30 pq_is 'mtls_agent_signatures_total{identity="gw",result="refused"}' 3 ||
		fail "Prometheus did not see 3 refusals"
	assert_eq "$(pq 'mtls_agent_certificate_not_after_seconds{identity="gw"}')" "$NA" "Prometheus notAfter"
	assert_eq "$(pq 'mtls_agent_sign_duration_seconds_count{identity="gw"}')" 5 "Prometheus histogram count"
	assert_eq "$(pq 'up{job="mtls-agent"}')" 1 "Prometheus target up"
	# The scheduler retries the rejected renewal by itself (under load within this test), so
	# compare with what the agent says now rather than with the values read earlier.
	agent_now() { ctl metrics | awk -v s="$1" '$1 == s { print $2 }'; }
	prom_is_agent() { [ "$(pq "$1")" = "$(agent_now "$1")" ]; }
	for q in 'mtls_agent_renewal_last_success_seconds{identity="rn"}' \
		'mtls_agent_renewal_failures{identity="rn"}' 'mtls_agent_renewal_next_attempt_seconds{identity="rn"}'; do
		wait_until 20 prom_is_agent "$q" || fail "Prometheus has $q = $(pq "$q"), the agent $(agent_now "$q")"
	done
	[ "$(pq 'mtls_agent_renewal_last_success_seconds{identity="rn"}')" -ge "$LAST_OK" ] ||
		fail "Prometheus renewal last success went back in time"
	# The example rules load and evaluate against real series: the keystore is up, so no alert.
	assert_eq "$(pq 'count(ALERTS{alertname="MtlsAgentKeystoreDown"})')" "" "keystore-down alert"
	assert_eq "$(pq 'count(mtls_agent_keystore_up == 1)')" 1 "keystore up in Prometheus"
	wait_until 30 pq_is 'count(ALERTS{alertname="MtlsAgentCertificateExpiresSoon",identity="fornobody"})' 1 ||
		fail "no expiry alert for the 3-day certificate"
	assert_eq "$(pq 'count(ALERTS{alertname="MtlsAgentCertificateExpiresSoon",identity="gw"})')" "" "expiry alert for the 30-day certificate"
	log "Prometheus on 127.0.0.1:$PPORT scraped the agent: 5 ok, 3 refused"
else
	log "NOTE: prometheus not installed: the scrape through a real server is not checked"
	for _ in 1 2; do sign_ok; done
	sign_refused
fi

# --- audit trail (plain lines: this agent's stderr is not the journal) -----------------------
assert_eq "$(log_count 'audit: sign identity=gw uid=0 pid=[0-9]+ exe=[^ ]*mtls-agentctl scheme=ecdsa_secp256r1_sha256 result=ok')" 5 "audit lines for signatures"
assert_eq "$(log_count 'audit: sign identity=gw .*result=refused reason=".+"')" 3 "audit lines for refusals"
assert_eq "$(log_count 'audit: import-cert identity=gw uid=0 .*result=ok')" 1 "audit line for import-cert"
assert_eq "$(log_count 'audit: keygen identity=gw uid=0 .*result=ok')" 1 "audit line for keygen"
agent_stop

# --- TCP without metrics-identities: agent-wide and keystore series only ---------------------
sed -i '/^metrics-identities = /d' "$CONF"
sed -i 's|^\[agent\]$|[agent]\nmax-clients-per-uid = 1|' "$CONF"
agent_start
# One connection held open; the next one of the same uid is refused and counted.
python3 - "$SOCK" "$WORK/held" <<'PY' &
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
open(sys.argv[2], "w").close()
time.sleep(20)
PY
bg_track $!
wait_until 10 test -e "$WORK/held" || fail "could not hold a connection"
sleep 0.3
assert_fails ctl status
curl -fsS --max-time 10 -o "$WORK/anon.txt" "$URL" || fail "GET $URL (no metrics-identities) failed"
assert_eq "$(series "$WORK/anon.txt" 'mtls_agent_connections_refused_total')" 1 "refused connections"
assert_eq "$(series "$WORK/anon.txt" 'mtls_agent_clients_connected')" 1 "clients connected (one held)"
promtool check metrics <"$WORK/anon.txt" || fail "promtool: metrics without identities"
assert_not_contains "$(cat "$WORK/anon.txt")" 'identity="' "TCP scrape without metrics-identities"
assert_eq "$(series "$WORK/anon.txt" 'mtls_agent_keystore_up{keystore="hsm",type="pkcs11"}')" 1 "keystore up (TCP, no identities)"
agent_stop

# --- a Unix socket: the scraper's credentials decide, as for mtls-agentctl metrics ------------
sed -i "s|^metrics-listen = .*|metrics-listen = $WORK/metrics.sock|" "$CONF"
agent_start
[ -S "$WORK/metrics.sock" ] || fail "no metrics socket at $WORK/metrics.sock"
curl -fsS --max-time 10 --unix-socket "$WORK/metrics.sock" -o "$WORK/unix-root.txt" http://localhost/metrics ||
	fail "GET /metrics on the Unix socket as root failed"
assert_contains "$(cat "$WORK/unix-root.txt")" 'mtls_agent_signatures_total{identity="gw",result="ok"} 0' "root (admin) on the Unix socket"
run_as_nobody curl -fsS --max-time 10 --unix-socket "$WORK/metrics.sock" http://localhost/metrics >"$WORK/unix-nobody.txt" ||
	fail "GET /metrics on the Unix socket as nobody failed"
promtool check metrics <"$WORK/unix-nobody.txt" || fail "promtool: Unix socket as nobody"
assert_not_contains "$(cat "$WORK/unix-nobody.txt")" 'identity="gw"' "nobody on the Unix socket sees gw"
assert_contains "$(cat "$WORK/unix-nobody.txt")" 'identity="fornobody"' "nobody on the Unix socket sees its identity"
agent_stop
[ ! -e "$WORK/metrics.sock" ] || fail "the agent left its metrics socket behind"
