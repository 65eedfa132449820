#!/bin/bash
# shellcheck disable=SC2119 # lib.sh helpers take optional arguments
# Java (Debian's default JDK) with SunPKCS11 configured with
# mtls-agent-pkcs11.so: a KeyStore "PKCS11" loaded without a PIN holds the
# identity (private key + certificate, paired by CKA_ID), and an
# HttpsURLConnection with that KeyManager completes mTLS against
# openssl s_server -Verify 1 -verify_return_error (TLS 1.3 and 1.2, EC P-256
# and RSA-2048): the server's page shows the verified client certificate and
# the agent signed. Java signs through SunPKCS11's own mechanism choice; the
# identities use sign-policy = digest so that raw-digest mechanisms work too.
set -eu
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=../tls-lib.sh
. "$(dirname "$0")/../tls-lib.sh"
need_cmd python3
need_cmd java

P11_MODULE=${MTLS_PKCS11_MODULE:-$top_builddir/pkcs11/.libs/mtls-agent-pkcs11.so}
[ -f "$P11_MODULE" ] || skip "PKCS#11 module not built: $P11_MODULE (set MTLS_PKCS11_MODULE)"

softhsm_setup p11java
testca_init
server_cert_setup
agent_config
agent_identity j-ec "sign-policy = digest"
agent_identity j-rsa "sign-policy = digest"
agent_start
identity_setup j-ec ec-p256
identity_setup j-rsa rsa-2048
export MTLS_AGENT_SOCK=$SOCK
unset OPENSSL_CONF OPENSSL_ENGINES

cat >"$WORK/sunpkcs11.cfg" <<EOF
name = mtlsagent
library = $P11_MODULE
slotListIndex = 0
EOF

cat >"$WORK/Client.java" <<'EOF'
// java Client.java CONFIG ALIAS CA_PEM URL PROTOCOL: GET URL over mTLS with the
// PKCS#11 key ALIAS, the page on stdout.
import java.io.*;
import java.net.URL;
import java.security.*;
import java.security.cert.*;
import javax.net.ssl.*;

public class Client {
    public static void main(String[] a) throws Exception {
        Provider p = Security.getProvider("SunPKCS11").configure(a[0]);
        Security.addProvider(p);
        KeyStore ks = KeyStore.getInstance("PKCS11", p);
        ks.load(null, null); // no PIN: the agent checks who is calling
        if (!ks.isKeyEntry(a[1]))
            throw new Exception("no key entry " + a[1] + " in " + java.util.Collections.list(ks.aliases()));
        // The one identity named on the command line, whatever else the token holds.
        final PrivateKey key = (PrivateKey) ks.getKey(a[1], null);
        java.security.cert.Certificate[] certs = ks.getCertificateChain(a[1]);
        final X509Certificate[] chain = new X509Certificate[certs.length];
        for (int i = 0; i < certs.length; i++)
            chain[i] = (X509Certificate) certs[i];
        X509ExtendedKeyManager km = new X509ExtendedKeyManager() {
            public String[] getClientAliases(String t, Principal[] i) { return new String[] {"id"}; }
            public String chooseClientAlias(String[] t, Principal[] i, java.net.Socket s) { return "id"; }
            public String chooseEngineClientAlias(String[] t, Principal[] i, SSLEngine e) { return "id"; }
            public String[] getServerAliases(String t, Principal[] i) { return null; }
            public String chooseServerAlias(String t, Principal[] i, java.net.Socket s) { return null; }
            public X509Certificate[] getCertificateChain(String al) { return chain; }
            public PrivateKey getPrivateKey(String al) { return key; }
        };
        KeyStore ts = KeyStore.getInstance("PKCS12");
        ts.load(null, null);
        try (InputStream in = new FileInputStream(a[2])) {
            ts.setCertificateEntry("ca", CertificateFactory.getInstance("X.509").generateCertificate(in));
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance("PKIX");
        tmf.init(ts);
        SSLContext ctx = SSLContext.getInstance(a[4]);
        ctx.init(new KeyManager[] {km}, tmf.getTrustManagers(), null);
        HttpsURLConnection c = (HttpsURLConnection) new URL(a[3]).openConnection();
        c.setSSLSocketFactory(ctx.getSocketFactory());
        c.setConnectTimeout(20000);
        c.setReadTimeout(20000);
        try (InputStream in = c.getInputStream()) {
            in.transferTo(System.out);
        }
    }
}
EOF

s_server_start
for id in j-ec j-rsa; do
	for v in TLSv1.3 TLSv1.2; do
		before=$(id_counter "$id" signatures)
		rc=0
		timeout -k 5 120 java "$WORK/Client.java" "$WORK/sunpkcs11.cfg" "$id" "$SRV_CA" \
			"https://127.0.0.1:$S_SERVER_PORT/" "$v" >"$TLS_DIR/page.txt" 2>"$TLS_DIR/java.err" || rc=$?
		if [ "$rc" -ne 0 ]; then
			show_log "$TLS_DIR/java.err" 30
			show_log "$S_SERVER_LOG" 20
			fail "Java SunPKCS11 client as $id ($v) failed (exit $rc)"
		fi
		subj=$(page_identity "$TLS_DIR/page.txt")
		assert_cn "$subj" "$id" "Java $id $v: the server saw"
		assert_eq "$(page_protocol)" "$v" "Java $id: protocol"
		[ "$(id_counter "$id" signatures)" -gt "$before" ] ||
			fail "Java $id $v: the handshake worked but the agent made no signature"
		log "ok: Java SunPKCS11 as $id, $v: $(page_peer_sig)"
	done
done
s_server_stop

agent_stop
log "PASS"
