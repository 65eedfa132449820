#!/bin/bash
# The README's "Quickstart on a gateway", pasted line by line into a fresh Debian 12
# booted with systemd as PID 1: every command of its code blocks (from the source
# tree: apt-get, autoreconf, configure, make install, token, PIN, agent.conf,
# systemctl, keygen, csr, the CA operator's openssl commands, import-cert, check),
# run in order by one bash reading them as a terminal would, stopping at the first
# that fails. Then curl as user mosquitto (group mtls) through the provider against
# `openssl s_server -Verify 1` must present the certificate.
# Usage: tests/system/quickstart.sh   (as root; not part of make check: ~10 min,
# most of it apt-get and the build inside the container)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
sys_prepare
say "copying the source tree to /root/src in the container"
mkdir -p "$ROOT/root/src"
tar -C "$TOP" --exclude='./build*' --exclude=./.git --exclude=./autom4te.cache -cf - . |
	tar -xf - -C "$ROOT/root/src"
# The code blocks of the Quickstart section, in order, list indentation removed.
python3 - "$TOP/README.md" >"$ROOT/root/quickstart.sh" <<'PY'
import re, sys, textwrap
text = open(sys.argv[1]).read()
sec = text[text.index("## Quickstart on a gateway"):text.index("### TPM quickstart")]
for m in re.finditer(r"^( *)```\n(.*?)^\1```", sec, re.S | re.M):
    print(textwrap.dedent(m.group(2)), end="")
PY
say "the Quickstart's commands ($(wc -l <"$ROOT/root/quickstart.sh") lines):"
cat "$ROOT/root/quickstart.sh"
sys_boot

say "pasting them into bash (cd /root/src)"
IN_TIMEOUT=3000 sh_in 'cd /root/src && export DEBIAN_FRONTEND=noninteractive &&
	bash -e -o pipefail -x </root/quickstart.sh >/root/quickstart.log 2>&1' || {
	tail -n 60 "$ROOT/root/quickstart.log"
	fail "a Quickstart command failed (above: the end of its trace)"
}
grep -E '^\+ |^(imported|config|socket|keystore|device):|^systemd-(sysusers|tmpfiles) ' "$ROOT/root/quickstart.log" |
	grep -v '^+ make\b' | cut -c1-200

say "curl as user mosquitto (group mtls) through the provider, against openssl s_server -Verify 1"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sh_in "cd /root/src
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
		-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout /root/server.key -out /tmp/server.crt 2>/dev/null
	chmod 644 /tmp/server.crt
	setsid timeout 120 openssl s_server -quiet -accept 127.0.0.1:$port -Verify 1 -CAfile ca.crt \
		-cert /tmp/server.crt -key /root/server.key -www >/root/server.log 2>&1 </dev/null &
	for i in \$(seq 50); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done" ||
	fail "s_server did not start"
page=$(cin runuser -u mosquitto -- env OPENSSL_CONF=/etc/mtls-agent/openssl.cnf curl -sS --max-time 30 \
	--cacert /tmp/server.crt --cert /etc/ssl/device.crt --key /etc/ssl/device.keyref \
	"https://127.0.0.1:$port/") || fail "curl as mosquitto through the agent"
subject=$(printf '%s\n' "$page" | grep -a -A12 '^Client certificate' | grep -a -m1 'Subject:' || true)
say "s_server verified the client certificate of: ${subject# *}"
case "$subject" in *CN*=*gateway-0042*) ;; *) fail "s_server did not see the device certificate" ;; esac
cin systemctl --no-pager status mtls-agent.socket mtls-agent.service | grep -E '^●|Active:'
say "PASS (in $((SECONDS - T0)) s)"
