package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"
)

func pair(t *testing.T, notBefore, notAfter time.Time) (crt, key []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "app"}, NotBefore: notBefore, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})
}

func TestCheck(t *testing.T) {
	now := time.Now()
	crt, key := pair(t, now.Add(-time.Hour), now.Add(time.Hour))
	otherCrt, otherKey := pair(t, now.Add(-time.Hour), now.Add(time.Hour))
	oldCrt, oldKey := pair(t, now.Add(-2*time.Hour), now.Add(-time.Hour))
	futureCrt, futureKey := pair(t, now.Add(time.Hour), now.Add(2*time.Hour))
	skewCrt, skewKey := pair(t, now.Add(Skew-time.Second), now.Add(time.Hour))
	aheadCrt, aheadKey := pair(t, now.Add(Skew+time.Second), now.Add(time.Hour))
	tests := []struct {
		name    string
		files   map[string][]byte
		wantErr string
	}{
		{"valid pair", map[string][]byte{CertFile: crt, KeyFile: key}, ""},
		{"not a TLS secret", map[string][]byte{"password": []byte("x")}, ""},
		{"only a certificate", map[string][]byte{CertFile: []byte("garbage")}, ""},
		{"mismatched pair", map[string][]byte{CertFile: crt, KeyFile: otherKey}, "not a valid pair"},
		{"garbage", map[string][]byte{CertFile: []byte("garbage"), KeyFile: key}, "not a valid pair"},
		{"empty key", map[string][]byte{CertFile: otherCrt, KeyFile: nil}, "not a valid pair"},
		{"expired", map[string][]byte{CertFile: oldCrt, KeyFile: oldKey}, "expired"},
		{"not yet valid", map[string][]byte{CertFile: futureCrt, KeyFile: futureKey}, "not valid before"},
		{"NotBefore within the skew", map[string][]byte{CertFile: skewCrt, KeyFile: skewKey}, ""},
		{"NotBefore beyond the skew", map[string][]byte{CertFile: aheadCrt, KeyFile: aheadKey}, "not valid before"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.files, now)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Check() = %v; want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Check() = %v; want ErrInvalid containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "BEGIN") || strings.Contains(err.Error(), "garbage") {
				t.Fatal("Check() error quotes the file content")
			}
		})
	}
}

// TestNotYetValidRetryAt: a certificate ahead of the clock says when the
// same content becomes valid, and is valid then.
func TestNotYetValidRetryAt(t *testing.T) {
	now := time.Now()
	nb := now.Add(time.Minute).Truncate(time.Second)
	crt, key := pair(t, nb, now.Add(time.Hour))
	files := map[string][]byte{CertFile: crt, KeyFile: key}
	var nyv *NotYetValidError
	if err := Check(files, now); !errors.As(err, &nyv) {
		t.Fatalf("Check() = %v; want a NotYetValidError", err)
	}
	if want := nb.Add(-Skew); !nyv.RetryAt().Equal(want) {
		t.Errorf("RetryAt() = %s; want %s", nyv.RetryAt(), want)
	}
	if err := Check(files, nyv.RetryAt()); err != nil {
		t.Errorf("Check() at RetryAt = %v; want nil", err)
	}
}
