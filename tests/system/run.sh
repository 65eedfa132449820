#!/bin/bash
# The Debian packages under a real systemd as PID 1 (run by tests/ci.sh after the
# package build, as root; needs debootstrap and systemd-container):
#   a fresh Debian 12 root (tests/system/make-root.sh, cached) is booted with
#   `systemd-nspawn --boot`, the packages are installed into it with apt (their
#   dependencies from the archive), and, driven with nsenter:
#   - the package created what the units need (user mtls-agent, group mtls, dirs);
#   - a SoftHSM token; `systemctl enable --now mtls-agent.socket`; the first
#     connection starts the service (socket activation);
#   - keygen / csr / a CA signs with an extensions file / import-cert / check;
#   - curl as an unprivileged user in group mtls, through the provider, against
#     `openssl s_server -Verify 1`: the server sees the device certificate;
#   - the service runs sandboxed: /proc/PID/status Seccomp 2, NoNewPrivs 1,
#     CapEff 0, the unit's user; LoadCredential delivered the PIN;
#   - `systemctl reload` works; a killed agent is restarted; a stopped service is
#     started again by the socket on the next connection;
#   - purge: nothing of the packages is left but the configuration the admin wrote.
# Usage: tests/system/run.sh DIR_WITH_DEBS
# Exit: 0 pass, 1 fail, 77 skip (a tool is missing; says which).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DEBS=${1:?usage: tests/system/run.sh DIR_WITH_DEBS}
DEBS=$(cd "$DEBS" && pwd)
T0=$SECONDS
# shellcheck source=lib.sh
. "$HERE/lib.sh"
ls "$DEBS"/mtls-agent_*.deb "$DEBS"/libmtls-agent0_*.deb "$DEBS"/openssl-mtlsagent_*.deb >/dev/null ||
	fail "no packages in $DEBS"
sys_prepare
mkdir -p "$ROOT/root/debs"
cp "$DEBS"/mtls-agent_*.deb "$DEBS"/libmtls-agent0_*.deb "$DEBS"/openssl-mtlsagent_*.deb "$ROOT/root/debs/"
sys_boot

say "installing the packages (and softhsm2, curl, openssl for the test) with apt"
IN_TIMEOUT=900 sh_in 'export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends /root/debs/*.deb softhsm2 curl openssl ca-certificates >/root/apt.log 2>&1 ||
		{ tail -n 40 /root/apt.log; exit 1; }' || fail "apt-get install of the packages"
cin dpkg-query -W mtls-agent libmtls-agent0 openssl-mtlsagent
# What the service needs, created by the package (sysusers.d, tmpfiles.d).
cin getent passwd mtls-agent || fail "no user mtls-agent after installation"
cin getent group mtls || fail "no group mtls after installation"
cin stat -c '%n %U:%G %a' /etc/mtls-agent /var/lib/mtls-agent /run/mtls-agent ||
	fail "directories from tmpfiles.d missing"
# Nothing enabled or started by the installation.
[ "$(cin systemctl is-enabled mtls-agent.socket || true)" = disabled ] || fail "socket enabled by installation"

say "a SoftHSM token owned by the agent's user, the PIN, agent.conf, a user in group mtls"
sh_in '
	usermod -aG softhsm mtls-agent
	runuser -u mtls-agent -- softhsm2-util --init-token --free --label gateway --so-pin 12345678 --pin 246810 >/dev/null
	install -m 600 /dev/null /etc/mtls-agent/hsm.pin && printf "246810\n" >/etc/mtls-agent/hsm.pin
	mkdir -p /etc/systemd/system/mtls-agent.service.d
	printf "[Service]\nReadWritePaths=/var/lib/softhsm/tokens\n" >/etc/systemd/system/mtls-agent.service.d/softhsm.conf
	systemctl daemon-reload
	cat >/etc/mtls-agent/agent.conf <<CONF
[agent]
socket = /run/mtls-agent/agent.sock
socket-group = mtls
state-dir = /var/lib/mtls-agent
admin-users = root

[keystore "hsm"]
type = pkcs11
module = /usr/lib/softhsm/libsofthsm2.so
token = gateway
pin-file = /run/credentials/mtls-agent.service/hsm.pin

[identity "device"]
keystore = hsm
key = pkcs11:object=device
allow-users = root tester
CONF
	useradd -m -G mtls tester' || fail "setup"

say "systemctl enable --now mtls-agent.socket"
cin systemctl enable --now mtls-agent.socket
cin stat -c '%n %F %U:%G %a' /run/mtls-agent/agent.sock || fail "no socket"
[ "$(cin systemctl is-active mtls-agent.service || true)" = inactive ] || fail "service started before any connection"

say "first connection: socket activation starts the service"
cin mtls-agentctl status || fail "status through the activated socket"
[ "$(cin systemctl is-active mtls-agent.service)" = active ] || fail "service not active after the first connection"
PID=$(cin systemctl show -p MainPID --value mtls-agent.service)
say "service active, MainPID $PID"

say "keygen, csr, a CA signs it (extensions file), import-cert, check"
sh_in '
	cd /root
	mtls-agentctl keygen device --type ec-p256
	mtls-agentctl csr device --subject "/CN=gateway-0042/O=Example" --san DNS:gateway-0042.example > device.csr
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
		-subj "/CN=Example CA" -keyout ca.key -out ca.crt 2>/dev/null
	printf "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=DNS:gateway-0042.example\n" >client.ext
	openssl x509 -req -in device.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile client.ext -out device.crt 2>/dev/null
	mtls-agentctl import-cert device device.crt
	mtls-agentctl check
	mtls-agentctl cert device >/etc/ssl/device.crt
	mtls-agentctl keyref device -o /etc/ssl/device.keyref
	chmod 644 /etc/ssl/device.crt /etc/ssl/device.keyref' || fail "keygen/csr/import"

say "curl as user tester (group mtls) through the provider, against openssl s_server -Verify 1"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sh_in "cd /root
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
		-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout server.key -out server.crt 2>/dev/null
	chmod 644 server.crt
	cp server.crt /tmp/server.crt
	setsid timeout 120 openssl s_server -quiet -accept 127.0.0.1:$port -Verify 1 -CAfile ca.crt \
		-cert server.crt -key server.key -www >/root/server.log 2>&1 </dev/null &
	for i in \$(seq 50); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done" ||
	fail "s_server did not start"
page=$(cin runuser -u tester -- env OPENSSL_CONF=/etc/mtls-agent/openssl.cnf curl -sS --max-time 30 \
	--cacert /tmp/server.crt --cert /etc/ssl/device.crt --key /etc/ssl/device.keyref \
	"https://127.0.0.1:$port/") || fail "curl as tester through the agent"
# s_server -www reports the client certificate it verified.
subject=$(printf '%s\n' "$page" | grep -a -A12 '^Client certificate' | grep -a -m1 'Subject:' || true)
say "s_server verified the client certificate of: ${subject# *}"
case "$subject" in *CN*=*gateway-0042*) ;; *) fail "s_server did not see the device certificate" ;; esac
signs=$(cin mtls-agentctl status | sed -n 's/^ *signatures: *//p')
say "the agent's signature count for device: $signs"
[ "${signs:-0}" -ge 1 ] || fail "the agent did not sign the handshake"

say "the service's sandbox, as PID 1 applied it (/proc/$PID/status)"
status=$(cin cat "/proc/$PID/status")
printf '%s\n' "$status" | grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):'
uid=$(cin id -u mtls-agent)
printf '%s\n' "$status" | grep -qE "^Uid:\s+$uid\s+$uid\s+$uid\s+$uid$" || fail "not running as mtls-agent ($uid)"
printf '%s\n' "$status" | grep -qE '^Seccomp:\s+2$' || fail "no seccomp filter"
printf '%s\n' "$status" | grep -qE '^NoNewPrivs:\s+1$' || fail "NoNewPrivs not set"
printf '%s\n' "$status" | grep -qE '^CapEff:\s+0+$' || fail "has effective capabilities"
printf '%s\n' "$status" | grep -qE '^CapBnd:\s+0+$' || fail "capability bounding set not empty"
say "LoadCredential: the PIN as the service sees it"
cin nsenter -t "$PID" -m stat -c '%n %U %a' /run/credentials/mtls-agent.service/hsm.pin ||
	fail "no credential hsm.pin in the service's namespace"

say "systemctl reload"
cin systemctl reload mtls-agent.service || fail "reload"
[ "$(cin systemctl show -p MainPID --value mtls-agent.service)" = "$PID" ] || fail "reload restarted the process"
cin mtls-agentctl status >/dev/null || fail "status after reload"
cin journalctl -u mtls-agent.service --no-pager -n 5 -o cat | tail -n 3

say "a killed agent is restarted (Restart=on-failure)"
cin systemctl kill -s KILL --kill-who=main mtls-agent.service
new=
for _ in $(seq 40); do
	new=$(cin systemctl show -p MainPID --value mtls-agent.service)
	[ "$new" != 0 ] && [ "$new" != "$PID" ] && [ "$(cin systemctl is-active mtls-agent.service)" = active ] && break
	sleep 0.5
done
[ -n "$new" ] && [ "$new" != 0 ] && [ "$new" != "$PID" ] || fail "not restarted after SIGKILL"
say "restarted: MainPID $PID -> $new"
cin mtls-agentctl list || fail "list after the restart"

say "stopped service, next connection starts it again through the socket"
cin systemctl stop mtls-agent.service
[ "$(cin systemctl is-active mtls-agent.service || true)" = inactive ] || fail "service still active after stop"
[ "$(cin systemctl is-active mtls-agent.socket)" = active ] || fail "socket gone after the service stopped"
cin runuser -u tester -- mtls-agentctl list || fail "list as tester through the socket"
[ "$(cin systemctl is-active mtls-agent.service)" = active ] || fail "not activated by the connection"
cin systemctl --no-pager status mtls-agent.service | sed -n '1,6p'

say "purge: only what the admin wrote stays"
cin systemctl disable --now mtls-agent.socket mtls-agent.service
IN_TIMEOUT=300 sh_in 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq mtls-agent libmtls-agent0 openssl-mtlsagent >/root/purge.log 2>&1 ||
	{ cat /root/purge.log; exit 1; }' || fail "purge"
# Everything named after the package, and everything in its directories.
left=$(sh_in 'find / -xdev \( -path /proc -o -path /sys -o -path /root -o -path /home \) -prune -o \
	-name "*mtls*" -print 2>/dev/null
	find /etc/mtls-agent /var/lib/mtls-agent /run/mtls-agent /etc/systemd/system/mtls-agent.service.d \
		2>/dev/null || true' | sort -u)
printf 'left after purge:\n%s\n' "$left"
expected=$(printf '%s\n' /etc/mtls-agent /etc/mtls-agent/agent.conf /etc/mtls-agent/hsm.pin \
	/etc/systemd/system/mtls-agent.service.d /etc/systemd/system/mtls-agent.service.d/softhsm.conf | sort)
[ "$left" = "$expected" ] || fail "purge left more (or other) than the admin's configuration"
say "PASS (in $((SECONDS - T0)) s)"
