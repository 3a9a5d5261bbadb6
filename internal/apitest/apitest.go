// Package apitest runs a real etcd and kube-apiserver (and, on request,
// kube-controller-manager) as child processes for Go tests, from the binaries
// in $K8SECRETS_TEST_ASSETS (`make unit` builds them and sets it).
//
// The fake clientset ignores dry-run and validates nothing; tests that prove
// what the API server does (RBAC, admission, server-side apply, dry-run) use
// this package instead.
//
// One server for one test:
//
//	env := apitest.Start(t)
//	ns := env.Namespace(t)
//	env.Client.CoreV1().Secrets(ns).Create(...)
//
// Start-up takes a few seconds, so the common case is one server per test
// package, started from TestMain and shared by its tests, each in its own
// namespace:
//
//	func TestMain(m *testing.M) { os.Exit(apitest.Main(m)) }
//
//	func TestRotate(t *testing.T) {
//		env := apitest.Shared(t)
//		ns := env.Namespace(t)
//		...
//	}
//
// Without K8SECRETS_TEST_ASSETS the tests that need a server are skipped
// (with a message naming `make unit`), unless K8SECRETS_REQUIRE_API=1 or
// CI=true, where they fail. Every server listens on free loopback ports and
// keeps its files in a fresh temporary folder, so test packages run in
// parallel; stopping kills the process groups and removes the folder.
package apitest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// AssetsEnv names the folder holding the etcd, kube-apiserver and
// kube-controller-manager binaries.
const AssetsEnv = "K8SECRETS_TEST_ASSETS"

// Env is a running API server.
type Env struct {
	// Config authenticates as an admin: a bearer token of a user in the
	// group system:masters.
	Config *rest.Config
	// Client is built from Config.
	Client kubernetes.Interface
	// Kubeconfig is the path of a kubeconfig file for Config, for programs
	// run by the tests (the Job's binary, kubectl).
	Kubeconfig string

	stop func()
}

// Option changes what Start runs.
type Option func(*options)

type options struct {
	controllerManager bool
	apiServerArgs     []string
}

// WithControllerManager also runs kube-controller-manager with the
// controllers that turn workloads into pods objects: deployment, replicaset,
// statefulset, daemonset, garbage collector, service account and its token,
// and namespace. There is no scheduler and no kubelet: pods stay Pending.
func WithControllerManager() Option {
	return func(o *options) { o.controllerManager = true }
}

// WithAPIServerArgs appends flags to kube-apiserver's command line (a later
// flag of the same name wins), e.g. "--feature-gates=...".
func WithAPIServerArgs(args ...string) Option {
	return func(o *options) { o.apiServerArgs = append(o.apiServerArgs, args...) }
}

// Start starts etcd and kube-apiserver (free ports, a temporary folder, RBAC
// authorization, the default admission plugins, which include
// ValidatingAdmissionPolicy and ResourceQuota), waits for /readyz, and stops
// them in tb.Cleanup.
func Start(tb testing.TB, opts ...Option) *Env {
	tb.Helper()
	dir, ok, err := assets()
	if err != nil {
		tb.Fatal(err)
	}
	if !ok {
		tb.Skip(skipMessage)
	}
	env, err := start(dir, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(env.stop)
	return env
}

var (
	sharedMu  sync.Mutex
	shared    *Env
	sharedSet bool // Main ran; shared may still be nil if it skipped
)

// Main starts one API server for the whole test package, runs its tests and
// stops the server; tests get it with Shared. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(apitest.Main(m)) }
//
// Without the binaries (and not required) it still runs the tests, and
// Shared skips those that need the server.
func Main(m *testing.M, opts ...Option) int {
	dir, ok, err := assets()
	if err != nil {
		fmt.Fprintln(os.Stderr, "apitest:", err)
		return 1
	}
	sharedMu.Lock()
	sharedSet = true
	sharedMu.Unlock()
	if !ok {
		return m.Run()
	}
	env, err := start(dir, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "apitest:", err)
		return 1
	}
	sharedMu.Lock()
	shared = env
	sharedMu.Unlock()
	defer env.stop()
	return m.Run()
}

// Shared returns the API server that Main started for this test package. It
// skips the test (or fails it, as Start) when the binaries are not there.
func Shared(tb testing.TB) *Env {
	tb.Helper()
	sharedMu.Lock()
	env, set := shared, sharedSet
	sharedMu.Unlock()
	if !set {
		tb.Fatal("apitest.Shared: call apitest.Main from TestMain first: func TestMain(m *testing.M) { os.Exit(apitest.Main(m)) }")
	}
	if env == nil {
		tb.Skip(skipMessage)
	}
	return env
}

const skipMessage = "no API server: " + AssetsEnv + " is not set; run `make unit` (it builds etcd and kube-apiserver and sets it)"

// assets returns the binaries' folder, false when the tests should skip, and
// an error when they must not skip.
func assets() (string, bool, error) {
	dir := os.Getenv(AssetsEnv)
	if dir != "" {
		return dir, true, nil
	}
	if os.Getenv("K8SECRETS_REQUIRE_API") == "1" || os.Getenv("CI") == "true" {
		return "", false, errors.New("apitest: " + AssetsEnv + " is not set and an API server is required here (K8SECRETS_REQUIRE_API=1 or CI=true); run `make unit`, or `make test-assets` and set " + AssetsEnv + " to the folder it prints")
	}
	return "", false, nil
}

// As returns a copy of e.Config that impersonates user with groups, for RBAC
// tests: the admin token authenticates, the user's permissions decide.
func (e *Env) As(user string, groups ...string) *rest.Config {
	cfg := rest.CopyConfig(e.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	return cfg
}

var notDNS = regexp.MustCompile(`[^a-z0-9-]+`)

// Namespace creates a namespace for one test, named after tb.Name() with a
// random suffix, and deletes it in tb.Cleanup. It also creates the "default"
// ServiceAccount, which the ServiceAccount admission plugin needs before it
// admits pods (without the controller manager nothing else makes it).
func (e *Env) Namespace(tb testing.TB) string {
	tb.Helper()
	prefix := strings.Trim(notDNS.ReplaceAllString(strings.ToLower(tb.Name()), "-"), "-")
	if len(prefix) > 40 {
		prefix = strings.TrimRight(prefix[:40], "-")
	}
	if prefix == "" {
		prefix = "test"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns, err := e.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create namespace %s-*: %v", prefix, err)
	}
	name := ns.Name
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Without the namespace controller the namespace stays Terminating;
		// it is gone with the server's folder anyway.
		if err := e.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			tb.Logf("delete namespace %s: %v", name, err)
		}
	})
	// Also with the controller manager: its service account controller
	// may not have made it yet when the test creates its first pod.
	_, err = e.Client.CoreV1().ServiceAccounts(name).Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: "default"},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		tb.Fatalf("create serviceaccount %s/default: %v", name, err)
	}
	return name
}
