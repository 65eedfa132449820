#!/bin/sh
# Replays every seed corpus through its fuzz target, built without libFuzzer
# (part of `make check`, any compiler). A crash or an abort() fails the test.
set -eu
b=${top_builddir:-.}/fuzz
c=${top_srcdir:-.}/fuzz/corpus
"$b/dispatch_replay" "$c/dispatch"
"$b/policy_replay" "$c/policy" "${top_srcdir:-.}/tests/vectors/tls12"
"$b/keyref_replay" "$c/keyref"
"$b/config_replay" "$c/config"
"$b/client_replay" "$c/client"
"$b/decoder_replay" "$c/decoder"
"$b/est_answer_replay" "$c/est_answer"
"$b/cmp_answer_replay" "$c/cmp_answer"
# Built only with the TPM keystore (configure finds tss2-esys).
if [ -x "$b/tpm2keyfile_replay" ]; then
	"$b/tpm2keyfile_replay" "$c/tpm2keyfile"
else
	echo "tpm2keyfile: not built (no TPM keystore in this build)"
fi
