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
	tests/integration/renew-revoked-crl.sh \
	tests/integration/revoked-norenew.sh \
	tests/integration/renew-soak-tpm-cmp.sh
TESTS += $(RENEW_TESTS)
EXTRA_DIST += tests/renew-lib.sh tests/netns.sh $(RENEW_TESTS)

# The crash soak (issues 12 and 17), not part of `make check` beyond the bounded runs above:
# tests/integration/renew-keygen-crash.sh in each cell of SOAK_CELLS (BACKEND/PROTO), one
# after the other, SOAK_KILLS kills each (default 250: 1,000 over the four cells). Each
# cell's log goes to soak-BACKEND-PROTO.log in the build directory; its figures (lines
# "SOAK ...") are printed at the end. `make soak SOAK_CELLS=tpm/cmp SOAK_KILLS=50`: one cell.
SOAK_CELLS = pkcs11/est pkcs11/cmp tpm/est tpm/cmp
soak:
	@$(MAKE) $(AM_MAKEFLAGS) check TESTS= >/dev/null
	@rc=0; for cell in $(SOAK_CELLS); do \
		b=$${cell%/*}; p=$${cell#*/}; out=soak-$$b-$$p.log; \
		echo "soak: $$b/$$p, $${SOAK_KILLS:-250} kills: $$out"; \
		( $(AM_TESTS_ENVIRONMENT) SOAK_BACKEND=$$b SOAK_PROTO=$$p SOAK_KILLS=$${SOAK_KILLS:-250}; \
		  export SOAK_BACKEND SOAK_PROTO SOAK_KILLS; \
		  $(SH_LOG_COMPILER) $(abs_top_srcdir)/tests/integration/renew-keygen-crash.sh ) \
			>$$out 2>&1 && echo "soak: $$b/$$p: PASS" || { rc=1; echo "soak: $$b/$$p: FAIL (see $$out)"; }; \
		grep -a '^SOAK \|: FAIL: ' $$out || true; \
	done; exit $$rc
.PHONY: soak
CLEANFILES += soak-pkcs11-est.log soak-pkcs11-cmp.log soak-tpm-est.log soak-tpm-cmp.log
