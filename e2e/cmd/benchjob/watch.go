package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// refreshedAt is the annotation a refresh writes on each pod it pokes
// (internal/wellknown.RefreshAnnotation).
const refreshedAt = "k8secrets.io/refreshed-at"

// watchPhase measures `k8secrets-job watch` over the injected Deployments
// (phase inject before it): its RSS at rest once it has recorded a baseline
// on every Deployment, the requests it makes at rest, and one update of the
// Secret that every pod mounts, handled in signal mode: the time until
// every Deployment's Refreshed Event (all its pods poked), every pod's
// refresh annotation checked afterwards, and the requests, counted by the
// proxy. kwok runs no containers, so no agent answers: every pod is unknown
// to the verification and each rotation ends with an Unverified Event
// (verification is measured with real pods by make bench-propagation).
func (b *bench) watchPhase(ctx context.Context) error {
	n := b.o.N
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	_ = l.Close()
	logf, err := os.Create(filepath.Join(b.o.Out, "watch.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	wctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(wctx, b.o.Job, "watch", "-n", namespace, "--kubeconfig", b.kubeconfig, "--listen", addr,
		"--verify-via=direct", "--verify-timeout=3s")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	b.proxy.take()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		cancel()
		return fmt.Errorf("k8secrets-job watch: %w", err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()

	// Ready, then a baseline recorded on every Deployment.
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Since(start) > 5*time.Minute {
			return fmt.Errorf("k8secrets-job watch: not ready after 5m (log %s)", logf.Name())
		}
		time.Sleep(200 * time.Millisecond)
	}
	ready := time.Since(start)
	for {
		recorded, err := b.baselines(ctx)
		if err != nil {
			return err
		}
		if recorded == n {
			break
		}
		if time.Since(start) > 10*time.Minute {
			return fmt.Errorf("k8secrets-job watch: %d of %d Deployments carry a baseline after 10m (log %s)", recorded, n, logf.Name())
		}
		time.Sleep(time.Second)
	}
	baselined := time.Since(start)
	startup := b.proxy.take()
	time.Sleep(20 * time.Second)
	idle := b.proxy.take()
	rss := vmRSS(cmd.Process.Pid)
	load := loadavg()
	b.printf("\n5. watch over %d injected Deployments x %d pods sharing one Secret: ready %.1f s, baselines recorded %.1f s after the start  [load %s]\n",
		n, b.o.Replicas, ready.Seconds(), baselined.Seconds(), load)
	b.printf("   RSS at rest (VmRSS after 20 s idle): %.1f MiB  target <= 30 MiB\n", float64(rss)/1024)
	t, total := table(startup, n)
	b.printf("   start-up API requests (informers, lease, baselines): %d\n%s", total, t)
	t, total = table(idle, n)
	b.printf("   API requests in 20 s at rest: %d\n%s", total, t)

	// One update of the Secret every pod mounts.
	list, err := b.c.EventsV1().Events(namespace).List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		return err
	}
	ew, err := b.c.EventsV1().Events(namespace).Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if err != nil {
		return err
	}
	defer ew.Stop()
	s, err := b.c.CoreV1().Secrets(namespace).Get(ctx, secretName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	s = s.DeepCopy()
	s.Data["password"] = []byte("rotated-" + strconv.FormatInt(time.Now().UnixNano(), 36))
	load = loadavg()
	updated := time.Now()
	if _, err := b.c.CoreV1().Secrets(namespace).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update secret %s: %w", secretName, err)
	}
	refreshed := map[string]time.Duration{}
	verdicts := map[string]int{}
	timeout := time.After(5 * time.Minute)
	for len(refreshed) < n || sum(verdicts) < n {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timeout:
			return fmt.Errorf("after the update: %d of %d Deployments refreshed, verdicts %v, after 5m (log %s)", len(refreshed), n, verdicts, logf.Name())
		case e, ok := <-ew.ResultChan():
			if !ok {
				return fmt.Errorf("the watch on the Events of %s closed", namespace)
			}
			ev, isEvent := e.Object.(*eventsv1.Event)
			if !isEvent || e.Type != watch.Added || ev.Regarding.Kind != "Deployment" {
				continue
			}
			switch ev.Reason {
			case "Refreshed":
				if _, seen := refreshed[ev.Regarding.Name]; !seen {
					refreshed[ev.Regarding.Name] = time.Since(updated)
				}
			case "Verified", "Unverified", "ReloadFailed":
				verdicts[ev.Reason]++
			}
		}
	}
	var last time.Duration
	for _, d := range refreshed {
		last = max(last, d)
	}
	rotation := b.proxy.take()
	pods, err := b.c.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	poked := 0
	for _, p := range pods.Items {
		if at, err := time.Parse(time.RFC3339Nano, p.Annotations[refreshedAt]); err == nil && !at.Before(updated.Add(-time.Second)) {
			poked++
		}
	}
	b.printf("   one update of the Secret: every Deployment's Refreshed Event within %.2f s; %d of %d pods carry a refresh annotation written after the update  [load %s -> %s]  target <= 10 s\n",
		last.Seconds(), poked, len(pods.Items), load, loadavg())
	b.printf("   verdicts (kwok runs no agent, so none can be verified): %v\n", verdicts)
	t, total = table(rotation, n)
	b.printf("   API requests of the rotation (until every verdict): %d\n%s", total, t)
	b.printf("   RSS after the rotation: %.1f MiB\n", float64(vmRSS(cmd.Process.Pid))/1024)
	if poked != n*b.o.Replicas {
		return fmt.Errorf("%d of %d pods poked after the update", poked, n*b.o.Replicas)
	}
	return nil
}

func sum(m map[string]int) int {
	t := 0
	for _, v := range m {
		t += v
	}
	return t
}

// baselines counts the Deployments that carry the watch's record.
func (b *bench) baselines(ctx context.Context) (int, error) {
	list, err := b.c.AppsV1().Deployments(namespace).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range list.Items {
		for k := range d.Annotations {
			if strings.HasPrefix(k, "k8secrets.io/rotated-") {
				n++
				break
			}
		}
	}
	return n, nil
}

// vmRSS is a process's resident set in KiB, from /proc.
func vmRSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb
			}
		}
	}
	return 0
}
