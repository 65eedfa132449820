#!/bin/bash
# The dependency rule of docs/HACKING.md, checked on the tree and the binary:
# - no header of the daemon (agent/) or of renewal (renew/) is included from
#   common/, keystore/, provider/, engine/, client/, pkcs11/ or conf/, except the pure
#   parsers the configuration reader uses (conf/config.c: renew/sched.h,
#   renew/renew-verify.h, renew/revocation.h);
# - mtls-agentctl (whose check uses conf/, the agent's own configuration reader and
#   access rule) links no keystore, TPM, renewal or systemd library;
# - the daemon (agent/) reaches renewal only through its interface renew/renew.h;
# - the daemon holds no provider entry point and no client socket code (it
#   links the provider's internal library, not the module).
set -u
: "${top_srcdir:?run from make check}" "${top_builddir:?run from make check}"
status=0

bad=$(cd "$top_srcdir" &&
	grep -rnE '#[[:space:]]*include[[:space:]]+"(agent|renew)/' \
		common keystore provider engine client pkcs11 conf 2>/dev/null |
	grep -vE '^conf/config\.c:[0-9]+:#include "renew/(sched|renew-verify|revocation)\.h"')
if [ -n "$bad" ]; then
	echo "FAIL: a library folder includes a daemon or renewal header:" >&2
	echo "$bad" >&2
	status=1
else
	echo "ok: common/ keystore/ provider/ engine/ client/ pkcs11/ conf/ include no agent/ or renew/ header (conf/config.c: the pure renewal parsers)"
fi

# The doctor shares the agent's configuration reader, not its keystores: libagentconf must
# not drag libp11-kit, tpm2-tss, libcurl, libssl or libsystemd into the CLI.
ctl=$top_builddir/.libs/mtls-agentctl
[ -x "$ctl" ] || ctl=$top_builddir/mtls-agentctl
if ! command -v readelf >/dev/null; then
	echo "SKIP part: readelf (binutils) not installed, mtls-agentctl's libraries are not checked" >&2
elif [ ! -x "$ctl" ]; then
	echo "FAIL: $ctl not built" >&2
	status=1
else
	bad=$(readelf -d "$ctl" | grep -E 'NEEDED.*(p11-kit|tss2|curl|libssl|systemd)')
	if [ -n "$bad" ]; then
		echo "FAIL: mtls-agentctl links a keystore, renewal or systemd library:" >&2
		echo "$bad" >&2
		status=1
	else
		echo "ok: mtls-agentctl links no p11-kit, tpm2-tss, libcurl, libssl or libsystemd"
	fi
fi

bad=$(cd "$top_srcdir" &&
	grep -rnE '#[[:space:]]*include[[:space:]]+"renew/' agent 2>/dev/null |
	grep -vE '"renew/renew\.h"')
if [ -n "$bad" ]; then
	echo "FAIL: the daemon reaches into renewal past renew/renew.h:" >&2
	echo "$bad" >&2
	status=1
else
	echo "ok: agent/ includes renew/renew.h only"
fi

if ! command -v nm >/dev/null; then
	echo "SKIP part: nm (binutils) not installed, the daemon's symbols are not checked" >&2
elif [ ! -x "$top_builddir/mtls-agent" ]; then
	echo "FAIL: $top_builddir/mtls-agent not built" >&2
	status=1
else
	syms=$(nm "$top_builddir/mtls-agent" | grep -E ' (OSSL_provider_init|mtls_agent_connect)$')
	if [ -n "$syms" ]; then
		echo "FAIL: the daemon contains provider or client entry points:" >&2
		echo "$syms" >&2
		status=1
	else
		echo "ok: mtls-agent holds neither OSSL_provider_init nor mtls_agent_connect"
	fi
fi
exit "$status"
