#!/bin/bash
# The manual pages: `mandoc -T lint -W warning` reports nothing for any of
# them (the test is skipped, loudly, when mandoc is not installed), each one
# renders, and together they name what the programs have: every mtls-agentctl
# command (from its --help), every mtls-agent long option (from its --help)
# and every configuration key (from the key tables of conf/config.c).
#
# Stand-alone (no token, no agent): needs top_srcdir, and MTLS_AGENT and
# MTLS_AGENTCTL for the cross-checks (set by `make check`).
set -eu
set -o pipefail
export LC_ALL=C

NAME=man-lint
top_srcdir=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
MAN_DIR=$top_srcdir/man
PAGES="mtls-agentctl.1 mtls-agent.conf.5 mtls-agent-provider.7 mtls-agent.8"
failed=0

fail() {
	printf '%s: FAIL: %s\n' "$NAME" "$*" >&2
	failed=1
}

if ! command -v mandoc >/dev/null 2>&1; then
	printf '\n%s: *** SKIP *** mandoc is not installed (apt-get install mandoc): the manual pages were NOT checked\n' "$NAME" >&2
	exit 77
fi

for p in $PAGES; do
	f=$MAN_DIR/$p
	if [ ! -f "$f" ]; then
		fail "$f is missing"
		continue
	fi
	rc=0
	out=$(mandoc -T lint -W warning "$f" 2>&1) || rc=$?
	if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
		fail "mandoc -T lint -W warning $p (exit $rc):"
		printf '%s\n' "$out" >&2
	fi
	if ! mandoc -T utf8 "$f" >/dev/null 2>&1; then
		fail "mandoc -T utf8 $p failed"
	fi
	grep -qF "man/$p" "$MAN_DIR/Makefile.inc" || fail "$p is not installed by man/Makefile.inc"
done

# Long options a --help text describes: those at the start of its indented lines
# ("  -o, --out FILE", "      --json"). In mdoc they are written "Fl \-out".
option_names() {
	grep -oE -- '^ +(-[A-Za-z], )?--[a-z][a-z-]*' | grep -oE -- '--[a-z][a-z-]*' | sort -u
}

# Every command of mtls-agentctl, as its --help lists them, has its entry.
if [ -n "${MTLS_AGENTCTL:-}" ] && [ -x "$MTLS_AGENTCTL" ]; then
	cmds=$("$MTLS_AGENTCTL" --help | sed -n '/^Commands:/,/^$/p' | awk 'NF > 1 { print $1 }')
	[ -n "$cmds" ] || fail "no commands found in 'mtls-agentctl --help'"
	for c in $cmds; do
		grep -qE "^\.It Cm $c( |$)" "$MAN_DIR/mtls-agentctl.1" ||
			fail "mtls-agentctl.1 has no entry for the command '$c'"
		# ... and each of the command's long options.
		for o in $("$MTLS_AGENTCTL" "$c" --help | option_names); do
			[ "$o" = --help ] && continue
			grep -qF -- "Fl \\${o#-}" "$MAN_DIR/mtls-agentctl.1" ||
				fail "mtls-agentctl.1 does not mention '$c $o'"
		done
	done
else
	printf '%s: MTLS_AGENTCTL not set or not built: commands not cross-checked\n' "$NAME" >&2
fi

# Every long option of mtls-agent.
if [ -n "${MTLS_AGENT:-}" ] && [ -x "$MTLS_AGENT" ]; then
	opts=$("$MTLS_AGENT" --help | option_names)
	[ -n "$opts" ] || fail "no options found in 'mtls-agent --help'"
	for o in $opts; do
		grep -qF -- "Fl \\${o#-}" "$MAN_DIR/mtls-agent.8" ||
			fail "mtls-agent.8 does not mention the option '$o'"
	done
else
	printf '%s: MTLS_AGENT not set or not built: options not cross-checked\n' "$NAME" >&2
fi

# Every key of the configuration, from the tables of conf/config.c.
keys=$(sed -n '/^static const char \*const \(agent\|keystore\|identity\)_keys\[/,/^};/p' \
	"$top_srcdir/conf/config.c" | grep -oE '"[a-z][a-z0-9-]*"' | tr -d '"' | sort -u)
[ -n "$keys" ] || fail "no configuration keys found in conf/config.c"
for k in $keys; do
	grep -qE "^\.It Cm $k( |$)" "$MAN_DIR/mtls-agent.conf.5" ||
		fail "mtls-agent.conf.5 has no entry for the key '$k'"
done

[ "$failed" -eq 0 ] || exit 1
printf '%s: PASS (%s)\n' "$NAME" "$PAGES" >&2
