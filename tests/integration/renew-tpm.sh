#!/bin/bash
# Automated renewal over CMP with keys in a (simulated) TPM: the same scenario
# as renew-cmp.sh (bootstrap, two scheduled renewals with a new TPM key each,
# curl loop and long-running client, old key dropped from the identity's TSS2
# PRIVATE KEY file after its certificate expired).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../tpm-lib.sh
. "$(dirname "$0")/../tpm-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_tls_cmd curl
need_cmd python3
need_provider

testca_init
server_cert_setup
swtpm_start
(umask 077 && printf 'boot-secret-%s\n' "$(rand_token)" >"$WORK/boot.secret")
cmp_ca_start --lifetime 60 --secret "boot:$WORK/boot.secret"
tpm_agent_config
scenario_lines cmp "secret:boot:$WORK/boot.secret"
tpm_identity gw "${RENEW_LINES[@]}"
# shellcheck disable=SC2034 # read by keystore_keys in renew-lib.sh
KEYSTORE_TYPE=tpm2
agent_start
provider_env
scheduled_renewal_scenario cmp ir kur
agent_stop
