#!/bin/bash
# Malformed frames against a live agent (truncation at every offset, every
# length field at its edge values, one byte per write, bit flips, garbage):
# the agent answers or closes, never crashes, keeps serving a well-behaved
# client, and ends with the descriptors it started with.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

TORTURE="${top_builddir:-..}/tests/frame_torture"
[ -x "$TORTURE" ] || fail "frame_torture not built at $TORTURE"

softhsm_setup frames
testca_init
agent_config
agent_identity dev1
agent_start
identity_setup dev1 ec-p256
"$TORTURE" "$SOCK" dev1 "$AGENT_PID" || fail "frame_torture reported failures"
agent_alive || fail "agent died during the malformed-frame suite"
make_cv13 "$WORK/cv" 32
sign_verify dev1 ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/dev1.pub.pem"
agent_stop
log PASS
