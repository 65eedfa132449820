#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# The audit trail and log priorities under the journal, without a journal:
# the agent runs in a private mount namespace where /run/systemd/journal/socket
# is a datagram socket of this test (where sd_journal_send writes), and its
# stderr is a file named by JOURNAL_STREAM (as systemd does for
# StandardError=journal). Checked: one structured entry (MTLS_* fields,
# PRIORITY) for a signature, a refusal, a keygen and an import-cert; refusal
# entries rate-limited; stderr lines carry "<N>" syslog priorities.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

need_root
need_cmd unshare
need_cmd python3
if ! unshare -m true 2>/dev/null; then
	skip "cannot create a mount namespace here (unshare -m)"
fi

softhsm_setup auditj
testca_init
agent_config
agent_identity gw
JSOCK=$WORK/journal.sock
JOUT=$WORK/journal.entries
python3 - "$JSOCK" "$JOUT" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "ab", buffering=0) as out:
    while True:
        d = s.recv(65536)
        # One entry per datagram; entries separated by an empty line, as in journalctl -o export.
        out.write(d.rstrip(b"\n") + b"\n\n")
PY
bg_track $!
wait_until 10 test -S "$JSOCK" || fail "fake journal socket did not appear"
: >"$AGENT_LOG"
JOURNAL_STREAM=$(stat -c '%d:%i' "$AGENT_LOG")
export JOURNAL_STREAM
# shellcheck disable=SC2016 # expanded by the inner shell
unshare -m --propagation private sh -c '
	mount -t tmpfs tmpfs /run &&
	mkdir -p /run/systemd/journal &&
	: >/run/systemd/journal/socket &&
	mount --bind "$1" /run/systemd/journal/socket &&
	exec "$2" -f -c "$3"' sh "$JSOCK" "$MTLS_AGENT" "$CONF" >>"$AGENT_LOG" 2>&1 </dev/null &
AGENT_PID=$!
unset JOURNAL_STREAM
wait_until 10 ctl status >/dev/null 2>&1 || fail "agent did not start (log: $(cat "$AGENT_LOG"))"
identity_setup gw ec-p256
make_cv13 "$WORK/cv"
make_cv13 "$WORK/server-cv" 32 server
assert_ok ctl sign gw --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv" --out "$WORK/sig"
assert_fails ctl sign gw --scheme ecdsa_secp256r1_sha256 --in "$WORK/server-cv" --out "$WORK/sig"

# Entries (blank-line separated) with every FIELD=VALUE given, printed one per line.
entries() { # FIELD=VALUE...
	python3 - "$JOUT" "$@" <<'PY'
import sys
want = sys.argv[2:]
for e in open(sys.argv[1], "rb").read().decode().split("\n\n"):
    f = e.split("\n")
    if e and all(w in f for w in want):
        print(" ".join(f))
PY
}
count() { entries "$@" | wc -l; }
# The fake journal (another process) writes what it received when it is scheduled: poll it,
# re-reading the file each time. The entries are datagrams written in order, so once the
# refusal (sent last) is there, the ones before it are too.
refusal_entry() { [ "$(count MTLS_AUDIT_EVENT=sign MTLS_RESULT=refused)" -ge 1 ]; }
wait_until 10 refusal_entry || fail "no refusal entry"
assert_eq "$(count MTLS_AUDIT_EVENT=sign MTLS_RESULT=ok MTLS_IDENTITY=gw MTLS_UID=0 \
	MTLS_SCHEME=ecdsa_secp256r1_sha256 PRIORITY=6)" 1 "journal entry for the signature"
assert_match "$(entries MTLS_AUDIT_EVENT=sign MTLS_RESULT=ok)" "MTLS_EXE=[^ ]*mtls-agentctl " "executable"
assert_match "$(entries MTLS_AUDIT_EVENT=sign MTLS_RESULT=ok)" "MTLS_PID=[1-9][0-9]* " "pid"
assert_match "$(entries MTLS_AUDIT_EVENT=sign MTLS_RESULT=ok)" "MESSAGE_ID=6d3e2b6f0f0a4c8e9a51c1f1d7a3b2e4" "message id"
assert_eq "$(count MTLS_AUDIT_EVENT=sign MTLS_RESULT=refused MTLS_IDENTITY=gw PRIORITY=5)" 1 "journal entry for the refusal"
assert_match "$(entries MTLS_AUDIT_EVENT=sign MTLS_RESULT=refused)" "MTLS_REASON=neither a TLS 1.3 client" "refusal reason"
assert_eq "$(count MTLS_AUDIT_EVENT=import-cert MTLS_RESULT=ok MTLS_IDENTITY=gw MTLS_UID=0)" 1 "journal entry for import-cert"
assert_eq "$(count MTLS_AUDIT_EVENT=keygen MTLS_RESULT=ok MTLS_IDENTITY=gw)" 1 "journal entry for keygen"
# Under the journal the audit goes there, not to stderr.
assert_eq "$(log_count 'audit: sign')" 0 "plain audit lines under the journal"

# stderr lines carry syslog priorities: warnings <4>, information <6>.
assert_match "$(cat "$AGENT_LOG")" '^<4>warning: identity "gw": no key' "warning priority"
assert_match "$(cat "$AGENT_LOG")" '^<6>info: listening on ' "info priority"
[ "$(grep -cv '^<[0-7]>' "$AGENT_LOG")" = 0 ] || fail "stderr lines without a priority: $(grep -v '^<[0-7]>' "$AGENT_LOG" | head -3)"

# Refusals are rate-limited (burst 50, then 10/s): 150 quick refusals leave far fewer entries.
START=$SECONDS
for _ in $(seq 1 150); do
	"$MTLS_AGENTCTL" -s "$SOCK" sign gw --scheme ecdsa_secp256r1_sha256 --in "$WORK/server-cv" \
		--out "$WORK/sig" 2>/dev/null && fail "a server CertificateVerify was signed"
done
T=$((SECONDS - START))
N=$(count MTLS_AUDIT_EVENT=sign MTLS_RESULT=refused)
if [ "$T" -lt 9 ]; then
	[ "$N" -lt 150 ] || fail "$N refusal entries for 151 refusals in $T s: no rate limit"
	sleep 1.2
	assert_fails ctl sign gw --scheme ecdsa_secp256r1_sha256 --in "$WORK/server-cv" --out "$WORK/sig"
	wait_until 5 grep -q 'refusal entries suppressed' "$AGENT_LOG" ||
		fail "no 'suppressed' notice after the burst"
	log "rate limit: $N of 151 refusal entries kept ($T s)"
else
	log "NOTE: 150 refusals took $T s (machine busy): the rate limit is not checked"
fi
ctl status >/dev/null || fail "agent stopped answering after the refusal burst"
agent_stop
