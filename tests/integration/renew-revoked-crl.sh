#!/bin/bash
# Revocation awareness with a CRL only: gw's certificate names a CRL distribution point
# and no OCSP responder; the CRL (`openssl ca -gencrl`) is served by a plain HTTP server on
# 127.0.0.1. Same scenario as renew-revoked.sh (revoked_scenario in tests/renew-lib.sh).
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
# shellcheck source=../renew-lib.sh
. "$(dirname "$0")/../renew-lib.sh"
need_tls_cmd curl
need_cmd python3
need_provider

testca_init
server_cert_setup
softhsm_setup revokedcrl
revoked_scenario crl
