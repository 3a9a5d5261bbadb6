//go:build e2e

package job

import (
	"context"
	"net/url"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/k8secrets/k8secrets/internal/apitest"
)

// leaseName is the Job's lock for a Secret whose name needs no digest.
func leaseName(secret string) string { return "k8secrets-" + secret }

// waitLease waits until the Secret's Lease exists (a run holds the lock).
func (s *suite) waitLease(ctx context.Context, t *testing.T, ns, secret string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := s.Client.CoordinationV1().Leases(ns).Get(ctx, leaseName(secret), metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("lease %s/%s never appeared: %v", ns, leaseName(secret), err)
	}
}

// waitLeaseExpired waits until the Secret's Lease is gone or was last
// renewed longer ago than its duration: a dead run's lock is stale.
func (s *suite) waitLeaseExpired(ctx context.Context, t *testing.T, ns, secret string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		l, err := s.Client.CoordinationV1().Leases(ns).Get(ctx, leaseName(secret), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err != nil || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
			return false, nil
		}
		// A second of slack for the clocks of the node and this machine.
		return time.Since(l.Spec.RenewTime.Time) > time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second+time.Second, nil
	})
	if err != nil {
		t.Fatalf("lease %s/%s did not expire: %v", ns, leaseName(secret), err)
	}
}

// noLease asserts the Secret's Lease is gone: a run that ended released it.
func (s *suite) noLease(ctx context.Context, t *testing.T, ns, secret string) {
	t.Helper()
	if _, err := s.Client.CoordinationV1().Leases(ns).Get(ctx, leaseName(secret), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("lease %s/%s after the run ended: %v; want it released (not found)", ns, leaseName(secret), err)
	}
}

// newReplicaSet waits until the Deployment has a ReplicaSet whose template
// mounts secret: the rollout has begun.
func (s *suite) newReplicaSet(ctx context.Context, t *testing.T, ns, secret string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := s.Client.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, rs := range l.Items {
			for _, v := range rs.Spec.Template.Spec.Volumes {
				if v.Secret != nil && v.Secret.SecretName == secret {
					return true, nil
				}
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no ReplicaSet mounting %s appeared in %s: %v", secret, ns, err)
	}
}

func (s *suite) replicaSetCount(ctx context.Context, t *testing.T, ns string) int {
	t.Helper()
	l, err := s.Client.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return len(l.Items)
}

// A second run on the same Secret while the first is rolling out exits 7
// before the first ends, and changes nothing; the first finishes and
// releases the lock.
func TestConcurrentRunExits7(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	// minReadySeconds keeps the first run's rollout going for a while.
	s.deployment(ctx, t, ns, "web", "web", 1, minReady(10))

	first := s.start(ctx, t, "", ns, s.injectArgs("app=web", "db-creds", "--timeout", "2m")...)
	s.waitLease(ctx, t, ns, "db-creds")
	s.newReplicaSet(ctx, t, ns, "db-creds")
	rs := s.replicaSetCount(ctx, t, ns)

	start := time.Now()
	r := s.job(ctx, t, "", ns, [][]byte{value}, s.injectArgs("app=web", "db-creds", "--timeout", "2m")...)
	if r.code != 7 {
		t.Errorf("second run: %s\nwant exit 7", r)
	}
	// "At once" is judged by order, not by a clock: the second run gave up
	// while the first still held the lease and was rolling out (a busy
	// machine may stretch the few seconds it watches the lease renew).
	t.Logf("the second run gave up after %s", time.Since(start).Round(100*time.Millisecond))
	select {
	case <-first.done:
		t.Errorf("the first run had ended before the second finished: the second waited for the lock instead of giving up")
	default:
	}
	if r := first.wait(t, [][]byte{value}); r.code != 0 {
		t.Fatalf("first run: %s", r)
	}
	if n := s.replicaSetCount(ctx, t, ns); n != rs {
		t.Errorf("ReplicaSets %d -> %d; want only the first run's rollout", rs, n)
	}
	pods := s.settledPods(ctx, t, ns, "app=web", 1, "db-creds", true)
	s.checkSecretFile(ctx, t, pods, "db-creds", value)
	s.noLease(ctx, t, ns, "db-creds")
}

// A run killed with SIGKILL mid-rollout leaves its Lease behind: a rerun
// takes it over once it has watched it unchanged for 20 s, and converges on
// the rollout the killed run started (no further ReplicaSet); every pod
// mounts the Secret.
func TestKilledRunConverges(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	// Two replicas, each 30s to become available: the rollout outlives the
	// rerun's 20s of watching the killed run's Lease, so the rerun finds
	// it unfinished.
	s.deployment(ctx, t, ns, "web", "web", 2, minReady(30))
	rsBefore := s.replicaSetCount(ctx, t, ns)

	s.killMidRollout(ctx, t, ns, value, s.injectArgs("app=web", "db-creds", "--timeout", "2m")...)

	// The rerun takes the killed run's Lease over only once it has seen it
	// unchanged for its 20 s (client-go leaderelection's rule), then
	// converges.
	start := time.Now()
	r := s.job(ctx, t, "", ns, [][]byte{value}, s.injectArgs("app=web", "db-creds", "--timeout", "2m")...)
	if r.code != 0 {
		t.Fatalf("rerun after the kill: %s", r)
	}
	if took := time.Since(start); took < 20*time.Second {
		t.Errorf("rerun proceeded after %s, while the killed run's Lease was fresh; want no sooner than 20s of watching it", took)
	}
	if !strings.Contains(r.stdout, "waited for its unfinished rollout") {
		t.Logf("the killed run's rollout had finished before the rerun took the Lease over: the rerun had nothing to wait for\n%s", r.stdout)
	}
	s.convergedOnce(ctx, t, ns, value, rsBefore)
}

// A run killed with SIGKILL in the middle of a rollout that cannot succeed
// (the agent's image does not exist): the rerun, with the same intent,
// finds the unfinished rollout, waits for it within its timeout, then rolls
// it back: exit 5, the pod template exactly the one before, the original
// pods still there and Ready.
func TestKilledFailingRunRolledBackByRerun(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	orig := s.deployment(ctx, t, ns, "web", "web", 2)
	before := s.livePods(ctx, t, ns, "app=web")
	args := []string{"inject", "-l", "app=web", "--secret", "db-creds", "--agent-image", missingImage}

	s.killMidRollout(ctx, t, ns, value, append(args, "--timeout", "3m")...)
	s.waitLeaseExpired(ctx, t, ns, "db-creds")

	r := s.job(ctx, t, "", ns, [][]byte{value}, append(args, "--timeout", "15s")...)
	if r.code != 5 {
		t.Fatalf("rerun on the killed run's failing rollout: %s\nwant exit 5", r)
	}
	s.webRolledBack(ctx, t, ns, orig, before)
	s.noLease(ctx, t, ns, "db-creds")
}

// convergedOnce checks the end of an interrupted rollout carried through:
// exactly one ReplicaSet more than rsBefore (the interrupted run's, finished,
// not another), deployment/web injected, and no Lease left behind.
func (s *suite) convergedOnce(ctx context.Context, t *testing.T, ns string, value []byte, rsBefore int) {
	t.Helper()
	if n := s.replicaSetCount(ctx, t, ns); n != rsBefore+1 {
		t.Errorf("ReplicaSets %d -> %d; want one more: the interrupted run's rollout, finished, not another", rsBefore, n)
	}
	s.webInjected(ctx, t, ns, value)
	s.noLease(ctx, t, ns, "db-creds")
}

// killMidRollout starts the Job with args, kills it with SIGKILL once its
// rollout has created a new ReplicaSet, and checks that it died of it.
func (s *suite) killMidRollout(ctx context.Context, t *testing.T, ns string, value []byte, args ...string) {
	t.Helper()
	p := s.start(ctx, t, "", ns, args...)
	s.newReplicaSet(ctx, t, ns, "db-creds")
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if r := p.wait(t, [][]byte{value}); r.code != -1 {
		t.Fatalf("killed run: %s\nwant killed by a signal", r)
	}
}

// viaProxy returns a proxy to the API server and a kubeconfig that reaches
// the API server through it.
func (s *suite) viaProxy(t *testing.T) (*apitest.CutProxy, string) {
	t.Helper()
	px := apitest.NewCutProxy(t, s.Config.Host)
	return px, s.kubeconfigVia(t, px.Addr())
}

// kubeconfigVia writes a copy of the admin kubeconfig whose clusters are
// reached through addr. The API server's certificate names 127.0.0.1, so
// TLS still verifies.
func (s *suite) kubeconfigVia(t *testing.T, addr string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(s.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cfg.Clusters {
		u, err := url.Parse(c.Server)
		if err != nil {
			t.Fatal(err)
		}
		u.Host = addr
		c.Server = u.String()
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// The API server becomes unreachable in the middle of a rollout: the run
// ends with exit 1 and an error naming what it could not do, within its
// timeout; a rerun, once the API server is back and the Lease expired,
// converges.
func TestAPIServerUnreachableMidRun(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	s.deployment(ctx, t, ns, "web", "web", 2, minReady(10))
	rsBefore := s.replicaSetCount(ctx, t, ns)

	px, kubeconfig := s.viaProxy(t)

	p := s.start(ctx, t, kubeconfig, ns, s.injectArgs("app=web", "db-creds", "--timeout", "20s")...)
	s.newReplicaSet(ctx, t, ns, "db-creds")
	px.Cut()
	cutAt := time.Now()
	r := p.wait(t, [][]byte{value})
	took := time.Since(cutAt)
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	t.Logf("the run ended %s after the cut; its last log line: %s", took.Round(time.Second), lines[len(lines)-1])
	// Its --timeout (20s) to notice, then at most a few retries.
	if took > time.Minute {
		t.Errorf("the run took %s to give up after the API server became unreachable; want about its --timeout (20s)", took.Round(time.Second))
	}
	if r.code != 1 {
		// Say whether the rollout the run gave up on had failed at all.
		verdict := "it did not become available either"
		if err := s.WaitDeploymentAvailable(ctx, ns, "web", time.Minute); err == nil && len(s.livePods(ctx, t, ns, "app=web")) == 2 {
			verdict = "yet the Deployment finished that rollout by itself: nothing had failed but the connection"
		}
		t.Errorf("run cut off from the API server: %s\nwant exit 1 (README: \"API server unreachable ... rerun to converge\"); %s", r, verdict)
	}
	if !strings.Contains(r.stderr, "connection refused") && !strings.Contains(r.stderr, "rerun") {
		t.Errorf("the error does not say what failed (connection refused) or what to do (rerun):\n%s", r.stderr)
	}

	s.waitLeaseExpired(ctx, t, ns, "db-creds")
	r = s.job(ctx, t, "", ns, [][]byte{value}, s.injectArgs("app=web", "db-creds", "--timeout", "2m")...)
	if r.code != 0 {
		t.Fatalf("rerun with the API server back: %s", r)
	}
	s.convergedOnce(ctx, t, ns, value, rsBefore)
}

// The API server is unreachable for a few seconds in the middle of a
// rollout, well within the run's timeout: the run carries on once it is
// back (its watches reconnect), exits 0, and every pod mounts the Secret.
func TestAPIServerBlipMidRun(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	s.deployment(ctx, t, ns, "web", "web", 2, minReady(5))
	rsBefore := s.replicaSetCount(ctx, t, ns)

	px, kubeconfig := s.viaProxy(t)

	p := s.start(ctx, t, kubeconfig, ns, s.injectArgs("app=web", "db-creds", "--timeout", "90s")...)
	s.newReplicaSet(ctx, t, ns, "db-creds")
	px.Cut()
	time.Sleep(5 * time.Second)
	select {
	case <-p.done:
		t.Errorf("the run ended during a 5s outage")
	default:
	}
	px.Resume(t)
	if r := p.wait(t, [][]byte{value}); r.code != 0 {
		t.Fatalf("run across a 5s outage of the API server: %s\nwant exit 0", r)
	}
	s.convergedOnce(ctx, t, ns, value, rsBefore)
}
