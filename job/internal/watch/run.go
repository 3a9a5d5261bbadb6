package watch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// ErrLost: this replica lost its lease (renewals failed for the renew
// deadline, or another took it over); it stopped rotating and exits 1, so
// its pod restarts and stands by.
var ErrLost = errors.New("lost the watch's lease")

// Election timings: client-go's usual ones. A standby takes over at most
// LeaseDuration after a leader died without releasing; a leader stopped by
// SIGTERM releases the lease, and a standby takes over within RetryPeriod.
const (
	LeaseDuration = 15 * time.Second
	RenewDeadline = 10 * time.Second
	RetryPeriod   = 2 * time.Second
)

// Election names the Lease that makes one replica of several act.
type Election struct {
	Namespace, Name string
	// Identity of this replica (the pod name).
	Identity string
}

// Serve holds the HTTP endpoints' state: /healthz, /readyz, /metrics.
type Serve struct {
	Metrics *Metrics
	ready   atomic.Bool
}

// Handler serves /healthz (the process answers), /readyz (a standby
// waiting for the lease, or the leader once its informers have synced) and
// /metrics.
func (s *Serve) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "informers not synced\n", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		s.Metrics.WritePrometheus(w)
	})
	return mux
}

// Run serves the endpoints on listen (none if empty), takes part in the
// election, and runs the controller while it leads. It returns nil when ctx
// ends (after the controller has stopped and the lease is released) and
// ErrLost when the lease was lost.
func Run(ctx context.Context, client kubernetes.Interface, e Election, listen string, o Options) error {
	if o.Metrics == nil {
		o.Metrics = NewMetrics()
	}
	log := o.Log
	srv := &Serve{Metrics: o.Metrics}
	srv.ready.Store(true) // a standby is ready: it serves its purpose by waiting
	if listen != "" {
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return fmt.Errorf("listen on %s: %w; choose another --listen address", listen, err)
		}
		hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = hs.Serve(ln) }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = hs.Shutdown(sctx)
		}()
	}

	// The elector's context outlives ctx until the controller has stopped:
	// the lease is released only once nothing more is written.
	ectx, stopElector := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElector()
	var mu sync.Mutex
	var workDone chan struct{}
	var runErr error
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: e.Namespace, Name: e.Name},
			Client:     client.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: e.Identity},
		},
		Name:            e.Name,
		LeaseDuration:   LeaseDuration,
		RenewDeadline:   RenewDeadline,
		RetryPeriod:     RetryPeriod,
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) {
				done := make(chan struct{})
				mu.Lock()
				workDone = done
				mu.Unlock()
				defer close(done)
				log.Info("leading", "lease", e.Namespace+"/"+e.Name, "identity", e.Identity)
				o.Metrics.leader(true)
				defer o.Metrics.leader(false)
				wctx, cancel := context.WithCancel(lctx)
				defer cancel()
				stop := context.AfterFunc(ctx, cancel)
				defer stop()
				srv.ready.Store(false)
				err := New(client, o).Run(wctx, func() { srv.ready.Store(true) })
				mu.Lock()
				runErr = err
				mu.Unlock()
			},
			OnStoppedLeading: func() {},
			OnNewLeader: func(id string) {
				if id != e.Identity {
					log.Info("standing by", "leader", id, "lease", e.Namespace+"/"+e.Name)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("lease %s/%s: %w", e.Namespace, e.Name, err)
	}
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		le.Run(ectx)
	}()
	waitWork := func() {
		mu.Lock()
		done := workDone
		mu.Unlock()
		if done != nil {
			<-done
		}
	}
	select {
	case <-ctx.Done():
		// SIGTERM: stop rotating (a rotation cut short is not recorded),
		// then release the lease so a standby takes over at once.
		waitWork()
		stopElector()
		<-ran
		logRelease(client, e, log)
		return nil
	case <-ran:
		waitWork()
		mu.Lock()
		defer mu.Unlock()
		if runErr != nil {
			return runErr
		}
		return fmt.Errorf("%w %s/%s: renewals failed or another replica took it over; restart to stand by", ErrLost, e.Namespace, e.Name)
	}
}

// logRelease says whether the lease was released on the way out: the
// elector's release is an update that can be refused (a Role deleted
// before its pods, as helm uninstall does), and then the lease names this
// replica until it expires.
func logRelease(client kubernetes.Interface, e Election, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := client.CoordinationV1().Leases(e.Namespace).Get(ctx, e.Name, metav1.GetOptions{})
	switch {
	case err != nil:
		log.Warn("stopped; cannot read the lease to confirm its release", "lease", e.Namespace+"/"+e.Name, "error", err)
	case l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == e.Identity:
		log.Warn("stopped; the lease was not released: a standby takes over when it expires", "lease", e.Namespace+"/"+e.Name, "expiresIn", LeaseDuration)
	default:
		log.Info("stopped; lease released", "lease", e.Namespace+"/"+e.Name)
	}
}
