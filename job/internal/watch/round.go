package watch

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// round is one data change of a Secret as the workloads that mount it are
// rotated to it. The Secret gets two Events per round rather than two per
// workload (a Secret mounted by 100 workloads got 200, a quarter of the
// requests of one rotation on kwok): Refreshed when the first workload's
// pods have been refreshed, and one outcome once every workload has one,
// summing them up. Each workload's own Events name its pods.
//
// A round begins when the Secret's informer reports the change, with every
// workload that mounts it then; each leaves it when its sync finds nothing
// to rotate (already at the content, a first sight, a suspended Secret),
// stops mounting the Secret, or ends its rotation (its outcome). A newer
// change replaces the round: the workloads rotate again, to the newer
// content, and that round sums them up.
type round struct {
	rv        string // the Secret's resourceVersion of the change (dataRV)
	seen      time.Time
	want      map[string]bool    // workloads that have not left it
	outcomes  map[string]outcome // workload key -> how its rotation ended
	refreshed bool               // the Secret's Refreshed Event was written
	done      bool
}

type outcome struct {
	result          string // a rotations_total result
	verified, total int
}

// beginRound starts the round of the Secret's change at rv. Called with
// c.mu held.
func (c *Controller) beginRound(skey, rv string, seen time.Time) {
	want := map[string]bool{}
	maps.Copy(want, c.refs[skey])
	c.rounds[skey] = &round{rv: rv, seen: seen, want: want, outcomes: map[string]outcome{}}
}

// leaveRound: the workload has nothing to rotate for the change at rv (rv
// "": whatever the change). It returns the summary to emit, if that ended
// the round. Called with c.mu held.
func (c *Controller) leaveRound(skey, rv, wkey string) func(context.Context) {
	r := c.rounds[skey]
	if r == nil || r.done || (rv != "" && r.rv != rv) {
		return nil
	}
	if _, ended := r.outcomes[wkey]; ended {
		return nil
	}
	delete(r.want, wkey)
	return c.closeRound(skey, r)
}

// leave is leaveRound taking c.mu, and emitting what it returns.
func (c *Controller) leave(ctx context.Context, skey, rv, wkey string) {
	c.mu.Lock()
	emit := c.leaveRound(skey, rv, wkey)
	c.mu.Unlock()
	if emit != nil {
		emit(ctx)
	}
}

// roundRefreshed tells, once per round, that the Secret's change is being
// rotated: on the Secret, after its first workload's pods were refreshed.
func (c *Controller) roundRefreshed(ctx context.Context, s *corev1.Secret, rv string, w fmt.Stringer, pods int) {
	skey := secretKey(s.Namespace, s.Name)
	c.mu.Lock()
	r := c.rounds[skey]
	first := r != nil && r.rv == rv && !r.refreshed
	n := 0
	if first {
		r.refreshed = true
		n = len(r.want)
	}
	c.mu.Unlock()
	if !first {
		return
	}
	c.emit(ctx, secretRef(s), corev1.EventTypeNormal, ReasonRefreshed, "Rotate",
		fmt.Sprintf("secret %s changed: rotating the pods of the %d workloads that mount it; %s is the first refreshed (%d pods). Each workload's Events name its pods; one Event here sums up their outcomes", s.Name, n, w, pods))
}

// endRound records how the workload's rotation to rv ended, and emits the
// round's summary on the Secret once every workload's has.
func (c *Controller) endRound(ctx context.Context, s *corev1.Secret, rv, wkey string, o outcome) {
	skey := secretKey(s.Namespace, s.Name)
	c.mu.Lock()
	var emit func(context.Context)
	if r := c.rounds[skey]; r != nil && r.rv == rv && !r.done {
		r.want[wkey] = true // a workload that mounted it since
		r.outcomes[wkey] = o
		emit = c.closeRound(skey, r)
	}
	c.mu.Unlock()
	if emit != nil {
		emit(ctx)
	}
}

// closeRound ends the round if no workload is left without an outcome, and
// returns its summary (nil if none is due). Called with c.mu held.
func (c *Controller) closeRound(skey string, r *round) func(context.Context) {
	for k := range r.want {
		if _, ok := r.outcomes[k]; !ok {
			return nil
		}
	}
	r.done = true
	if len(r.outcomes) == 0 {
		return nil // nothing was rotated to it
	}
	ns, name, _ := strings.Cut(skey, "/")
	sw := c.secrets[skey]
	ref := corev1.ObjectReference{APIVersion: "v1", Kind: "Secret", Namespace: ns, Name: name}
	if sw != nil {
		if obj, ok, _ := sw.store.GetByKey(skey); ok {
			ref = secretRef(obj.(*corev1.Secret))
		}
	}
	typ, reason, note := summary(name, r.outcomes, c.clock.Since(r.seen))
	return func(ctx context.Context) { c.emit(ctx, ref, typ, reason, "Rotate", note) }
}

// summary sums up the outcomes of a round: Verified when every workload's
// rotation was; else ReloadFailed when one failed, could not be verified
// or left pods stale; else Unverified (pods that could not say).
func summary(secret string, outcomes map[string]outcome, took time.Duration) (typ, reason, note string) {
	by := map[string][]string{}
	verified, total := 0, 0
	for _, k := range slices.Sorted(maps.Keys(outcomes)) {
		o := outcomes[k]
		by[o.result] = append(by[o.result], displayKey(k))
		verified += o.verified
		total += o.total
	}
	var parts []string
	for _, res := range []string{"verified", "unknown", "stale", "unverified", "failed"} {
		ws := by[res]
		switch {
		case len(ws) == 0:
		case res == "verified":
			parts = append(parts, fmt.Sprintf("%d verified", len(ws)))
		default:
			parts = append(parts, fmt.Sprintf("%d %s (%s)", len(ws), resultWords[res], list(ws)))
		}
	}
	typ, reason = corev1.EventTypeNormal, ReasonVerified
	switch {
	case len(by["stale"])+len(by["unverified"])+len(by["failed"]) > 0:
		typ, reason = corev1.EventTypeWarning, ReasonReloadFailed
	case len(by["unknown"]) > 0:
		typ, reason = corev1.EventTypeWarning, ReasonUnverified
	}
	note = fmt.Sprintf("secret %s: %d workloads rotated, %s after the change was seen: %s; %d of %d pods verified. Each workload's Events name its pods",
		secret, len(outcomes), took.Round(100*time.Millisecond), strings.Join(parts, ", "), verified, total)
	return typ, reason, note
}

var resultWords = map[string]string{
	"unknown":    "with pods that could not say what they loaded",
	"stale":      "with stale pods",
	"unverified": "not verifiable",
	"failed":     "whose refresh failed",
}

// displayKey is "Kind/name" of a workload key ("Kind/namespace/name"):
// the namespace is the Secret's.
func displayKey(key string) string {
	kind, rest, _ := strings.Cut(key, "/")
	_, name, _ := strings.Cut(rest, "/")
	return kind + "/" + name
}
