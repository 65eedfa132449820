#!/bin/bash
# The renewal crash soak (renew-keygen-crash.sh) on the other corner of the matrix, bounded
# for `make check`: keys in swtpm, renewal over CMP, 10 kills (crash points including
# confirming/confirmed, inside key generation, from outside); `make soak` runs all four
# cells at length.
export SOAK_BACKEND=tpm SOAK_PROTO=cmp SOAK_KILLS=${SOAK_TPM_CMP_KILLS:-10}
exec bash "$(dirname "$0")/renew-keygen-crash.sh"
