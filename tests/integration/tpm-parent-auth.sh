#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# A TPM authorization failure is never retried (each one counts towards the
# TPM's dictionary-attack lockout), also when it is the parent's: with a
# persistent parent that has a password the agent does not hold (and no noDA),
# configured as srk = handle:..., and a key file under it:
# - loading the key fails once; signing, reloading and signing again do not
#   send the TPM another try;
# - keygen under that parent fails once with the TPM's authorization error,
#   then with "not tried again" (a renewal would otherwise retry it on every
#   backoff step), and `status` says why;
# - TPM2_PT_LOCKOUT_COUNTER is exactly 2 afterwards (one load, one create).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tpm-lib.sh
. "$(dirname "$0")/../tpm-lib.sh"
need_cmd tpm2_createprimary tpm2_evictcontrol tpm2_create tpm2_encodeobject tpm2_flushcontext python3

# tpm2_encodeobject (tpm2-tools 5.4) writes emptyAuth FALSE for a key without a
# password; the key has none, so say TRUE (the agent refuses FALSE, see tpm-interop.sh).
set_empty_auth() { # PEM
	python3 - "$1" <<'PY'
import base64, sys
path = sys.argv[1]
lines = open(path).read().split("\n")
b64 = "".join(l for l in lines if l and not l.startswith("-----"))
der = bytearray(base64.b64decode(b64))
i = der.find(bytes([0xa0, 0x03, 0x01, 0x01, 0x00]))
if i < 0 or i > 16:
    sys.exit("no emptyAuth FALSE near the start of " + path)
der[i + 4] = 0xff
out = base64.encodebytes(bytes(der)).decode().replace("\n", "")
body = "\n".join(out[j:j + 64] for j in range(0, len(out), 64))
open(path, "w").write("-----BEGIN TSS2 PRIVATE KEY-----\n" + body + "\n-----END TSS2 PRIVATE KEY-----\n")
PY
}

testca_init
swtpm_start
MAX=$(printf '%d' "$(tpm_tools tpm2_getcap properties-variable | sed -n 's/^TPM2_PT_MAX_AUTH_FAIL: *//p')")
[ "$MAX" -ge 3 ] || fail "TPM2_PT_MAX_AUTH_FAIL is $MAX; this test needs at least 3"
assert_eq "$(tpm_lockout_counter)" 0 "lockout counter of a new TPM"
(
	cd "$WORK"
	tpm_tools tpm2_createprimary -C o -g sha256 -G ecc256:aes128cfb -p parentpw \
		-a 'restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth' -c p.ctx
	tpm_tools tpm2_evictcontrol -C o -c p.ctx 0x81000002
	tpm_tools tpm2_flushcontext -t
	tpm_tools tpm2_create -C 0x81000002 -P parentpw -G ecc256 \
		-a 'sign|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda' -u k.pub -r k.priv
	tpm_tools tpm2_flushcontext -t
	tpm_tools tpm2_encodeobject -C 0x81000002 -P parentpw -u k.pub -r k.priv -o "$TPM_KEYS/fk.pem"
	tpm_tools tpm2_flushcontext -t
) >"$WORK/tools.log" 2>&1 || fail "tpm2-tools set-up failed: $(tail -n 5 "$WORK/tools.log")"
set_empty_auth "$TPM_KEYS/fk.pem"
openssl asn1parse -in "$TPM_KEYS/fk.pem" >"$WORK/fk.asn1" || fail "the key file is not DER in PEM"
grep -q 'INTEGER *:81000002' "$WORK/fk.asn1" || fail "the key file does not name parent 0x81000002: $(cat "$WORK/fk.asn1")"
assert_eq "$(tpm_lockout_counter)" 0 "lockout counter after the set-up (right passwords)"

TPM_KS_LINES=("srk = handle:0x81000002")
tpm_agent_config
tpm_identity fk "sign-policy = any"
tpm_identity new
agent_start
printf 'x\n' >"$WORK/msg"
for i in 1 2 3; do
	assert_fails ctl sign fk --scheme ecdsa_secp256r1_sha256 --in "$WORK/msg" --out "$WORK/fk.sig"
	[ "$i" != 2 ] || assert_ok ctl reload
done
log "sign with a key under a parent whose password we lack: $LAST_ERR"
assert_fails ctl keygen new --type ec-p256
assert_match "$LAST_ERR" 'authorization' "first keygen under the parent"
for i in 2 3; do
	assert_fails ctl keygen new --type ec-p256
	assert_contains "$LAST_ERR" "not tried again" "keygen $i under the parent"
done
log "keygen: $LAST_ERR"
assert_ok ctl status
assert_contains "$(sed -n '/^keystore tpm/,/^$/p' <<<"$LAST_OUT")" "not tried again" "keystore state"
agent_stop
assert_eq "$(tpm_lockout_counter)" 2 "lockout counter (one refused load, one refused create)"
swtpm_stop
log "PASS"
