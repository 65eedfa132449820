#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# cert-out is written by the agent as root: a directory another user owns on
# the way must not redirect it. Identity "gw" enrolls over EST at start-up
# with two cert-out paths: one in a directory of our own, one through a
# symlink that user nobody placed in a directory nobody owns, pointing into a
# root-only 0700 directory. The first is written with the chain; nothing
# lands in the root-only directory; the agent logs the refusal; the
# enrollment itself stands.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_root
need_cmd setpriv python3

testca_init
server_cert_setup
softhsm_setup certout
(umask 077 && printf 'pw-%s\n' "$(rand_token)" >"$WORK/est.pass" &&
	printf 'device:%s\n' "$(cat "$WORK/est.pass")" >"$WORK/est.basic")
est_ca_start --lifetime 3600 --basic "device:$WORK/est.pass"

chmod 0755 "$WORK"
mkdir -p "$WORK/out" "$WORK/rootonly" "$WORK/userdir"
chmod 0700 "$WORK/rootonly"
chown nobody "$WORK/userdir"
run_as_nobody ln -s "$WORK/rootonly" "$WORK/userdir/link"
[ -L "$WORK/userdir/link" ] || fail "nobody could not create the symlink"

agent_config
renew_lines est "bootstrap = basic:$WORK/est.basic" "subject = /CN=gw/O=mtls-agent tests" \
	"key-type = ec-p256" "cert-out = $WORK/out/gw.pem $WORK/userdir/link/gw.pem"
agent_identity gw "${RENEW_LINES[@]}"
agent_start
serial=$(wait_new_serial gw "" 60)
ctl cert gw >"$WORK/chain.pem"
wait_until 10 test -s "$WORK/out/gw.pem" || fail "cert-out in our own directory was not written"
cmp -s "$WORK/out/gw.pem" "$WORK/chain.pem" || fail "cert-out does not hold the installed chain"
wait_until 10 grep -q "cert-out: cannot write $WORK/userdir/link/gw.pem" "$AGENT_LOG" ||
	fail "the agent did not log the refused cert-out"
refusal=$(grep -m1 "cert-out: cannot write $WORK/userdir/link/gw.pem" "$AGENT_LOG")
log "refused: $refusal"
assert_contains "$refusal" "symbolic link" "the refusal names the symlink it did not follow"
[ -z "$(ls -A "$WORK/rootonly")" ] || fail "something was written into the root-only directory: $(ls -la "$WORK/rootonly")"
[ -z "$(find "$WORK/userdir" -mindepth 1 ! -name link)" ] || fail "files left in the user's directory"
assert_eq "$(current_serial gw)" "$serial" "the enrollment stands"
agent_stop
log "PASS"
