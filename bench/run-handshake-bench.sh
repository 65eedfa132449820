#!/bin/bash
# Full mTLS handshakes per second (no resumption) from one client process
# (bench/handshake-bench) to `openssl s_server -Verify 1 -verify_return_error`
# on 127.0.0.1, TLS 1.3 and 1.2, EC P-256 and RSA-2048 (PSS) client keys, by
# three routes measured interleaved in one run:
#   file    software key in a PEM file (same chain shape: leaf + intermediate)
#   engine  SoftHSM key in-process through the libp11 engine "pkcs11"
#   agent   the same SoftHSM key through mtls-agent (mtlsagent provider loaded
#           by OPENSSL_CONF, key reference file, MTLS_AGENT_SOCK)
# and a control, "prov": the file key with the mtlsagent provider loaded but
# unused (what the provider's presence alone costs each handshake).
# One long-lived client process per configuration (route x protocol x key) loads
# its key once; each round gives every process in turn a batch of HANDSHAKES
# fresh handshakes, so that all configurations share the noisy machine's load
# within seconds, and ratios are taken within a round. Key loads are sampled
# in fresh processes. Sets everything up in a temporary directory (SoftHSM
# token, agent, CA, s_server on a kernel-chosen 127.0.0.1 port) and removes
# it, and stops every process it started, on exit; every wait is bounded.
# Not a test: prints medians and ratios, asserts nothing about time. It does
# fail if a handshake does not authenticate the client (the server's page
# must show the verified client certificate), if a key is not where its route
# says, or if the agent's signature counters do not grow by exactly the
# number of agent handshakes.
#
# usage: bench/run-handshake-bench.sh [BUILD_DIR]
# Environment:
#   HANDSHAKE_BENCH  client program (default BUILD_DIR/bench/handshake-bench)
#   ROUNDS           rounds (default 30, at least 5)
#   HANDSHAKES       handshakes per configuration and round (default 40)
#   LOADS            fresh processes per route and key for the key-load figures (default 10)
#   SOFTHSM_MODULE   default /usr/lib/softhsm/libsofthsm2.so
#   MTLS_PROVIDER_MODULE  default BUILD_DIR/provider/.libs/mtlsagent.so
#   KEEP_WORKDIR=1   keep the work directory (raw figures in results.txt)
set -euo pipefail
export LC_ALL=C
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-$SRC/build}" && pwd)
HB=${HANDSHAKE_BENCH:-$BUILD/bench/handshake-bench}
ROUNDS=${ROUNDS:-30}
N=${HANDSHAKES:-40}
LOADS=${LOADS:-10}
MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
PROVIDER=${MTLS_PROVIDER_MODULE:-$BUILD/provider/.libs/mtlsagent.so}
AGENT=$BUILD/mtls-agent
AGENTCTL=$BUILD/mtls-agentctl

die() {
	printf 'run-handshake-bench: %s\n' "$*" >&2
	exit 1
}
[ "$ROUNDS" -ge 5 ] 2>/dev/null || die "ROUNDS must be a number >= 5 (got '$ROUNDS')"
[ "$N" -ge 5 ] 2>/dev/null || die "HANDSHAKES must be a number >= 5 (got '$N')"
[ "$LOADS" -ge 1 ] 2>/dev/null || die "LOADS must be a number >= 1 (got '$LOADS')"
[ -x "$HB" ] || die "client program not found: $HB (make bench, or set HANDSHAKE_BENCH)"
{ [ -x "$AGENT" ] && [ -x "$AGENTCTL" ]; } || die "mtls-agent / mtls-agentctl not built in $BUILD"
[ -f "$PROVIDER" ] || die "provider module not found: $PROVIDER (set MTLS_PROVIDER_MODULE)"
[ -r "$MODULE" ] || die "SoftHSM2 module not found: $MODULE"
ENGINES_DIR=$(openssl version -e | sed -n 's/^ENGINESDIR: "\(.*\)"$/\1/p')
[ -f "${OPENSSL_ENGINES:-$ENGINES_DIR}/pkcs11.so" ] ||
	die "libp11 engine not installed (apt-get install libengine-pkcs11-openssl)"
for c in openssl softhsm2-util python3 timeout; do
	command -v "$c" >/dev/null 2>&1 || die "'$c' is required"
done

W=$(mktemp -d /tmp/mtls-hsbench.XXXXXX)
AGENT_PID="" SERVER_PID=""
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
cleanup() {
	local rc=$?
	set +e
	[ -z "$SERVER_PID" ] || stop_pid "$SERVER_PID"
	[ -z "$AGENT_PID" ] || stop_pid "$AGENT_PID"
	if [ "$rc" -ne 0 ]; then
		for f in "$W/agent.log" "$W/s_server.log"; do
			[ -s "$f" ] && { printf -- '--- %s (last 20 lines) ---\n' "$f" >&2; tail -n 20 "$f" >&2; }
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
chmod 755 "$W"
mkdir -p "$W/tokens" "$W/state" "$W/srv" "$W/id" "$W/bin" "$W/ca"

# --- a private copy of the binaries: the build tree may be rebuilt while this runs,
# and every configuration of every round must run the same code. libtool wrapper
# scripts are replaced by the real programs next to the build's shared libraries.
real_bin() { # PROGRAM: the ELF behind a libtool wrapper
	local d b f
	d=$(dirname "$1") b=$(basename "$1")
	if [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; then
		printf '%s\n' "$1"
		return 0
	fi
	for f in "$d/.libs/lt-$b" "$d/.libs/$b"; do
		[ -x "$f" ] && { printf '%s\n' "$f"; return 0; }
	done
	die "cannot find the program behind libtool wrapper $1"
}
cp "$(real_bin "$AGENT")" "$W/bin/mtls-agent"
cp "$(real_bin "$AGENTCTL")" "$W/bin/mtls-agentctl"
cp "$(real_bin "$HB")" "$W/bin/handshake-bench"
cp "$PROVIDER" "$W/bin/mtlsagent.so"
if [ -d "$BUILD/.libs" ]; then
	find "$BUILD/.libs" -maxdepth 1 -name '*.so*' -exec cp -L {} "$W/bin/" \;
fi
AGENT=$W/bin/mtls-agent AGENTCTL=$W/bin/mtls-agentctl HB=$W/bin/handshake-bench PROVIDER=$W/bin/mtlsagent.so
export LD_LIBRARY_PATH=$W/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
chmod 700 "$W/state"
# Servers and set-up commands run without the client-side OpenSSL settings.
CLEAN=(env -u OPENSSL_CONF -u OPENSSL_ENGINES -u MTLS_AGENT_SOCK)

# --- SoftHSM token ------------------------------------------------------------------------------
TOKEN=hsbench
PIN=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')1
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
	"$W" >"$W/softhsm2.conf"
export SOFTHSM2_CONF=$W/softhsm2.conf
softhsm2-util --init-token --free --label "$TOKEN" --so-pin "$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')0" \
	--pin "$PIN" >"$W/softhsm-init.log" 2>&1 || die "softhsm2-util --init-token failed: $(cat "$W/softhsm-init.log")"
(umask 077 && printf '%s\n' "$PIN" >"$W/pin")

# --- agent ----------------------------------------------------------------------------------------
SOCK=$W/agent.sock
KEYS=(p256 rsa)
declare -A KTYPE=([p256]=ec-p256 [rsa]=rsa-2048)
{
	printf '[agent]\nsocket = %s\nstate-dir = %s/state\nadmin-users = root\n' "$SOCK" "$W"
	printf '\n[keystore "hsm"]\ntype = pkcs11\nmodule = %s\ntoken = %s\npin-file = %s/pin\n' \
		"$MODULE" "$TOKEN" "$W"
	for k in "${KEYS[@]}"; do
		printf '\n[identity "hb-%s"]\nkeystore = hsm\nkey = pkcs11:object=hb-%s\n' "$k" "$k"
		printf 'cert = %s/state/hb-%s.crt\nallow-users = root\n' "$W" "$k"
	done
} >"$W/agent.conf"
chmod 600 "$W/agent.conf"
ctl() { timeout -k 5 60 "$AGENTCTL" -s "$SOCK" "$@"; }
"${CLEAN[@]}" "$AGENT" -f -c "$W/agent.conf" >"$W/agent.log" 2>&1 </dev/null &
AGENT_PID=$!
deadline=$((SECONDS + 10))
until ctl status >/dev/null 2>&1; do
	kill -0 "$AGENT_PID" 2>/dev/null || { AGENT_PID=; die "the agent exited during start-up"; }
	[ "$SECONDS" -lt "$deadline" ] || die "the agent did not answer 'status' within 10 s"
	sleep 0.1
done

# --- CA (EC P-256 root + intermediate), as tests/lib.sh makes it ----------------------------------
cat >"$W/ca/ca.cnf" <<'EOF'
[ req ]
distinguished_name = req_dn
prompt = no
[ req_dn ]
CN = unused
[ v3_root ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ v3_inter ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ leaf ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ v3_server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
ossl() { "${CLEAN[@]}" openssl "$@" >>"$W/openssl.log" 2>&1 || die "openssl $1 failed: $(tail -n 5 "$W/openssl.log")"; }
ec_req() { ossl req -config "$W/ca/ca.cnf" -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "$@"; }
ec_req -x509 -keyout "$W/ca/root.key" -out "$W/ca/root.crt" -days 30 -sha256 \
	-subj "/CN=handshake bench root/O=mtls-agent bench" -extensions v3_root
ec_req -keyout "$W/ca/inter.key" -out "$W/ca/inter.csr" -subj "/CN=handshake bench intermediate/O=mtls-agent bench"
ossl x509 -req -in "$W/ca/inter.csr" -CA "$W/ca/root.crt" -CAkey "$W/ca/root.key" -set_serial 2 \
	-days 30 -sha256 -extfile "$W/ca/ca.cnf" -extensions v3_inter -out "$W/ca/inter.crt"
cat "$W/ca/inter.crt" "$W/ca/root.crt" >"$W/ca/chain.pem"
serial=4096
# issue CSR(PEM or DER) OUT_CHAIN: leaf (clientAuth, digitalSignature) + intermediate.
issue() {
	local csr=$1
	serial=$((serial + 1))
	grep -q -- '-----BEGIN CERTIFICATE REQUEST-----' "$csr" || ossl req -inform DER -in "$csr" -out "$csr.pem"
	[ -f "$csr.pem" ] || cp "$csr" "$csr.pem"
	ossl x509 -req -in "$csr.pem" -CA "$W/ca/inter.crt" -CAkey "$W/ca/inter.key" -set_serial "$serial" \
		-days 30 -sha256 -extfile "$W/ca/ca.cnf" -extensions leaf -out "$csr.crt"
	cat "$csr.crt" "$W/ca/inter.crt" >"$2"
}
# Server: its own EC P-256 CA, certificate for 127.0.0.1.
ec_req -x509 -keyout "$W/srv/ca.key" -out "$W/srv/ca.crt" -days 30 -sha256 \
	-subj "/CN=handshake bench server CA" -extensions v3_root
ec_req -keyout "$W/srv/srv.key" -out "$W/srv/srv.csr" -subj "/CN=localhost"
ossl x509 -req -in "$W/srv/srv.csr" -CA "$W/srv/ca.crt" -CAkey "$W/srv/ca.key" -set_serial 3 -days 30 \
	-sha256 -extfile "$W/ca/ca.cnf" -extensions v3_server -out "$W/srv/srv.crt"

# --- client identities: token keys (agent keygen) and file keys -----------------------------------
for k in "${KEYS[@]}"; do
	ctl keygen "hb-$k" --type "${KTYPE[$k]}" >/dev/null || die "keygen hb-$k failed"
	ctl csr "hb-$k" --subject "/CN=hb-$k/O=mtls-agent bench" -o "$W/id/hb-$k.csr" || die "csr hb-$k failed"
	issue "$W/id/hb-$k.csr" "$W/id/hb-$k.chain.pem"
	ctl import-cert "hb-$k" "$W/id/hb-$k.chain.pem" >/dev/null || die "import-cert hb-$k failed"
	ctl keyref "hb-$k" -o "$W/id/hb-$k.keyref.pem" || die "keyref hb-$k failed"
	case $k in
	p256) ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$W/id/file-$k.key" ;;
	rsa) ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$W/id/file-$k.key" ;;
	esac
	ossl req -config "$W/ca/ca.cnf" -new -key "$W/id/file-$k.key" -out "$W/id/file-$k.csr" \
		-subj "/CN=file-$k/O=mtls-agent bench"
	issue "$W/id/file-$k.csr" "$W/id/file-$k.chain.pem"
done


# --- s_server ----------------------------------------------------------------------------------------
"${CLEAN[@]}" openssl s_server -accept 127.0.0.1:0 -Verify 1 -verify_return_error -CAfile "$W/ca/chain.pem" \
	-cert "$W/srv/srv.crt" -key "$W/srv/srv.key" -www -num_tickets 0 -no_cache -verify_quiet \
	>"$W/s_server.log" 2>&1 </dev/null &
SERVER_PID=$!
deadline=$((SECONDS + 10))
until grep -qs '^ACCEPT 127\.0\.0\.1:[0-9]' "$W/s_server.log"; do
	kill -0 "$SERVER_PID" 2>/dev/null || { SERVER_PID=; die "s_server exited during start-up"; }
	[ "$SECONDS" -lt "$deadline" ] || die "s_server did not report ACCEPT within 10 s"
	sleep 0.1
done
PORT=$(sed -n 's/^ACCEPT 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$W/s_server.log" | head -n 1)

# --- the client's environments --------------------------------------------------------------------
cat >"$W/openssl-provider.cnf" <<EOF
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

# --- measurement: bench/handshake-bench processes driven by a small coordinator -----------------
echo "machine: $(nproc) CPUs, $(uname -r); $(openssl version); SoftHSM $(dpkg-query -W -f '${Version}' softhsm2 2>/dev/null || echo '?');" \
	"libp11 $(dpkg-query -W -f '${Version}' libengine-pkcs11-openssl 2>/dev/null || echo '?'); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
export W HB PORT SOCK TOKEN PIN MODULE AGENTCTL AGENT_PID SERVER_PID ROUNDS N LOADS
python3 - <<'PY'
"""
One long-lived client process per configuration (route x protocol x key), each
having loaded its key once; every round gives each of them, in turn, a batch
of N handshakes, so that all configurations see the same changing machine
load within seconds of each other. Ratios are taken within a round. Key
loads are sampled separately, in fresh processes.
"""
import atexit, json, os, select, statistics as st, subprocess, sys

E = os.environ
W, HB, PORT, SOCK, MODULE = E["W"], E["HB"], E["PORT"], E["SOCK"], E["MODULE"]
ROUNDS, N, LOADS = int(E["ROUNDS"]), int(E["N"]), int(E["LOADS"])
AGENT_PID, SERVER_PID = E["AGENT_PID"], E["SERVER_PID"]
# "prov" is a control, not a route: the file key with the mtlsagent provider loaded but
# unused, i.e. what the provider's mere presence costs a handshake.
ROUTES = ("file", "prov", "engine", "agent")
PROTOS = ("1.3", "1.2")
KEYS = ("p256", "rsa")
KEYN = {"p256": "P-256", "rsa": "RSA-2048 (PSS)"}
# baselines.md, "Full mTLS handshakes": ratio to a file key of the libp11 engine
# and of engine -> p11-kit RPC -> SoftHSM.
ANCHOR = {("1.3", "p256"): (0.94, 0.89), ("1.3", "rsa"): (0.86, 0.76),
          ("1.2", "p256"): (0.90, 0.85), ("1.2", "rsa"): (0.79, 0.78)}
TARGET = {("1.3", "p256"): 0.95, ("1.3", "rsa"): 0.97}  # agent / engine, from the brief
CONFIGS = [(r, p, k) for k in KEYS for p in PROTOS for r in ROUTES]
procs = []


@atexit.register
def stop_clients():
    for p, _ in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def die(msg):
    print(f"run-handshake-bench: {msg}", file=sys.stderr)
    sys.exit(1)


def client_cmd(route, proto, key, mode):
    env = {k: v for k, v in E.items() if k not in ("OPENSSL_CONF", "OPENSSL_ENGINES", "MTLS_AGENT_SOCK")}
    if route in ("prov", "agent"):
        env.update(OPENSSL_CONF=f"{W}/openssl-provider.cnf", MTLS_AGENT_SOCK=SOCK)
    if route in ("file", "prov"):
        k, c = f"{W}/id/file-{key}.key", f"{W}/id/file-{key}.chain.pem"
    elif route == "engine":
        k = f"pkcs11:token={E['TOKEN']};object=hb-{key};type=private?pin-value={E['PIN']}"
        c = f"{W}/id/hb-{key}.chain.pem"
    else:
        k, c = f"{W}/id/hb-{key}.keyref.pem", f"{W}/id/hb-{key}.chain.pem"
    cmd = [HB, "-r", "file" if route == "prov" else route, "-p", proto, "-k", k, "-c", c,
           "-a", f"{W}/srv/ca.crt", "-P", PORT, "-m", MODULE] + mode
    return cmd, env


def fields(line):
    return dict(f.split("=", 1) for f in line.split() if "=" in f)


def read_line(p, errf, what, timeout=120):
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    line = p.stdout.readline() if ready else ""
    if not line:
        if ready:
            p.wait(timeout=10)
        die(f"{what}: no answer from handshake-bench ({'exit ' + str(p.returncode) if ready else 'timeout'}): "
            + open(errf).read()[-1500:])
    return fields(line)


def cpu_ns(pid):
    s = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                s += int(f.read().split()[0])
    except OSError:
        pass
    return s


def sig_counts():
    """The agent's "signatures" counter per identity (mtls-agentctl --json status)."""
    try:
        out = subprocess.run([E["AGENTCTL"], "-s", SOCK, "--json", "status"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    except (subprocess.SubprocessError, OSError) as e:
        die(f"mtls-agentctl status failed: {e}")
    res = {}
    def walk(x):
        if isinstance(x, dict):
            f = dict(x)
            if isinstance(x.get("fields"), dict):
                f.update(x["fields"])
            if str(x.get("name", "")).startswith("hb-") and "signatures" in f:
                res[x["name"]] = int(f["signatures"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(json.loads(out))
    if set(res) != {f"hb-{k}" for k in KEYS}:
        die(f"status --json: no signature counters for the identities: {out[:500]}")
    return res


med = st.median
agent_sigs = {k: 0 for k in KEYS}  # signatures the agent routes asked for
sig0 = sig_counts()

# --- key loads: fresh processes, interleaved, TLS 1.3, set-up + one handshake each ----------------
loads = []
for i in range(LOADS):
    for key in KEYS:
        for route in ROUTES:
            cmd, env = client_cmd(route, "1.3", key, ["-n", "0", "-w", "0"])
            try:
                cp = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            except subprocess.TimeoutExpired:
                die(f"key load {route} {key}: timeout")
            if cp.returncode != 0:
                die(f"key load {route} {key} failed: {cp.stderr[-1500:]}")
            d = fields(cp.stdout)
            d.update(cfg=route, key=key)
            loads.append(d)
            if route == "agent":
                agent_sigs[key] += int(d["total"])

# --- one long-lived process per configuration ------------------------------------------------------
print(f"s_server on 127.0.0.1:{PORT}; {len(CONFIGS)} client processes; {ROUNDS} rounds x {N} handshakes per "
      "configuration (+11 untimed at start-up)")
print("every handshake authenticated the client to s_server -Verify 1 -verify_return_error; per configuration:")
for i, (route, proto, key) in enumerate(CONFIGS):
    cmd, env = client_cmd(route, proto, key, ["-s", "-w", "10"])
    errf = f"{W}/client-{i}.err"
    p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=open(errf, "w"), text=True, bufsize=1)
    procs.append((p, errf))
    d = read_line(p, errf, f"start of {route} TLS {proto} {key}")
    if "total" not in d:
        die(f"unexpected start line from {route} TLS {proto} {key}: {d}")
    if route == "agent":
        agent_sigs[key] += int(d["total"])
    print(f"  {route:6} TLS {proto} {KEYN[key]:15} key in {d['key_provider']:9} server saw "
          f"{d['peer_sig']}, {d['cipher']}")

rows = []
nc = len(CONFIGS)
for rnd in range(ROUNDS):
    # Each round starts one configuration later: none always runs first or last.
    for j in range(nc):
        i = (j + rnd) % nc
        route, proto, key = CONFIGS[i]
        p, errf = procs[i]
        s0, a0 = cpu_ns(SERVER_PID), cpu_ns(AGENT_PID)
        try:
            p.stdin.write(f"{N}\n")
            p.stdin.flush()
        except OSError:
            read_line(p, errf, f"{route} TLS {proto} {key}", 1)
        d = read_line(p, errf, f"{route} TLS {proto} {key}")
        s1, a1 = cpu_ns(SERVER_PID), cpu_ns(AGENT_PID)
        d.update(round=rnd, cfg=route, proto=proto, key=key,
                 server_us=(s1 - s0) / 1e3 / N, agent_us=(a1 - a0) / 1e3 / N)
        rows.append(d)
        if route == "agent":
            agent_sigs[key] += N
    if (rnd + 1) % max(1, ROUNDS // 5) == 0 or rnd + 1 == ROUNDS:
        print(f"round {rnd + 1}/{ROUNDS} done (load average {open('/proc/loadavg').read().split()[0]})",
              flush=True)
for p, errf in procs:
    p.stdin.close()
for p, errf in procs:
    try:
        if p.wait(timeout=30) != 0:
            die(f"a client exited with status {p.returncode}: {open(errf).read()[-1500:]}")
    except subprocess.TimeoutExpired:
        die("a client did not exit at end of input")
sig1 = sig_counts()
for key in KEYS:
    grew = sig1[f"hb-{key}"] - sig0[f"hb-{key}"]
    if grew != agent_sigs[key]:
        die(f"agent signature counter of hb-{key} grew by {grew}, expected {agent_sigs[key]}")
print("agent signature counters grew by exactly the number of agent handshakes: "
      + ", ".join(f"hb-{k} +{agent_sigs[k]}" for k in KEYS))
with open(f"{W}/results.txt", "w") as f:
    for r in rows + loads:
        f.write(" ".join(f"{k}={v}" for k, v in r.items()) + "\n")

# --- report ------------------------------------------------------------------------------------------
def sel(rs, **kw):
    return [r for r in rs if all(r[k] == v for k, v in kw.items())]


def fmed(rs, f):
    return med(float(r[f]) for r in rs)


def cpu_sum(r):
    """CPU µs per handshake, client + server + agent: the handshake's serial cost."""
    return float(r["cpu_us"]) + float(r["server_us"]) + float(r["agent_us"])


def round_ratios(num, den, proto, key, cpu=False):
    """Per round: hs/s of num / hs/s of den; with cpu, the same from CPU cost (den cost / num cost)."""
    out = []
    for rnd in range(ROUNDS):
        a, b = sel(rows, round=rnd, cfg=num, proto=proto, key=key), sel(rows, round=rnd, cfg=den, proto=proto, key=key)
        if a and b:
            out.append(cpu_sum(b[0]) / cpu_sum(a[0]) if cpu else float(a[0]["hs_per_s"]) / float(b[0]["hs_per_s"]))
    return out


def quartiles(v):
    q = st.quantiles(v, n=4) if len(v) >= 2 else [v[0]] * 3
    return q[0], q[2]


print()
print(f"Full mTLS handshakes/s, one client process, no resumption: medians over {ROUNDS} rounds of {N}")
print("  x file = median of the per-round ratios of hs/s to the file key (same round, protocol, key);")
print("           q1-q3 = quartiles of those ratios")
print("  anchor = baselines.md ratio to a file key: libp11 engine (engine rows), p11-kit RPC (agent rows)")
print("  CPU µs per handshake: client = client process, server = s_server, agent = all agent threads;")
print("  sum = their total (the serial cost of one handshake; insensitive to waiting for a busy CPU),")
print("  x file (CPU) = median per-round ratio file sum / this sum; p50 = median wall time of a handshake")
print("  prov = control, not a route: the file key with the mtlsagent provider loaded but unused")
print()
print("| route  | TLS | key            |   hs/s | x file | q1-q3     | anchor | client | server | agent |  sum | x file (CPU) | p50 µs |")
print("|--------|-----|----------------|--------|--------|-----------|--------|--------|--------|-------|------|--------------|--------|")
for proto in PROTOS:
    for key in KEYS:
        for route in ROUTES:
            rs = sel(rows, cfg=route, proto=proto, key=key)
            if route == "file":
                ratio, q, cr = "1", "", "1"
            else:
                rr = round_ratios(route, "file", proto, key)
                ratio, q = f"{med(rr):.3f}", "{:.2f}-{:.2f}".format(*quartiles(rr))
                cr = f"{med(round_ratios(route, 'file', proto, key, cpu=True)):.3f}"
            anc = {"engine": f"{ANCHOR[(proto, key)][0]:.2f}", "agent": f"{ANCHOR[(proto, key)][1]:.2f}"}.get(route, "")
            print(f"| {route:6} | {proto:3} | {KEYN[key]:14} | {fmed(rs, 'hs_per_s'):6.0f} | {ratio:>6} | {q:9} | "
                  f"{anc:>6} | {fmed(rs, 'cpu_us'):6.0f} | {fmed(rs, 'server_us'):6.0f} | {fmed(rs, 'agent_us'):5.0f} | "
                  f"{med(cpu_sum(r) for r in rs):4.0f} | {cr:>12} | {fmed(rs, 'p50_us'):6.0f} |")
print()
print("Agent vs the in-process libp11 engine on the same token, median of per-round ratios agent/engine:")
print("  hs/s (q1-q3), and the same from the CPU cost per handshake")
for proto in PROTOS:
    for key in KEYS:
        rr = round_ratios("agent", "engine", proto, key)
        rc = round_ratios("agent", "engine", proto, key, cpu=True)
        t = TARGET.get((proto, key))
        verdict = "" if t is None else f"   target >= {t:.2f}: " + ("met" if med(rr) >= t else "NOT met")
        print(f"  TLS {proto} {KEYN[key]:15} {med(rr):.3f} ({quartiles(rr)[0]:.3f}-{quartiles(rr)[1]:.3f})"
              f"   CPU: {med(rc):.3f}{verdict}")
print()
print(f"Key load per client process, ms (median of {LOADS} fresh processes per route and key, TLS 1.3):")
print("  init  = OPENSSL_init_ssl (with OPENSSL_CONF: loads the providers) [+ ENGINE_by_id, MODULE_PATH, ENGINE_init]")
print("  load  = SSL_CTX_use_PrivateKey_file, or ENGINE_load_private_key + SSL_CTX_use_PrivateKey")
print("  first = the process's first handshake (lazy set-up, e.g. the agent connection)")
print()
print("| route  | key            |   init |   load |  first |")
print("|--------|----------------|--------|--------|--------|")
for key in KEYS:
    for route in ROUTES:
        rs = sel(loads, cfg=route, key=key)
        print(f"| {route:6} | {KEYN[key]:14} | {fmed(rs, 'init_ms'):6.2f} | {fmed(rs, 'load_ms'):6.2f} | "
              f"{fmed(rs, 'first_ms'):6.2f} |")
PY
