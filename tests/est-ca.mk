# tests/est-ca: a test EST CA (RFC 7030 subset) over HTTPS on 127.0.0.1, with fault
# injection (see the comment at the top of tests/est-ca.c).
check_PROGRAMS += tests/est-ca
tests_est_ca_SOURCES = tests/est-ca.c
tests_est_ca_CFLAGS = $(AM_CFLAGS) $(SSL_CFLAGS) $(CRYPTO_CFLAGS)
tests_est_ca_LDADD = libcommon.la $(SSL_LIBS) $(CRYPTO_LIBS)
