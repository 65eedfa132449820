#!/bin/bash
# TPM benchmark (not a test: prints medians and ratios, asserts nothing about
# time). On swtpm, with the agent's TPM keystore:
#
# 1. Signature latency, P-256 (ECDSA) and RSA-2048 (PSS), over a 130-byte TLS
#    1.3 CertificateVerify content: direct in-process ESYS with the key loaded
#    once, vs through the agent (mtls_agent_sign), interleaved in rounds
#    (bench/tpm-bench sign).
# 2. Full mTLS TLS 1.3 handshakes per second (fresh connection, no resumption)
#    from one long-lived client process per configuration to
#    `openssl s_server -Verify 1 -verify_return_error -www`, batches given to
#    every configuration in turn (bench/tpm-bench tls):
#      agent        key in the agent (mtlsagent provider, key reference file)
#      tpm2-abrmd   tpm2-openssl in-process, the same TSS2 key file, through
#                   tpm2-abrmd (session D-Bus, no systemd needed)
#      file         a software key file (the control: what a handshake costs)
#
# swtpm has no resource manager (every client's objects share 3 slots, and the
# agent flushes objects that are not its own), so each route gets its own
# swtpm, all started from one cloned state (same seeds: the same SRK, so
# every key file loads in every one). The swtpm TCTI opens a TCP connection
# for every TPM command: both the direct and the agent route pay that.
#
# usage: bench/run-tpm-bench.sh [BUILD_DIR]
# Environment: ROUNDS (10), OPS (100 signatures per batch), HANDSHAKES (20 per
# batch), TPM_BENCH (default BUILD_DIR/bench/tpm-bench), KEEP_WORKDIR=1.
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-$SRC/build}" && pwd)
TB=${TPM_BENCH:-$BUILD/bench/tpm-bench}
ROUNDS=${ROUNDS:-10}
OPS=${OPS:-100}
HS=${HANDSHAKES:-20}
PROVIDER=${MTLS_PROVIDER_MODULE:-$BUILD/provider/.libs/mtlsagent.so}

die() {
	printf 'run-tpm-bench: %s\n' "$*" >&2
	exit 1
}
[ -x "$TB" ] || die "bench program not found: $TB (build it: see bench/tpm-bench.c, or set TPM_BENCH)"
[ -f "$PROVIDER" ] || die "provider module not found: $PROVIDER"
for c in swtpm swtpm_ioctl openssl python3 ss timeout; do
	command -v "$c" >/dev/null 2>&1 || die "'$c' is required"
done
ABRMD=1
for c in tpm2-abrmd dbus-daemon; do
	command -v "$c" >/dev/null 2>&1 || ABRMD=0
done
[ -f /usr/lib/x86_64-linux-gnu/libtss2-tcti-tabrmd.so.0 ] || ls /usr/lib/*/libtss2-tcti-tabrmd.so.0 >/dev/null 2>&1 ||
	ABRMD=0

W=$(mktemp -d /tmp/mtls-tpmbench.XXXXXX)
PIDS=()
stop_pid() {
	local pid=$1
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
declare -A SWTPM_PORT SWTPM_PID
cleanup() {
	local rc=$? p
	set +e
	for p in "${PIDS[@]}"; do
		stop_pid "$p"
	done
	for p in "${!SWTPM_PID[@]}"; do
		timeout 5 swtpm_ioctl --tcp "127.0.0.1:$((SWTPM_PORT[$p] + 1))" -s >/dev/null 2>&1
		stop_pid "${SWTPM_PID[$p]}"
	done
	if [ "$rc" -ne 0 ]; then
		for f in "$W"/*.log "$W"/*.err; do
			[ -s "$f" ] && { printf -- '--- %s (last 15 lines) ---\n' "$f" >&2; tail -n 15 "$f" >&2; }
		done
	fi
	if [ "${KEEP_WORKDIR:-0}" = 1 ]; then
		printf 'work directory kept: %s\n' "$W" >&2
	else
		rm -rf "$W"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
mkdir -p "$W/keys" "$W/state" "$W/ca" "$W/srv"
chmod 700 "$W/keys" "$W/state"
CLEAN=(env -u OPENSSL_CONF -u OPENSSL_ENGINES -u MTLS_AGENT_SOCK -u TPM2OPENSSL_TCTI)

free_ports() { # two consecutive free ports
	local p
	for _ in $(seq 100); do
		p=$((20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 12000))
		if [ -z "$(ss -Hltn "sport = :$p")" ] && [ -z "$(ss -Hltn "sport = :$((p + 1))")" ]; then
			echo "$p"
			return 0
		fi
	done
	die "no free ports"
}
swtpm_up() { # NAME: swtpm on state dir $W/tpm-NAME
	local name=$1 port pid
	port=${SWTPM_PORT[$name]:-$(free_ports)}
	swtpm socket --tpm2 --tpmstate "dir=$W/tpm-$name" --server "type=tcp,port=$port,bindaddr=127.0.0.1" \
		--ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" --flags not-need-init,startup-clear \
		>>"$W/swtpm-$name.log" 2>&1 </dev/null &
	pid=$!
	for _ in $(seq 100); do
		ss -Hltnp "sport = :$port" | grep -q "pid=$pid," && break
		sleep 0.05
	done
	ss -Hltnp "sport = :$port" | grep -q "pid=$pid," || die "swtpm $name did not start"
	SWTPM_PORT[$name]=$port
	SWTPM_PID[$name]=$pid
}
swtpm_down() { # NAME: clean TPM2_Shutdown
	local name=$1
	timeout 10 swtpm_ioctl --tcp "127.0.0.1:$((SWTPM_PORT[$name] + 1))" -s >/dev/null
	stop_pid "${SWTPM_PID[$name]}"
	unset "SWTPM_PID[$name]"
}
tcti() { echo "swtpm:host=127.0.0.1,port=${SWTPM_PORT[$1]}"; }

# --- keys in swtpm "agent", made by the agent -------------------------------------------------
mkdir -p "$W/tpm-agent"
swtpm_up agent
SOCK=$W/agent.sock
{
	printf '[agent]\nsocket = %s\nstate-dir = %s/state\nadmin-users = root\n' "$SOCK" "$W"
	printf '\n[keystore "tpm"]\ntype = tpm2\ntcti = %s\n' "$(tcti agent)"
	for k in p256 rsa; do
		printf '\n[identity "hb-%s"]\nkeystore = tpm\nkey = %s/keys/hb-%s.pem\n' "$k" "$W" "$k"
		printf 'cert = %s/state/hb-%s.crt\nallow-users = root\n' "$W" "$k"
	done
} >"$W/agent.conf"
chmod 600 "$W/agent.conf"
ctl() { timeout -k 5 120 "$BUILD/mtls-agentctl" -s "$SOCK" "$@"; }
AGENT_PID=
agent_up() {
	"${CLEAN[@]}" "$BUILD/mtls-agent" -f -c "$W/agent.conf" >>"$W/agent.log" 2>&1 </dev/null &
	AGENT_PID=$!
	PIDS+=("$AGENT_PID")
	for _ in $(seq 100); do
		ctl status >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "the agent did not start"
}
agent_up

# CA, server certificate, client certificates for the agent's keys.
ossl() { "${CLEAN[@]}" openssl "$@" >>"$W/openssl.log" 2>&1 || die "openssl $1 failed"; }
cat >"$W/ca/ca.cnf" <<'EOF'
[ req ]
distinguished_name = req_dn
prompt = no
[ req_dn ]
CN = unused
[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
[ leaf ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
[ server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
EOF
ossl req -config "$W/ca/ca.cnf" -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout "$W/ca/ca.key" -out "$W/ca/ca.crt" -days 30 -subj "/CN=tpm bench CA" -extensions v3_ca
ossl req -config "$W/ca/ca.cnf" -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout "$W/srv/srv.key" -out "$W/srv/srv.csr" -subj "/CN=localhost"
ossl x509 -req -in "$W/srv/srv.csr" -CA "$W/ca/ca.crt" -CAkey "$W/ca/ca.key" -set_serial 2 -days 30 \
	-extfile "$W/ca/ca.cnf" -extensions server -out "$W/srv/srv.crt"
serial=10
issue() { # CSR OUT
	serial=$((serial + 1))
	ossl x509 -req -in "$1" -CA "$W/ca/ca.crt" -CAkey "$W/ca/ca.key" -set_serial "$serial" -days 30 \
		-extfile "$W/ca/ca.cnf" -extensions leaf -out "$2"
}
declare -A KTYPE=([p256]=ec-p256 [rsa]=rsa-2048)
for k in p256 rsa; do
	ctl keygen "hb-$k" --type "${KTYPE[$k]}" >/dev/null || die "keygen hb-$k failed"
	ctl csr "hb-$k" --subject "/CN=hb-$k" >"$W/hb-$k.csr" || die "csr hb-$k failed"
	issue "$W/hb-$k.csr" "$W/hb-$k.crt"
	ctl import-cert "hb-$k" "$W/hb-$k.crt" >/dev/null || die "import-cert hb-$k failed"
	ctl keyref "hb-$k" -o "$W/hb-$k.keyref.pem" >/dev/null || die "keyref hb-$k failed"
done
# The control: software keys with certificates from the same CA.
ossl req -config "$W/ca/ca.cnf" -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout "$W/file-p256.key" -out "$W/file-p256.csr" -subj "/CN=file-p256"
issue "$W/file-p256.csr" "$W/file-p256.crt"
ossl req -config "$W/ca/ca.cnf" -new -newkey rsa:2048 -nodes \
	-keyout "$W/file-rsa.key" -out "$W/file-rsa.csr" -subj "/CN=file-rsa"
issue "$W/file-rsa.csr" "$W/file-rsa.crt"

# Clone the TPM: stop the agent and the swtpm cleanly, copy the state.
stop_pid "$AGENT_PID"
swtpm_down agent
for n in direct abrmd; do
	cp -a "$W/tpm-agent" "$W/tpm-$n"
done
swtpm_up agent
swtpm_up direct
agent_up

echo "machine: $(nproc) CPUs, $(uname -r); swtpm $(swtpm --version 2>&1 | head -n 1 | sed 's/.*version //'); tpm2-tss $(dpkg-query -W -f '${Version}' libtss2-esys-3.0.2-0 2>/dev/null || echo '?')"
echo
echo "== signature latency (130-byte TLS 1.3 CertificateVerify content: SHA-256 + TPM2_Sign), $ROUNDS rounds x $OPS"
"$TB" sign -t "$(tcti direct)" -s "$SOCK" -k "$W/keys/hb-p256.pem:hb-p256" -k "$W/keys/hb-rsa.pem:hb-rsa" \
	-r "$ROUNDS" -n "$OPS" 2>"$W/sign.err" || die "tpm-bench sign failed: $(tail -n 5 "$W/sign.err")"
swtpm_down direct

# --- handshakes ----------------------------------------------------------------------------------
"${CLEAN[@]}" openssl s_server -accept 127.0.0.1:0 -Verify 1 -verify_return_error -CAfile "$W/ca/ca.crt" \
	-cert "$W/srv/srv.crt" -key "$W/srv/srv.key" -www -tls1_3 >"$W/s_server.log" 2>&1 </dev/null &
PIDS+=($!)
for _ in $(seq 100); do
	grep -qs '^ACCEPT' "$W/s_server.log" && break
	sleep 0.1
done
PORT=$(sed -n 's/^ACCEPT 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$W/s_server.log" | head -n 1)
[ -n "$PORT" ] || die "s_server did not start"

cat >"$W/agent.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
mtlsagent = mtlsagent_sect
[default_sect]
activate = 1
[mtlsagent_sect]
module = $PROVIDER
activate = 1
EOF
# tpm2-openssl: the key's signature must come from tpm2, which takes
# ?provider=tpm2 as the default property query (without it libssl uses the
# default provider's signer on the exported public half: "missing private
# key"); the handshake's digests then come from the TPM too, which needs a
# resource manager (on swtpm directly, TLS 1.3 fails: out of object memory).
cat >"$W/tpm2.cnf" <<'EOF'
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
alg_section = algs
[algs]
default_properties = ?provider=tpm2
[provider_sect]
default = default_sect
tpm2 = tpm2_sect
[default_sect]
activate = 1
[tpm2_sect]
activate = 1
EOF

CONFIGS=()
declare -A CIN
client() { # NAME KEY CHAIN PROVIDER ENV...
	local name=$1 key=$2 chain=$3 prov=$4
	shift 4
	mkfifo "$W/$name.in"
	env "$@" "$TB" tls -P "$PORT" -c "$chain" -k "$key" -a "$W/ca/ca.crt" -e "$prov" \
		<"$W/$name.in" >"$W/$name.out" 2>"$W/$name.err" &
	PIDS+=($!)
	exec {fd}>"$W/$name.in"
	CIN[$name]=$fd
	for _ in $(seq 600); do
		grep -qs '^ready' "$W/$name.out" && break
		kill -0 "${PIDS[-1]}" 2>/dev/null || break
		sleep 0.1
	done
	if grep -qs '^ready' "$W/$name.out"; then
		CONFIGS+=("$name")
		echo "$name: $(head -n 1 "$W/$name.out")"
	else
		echo "$name: FAILED to start: $(tail -n 3 "$W/$name.err" | tr '\n' ' ')"
	fi
}
for k in p256 rsa; do
	client "agent-$k" "$W/hb-$k.keyref.pem" "$W/hb-$k.crt" mtlsagent \
		OPENSSL_CONF="$W/agent.cnf" MTLS_AGENT_SOCK="$SOCK" LD_LIBRARY_PATH="$BUILD/.libs"
	client "file-$k" "$W/file-$k.key" "$W/file-$k.crt" default -u OPENSSL_CONF
done
if [ "$ABRMD" = 1 ]; then
	swtpm_up abrmd
	dbus-daemon --config-file=/usr/share/dbus-1/session.conf --fork --print-address=1 --print-pid=1 \
		>"$W/dbus.out" 2>"$W/dbus.err" || die "dbus-daemon failed"
	PIDS+=("$(sed -n 2p "$W/dbus.out")")
	export DBUS_SESSION_BUS_ADDRESS
	DBUS_SESSION_BUS_ADDRESS=$(head -n 1 "$W/dbus.out")
	tpm2-abrmd --session --allow-root --tcti="$(tcti abrmd)" >"$W/abrmd.log" 2>&1 </dev/null &
	PIDS+=($!)
	sleep 1
	for k in p256 rsa; do
		client "tpm2-abrmd-$k" "$W/keys/hb-$k.pem" "$W/hb-$k.crt" tpm2 \
			OPENSSL_CONF="$W/tpm2.cnf" TPM2OPENSSL_TCTI=tabrmd:bus_type=session
	done
else
	echo "tpm2-abrmd: not measured (needs tpm2-abrmd, dbus-daemon and libtss2-tcti-tabrmd0)"
fi

echo
echo "== TLS 1.3 full handshakes, $ROUNDS rounds x $HS per configuration (batches in turn)"
for r in $(seq 1 "$ROUNDS"); do
	for c in "${CONFIGS[@]}"; do
		before=$(grep -c '^batch' "$W/$c.out" || true)
		echo "$HS" >&"${CIN[$c]}"
		for _ in $(seq 3000); do
			[ "$(grep -c '^batch' "$W/$c.out" || true)" -gt "$before" ] && break
			sleep 0.02
		done
		[ "$(grep -c '^batch' "$W/$c.out" || true)" -gt "$before" ] ||
			die "$c: no result for batch $r: $(tail -n 3 "$W/$c.err")"
	done
done
python3 - "$W" "${CONFIGS[@]}" <<'PY'
import re, statistics, sys
w, configs = sys.argv[1], sys.argv[2:]
res = {}
for c in configs:
    rates, p50 = [], []
    for line in open(f"{w}/{c}.out"):
        m = re.match(r"batch n=\d+ hs_per_s=([\d.]+) p50_us=([\d.]+)", line)
        if m:
            rates.append(float(m.group(1))); p50.append(float(m.group(2)))
    res[c] = (statistics.median(rates), statistics.median(p50))
print(f"{'configuration':<18} {'hs/s':>8} {'p50 ms':>8}")
for c in configs:
    print(f"{c:<18} {res[c][0]:8.1f} {res[c][1]/1000:8.2f}")
for k in ("p256", "rsa"):
    a = res.get(f"agent-{k}")
    for other in (f"tpm2-abrmd-{k}", f"file-{k}"):
        o = res.get(other)
        if a and o:
            print(f"agent-{k} / {other}: {a[0]/o[0]:.2f}x handshakes/s")
PY
grep -qiE 'error|alert' "$W/s_server.log" && echo "NOTE: s_server logged errors: $(grep -iE 'error|alert' "$W/s_server.log" | head -n 3)"
for k in p256 rsa; do
	echo "agent signatures hb-$k: $(ctl status | sed -n "/^identity hb-$k/,/^\$/s/^ *signatures: *//p")"
done
