#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# Peer credentials decide. The socket is world-writable (socket-mode = 0666)
# in a world-searchable directory, so any local user reaches it; the agent
# must still refuse every caller its allow-lists and admin-users do not name.
#
# LIST by a caller who may use no identity is not refused: it answers an
# empty list (PROTOCOL.md: "Only identities whose allow-users/allow-groups
# admit the caller"). Likewise STATUS shows such a caller no identity and no
# keystore. Everything else is refused with exit 1 and "access denied".
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
need_root
need_cmd setpriv python3
for ug in nobody:nogroup daemon:daemon; do
	if ! id "${ug%:*}" >/dev/null 2>&1 || ! getent group "${ug#*:}" >/dev/null; then
		skip "user/group $ug does not exist on this system"
	fi
done

softhsm_setup access
HAVE_SPY=0
if spy_setup; then HAVE_SPY=1; else log "NOTE: pkcs11-spy not found: keystore call counts not checked"; fi
testca_init
agent_config "socket-mode = 0666"
agent_identity rootonly
agent_identity fornobody "allow-users = nobody"
agent_identity forgroup "allow-groups = nogroup"
chmod 0755 "$WORK"
agent_start
assert_eq "$(stat -c %a "$SOCK")" 666 "socket mode"

# root administers all three but may use only rootonly and forgroup (allow-users = root
# is the default), so what `cert` prints is not checked here for fornobody.
identity_setup rootonly ec-p256
identity_setup forgroup ec-p256
IDENTITY_SETUP_NO_CERT=1 identity_setup fornobody ec-p256
nobody_prepare

# Inputs nobody can read, and a directory nobody can write signatures into.
PUB=$WORK/pub
mkdir -p "$PUB"
chmod 0777 "$PUB"
make_cv13 "$PUB/cv" 32
cp "$WORK/fornobody.chain.pem" "$PUB/fornobody.chain.pem"
cp "$WORK/rootonly.chain.pem" "$PUB/rootonly.chain.pem"
chmod 0644 "$PUB"/*

# What a refusal must look like: exit 1, one line, saying access is denied.
denied() { # WHAT CMD...
	local what=$1
	shift
	assert_fails "$@"
	assert_match "$LAST_ERR" 'access denied|denied|not allowed' "$what: stderr"
}

SIGNS_BEFORE=0
[ "$HAVE_SPY" = 0 ] || SIGNS_BEFORE=$(spy_count C_SignInit)
REFUSED_BEFORE=$(log_count 'denied|refus|not allowed')

# --- nobody ---------------------------------------------------------------------------------
nobody_ctl list >"$WORK/list.nobody" 2>"$WORK/err" || fail "list as nobody failed: $(cat "$WORK/err")"
LIST=$(cat "$WORK/list.nobody")
assert_not_contains "$LIST" rootonly "list as nobody"
assert_contains "$LIST" fornobody "list as nobody"
assert_contains "$LIST" forgroup "list as nobody (allow-groups = nogroup, primary group)"

nobody_ctl status >"$WORK/status.nobody" 2>"$WORK/err" || fail "status as nobody failed: $(cat "$WORK/err")"
assert_not_contains "$(cat "$WORK/status.nobody")" rootonly "status as nobody"

denied "sign rootonly as nobody" nobody_ctl sign rootonly --scheme ecdsa_secp256r1_sha256 --in "$PUB/cv" --out "$PUB/sig"
[ ! -s "$PUB/sig" ] || fail "a refused sign wrote a signature"
denied "cert rootonly as nobody" nobody_ctl cert rootonly
assert_fails nobody_ctl sign no-such-identity --scheme ecdsa_secp256r1_sha256 --in "$PUB/cv" --out "$PUB/sig"

for id in rootonly fornobody; do
	denied "keygen $id as nobody" nobody_ctl keygen "$id" --type ec-p256
	denied "csr $id as nobody" nobody_ctl csr "$id" --subject "/CN=x"
	denied "import-cert $id as nobody" nobody_ctl import-cert "$id" "$PUB/$id.chain.pem"
done
assert_fails nobody_ctl keygen newid --type ec-p256
denied "reload as nobody" nobody_ctl reload

if [ "$HAVE_SPY" = 1 ]; then
	assert_eq "$(spy_count C_SignInit)" "$SIGNS_BEFORE" "C_SignInit calls caused by refused requests"
fi

# The identities nobody may use work for nobody.
nobody_ctl sign fornobody --scheme ecdsa_secp256r1_sha256 --in "$PUB/cv" --out "$PUB/sig.fornobody" 2>"$WORK/err" ||
	fail "sign fornobody as nobody failed: $(cat "$WORK/err")"
verify_sig "$WORK/fornobody.pub.pem" ecdsa_secp256r1_sha256 "$PUB/cv" "$PUB/sig.fornobody" ||
	fail "signature by fornobody for nobody does not verify"
nobody_ctl sign forgroup --scheme ecdsa_secp256r1_sha256 --in "$PUB/cv" --out "$PUB/sig.forgroup" 2>"$WORK/err" ||
	fail "sign forgroup as nobody (primary group nogroup) failed: $(cat "$WORK/err")"
verify_sig "$WORK/forgroup.pub.pem" ecdsa_secp256r1_sha256 "$PUB/cv" "$PUB/sig.forgroup" ||
	fail "signature by forgroup for nobody does not verify"
nobody_ctl cert fornobody >"$WORK/cert.nobody" 2>"$WORK/err" || fail "cert fornobody as nobody failed: $(cat "$WORK/err")"
cmp -s <(cert_pubkey "$WORK/cert.nobody" /dev/stdout) "$WORK/fornobody.pub.pem" ||
	fail "cert fornobody as nobody printed another certificate"

# The agent logged its refusals, naming the caller.
REFUSED=$(log_count 'denied|refus|not allowed')
[ "$REFUSED" -gt "$REFUSED_BEFORE" ] || fail "agent log does not mention any refusal"
grep -iE 'denied|refus|not allowed' "$AGENT_LOG" >"$WORK/refusals.log" || true
grep -qE '65534|nobody' "$WORK/refusals.log" ||
	fail "agent log's refusals do not name the caller (uid 65534 / nobody)"

# --- a user no list names (daemon:daemon) sees nothing and may do nothing --------------------
ctl_as daemon daemon list >"$WORK/list.daemon" 2>"$WORK/err" || fail "list as daemon failed: $(cat "$WORK/err")"
for id in rootonly fornobody forgroup; do
	assert_not_contains "$(cat "$WORK/list.daemon")" "$id" "list as daemon"
done
ctl_as daemon daemon --json list >"$WORK/list.daemon.json" 2>"$WORK/err" || fail "list --json as daemon failed: $(cat "$WORK/err")"
python3 - "$WORK/list.daemon.json" <<'PY' || fail "list --json as daemon is not an empty list: $(cat "$WORK/list.daemon.json")"
import json, sys
doc = json.load(open(sys.argv[1]))
def names(x):
    if isinstance(x, dict):
        if "name" in x: yield x["name"]
        for v in x.values(): yield from names(v)
    elif isinstance(x, list):
        for v in x: yield from names(v)
sys.exit(1 if list(names(doc)) else 0)
PY
for id in rootonly fornobody forgroup; do
	denied "sign $id as daemon" ctl_as daemon daemon sign "$id" --scheme ecdsa_secp256r1_sha256 --in "$PUB/cv" --out "$PUB/sig.d"
done

# --- root is an administrator only because admin-users says so --------------------------------
# admin-users = daemon: root keeps the identities that name it, loses the admin requests.
sed -i 's/^admin-users = root$/admin-users = daemon/' "$CONF"
grep -qx 'admin-users = daemon' "$CONF" || fail "could not rewrite admin-users"
assert_ok ctl reload
denied "keygen as non-admin root" ctl keygen rootonly --type ec-p256
denied "csr as non-admin root" ctl csr rootonly --subject "/CN=rootonly"
denied "import-cert as non-admin root" ctl import-cert rootonly "$WORK/rootonly.chain.pem"
denied "reload as non-admin root" ctl reload
assert_ok ctl list
assert_contains "$LAST_OUT" rootonly "list as non-admin root"
assert_not_contains "$LAST_OUT" fornobody "list as non-admin root"
make_cv13 "$WORK/cv" 32
sign_verify rootonly ecdsa_secp256r1_sha256 "$WORK/cv" "$WORK/rootonly.pub.pem"
denied "sign fornobody as non-admin root" ctl sign fornobody --scheme ecdsa_secp256r1_sha256 --in "$WORK/cv" --out "$WORK/sig"
# daemon is now the administrator: its reload is accepted, its signing still is not.
ctl_as daemon daemon reload 2>"$WORK/err" || fail "reload as admin daemon failed: $(cat "$WORK/err")"
denied "sign rootonly as admin daemon" ctl_as daemon daemon sign rootonly --scheme ecdsa_secp256r1_sha256 --in "$PUB/cv" --out "$PUB/sig.d"

agent_alive || fail "agent died"
agent_stop
log "PASS"
