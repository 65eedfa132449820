#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# Callers learn nothing they may not use, and cannot flood the log.
#  - A uid that may use no identity (nobody) gets the same error for a name
#    that does not exist and for one it may not use (exit status and text,
#    the name aside), for cert, sign and the identity lookup.
#  - 10,000 refused requests on one connection (a protocol client in Python,
#    as nobody) write a bounded number of log lines, one of which says the
#    rest are counted; the agent keeps serving root meanwhile and afterwards.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
need_root
need_cmd setpriv python3
id nobody >/dev/null 2>&1 && getent group nogroup >/dev/null || skip "user nobody / group nogroup missing"

softhsm_setup refusals
testca_init
agent_config "socket-mode = 0666"
agent_identity secret
chmod 0755 "$WORK"
agent_start
identity_setup secret ec-p256
nobody_prepare
PUB=$WORK/pub
mkdir -p "$PUB"
chmod 0777 "$PUB"
make_cv13 "$PUB/cv" 32
chmod 0644 "$PUB/cv"

# --- the same answer for missing and forbidden names ------------------------------------------
same_answer() { # WHAT ARGS-with-NAME...
	local what=$1 a b rca=0 rcb=0
	shift
	nobody_ctl "${@//NAME/secret}" >/dev/null 2>"$WORK/err.a" || rca=$?
	nobody_ctl "${@//NAME/no-such-id}" >/dev/null 2>"$WORK/err.b" || rcb=$?
	a=$(sed 's/secret/NAME/g' "$WORK/err.a")
	b=$(sed 's/no-such-id/NAME/g' "$WORK/err.b")
	[ "$rca" -ne 0 ] || fail "$what: nobody was allowed the forbidden identity"
	assert_eq "$rcb" "$rca" "$what: exit status for a missing vs a forbidden name"
	assert_eq "$b" "$a" "$what: error for a missing vs a forbidden name"
	log "ok: $what: both answered: $a"
}
same_answer "cert" cert NAME
same_answer "sign" sign NAME --scheme ecdsa_secp256r1_sha256 --in "$PUB/cv" --out "$PUB/sig"
same_answer "keyref" keyref NAME
[ ! -s "$PUB/sig" ] || fail "a refused sign wrote a signature"
# The administrator still learns that a name does not exist.
assert_fails ctl cert no-such-id
assert_contains "$LAST_ERR" 'no identity "no-such-id"' "root's error for a missing name"

# --- 10,000 refusals, a bounded number of log lines ---------------------------------------------
cat >"$PUB/flood.py" <<'PY'
import socket, struct, sys
sock, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
def frame(t, i, payload):
    return struct.pack(">IBI", 5 + len(payload), t, i) + payload
def text(b):
    return struct.pack(">I", len(b)) + b
def reply():
    hdr = b""
    while len(hdr) < 4:
        c = s.recv(4 - len(hdr))
        if not c: raise SystemExit("agent closed the connection")
        hdr += c
    (l,) = struct.unpack(">I", hdr)
    body = b""
    while len(body) < l:
        c = s.recv(l - len(body))
        if not c: raise SystemExit("agent closed the connection")
        body += c
    return body[0]
s.sendall(frame(1, 1, struct.pack(">II", 1, 1) + text(b"flood")))
assert reply() == 128, "HELLO refused"
errors, batch = 0, 100
for k in range(0, n, batch):
    s.sendall(b"".join(frame(3, k + j + 2, text(b"secret" if j % 2 else b"missing-%d" % j))
                       for j in range(batch)))
    for j in range(batch):
        errors += reply() == 129
print(errors)
PY
chmod 0644 "$PUB/flood.py"
LINES_BEFORE=$(wc -l <"$AGENT_LOG")
ERRS=$(run_as_nobody timeout -k 5 120 python3 "$PUB/flood.py" "$SOCK" 10000) || fail "flood client failed"
assert_eq "$ERRS" 10000 "refused GET_CHAIN requests"
# Root is served meanwhile and afterwards.
assert_ok ctl sign secret --scheme ecdsa_secp256r1_sha256 --in "$PUB/cv" --out "$WORK/sig.root"
verify_sig "$WORK/secret.pub.pem" ecdsa_secp256r1_sha256 "$PUB/cv" "$WORK/sig.root" || fail "root's signature does not verify"
NEW=$(tail -n +$((LINES_BEFORE + 1)) "$AGENT_LOG" | grep -c 'uid 65534' || true)
log "10000 refusals of uid 65534 wrote $NEW log lines"
[ "$NEW" -ge 2 ] || fail "the refusals were not logged at all ($NEW lines)"
[ "$NEW" -le 12 ] || fail "10000 refusals wrote $NEW log lines (at most 12 expected: 10 + notices)"
tail -n +$((LINES_BEFORE + 1)) "$AGENT_LOG" | grep -q 'further ones are counted' ||
	fail "no log line says that further refusals are counted"
agent_alive || fail "agent died"
agent_stop
log "PASS"
