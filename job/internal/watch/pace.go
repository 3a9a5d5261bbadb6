package watch

import (
	"sync"
	"time"
)

// Defaults of the rotation budget and the circuit breaker.
const (
	// DefaultMinInterval: at most one rotation per workload this often.
	// A certificate renewal or a password rotation is rare; ten seconds
	// folds the burst of writes one rotation often makes (cert-manager
	// writes tls.crt, then annotations; a pipeline writes several keys in
	// several steps) into one reload, and keeps a flapping Secret to at most
	// 60 s / 10 s + 1 = 7 rotations a minute before the breaker trips.
	DefaultMinInterval = 10 * time.Second
	// DefaultBreakerChanges and DefaultBreakerWindow: more than 10 changes
	// of one Secret's data within 5 minutes suspend its rotations. A Secret
	// updated every second trips it at its 11th change (after 10 s); one
	// updated every 30 s (10 in 5 min) does not, and a real rotation is
	// rarer than that by orders of magnitude. The rotations resume once the
	// Secret has been quiet for the window, or when its resume annotation
	// changes.
	DefaultBreakerChanges = 10
	DefaultBreakerWindow  = 5 * time.Minute
)

// Pacer decides when rotations may run: the per-workload budget (at most
// one rotation per MinInterval; changes in between are folded into the next
// one, which reads the Secret as it is then: the last content wins) and the
// per-Secret circuit breaker. It holds no clock: every call passes now, so
// tests drive it with a fake one.
type Pacer struct {
	MinInterval time.Duration
	// Changes is N: more than N changes within Window trip the breaker.
	Changes int
	Window  time.Duration

	mu      sync.Mutex
	last    map[string]time.Time   // workload -> start of its last rotation
	changes map[string][]time.Time // secret -> its data changes within Window
	open    map[string]trip        // secret -> why its rotations are suspended
}

type trip struct {
	at     time.Time
	resume string // the resume annotation's value when it tripped
}

func (p *Pacer) init() {
	if p.last == nil {
		p.last = map[string]time.Time{}
		p.changes = map[string][]time.Time{}
		p.open = map[string]trip{}
	}
}

// Changed records a change of secret's data at now; resume is its resume
// annotation's current value. It reports whether this change tripped the
// breaker (it was closed before).
func (p *Pacer) Changed(secret string, now time.Time, resume string) (tripped bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.init()
	cs := append(p.changes[secret], now)
	// Keep the changes within Window of now.
	i := 0
	for i < len(cs) && !cs[i].After(now.Add(-p.Window)) {
		i++
	}
	cs = cs[i:]
	p.changes[secret] = cs
	if _, open := p.open[secret]; open {
		return false
	}
	if len(cs) > p.Changes {
		p.open[secret] = trip{at: now, resume: resume}
		return true
	}
	return false
}

// Suspended tells whether secret's rotations are suspended at now. It closes
// the breaker, and reports resumed, when the Secret has had no data change
// for Window or its resume annotation (resume) differs from its value when
// the breaker tripped. until is when a quiet Secret resumes by itself.
func (p *Pacer) Suspended(secret string, now time.Time, resume string) (suspended, resumed bool, until time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.init()
	t, open := p.open[secret]
	if !open {
		return false, false, time.Time{}
	}
	last := t.at
	if cs := p.changes[secret]; len(cs) > 0 && cs[len(cs)-1].After(last) {
		last = cs[len(cs)-1]
	}
	until = last.Add(p.Window)
	if resume != t.resume || !now.Before(until) {
		delete(p.open, secret)
		// A fresh count: the changes that tripped it do not trip it again.
		delete(p.changes, secret)
		return false, true, time.Time{}
	}
	return true, false, until
}

// Restore opens secret's breaker as a previous replica left it: tripped at
// at, its resume annotation then resume. The restart counts as a change at
// now (what changed while no replica ran is unknown), so a quiet Secret
// resumes a window after now. It reports false if the breaker is open
// already.
func (p *Pacer) Restore(secret string, at time.Time, resume string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.init()
	if _, open := p.open[secret]; open {
		return false
	}
	p.open[secret] = trip{at: at, resume: resume}
	p.changes[secret] = append(p.changes[secret], now)
	return true
}

// Open tells whether secret's breaker is open, without changing it.
func (p *Pacer) Open(secret string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, open := p.open[secret]
	return open
}

// Take asks for workload's rotation slot at now: 0 means granted (the slot
// is taken); otherwise how long to wait before asking again.
func (p *Pacer) Take(workload string, now time.Time) (wait time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.init()
	if last, ok := p.last[workload]; ok {
		if next := last.Add(p.MinInterval); now.Before(next) {
			return next.Sub(now)
		}
	}
	p.last[workload] = now
	return 0
}

// Forget drops what is known of a workload that is gone.
func (p *Pacer) Forget(workload string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.last, workload)
}
