// Package certs checks a kubernetes.io/tls Secret's content before the app
// is told to load it: a broken pair would take the app down, and the old
// pair it already holds keeps working until the new one is fixed.
package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// The key names of a kubernetes.io/tls Secret.
const (
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
)

// ErrInvalid wraps every problem Check finds.
var ErrInvalid = errors.New("invalid TLS content")

// Check validates the tls.crt and tls.key in files, if both are present:
// they parse, the key matches the certificate, and now is within the
// certificate's validity. Other content is not checked. Errors never quote
// the files.
func Check(files map[string][]byte, now time.Time) error {
	crt, okc := files[CertFile]
	key, okk := files[KeyFile]
	if !okc || !okk {
		return nil
	}
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		return fmt.Errorf("%w: %s and %s are not a valid pair: %v", ErrInvalid, CertFile, KeyFile, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return fmt.Errorf("%w: parse %s: %v", ErrInvalid, CertFile, err)
		}
	}
	if now.Before(leaf.NotBefore) {
		return fmt.Errorf("%w: %s is not valid before %s", ErrInvalid, CertFile, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(leaf.NotAfter) {
		return fmt.Errorf("%w: %s expired at %s", ErrInvalid, CertFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}
