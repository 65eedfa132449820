# Fleet renewal simulation: renew/sched.c driving 100,000 devices, the requests a CA sees.
# Built by `make bench` like the other benchmarks, never run by `make check` (nothing is
# timed); run bench/fleet-sim, see docs/FLEET.md.
EXTRA_PROGRAMS += bench/fleet-sim
bench_fleet_sim_SOURCES = bench/fleet-sim.c
bench_fleet_sim_CFLAGS = $(AM_CFLAGS) $(CRYPTO_CFLAGS)
bench_fleet_sim_LDADD = libagentcore.la $(CRYPTO_LIBS)
bench: bench/fleet-sim$(EXEEXT)
CLEANFILES += bench/fleet-sim$(EXEEXT)
EXTRA_DIST += docs/FLEET.md
