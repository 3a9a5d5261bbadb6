// Package version holds the build's version, stamped by the Makefile with
// -ldflags "-X github.com/k8secrets/k8secrets/internal/version.Version=...".
package version

// Version is "dev" in builds that were not stamped.
var Version = "dev"
