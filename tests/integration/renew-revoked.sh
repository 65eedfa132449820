#!/bin/bash
# Revocation awareness with OCSP: the EST test CA issues gw's certificate with an OCSP
# responder (AIA) and a CRL distribution point on loopback; the real `openssl ocsp -index`
# answers. Good, responder down (a warning, handshakes go on), revoked with `openssl ca
# -revoke` (noticed within the 2 s interval, status and check show it, the CA refuses
# simplereenroll with the revoked certificate, the agent bootstraps; curl through the
# provider works with the new certificate). See revoked_scenario in tests/renew-lib.sh.
# `openssl ocsp -port` binds every interface, so the test runs in its own network
# namespace (unshare -n) with only loopback up.
set -eu
export NETNS_FOR="openssl ocsp -port"
# shellcheck source=../netns.sh
. "$(dirname "$0")/../netns.sh"
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
softhsm_setup revoked
revoked_scenario ocsp
