package apitest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki holds the paths of the files writePKI wrote.
type pki struct {
	caCert     string // signs the serving certificate; clients trust it
	serverCert string
	serverKey  string
	saKey      string // signs and verifies service-account tokens
}

// writePKI writes a CA, a serving certificate for the loopback address
// signed by it, and a service-account signing key, so that clients verify
// the server as they would a real one instead of skipping TLS checks.
func writePKI(dir string) (pki, error) {
	p := pki{
		caCert:     filepath.Join(dir, "ca.crt"),
		serverCert: filepath.Join(dir, "apiserver.crt"),
		serverKey:  filepath.Join(dir, "apiserver.key"),
		saKey:      filepath.Join(dir, "sa.key"),
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, fmt.Errorf("apitest: CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "k8secrets-apitest-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return p, fmt.Errorf("apitest: CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return p, fmt.Errorf("apitest: parse CA certificate: %w", err)
	}
	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, fmt.Errorf("apitest: serving key: %w", err)
	}
	serverDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
	}, ca, &serverKey.PublicKey, caKey)
	if err != nil {
		return p, fmt.Errorf("apitest: serving certificate: %w", err)
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, fmt.Errorf("apitest: service-account key: %w", err)
	}
	for path, block := range map[string]func() (*pem.Block, error){
		p.caCert:     func() (*pem.Block, error) { return &pem.Block{Type: "CERTIFICATE", Bytes: caDER}, nil },
		p.serverCert: func() (*pem.Block, error) { return &pem.Block{Type: "CERTIFICATE", Bytes: serverDER}, nil },
		p.serverKey:  func() (*pem.Block, error) { return ecBlock(serverKey) },
		p.saKey:      func() (*pem.Block, error) { return ecBlock(saKey) },
	} {
		b, err := block()
		if err != nil {
			return p, fmt.Errorf("apitest: encode %s: %w", path, err)
		}
		if err := os.WriteFile(path, pem.EncodeToMemory(b), 0o600); err != nil {
			return p, fmt.Errorf("apitest: write %s: %w", path, err)
		}
	}
	return p, nil
}

func ecBlock(k *ecdsa.PrivateKey) (*pem.Block, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}, nil
}
