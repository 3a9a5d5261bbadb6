package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/k8secrets/k8secrets/job/internal/record"
	"github.com/k8secrets/k8secrets/job/internal/verify"
)

// statusPods adds to each workload of the status report what its pods have
// loaded, as their agents say: one check per Secret. A check that cannot be
// made is reported with the workloads; status still exits 0.
func (j *job) statusPods(ctx context.Context) {
	bySecret := map[string][]int{}
	for i, e := range j.report.Workloads {
		bySecret[e.Secret] = append(bySecret[e.Secret], i)
	}
	secrets := make([]string, 0, len(bySecret))
	for s := range bySecret {
		secrets = append(secrets, s)
	}
	slices.Sort(secrets)
	for _, s := range secrets {
		r, err := verify.Check(ctx, j.client, j.verifyOptions(s))
		if err != nil {
			j.log.Warn("verify pods", "namespace", j.cfg.Namespace, "secret", s, "error", err)
			j.report.Warnings = append(j.report.Warnings, fmt.Sprintf("secret %s: %v", s, err))
		}
		for _, i := range bySecret[s] {
			e := &j.report.Workloads[i]
			v := &record.Verification{Via: r.Via, Pods: []verify.Pod{}}
			if err != nil {
				v.Error = err.Error()
			}
			for _, p := range r.Pods {
				if p.Workload == e.Kind+"/"+e.Name {
					v.Pods = append(v.Pods, p)
					if p.State == verify.Current {
						v.Current++
					}
				}
			}
			v.Total = len(v.Pods)
			e.Pods, e.Verification = v.Total, v
		}
	}
}

// waitVerified waits, at most --timeout, until every pod that mounts the
// Secret has loaded its current content.
func (j *job) waitVerified(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, j.cfg.Timeout)
	defer cancel()
	r, err := verify.Wait(ctx, j.client, j.verifyOptions(j.cfg.Secret))
	v := &record.Verification{Via: r.Via, Current: r.Current, Total: r.Total, Pods: r.Pods}
	if v.Pods == nil {
		v.Pods = []verify.Pod{}
	}
	j.report.Verification = v
	if errors.Is(err, verify.ErrCannotVerify) {
		err = fmt.Errorf("%w; or refresh with --wait=false, which does not verify", err)
	}
	if err != nil {
		v.Error = err.Error()
		return fmt.Errorf("refresh of secret %s/%s: %w", j.cfg.Namespace, j.cfg.Secret, err)
	}
	var unknown []string
	for _, p := range r.Pods {
		if p.State == verify.Unknown {
			unknown = append(unknown, p.Name+" ("+p.Reason+")")
		}
	}
	if len(unknown) > 0 {
		j.report.Warnings = append(j.report.Warnings, fmt.Sprintf("%d pods cannot say what they have loaded (unknown): %s", len(unknown), strings.Join(unknown, "; ")))
	}
	j.log.Info("verified", "namespace", j.cfg.Namespace, "secret", j.cfg.Secret, "current", r.Current, "total", r.Total, "unknown", len(unknown), "via", r.Via)
	return nil
}

func (j *job) verifyOptions(secret string) verify.Options {
	return verify.Options{Namespace: j.cfg.Namespace, Secret: secret, Via: j.cfg.Via, Log: j.log}
}
