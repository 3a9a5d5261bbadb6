// Package verify tells, pod by pod, whether the app has loaded the current
// content of a Secret: it asks each agent (GET /status on its port) what it
// has loaded, named by a keyed digest (internal/contentid), and compares that
// with the digest of the Secret's data under the key in the same pod's agent
// container. It reaches the agents directly (pod IP and port, from inside the
// cluster) or through the API server's pod proxy (pods/proxy get).
//
// Nothing here ever logs or returns a Secret value or a content key: only
// pod names, states, the agents' own short reasons and digests.
package verify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/k8secrets/k8secrets/internal/contentid"
	"github.com/k8secrets/k8secrets/internal/wellknown"
	"github.com/k8secrets/k8secrets/job/internal/plan"
	"github.com/k8secrets/k8secrets/job/internal/refresh"
)

// Ways to reach the agents.
const (
	// Auto is Direct in a cluster (KUBERNETES_SERVICE_HOST is set), else Proxy.
	Auto = "auto"
	// Direct: the pod's IP and the agent's port, plain HTTP.
	Direct = "direct"
	// Proxy: the API server's pod proxy; needs pods/proxy get.
	Proxy = "proxy"
)

// States of a pod.
const (
	// Current: the app has loaded the Secret's current content.
	Current = "current"
	// Stale: the app runs older content; the kubelet has not written the
	// current content yet, or the agent's reload of it is pending.
	Stale = "stale"
	// Failed: the agent's reload failed; Reason carries its error.
	Failed = "failed"
	// Refused: the agent refused the content as invalid (a TLS pair not yet
	// valid, a key that does not match its certificate).
	Refused = "refused"
	// Unreachable: the agent did not answer; Reason says why.
	Unreachable = "unreachable"
	// Unknown: the pod cannot say: an agent older than /status (404), no
	// content key in its environment, or no agent for this Secret at all.
	Unknown = "unknown"
	// NotReady: the app has loaded the current content, but the pod is not
	// Ready (an app that fails with it, or a pod unhealthy already);
	// Reason names the containers. Not counted as current: an exit 0 of
	// refresh --wait must hold when someone looks at the pods.
	NotReady = "notReady"
)

// Role names the optional Role that lets verify through the pod proxy.
const Role = "k8secrets-verify (manifests/verify)"

var (
	// ErrNotVerified: not every pod had loaded the current content when
	// the wait ended.
	ErrNotVerified = errors.New("not every pod has loaded the Secret's current content")
	// ErrCannotVerify: verify cannot read what it needs (the Secret, the
	// pods), or may not reach the agents (a forbidden pod proxy).
	ErrCannotVerify = errors.New("cannot verify the pods")
)

// Options of one check.
type Options struct {
	Namespace, Secret string
	// Via is Auto (""), Direct or Proxy.
	Via string
	Log *slog.Logger
	// Read, when set, gives the Secret instead of a GET: the watch passes
	// its informer's copy (its Role has no get on Secrets).
	Read func(context.Context) (*corev1.Secret, error)
	// Selector, when set, narrows the pods to those its labels match (one
	// workload's, for the watch's per-workload rotations).
	Selector string
}

// Pod is what one pod has loaded.
type Pod struct {
	Name string `json:"name"`
	// Workload is the pod's controller as Kind/name (a ReplicaSet's pods
	// are named by their Deployment); empty for a bare pod.
	Workload string `json:"workload,omitempty"`
	State    string `json:"state"`
	Reason   string `json:"reason,omitempty"`
	// Loaded is the agent's identifier of what the app has loaded (a keyed
	// digest, not the content), LoadedAt when it was loaded.
	Loaded   string    `json:"loaded,omitempty"`
	LoadedAt time.Time `json:"loadedAt,omitzero"`
	// Agent is the agent's version, as it reports it.
	Agent string `json:"agent,omitempty"`

	// forbidden: the pod proxy refused us (RBAC); nothing changes that
	// while we wait.
	forbidden bool
	// undelivered: stale, and its agent has not seen the current content
	// (the kubelet has not written it).
	undelivered bool
}

// Report is the outcome of a check.
type Report struct {
	// Via is the way used: Direct or Proxy.
	Via     string `json:"via"`
	Pods    []Pod  `json:"pods"`
	Current int    `json:"current"`
	Total   int    `json:"total"`
}

// Settled tells whether every pod is current or unknown: waiting longer
// cannot tell more.
func (r Report) Settled() bool {
	for _, p := range r.Pods {
		if p.State != Current && p.State != Unknown {
			return false
		}
	}
	return true
}

// Blocked tells whether every pod not yet settled is behind a forbidden
// pod proxy.
func (r Report) Blocked() bool {
	n := 0
	for _, p := range r.Pods {
		if p.State == Current || p.State == Unknown {
			continue
		}
		if !p.forbidden {
			return false
		}
		n++
	}
	return n > 0
}

// Pending lists the pods that are neither current nor unknown, with their
// state and reason: at most max of them, then how many more.
func (r Report) Pending(max int) string {
	var s []string
	n := 0
	for _, p := range r.Pods {
		if p.State == Current || p.State == Unknown {
			continue
		}
		if n++; n <= max {
			s = append(s, fmt.Sprintf("%s (%s: %s)", p.Name, p.State, p.Reason))
		}
	}
	if n > max {
		s = append(s, fmt.Sprintf("and %d more", n-max))
	}
	return strings.Join(s, "; ")
}

func (r Report) count(state string) int {
	n := 0
	for _, p := range r.Pods {
		if p.State == state {
			n++
		}
	}
	return n
}

// Check asks every running pod that mounts o.Secret what it has loaded.
func Check(ctx context.Context, client kubernetes.Interface, o Options) (Report, error) {
	return newChecker(client, o).check(ctx)
}

// Wait checks again and again, until every pod is current or unknown (nil),
// or every one left is behind a forbidden pod proxy (ErrCannotVerify), or
// ctx is done (ErrNotVerified); the report is the last check's. Pods that
// were current or unknown are not asked again while the Secret's content
// stays the same, and pods that appear (a rollout) are checked too.
func Wait(ctx context.Context, client kubernetes.Interface, o Options) (Report, error) {
	c := newChecker(client, o)
	// Every 100 ms for the first two seconds, where an agent reloads
	// within a second of the kubelet's write (a backoff from the start left
	// up to 0.5 s between a pod's reload and the check that saw it: make
	// bench-propagation); then slower, to one check every two seconds.
	// Pods already current are not asked again.
	const fast = 2 * time.Second
	start := time.Now()
	delay := 100 * time.Millisecond
	var last Report
	var lastErr error
	for {
		r, err := c.check(ctx)
		switch {
		case err == nil:
			last, lastErr = r, nil
			if r.Settled() {
				return r, nil
			}
			if r.Blocked() {
				return r, fmt.Errorf("%w: %s", ErrCannotVerify, r.Pending(5))
			}
		case ctx.Err() != nil:
		case errors.Is(err, ErrCannotVerify):
			return r, err
		default:
			// The API server may be back at the next try.
			lastErr = err
			c.log.Warn("verify: check failed; retrying", "namespace", o.Namespace, "secret", o.Secret, "error", err)
		}
		if err == nil {
			c.repoke(ctx, r, time.Since(start))
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			if lastErr != nil {
				return last, fmt.Errorf("%w (via %s): %v", ErrNotVerified, c.via, lastErr)
			}
			unknown := ""
			if n := last.count(Unknown); n > 0 {
				unknown = fmt.Sprintf(" (%d unknown)", n)
			}
			return last, fmt.Errorf("%w: %d of %d pods current%s via %s; %s", ErrNotVerified, last.Current, last.Total, unknown, last.Via, last.Pending(10))
		case <-t.C:
		}
		if time.Since(start) > fast {
			delay = min(delay*3/2, 2*time.Second)
		}
	}
}

// Re-poking: a refresh's poke can reach a kubelet before its own watch of
// the Secret has the new data; that kubelet then rewrites the old content,
// and the pod stays stale until its next periodic sync (60-90 s). So a
// pod whose agent has still not seen the current content repokeAfter into
// the wait is poked again, at most every repokeEvery. Restart-mode pods
// are not: poked together, their apps would restart together (refresh
// gives them their turns one at a time).
var (
	repokeAfter = time.Second
	repokeEvery = 2 * time.Second
)

func (c *checker) repoke(ctx context.Context, r Report, since time.Duration) {
	if since < repokeAfter {
		return
	}
	agent := plan.AgentName(plan.ID(c.o.Secret))
	for _, p := range r.Pods {
		if !p.undelivered {
			continue
		}
		c.mu.Lock()
		pod, ok := c.pods[p.Name]
		due := ok && time.Since(c.poked[p.Name]) >= repokeEvery && !refresh.Restarts(pod, agent)
		if due {
			c.poked[p.Name] = time.Now()
		}
		c.mu.Unlock()
		if !due {
			continue
		}
		if _, err := refresh.Poke(ctx, c.client, pod); err != nil {
			c.log.Warn("verify: poke again", "namespace", pod.Namespace, "name", pod.Name, "error", err)
			continue
		}
		c.log.Info("verify: poked again; the kubelet had not written the current content", "namespace", pod.Namespace, "name", pod.Name)
	}
}

// checker remembers, across the checks of one Wait, the pods whose answer
// cannot change while the Secret's content stays the same.
type checker struct {
	client kubernetes.Interface
	o      Options
	via    string
	log    *slog.Logger
	http   *http.Client

	mu      sync.Mutex
	settled map[podKey]memo
	pods    map[string]*corev1.Pod // the last check's, by name
	poked   map[string]time.Time   // when repoke last poked each
}

// podKey is a pod, not a namesake that replaced it (a StatefulSet's).
type podKey struct {
	name string
	uid  types.UID
}

type memo struct {
	want string // the content id the pod was judged against
	pod  Pod
}

// parallel bounds the requests in flight: a thousand pods are asked in
// rounds, not all at once.
const parallel = 16

// requestTimeout bounds one agent's answer: an agent behind a black hole
// must not hold up the others' verdicts.
const requestTimeout = 5 * time.Second

func newChecker(client kubernetes.Interface, o Options) *checker {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &checker{client: client, o: o, via: resolve(o.Via), log: log, http: directClient(), settled: map[podKey]memo{}, pods: map[string]*corev1.Pod{}, poked: map[string]time.Time{}}
}

// resolve turns Auto into the way to use.
func resolve(via string) string {
	if via == Direct || via == Proxy {
		return via
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		return Direct
	}
	return Proxy
}

func (c *checker) check(ctx context.Context) (Report, error) {
	ns, name := c.o.Namespace, c.o.Secret
	r := Report{Via: c.via}
	var s *corev1.Secret
	var err error
	if c.o.Read != nil {
		s, err = c.o.Read(ctx)
	} else {
		s, err = c.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	}
	switch {
	case apierrors.IsForbidden(err):
		return r, fmt.Errorf("%w: read secret %s/%s: forbidden; grant get on it (the Job's Role has it by name; or bind the Role %s)", ErrCannotVerify, ns, name, Role)
	case apierrors.IsNotFound(err):
		return r, fmt.Errorf("%w: secret %s/%s not found", ErrCannotVerify, ns, name)
	case err != nil:
		return r, fmt.Errorf("read secret %s/%s: %w", ns, name, err)
	}
	pods, err := refresh.Mounting(ctx, c.client, ns, name, c.o.Selector)
	if apierrors.IsForbidden(err) {
		return r, fmt.Errorf("%w: %v; grant list on pods", ErrCannotVerify, err)
	}
	if err != nil {
		return r, err
	}
	c.mu.Lock()
	clear(c.pods)
	for _, p := range pods {
		c.pods[p.Name] = p
	}
	c.mu.Unlock()
	r.Pods = make([]Pod, len(pods))
	var g errgroup.Group // a pod's answer is no error: each is judged
	g.SetLimit(parallel)
	for i, p := range pods {
		g.Go(func() error {
			r.Pods[i] = c.pod(ctx, p, s.Data)
			return nil
		})
	}
	_ = g.Wait()
	// A pod deleted while we asked: its replacement is checked next time.
	r.Pods = slices.DeleteFunc(r.Pods, func(p Pod) bool { return p.Name == "" })
	slices.SortFunc(r.Pods, func(a, b Pod) int { return strings.Compare(a.Workload+"/"+a.Name, b.Workload+"/"+b.Name) })
	r.Total = len(r.Pods)
	r.Current = r.count(Current)
	return r, nil
}

// pod judges one pod; a zero Pod means it is gone.
func (c *checker) pod(ctx context.Context, p *corev1.Pod, data map[string][]byte) Pod {
	out := Pod{Name: p.Name, Workload: workloadOf(p)}
	id := plan.ID(c.o.Secret)
	agent := plan.AgentOf(p.Spec, id)
	if agent == nil {
		out.State, out.Reason = Unknown, fmt.Sprintf("no k8secrets agent for secret %s in the pod (mounted by hand, or injected with --no-agent): nothing reloads its app", c.o.Secret)
		return out
	}
	key := plan.KeyOf(p.Spec, id)
	if key == "" {
		out.State, out.Reason = Unknown, fmt.Sprintf("its agent has no %s (injected by an older k8secrets-job): rerun inject to add it", contentid.KeyEnv)
		return out
	}
	want, err := contentid.Of(key, data)
	if err != nil {
		out.State, out.Reason = Unknown, fmt.Sprintf("its agent's %s is not a valid content key: rerun inject to replace it", contentid.KeyEnv)
		return out
	}
	c.mu.Lock()
	m, ok := c.settled[podKey{p.Name, p.UID}]
	c.mu.Unlock()
	if ok && m.want == want {
		return readiness(p, m.pod)
	}

	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	port := portOf(agent)
	a := c.ask(ctx, p, port)
	switch {
	case a.gone:
		return Pod{}
	case a.err != "":
		out.State, out.Reason, out.forbidden = Unreachable, a.err, a.forbidden
	case a.code == http.StatusNotFound:
		out.State, out.Reason = Unknown, "its agent has no /status (404): an agent older than this Job; rerun inject with this release's --agent-image"
	case a.code != http.StatusOK:
		out.State, out.Reason = Unreachable, fmt.Sprintf("its agent answered /status with HTTP %d", a.code)
	default:
		judge(&out, a.body, want, watchDirs(agent))
	}
	if why := p.Annotations[wellknown.HeldAnnotation]; out.State == Stale && why != "" {
		out.Reason += fmt.Sprintf("; its restart is held until its turn (%s: %s)", wellknown.HeldAnnotation, why)
	}
	if out.State == Current || out.State == Unknown {
		c.mu.Lock()
		c.settled[podKey{p.Name, p.UID}] = memo{want: want, pod: out}
		c.mu.Unlock()
	}
	c.log.Debug("verified pod", "namespace", p.Namespace, "name", p.Name, "state", out.State, "reason", out.Reason, "via", c.via)
	return readiness(p, out)
}

// readiness turns a current pod that is not Ready, as this check's list
// shows it, into NotReady. Done on every check, the agent's answer
// remembered or not: a pod that loaded the content and then failed is not
// current.
func readiness(p *corev1.Pod, out Pod) Pod {
	if out.State == Current && notReady(p) {
		out.State, out.Reason = NotReady, "loaded the current content, but the pod is not Ready: "+unready(p)
	}
	return out
}

// notReady: the pod reports its Ready condition, and it is not true. A
// pod that reports none (a test's, or one not yet synced) is not judged.
func notReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status != corev1.ConditionTrue
		}
	}
	return false
}

// unready names the pod's containers that are not ready, with the reason
// the kubelet gives (CrashLoopBackOff, Error) and their restarts; never
// their messages, which may quote an app's output.
func unready(p *corev1.Pod) string {
	var out []string
	for _, cs := range append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...) {
		if cs.Ready || cs.State.Terminated != nil && cs.State.Terminated.Reason == "Completed" {
			continue
		}
		why := "not ready"
		switch {
		case cs.State.Waiting != nil && cs.State.Waiting.Reason != "":
			why = "waiting: " + cs.State.Waiting.Reason
		case cs.State.Terminated != nil && cs.State.Terminated.Reason != "":
			why = "terminated: " + cs.State.Terminated.Reason
		}
		out = append(out, fmt.Sprintf("container %s %s (restarts %d)", cs.Name, why, cs.RestartCount))
	}
	if len(out) == 0 {
		return "its Ready condition is false"
	}
	return strings.Join(out, ", ")
}

// workloadOf names the pod's controller, a ReplicaSet's by its Deployment.
func workloadOf(p *corev1.Pod) string {
	ref := metav1.GetControllerOf(p)
	if ref == nil {
		return ""
	}
	if ref.Kind == "ReplicaSet" {
		if h := p.Labels["pod-template-hash"]; h != "" {
			if d, ok := strings.CutSuffix(ref.Name, "-"+h); ok {
				return "Deployment/" + d
			}
		}
	}
	return ref.Kind + "/" + ref.Name
}
