package reload

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHTTPResponses: informational (1xx) responses before the final one,
// redirects, and tokens in the URL, against a real server.
func TestHTTPResponses(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hints":
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(http.StatusProcessing)
			w.WriteHeader(http.StatusNoContent)
		case "/moved":
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		case "/elsewhere":
			t.Errorf("the agent followed a redirect")
		default:
			w.WriteHeader(http.StatusForbidden)
		}
	}))
	defer srv.Close()
	tests := []struct {
		name, path string
		wantErr    string
	}{
		{"1xx then 204", "/hints", ""},
		{"redirect not followed", "/moved", "status 302"},
		{"token redacted", "/denied?token=s3cr3t-t0ken&x=1", "status 403"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, _ := url.Parse(srv.URL + tt.path)
			h := &HTTP{URL: u, Method: http.MethodPost, Success: func(c int) bool { return c/100 == 2 }, Timeout: 5 * time.Second}
			defer h.Close()
			err := h.Reload(context.Background())
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Reload() = %v; want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Reload() = %v; want %q", err, tt.wantErr)
			case err != nil && strings.Contains(err.Error(), "s3cr3t"):
				t.Errorf("Reload() = %v shows the token", err)
			}
		})
	}
	// A connection error quotes no token either (net/http's own error
	// would quote the whole URL).
	u, _ := url.Parse("http://127.0.0.1:1/-/reload?token=s3cr3t-t0ken")
	h := &HTTP{URL: u, Method: http.MethodPost, Success: func(c int) bool { return c/100 == 2 }, Timeout: 5 * time.Second}
	if err := h.Reload(context.Background()); err == nil || strings.Contains(err.Error(), "s3cr3t") || !strings.Contains(err.Error(), "token=xxxxx") {
		t.Errorf("Reload() of a closed port = %v; want an error with the token redacted", err)
	}
}

// TestHTTPSCAFile: an https endpoint whose certificate a CA file vouches
// for; without the file the certificate is refused; a rotated file is
// read again.
func TestHTTPSCAFile(t *testing.T) {
	hits := 0
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits++ }))
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, otherCA(t), 0o644); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(srv.URL + "/-/reload")
	ok := func(c int) bool { return c/100 == 2 }

	noCA := &HTTP{URL: u, Method: http.MethodPost, Success: ok, Timeout: 5 * time.Second}
	if err := noCA.Reload(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Reload() without a CA file = %v; want a certificate error", err)
	}
	h := &HTTP{URL: u, Method: http.MethodPost, Success: ok, Timeout: 5 * time.Second, CAFile: caFile}
	defer h.Close()
	if err := h.Reload(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Reload() with another CA = %v; want a certificate error", err)
	}
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.Reload(context.Background()); err != nil {
		t.Errorf("Reload() with the server's CA = %v; want nil", err)
	}
	if hits != 1 {
		t.Errorf("server got %d requests; want 1", hits)
	}
	if err := os.WriteFile(caFile, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.Reload(context.Background()); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("Reload() with a broken CA file = %v; want an error naming it", err)
	}
}

// otherCA is a self-signed CA certificate, PEM-encoded, that vouches for no
// test server.
func otherCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "other CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
