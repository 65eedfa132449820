#!/bin/bash
# Sets up a private SoftHSM token, the agent and a p11-kit RPC server on it,
# then runs bench/sign-bench. Usage: bench/run-sign-bench.sh [BUILD_DIR]
# Not a test: prints figures and ratios, asserts nothing about time.
# SCRAPE_HZ=N: the agent also serves metrics-listen on a loopback port and a
# scraper GETs /metrics N times a second during the run (docs/METRICS.md).
set -euo pipefail
BUILD=$(cd "${1:-$(dirname "$0")/../build}" && pwd)
MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
RPC_MODULE=${RPC_MODULE:-/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so}
W=$(mktemp -d /tmp/mtls-bench.XXXXXX)
AGENT_PID='' SERVER_PID='' SCRAPER_PID=''
SCRAPE_HZ=${SCRAPE_HZ:-0}
cleanup() {
	[ -z "$SCRAPER_PID" ] || kill "$SCRAPER_PID" 2>/dev/null || true
	[ -z "$AGENT_PID" ] || kill "$AGENT_PID" 2>/dev/null || true
	[ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT
chmod 755 "$W"
mkdir -p "$W/tokens" "$W/run" "$W/state"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$W" >"$W/softhsm2.conf"
export SOFTHSM2_CONF=$W/softhsm2.conf
softhsm2-util --init-token --free --label bench --so-pin 1234 --pin 1111 >/dev/null
printf 1111 >"$W/pin"
chmod 600 "$W/pin"
cat >"$W/agent.conf" <<CONF
[agent]
socket = $W/run/agent.sock
state-dir = $W/state
admin-users = root
$([ "$SCRAPE_HZ" = 0 ] || printf 'metrics-listen = 127.0.0.1:%s\nmetrics-identities = yes\n' "${SCRAPE_PORT:-29464}")
[keystore "hsm"]
type = pkcs11
module = $MODULE
token = bench
pin-file = $W/pin
[identity "bench-p256"]
keystore = hsm
key = pkcs11:object=bench-p256
allow-users = root
[identity "bench-rsa"]
keystore = hsm
key = pkcs11:object=bench-rsa
allow-users = root
CONF
chmod 600 "$W/agent.conf"
"$BUILD/mtls-agent" -f -c "$W/agent.conf" 2>"$W/agent.log" &
AGENT_PID=$!
for _ in $(seq 50); do "$BUILD/mtls-agentctl" -s "$W/run/agent.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
"$BUILD/mtls-agentctl" -s "$W/run/agent.sock" keygen bench-p256 --type ec-p256 >/dev/null
"$BUILD/mtls-agentctl" -s "$W/run/agent.sock" keygen bench-rsa --type rsa-2048 >/dev/null
p11-kit server -f --provider "$MODULE" -n "$W/run/p11kit.sock" "pkcs11:token=bench" >/dev/null 2>"$W/p11kit.log" &
SERVER_PID=$!
for _ in $(seq 50); do [ -S "$W/run/p11kit.sock" ] && break; sleep 0.1; done
export P11_KIT_SERVER_ADDRESS="unix:path=$W/run/p11kit.sock"
if [ "$SCRAPE_HZ" != 0 ]; then
	python3 - "${SCRAPE_PORT:-29464}" "$SCRAPE_HZ" >"$W/scrapes" <<'PY' &
import sys, time, urllib.request
url, period, n = "http://127.0.0.1:%s/metrics" % sys.argv[1], 1.0 / float(sys.argv[2]), 0
try:
    while True:
        urllib.request.urlopen(url, timeout=5).read()
        n += 1
        print(n, flush=True)
        time.sleep(period)
except KeyboardInterrupt:
    pass
PY
	SCRAPER_PID=$!
fi
echo "machine: $(nproc) CPUs, $(uname -r); SoftHSM $(dpkg-query -W -f '${Version}' softhsm2 2>/dev/null || echo '?')"
"$BUILD/bench/sign-bench" "$W/run/agent.sock" "$AGENT_PID" "$MODULE" "$RPC_MODULE" bench 1111
if [ -n "$SCRAPER_PID" ]; then
	echo "scrapes of /metrics during the run: $(tail -n 1 "$W/scrapes" 2>/dev/null || echo 0) at ${SCRAPE_HZ}/s"
fi
