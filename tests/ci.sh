#!/bin/bash
# The whole check, from a clean tree: autoreconf; a normal build in build/
# with `make check`; an ASan+UBSan build in build-asan/ with `make check`;
# `make distcheck`. The log of every failed test is printed. Every stage runs
# even when an earlier one failed; the exit status is non-zero if any failed.
#
# Then the Debian packages (dpkg-buildpackage, lintian) and, with them, the
# system test (tests/system/run.sh: a fresh Debian 12 booted with systemd-nspawn).
#
# Environment: JOBS (default 2), STRICT=0 (no --enable-strict), SKIP_ASAN=1,
# SKIP_DISTCHECK=1, SKIP_FUZZ=1, FUZZ_SECONDS (default 60), SKIP_DEB=1, SKIP_SYSTEM=1 (neither
# system test), SKIP_QUICKSTART=1.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
TOP=$(pwd)
JOBS=${JOBS:-2}
FAILED=()
RESULTS=()

# shellcheck source=../.ci/lib.sh
. "$TOP/.ci/lib.sh"
stage() { printf '\n======== [+%ss] %s ========\n' "$(progress_elapsed)" "$*"; }
# While a make check runs: which tests are running (set CHECK_DIR).
CHECK_DIR=
progress_detail() { [ -z "$CHECK_DIR" ] || progress_running_tests "$CHECK_DIR"; }

# Prints the .log of each test whose .trs says FAIL, ERROR or XPASS under DIR.
print_failed_logs() { # DIR
	local trs logf
	while IFS= read -r trs; do
		if grep -qE '^:test-result: (FAIL|ERROR|XPASS)' "$trs"; then
			logf=${trs%.trs}.log
			printf '\n-------- %s --------\n' "${logf#"$TOP"/}"
			cat "$logf" 2>/dev/null || echo "(no log)"
		fi
	done < <(find "$1" -name '*.trs' -type f | sort)
}

# Prints the automake summary lines of DIR/test-suite.log.
print_summary() { # DIR
	if [ -f "$1/test-suite.log" ]; then
		grep -E '^# (TOTAL|PASS|SKIP|XFAIL|FAIL|XPASS|ERROR):' "$1/test-suite.log" || true
	else
		echo "(no test-suite.log in $1)"
	fi
	# Which tests were skipped, and why (their SKIP lines).
	find "$1" -name '*.trs' -type f -exec grep -l '^:test-result: SKIP' {} + 2>/dev/null | sort |
		while IFS= read -r trs; do
			printf 'SKIP %s: %s\n' "${trs%.trs}" \
				"$(grep -h -m1 'SKIP' "${trs%.trs}.log" 2>/dev/null || echo '?')"
		done
}

# The system directories a build's `make install`/`uninstall` could touch, and the
# entries of /tmp and /var/tmp: make check and make distcheck must change none of them
# (distcheck installs under its own prefix; tests clean up their temp dirs).
SYSTEM_DIRS=(/usr/lib /usr/local /usr/bin /usr/sbin /usr/include /usr/share/man /etc)
snapshot_system() { # FILE
	{
		find "${SYSTEM_DIRS[@]}" -xdev -printf '%p\t%y\t%m\t%u:%g\t%s\t%TY-%Tm-%Td %TH:%TM\n' 2>/dev/null
		find /tmp /var/tmp -mindepth 1 -maxdepth 1 -printf '%p\t%y\n' 2>/dev/null
	} | LC_ALL=C sort -T "$(dirname "$1")" >"$1" # its temp files: not in /tmp itself
}

record() { # NAME STATUS
	if [ "$2" -eq 0 ]; then
		RESULTS+=("PASS  $1")
	else
		RESULTS+=("FAIL  $1 (exit $2)")
		FAILED+=("$1")
	fi
}

# build DIR NAME CONFIGURE_ARGS...: configure, make, make check.
build_and_check() {
	local dir=$1 name=$2 rc
	shift 2
	stage "$name: configure ($*)"
	rm -rf "${TOP:?}/$dir"
	mkdir -p "$TOP/$dir"
	(cd "$TOP/$dir" && ../configure "$@")
	rc=$?
	record "$name: configure" "$rc"
	[ "$rc" -eq 0 ] || { tail -n 60 "$TOP/$dir/config.log" 2>/dev/null; return 1; }

	stage "$name: make -j$JOBS"
	progress_run "$name: make" make -C "$TOP/$dir" -j"$JOBS"
	rc=$?
	record "$name: make" "$rc"
	[ "$rc" -eq 0 ] || return 1

	stage "$name: make -j$JOBS check"
	CHECK_DIR=$TOP/$dir
	progress_run "$name: make check" make -C "$TOP/$dir" -j"$JOBS" check
	rc=$?
	CHECK_DIR=
	record "$name: make check" "$rc"
	if [ "$rc" -ne 0 ]; then
		stage "$name: logs of failed tests"
		print_failed_logs "$TOP/$dir"
	fi
	stage "$name: summary"
	print_summary "$TOP/$dir"
	return "$rc"
}

stage "environment"
uname -a
id
cat /etc/debian_version 2>/dev/null || true
openssl version
softhsm2-util --version 2>/dev/null || true
gcc --version | head -n 1
clang --version 2>/dev/null | head -n 1 || true

if command -v shellcheck >/dev/null; then
	stage "shellcheck"
	# -S warning: info-level notes (e.g. SC2119 on optional-argument helpers) do not fail CI.
	progress_run shellcheck shellcheck -S warning -x -P SCRIPTDIR tests/lib.sh tests/integration/*.sh \
		tests/ci.sh .ci/run .ci/lib.sh demo/run demo/demo.sh tests/system/*.sh
	record "shellcheck" $?
fi

if command -v clang-format >/dev/null && [ -d .git ]; then
	stage "clang-format"
	# One style for every C file (.clang-format): a file that clang-format would change fails.
	progress_run clang-format sh -c "git ls-files -z '*.c' '*.h' | xargs -0 clang-format --dry-run --Werror"
	record "clang-format" $?
fi

SNAP_DIR=$(mktemp -d /tmp/mtls-ci-snap.XXXXXX)
trap 'rm -rf "$SNAP_DIR"' EXIT
snapshot_system "$SNAP_DIR/before"

stage "autoreconf -fi"
progress_run "autoreconf -fi" autoreconf -fi
rc=$?
record "autoreconf" "$rc"
if [ "$rc" -ne 0 ]; then
	printf '\nautoreconf failed: nothing else can run\n'
	exit 1
fi

STRICT_FLAG=--enable-strict
[ "${STRICT:-1}" = 1 ] || STRICT_FLAG=
build_and_check build "default build" --enable-test-hooks ${STRICT_FLAG:+"$STRICT_FLAG"}

# Fuzzing: `make fuzz` (clang: libFuzzer with ASan+UBSan) in the default build's
# tree, then each target for FUZZ_SECONDS (default 60) on a copy of its seed
# corpus; a crash, a leak or a failed build fails the stage. SKIP_FUZZ=1 skips it.
if [ "${SKIP_FUZZ:-0}" != 1 ] && [ -f "$TOP/build/Makefile" ]; then
	stage "fuzz: make fuzz, ${FUZZ_SECONDS:-60} s per target"
	if command -v clang >/dev/null; then
		progress_run "make fuzz" make -C "$TOP/build" fuzz &&
			progress_run "fuzzers" "$TOP/fuzz/run-fuzzers.sh" "$TOP/build" "${FUZZ_SECONDS:-60}"
		record "fuzz (make fuzz + run-fuzzers.sh)" $?
	else
		record "fuzz (clang missing: it is in .ci/packages-test)" 1
	fi
fi

if [ "${SKIP_ASAN:-0}" != 1 ]; then
	# ASan+UBSan with clang when it is there (libclang-rt-14-dev), else gcc.
	ASAN_CC=gcc
	command -v clang >/dev/null && ASAN_CC=clang
	ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1:fast_unwind_on_malloc=0}
	UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
	export ASAN_OPTIONS UBSAN_OPTIONS
	# The provider and engine are loaded into curl, openssl, mosquitto: programs
	# without the sanitizer runtime, which cannot load instrumented modules. The
	# ASan run therefore gives them the default build's modules: every TLS test
	# still drives the instrumented agent with real clients.
	export MTLS_PROVIDER_MODULE="$TOP/build/provider/.libs/mtlsagent.so"
	export MTLS_ENGINE_MODULE="$TOP/build/engine/.libs/mtlsagent-engine.so"
	# Likewise the PKCS#11 module for p11tool, gnutls-cli, wget, git and Java
	# (tests/p11_client, instrumented itself, still loads the instrumented one).
	export MTLS_PKCS11_MODULE="$TOP/build/pkcs11/.libs/mtls-agent-pkcs11.so"
	build_and_check build-asan "asan+ubsan build ($ASAN_CC)" --enable-asan --enable-test-hooks CC="$ASAN_CC"
	unset ASAN_OPTIONS UBSAN_OPTIONS MTLS_PROVIDER_MODULE MTLS_ENGINE_MODULE MTLS_PKCS11_MODULE
fi

if [ "${SKIP_DISTCHECK:-0}" != 1 ]; then
	if [ -f "$TOP/build/Makefile" ]; then
		stage "make distcheck"
		CHECK_DIR=$TOP/build
		progress_run "make distcheck" make -C "$TOP/build" -j"$JOBS" distcheck
		rc=$?
		CHECK_DIR=
		record "make distcheck" "$rc"
		if [ "$rc" -ne 0 ]; then
			stage "distcheck: logs of failed tests"
			find "$TOP/build" -maxdepth 1 -type d -name 'mtls-agent-*' | while IFS= read -r d; do
				print_failed_logs "$d"
			done
		fi
	else
		record "make distcheck (no configured build/)" 1
	fi
fi

# Everything above (both make check runs and distcheck) stayed inside the tree.
stage "system directories and /tmp unchanged since the start"
snapshot_system "$SNAP_DIR/after"
# The snapshot directory itself is in both lists.
if diff -u "$SNAP_DIR/before" "$SNAP_DIR/after"; then
	echo "unchanged: ${SYSTEM_DIRS[*]} /tmp /var/tmp ($(wc -l <"$SNAP_DIR/after") entries)"
	record "system unchanged by make check/distcheck" 0
else
	record "system unchanged by make check/distcheck" 1
fi

# The Debian packages, built from a copy of the tree (dpkg-buildpackage writes
# its results into the parent directory), then lintian: no errors allowed.
if [ "${SKIP_DEB:-0}" != 1 ] && command -v dpkg-buildpackage >/dev/null; then
	stage "dpkg-buildpackage -b -us -uc + lintian"
	debdir=$(mktemp -d /tmp/mtls-deb.XXXXXX)
	mkdir -p "$debdir/src"
	tar --exclude='./build*' --exclude=./.git --exclude=./autom4te.cache -cf - . |
		tar -xf - -C "$debdir/src"
	progress_run "dpkg-buildpackage (log: $debdir/build.log)" \
		bash -c 'cd "$1/src" && dpkg-buildpackage -b -us -uc >"$1/build.log" 2>&1' _ "$debdir"
	rc=$?
	[ "$rc" -eq 0 ] || tail -n 80 "$debdir/build.log"
	record "dpkg-buildpackage" "$rc"
	if [ "$rc" -eq 0 ]; then
		ls -l "$debdir"/*.deb
		lintian --fail-on error "$debdir"/*.changes
		record "lintian (no errors)" $?
		# The packages in a fresh Debian 12 booted with systemd as PID 1.
		if [ "${SKIP_SYSTEM:-0}" != 1 ]; then
			stage "system test: the packages under a real systemd (tests/system/run.sh)"
			progress_run "system test" timeout 1800 "$TOP/tests/system/run.sh" "$debdir"
			rc=$?
			if [ "$rc" -eq 77 ]; then
				RESULTS+=("SKIP  system test (see its SKIP line)")
			else
				record "system test (systemd-nspawn --boot)" "$rc"
			fi
		fi
		# The README's Quickstart pasted into a fresh Debian 12 booted the same way.
		if [ "${SKIP_SYSTEM:-0}" != 1 ] && [ "${SKIP_QUICKSTART:-0}" != 1 ]; then
			stage "README Quickstart in a fresh Debian 12 under systemd (tests/system/quickstart.sh)"
			progress_run "quickstart test" timeout 2400 "$TOP/tests/system/quickstart.sh"
			rc=$?
			if [ "$rc" -eq 77 ]; then
				RESULTS+=("SKIP  quickstart test (see its SKIP line)")
			else
				record "README Quickstart (systemd-nspawn --boot)" "$rc"
			fi
		fi
	fi
	rm -rf "$debdir"
fi

stage "result"
printf '%s\n' "${RESULTS[@]}"
if [ "${#FAILED[@]}" -ne 0 ]; then
	printf '\nFAILED: %s\n' "${FAILED[*]}"
	exit 1
fi
printf '\nall stages passed\n'
