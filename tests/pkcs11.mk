# tests/pkcs11.mk: mtls-agent-pkcs11.so with real PKCS#11 consumers (GnuTLS's
# gnutls-cli, wget and p11tool, OpenSC's pkcs11-tool) against openssl s_server
# -Verify 1 on 127.0.0.1. Skipped (77) while the module is not built.
PKCS11_TESTS = \
	tests/integration/pkcs11-gnutls.sh \
	tests/integration/pkcs11-fork.sh \
	tests/integration/pkcs11-git.sh \
	tests/integration/pkcs11-java.sh

TESTS += $(PKCS11_TESTS)
EXTRA_DIST += $(PKCS11_TESTS)

# Drives the module as applications do (fork, threads, agent restart, init rules).
check_PROGRAMS += tests/p11_client
tests_p11_client_SOURCES = tests/p11_client.c
tests_p11_client_CFLAGS = $(AM_CFLAGS) $(CRYPTO_CFLAGS) $(P11KIT_CFLAGS)
tests_p11_client_LDADD = $(CRYPTO_LIBS) -ldl -lpthread
