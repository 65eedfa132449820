// mtls-server: an HTTPS server on Go's own TLS stack (crypto/tls), for
// tests/integration/tls-go.sh. It requires a client certificate that chains
// to -client-ca (tls.RequireAndVerifyClientCert), so Go itself checks the
// chain and the client's CertificateVerify signature; the client under test
// is curl with a key held by mtls-agent (OpenSSL provider).
//
// Standard library only; builds offline with GO111MODULE=off:
//
//	go build -o mtls-server mtls-server.go
//
// Usage:
//
//	mtls-server -cert SRV.crt -key SRV.key -client-ca CA.pem [-min 1.2] [-max 1.3] [-listen 127.0.0.1:0]
//
// Prints "LISTEN 127.0.0.1:PORT" on stdout once it accepts connections. Every
// request is answered with what the handshake established, one "key=value"
// per line:
//
//	cn=<verified client certificate's subject CN>
//	serial=<its serial, upper-case hex>
//	keytype=<its public key algorithm: ECDSA, RSA, Ed25519>
//	root=<CN of the root the chain was verified to>
//	version=<TLSv1.2 | TLSv1.3>
//	cipher=<IANA cipher suite name>
//	resumed=<true | false>
//
// On stderr: one "accepted ..." line per request and net/http's
// "http: TLS handshake error ..." line per refused handshake.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"time"
)

func parseVersion(s string) (uint16, error) {
	switch s {
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("unknown TLS version %q (want 1.2 or 1.3)", s)
}

// versionName: the spelling OpenSSL uses (tls.VersionName is Go 1.21+).
func versionName(v uint16) string {
	switch v {
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return fmt.Sprintf("0x%04x", v)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: the kernel picks)")
	certFile := flag.String("cert", "", "server certificate (PEM)")
	keyFile := flag.String("key", "", "server private key (PEM)")
	caFile := flag.String("client-ca", "", "CA certificates client certificates must chain to (PEM)")
	minV := flag.String("min", "1.2", "lowest TLS version: 1.2 or 1.3")
	maxV := flag.String("max", "1.3", "highest TLS version: 1.2 or 1.3")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("mtls-server: ")
	if *certFile == "" || *keyFile == "" || *caFile == "" || flag.NArg() != 0 {
		log.Fatal("usage: mtls-server -cert FILE -key FILE -client-ca FILE [-min 1.2|1.3] [-max 1.2|1.3] [-listen ADDR]")
	}
	lo, err := parseVersion(*minV)
	if err != nil {
		log.Fatal(err)
	}
	hi, err := parseVersion(*maxV)
	if err != nil {
		log.Fatal(err)
	}
	if lo > hi {
		log.Fatalf("-min %s is above -max %s", *minV, *maxV)
	}
	srvCert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("server certificate: %v", err)
	}
	pem, err := os.ReadFile(*caFile)
	if err != nil {
		log.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		log.Fatalf("%s: no PEM certificate", *caFile)
	}

	cfg := &tls.Config{
		Certificates: []tls.Certificate{srvCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   lo,
		MaxVersion:   hi,
		// Every connection a full handshake, so every request needs a fresh
		// CertificateVerify from the client.
		SessionTicketsDisabled: true,
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		st := r.TLS
		if st == nil || len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
			http.Error(w, "no verified client certificate", http.StatusForbidden)
			return
		}
		// The handshake is complete: Go has verified the chain and the
		// client's CertificateVerify signature.
		chain := st.VerifiedChains[0]
		leaf, root := chain[0], chain[len(chain)-1]
		log.Printf("accepted cn=%s version=%s cipher=%s", leaf.Subject.CommonName,
			versionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "cn=%s\nserial=%X\nkeytype=%s\nroot=%s\nversion=%s\ncipher=%s\nresumed=%t\n",
			leaf.Subject.CommonName, leaf.SerialNumber, leaf.PublicKeyAlgorithm, root.Subject.CommonName,
			versionName(st.Version), tls.CipherSuiteName(st.CipherSuite), st.DidResume)
	})
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         cfg,
		ReadHeaderTimeout: 10 * time.Second,
		// HTTP/1.1 only: a non-nil empty map keeps net/http from offering h2.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     log.Default(),
	}
	fmt.Printf("LISTEN %s\n", ln.Addr())
	log.Fatal(srv.ServeTLS(ln, "", ""))
}
