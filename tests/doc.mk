# tests/doc.mk: tests of the documentation and of `mtls-agentctl check`.
# Included by Makefile.am after tests/Makefile.inc (which sets the test
# environment: MTLS_AGENT, MTLS_AGENTCTL, top_srcdir, ...).
#
#   man-lint.sh     mandoc -T lint -W warning on every page (skipped, loudly,
#                   without mandoc); the pages name every mtls-agentctl
#                   command, every mtls-agent option and every configuration
#                   key of conf/config.c
#   check-doctor.sh mtls-agentctl check finds each problem of a prepared bad
#                   setup with one line, and reports a good setup as good
DOC_TESTS = \
	tests/integration/man-lint.sh \
	tests/integration/check-doctor.sh

TESTS += $(DOC_TESTS)
EXTRA_DIST += $(DOC_TESTS)
