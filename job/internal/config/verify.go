package config

import (
	"fmt"

	"github.com/spf13/pflag"
)

// verifyFlags are the flags of the per-pod verification (status, refresh, watch):
// how to reach the agents, and for refresh whether to wait.
func verifyFlags(fs *pflag.FlagSet, wait bool) {
	fs.String("verify-via", "auto", "how to ask each pod's agent what it has loaded: direct (pod IP and the agent's port; from inside the cluster), proxy (the API server's pod proxy; needs pods/proxy get, the Role in manifests/verify), or auto (direct when running in a cluster, else proxy)")
	if wait {
		fs.Bool("wait", true, "after the refresh, wait (at most --timeout) until every pod that mounts the Secret has loaded its current content, as its agent reports; exit 9 naming the pods that did not")
	}
}

func (c Config) validateVerify() []error {
	if c.Command != Status && c.Command != Refresh && c.Command != WatchCommand {
		return nil
	}
	switch c.Via {
	case "", "auto", "direct", "proxy": // "": a Config built by hand
		return nil
	}
	return []error{fmt.Errorf("%w: --verify-via %q: must be auto, direct or proxy", ErrInvalid, c.Via)}
}
