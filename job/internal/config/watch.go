package config

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Watch is the configuration of "k8secrets-job watch".
type Watch struct {
	// Namespaces to watch; empty: the context's or the pod's. With
	// AllNamespaces it is [""] (every namespace; needs the ClusterRole
	// overlay).
	Namespaces     []string
	AllNamespaces  bool
	MinInterval    time.Duration
	BreakerChanges int
	BreakerWindow  time.Duration
	VerifyTimeout  time.Duration
	Listen         string
	LeaseNamespace string // empty: the context's or the pod's namespace
	LeaseName      string
}

// watchFlags are the flags of the watch command. Its -n is a list: it
// replaces the other commands' single --namespace.
func watchFlags(fs *pflag.FlagSet) {
	fs.StringSliceP("namespace", "n", nil, "namespace(s) to watch: repeatable or a comma list (default: the context's, or the pod's when run in a cluster)")
	fs.BoolP("all-namespaces", "A", false, "watch every namespace (needs the ClusterRole of manifests/watch-cluster)")
	fs.Duration("min-interval", 10*time.Second, "at most one rotation per workload this often; changes in between are folded into the next (the last content wins)")
	fs.Int("breaker-changes", 10, "circuit breaker: more than this many changes of one Secret's data within --breaker-window suspend its rotations")
	fs.Duration("breaker-window", 5*time.Minute, "circuit breaker window; a suspended Secret resumes after being quiet this long, or when its k8secrets.io/resume annotation changes")
	// Longer than refresh's 30 s: an app restarted again within 10 minutes
	// comes back only after the kubelet's crash-loop backoff (10 s, 20 s,
	// 40 s... up to 5 minutes; measured 23-29 s on the third rotation),
	// and a rotation that gives up on a pod stops there (refresh.ErrNotReady).
	fs.Duration("settle", 6*time.Minute, "how long to wait for each pod whose agent restarts the app to restart and be Ready before the next; a pod still down then stops the rotation, which is retried")
	fs.Duration("verify-timeout", 2*time.Minute, "how long a rotation waits for its pods to be verified before it reports the stale ones")
	fs.String("listen", ":9534", "address of /healthz, /readyz and /metrics (empty: none)")
	fs.String("lease-namespace", "", "namespace of the leader-election Lease (default: the pod's or the context's)")
	fs.String("lease-name", "k8secrets-watch", "name of the leader-election Lease: replicas with the same one elect one leader")
}

func loadWatch(v *viper.Viper) Watch {
	w := Watch{
		Namespaces:     v.GetStringSlice("namespace"),
		AllNamespaces:  v.GetBool("all-namespaces"),
		MinInterval:    v.GetDuration("min-interval"),
		BreakerChanges: v.GetInt("breaker-changes"),
		BreakerWindow:  v.GetDuration("breaker-window"),
		VerifyTimeout:  v.GetDuration("verify-timeout"),
		Listen:         v.GetString("listen"),
		LeaseNamespace: v.GetString("lease-namespace"),
		LeaseName:      v.GetString("lease-name"),
	}
	if w.AllNamespaces && len(w.Namespaces) == 0 {
		w.Namespaces = []string{""}
	}
	return w
}

func (c Config) validateWatch() []error {
	if c.Command != WatchCommand {
		return nil
	}
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...))
	}
	w := c.Watch
	if w.AllNamespaces {
		if len(w.Namespaces) != 1 || w.Namespaces[0] != "" {
			bad("--all-namespaces and --namespace exclude each other")
		}
	} else {
		for _, ns := range w.Namespaces {
			for _, m := range validation.IsDNS1123Label(ns) {
				bad("--namespace %q: %s", ns, m)
			}
		}
	}
	if w.MinInterval <= 0 {
		bad("--min-interval %s: must be positive", w.MinInterval)
	}
	if w.BreakerChanges < 1 {
		bad("--breaker-changes %d: must be 1 or more", w.BreakerChanges)
	}
	if w.BreakerWindow <= 0 {
		bad("--breaker-window %s: must be positive", w.BreakerWindow)
	}
	if w.VerifyTimeout <= 0 {
		bad("--verify-timeout %s: must be positive", w.VerifyTimeout)
	}
	if c.Settle <= 0 {
		bad("--settle %s: must be positive", c.Settle)
	}
	if w.LeaseNamespace != "" {
		for _, m := range validation.IsDNS1123Label(w.LeaseNamespace) {
			bad("--lease-namespace %q: %s", w.LeaseNamespace, m)
		}
	}
	for _, m := range validation.IsDNS1123Subdomain(w.LeaseName) {
		bad("--lease-name %q: %s", w.LeaseName, m)
	}
	return errs
}
