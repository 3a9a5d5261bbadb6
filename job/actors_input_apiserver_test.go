package main

// Other actors against a real kube-apiserver: bad input that must cost no
// request, other runs holding (or stealing) the lock, a run for another
// Secret on the same workload, and signals sent to the built binary.

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/k8secrets/k8secrets/internal/apitest"
	"github.com/k8secrets/k8secrets/job/internal/lock"
)

// buildJobBinary compiles this command into a temporary folder.
func buildJobBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "k8secrets-job")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// countingProxy forwards TCP connections to the API server and counts them:
// no connection, no request.
type countingProxy struct {
	ln    net.Listener
	conns atomic.Int64
}

func newCountingProxy(t *testing.T, host string) *countingProxy {
	t.Helper()
	u, err := url.Parse(host)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.conns.Add(1)
			up, err := net.Dial("tcp", u.Host)
			if err != nil {
				c.Close()
				continue
			}
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

// kubeconfigVia writes a copy of the test API server's kubeconfig whose
// server is addr (host:port; the serving certificate names 127.0.0.1).
func kubeconfigVia(t *testing.T, env *apitest.Env, addr string) string {
	t.Helper()
	kc, err := clientcmd.LoadFromFile(env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range kc.Clusters {
		c.Server = "https://" + addr
	}
	file := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, file); err != nil {
		t.Fatal(err)
	}
	return file
}

// Every bad value, from a flag, the environment or the config file, is exit
// 2 naming what is wrong, before any request: the proxy in front of the API
// server sees no connection, and the Deployment is untouched.
func TestAPIBadInputNoRequest(t *testing.T) {
	cl := newCluster(t, never)
	env := apitest.Shared(t)
	cl.secret("db-creds")
	before := cl.deployment("web", "web", 1)
	bin := buildJobBinary(t)
	proxy := newCountingProxy(t, env.Config.Host)
	kubeconfig := kubeconfigVia(t, env, proxy.ln.Addr().String())
	dir := t.TempDir()
	file := func(body string) string {
		f, err := os.CreateTemp(dir, "*.yaml")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(body); err != nil {
			t.Fatal(err)
		}
		f.Close()
		return f.Name()
	}
	inject := []string{"inject", "-n", cl.ns, "-l", "app=web", "--secret", "db-creds", "--agent-image", "k8secrets-agent:test"}
	run := func(args []string, envs ...string) (int, string) {
		cmd := exec.CommandContext(cl.ctx, bin, args...)
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "KUBECONFIG=" + kubeconfig}, envs...)
		out, _ := cmd.CombinedOutput()
		return cmd.ProcessState.ExitCode(), string(out)
	}

	// The proxy counts: a good read-only command goes through it.
	if code, out := run([]string{"status", "-n", cl.ns}); code != 0 || proxy.conns.Load() == 0 {
		t.Fatalf("status through the proxy: exit %d, %d connections; want 0 and some\n%s", code, proxy.conns.Load(), out)
	}

	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want []string
	}{
		{"env dry-run yes", inject, []string{"K8SECRETS_DRY_RUN=yes"}, []string{"K8SECRETS_DRY_RUN", "true or false"}},
		{"env timeout 300", inject, []string{"K8SECRETS_TIMEOUT=300"}, []string{"K8SECRETS_TIMEOUT", "a duration with a unit"}},
		{"env max-parallel", inject, []string{"K8SECRETS_MAX_PARALLEL=many"}, []string{"K8SECRETS_MAX_PARALLEL", "a whole number"}},
		{"env mount path in /proc", inject, []string{"K8SECRETS_MOUNT_PATH=/proc/x/"}, []string{"sits inside /proc"}},
		{"env reload", inject, []string{"K8SECRETS_RELOAD=signal:SIGHUPP"}, []string{"SIGHUPP"}},
		{"file dry-run yes", append(inject[:len(inject):len(inject)], "--config", file("dry-run: yes\n")), nil, []string{`key "dry-run"`, "true or false"}},
		{"file timeout 300", append(inject[:len(inject):len(inject)], "--config", file("timeout: 300\n")), nil, []string{`key "timeout"`, "a duration with a unit"}},
		{"file from env, mount path /", inject, []string{"K8SECRETS_CONFIG=" + file("mount-path: /\n")}, []string{"--mount-path", "is /, reserved"}},
		{"flag service account path", append(inject[:len(inject):len(inject)], "--mount-path", "/var/run/secrets/kubernetes.io/serviceaccount/"), nil, []string{"sits inside /var/run/secrets/kubernetes.io"}},
		{"flag above the token", append(inject[:len(inject):len(inject)], "--mount-path", "/var/run/secrets"), nil, []string{"would hide /var/run/secrets/kubernetes.io"}},
		{"flag reload", append(inject[:len(inject):len(inject)], "--reload", "signal:SIGHUPP"), nil, []string{"SIGHUPP"}},
		{"flag dry-run yes", append(inject[:len(inject):len(inject)], "--dry-run=yes"), nil, []string{"--dry-run"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := proxy.conns.Load()
			code, out := run(tc.args, tc.env...)
			if code != 2 {
				t.Errorf("exit %d; want 2\n%s", code, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if d := proxy.conns.Load() - n; d != 0 {
				t.Errorf("%d connections to the API server; want none", d)
			}
		})
	}
	after, err := cl.c.AppsV1().Deployments(cl.ns).Get(cl.ctx, "web", metav1.GetOptions{})
	if err != nil || after.ResourceVersion != before.ResourceVersion {
		t.Errorf("deployment web: resourceVersion %s -> %s (%v); want unchanged", before.ResourceVersion, after.ResourceVersion, err)
	}
}

// fakeHolder plays another run holding the Secret's lease, renewing it every
// 500ms with RenewTimes written by a clock skew away from ours, until stop.
func fakeHolder(t *testing.T, cl *cluster, name, holder string, skew time.Duration) (stop func()) {
	t.Helper()
	leases := cl.c.CoordinationV1().Leases(cl.ns)
	at := func() *metav1.MicroTime { return ptr.To(metav1.NewMicroTime(time.Now().Add(skew))) }
	_, err := leases.Create(cl.ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(holder), LeaseDurationSeconds: ptr.To(int32(lock.Duration / time.Second)),
			AcquireTime: at(), RenewTime: at()}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) { // already there: adopt it
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(cl.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			l, err := leases.Get(ctx, name, metav1.GetOptions{})
			if err != nil || ptr.Deref(l.Spec.HolderIdentity, "") != holder {
				continue
			}
			l.Spec.RenewTime = at()
			_, _ = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
	}()
	return func() { cancel(); <-done }
}

// Another run holds the lease and renews it, its clock 30 s behind or ahead
// of ours: this run never proceeds (exit 7, naming it), whatever the
// RenewTime says, because only a change of the record counts. Once the
// holder stops renewing (killed), a run takes the lease over after watching
// it unchanged for lock.Duration on its own clock, and not before.
func TestAPILeaseSkewedHolder(t *testing.T) {
	for _, skew := range []time.Duration{-30 * time.Second, 30 * time.Second} {
		t.Run(skew.String(), func(t *testing.T) {
			cl := newCluster(t, never)
			cl.secret("db-creds")
			before := cl.deployment("web", "web", 1)
			stop := fakeHolder(t, cl, "k8secrets-db-creds", "skewed-run", skew)
			r := cl.job(injectArgs("app=web", "db-creds")...)
			if r.code != 7 || !strings.Contains(errString(r.err), "held by skewed-run") {
				stop()
				t.Fatalf("run beside a live holder whose clock is %s off: exit %d (%v); want 7 naming it", skew, r.code, r.err)
			}
			d, err := cl.c.AppsV1().Deployments(cl.ns).Get(cl.ctx, "web", metav1.GetOptions{})
			if err != nil || d.ResourceVersion != before.ResourceVersion {
				t.Errorf("deployment web changed beside a live holder: resourceVersion %s -> %s (%v)", before.ResourceVersion, d.ResourceVersion, err)
			}
			stop()
			if skew < 0 {
				return
			}
			// The holder is dead, its RenewTime 30 s in our future: taken
			// over after lock.Duration of watching, not 30 s later.
			start := time.Now()
			r = cl.job(injectArgs("app=web", "db-creds")...)
			took := time.Since(start)
			if r.code != 0 {
				t.Fatalf("run after the holder died: exit %d (%v)", r.code, r.err)
			}
			if took < lock.Duration {
				t.Errorf("took the dead holder's lease over within %s; want no sooner than %s of watching it", took, lock.Duration)
			}
			t.Logf("took over a dead holder's lease (RenewTime %s ahead) and injected in %s", skew, took.Round(time.Millisecond))
		})
	}
}

// Another run takes the lease over while this one waits for a rollout: the
// renewals fail for lock.RenewDeadline, the work stops (exit 1, ErrLost,
// rerun to converge), nothing is rolled back, and the other run's lease is
// left alone.
func TestAPILeaseLostStopsWork(t *testing.T) {
	cl := newCluster(t, hasInjectedVolume)
	cl.secret("db-creds")
	cl.deployment("web", "web", 2)
	stopped := make(chan func(), 1)
	go func() {
		// Mid-rollout (the new ReplicaSet exists), steal the lease.
		_ = wait.PollUntilContextTimeout(cl.ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			return cl.replicaSets() >= 2, nil
		})
		leases := cl.c.CoordinationV1().Leases(cl.ns)
		_ = wait.PollUntilContextTimeout(cl.ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			l, err := leases.Get(ctx, "k8secrets-db-creds", metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			l.Spec.HolderIdentity = ptr.To("thief")
			l.Spec.RenewTime = ptr.To(metav1.NewMicroTime(time.Now()))
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
			return err == nil, nil
		})
		stopped <- fakeHolder(t, cl, "k8secrets-db-creds", "thief", 0) // and keep it renewed
	}()
	start := time.Now()
	r := cl.job(injectArgs("app=web", "db-creds", "--timeout", "2m")...)
	select {
	case stop := <-stopped:
		defer stop()
	default:
	}
	if r.code != 1 || !errors.Is(r.err, lock.ErrLost) || !strings.Contains(errString(r.err), "rerun to converge") {
		t.Fatalf("run whose lease was taken over: exit %d (%v); want 1, ErrLost, saying to rerun", r.code, r.err)
	}
	if took := time.Since(start); took > 2*time.Minute {
		t.Errorf("the run went on for %s, to its --timeout; want it stopped when the lease was lost", took)
	}
	d, err := cl.c.AppsV1().Deployments(cl.ns).Get(cl.ctx, "web", metav1.GetOptions{})
	if err != nil || !hasVolumePrefix(d.Spec.Template.Spec.Volumes, "k8secrets-db-creds") {
		t.Errorf("deployment web after the lost lease: %v (%v); want its injection left in place for a rerun, not rolled back", d.Spec.Template.Spec.Volumes, err)
	}
	if n := len(cl.events("RolledBack")); n != 0 {
		t.Errorf("%d RolledBack events; want none: a run that lost its lease rolls nothing back", n)
	}
	l, err := cl.c.CoordinationV1().Leases(cl.ns).Get(cl.ctx, "k8secrets-db-creds", metav1.GetOptions{})
	if err != nil || ptr.Deref(l.Spec.HolderIdentity, "") != "thief" {
		t.Errorf("the other run's lease after ours ended: %v (%v); want it held by thief, untouched", l, err)
	}
}

func hasVolumePrefix(vs []corev1.Volume, name string) bool {
	for _, v := range vs {
		if v.Name == name {
			return true
		}
	}
	return false
}

// Two runs for two different Secrets on one Deployment at once; the
// injection of b breaks the pods. The workload lease keeps them apart: a
// is injected and rolled out (exit 0) and b is rolled back (exit 5) or, if
// it waited longer than its --timeout, refused with nothing changed (exit
// 7). Without it, a's rollout would be judged on b's broken pods and a
// rolled back too.
func TestAPITwoSecretsOneDeployment(t *testing.T) {
	cl := newCluster(t, func(p *corev1.Pod) bool { return hasVolumePrefix(p.Spec.Volumes, "k8secrets-b") })
	cl.secret("a")
	cl.secret("b")
	cl.deployment("web", "web", 2)
	var ra, rb result
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); ra = cl.job(injectArgs("app=web", "a", "--timeout", "90s")...) }()
	go func() { defer wg.Done(); rb = cl.job(injectArgs("app=web", "b", "--timeout", "10s")...) }()
	wg.Wait()
	if ra.code != 0 {
		t.Errorf("run for a: exit %d (%v); want 0: b's broken pods are not a's to judge", ra.code, ra.err)
	}
	if rb.code != 5 && rb.code != 7 {
		t.Errorf("run for b: exit %d (%v); want 5 (rolled back) or 7 (refused while a held the Deployment)", rb.code, rb.err)
	}
	d := cl.waitDeployment("web")
	if !hasVolumePrefix(d.Spec.Template.Spec.Volumes, "k8secrets-a") || hasVolumePrefix(d.Spec.Template.Spec.Volumes, "k8secrets-b") {
		t.Errorf("deployment web volumes %v; want a's injection and not b's", d.Spec.Template.Spec.Volumes)
	}
	for _, p := range cl.pods("web") {
		if p.DeletionTimestamp == nil && !podReady(p.DeepCopy()) {
			t.Errorf("pod %s not Ready at the end", p.Name)
		}
	}
	leases, err := cl.c.CoordinationV1().Leases(cl.ns).List(cl.ctx, metav1.ListOptions{})
	if err != nil || len(leases.Items) != 0 {
		t.Errorf("leases left behind: %v (%v)", leases, err)
	}
}

// runningJob is the built binary running, its stderr read line by line.
type runningJob struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	saw   chan string // every stderr line, for waitLine
	done  chan struct{}
}

func startJobBinary(t *testing.T, bin, kubeconfig string, args ...string) *runningJob {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "KUBECONFIG=" + kubeconfig}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	j := &runningJob{cmd: cmd, saw: make(chan string, 1000), done: make(chan struct{})}
	go func() {
		s := bufio.NewScanner(stderr)
		s.Buffer(make([]byte, 1<<20), 1<<20)
		for s.Scan() {
			j.mu.Lock()
			j.lines = append(j.lines, s.Text())
			j.mu.Unlock()
			select {
			case j.saw <- s.Text():
			default:
			}
		}
		_ = cmd.Wait()
		close(j.done)
	}()
	t.Cleanup(func() {
		select {
		case <-j.done:
		default:
			_ = cmd.Process.Kill()
			<-j.done
		}
	})
	return j
}

func (j *runningJob) stderr() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return strings.Join(j.lines, "\n")
}

// waitLine waits for a stderr line containing s.
func (j *runningJob) waitLine(ctx context.Context, t *testing.T, s string) {
	t.Helper()
	for {
		select {
		case l := <-j.saw:
			if strings.Contains(l, s) {
				return
			}
		case <-j.done:
			t.Fatalf("the Job exited (%d) before logging %q:\n%s", j.cmd.ProcessState.ExitCode(), s, j.stderr())
		case <-ctx.Done():
			t.Fatalf("no %q in the Job's log:\n%s", s, j.stderr())
		}
	}
}

// allAtOnceDeployment creates a Deployment that replaces all its pods at
// once (maxUnavailable 100%, no surge), so that a rollback needs new pods,
// which the test can hold back, and waits until it is available.
func (cl *cluster) allAtOnceDeployment(name string, replicas int32) {
	cl.t.Helper()
	all, none := intstr.FromString("100%"), intstr.FromInt32(0)
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(replicas), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{MaxUnavailable: &all, MaxSurge: &none}},
			Template: podTemplate(name)}}
	if _, err := cl.c.AppsV1().Deployments(cl.ns).Create(cl.ctx, d, metav1.CreateOptions{}); err != nil {
		cl.t.Fatal(err)
	}
	cl.waitDeployment(name)
}

// signalDuringRollback runs the built Job on a Deployment whose injected
// pods never start, holds back the pods of its rollback, and returns the
// running Job once it has logged the interrupt sent mid-rollback.
func signalDuringRollback(t *testing.T) (*cluster, *runningJob, *atomic.Bool) {
	var hold atomic.Bool
	cl := newCluster(t, func(p *corev1.Pod) bool { return hasInjectedVolume(p) || hold.Load() })
	env := apitest.Shared(t)
	cl.secret("db-creds")
	cl.allAtOnceDeployment("web", 2)
	bin := buildJobBinary(t)
	j := startJobBinary(t, bin, env.Kubeconfig, append(injectArgs("app=web", "db-creds", "--timeout", "10s"), "-n", cl.ns)...)
	// Injected, then (after --timeout) the rollback's write: the template
	// without the injection again, at a newer generation.
	injected := int64(0)
	err := wait.PollUntilContextTimeout(cl.ctx, 50*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := cl.c.AppsV1().Deployments(cl.ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		has := hasVolumePrefix(d.Spec.Template.Spec.Volumes, "k8secrets-db-creds")
		if has && injected == 0 {
			injected = d.Generation
			hold.Store(true) // from now on no pod starts: the rollback waits
		}
		return injected != 0 && !has && d.Generation > injected, nil
	})
	if err != nil {
		t.Fatalf("no rollback seen: %v\n%s", err, j.stderr())
	}
	if err := j.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	j.waitLine(cl.ctx, t, "interrupted: stopping")
	return cl, j, &hold
}

// SIGTERM while a rollback is under way: the rollback finishes (pods
// healthy again, exit 5), it is not abandoned half-done.
func TestAPISignalDuringRollbackFinishesIt(t *testing.T) {
	cl, j, hold := signalDuringRollback(t)
	hold.Store(false) // the rollback's pods may start now
	select {
	case <-j.done:
	case <-cl.ctx.Done():
		t.Fatalf("the Job did not end:\n%s", j.stderr())
	}
	if code := j.cmd.ProcessState.ExitCode(); code != 5 {
		t.Fatalf("exit %d after SIGTERM mid-rollback; want 5 (rolled back)\n%s", code, j.stderr())
	}
	d := cl.waitDeployment("web")
	if hasInjectedVolume(&corev1.Pod{Spec: d.Spec.Template.Spec}) {
		t.Errorf("deployment web still injected after the rollback")
	}
	if n := len(cl.events("RolledBack")); n != 1 {
		t.Errorf("%d RolledBack events; want 1", n)
	}
}

// A second SIGTERM ends the process at once (the rollback's pods are still
// held back, so nothing else could end it) with exit 1 and a message naming
// the half-done workload.
func TestAPISecondSignalExitsAtOnce(t *testing.T) {
	cl, j, hold := signalDuringRollback(t)
	defer hold.Store(false)
	if err := j.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-j.done:
	case <-cl.ctx.Done():
		t.Fatalf("the Job did not end after a second SIGTERM:\n%s", j.stderr())
	}
	if code := j.cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit %d after a second SIGTERM; want 1\n%s", code, j.stderr())
	}
	out := j.stderr()
	for _, w := range []string{"interrupted twice", "Deployment " + cl.ns + "/web", "rerun"} {
		if !strings.Contains(out, w) {
			t.Errorf("the Job's log lacks %q:\n%s", w, out)
		}
	}
}

// A pod deleted by another actor (a scale-down, an eviction) while refresh
// waits for it ends that wait at once: reported gone, the refresh carries
// on to the next pod and spends no --settle on it.
func TestAPIRefreshPodGone(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 3)
	if r := cl.job(injectArgs("app=web", "db-creds", "--reload", "restart")...); r.code != 0 {
		t.Fatalf("inject: exit %d: %v", r.code, r.err)
	}
	cl.waitDeployment("web")
	injected := map[string]bool{}
	for _, p := range cl.pods("web") {
		injected[p.Name] = true
	}

	// Stand-in agents: the first pod poked is deleted instead of restarting;
	// the others restart their app.
	var deleted atomic.Value
	deleted.Store("")
	go func() {
		for cl.ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
			l, err := cl.c.CoreV1().Pods(cl.ns).List(cl.ctx, metav1.ListOptions{LabelSelector: "app=web"})
			if err != nil {
				continue
			}
			for i := range l.Items {
				p := &l.Items[i]
				if _, poked := p.Annotations["k8secrets.io/refreshed-at"]; !poked || len(p.Status.ContainerStatuses) > 0 {
					continue
				}
				if deleted.Load() == "" {
					if err := cl.c.CoreV1().Pods(cl.ns).Delete(cl.ctx, p.Name, metav1.DeleteOptions{}); err == nil {
						deleted.Store(p.Name)
					}
					continue
				}
				p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", RestartCount: 1, Ready: true}}
				_, _ = cl.c.CoreV1().Pods(cl.ns).UpdateStatus(cl.ctx, p, metav1.UpdateOptions{})
			}
		}
	}()

	settle := 90 * time.Second
	start := time.Now()
	r := cl.job("refresh", "--secret", "db-creds", "--settle", settle.String(), "--wait=false")
	took := time.Since(start)
	if r.code != 0 {
		t.Fatalf("refresh: exit %d: %v\n%s", r.code, r.err, r.logs)
	}
	gone, _ := deleted.Load().(string)
	if gone == "" || !injected[gone] {
		t.Fatalf("no injected pod was deleted by the stand-in agent (%q)", gone)
	}
	if n := strings.Count(r.out, "refreshed, restarted"); n != 2 || !strings.Contains(r.out, gone) || !strings.Contains(r.out, "gone") {
		t.Errorf("report: want %s gone and 2 pods refreshed and restarted:\n%s", gone, r.out)
	}
	if took >= settle {
		t.Errorf("refresh took %s: it spent --settle (%s) on the deleted pod", took, settle)
	}
	t.Logf("refresh with one pod deleted mid-wait took %s (--settle %s)", took.Round(time.Millisecond), settle)
}
