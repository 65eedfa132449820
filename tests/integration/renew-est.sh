#!/bin/bash
# Automated renewal over EST with keys in a SoftHSM token: bootstrap from
# nothing with simpleenroll (HTTP basic credentials), then two renewals by
# the schedule with simplereenroll, authenticated by an mTLS handshake that
# the agent does with the hardware key being renewed, a new key each time.
# Same checks as renew-cmp.sh (scheduled_renewal_scenario): curl loop and a
# long-running client never fail, the old key leaves the token after its
# certificate expired.
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
(umask 077 && printf 'pw-%s\n' "$(rand_token)" >"$WORK/est.pass" &&
	printf 'device:%s\n' "$(cat "$WORK/est.pass")" >"$WORK/est.basic")
est_ca_start --lifetime 60 --basic "device:$WORK/est.pass"
agent_config
scenario_lines est "basic:$WORK/est.basic"
agent_identity gw "${RENEW_LINES[@]}"
agent_start
provider_env
scheduled_renewal_scenario est simpleenroll simplereenroll
agent_stop
