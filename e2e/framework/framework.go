// Package framework gives the e2e tests (build tag e2e) a real cluster, a
// namespace per test, and helpers that look at what a user would check:
// objects in the API server and files inside pods.
//
// Each test package starts it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(framework.Main(m)) }
//
//	func TestSomething(t *testing.T) {
//		c := framework.Get(t)
//		ns := c.Namespace(t)
//		...
//	}
//
// The cluster is the one E2E_KUBECONFIG names, else KUBECONFIG's, else the
// kind cluster of e2e/cluster: reused if it exists (`make cluster`), created
// otherwise and then deleted after the package's tests (E2E_KEEP_CLUSTER=1
// keeps it). Creating takes half a minute, so `make e2e` creates it once and
// runs the packages one at a time (-p 1) against it.
package framework

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/k8secrets/k8secrets/e2e/cluster"
)

// Cluster is the cluster the tests run on.
type Cluster struct {
	// Kubeconfig is an admin kubeconfig file, for programs the tests run
	// (the Job's binary, kubectl).
	Kubeconfig string
	Config     *rest.Config
	Client     kubernetes.Interface
	// kind is set when the cluster is the kind cluster of e2e/cluster, into
	// which LoadImages can load images.
	kind *cluster.Options
}

var (
	mu      sync.Mutex
	current *Cluster
)

// Main gets or creates the cluster, runs the package's tests and deletes
// the cluster if it created it. It returns the exit code for os.Exit.
func Main(m *testing.M) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	c, cleanup, err := setup(ctx, logger)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer cleanup()
	mu.Lock()
	current = c
	mu.Unlock()
	return m.Run()
}

// Get returns the cluster Main set up.
func Get(tb testing.TB) *Cluster {
	tb.Helper()
	mu.Lock()
	defer mu.Unlock()
	if current == nil {
		tb.Fatal("framework.Get: call framework.Main from TestMain: func TestMain(m *testing.M) { os.Exit(framework.Main(m)) }")
	}
	return current
}

func kindOptions(logger *slog.Logger) cluster.Options {
	return cluster.Options{
		Name:              os.Getenv("KIND_CLUSTER_NAME"),
		Image:             os.Getenv("KIND_NODE_IMAGE"),
		KubernetesVersion: envOr("K8S_VERSION", "v1.37.2"),
		CacheDir:          os.Getenv("CACHE_DIR"),
		Logger:            logger,
	}
}

func setup(ctx context.Context, logger *slog.Logger) (*Cluster, func(), error) {
	o := kindOptions(logger)
	exists, existsErr := cluster.Exists(o)
	for _, env := range []string{"E2E_KUBECONFIG", "KUBECONFIG"} {
		if path := os.Getenv(env); path != "" {
			logger.Info("e2e: using the cluster of "+env, "kubeconfig", path)
			c, err := connect(path)
			if err != nil {
				return nil, nil, err
			}
			if existsErr == nil && exists {
				c.kind = &o
			}
			return c, func() {}, nil
		}
	}
	if existsErr != nil {
		return nil, nil, existsErr
	}
	cleanup := func() {}
	unlock, err := lock(o)
	if err != nil {
		return nil, nil, err
	}
	// Another test package may be creating it: the lock makes it wait.
	created, err := cluster.Ensure(ctx, o)
	unlock()
	if err != nil {
		return nil, nil, err
	}
	if created && os.Getenv("E2E_KEEP_CLUSTER") != "1" {
		cleanup = func() {
			if err := cluster.Delete(o); err != nil {
				logger.Error("e2e: delete cluster", "err", err)
			}
		}
	}
	path, err := cluster.WriteKubeconfig(o)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	c, err := connect(path)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	c.kind = &o
	return c, cleanup, nil
}

// lock serialises cluster creation between test packages run in parallel.
func lock(o cluster.Options) (func(), error) {
	dir := o.CacheDir
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "k8secrets")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock cluster creation: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, ".kind-create.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock cluster creation: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock cluster creation: %w", err)
	}
	return func() { f.Close() }, nil
}

func connect(kubeconfig string) (*Cluster, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.UserAgent = "k8secrets-e2e"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("client for %s: %w", cfg.Host, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		return nil, fmt.Errorf("cluster of %s does not answer: %w", kubeconfig, err)
	}
	return &Cluster{Kubeconfig: kubeconfig, Config: cfg, Client: client}, nil
}

var notDNS = regexp.MustCompile(`[^a-z0-9-]+`)

// Namespace creates a namespace for one test, named after the test with a
// random suffix. When the test has failed, cleanup first logs the
// namespace's pods and events, then deletes it (E2E_KEEP_NAMESPACES=1 keeps
// failed tests' namespaces for a look with kubectl).
func (c *Cluster) Namespace(tb testing.TB) string {
	tb.Helper()
	prefix := strings.Trim(notDNS.ReplaceAllString(strings.ToLower(tb.Name()), "-"), "-")
	if len(prefix) > 40 {
		prefix = strings.TrimRight(prefix[:40], "-")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "e2e-" + prefix + "-", Labels: map[string]string{"k8secrets.io/e2e": "true"}},
	}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create namespace e2e-%s-*: %v", prefix, err)
	}
	name := ns.Name
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if tb.Failed() {
			c.logNamespace(ctx, tb, name)
			if os.Getenv("E2E_KEEP_NAMESPACES") == "1" {
				tb.Logf("keeping namespace %s (E2E_KEEP_NAMESPACES=1)", name)
				return
			}
		}
		err := c.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			tb.Logf("delete namespace %s: %v", name, err)
		}
	})
	// Pods are admitted only once the service account controller has made
	// the namespace's default ServiceAccount; a test that creates a Pod
	// straight away would otherwise race it.
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		tb.Fatalf("wait for serviceaccount %s/default: %v", name, err)
	}
	return name
}

// logNamespace logs what a person would look at first: pod phases and
// container states, and the events.
func (c *Cluster) logNamespace(ctx context.Context, tb testing.TB, ns string) {
	pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		tb.Logf("list pods in %s: %v", ns, err)
	} else {
		for _, p := range pods.Items {
			tb.Logf("pod %s/%s: %s", ns, p.Name, podSummary(&p))
		}
	}
	events, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		tb.Logf("list events in %s: %v", ns, err)
		return
	}
	for _, e := range events.Items {
		tb.Logf("event %s %s/%s: %s: %s", e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
	}
}

func podSummary(p *corev1.Pod) string {
	var b strings.Builder
	b.WriteString(string(p.Status.Phase))
	for _, s := range p.Status.ContainerStatuses {
		fmt.Fprintf(&b, "; %s ready=%t restarts=%d", s.Name, s.Ready, s.RestartCount)
		switch {
		case s.State.Waiting != nil:
			fmt.Fprintf(&b, " waiting %s: %s", s.State.Waiting.Reason, s.State.Waiting.Message)
		case s.State.Terminated != nil:
			fmt.Fprintf(&b, " terminated %s (exit %d)", s.State.Terminated.Reason, s.State.Terminated.ExitCode)
		}
	}
	return b.String()
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
