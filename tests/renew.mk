# Renewal tests: tests/renew-lib.sh drives the test CAs (tests/cmp-ca, tests/est-ca).
RENEW_TESTS = \
	tests/integration/renew-cmp.sh \
	tests/integration/renew-cmp-shapes.sh \
	tests/integration/renew-cmp-refused.sh \
	tests/integration/renew-cmp-rollover.sh \
	tests/integration/renew-cmp-rootca.sh \
	tests/integration/renew-est.sh \
	tests/integration/renew-tpm.sh \
	tests/integration/renew-openssl-cmp.sh \
	tests/integration/renew-openssl-cmp-pbm.sh \
	tests/integration/renew-faults-est.sh \
	tests/integration/renew-faults-cmp.sh \
	tests/integration/renew-expired.sh \
	tests/integration/renew-crash.sh \
	tests/integration/renew-skew.sh \
	tests/integration/renew-diskfull.sh \
	tests/integration/renew-blackhole.sh \
	tests/integration/renew-cacerts.sh \
	tests/integration/renew-crash-cmp.sh \
	tests/integration/renew-bootstrap-warn.sh \
	tests/integration/renew-auth.sh \
	tests/integration/renew-verify.sh \
	tests/integration/renew-clock.sh \
	tests/integration/renew-keygen-crash.sh \
	tests/integration/renew-revoked.sh \
	tests/integration/renew-revoked-crl.sh
TESTS += $(RENEW_TESTS)
EXTRA_DIST += tests/renew-lib.sh $(RENEW_TESTS)

# A longer run of the keygen crash soak (not part of `make check`): SOAK_KILLS kills
# (default 1000) timed inside key generation on SoftHSM.
soak:
	SOAK_KILLS=$${SOAK_KILLS:-1000} $(MAKE) $(AM_MAKEFLAGS) check \
		TESTS='tests/integration/renew-keygen-crash.sh'
.PHONY: soak
