package edgeq

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	edgeqv1 "github.com/edgeq/edgeq/clients/go/edgeq/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// testPKI is a throwaway CA and the certificates it signs, written as PEM files.
type testPKI struct {
	dir    string
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	pool   *x509.CertPool
	caFile string
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "go test CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &testPKI{dir: t.TempDir(), caCert: cert, caKey: key, pool: x509.NewCertPool()}
	p.pool.AddCert(cert)
	p.caFile = p.write(t, "ca.pem", "CERTIFICATE", der)
	return p
}

func (p *testPKI) write(t *testing.T, name, kind string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue signs a certificate for localhost/127.0.0.1 (server and client use); it returns
// the PEM files and the tls.Certificate.
func (p *testPKI) issue(t *testing.T, name string) (certFile, keyFile string, pair tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = p.write(t, name+".pem", "CERTIFICATE", der)
	keyFile = p.write(t, name+"-key.pem", "PRIVATE KEY", keyDER)
	pair, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pair
}

func TestTLSAndMutualTLS(t *testing.T) {
	pki := newPKI(t)
	certFile, keyFile, _ := pki.issue(t, "server")
	_, _, clientPair := pki.issue(t, "go-client")
	addr, _ := startServerOn(t, "0", filepath.Join(t.TempDir(), "tls.db"),
		"--tls-cert", certFile, "--tls-key", keyFile, "--tls-client-ca", pki.caFile)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// mTLS: the CA and a client certificate, through the edgeqs:// scheme.
	c, err := Dial("edgeqs://"+addr, WithTLS(&tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{clientPair}}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "go-tls", Payload: []byte("over mTLS")})
	if err != nil {
		t.Fatalf("enqueue over mTLS: %v", err)
	}
	jobID := resp.GetResults()[0].GetJobId()
	job, err := c.Get(ctx, jobID, 0)
	if err != nil || string(job.GetPayload()) != "over mTLS" {
		t.Fatalf("get over mTLS: %v %v", job, err)
	}

	// Without a client certificate, and in plaintext, the server is unreachable.
	for name, opts := range map[string][]Option{
		"no client certificate": {WithTLS(&tls.Config{RootCAs: pki.pool}), WithTimeout(2 * time.Second)},
		"plaintext":             {WithTimeout(2 * time.Second)},
	} {
		bad, err := Dial(addr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		_, err = bad.Get(context.Background(), jobID, 0)
		if status.Code(err) != codes.Unavailable {
			t.Errorf("%s: want UNAVAILABLE, got %v", name, err)
		}
		bad.Close()
	}
	if _, err := Dial("edgeq://"+addr, WithTLS(&tls.Config{})); err == nil {
		t.Error("edgeq:// with WithTLS must be refused")
	}
}
