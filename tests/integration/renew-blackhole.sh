#!/bin/bash
# Several identities, several CAs (issue 10): one dead CA must not delay the
# renewals of the others. Identity "slow" enrolls with a CA that accepts TCP
# connections and never answers (a blackhole; ca-timeout = 300 s, so its
# transaction hangs for the whole test); identity "gw" bootstraps from the EST
# test CA and then renews by the schedule (certificates of 60 s, due 37..40 s
# after issue) as if "slow" did not exist. Meanwhile `mtls-agentctl renew gw`
# and a reload are answered at once, and stopping the agent aborts the hanging
# transfer (agent_stop allows 10 s).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_cmd pkcs11-tool python3

testca_init
server_cert_setup
softhsm_setup blackhole
(umask 077 && printf 'pw-%s\n' "$(rand_token)" >"$WORK/est.pass" &&
	printf 'device:%s\n' "$(cat "$WORK/est.pass")" >"$WORK/est.basic")
est_ca_start --lifetime 60 --basic "device:$WORK/est.pass"

# The blackhole: accepts, reads nothing, answers nothing, keeps every connection open.
python3 - "$WORK/hole.port" >"$WORK/hole.log" 2>&1 <<'PY' &
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(64)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
held = []
while True:
    c, _ = s.accept()
    held.append(c)
    print("accepted", flush=True)
PY
bg_track $!
wait_until 10 test -s "$WORK/hole.port" || fail "the blackhole listener did not start"
HOLE_URL=https://127.0.0.1:$(cat "$WORK/hole.port")/.well-known/est

agent_config
# "slow" first in the file: with one renewal thread for all, it would be served first.
agent_identity slow "renew = est" "ca-url = $HOLE_URL" "ca-trust = $CA_TRUST" "ca-timeout = 300" \
	"bootstrap = basic:$WORK/est.basic" "subject = /CN=slow/O=mtls-agent tests" "key-type = ec-p256"
renew_lines est "bootstrap = basic:$WORK/est.basic" "subject = /CN=gw/O=mtls-agent tests" "key-type = ec-p256"
agent_identity gw "${RENEW_LINES[@]}"
agent_start

s1=$(wait_new_serial gw "" 30)
wait_until 10 grep -q accepted "$WORK/hole.log" || fail "the agent never connected to the blackholed CA"
log "gw enrolled (serial $s1) while slow's transaction hangs on the blackhole"
ctl cert gw >"$WORK/c1.pem"

# A forced renewal of gw and a reload are not held up by slow's transaction.
t=$SECONDS
assert_ok ctl renew gw
s2=$(current_serial gw)
[ "$s2" != "$s1" ] || fail "renew gw brought no new certificate"
assert_ok ctl reload
[ $((SECONDS - t)) -le 15 ] || fail "renew gw and reload took $((SECONDS - t)) s"
ctl cert gw >"$WORK/c2.pem"
log "renew gw ($s2) and reload answered in $((SECONDS - t)) s"

# The next renewal comes by the schedule: 37..40 s after issue (slack for a loaded machine).
s3=$(wait_new_serial gw "$s2" 75)
ctl cert gw >"$WORK/c3.pem"
elapsed=$(($(date -d "$(openssl x509 -in "$WORK/c3.pem" -noout -startdate | cut -d= -f2)" +%s) -
	$(date -d "$(openssl x509 -in "$WORK/c2.pem" -noout -startdate | cut -d= -f2)" +%s)))
[ "$elapsed" -ge 36 ] && [ "$elapsed" -le 50 ] ||
	fail "gw's scheduled renewal came $elapsed s after issue; due 37..40 s"
openssl verify -CAfile "$CA_DIR/root.crt" -untrusted "$WORK/c3.pem" "$WORK/c3.pem" >/dev/null ||
	fail "gw's new chain does not verify"

# slow is still inside its first transaction: no result yet, no certificate.
status_save "$WORK/st.json"
assert_eq "$(status_get "$WORK/st.json" slow last-result)" "-" "slow's last-result while its CA hangs"
assert_eq "$(status_get "$WORK/st.json" gw failures)" 0 "gw's failures"
log "gw renewed by the schedule $elapsed s after issue (serial $s3); slow still waiting on its CA"

# Stopping aborts the hanging transfer (agent_stop fails after 10 s).
t=$SECONDS
agent_stop
log "OK: agent stopped in $((SECONDS - t)) s with a transfer to the blackhole in progress"
