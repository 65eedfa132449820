#!/bin/sh
# Prints the N longest C functions of the tree (lines from the signature to the
# closing brace, as universal-ctags sees them). For layout work: run before and
# after a reorganisation and compare. Usage: bench/longest-functions.sh [N] [DIR]
set -eu
N=${1:-20}
DIR=${2:-$(dirname "$0")/..}
cd "$DIR"
{ git ls-files -- '*.c' 2>/dev/null || find . -name '*.c' ! -path './build*' | sed 's|^\./||'; } |
	grep -v '^build' |
	xargs ctags -x --_xformat='%{line} %{end} %N %F' --kinds-C=f --fields=+ne -o - |
	awk '$2 != "" { printf "%5d %s %s:%d\n", $2 - $1 + 1, $3, $4, $1 }' |
	sort -rn | head -n "$N"
