package main

import (
	"context"
	"os"

	"github.com/k8secrets/k8secrets/job/internal/watch"
)

// watch runs "k8secrets-job watch" until ctx ends (SIGTERM): it returns nil
// once the controller has stopped and its lease is released, or an error
// wrapping watch.ErrLost (exit 1) when it lost the lease.
func (j *job) watch(ctx context.Context) error {
	w := j.cfg.Watch
	namespaces := w.Namespaces
	if len(namespaces) == 0 {
		namespaces = []string{j.cfg.Namespace} // the context's or the pod's
	}
	leaseNS := w.LeaseNamespace
	if leaseNS == "" {
		leaseNS = j.cfg.Namespace
	}
	identity, _ := os.Hostname() // the pod name in a cluster
	if identity == "" {
		identity = j.holder
	}
	return watch.Run(ctx, j.client, watch.Election{Namespace: leaseNS, Name: w.LeaseName, Identity: identity + "_" + j.holder[len(j.holder)-8:]}, w.Listen, watch.Options{
		Namespaces:     namespaces,
		MinInterval:    w.MinInterval,
		BreakerChanges: w.BreakerChanges,
		BreakerWindow:  w.BreakerWindow,
		Settle:         j.cfg.Settle,
		VerifyTimeout:  w.VerifyTimeout,
		// Verify: nil selects the interim check (refresh annotation seen,
		// pod Ready). LEAD: wire verify.Wait here when the branches merge:
		//   Verify: func(ctx context.Context, ns, secret string) (int, int, []string, error) {
		//     r, err := verify.Wait(ctx, j.client, verify.Options{Namespace: ns, Secret: secret, Via: "auto", Log: j.log})
		//     if ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		//       err = nil // --verify-timeout: the stale pods below say which
		//     }
		//     var stale []string
		//     for _, p := range r.Pods { if p.State != "current" { stale = append(stale, p.Name+" ("+p.State+": "+p.Reason+")") } }
		//     return r.Current, r.Total, stale, err
		//   },
		// and, in job/internal/watch/controller.go, verifiedBy's wording
		// holds then; delete interim.go and its use in New.
		Instance: identity,
		Log:      j.log,
	})
}
