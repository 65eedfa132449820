# tests/systemd.mk: included by the top-level Makefile.am (after tests/Makefile.inc).
#
# The systemd side of the agent, without systemd as PID 1:
#   systemd-units.sh       `systemd-analyze verify` of the built units (no warnings),
#                          `systemd-analyze security` exposure <= 2.0, sysusers.d and
#                          tmpfiles.d entries applied to a scratch root
#   systemd-activation.sh  socket activation (LISTEN_FDS as systemd passes it, and
#                          systemd-socket-activate): serves and signs, leaves the socket
#   systemd-notify.sh      sd_notify READY/RELOADING/STOPPING/STATUS/WATCHDOG seen on a
#                          NOTIFY_SOCKET the test listens on
#   daemon-start-error.sh  without -f and without syslog, a failed start says why on stderr
#   cert-file-replaced.sh  a certificate file replaced by another tool is noticed at the next
#                          use and re-validated (what an installed system meets)
# systemd-lib.sh is sourced by them (the stand-ins for systemd, in python3).
SYSTEMD_TESTS = \
	tests/integration/systemd-units.sh \
	tests/integration/systemd-activation.sh \
	tests/integration/systemd-notify.sh \
	tests/integration/daemon-start-error.sh \
	tests/integration/cert-file-replaced.sh

TESTS += $(SYSTEMD_TESTS)
EXTRA_DIST += tests/integration/systemd-lib.sh $(SYSTEMD_TESTS)

# Not run by make check: tests/system/run.sh (the Debian packages under a real systemd,
# run by tests/ci.sh after the package build) and its helpers.
EXTRA_DIST += tests/system/run.sh tests/system/make-root.sh tests/system/quickstart.sh \
	tests/system/readme-commands.sh tests/system/lib.sh .ci/lib.sh
