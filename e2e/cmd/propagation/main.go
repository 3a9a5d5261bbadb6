// Command propagation measures how long a Secret update takes to reach a
// running app through k8secrets, on the kind cluster with the kubelet's
// default sync period (make bench-propagation):
//
//   - side by side (-series, see watch.go), one Deployment of -replicas
//     pods each, one update at a time, the order rotated at each update
//     (-refresh-updates per series): `k8secrets-job watch` running (until
//     its Verified Event), `k8secrets-job refresh` right after the update
//     (it waits for and verifies every pod), and what Reloader does, a
//     rollout restart (until all new pods are Ready);
//   - without refresh: the kubelet's periodic sync delivers the update.
//     That takes about a minute per update, so -periodic-pods Deployments,
//     each with its own Secret, are updated concurrently, -periodic-rounds
//     times; each update waits a random 0–60s first, so that it lands at a
//     random point of its pod's sync period, as a user's update would.
//
// Each sample is the time from the start of the Secret update (just before
// the API call) to the demo app's reload of the new version, as the app
// itself records it ("loaded" in its GET / answer, read through the API
// server's pod proxy). The kind node is a container on this machine, so the
// app's clock is this machine's clock. The demo app reloads on SIGHUP from the
// k8secrets-agent sidecar, which the Job injected in signal mode.
//
// Usage:
//
//	propagation -tag TAG [-job bin/k8secrets-job] [-kubeconfig FILE]
//	propagation -tag TAG -flap    # the flapping check only (watch.go)
//
// The k8secrets-agent:TAG and k8secrets-demo:TAG images must be loaded into
// the cluster (make load-images). It prints p50, p95 and max of each series.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

type options struct {
	kubeconfig, job, tag         string
	refreshUpdates, replicas     int
	periodicPods, periodicRounds int
	maxOffset, settle            time.Duration
	skipPeriodic, keep           bool
	out                          string
	series                       string
	flap                         bool
	flapFor, flapEvery           time.Duration
	restartReplicas              int
	restartUpdates               int
	watchOn, kubectl             string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	var o options
	home, _ := os.UserHomeDir()
	defKubeconfig := os.Getenv("KIND_KUBECONFIG")
	if defKubeconfig == "" {
		defKubeconfig = filepath.Join(home, ".cache", "k8secrets", "kind-k8secrets.kubeconfig")
	}
	flag.StringVar(&o.kubeconfig, "kubeconfig", defKubeconfig, "kubeconfig of the cluster (default: $KIND_KUBECONFIG, else the kind cluster's of make cluster)")
	flag.StringVar(&o.job, "job", defaultJob(), "the k8secrets-job binary (default: $BIN/k8secrets-job, else bin/ of the repository)")
	flag.StringVar(&o.tag, "tag", "", "tag of the k8secrets-agent and k8secrets-demo images loaded into the cluster (required)")
	flag.IntVar(&o.refreshUpdates, "refresh-updates", 30, "Secret updates of each side-by-side series (watch, refresh, rollout; 0: skip them)")
	flag.IntVar(&o.replicas, "replicas", 2, "replicas of the Deployment of each side-by-side series; an update counts when every replica reloaded it")
	flag.IntVar(&o.periodicPods, "periodic-pods", 12, "Deployments (one pod, one Secret each) updated concurrently in the series without refresh")
	flag.IntVar(&o.periodicRounds, "periodic-rounds", 2, "rounds of the series without refresh (samples = pods × rounds)")
	flag.DurationVar(&o.maxOffset, "max-offset", time.Minute, "each update of the series without refresh waits a random time up to this first")
	flag.DurationVar(&o.settle, "settle", 20*time.Second, "wait after the pods are Ready before the series without refresh (any change to a pod, its own status included, makes the kubelet resync it)")
	flag.StringVar(&o.series, "series", "watch,refresh,rollout", "series measured side by side, one update of each in turn (watch, refresh, rollout; see watch.go)")
	flag.BoolVar(&o.flap, "flap", false, "run only the flapping check: the Secret updated every -flap-every for -flap-for, the watch at its defaults")
	flag.DurationVar(&o.flapFor, "flap-for", time.Minute, "duration of the flapping check")
	flag.DurationVar(&o.flapEvery, "flap-every", time.Second, "update period of the flapping check")
	flag.StringVar(&o.watchOn, "watch-on", "cluster", "where the watch series' `k8secrets-job watch` runs: cluster (manifests/watch, one replica, asking the agents directly) or host (this machine, through the pod proxy)")
	flag.StringVar(&o.kubectl, "kubectl", defaultKubectl(), "kubectl, for -watch-on cluster (default: $KUBE_BIN/kubectl, else kubectl)")
	flag.IntVar(&o.restartReplicas, "restart-replicas", 5, "replicas of the restart-mode series (restart.go)")
	flag.IntVar(&o.restartUpdates, "restart-updates", 3, "Secret updates of the restart-mode series (0: skip it)")
	flag.BoolVar(&o.skipPeriodic, "skip-periodic", false, "measure only the series with refresh")
	flag.BoolVar(&o.keep, "keep", false, "keep the namespaces")
	flag.StringVar(&o.out, "o", "", "also write every sample as JSON to this file")
	flag.Parse()
	if err := run(ctx, o, log); err != nil {
		log.Error(err.Error())
		os.Exit(1)
	}
}

// defaultJob finds the k8secrets-job that make build wrote, from the
// repository or from e2e/ (go -C e2e run).
func defaultJob() string {
	if d := os.Getenv("BIN"); d != "" {
		return filepath.Join(d, "k8secrets-job")
	}
	for _, p := range []string{"bin/k8secrets-job", "../bin/k8secrets-job"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "bin/k8secrets-job"
}

// repoRoot is the repository, from its root or from e2e/ (go -C e2e run).
func repoRoot() string {
	for _, d := range []string{".", ".."} {
		if _, err := os.Stat(filepath.Join(d, "manifests", "watch")); err == nil {
			return d
		}
	}
	return "."
}

func defaultKubectl() string {
	if d := os.Getenv("KUBE_BIN"); d != "" {
		return filepath.Join(d, "kubectl")
	}
	return "kubectl"
}

// sample is one Secret update and how long it took to reach the app(s).
type sample struct {
	Series  string  `json:"series"`
	Update  int     `json:"update"`
	Seconds float64 `json:"seconds"`
	// Detail breaks the time down: the Secret update API call, the refresh
	// command, or the random wait before the update.
	Detail string `json:"detail,omitempty"`
	// MostDown and Starts: the restart series only.
	MostDown int    `json:"mostDown,omitempty"`
	Starts   string `json:"starts,omitempty"`
}

type bench struct {
	client     kubernetes.Interface
	kubeconfig string
	job, tag   string
	kubectl    string
	repo       string // the repository's root, for manifests/
	log        *slog.Logger
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	if o.tag == "" {
		return errors.New("-tag is required: the tag of the k8secrets-agent and k8secrets-demo images loaded into the cluster")
	}
	if o.refreshUpdates < 0 || o.replicas < 1 || o.periodicPods < 1 || o.periodicRounds < 1 {
		return errors.New("-replicas, -periodic-pods and -periodic-rounds must be at least 1, -refresh-updates at least 0")
	}
	if o.refreshUpdates == 0 {
		o.series = "" // no side-by-side series
	}
	job, err := filepath.Abs(o.job)
	if err != nil {
		return err
	}
	if _, err := os.Stat(job); err != nil {
		return fmt.Errorf("k8secrets-job binary: %w (make build)", err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", o.kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	if o.watchOn != "cluster" && o.watchOn != "host" {
		return fmt.Errorf("-watch-on %q: cluster or host", o.watchOn)
	}
	b := &bench{client: client, kubeconfig: o.kubeconfig, job: job, tag: o.tag, kubectl: o.kubectl, repo: repoRoot(), log: log}

	freq, err := b.syncFrequency(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("kubelet syncFrequency (node /configz): %s\n", freq)
	if o.flap {
		return b.flapping(ctx, o)
	}

	var all []sample
	start := time.Now()
	load := map[string]string{}
	l0 := loadAverage()
	side := map[string][]sample{}
	if o.series != "" {
		side, err = b.sideBySide(ctx, o)
		for _, s := range strings.Split(o.series, ",") {
			all = append(all, side[s]...)
		}
		if err != nil {
			return err
		}
		load["side"] = l0 + " → " + loadAverage()
	}
	var restart []sample
	if o.restartUpdates > 0 {
		l0 = loadAverage()
		restart, err = b.restartSeries(ctx, o)
		all = append(all, restart...)
		if err != nil {
			return err
		}
		load["restart"] = l0 + " → " + loadAverage()
	}
	var periodic []sample
	if !o.skipPeriodic {
		l0 = loadAverage()
		periodic, err = b.withoutRefresh(ctx, o)
		all = append(all, periodic...)
		if err != nil {
			return err
		}
		load["periodic"] = l0 + " → " + loadAverage()
	}
	if o.out != "" {
		j, _ := json.MarshalIndent(all, "", "  ")
		if err := os.WriteFile(o.out, append(j, '\n'), 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("\nSecret update start → demo app reloaded (its own \"loaded\" time), kubelet syncFrequency %s, wall time %s\n", freq, time.Since(start).Round(time.Second))
	fmt.Printf("%-50s %7s %8s %8s %8s %8s  %s\n", "series", "samples", "min", "p50", "p95", "max", "load average 1m (start → end)")
	names := map[string]string{seriesWatch: "watch (Verified Event, every replica)", seriesRefresh: "refresh --wait (every replica)", seriesRollout: "rollout restart (all new pods Ready)"}
	for _, s := range strings.Split(o.series, ",") {
		if s != "" {
			fmt.Println(summary(fmt.Sprintf("%s, %d replicas", names[s], o.replicas), side[s]) + "  " + load["side"])
		}
	}
	if o.restartUpdates > 0 {
		fmt.Println(summary(fmt.Sprintf("watch, restart mode, %d replicas", o.restartReplicas), restart) + "  " + load["restart"])
		over := 0
		for _, s := range restart {
			if s.MostDown > 1 {
				over++
			}
		}
		fmt.Printf("  restart mode: %d of %d updates had more than one pod not Ready at once (the starts against the pokes are in the log)\n", over, len(restart))
	}
	if !o.skipPeriodic {
		fmt.Println(summary("without refresh", periodic) + "  " + load["periodic"])
	}
	return nil
}

// loadAverage is this machine's 1-minute load average: the figures depend
// on how busy its cores are.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

// summary is a table row: nearest-rank percentiles of the samples.
func summary(name string, ss []sample) string {
	if len(ss) == 0 {
		return fmt.Sprintf("%-50s %7d", name, 0)
	}
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = s.Seconds
	}
	slices.Sort(v)
	return fmt.Sprintf("%-50s %7d %7.2fs %7.2fs %7.2fs %7.2fs", name, len(v), v[0], pct(v, 50), pct(v, 95), v[len(v)-1])
}

// pct is the nearest-rank percentile of sorted values.
func pct(sorted []float64, p int) float64 {
	i := (p*len(sorted)+99)/100 - 1
	return sorted[max(i, 0)]
}

// syncFrequency reads the kubelet's syncFrequency from its /configz, through
// the API server's node proxy.
func (b *bench) syncFrequency(ctx context.Context) (string, error) {
	nodes, err := b.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("list nodes: %w", err)
	}
	var freqs []string
	for _, n := range nodes.Items {
		raw, err := b.client.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", n.Name, "proxy", "configz").DoRaw(ctx)
		if err != nil {
			return "", fmt.Errorf("kubelet /configz of node %s: %w", n.Name, err)
		}
		var cz struct {
			KubeletConfig struct {
				SyncFrequency string `json:"syncFrequency"`
			} `json:"kubeletconfig"`
		}
		if err := json.Unmarshal(raw, &cz); err != nil {
			return "", fmt.Errorf("kubelet /configz of node %s: %w", n.Name, err)
		}
		freqs = append(freqs, n.Name+"="+cz.KubeletConfig.SyncFrequency)
	}
	return strings.Join(freqs, ", "), nil
}

// namespace creates a namespace for one series and returns a function that
// deletes it (unless keep).
func (b *bench) namespace(ctx context.Context, prefix string, keep bool) (string, func(), error) {
	ns, err := b.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: prefix,
		Labels:       map[string]string{"k8secrets.io/bench": "propagation"},
	}}, metav1.CreateOptions{})
	if err != nil {
		return "", nil, fmt.Errorf("create namespace: %w", err)
	}
	name := ns.Name
	b.log.Info("namespace", "name", name)
	return name, func() {
		if keep {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = b.client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	}, nil
}

// deploy creates a Secret at version v0 and a Deployment of the demo app that
// reads it, labelled app=NAME, waits until it is available, and injects the
// Secret with the agent in signal mode (or reload, if given).
func (b *bench) deploy(ctx context.Context, ns, name, secret string, replicas int32, reload ...string) error {
	mode := "signal:SIGHUP"
	if len(reload) > 0 {
		mode = reload[0]
	}
	if _, err := b.client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secret},
		Data:       data("v0"),
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create secret %s/%s: %w", ns, secret, err)
	}
	grace := int64(5)
	labels := map[string]string{"app": name}
	uid := int64(1000)
	yes, no := true, false
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					Containers: []corev1.Container{{
						Name:            "demo",
						Image:           "k8secrets-demo:" + b.tag,
						ImagePullPolicy: corev1.PullIfNotPresent,
						Args:            []string{"--secret-dir=/var/run/secrets/k8secrets/" + secret},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
							PeriodSeconds: 2,
						},
						SecurityContext: &corev1.SecurityContext{
							// The agent runs as the app's user to signal it.
							RunAsUser: &uid, RunAsGroup: &uid, RunAsNonRoot: &yes,
							ReadOnlyRootFilesystem: &yes, AllowPrivilegeEscalation: &no,
							Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
							SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
						},
					}},
				},
			},
		},
	}
	if _, err := b.client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create deployment %s/%s: %w", ns, name, err)
	}
	// Before the injection the Secret is not mounted: the app serves no version.
	if err := b.waitPods(ctx, ns, name, int(replicas), "", false); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, b.job, "inject", "-l", "app="+name, "--secret", secret, "-n", ns,
		"--kubeconfig", b.kubeconfig, "--agent-image=k8secrets-agent:"+b.tag, "--reload="+mode, "--timeout=3m")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("k8secrets-job inject %s/%s: %v\n%s", ns, name, err, out)
	}
	return b.waitPods(ctx, ns, name, int(replicas), "v0", true)
}

// waitPods waits until the Deployment's app label selects exactly n live,
// Ready pods (with the agent, if injected), each serving version.
func (b *bench) waitPods(ctx context.Context, ns, app string, n int, version string, injected bool) error {
	deadline := time.Now().Add(4 * time.Minute)
	for {
		pods, err := b.pods(ctx, ns, app)
		ok := err == nil && len(pods) == n
		for _, p := range pods {
			if !ok {
				break
			}
			ok = ready(&p) && (!injected || hasAgent(&p))
			if ok {
				s, err := b.app(ctx, ns, p.Name)
				ok = err == nil && s.Version == version
			}
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("deployment %s/%s: not %d Ready pods serving %s after 4m (%d pods, err %v)", ns, app, n, version, len(pods), err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// pods are the live (not terminating) pods of app.
func (b *bench) pods(ctx context.Context, ns, app string) ([]corev1.Pod, error) {
	list, err := b.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func hasAgent(p *corev1.Pod) bool {
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if strings.HasPrefix(c.Name, "k8secrets-agent-") {
			return true
		}
	}
	return false
}

// appState is the demo app's GET / answer, without the digest of the values.
type appState struct {
	Version string    `json:"version"`
	Reloads int       `json:"reloads"`
	Loaded  time.Time `json:"loaded"`
}

func (b *bench) app(ctx context.Context, ns, pod string) (appState, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	raw, err := b.client.CoreV1().Pods(ns).ProxyGet("http", pod, "8080", "/", nil).DoRaw(ctx)
	if err != nil {
		return appState{}, err
	}
	var s appState
	err = json.Unmarshal(raw, &s)
	return s, err
}

// waitLoaded polls the app in pod until it serves version, and returns the
// time it says it loaded it.
func (b *bench) waitLoaded(ctx context.Context, ns, pod, version string, every, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		s, err := b.app(ctx, ns, pod)
		if err == nil && s.Version == version {
			return s.Loaded, nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("pod %s/%s: version %s not loaded after %s (serves %q, err %v)", ns, pod, version, timeout, s.Version, err)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(every):
		}
	}
}

// update sets the Secret's version (and a fresh password, never printed).
func (b *bench) update(ctx context.Context, ns, secret, version string) error {
	s, err := b.client.CoreV1().Secrets(ns).Get(ctx, secret, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get secret %s/%s: %w", ns, secret, err)
	}
	s = s.DeepCopy()
	s.Data = data(version)
	if _, err := b.client.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update secret %s/%s: %w", ns, secret, err)
	}
	return nil
}

func data(version string) map[string][]byte {
	p := make([]byte, 16)
	_, _ = rand.Read(p)
	return map[string][]byte{"version": []byte(version), "password": []byte(hex.EncodeToString(p))}
}

// withoutRefresh: -periodic-pods Deployments of one pod, each with its own
// Secret, updated concurrently; each update first waits a random time up to
// -max-offset so that it lands at a random point of its pod's sync period.
func (b *bench) withoutRefresh(ctx context.Context, o options) ([]sample, error) {
	ns, cleanup, err := b.namespace(ctx, "prop-periodic-", o.keep)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	// Inject a few at a time: each inject waits for its rollout.
	errs := make([]error, o.periodicPods)
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i := range o.periodicPods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = b.deploy(ctx, ns, fmt.Sprintf("demo-%d", i), fmt.Sprintf("secret-%d", i), 1)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	b.log.Info("series without refresh: pods ready; letting them settle", "pods", o.periodicPods, "settle", o.settle)
	time.Sleep(o.settle)

	var (
		mu  sync.Mutex
		out []sample
	)
	for r := 1; r <= o.periodicRounds; r++ {
		b.log.Info("series without refresh", "round", r, "of", o.periodicRounds)
		for i := range o.periodicPods {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = func() error {
					app, secret := fmt.Sprintf("demo-%d", i), fmt.Sprintf("secret-%d", i)
					pods, err := b.pods(ctx, ns, app)
					if err != nil {
						return err
					}
					if len(pods) != 1 {
						return fmt.Errorf("deployment %s/%s: %d pods; want 1", ns, app, len(pods))
					}
					offset := time.Duration(mrand.Int64N(int64(o.maxOffset) + 1))
					select {
					case <-ctx.Done():
						return ctx.Err()
					case <-time.After(offset):
					}
					version := fmt.Sprintf("p%d", r)
					start := time.Now()
					if err := b.update(ctx, ns, secret, version); err != nil {
						return err
					}
					loaded, err := b.waitLoaded(ctx, ns, pods[0].Name, version, 250*time.Millisecond, 4*time.Minute)
					if err != nil {
						return err
					}
					s := sample{Series: "periodic", Update: (r-1)*o.periodicPods + i + 1, Seconds: loaded.Sub(start).Seconds(),
						Detail: fmt.Sprintf("pod %s, round %d, random wait %.1fs before the update", pods[0].Name, r, offset.Seconds())}
					b.log.Info("update", "series", s.Series, "n", s.Update, "seconds", fmt.Sprintf("%.3f", s.Seconds), "detail", s.Detail)
					mu.Lock()
					out = append(out, s)
					mu.Unlock()
					return nil
				}()
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return out, err
		}
	}
	return out, nil
}
