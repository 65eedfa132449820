#!/bin/bash
# A PBM-protected CMP IR exposes the bootstrap secret to offline guessing by anyone who
# captures it. `mtls-agent -n` (and every start and reload) warns, as FILE:LINE of the
# bootstrap line: when the secret is short (under 128 bits by the estimate length x
# log2(character classes used): 31 hex digits are 124 bits, 32 are 128) and when the
# ca-url is http://. A long secret over https:// gives no warning; the configuration
# stays valid either way.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

softhsm_setup warn
(umask 077 && printf 'boot-secret\n' >"$WORK/short.secret" &&
	printf '0123456789abcdef0123456789abcde\n' >"$WORK/hex31.secret" &&
	printf '0123456789abcdef0123456789abcdef\n' >"$WORK/hex32.secret")
printf 'unused\n' >"$WORK/ca.pem"

# check URL SECRETFILE: runs mtls-agent -n on an identity with that bootstrap; stderr in $WORK/n.err.
check() {
	agent_config
	agent_identity gw "renew = cmp" "ca-url = $1" "ca-trust = $WORK/ca.pem" \
		"bootstrap = secret:boot:$2"
	BOOT_LINE=$(line_of "$CONF" "bootstrap = secret:boot:$2")
	"$MTLS_AGENT" -n -c "$CONF" >"$WORK/n.out" 2>"$WORK/n.err" ||
		fail "mtls-agent -n refused the configuration: $(cat "$WORK/n.err")"
	grep -q "configuration OK" "$WORK/n.out" || fail "mtls-agent -n: $(cat "$WORK/n.out")"
}
short_warning() { grep -F "$CONF:$BOOT_LINE: identity \"gw\": the bootstrap secret in $1 is short: $2 characters, about $3 bits at best" "$WORK/n.err"; }
http_warning() { grep -F "$CONF:$BOOT_LINE: identity \"gw\": the bootstrap secret protects an IR sent over http://" "$WORK/n.err"; }

check http://127.0.0.1:9/pkix/ "$WORK/short.secret"
short_warning "$WORK/short.secret" 11 65 >/dev/null || fail "no short-secret warning: $(cat "$WORK/n.err")"
http_warning >/dev/null || fail "no http:// warning: $(cat "$WORK/n.err")"
assert_eq "$(grep -c 'warning' "$WORK/n.err")" 2 "warnings for a short secret over http://"
log "short secret over http://: $(tr '\n' ' ' <"$WORK/n.err")"

check https://127.0.0.1:9/pkix/ "$WORK/hex31.secret"
short_warning "$WORK/hex31.secret" 31 124 >/dev/null || fail "no short-secret warning for 31 hex digits: $(cat "$WORK/n.err")"
http_warning >/dev/null && fail "an http:// warning for an https:// ca-url"
assert_eq "$(grep -c 'warning' "$WORK/n.err")" 1 "warnings for 31 hex digits over https://"

check https://127.0.0.1:9/pkix/ "$WORK/hex32.secret"
[ ! -s "$WORK/n.err" ] || fail "warnings for 32 hex digits over https://: $(cat "$WORK/n.err")"

check http://127.0.0.1:9/pkix/ "$WORK/hex32.secret"
http_warning >/dev/null || fail "no http:// warning for a long secret: $(cat "$WORK/n.err")"
assert_eq "$(grep -c 'warning' "$WORK/n.err")" 1 "warnings for 32 hex digits over http://"
log "OK: short secret and http:// each warned with $CONF:$BOOT_LINE; 128 bits over https:// silent"
