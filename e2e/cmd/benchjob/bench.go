package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

const (
	namespace  = "bench-job"
	secretName = "bench-creds"
	benchLabel = "bench"
	benchValue = "k8secrets"
)

// bench holds one run's state; report collects what it prints.
type bench struct {
	o          options
	c          kubernetes.Interface
	log        *slog.Logger
	kubectl    string
	proxy      *counter
	kubeconfig string
	names      []string
	report     strings.Builder
}

func (b *bench) printf(format string, a ...any) { fmt.Fprintf(&b.report, format, a...) }

// setup creates the namespace, the Deployments and the Secret, and waits
// until every Deployment is available with no pod left over.
func (b *bench) setup(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := b.c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	for i := range b.o.N {
		b.names = append(b.names, fmt.Sprintf("web-%04d", i))
	}
	start := time.Now()
	work := make(chan string)
	errs := make(chan error, len(b.names))
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				_, err := b.c.AppsV1().Deployments(namespace).Create(ctx, deployment(name, int32(b.o.Replicas)), metav1.CreateOptions{})
				if err != nil && !apierrors.IsAlreadyExists(err) {
					errs <- fmt.Errorf("create deployment %s: %w", name, err)
				}
			}
		}()
	}
	for _, n := range b.names {
		work <- n
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	b.log.Info("deployments created", "n", b.o.N, "seconds", time.Since(start).Seconds())
	if err := b.waitRolledOut(ctx, nil, 30*time.Minute); err != nil {
		return err
	}
	b.log.Info("deployments available", "n", b.o.N, "pods", b.o.N*b.o.Replicas, "seconds", time.Since(start).Seconds())

	value := make([]byte, 24)
	_, _ = rand.Read(value)
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secretName, Namespace: namespace},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{"password": []byte(hex.EncodeToString(value))},
	}
	if _, err := b.c.CoreV1().Secrets(namespace).Create(ctx, sec, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create secret %s: %w", secretName, err)
	}
	return nil
}

var appUser = int64(65532)

// deployment has pods that run on kwok's nodes only.
func deployment(name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name, benchLabel: benchValue}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector: map[string]string{"type": "kwok"},
					Tolerations:  []corev1.Toleration{{Key: kwokNodeAnno, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
					// The agent signals the app as the app's user; saying which
					// keeps the Job from warning once per workload.
					Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10.2",
						SecurityContext: &corev1.SecurityContext{RunAsUser: &appUser}}},
				},
			},
		},
	}
}

// rolledOut is kubectl rollout status's test: the controller saw the
// latest generation, every replica is updated and available, and no old one
// is left.
func rolledOut(d *appsv1.Deployment) bool {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	s := d.Status
	return s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == want && s.Replicas == want && s.AvailableReplicas == want
}

// waitRolledOut waits until every Deployment has rolled out a generation
// newer than after[name] (any generation when after is nil) and the
// namespace holds exactly the pods they want, none terminating. It polls the
// API server's watch cache: this is the harness, not the Job.
func (b *bench) waitRolledOut(ctx context.Context, after map[string]int64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	lastLog := time.Now()
	for {
		done, pending := b.countRolledOut(ctx, after)
		if done == b.o.N {
			pods, err := b.c.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
			if err == nil {
				n := 0
				for _, p := range pods.Items {
					if p.DeletionTimestamp == nil {
						n++
					}
				}
				if n == b.o.N*b.o.Replicas && len(pods.Items) == n {
					return nil
				}
				pending = fmt.Sprintf("%d pods, %d terminating", len(pods.Items), len(pods.Items)-n)
			}
		}
		if time.Since(lastLog) > 15*time.Second {
			b.log.Info("waiting for rollouts", "done", done, "of", b.o.N, "pending", pending, "load", loadavg())
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("deployments: %d of %d rolled out (%s): %w", done, b.o.N, pending, ctx.Err())
		case <-time.After(2 * time.Second):
		}
	}
}

func (b *bench) countRolledOut(ctx context.Context, after map[string]int64) (int, string) {
	list, err := b.c.AppsV1().Deployments(namespace).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return 0, err.Error()
	}
	done, pending := 0, ""
	for i := range list.Items {
		d := &list.Items[i]
		if rolledOut(d) && (after == nil || d.Generation > after[d.Name]) {
			done++
		} else if pending == "" {
			pending = d.Name
		}
	}
	return done, pending
}

func (b *bench) generations(ctx context.Context) (map[string]int64, error) {
	list, err := b.c.AppsV1().Deployments(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	gens := map[string]int64{}
	for _, d := range list.Items {
		gens[d.Name] = d.Generation
	}
	return gens, nil
}

// gnuTime measures a child's peak RSS (Debian package time).
const gnuTime = "/usr/bin/time"

// result of one process run.
type result struct {
	Wall   time.Duration
	MaxRSS int64 // KiB
	Exit   int
	Counts map[string]tally
}

// runJob runs k8secrets-job through the counting proxy.
func (b *bench) runJob(ctx context.Context, name string, extra ...string) (result, error) {
	args := append([]string{"inject", "-l", benchLabel + "=" + benchValue, "--secret", secretName, "-n", namespace,
		"--kubeconfig", b.kubeconfig, "-o", "json"}, extra...)
	return b.exec(ctx, name, b.o.Job, args...)
}

func (b *bench) exec(ctx context.Context, name, bin string, args ...string) (result, error) {
	stdout, err := os.Create(filepath.Join(b.o.Out, name+".out"))
	if err != nil {
		return result{}, err
	}
	defer stdout.Close()
	stderr, err := os.Create(filepath.Join(b.o.Out, name+".log"))
	if err != nil {
		return result{}, err
	}
	defer stderr.Close()
	// Go starts a child with vfork, and Linux carries the peak RSS of the
	// address space the child ran in before exec (this harness's) into the
	// child's ru_maxrss. GNU time forks a small process of its own first, so
	// its figure is the Job's alone.
	rssFile := filepath.Join(b.o.Out, name+".maxrss")
	cmd := exec.CommandContext(ctx, bin, args...)
	if _, err := os.Stat(gnuTime); err == nil {
		cmd = exec.CommandContext(ctx, gnuTime, append([]string{"-f", "%M", "-o", rssFile, bin}, args...)...)
	}
	// The Go runtime's GC trace (in the log) says how much of the peak RSS
	// is live heap.
	cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
	cmd.Stdout, cmd.Stderr = stdout, stderr
	b.proxy.take()
	start := time.Now()
	err = cmd.Run()
	r := result{Wall: time.Since(start), Counts: b.proxy.take()}
	if cmd.ProcessState != nil {
		r.Exit = cmd.ProcessState.ExitCode()
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			r.MaxRSS = ru.Maxrss
		}
	}
	if data, err := os.ReadFile(rssFile); err == nil {
		// The last line; "Command exited with non-zero status" may precede it.
		lines := strings.Fields(string(data))
		if len(lines) > 0 {
			r.MaxRSS, _ = strconv.ParseInt(lines[len(lines)-1], 10, 64)
		}
	}
	if err != nil {
		return r, fmt.Errorf("%s %s: %w (log in %s)", filepath.Base(bin), strings.Join(args, " "), err, stderr.Name())
	}
	return r, nil
}

// firstApply is the time of the Job's first "applying" log line: the end of
// plan and dry-run, the start of the rollouts.
func firstApply(logFile string) (time.Time, bool) {
	f, err := os.Open(logFile)
	if err != nil {
		return time.Time{}, false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		line := s.Text()
		if !strings.Contains(line, "msg=applying") {
			continue
		}
		for _, field := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(field, "time="); ok {
				t, err := time.Parse(time.RFC3339Nano, v)
				return t, err == nil
			}
		}
	}
	return time.Time{}, false
}

var gcLine = regexp.MustCompile(`^gc \d+ .* (\d+)->(\d+)->(\d+) MB`)

// heap reads the GC trace in a log ("gc N ... start->end->live MB"): the
// largest heap a GC saw and the largest live heap after one, in MB.
func heap(logFile string) (peak, live int) {
	f, err := os.Open(logFile)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		m := gcLine.FindStringSubmatch(s.Text())
		if m == nil {
			continue
		}
		start, _ := strconv.Atoi(m[1])
		end, _ := strconv.Atoi(m[2])
		after, _ := strconv.Atoi(m[3])
		peak, live = max(peak, start, end), max(live, after)
	}
	return peak, live
}

// results counts the Job's report entries by result.
func results(outFile string) string {
	data, err := os.ReadFile(outFile)
	if err != nil {
		return err.Error()
	}
	var rep struct {
		Workloads []struct{ Result string }
		ExitCode  int
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		return "report not JSON: " + err.Error()
	}
	by := map[string]int{}
	for _, w := range rep.Workloads {
		by[w.Result]++
	}
	return fmt.Sprintf("%v (exit %d)", by, rep.ExitCode)
}

func (b *bench) measure(ctx context.Context) error {
	n := b.o.N
	b.printf("\nk8secrets-job scale benchmark: %d Deployments x %d pods on %d kwok nodes (cluster %s)\n", n, b.o.Replicas, b.o.Nodes, b.o.Cluster)
	b.printf("artifacts: %s\n", b.o.Out)

	if b.o.Phases["dryrun"] {
		load := loadavg()
		r, err := b.runJob(ctx, "dryrun", "--dry-run")
		b.printf("\n1. plan + server-side dry-run (inject --dry-run): %.1f s wall, peak RSS %.1f MiB, exit %d  [load %s]  target <= 20 s\n",
			r.Wall.Seconds(), float64(r.MaxRSS)/1024, r.Exit, load)
		b.printf("   report: %s\n", results(filepath.Join(b.o.Out, "dryrun.out")))
		peak, live := heap(filepath.Join(b.o.Out, "dryrun.log"))
		b.printf("   Go heap (gctrace): heap at most %d MB, at most %d MB live after a GC\n", peak, live)
		t, total := table(r.Counts, n)
		b.printf("   API requests: %d (%.2f per workload)\n%s", total, float64(total)/float64(n), t)
		if err != nil {
			return err
		}
	}

	if b.o.Phases["inject"] {
		for i, p := range b.o.MaxParallel {
			if i > 0 {
				// Back to the state before inject, the same safe way.
				before, err := b.generations(ctx)
				if err != nil {
					return err
				}
				// The widest --max-parallel: the reset is not what is measured.
				reset := slices.Max(b.o.MaxParallel)
				r, err := b.exec(ctx, fmt.Sprintf("remove-%d", i), b.o.Job, "remove", "-l", benchLabel+"="+benchValue,
					"--secret", secretName, "-n", namespace, "--kubeconfig", b.kubeconfig, "-o", "json", "--max-parallel", strconv.Itoa(reset))
				b.printf("\n   (remove with --max-parallel %d before the next inject: %.1f s wall, exit %d)\n", reset, r.Wall.Seconds(), r.Exit)
				if err != nil {
					return err
				}
				if err := b.waitRolledOut(ctx, before, 10*time.Minute); err != nil {
					return fmt.Errorf("after remove: %w", err)
				}
			}
			if err := b.inject(ctx, p); err != nil {
				return err
			}
		}
	}

	if b.o.Phases["watch"] {
		if err := b.watchPhase(ctx); err != nil {
			return err
		}
	}

	if b.o.Phases["kubectl"] {
		if err := b.kubectlSequence(ctx); err != nil {
			return err
		}
	}
	b.printf("\nload average at the end: %s\n", loadavg())
	return nil
}

// inject runs the Job for real with --max-parallel p and checks that every
// Deployment rolled out.
func (b *bench) inject(ctx context.Context, p int) error {
	n := b.o.N
	name := fmt.Sprintf("inject-p%d", p)
	before, err := b.generations(ctx)
	if err != nil {
		return err
	}
	load := loadavg()
	start := time.Now()
	args := []string{"--max-parallel", strconv.Itoa(p)}
	if b.o.Reload != "" {
		args = append(args, "--reload", b.o.Reload)
	}
	r, err := b.runJob(ctx, name, args...)
	b.printf("\n2-4. inject --max-parallel %d (real run): %.1f s wall, peak RSS %.1f MiB, exit %d  [load %s -> %s]\n",
		p, r.Wall.Seconds(), float64(r.MaxRSS)/1024, r.Exit, load, loadavg())
	b.printf("   report: %s\n", results(filepath.Join(b.o.Out, name+".out")))
	peak, live := heap(filepath.Join(b.o.Out, name+".log"))
	b.printf("   Go heap (gctrace): heap at most %d MB, at most %d MB live after a GC\n", peak, live)
	if t, ok := firstApply(filepath.Join(b.o.Out, name+".log")); ok {
		b.printf("   plan + dry-run %.1f s, then rollouts %.1f s (%.2f s per workload)\n",
			t.Sub(start).Seconds(), r.Wall.Seconds()-t.Sub(start).Seconds(), (r.Wall.Seconds()-t.Sub(start).Seconds())/float64(n))
	}
	t, total := table(r.Counts, n)
	b.printf("   API requests: %d (%.2f per workload)\n%s", total, float64(total)/float64(n), t)
	if err != nil {
		return err
	}
	if err := b.waitRolledOut(ctx, before, 10*time.Minute); err != nil {
		return fmt.Errorf("after inject: %w", err)
	}
	b.printf("   all %d Deployments rolled out and old pods gone %.1f s after the start\n", n, time.Since(start).Seconds())
	return nil
}

// kubectlSequence is what a user would run instead: restart every
// Deployment, then wait for each with rollout status, one after the other.
func (b *bench) kubectlSequence(ctx context.Context) error {
	before, err := b.generations(ctx)
	if err != nil {
		return err
	}
	load := loadavg()
	start := time.Now()
	restart, err := b.exec(ctx, "kubectl-restart", b.kubectl, "--kubeconfig", b.kubeconfig, "-n", namespace, "rollout", "restart", "deployment", "-l", benchLabel+"="+benchValue)
	if err != nil {
		return err
	}
	var statusCounts []map[string]tally
	for _, name := range b.names {
		r, err := b.exec(ctx, "kubectl-status", b.kubectl, "--kubeconfig", b.kubeconfig, "-n", namespace, "rollout", "status", "deployment/"+name, "--timeout=15m")
		if err != nil {
			return err
		}
		statusCounts = append(statusCounts, r.Counts)
	}
	wall := time.Since(start)
	// The harness's own check, not part of the kubectl time.
	if err := b.waitRolledOut(ctx, before, 10*time.Minute); err != nil {
		return fmt.Errorf("after kubectl rollout restart: %w", err)
	}
	all := map[string]tally{}
	for _, m := range append(statusCounts, restart.Counts) {
		for k, t := range m {
			a := all[k]
			a.N += t.N
			a.Busy += t.Busy
			all[k] = a
		}
	}
	b.printf("\n4'. kubectl rollout restart deployment -l %s=%s (%.1f s), then rollout status x %d: %.1f s wall in all  [load %s -> %s]\n",
		benchLabel, benchValue, restart.Wall.Seconds(), b.o.N, wall.Seconds(), load, loadavg())
	t, total := table(all, b.o.N)
	b.printf("   API requests: %d (%.2f per workload)\n%s", total, float64(total)/float64(b.o.N), t)
	return nil
}

// loadavg is the 1, 5 and 15 minute load averages.
func loadavg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
