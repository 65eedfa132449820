# tests/cmp-ca.mk: included by the top-level Makefile.am.
#
# tests/cmp-ca: a CMP test CA (OpenSSL's CMP server framework behind a small HTTP/1.1 loop on
# 127.0.0.1) with fault injection, for the integration tests of CMP renewal. The command line,
# the log lines and the fault-file format are documented at the top of tests/cmp-ca.c.
check_PROGRAMS += tests/cmp-ca
tests_cmp_ca_SOURCES = tests/cmp-ca.c
tests_cmp_ca_CFLAGS = $(AM_CFLAGS) $(CRYPTO_CFLAGS)
tests_cmp_ca_LDADD = libcommon.la $(CRYPTO_LIBS)
