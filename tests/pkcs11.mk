# tests/pkcs11.mk: mtls-agent-pkcs11.so with real PKCS#11 consumers (GnuTLS's
# gnutls-cli, wget and p11tool, OpenSC's pkcs11-tool) against openssl s_server
# -Verify 1 on 127.0.0.1. Skipped (77) while the module is not built.
PKCS11_TESTS = \
	tests/integration/pkcs11-gnutls.sh

TESTS += $(PKCS11_TESTS)
EXTRA_DIST += $(PKCS11_TESTS)
