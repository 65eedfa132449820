# shellcheck shell=bash
# Sourced by .ci/run, demo/run and tests/ci.sh. Long phases say what they do and
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

# A source tree configured in place (./configure run in it, as older instructions
# said) makes every out-of-tree build fail ("source directory already configured"):
# `make distclean` it, which removes only what configure and make generated.
clean_intree_config() {
	[ -f config.status ] || [ -f Makefile ] || return 0
	progress_note "this source tree was configured in place; cleaning it with 'make distclean' (builds go to build/)"
	if [ -f Makefile ] && make distclean >/dev/null 2>&1; then
		return 0
	fi
	# No usable Makefile (e.g. configure was interrupted): remove configure's outputs.
	rm -f config.status config.log config.h stamp-h1 Makefile libtool mtls-agent.pc
	rm -rf .deps .libs ./*/.deps ./*/.dirstamp
	if [ -f config.status ] || [ -f Makefile ]; then
		echo "cannot clean the in-place configuration: run 'make distclean' here, then try again" >&2
		return 1
	fi
}

# to_log LOG CMD...: CMD with its output appended to LOG (for progress_run).
to_log() {
	local log=$1
	shift
	"$@" >>"$log" 2>&1
}

# apt-get install of the packages named in the list files (one name a line, '#'
# starts a comment; e.g. .ci/packages, .ci/packages-test), with progress lines;
# apt's output goes to LOG and is shown (its end) only on failure.
install_packages() { # LOG LIST_FILE...
	local log=$1 pkgs f
	shift
	[ "$#" -gt 0 ] || { echo "install_packages: no package list given" >&2; return 1; }
	for f in "$@"; do
		[ -r "$f" ] || { echo "install_packages: cannot read the package list $f" >&2; return 1; }
	done
	mapfile -t pkgs < <(grep -h -v -e '^#' -e '^[[:space:]]*$' "$@")
	export DEBIAN_FRONTEND=noninteractive
	: >"$log"
	progress_run "apt-get update" to_log "$log" apt-get -o DPkg::Lock::Timeout=300 update ||
		{ tail -n 30 "$log"; return 1; }
	progress_run "apt-get install of the ${#pkgs[@]} packages in $* (log: $log)" \
		to_log "$log" apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${pkgs[@]}" ||
		{ tail -n 30 "$log"; return 1; }
	progress_note "apt set up $(grep -c '^Setting up ' "$log") packages (those named, their dependencies, upgrades)"
}
