// Package contentid names the content of a Secret as a pod's files carry
// it, keyed: the Job computes it over the Secret's data, the agent over the
// files it reloaded, and equal identifiers mean "this pod has loaded the
// Secret's current data". The key is random per injection and lives in the
// agent's container spec, so the identifier an agent serves to anyone who
// can reach it is a keyed digest (HMAC-SHA256): without the key it offers
// no way to test guesses of a weak password, unlike an unkeyed hash of the
// data in a pod template (what Reloader and Wave write).
package contentid

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"slices"
)

// KeyEnv carries the key to the agent, in its container's environment.
const KeyEnv = "K8SECRETS_AGENT_CONTENT_KEY"

// keyBytes of randomness: as long as the HMAC's block of output.
const keyBytes = 32

// NewKey returns a fresh random key, URL-safe base64.
func NewKey() (string, error) {
	b := make([]byte, keyBytes)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// ErrKey: the key is not one NewKey made.
var ErrKey = errors.New("content key: want 32 random bytes, URL-safe base64")

// Of identifies files (name → content, as a Secret's data or the files of
// its volume) under key: HMAC-SHA256 over the sorted names and contents,
// each preceded by its length so that no two different sets of files give
// the same input. It is hex, 64 characters.
func Of(key string, files map[string][]byte) (string, error) {
	k, err := base64.RawURLEncoding.DecodeString(key)
	if err != nil || len(k) != keyBytes {
		return "", ErrKey
	}
	m := hmac.New(sha256.New, k)
	var n [8]byte
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		binary.BigEndian.PutUint64(n[:], uint64(len(name)))
		m.Write(n[:])
		m.Write([]byte(name))
		binary.BigEndian.PutUint64(n[:], uint64(len(files[name])))
		m.Write(n[:])
		m.Write(files[name])
	}
	return hex.EncodeToString(m.Sum(nil)), nil
}
