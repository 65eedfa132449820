# tests/est-ca: a test EST CA (RFC 7030 subset) over HTTPS on 127.0.0.1, with fault
# injection (see the comment at the top of tests/est-ca.c).
check_PROGRAMS += tests/est-ca
tests_est_ca_SOURCES = tests/est-ca.c
tests_est_ca_CFLAGS = $(AM_CFLAGS) $(SSL_CFLAGS) $(CRYPTO_CFLAGS)
tests_est_ca_LDADD = libcommon.la $(SSL_LIBS) $(CRYPTO_LIBS)

# tests/est_client_check: one enroll_est() / est_get_cacerts() run with keys from files.
check_PROGRAMS += tests/est_client_check
tests_est_client_check_SOURCES = tests/est_client_check.c
tests_est_client_check_CFLAGS = $(AM_CFLAGS) $(CRYPTO_CFLAGS)
tests_est_client_check_LDADD = libagentcore.la $(CRYPTO_LIBS)

TESTS += tests/integration/est-enroll.sh
EXTRA_DIST += tests/integration/est-enroll.sh
