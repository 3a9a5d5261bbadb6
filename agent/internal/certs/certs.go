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

// Skew is how far a certificate's NotBefore may be ahead of this node's
// clock and still count as valid: an issuer whose clock runs a few seconds
// ahead (common right after a renewal) must not have its certificate
// refused. It is small on purpose: a client with a correct clock rejects a
// certificate before its NotBefore, so an app serving it early fails its
// TLS handshakes for that long. NTP keeps nodes within well under a second
// of each other; 5s covers an issuer a few seconds ahead. A certificate
// further ahead is refused, and accepted without another update once the
// clock reaches NotBefore minus Skew (see NotYetValidError).
const Skew = 5 * time.Second

// NotYetValidError is a certificate whose NotBefore is more than Skew
// ahead. It wraps ErrInvalid.
type NotYetValidError struct {
	NotBefore time.Time
}

func (e *NotYetValidError) Error() string {
	return fmt.Sprintf("%v: %s is not valid before %s", ErrInvalid, CertFile, e.NotBefore.UTC().Format(time.RFC3339))
}

// Unwrap makes the error match ErrInvalid.
func (e *NotYetValidError) Unwrap() error { return ErrInvalid }

// RetryAt is when the same content becomes valid.
func (e *NotYetValidError) RetryAt() time.Time { return e.NotBefore.Add(-Skew) }

// Check validates the tls.crt and tls.key in files, if both are present:
// they parse, the key matches the certificate, and now is within the
// certificate's validity (NotBefore up to Skew ahead). Other content is not
// checked. Errors never quote the files.
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
	if now.Add(Skew).Before(leaf.NotBefore) {
		return &NotYetValidError{NotBefore: leaf.NotBefore}
	}
	if now.After(leaf.NotAfter) {
		return fmt.Errorf("%w: %s expired at %s", ErrInvalid, CertFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}
