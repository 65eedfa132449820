# tests/tpm.mk: included by the top-level Makefile.am (after tests/Makefile.inc
# and tests/tls.mk, whose TEST_EXTENSIONS, SH_LOG_COMPILER and
# AM_TESTS_ENVIRONMENT these tests use).
#
# The TPM 2.0 keystore on a private swtpm per test (state in the test's work
# dir, TCP ports on 127.0.0.1 that were free; stopped with TPM2_Shutdown via
# swtpm_ioctl), so `make -j check` is safe. Each script sources tests/lib.sh
# and tests/tpm-lib.sh (tpm-tls.sh also tests/tls-lib.sh) and skips (exit 77)
# loudly when swtpm, tpm2-tools, tpm2-openssl or the TLS peers are missing, or
# when the build has no TPM support (--disable-tpm2). tpm-udev.sh checks
# udev/61-mtls-agent.rules with udevadm against fake devices (root, a private
# mount namespace; skipped without udevadm). tpm-generations.sh renews over
# CMP (tests/cmp-ca, tests/renew-lib.sh) and checks the key file keeps every
# generation whose certificate is valid; tpm-generations-full.sh that a full
# key file (8 keys) makes renewal certify the current key instead of failing.
TPM_TESTS = \
	tests/integration/tpm-sign-schemes.sh \
	tests/integration/tpm-tls.sh \
	tests/integration/tpm-interop.sh \
	tests/integration/tpm-restart.sh \
	tests/integration/tpm-noda.sh \
	tests/integration/tpm-persistent.sh \
	tests/integration/tpm-udev.sh \
	tests/integration/tpm-generations.sh \
	tests/integration/tpm-generations-full.sh \
	tests/integration/tpm-abrmd.sh \
	tests/integration/tpm-parent-auth.sh

TESTS += $(TPM_TESTS)
EXTRA_DIST += tests/tpm-lib.sh $(TPM_TESTS)

# The TSS2 PRIVATE KEY codec (keystore/tpm2-keyfile.c) without a TPM.
if HAVE_TPM2
check_PROGRAMS += tests/unit/test_tpm2_keyfile
TESTS += tests/unit/test_tpm2_keyfile
tests_unit_test_tpm2_keyfile_SOURCES = tests/unit/test_tpm2_keyfile.c
tests_unit_test_tpm2_keyfile_CFLAGS = $(UNIT_CFLAGS) $(TSS2_CFLAGS)
tests_unit_test_tpm2_keyfile_LDADD = $(UNIT_LDADD) $(TSS2_LIBS)
endif
