package framework

import (
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
)

func TestLeaked(t *testing.T) {
	v := []byte("s3cr3t-v4lue-0123")
	tests := []struct {
		name string
		text string
		want bool
	}{
		{"raw", "level=INFO msg=x value=" + string(v), true},
		{"base64", `{"data":{"password":"` + base64.StdEncoding.EncodeToString(v) + `"}}`, true},
		{"base64 url, unpadded", base64.RawURLEncoding.EncodeToString(v), true},
		{"hex", "digest " + hex.EncodeToString(v), true},
		{"upper hex", strings.ToUpper(hex.EncodeToString(v)), true},
		{"absent", "mounted secret db at /var/run/secrets/k8secrets/db", false},
		{"prefix only", string(v[:10]), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Leaked([]byte(tt.text), v); got != tt.want {
				t.Errorf("Leaked(%s) = %t; want %t", tt.name, got, tt.want)
			}
		})
	}
	if Leaked([]byte("abc"), []byte("abc")) {
		t.Error("Leaked counts values shorter than 8 bytes; they match by chance")
	}
}
