#!/bin/bash
# The dependency rule of docs/HACKING.md, checked on the tree and the binary:
# - no header of the daemon (agent/) or of renewal (renew/) is included from
#   common/, keystore/, provider/, engine/, client/ or pkcs11/;
# - the daemon (agent/) reaches renewal only through its interface renew/renew.h
#   (config.c also uses the pure parsers renew/sched.h, renew/renew-verify.h and
#   renew/revocation.h's rev_mode_from_name);
# - the daemon holds no provider entry point and no client socket code (it
#   links the provider's internal library, not the module).
set -u
: "${top_srcdir:?run from make check}" "${top_builddir:?run from make check}"
status=0

bad=$(cd "$top_srcdir" &&
	grep -rnE '#[[:space:]]*include[[:space:]]+"(agent|renew)/' \
		common keystore provider engine client pkcs11 2>/dev/null)
if [ -n "$bad" ]; then
	echo "FAIL: a library folder includes a daemon or renewal header:" >&2
	echo "$bad" >&2
	status=1
else
	echo "ok: common/ keystore/ provider/ engine/ client/ pkcs11/ include no agent/ or renew/ header"
fi

bad=$(cd "$top_srcdir" &&
	grep -rnE '#[[:space:]]*include[[:space:]]+"renew/' agent 2>/dev/null |
	grep -vE '"renew/renew\.h"|^agent/config\.c:.*"renew/(sched|renew-verify|revocation)\.h"')
if [ -n "$bad" ]; then
	echo "FAIL: the daemon reaches into renewal past renew/renew.h:" >&2
	echo "$bad" >&2
	status=1
else
	echo "ok: agent/ includes renew/renew.h only (config.c: the pure parsers)"
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
