# shellcheck shell=bash
# Sourced by .ci/run, demo/run and tests/ci.sh: long phases say what they do and
# how long they have been at it, so that no phase is silent for more than a minute.
#
#   progress_run LABEL CMD...   runs CMD (its output passes through unchanged);
#                               prints "[+Ns] LABEL ..." at the start, a line every
#                               PROGRESS_INTERVAL seconds (default 30) while CMD runs
#                               (plus the output of `progress_detail` if defined),
#                               and "[+Ns] LABEL: done in Ns" or "... failed (exit N)".
# Elapsed times count from PROGRESS_T0 (set on first use; export it to share the clock).
: "${PROGRESS_T0:=$(date +%s)}"
export PROGRESS_T0

progress_elapsed() { echo "$(($(date +%s) - PROGRESS_T0))"; }

progress_note() { # TEXT...
	printf '[+%ss] %s\n' "$(progress_elapsed)" "$*"
}

progress_run() { # LABEL CMD...
	local label=$1 start rc hb
	shift
	start=$(date +%s)
	progress_note "$label ..."
	(
		# The sleep is killed with the loop: nothing is left holding our stdout.
		trap 'kill "$s" 2>/dev/null; exit 0' TERM
		while :; do
			sleep "${PROGRESS_INTERVAL:-30}" &
			s=$!
			wait "$s"
			printf '[+%ss] %s: still running (%ss)%s\n' "$(progress_elapsed)" "$label" \
				"$(($(date +%s) - start))" \
				"$(declare -F progress_detail >/dev/null && progress_detail)"
		done
	) &
	hb=$!
	rc=0
	"$@" || rc=$?
	kill "$hb" 2>/dev/null
	wait "$hb" 2>/dev/null
	if [ "$rc" -eq 0 ]; then
		progress_note "$label: done in $(($(date +%s) - start))s"
	else
		progress_note "$label: FAILED (exit $rc) after $(($(date +%s) - start))s"
	fi
	return "$rc"
}

# For `make check`: the tests of build dir $1 that have started and not finished
# (a .log and no .trs yet), as " - running: a.sh b.sh".
progress_running_tests() { # BUILD_DIR
	local logf running=()
	while IFS= read -r logf; do
		[ -e "${logf%.log}.trs" ] || running+=("${logf#"$1"/}")
	done < <(find "$1" -name '*.log' -newer "$1/Makefile" ! -name test-suite.log \
		! -name config.log 2>/dev/null)
	[ "${#running[@]}" -eq 0 ] || printf ' - running: %s' "${running[*]%.log}"
}
