#!/bin/bash
# Runs each libFuzzer target (built by `make fuzz` in BUILD_DIR) for SECONDS
# on a scratch copy of its seed corpus; prints executions and coverage per
# target; exits non-zero if any target crashed, leaked or timed out.
# Usage: fuzz/run-fuzzers.sh BUILD_DIR [SECONDS=60] [TARGET...]
set -uo pipefail
build=$(cd "$1" && pwd) || exit 1
secs=${2:-60}
shift $(($# >= 2 ? 2 : 1))
src=$(cd "$(dirname "$0")/.." && pwd)
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
	targets=(dispatch policy keyref config client decoder est_answer cmp_answer)
	# The TSS2 key file codec is built only with the TPM keystore.
	if grep -q '^#define HAVE_TPM2 1' "$build/config.h" 2>/dev/null; then
		targets+=(tpm2keyfile)
	else
		echo "run-fuzzers: tpm2keyfile skipped (built without the TPM keystore)"
	fi
fi
work=$(mktemp -d /tmp/mtls-fuzz-run.XXXXXX)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
	bin=$build/fuzz/${t}_fuzzer
	[ -x "$bin" ] || { echo "run-fuzzers: $bin not built (make fuzz)"; failed+=("$t"); continue; }
	mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
	cp "$src/fuzz/corpus/$t/"* "$work/$t/corpus/"
	[ "$t" != policy ] || cp "$src/tests/vectors/tls12/"*.bin "$work/$t/corpus/"
	rc=0
	(cd "$work/$t" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		timeout -k 10 $((secs + 120)) "$bin" -max_total_time="$secs" -timeout=10 \
		-rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/$t/artifacts/" \
		corpus) >"$work/$t/log" 2>&1 || rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t/log" | tail -n 1)
	cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$work/$t/log" | tail -n 1)
	printf 'fuzz %-11s %ss: %s executions, %s, corpus %s files, exit %s\n' "$t" "$secs" \
		"${execs:-?}" "${cov:-cov: ?}" "$(find "$work/$t/corpus" -type f | wc -l)" "$rc"
	if [ "$rc" -ne 0 ]; then
		failed+=("$t")
		tail -n 60 "$work/$t/log"
		ls -l "$work/$t/artifacts" 2>/dev/null
	fi
done
if [ "${#failed[@]}" -ne 0 ]; then
	echo "run-fuzzers: FAILED: ${failed[*]}"
	exit 1
fi
echo "run-fuzzers: all targets ran ${secs}s without a crash"
