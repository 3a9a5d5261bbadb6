package config

import (
	"fmt"
	"path"
	"strings"
)

// ReservedPaths are where a Secret volume must never go: the service
// account token's directory (also reached through /run, which /var/run
// links to in most images), the root, and the kernel's file systems. A mount
// there, above them or below them would hide what the kubelet or the kernel
// put there.
var ReservedPaths = []string{"/", "/var/run/secrets/kubernetes.io", "/run/secrets/kubernetes.io", "/proc", "/sys", "/dev"}

// Reserved tells whether the absolute path p (cleaned first: trailing
// slashes and dots do not matter) is, contains or sits inside a reserved
// path, and says which.
func Reserved(p string) (string, bool) {
	p = path.Clean(p)
	for _, r := range ReservedPaths {
		switch {
		case p == r:
			return fmt.Sprintf("is %s, reserved", r), true
		case r == "/":
			// Everything sits inside the root; only the root itself is refused.
		case Within(r, p):
			return fmt.Sprintf("would hide %s, reserved", r), true
		case Within(p, r):
			return fmt.Sprintf("sits inside %s, reserved", r), true
		}
	}
	return "", false
}

// Within tells whether the cleaned absolute path inner is outer or lies
// below it.
func Within(inner, outer string) bool {
	if inner == outer || outer == "/" {
		return true
	}
	return strings.HasPrefix(inner, outer+"/")
}
