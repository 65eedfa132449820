# tests/tls.mk: included by the top-level Makefile.am (after tests/Makefile.inc).
#
# mTLS end to end with real peers (openssl s_server -Verify 1, nginx with
# ssl_verify_client on, mosquitto with require_certificate true, a Go
# crypto/tls server built from tests/go/mtls-server.go) and real
# clients (curl, mosquitto_pub/sub, openssl s_client/s_time). Each script
# sources tests/lib.sh and tests/tls-lib.sh, listens on 127.0.0.1 only (ports
# chosen by the kernel or free ports with a bounded retry), so `make -j check`
# is safe. tls-harness-selftest.sh checks the harness with ordinary key files;
# the others skip (exit 77) while the provider (provider/.libs/mtlsagent.so, or
# $MTLS_PROVIDER_MODULE) or the engine (engine/.libs/mtlsagent-engine.so, or
# $MTLS_ENGINE_MODULE) is not built.
TLS_TESTS = \
	tests/integration/tls-harness-selftest.sh \
	tests/integration/tls-provider-curl.sh \
	tests/integration/tls-provider-nginx.sh \
	tests/integration/tls-provider-mqtt.sh \
	tests/integration/tls-provider-sclient.sh \
	tests/integration/tls-provider-ed25519.sh \
	tests/integration/tls-provider-nodejs.sh \
	tests/integration/tls-go.sh \
	tests/integration/tls-provider-fork.sh \
	tests/integration/tls-provider-dtls.sh \
	tests/integration/tls-provider-allow-exe.sh \
	tests/integration/tls-provider-negative.sh \
	tests/integration/tls-provider-rotation.sh \
	tests/integration/tls-engine.sh

TESTS += $(TLS_TESTS)
EXTRA_DIST += tests/tls-lib.sh $(TLS_TESTS) tests/go/mtls-server.go
