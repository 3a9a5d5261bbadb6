// Package watch is "k8secrets-job watch": a long-running controller that
// rotates, with no pipeline step, the Secrets the Job injected. When a
// watched Secret's data changes it refreshes the pods of every injected
// workload that mounts it (job/internal/refresh: signal and HTTP pods at
// once, restart pods one at a time, each Ready before the next), verifies
// them, and records on the workload what it last rotated to, so that a
// restarted controller neither loses nor repeats a rotation. A rotation
// budget per workload and a circuit breaker per Secret keep a flapping
// Secret from becoming a restart storm.
package watch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/k8secrets/k8secrets/internal/contentid"
	"github.com/k8secrets/k8secrets/internal/wellknown"
	"github.com/k8secrets/k8secrets/job/internal/plan"
	"github.com/k8secrets/k8secrets/job/internal/refresh"
	"github.com/k8secrets/k8secrets/job/internal/workload"
)

// Annotations of the watch.
const (
	// RotatedPrefix + ID on the workload (not its pod template: writing it
	// rolls nothing out) records what the watch last rotated the
	// injection's Secret to: "c:" + the content identifier
	// (contentid.Of, keyed with the key in the injection's agent container)
	// when the agent has one, else "rv:" + the resourceVersion of the
	// Secret's last data change the watch saw. It is written after the
	// rotation, so a controller stopped mid-rotation leaves it at the old
	// value and its successor rotates again; it is never an unkeyed digest
	// of the data.
	RotatedPrefix = wellknown.Domain + "/rotated-"
	// SuspendedPrefix + the injection's id, on the workload's own metadata:
	// the breaker of the Secret it mounts is open, since when, and the
	// Secret's resume annotation then (JSON), so that a replica started
	// while a Secret flaps keeps its rotations suspended rather than
	// starting over with a closed breaker. Removed when they resume.
	SuspendedPrefix = wellknown.Domain + "/suspended-"
	// ResumeAnnotation on a Secret: changing its value (to anything, e.g.
	// the time) closes the Secret's open circuit breaker.
	ResumeAnnotation = wellknown.Domain + "/resume"
	// FieldManager of the watch's writes (pod refresh annotations are
	// written by refresh under wellknown.FieldManager).
	FieldManager = wellknown.FieldManager + "-watch"
	// ReportingController is the Events' reportingController.
	ReportingController = wellknown.Domain + "/watch"
)

// Event reasons.
const (
	ReasonRefreshed = "Refreshed"
	ReasonVerified  = "Verified"
	// ReasonUnverified: the refresh went through and no pod is known to
	// be stale, but some pods could not say what they loaded (an agent
	// older than /status, no content key, no agent, an agent that did not
	// answer): the rotation is not proven for them. A Warning, not Normal:
	// the watch's promise is that every pod is shown to run the current
	// content, it does not hold for these pods, and someone has to act
	// (rerun inject with this release's agent, let the watch reach the
	// agents); calling such a rotation Verified hid that ("0 of 10 pods
	// verified" on kwok, README).
	ReasonUnverified        = "Unverified"
	ReasonReloadFailed      = "ReloadFailed"
	ReasonRotationSuspended = "RotationSuspended"
	ReasonRotationResumed   = "RotationResumed"
	ReasonRotationPostponed = "RotationPostponed"
)

// Verdict is what the verification of one rotation found.
type Verdict struct {
	// Verified of Total pods have loaded the Secret's current data.
	Verified, Total int
	// Stale names the pods known not to have loaded it (older content, a
	// failed or refused reload), each with why.
	Stale []string
	// Unknown names the pods that could not say what they loaded (an
	// agent without /status, no content key, no agent, an agent that did
	// not answer), each with why: neither verified nor known stale.
	Unknown []string
}

// VerifyFunc tells which of the pods in ns that mount secret and match
// selector (the rotated workload's) have loaded its current data. It
// returns when all have (or cannot say), or when ctx ends (then with the
// pods not verified by then as stale or unknown).
type VerifyFunc func(ctx context.Context, ns, secret, selector string, read func(context.Context) (*corev1.Secret, error)) (Verdict, error)

// Options of the controller.
type Options struct {
	// Namespaces to watch; metav1.NamespaceAll ("") alone watches all.
	Namespaces []string
	// MinInterval, BreakerChanges and BreakerWindow: see Pacer.
	MinInterval    time.Duration
	BreakerChanges int
	BreakerWindow  time.Duration
	// Settle bounds the wait for each restarting pod (refresh.Options).
	Settle time.Duration
	// VerifyTimeout bounds the verification of one rotation.
	VerifyTimeout time.Duration
	// Verify checks the pods after a refresh: k8secrets-job watch passes
	// verify.Wait (each pod's agent /status against the Secret's data).
	Verify VerifyFunc
	// Instance names this replica in Events.
	Instance string
	Log      *slog.Logger
	Metrics  *Metrics
	// Clock: nil is the real one.
	Clock clock.WithTicker
}

// Controller watches the injected workloads and their Secrets.
type Controller struct {
	client kubernetes.Interface
	o      Options
	clock  clock.WithTicker
	pace   *Pacer
	log    *slog.Logger
	m      *Metrics
	verify VerifyFunc
	// getSecret reads a watched Secret from its informer (tests replace it).
	getSecret func(key string) (*corev1.Secret, bool)

	factories []informers.SharedInformerFactory
	listers   map[workload.Kind]func(ns, name string) (runtime.Object, error)

	mu       sync.Mutex
	refs     map[string]map[string]bool // secret key -> workload keys that mount it
	mounts   map[string][]string        // workload key -> secret keys it mounts
	secrets  map[string]*secretWatch    // secret key -> its informer
	dataRV   map[string]string          // secret key -> resourceVersion of its last data change seen
	seen     map[string]time.Time       // secret key -> when that change was seen
	poked    map[string]time.Time       // secret key -> when its last refresh started (wall clock)
	due      map[string]time.Time       // workload key -> when to look at it
	running  map[string]bool
	looked   map[string]bool   // secret key -> a sync has looked at its suspension mark since the start
	rounds   map[string]*round // secret key -> its last data change, as it is rotated (round.go)
	held     map[string]string // workload key + "/" + injection id -> the data resourceVersion its pods were held for
	slots    chan struct{}     // maxParallel: a sync holds one, except while it verifies
	wake     chan struct{}
	stopping bool
	wg       sync.WaitGroup
}

type secretWatch struct {
	store cache.Store
	ctl   cache.Controller
	stop  context.CancelFunc
}

// New builds a controller; Run starts it.
func New(client kubernetes.Interface, o Options) *Controller {
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if len(o.Namespaces) == 0 {
		o.Namespaces = []string{metav1.NamespaceAll}
	}
	c := &Controller{
		client: client, o: o, clock: o.Clock, log: o.Log, m: o.Metrics,
		pace:    &Pacer{MinInterval: o.MinInterval, Changes: o.BreakerChanges, Window: o.BreakerWindow},
		refs:    map[string]map[string]bool{},
		mounts:  map[string][]string{},
		secrets: map[string]*secretWatch{},
		dataRV:  map[string]string{},
		seen:    map[string]time.Time{},
		poked:   map[string]time.Time{},
		due:     map[string]time.Time{},
		running: map[string]bool{},
		looked:  map[string]bool{},
		held:    map[string]string{},
		rounds:  map[string]*round{},
		slots:   make(chan struct{}, maxParallel),
		wake:    make(chan struct{}, 1),
		listers: map[workload.Kind]func(ns, name string) (runtime.Object, error){},
	}
	c.verify = o.Verify
	c.getSecret = c.secret
	if c.verify == nil {
		c.verify = standIn(c)
	}
	if c.verify == nil {
		c.verify = func(context.Context, string, string, string, func(context.Context) (*corev1.Secret, error)) (Verdict, error) {
			return Verdict{}, errors.New("no verification configured (Options.Verify)")
		}
	}
	return c
}

// Run watches until ctx ends; it returns once every rotation it started
// has stopped (a rotation cut short is not recorded: the next leader does it
// again). synced is called once the workload informers have synced.
func (c *Controller) Run(ctx context.Context, synced func()) error {
	// Only the injected workloads: memory grows with what is injected, not
	// with the cluster.
	sel := wellknown.LabelInjected + "=true"
	var hasSynced []cache.InformerSynced
	deps := map[string]appsv1Listers{}
	for _, ns := range c.o.Namespaces {
		f := informers.NewSharedInformerFactoryWithOptions(c.client, 0, informers.WithNamespace(ns),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel }),
			informers.WithTransform(stripManagedFields))
		apps := f.Apps().V1()
		h := cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { c.workloadChanged(obj) },
			UpdateFunc: func(_, obj any) { c.workloadChanged(obj) },
			DeleteFunc: func(obj any) { c.workloadDeleted(obj) },
		}
		for _, inf := range []cache.SharedIndexInformer{apps.Deployments().Informer(), apps.StatefulSets().Informer(), apps.DaemonSets().Informer()} {
			if _, err := inf.AddEventHandler(h); err != nil {
				return err
			}
			hasSynced = append(hasSynced, inf.HasSynced)
		}
		deps[ns] = appsv1Listers{apps.Deployments().Lister(), apps.StatefulSets().Lister(), apps.DaemonSets().Lister()}
		c.factories = append(c.factories, f)
	}
	lookup := func(ns string) appsv1Listers {
		if l, ok := deps[ns]; ok {
			return l
		}
		return deps[metav1.NamespaceAll]
	}
	c.listers[workload.Deployment] = func(ns, name string) (runtime.Object, error) { return lookup(ns).d.Deployments(ns).Get(name) }
	c.listers[workload.StatefulSet] = func(ns, name string) (runtime.Object, error) { return lookup(ns).s.StatefulSets(ns).Get(name) }
	c.listers[workload.DaemonSet] = func(ns, name string) (runtime.Object, error) { return lookup(ns).ds.DaemonSets(ns).Get(name) }

	ictx, stopInformers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopInformers()
	for _, f := range c.factories {
		f.Start(ictx.Done())
	}
	defer func() {
		stopInformers()
		for _, f := range c.factories {
			f.Shutdown()
		}
		c.mu.Lock()
		for k, sw := range c.secrets {
			sw.stop()
			delete(c.secrets, k)
		}
		c.mu.Unlock()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), hasSynced...) {
		return fmt.Errorf("sync the workload informers in %s: %w", strings.Join(c.o.Namespaces, ","), context.Cause(ctx))
	}
	if synced != nil {
		synced()
	}
	c.log.Info("watching", "namespaces", c.o.Namespaces, "minInterval", c.o.MinInterval, "breakerChanges", c.o.BreakerChanges, "breakerWindow", c.o.BreakerWindow)
	c.loop(ctx)
	return nil
}

type appsv1Listers struct {
	d  appslisters.DeploymentLister
	s  appslisters.StatefulSetLister
	ds appslisters.DaemonSetLister
}

// maxParallel bounds the workloads synced at once: a start with a thousand
// injected workloads records their baselines in a steady stream rather than
// a thousand concurrent requests (and their memory), and a Secret mounted by
// a hundred signal-mode Deployments is still rotated in a few waves. A
// rotation gives its slot up while it waits for its pods' agents (up to
// --verify-timeout), so that workloads whose pods never verify do not hold
// up the rotations of others.
const maxParallel = 16

// loop runs the workloads that are due, each in its own goroutine and never
// two rotations of one workload at once, at most maxParallel at a time.
func (c *Controller) loop(ctx context.Context) {
	for {
		now := c.clock.Now()
		var next time.Time
		c.mu.Lock()
		for k, at := range c.due {
			if c.running[k] {
				continue
			}
			if !at.After(now) {
				select {
				case c.slots <- struct{}{}:
				default:
					continue // the next to finish, or to start verifying, pokes the loop
				}
				delete(c.due, k)
				c.running[k] = true
				c.wg.Add(1)
				go func() {
					defer c.wg.Done()
					c.sync(ctx, k)
					<-c.slots
					c.mu.Lock()
					delete(c.running, k)
					c.mu.Unlock()
					c.poke()
				}()
			} else if next.IsZero() || at.Before(next) {
				next = at
			}
		}
		c.mu.Unlock()
		var timer clock.Timer
		var fire <-chan time.Time
		if !next.IsZero() {
			timer = c.clock.NewTimer(next.Sub(now))
			fire = timer.C()
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			c.mu.Lock()
			c.stopping = true
			c.mu.Unlock()
			c.wg.Wait()
			return
		case <-c.wake:
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

func (c *Controller) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// enqueue makes key due at at (or earlier, if it already is).
func (c *Controller) enqueue(key string, at time.Time) {
	c.mu.Lock()
	if cur, ok := c.due[key]; !ok || at.Before(cur) {
		c.due[key] = at
	}
	c.mu.Unlock()
	c.poke()
}

// workloadKey is "Kind/namespace/name".
func workloadKey(w workload.Workload) string {
	return string(w.Kind()) + "/" + w.Namespace() + "/" + w.Name()
}

func secretKey(ns, name string) string { return ns + "/" + name }

// mounted lists the Secrets the Job injected into the workload's template,
// by injection ID.
func mounted(t *corev1.PodTemplateSpec) map[string]string {
	out := map[string]string{}
	for k, v := range t.Annotations {
		if id, ok := strings.CutPrefix(k, wellknown.AnnotationSecretPrefix); ok && v != "" {
			out[id] = v
		}
	}
	return out
}

func asWorkload(obj any) (workload.Workload, bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	switch o := obj.(type) {
	case *appsv1.Deployment, *appsv1.StatefulSet, *appsv1.DaemonSet:
		return workload.New(o.(runtime.Object)), true
	}
	return workload.Workload{}, false
}

func (c *Controller) workloadChanged(obj any) {
	w, ok := asWorkload(obj)
	if !ok {
		return
	}
	key := workloadKey(w)
	var want []string
	for _, name := range mounted(w.Template()) {
		want = append(want, secretKey(w.Namespace(), name))
	}
	slices.Sort(want)
	want = slices.Compact(want)
	c.setMounts(key, w.Namespace(), want)
	c.enqueue(key, c.clock.Now())
}

func (c *Controller) workloadDeleted(obj any) {
	w, ok := asWorkload(obj)
	if !ok {
		return
	}
	key := workloadKey(w)
	c.setMounts(key, w.Namespace(), nil)
	c.pace.Forget(key)
	c.mu.Lock()
	delete(c.due, key)
	c.mu.Unlock()
}

// setMounts records which Secrets a workload mounts, and starts or stops
// the per-Secret informers: one per Secret some workload mounts, no more.
func (c *Controller) setMounts(key, ns string, want []string) {
	var summaries []func(context.Context)
	defer func() {
		if len(summaries) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, emit := range summaries {
			emit(ctx)
		}
	}()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.mounts[key] {
		if !slices.Contains(want, s) {
			delete(c.refs[s], key)
			if emit := c.leaveRound(s, "", key); emit != nil {
				summaries = append(summaries, emit)
			}
			if len(c.refs[s]) == 0 {
				delete(c.rounds, s)
				delete(c.refs, s)
				if sw := c.secrets[s]; sw != nil {
					sw.stop()
					delete(c.secrets, s)
				}
				delete(c.dataRV, s)
				delete(c.seen, s)
				delete(c.looked, s)
			}
		}
	}
	if len(want) == 0 {
		delete(c.mounts, key)
	} else {
		c.mounts[key] = want
	}
	for _, s := range want {
		if c.refs[s] == nil {
			c.refs[s] = map[string]bool{}
		}
		c.refs[s][key] = true
		if r := c.rounds[s]; r != nil && !r.done {
			r.want[key] = true // it has the change to rotate to as well
		}
		if c.secrets[s] == nil && !c.stopping {
			c.secrets[s] = c.watchSecret(ns, strings.TrimPrefix(s, ns+"/"))
		}
	}
	c.m.watched(len(c.mounts), len(c.secrets))
}

// watchSecret starts an informer on one Secret, by name: a list and a watch
// with the field selector metadata.name=NAME. It holds that one object, so
// memory follows the Secrets that are injected, not the namespace's; and it
// is allowed by a Role that names the Secrets (resourceNames), which a
// namespace-wide informer is not. Called with c.mu held.
func (c *Controller) watchSecret(ns, name string) *secretWatch {
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	secrets := c.client.CoreV1().Secrets(ns)
	ctx, stop := context.WithCancel(context.Background())
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return secrets.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return secrets.Watch(ctx, o)
		},
	}
	key := secretKey(ns, name)
	// A plain (not shared) informer: its handlers run in its own
	// goroutine, with none of a shared informer's per-listener buffers;
	// measured in TestAPIWatchSecretInformerFootprint.
	store, ctl := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: lw,
		ObjectType:    &corev1.Secret{},
		Transform:     stripManagedFields,
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { c.secretChanged(key, nil, obj.(*corev1.Secret)) },
			UpdateFunc: func(old, obj any) {
				c.secretChanged(key, old.(*corev1.Secret), obj.(*corev1.Secret))
			},
		},
	})
	go ctl.RunWithContext(ctx)
	return &secretWatch{store: store, ctl: ctl, stop: stop}
}

// secretChanged: a data change counts for the breaker and makes the
// workloads that mount the Secret due; a metadata-only change matters only
// when it is the resume annotation.
func (c *Controller) secretChanged(key string, old, s *corev1.Secret) {
	now := c.clock.Now()
	c.mu.Lock()
	before, known := c.dataRV[key]
	if !known || old == nil {
		// First sight (a start or a restart): its current data is what
		// the recorded state is compared with.
		c.dataRV[key] = s.ResourceVersion
		if _, ok := c.seen[key]; !ok {
			c.seen[key] = now
		}
	}
	dataChanged := old != nil && !sameData(old, s)
	if dataChanged {
		c.dataRV[key] = s.ResourceVersion
		c.seen[key] = now
	}
	if !known || c.dataRV[key] != before {
		c.beginRound(key, c.dataRV[key], c.seen[key])
	}
	ws := slices.Sorted(maps.Keys(c.refs[key]))
	c.mu.Unlock()

	if dataChanged {
		c.m.secretChange()
		if c.pace.Changed(key, now, s.Annotations[ResumeAnnotation]) {
			c.suspended(s, ws, now)
		}
	} else if old != nil && old.Annotations[ResumeAnnotation] == s.Annotations[ResumeAnnotation] {
		return // metadata only
	}
	for _, w := range ws {
		c.enqueue(w, now)
	}
}

// stripManagedFields drops what the watch never reads from the objects its
// informers keep: managedFields are often the largest part of a workload.
func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

func sameData(a, b *corev1.Secret) bool {
	return maps.EqualFunc(a.Data, b.Data, func(x, y []byte) bool { return string(x) == string(y) })
}

// suspended tells, with an Event on the Secret and on each workload, that
// the breaker tripped.
func (c *Controller) suspended(s *corev1.Secret, ws []string, at time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.m.breaker(s.Namespace, s.Name, true)
	note := fmt.Sprintf("secret %s changed more than %d times within %s: its rotations are suspended until it has been quiet for %s, or until its annotation %s is changed (kubectl annotate secret %s %s=$(date +%%s) --overwrite)",
		s.Name, c.o.BreakerChanges, c.o.BreakerWindow, c.o.BreakerWindow, ResumeAnnotation, s.Name, ResumeAnnotation)
	c.log.Warn("rotation suspended", "namespace", s.Namespace, "secret", s.Name, "changes", c.o.BreakerChanges, "window", c.o.BreakerWindow)
	c.emit(ctx, secretRef(s), corev1.EventTypeWarning, ReasonRotationSuspended, "Suspend", note)
	mark, _ := json.Marshal(suspension{At: at, Resume: s.Annotations[ResumeAnnotation]})
	for _, k := range ws {
		w, ok := c.workload(k)
		if !ok {
			continue
		}
		c.emit(ctx, workloadRef(w), corev1.EventTypeWarning, ReasonRotationSuspended, "Suspend", note)
		for id, name := range mounted(w.Template()) {
			if name != s.Name {
				continue
			}
			v := string(mark)
			if err := c.record(ctx, w, map[string]*string{SuspendedPrefix + id: &v}); err != nil {
				c.log.Warn("record the suspension; a restarted watch would start with the breaker closed", "kind", w.Kind(), "namespace", w.Namespace(), "name", w.Name(), "error", err)
			}
		}
	}
}

// suspension is the value of a SuspendedPrefix annotation.
type suspension struct {
	At     time.Time `json:"at"`
	Resume string    `json:"resume,omitempty"`
}

// restoreBreaker reopens, once per Secret after the start, the breaker a
// previous replica recorded as open on a workload (mark), unless this
// replica has seen it resume since. The start counts as a change: the
// Secret resumes once quiet for the window from now, or by its annotation.
func (c *Controller) restoreBreaker(skey string, s *corev1.Secret, mark string, now time.Time) {
	c.mu.Lock()
	first := !c.looked[skey]
	c.looked[skey] = true
	c.mu.Unlock()
	if !first || mark == "" {
		return
	}
	var sp suspension
	if err := json.Unmarshal([]byte(mark), &sp); err != nil || sp.At.IsZero() {
		c.log.Warn("unreadable suspension mark; ignored", "namespace", s.Namespace, "secret", s.Name, "value", mark)
		return
	}
	if !c.pace.Restore(skey, sp.At, sp.Resume, now) {
		return
	}
	c.m.breaker(s.Namespace, s.Name, true)
	c.log.Warn("rotation still suspended (recorded by a previous replica)", "namespace", s.Namespace, "secret", s.Name, "since", sp.At)
}

func (c *Controller) workload(key string) (workload.Workload, bool) {
	kind, rest, _ := strings.Cut(key, "/")
	ns, name, _ := strings.Cut(rest, "/")
	get := c.listers[workload.Kind(kind)]
	if get == nil {
		return workload.Workload{}, false
	}
	obj, err := get(ns, name)
	if err != nil {
		return workload.Workload{}, false
	}
	return workload.New(obj), true
}

func (c *Controller) secret(key string) (*corev1.Secret, bool) {
	c.mu.Lock()
	sw := c.secrets[key]
	c.mu.Unlock()
	if sw == nil {
		return nil, false
	}
	obj, ok, err := sw.store.GetByKey(key)
	if err != nil || !ok {
		return nil, false
	}
	return obj.(*corev1.Secret), true
}

// target is one Secret of a workload to rotate.
type target struct {
	id     string
	secret *corev1.Secret
	state  string // what to record once rotated
	seen   time.Time
	rv     string // the data change it rotates to: its round's
}

// sync looks at one workload: it records a first baseline, or rotates the
// Secrets whose state differs from the recorded one, within the budget.
func (c *Controller) sync(ctx context.Context, key string) {
	w, ok := c.workload(key)
	if !ok {
		return
	}
	now := c.clock.Now()
	t := w.Template()
	recorded := w.Meta().GetAnnotations()
	ids := mounted(t)
	changes := map[string]*string{}
	var due []target
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		name := ids[id]
		skey := secretKey(w.Namespace(), name)
		s, ok := c.getSecret(skey)
		if !ok {
			continue // not (yet) in its informer: its Add event brings us back
		}
		c.restoreBreaker(skey, s, recorded[SuspendedPrefix+id], now)
		suspended, resumed, until := c.pace.Suspended(skey, now, s.Annotations[ResumeAnnotation])
		if resumed {
			c.m.breaker(s.Namespace, s.Name, false)
			c.mu.Lock()
			c.beginRound(skey, c.dataRV[skey], now) // the rotations it held back
			c.mu.Unlock()
			c.log.Info("rotation resumed", "namespace", s.Namespace, "secret", s.Name)
			c.emit(ctx, secretRef(s), corev1.EventTypeNormal, ReasonRotationResumed, "Resume", fmt.Sprintf("rotations of secret %s resumed", s.Name))
		}
		if !suspended && recorded[SuspendedPrefix+id] != "" {
			changes[SuspendedPrefix+id] = nil
		}
		cur := c.stateOf(t, id, skey, s)
		rec := recorded[RotatedPrefix+id]
		c.mu.Lock()
		seen, rv := c.seen[skey], c.dataRV[skey]
		c.mu.Unlock()
		switch {
		case rec == "":
			// First sight of this injection: the Job mounted the
			// current content, there is nothing to rotate.
			changes[RotatedPrefix+id] = &cur
			c.leave(ctx, skey, rv, key)
			continue
		case rec == cur:
			c.leave(ctx, skey, rv, key)
			continue
		}
		if suspended {
			c.leave(ctx, skey, rv, key) // a round of its own when it resumes
			// The kubelet delivers the content meanwhile: restart-mode
			// agents must not restart on their own after --turn-hold.
			c.holdPods(ctx, w, []target{{id: id, secret: s, rv: rv}}, func(secret string) string {
				return fmt.Sprintf("rotations of secret %s are suspended (%s resumes them)", secret, ResumeAnnotation)
			})
			c.enqueue(key, until)
			continue
		}
		due = append(due, target{id: id, secret: s, state: cur, seen: seen, rv: rv})
	}
	// Marks of injections that were removed.
	for k := range recorded {
		for _, prefix := range []string{RotatedPrefix, SuspendedPrefix} {
			if id, ok := strings.CutPrefix(k, prefix); ok && ids[id] == "" {
				changes[k] = nil
			}
		}
	}
	if len(changes) > 0 {
		if err := c.record(ctx, w, changes); err != nil {
			c.log.Warn("record rotation state", "kind", w.Kind(), "namespace", w.Namespace(), "name", w.Name(), "error", err)
		}
	}
	if len(due) == 0 {
		return
	}
	if wait := c.pace.Take(key, now); wait > 0 {
		// Folded: whatever changes until then is rotated at once, as the
		// Secret is then.
		c.enqueue(key, now.Add(wait))
		return
	}
	if why := c.tooManyDown(w); why != "" {
		c.log.Warn("rotation postponed", "kind", w.Kind(), "namespace", w.Namespace(), "name", w.Name(), "reason", why)
		c.emit(ctx, workloadRef(w), corev1.EventTypeWarning, ReasonRotationPostponed, "Rotate", why)
		c.holdPods(ctx, w, due, func(secret string) string {
			return fmt.Sprintf("the rotation of secret %s waits until pods of %s are available again", secret, w)
		})
		c.enqueue(key, now.Add(c.o.MinInterval))
		return
	}
	for _, d := range due {
		if ctx.Err() != nil {
			return
		}
		c.rotate(ctx, w, d)
	}
}

// holdPods holds the restart-mode pods of a postponed or suspended
// rotation, why (of the Secret's name) saying why: the kubelet delivers
// the new content to them on its own meanwhile, and their agents would
// restart on their own after --turn-hold, however many pods are down or
// however often the Secret flaps. The rotation's pokes release them.
func (c *Controller) holdPods(ctx context.Context, w workload.Workload, due []target, why func(secret string) string) {
	sel, err := metav1.LabelSelectorAsSelector(workload.Selector(w.Object))
	if err != nil {
		return
	}
	for _, d := range due {
		if !restarts(w.Template(), d.id) {
			continue
		}
		// Once per data change: a flapping Secret syncs its workloads at
		// each change, and the pods held stay held until a poke.
		hkey := workloadKey(w) + "/" + d.id
		c.mu.Lock()
		done := c.held[hkey] == d.rv
		c.mu.Unlock()
		if done {
			continue
		}
		n, err := refresh.Hold(ctx, c.client, refresh.Options{
			Namespace: w.Namespace(), Secret: d.secret.Name, AgentName: plan.AgentName(d.id), Selector: sel.String(),
		}, c.clock.Now().UTC().Format(time.RFC3339)+": "+why(d.secret.Name))
		if err != nil {
			c.log.Warn("hold the pods of a rotation that waits", "kind", w.Kind(), "namespace", w.Namespace(), "name", w.Name(), "secret", d.secret.Name, "error", err)
			continue
		}
		c.mu.Lock()
		c.held[hkey] = d.rv
		c.mu.Unlock()
		if n > 0 {
			c.log.Info("held the pods of a rotation that waits, until their turn", "kind", w.Kind(), "namespace", w.Namespace(), "name", w.Name(), "secret", d.secret.Name, "pods", n)
		}
	}
}

// stateOf is what a rotation of s into the template's injection id records.
func (c *Controller) stateOf(t *corev1.PodTemplateSpec, id, skey string, s *corev1.Secret) string {
	if key := agentKey(t, id); key != "" {
		if cid, err := contentid.Of(key, s.Data); err == nil {
			return "c:" + cid
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return "rv:" + c.dataRV[skey]
}

// agentKey is the content key in the injection's agent container, if any.
func agentKey(t *corev1.PodTemplateSpec, id string) string {
	for _, ct := range append(slices.Clone(t.Spec.InitContainers), t.Spec.Containers...) {
		if ct.Name != plan.AgentName(id) {
			continue
		}
		for _, e := range ct.Env {
			if e.Name == contentid.KeyEnv {
				return e.Value
			}
		}
	}
	return ""
}

// restarts tells whether the injection's agent restarts the app.
func restarts(t *corev1.PodTemplateSpec, id string) bool {
	for _, ct := range append(slices.Clone(t.Spec.InitContainers), t.Spec.Containers...) {
		if ct.Name == plan.AgentName(id) {
			for _, a := range ct.Args {
				if a == "--reload=restart" || a == "--reload=restart-all" {
					return true
				}
			}
		}
	}
	return false
}

// tooManyDown says why a restart-mode rotation must wait: refresh restarts
// one pod at a time, so it needs room for one more unavailable pod within
// the workload's maxUnavailable.
func (c *Controller) tooManyDown(w workload.Workload) string {
	t := w.Template()
	restart := false
	for id := range mounted(t) {
		restart = restart || restarts(t, id)
	}
	if !restart {
		return ""
	}
	var want, ready int32
	var maxUnavailable *intstr.IntOrString
	def := intstr.FromInt32(1)
	switch o := w.Object.(type) {
	case *appsv1.Deployment:
		want, ready = replicas(o.Spec.Replicas), o.Status.AvailableReplicas
		def = intstr.FromString("25%")
		if ru := o.Spec.Strategy.RollingUpdate; ru != nil && ru.MaxUnavailable != nil {
			maxUnavailable = ru.MaxUnavailable
		}
	case *appsv1.StatefulSet:
		want, ready = replicas(o.Spec.Replicas), o.Status.AvailableReplicas
		if ru := o.Spec.UpdateStrategy.RollingUpdate; ru != nil && ru.MaxUnavailable != nil {
			maxUnavailable = ru.MaxUnavailable
		}
	case *appsv1.DaemonSet:
		want, ready = o.Status.DesiredNumberScheduled, o.Status.NumberAvailable
		if ru := o.Spec.UpdateStrategy.RollingUpdate; ru != nil && ru.MaxUnavailable != nil {
			maxUnavailable = ru.MaxUnavailable
		}
	}
	if maxUnavailable == nil {
		maxUnavailable = &def
	}
	allowed, err := intstr.GetScaledValueFromIntOrPercent(maxUnavailable, int(want), false)
	if err != nil {
		return fmt.Sprintf("%s: maxUnavailable %s: %v", w, maxUnavailable.String(), err)
	}
	// A rollout's own rounding down to 0 would forbid any restart; refresh
	// takes one pod down at a time, so 1 is the least it can work with,
	// unless the user said 0 outright.
	if allowed == 0 && maxUnavailable.Type == intstr.String {
		allowed = 1
	}
	down := int(want - ready)
	if down+1 > allowed {
		return fmt.Sprintf("%s has %d of %d pods unavailable and maxUnavailable %s: restarting one more would exceed it; the rotation waits until pods are available again (or raise maxUnavailable)",
			w, max(down, 0), want, maxUnavailable.String())
	}
	return ""
}

func replicas(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}

// rotate refreshes the workload's pods that mount d.secret, verifies them
// and records the rotation. A rotation cut short by ctx is not recorded.
func (c *Controller) rotate(ctx context.Context, w workload.Workload, d target) {
	s := d.secret
	log := c.log.With("kind", w.Kind(), "namespace", w.Namespace(), "name", w.Name(), "secret", s.Name)
	sel, err := metav1.LabelSelectorAsSelector(workload.Selector(w.Object))
	if err != nil {
		log.Error("workload selector", "error", err)
		return
	}
	skey := secretKey(s.Namespace, s.Name)
	wkey := workloadKey(w)
	c.mu.Lock()
	c.poked[skey] = time.Now()
	delete(c.held, wkey+"/"+d.id) // its pokes release the pods
	c.mu.Unlock()
	log.Info("rotating")
	res, err := refresh.Pods(ctx, c.client, refresh.Options{
		Namespace: s.Namespace, Secret: s.Name, AgentName: plan.AgentName(d.id),
		Settle: c.o.Settle, Selector: sel.String(),
	}, log)
	if ctx.Err() != nil {
		log.Warn("rotation interrupted; the next leader rotates again", "error", context.Cause(ctx))
		return
	}
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	var pods []string
	for _, r := range res {
		if !r.Gone {
			pods = append(pods, r.Pod)
		}
	}
	if err != nil {
		c.m.rotation("failed")
		note := fmt.Sprintf("refresh of %s for secret %s failed after %d pods: %v", w, s.Name, len(pods), err)
		log.Error("rotation failed; retrying after the minimum interval", "error", err)
		c.emit(ectx, workloadRef(w), corev1.EventTypeWarning, ReasonReloadFailed, "Rotate", note)
		c.endRound(ectx, s, d.rv, wkey, outcome{result: "failed", total: len(pods)})
		c.enqueue(wkey, c.clock.Now().Add(c.o.MinInterval))
		return
	}
	mode := "all pods at once"
	if restarts(w.Template(), d.id) {
		mode = "one pod at a time, each Ready before the next"
	}
	c.emit(ectx, workloadRef(w), corev1.EventTypeNormal, ReasonRefreshed, "Rotate",
		fmt.Sprintf("secret %s changed: refreshed %d pods of %s (%s): %s", s.Name, len(pods), w, mode, list(pods)))
	c.roundRefreshed(ectx, s, d.rv, w, len(pods))

	vctx, vcancel := context.WithTimeout(ctx, c.o.VerifyTimeout)
	read := func(context.Context) (*corev1.Secret, error) {
		if cur, ok := c.getSecret(secretKey(s.Namespace, s.Name)); ok && cur != nil {
			return cur, nil
		}
		return nil, apierrors.NewNotFound(corev1.Resource("secrets"), s.Name)
	}
	<-c.slots // see maxParallel
	c.poke()
	v, err := c.verify(vctx, s.Namespace, s.Name, sel.String(), read)
	vcancel()
	c.slots <- struct{}{}
	if ctx.Err() != nil {
		log.Warn("verification interrupted; the next leader rotates again", "error", context.Cause(ctx))
		return
	}
	// The writes after the verification get time of their own: it can
	// outlast the first writes' 10 s (up to --verify-timeout), and their
	// Events and the record then failed with "context deadline exceeded"
	// (seen in the restart series, where the rotation was then repeated).
	ectx, cancelAfter := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancelAfter()
	c.m.pods(s.Namespace, s.Name, v.Verified, len(v.Stale), len(v.Unknown))
	unknown := ""
	if len(v.Unknown) > 0 {
		unknown = fmt.Sprintf("; %d could not say what they loaded: %s", len(v.Unknown), list(v.Unknown))
	}
	// Verified only when every pod still there is: a pod that cannot say
	// is not counted as one that loaded the content.
	var typ, reason, note string
	result := "verified"
	switch {
	case err != nil:
		result, typ, reason = "unverified", corev1.EventTypeWarning, ReasonReloadFailed
		note = fmt.Sprintf("secret %s: could not verify the pods of %s: %v", s.Name, w, err)
	case len(v.Stale) > 0:
		result, typ, reason = "stale", corev1.EventTypeWarning, ReasonReloadFailed
		note = fmt.Sprintf("secret %s: %d of %d pods do not run its current content within %s (stale, failed, refused, or loaded but not Ready): %s%s", s.Name, len(v.Stale), v.Total, c.o.VerifyTimeout, list(v.Stale), unknown)
	case len(v.Unknown) > 0:
		result, typ, reason = "unknown", corev1.EventTypeWarning, ReasonUnverified
		note = fmt.Sprintf("secret %s: refreshed, but %d of %d pods of %s could not say what they loaded, so the rotation is not verified for them (%d verified): %s", s.Name, len(v.Unknown), v.Total, w, v.Verified, list(v.Unknown))
	default:
		typ, reason = corev1.EventTypeNormal, ReasonVerified
		note = fmt.Sprintf("secret %s: %d of %d pods verified (%s)", s.Name, v.Verified, v.Total, "each pod's agent reports the Secret's current content")
		c.m.latency(c.clock.Since(d.seen))
	}
	c.m.rotation(result)
	c.emit(ectx, workloadRef(w), typ, reason, "Rotate", note)
	c.endRound(ectx, s, d.rv, wkey, outcome{result: result, verified: v.Verified, total: v.Total})
	// Recorded also when pods are stale or unknown: poking them again would
	// not make a failing reload succeed, nor an agent answer; the Events and
	// metrics name them.
	if err := c.record(ectx, w, map[string]*string{RotatedPrefix + d.id: &d.state}); err != nil {
		log.Error("record the rotation; it will be repeated (pods reload only content that changed)", "error", err)
		return
	}
	log.Info("rotated", "pods", len(pods), "verified", v.Verified, "total", v.Total, "stale", len(v.Stale), "unknown", len(v.Unknown))
}

// writeTimeout bounds each group of a rotation's writes (Events, the
// record) after a step that may have taken long; tests shorten it.
var writeTimeout = 10 * time.Second

// standIn gives the VerifyFunc of a controller given none; this package's
// tests set it.
var standIn = func(*Controller) VerifyFunc { return nil }

func list(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	const most = 20
	if len(names) > most {
		return strings.Join(names[:most], ", ") + fmt.Sprintf(" and %d more", len(names)-most)
	}
	return strings.Join(names, ", ")
}

// record writes annotations on the workload's own metadata (nil removes
// one): a merge patch that leaves the pod template, and so the pods, alone.
func (c *Controller) record(ctx context.Context, w workload.Workload, ann map[string]*string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err != nil {
		return err
	}
	apps := c.client.AppsV1()
	opts := metav1.PatchOptions{FieldManager: FieldManager}
	ns, name := w.Namespace(), w.Name()
	switch w.Kind() {
	case workload.Deployment:
		_, err = apps.Deployments(ns).Patch(ctx, name, types.MergePatchType, patch, opts)
	case workload.StatefulSet:
		_, err = apps.StatefulSets(ns).Patch(ctx, name, types.MergePatchType, patch, opts)
	case workload.DaemonSet:
		_, err = apps.DaemonSets(ns).Patch(ctx, name, types.MergePatchType, patch, opts)
	default:
		err = errors.New("unknown kind")
	}
	if err != nil {
		return fmt.Errorf("annotate %s: %w", w, err)
	}
	return nil
}
