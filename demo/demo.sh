#!/bin/bash
# The mtls-agent demo, on a private SoftHSM token in a temp dir:
#   1. a local test CA and a TLS server that requires client certificates
#      (openssl s_server -Verify);
#   2. mtls-agent serving the token; the device key generated INSIDE the token
#      (mtls-agentctl keygen), a CSR signed in the token, the certificate
#      issued by the CA and imported;
#   3. an unmodified curl doing the mTLS handshake, its CertificateVerify
#      signed by the agent through the mtlsagent OpenSSL provider (when built),
#      and the server printing the client identity it verified;
#   4. a signature from `mtls-agentctl sign`, verified by openssl.
# Usage: demo/demo.sh [BUILD_DIR]   (run by demo/run after the build)
set -euo pipefail
BUILD=$(cd "${1:-$(dirname "$0")/../build}" && pwd)
AGENT=$BUILD/mtls-agent
CTL=$BUILD/mtls-agentctl
MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
PROVIDER=$BUILD/provider/.libs/mtlsagent.so

W=$(mktemp -d /tmp/mtls-demo.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "1. A SoftHSM token in $W (the 'hardware' of this demo)"
mkdir -p "$W/tokens" "$W/run" "$W/state"
chmod 755 "$W" "$W/run"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$W" >"$W/softhsm2.conf"
export SOFTHSM2_CONF=$W/softhsm2.conf
run softhsm2-util --init-token --free --label gateway --so-pin 12345678 --pin 246810 | tail -1
printf '246810\n' >"$W/hsm.pin"
chmod 600 "$W/hsm.pin"

step "2. The agent, configured for one identity \"device\""
cat >"$W/agent.conf" <<CONF
[agent]
socket = $W/run/agent.sock
state-dir = $W/state
admin-users = root

[keystore "hsm"]
type = pkcs11
module = $MODULE
token = gateway
pin-file = $W/hsm.pin

[identity "device"]
keystore = hsm
key = pkcs11:object=device
allow-users = root
sign-policy = tls-client
CONF
chmod 600 "$W/agent.conf"
cat "$W/agent.conf"
run "$AGENT" -n -c "$W/agent.conf"
"$AGENT" -f -c "$W/agent.conf" 2>"$W/agent.log" &
PIDS+=($!)
export MTLS_AGENT_SOCK=$W/run/agent.sock
for _ in $(seq 50); do "$CTL" status >/dev/null 2>&1 && break; sleep 0.1; done

step "3. A device key generated inside the token, and a CSR signed there"
run "$CTL" keygen device --type ec-p256
run "$CTL" csr device --subject "/CN=gateway-0042/O=Example Fleet" --san DNS:gateway-0042.example -o "$W/device.csr"
openssl req -in "$W/device.csr" -noout -verify -subject

step "4. A local test CA issues the certificate; the agent checks and installs it"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
	-subj "/CN=Demo Fleet CA" -keyout "$W/ca.key" -out "$W/ca.crt" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\nsubjectAltName=DNS:gateway-0042.example\n' >"$W/client.ext"
openssl x509 -req -in "$W/device.csr" -CA "$W/ca.crt" -CAkey "$W/ca.key" -CAcreateserial \
	-days 30 -extfile "$W/client.ext" -out "$W/device.crt" 2>/dev/null
run "$CTL" import-cert device "$W/device.crt"
run "$CTL" list
run "$CTL" check

step "5. A signature from the agent, verified with openssl"
# The default sign-policy only signs TLS client handshake content: here a TLS 1.3
# CertificateVerify content (64 spaces, context string, 0x00, 32-byte transcript hash).
{ printf '%64s' ''; printf 'TLS 1.3, client CertificateVerify\0'; head -c 32 /dev/urandom; } >"$W/cv.bin"
run "$CTL" sign device --scheme ecdsa_secp256r1_sha256 --in "$W/cv.bin" --out "$W/cv.sig"
openssl x509 -in "$W/device.crt" -pubkey -noout >"$W/device.pub"
run openssl dgst -sha256 -verify "$W/device.pub" -signature "$W/cv.sig" "$W/cv.bin"
printf 'hello' >"$W/other.bin"
echo "Anything else is refused by the sign-policy:"
"$CTL" sign device --scheme ecdsa_secp256r1_sha256 --in "$W/other.bin" --out "$W/x.sig" || true

if [ -f "$PROVIDER" ]; then
	step "6. An unmodified curl does mTLS; the agent signs its CertificateVerify"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
		-subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
		-keyout "$W/server.key" -out "$W/server.crt" 2>/dev/null
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	openssl s_server -quiet -accept "127.0.0.1:$port" -Verify 1 -CAfile "$W/ca.crt" \
		-cert "$W/server.crt" -key "$W/server.key" -www >"$W/server.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
	run "$CTL" keyref device -o "$W/device.keyref"
	cat "$W/device.keyref"
	cat >"$W/openssl.cnf" <<CNF
openssl_conf = openssl_init
[openssl_init]
providers = providers_sect
[providers_sect]
default = default_sect
mtlsagent = mtlsagent_sect
[default_sect]
activate = 1
[mtlsagent_sect]
module = $PROVIDER
activate = 1
CNF
	echo "curl is given the key reference file as its private key:"
	printf '$ OPENSSL_CONF=%s curl --cacert ca.crt --cert device.crt --key device.keyref https://127.0.0.1:%s/\n' "$W/openssl.cnf" "$port"
	OPENSSL_CONF=$W/openssl.cnf curl -sS --cacert "$W/server.crt" --cert "$W/device.crt" \
		--key "$W/device.keyref" "https://127.0.0.1:$port/" >"$W/page.html"
	echo "The server verified the client certificate of:"
	grep -aoE 'subject=[^<]*' "$W/page.html" | head -1 || grep -ai 'CN' "$W/page.html" | head -3
	run "$CTL" status
fi
step "Done: the private key never left the token."
