#!/bin/bash
# Automated renewal over CMP with keys in a SoftHSM token. The identity starts
# with no key at all: the agent bootstraps it (IR, shared secret), gets a
# 60-second certificate from the test CMP CA, then renews it on its own
# schedule (KUR protected by the current key, proof of possession by a new
# key made in the token) twice in a row. Meanwhile curl, through the
# provider, handshakes with openssl s_server -Verify over and over, and one
# long-running client keeps using the first certificate: no handshake may
# fail. Each renewal must bring a new key; the old key must be gone from the
# token once its certificate has expired (see scheduled_renewal_scenario).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_tls_cmd curl
need_cmd pkcs11-tool python3
need_provider

testca_init
server_cert_setup
softhsm_setup renew
(umask 077 && printf 'boot-secret-%s\n' "$(rand_token)" >"$WORK/boot.secret")
cmp_ca_start --lifetime 60 --secret "boot:$WORK/boot.secret"
agent_config
scenario_lines cmp "secret:boot:$WORK/boot.secret"
agent_identity gw "${RENEW_LINES[@]}"
agent_start
provider_env
scheduled_renewal_scenario cmp ir kur
agent_stop
