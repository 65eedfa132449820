#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
#
# `mtls-agentctl check`, the operator's doctor: a good setup reports good (exit 0);
# a prepared bad setup has each problem the doctor knows found, with exactly one line
# naming the subject, what is wrong and how to fix it, and exit status 1:
# certificate/key mismatch, incomplete chain, missing clientAuth / digitalSignature,
# expired, not yet valid, RSA < 2048, keystore unreachable, wrong PIN, PIN file
# permissions (agent down: found from the configuration), socket permissions (world-
# writable directory, a socket open to every user while only root may use it, an
# allowed user who cannot open the socket).
#
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

need_root
need_cmd pkcs11-tool setpriv

softhsm_setup doctor
testca_init
RUN_DIR=$WORK/run
mkdir -p "$RUN_DIR"
chmod 0755 "$RUN_DIR"
SOCK_LINE="socket = $RUN_DIR/agent.sock"

# check as root with the configuration and the test CA's root as trust anchor.
doctor() {
	ctl check -c "$CONF" --ca "$CA_DIR/root.crt" "$@"
}

# Exactly one line of $LAST_OUT starts with PREFIX and contains TEXT.
one_line() { # PREFIX TEXT
	local n
	n=$(grep -cF -- "$2" <<<"$LAST_OUT" || true)
	[ "$n" -eq 1 ] || fail "expected one line with '$2', got $n: $LAST_OUT"
	grep -F -- "$2" <<<"$LAST_OUT" | grep -q "^$1" ||
		fail "the line with '$2' does not start with '$1': $LAST_OUT"
	grep -F -- "$2" <<<"$LAST_OUT" | grep -q ' — ' ||
		fail "the line with '$2' says no fix (' — how'): $LAST_OUT"
}

# Exactly one line for identity NAME, and it contains TEXT.
only_problem() { # NAME TEXT
	local lines
	lines=$(grep -c "^$1: " <<<"$LAST_OUT" || true)
	[ "$lines" -eq 1 ] || fail "expected exactly one line for $1, got $lines: $LAST_OUT"
	one_line "$1: " "$2"
}

# The one line for NAME is "NAME: ok".
only_ok() { # NAME
	grep -qx "$1: ok" <<<"$LAST_OUT" || fail "expected '$1: ok': $LAST_OUT"
	[ "$(grep -c "^$1: " <<<"$LAST_OUT" || true)" -eq 1 ] || fail "more than one line for $1: $LAST_OUT"
}

# Writes the certificate file of NAME directly (behind the agent's back).
put_cert() { # NAME PEM
	cp "$2" "$STATE_DIR/$1.crt"
}

# A certificate for NAME's key, valid from START to END (date -d syntax), leaf + intermediate.
issue_window() { # NAME START END OUT
	local start end
	ctl csr "$1" --subject "/CN=$1" >"$WORK/$1.csr" || fail "csr $1 failed"
	_csr_to_pem "$WORK/$1.csr" "$CA_DIR/req.pem"
	start=$(date -u -d "$2" +%Y%m%d%H%M%SZ)
	end=$(date -u -d "$3" +%Y%m%d%H%M%SZ)
	openssl ca -config "$CA_DIR/ca.cnf" -batch -notext -in "$CA_DIR/req.pem" \
		-out "$CA_DIR/leaf.pem" -extensions leaf -startdate "$start" -enddate "$end" \
		>>"$CA_DIR/issue.log" 2>&1 || fail "openssl ca failed for $1"
	cat "$CA_DIR/leaf.pem" "$CA_DIR/inter.crt" >"$4"
}

# --- 1. a good setup is reported good ------------------------------------------------------

agent_config "$SOCK_LINE"
SOCK=$RUN_DIR/agent.sock
agent_identity good
agent_start
identity_setup good ec-p256

assert_ok doctor
log "good setup: $LAST_OUT"
assert_not_contains "$LAST_OUT" "warning" "good setup report"
assert_contains "$LAST_OUT" "config $CONF: ok"
assert_contains "$LAST_OUT" "socket $SOCK: ok"
assert_contains "$LAST_OUT" "keystore hsm: ok"
assert_contains "$LAST_OUT" "good: ok"
[ "$(grep -cv ': ok$' <<<"$LAST_OUT")" -eq 0 ] || fail "good setup: lines that are not 'ok': $LAST_OUT"
assert_eq "$LAST_ERR" "" "good setup stderr"
# Without the configuration (the default one does not name this socket) and without --ca.
assert_ok ctl check
assert_contains "$LAST_OUT" "good: ok"
assert_not_contains "$LAST_OUT" "config "
assert_ok ctl check good
assert_contains "$LAST_OUT" "good: ok"
assert_ok doctor --json
python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["ok"] is True, d; assert d["agent_reachable"] is True, d; assert [i["name"] for i in d["identities"]] == ["good"], d; assert all(c["ok"] for c in d["checks"]), d' <<<"$LAST_OUT" ||
	fail "check --json on the good setup: $LAST_OUT"
agent_stop

# --- 2. identity, keystore and socket problems ----------------------------------------------

# An RSA-1024 key, made in the token by pkcs11-tool (the agent never makes one).
pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$TOKEN_LABEL" --login --pin "$USER_PIN" \
	--keypairgen --key-type rsa:1024 --label weak --id 0a0b0c >"$WORK/weak.log" 2>&1 || {
	cat "$WORK/weak.log" >&2
	fail "pkcs11-tool --keypairgen rsa:1024 failed"
}

agent_config "$SOCK_LINE"
SOCK=$RUN_DIR/agent.sock
cat >>"$CONF" <<EOF

[keystore "gone"]
type = pkcs11
module = $SOFTHSM_MODULE
token = no-such-token
pin-file = $PIN_FILE
EOF
for id in good mismatch partial noclientauth nodigsig expired notyet weak; do
	agent_identity "$id"
done
agent_identity lost "keystore = gone"
# Shares good's key and certificate, for a user who cannot open the socket (mode 0660, root).
agent_identity nobodys "key = pkcs11:object=good" "cert = $STATE_DIR/good.crt" "allow-users = nobody"
agent_start

identity_setup mismatch ec-p256
identity_setup partial ec-p256
for id in noclientauth nodigsig expired notyet; do
	assert_ok ctl keygen "$id" --type ec-p256
done
ctl csr noclientauth --subject /CN=noclientauth >"$WORK/nca.csr" || fail "csr failed"
testca_issue "$WORK/nca.csr" "$WORK/nca.pem" --no-clientauth
ctl csr nodigsig --subject /CN=nodigsig >"$WORK/nds.csr" || fail "csr failed"
testca_issue "$WORK/nds.csr" "$WORK/nds.pem" --no-digitalsig
ctl csr expired --subject /CN=expired >"$WORK/exp.csr" || fail "csr failed"
testca_issue "$WORK/exp.csr" "$WORK/exp.pem" --expired
issue_window notyet '+2 days' '+30 days' "$WORK/notyet.pem"
ctl csr weak --subject /CN=weak >"$WORK/weak.csr" || fail "csr weak (RSA-1024) failed"
testca_issue "$WORK/weak.csr" "$WORK/weak.pem"
assert_ok ctl import-cert weak "$WORK/weak.pem"
# import-cert refuses all of these; an operator (or a broken deployment script) can
# still put them in place and reload.
put_cert noclientauth "$WORK/nca.pem"
put_cert nodigsig "$WORK/nds.pem"
put_cert expired "$WORK/exp.pem"
put_cert notyet "$WORK/notyet.pem"
put_cert mismatch "$WORK/partial.chain.pem"                          # partial's certificate
openssl x509 -in "$WORK/partial.chain.pem" -out "$STATE_DIR/partial.crt" # leaf only
assert_ok ctl reload

assert_fails doctor
log "bad setup: $LAST_OUT"
assert_match "$LAST_ERR" "problems need attention"
only_ok good
only_ok nobodys
only_problem mismatch "certificate and key do not match"
only_problem partial "chain does not lead to a trust anchor in $CA_DIR/root.crt"
only_problem noclientauth "lacks extendedKeyUsage clientAuth"
only_problem nodigsig "lacks keyUsage digitalSignature"
only_problem expired "certificate expired on"
only_problem notyet "certificate not valid before"
only_problem weak "RSA key of 1024 bits is too weak"
one_line "keystore gone: " "unreachable (token 'no-such-token' not present)"
only_problem lost "not usable while keystore gone is not"
one_line "socket $SOCK: " "user nobody may use identity \"nobodys\" but cannot open the socket"
assert_contains "$LAST_OUT" "keystore hsm: ok"
assert_contains "$LAST_OUT" "config $CONF: ok"

# The same in JSON.
assert_fails doctor --json
python3 - "$LAST_OUT" <<'EOF' || fail "check --json on the bad setup: $LAST_OUT"
import json, sys
d = json.loads(sys.argv[1])
assert d["ok"] is False
ids = {i["name"]: i for i in d["identities"]}
for name in ("mismatch", "partial", "noclientauth", "nodigsig", "expired", "notyet", "weak", "lost"):
    assert not ids[name]["ok"] and len(ids[name]["problems"]) == 1, (name, ids[name])
assert ids["good"]["ok"] and ids["nobodys"]["ok"]
checks = {(c["kind"], c["name"]): c for c in d["checks"]}
assert not checks[("keystore", "gone")]["ok"]
assert checks[("keystore", "hsm")]["ok"]
assert not checks[("socket", d["socket"])]["ok"]
EOF

# Only the identity asked for (and its keystore).
assert_fails doctor weak
only_problem weak "RSA key of 1024 bits is too weak"
assert_not_contains "$LAST_OUT" "mismatch"
assert_not_contains "$LAST_OUT" "keystore gone"

# The user who may use "nobodys" but cannot reach the agent sees why.
nobody_prepare
rc=0
nobody_ctl check >"$WORK/nobody.out" 2>"$WORK/nobody.err" || rc=$?
assert_eq "$rc" 1 "check as nobody: exit status"
assert_contains "$(cat "$WORK/nobody.out")" "permission denied on $SOCK (is nobody in group $(id -gn)?) — uid $(id -u nobody) may not open the socket"

# A socket directory every local user can write.
chmod 1777 "$RUN_DIR"
assert_fails doctor good
one_line "socket $SOCK: " "its directory $RUN_DIR is writable by every local user (mode 1777)"
chmod 0755 "$RUN_DIR"
agent_stop

# --- 3. a socket open to every user while only root may use the agent -----------------------

agent_config "$SOCK_LINE" "socket-mode = 0666"
SOCK=$RUN_DIR/agent.sock
agent_identity good
agent_start
assert_fails doctor
one_line "socket $SOCK: " "mode 0666 lets every local user connect, though only root may use the agent"
only_ok good
# Without the configuration the doctor cannot know who needs the socket: a warning only.
assert_ok ctl check --ca "$CA_DIR/root.crt"
one_line "socket $SOCK: warning: " "mode 0666 lets every local user connect"
agent_stop

# --- 4. a wrong PIN ---------------------------------------------------------------------------

# nobody may use "good" too (through a socket open to every user): it sees no keystore
# states, so its line for the identity says what is wrong with the keystore.
agent_config "$SOCK_LINE" "socket-mode = 0666"
SOCK=$RUN_DIR/agent.sock
agent_identity good "allow-users = root nobody"
write_pin_file "${USER_PIN}9"
agent_start
assert_fails doctor
one_line "keystore hsm: " "wrong PIN (token 'doctor': wrong PIN in $PIN_FILE"
only_problem good "not usable while keystore hsm is not"
# nobody needs the "others" bits: the wide socket is only a warning.
one_line "socket $SOCK: warning: " "mode 0666 lets every local user connect"
rc=0
nobody_ctl check >"$WORK/nobody.out" 2>"$WORK/nobody.err" || rc=$?
assert_eq "$rc" 1 "check as nobody: exit status"
LAST_OUT=$(cat "$WORK/nobody.out")
log "as nobody: $LAST_OUT"
only_problem good "keystore hsm: wrong PIN (token 'doctor': wrong PIN in $PIN_FILE"
assert_contains "$LAST_OUT" "— for an administrator: write the token's user PIN"
! grep -q '^keystore ' <<<"$LAST_OUT" || fail "keystore lines for a non-administrator: $LAST_OUT"
agent_stop
write_pin_file "$USER_PIN"

# --- 5. PIN file permissions: the agent refuses to start, the configuration tells why -----------

chmod 0644 "$PIN_FILE"
assert_fails "$MTLS_AGENT" -n -c "$CONF"
assert_fails doctor
log "agent down: $LAST_OUT"
one_line "keystore hsm: " "PIN file $PIN_FILE is accessible by group or others (mode 0644)"
one_line "socket $SOCK: " "agent not running at $SOCK"
assert_fails doctor --json
python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["ok"] is False and d["agent_reachable"] is False and d["identities"] == [], d' <<<"$LAST_OUT" ||
	fail "check --json with the agent down: $LAST_OUT"
chmod 0600 "$PIN_FILE"
# A configuration that cannot be read is a problem of its own.
assert_fails ctl check -c "$WORK/no-such.conf"
one_line "config $WORK/no-such.conf: " "cannot read it: No such file or directory"

log "PASS"
