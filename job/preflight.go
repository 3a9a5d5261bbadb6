package main

import (
	"errors"
	"fmt"

	"github.com/k8secrets/k8secrets/job/internal/config"
	"github.com/k8secrets/k8secrets/job/internal/plan"
	"github.com/k8secrets/k8secrets/job/internal/record"
	"github.com/k8secrets/k8secrets/job/internal/rollout"
)

// skipped is the report's result for a workload the preflight left alone.
const skipped = "skipped"

// preflight answers, before any write, each workload the run would change
// whose rollout "rolled out" would not honestly describe (rollout.Preflight):
// refusals are all reported at once (exit 4, nothing changed); owned
// workloads leave the plan and stay in the report as skipped, with their
// owner named, after the planned ones (the report's first len(changes)
// entries stay index-aligned with changes).
func (j *job) preflight(changes []plan.Change) ([]plan.Change, error) {
	var keep []plan.Change
	var kept, left []record.Entry
	var errs []error
	for i, ch := range changes {
		e := j.report.Workloads[i]
		if ch.Skip != "" {
			keep, kept = append(keep, ch), append(kept, e)
			continue
		}
		v, err := rollout.Preflight(ch.Workload.Object, j.cfg.Command == config.Inject)
		switch {
		case err != nil:
			errs = append(errs, err)
			e.Result, e.Detail = record.Rejected, err.Error()
		case v.Skip != "":
			e.Result, e.Detail = skipped, v.Skip
			j.log.Warn("skipping workload", "kind", ch.Workload.Kind(), "namespace", ch.Workload.Namespace(), "name", ch.Workload.Name(), "reason", v.Skip)
			left = append(left, e)
			continue
		}
		e.Notes = append(e.Notes, v.Notes...)
		keep, kept = append(keep, ch), append(kept, e)
	}
	j.report.Workloads = append(kept, left...)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("nothing was changed: %w", err)
	}
	return keep, nil
}
