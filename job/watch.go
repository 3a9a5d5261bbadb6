package main

import (
	"context"
	"errors"
	"os"

	corev1 "k8s.io/api/core/v1"

	"github.com/k8secrets/k8secrets/job/internal/verify"
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
		// Each pod's agent /status against the Secret's data; the
		// --verify-timeout deadline leaves the pods not yet current as
		// stale or unknown, named in the Events, rather than an error.
		Verify: func(ctx context.Context, ns, secret, selector string, read func(context.Context) (*corev1.Secret, error)) (watch.Verdict, error) {
			r, err := verify.Wait(ctx, j.client, verify.Options{Namespace: ns, Secret: secret, Via: j.cfg.Via, Log: j.log, Read: read, Selector: selector})
			if errors.Is(err, verify.ErrNotVerified) && errors.Is(ctx.Err(), context.DeadlineExceeded) {
				err = nil
			}
			return verdict(r), err
		},
		Instance: identity,
		Log:      j.log,
	})
}

// verdict sorts the pods of a verification: current ones are verified;
// those that cannot say what they loaded (unknown: no /status, no content
// key, no agent; unreachable: the agent did not answer) are neither
// verified nor stale; the rest (stale, failed, refused, and notReady: loaded
// but the pod not Ready) are known not to run the current content.
func verdict(r verify.Report) watch.Verdict {
	v := watch.Verdict{Verified: r.Current, Total: r.Total}
	for _, p := range r.Pods {
		named := p.Name + " (" + p.State + ": " + p.Reason + ")"
		switch p.State {
		case verify.Current:
		case verify.Unknown, verify.Unreachable:
			v.Unknown = append(v.Unknown, named)
		default:
			v.Stale = append(v.Stale, named)
		}
	}
	return v
}
