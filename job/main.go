// Command k8secrets-job mounts an existing Secret into the workloads behind a
// label selector, adds the k8secrets reload agent, and rolls them out safely.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/k8secrets/k8secrets/internal/kube"
	"github.com/k8secrets/k8secrets/internal/version"
	"github.com/k8secrets/k8secrets/job/internal/config"
	"github.com/k8secrets/k8secrets/job/internal/lock"
)

func main() {
	os.Exit(mainE())
}

func mainE() int {
	// The first SIGINT or SIGTERM cancels ctx: no new write starts, a
	// rollout being waited for is left to a rerun, and a rollback already
	// started finishes (the Job's pod has terminationGracePeriodSeconds for
	// it). A second one ends the process at once, saying what is left.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)

	// The same binary is the kubectl plugin `kubectl k8secrets` when
	// installed as kubectl-k8secrets.
	name, args := config.Invoked(os.Args)
	cfg, err := config.ParseAs(name, args, os.LookupEnv, os.Stdout)
	if errors.Is(err, config.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return exitCode(err)
	}
	if cfg.Command == config.Version {
		fmt.Println(version.Version)
		return 0
	}
	log := newLogger(cfg.LogFormat)
	kube.RouteKlog(log)
	go onSignals(sigs, cancel, log)

	// The client-side rate limit is the command's (config.DefaultQPS,
	// config.WatchQPS: why those) unless --kube-api-qps and
	// --kube-api-burst say otherwise.
	rc, ns, err := kube.Config(kube.Options{Kubeconfig: cfg.Kubeconfig, Context: cfg.Context, Cluster: cfg.Cluster, User: cfg.User, UserAgent: "k8secrets-job",
		QPS: cfg.KubeAPIQPS, Burst: cfg.KubeAPIBurst})
	if err != nil {
		log.Error(err.Error())
		return 1
	}
	client, err := kube.Client(rc)
	if err != nil {
		log.Error(err.Error())
		return 1
	}
	report, err := run(ctx, cfg, client, ns, log)
	if werr := report.Write(os.Stdout, cfg.Output); werr != nil {
		log.Error("write report", "error", werr)
	}
	if err != nil {
		log.Error(err.Error(), "exitCode", exitCode(err))
	}
	return exitCode(err)
}

// onSignals handles SIGINT and SIGTERM: the first stops the run gently, the
// second exits at once with 1, naming what is left half-done.
func onSignals(sigs <-chan os.Signal, cancel context.CancelCauseFunc, log *slog.Logger) {
	s := <-sigs
	log.Warn("interrupted: stopping; a rollback already started is finished first; signal again to exit at once", "signal", s.String())
	cancel(fmt.Errorf("interrupted by %s", s))
	s = <-sigs
	left := inFlight()
	if len(left) == 0 {
		left = []string{"nothing in flight"}
	}
	log.Error("interrupted twice: exiting now; rerun the same command to converge once the lease has expired",
		"signal", s.String(), "exitCode", 1, "halfDone", strings.Join(left, "; "), "leaseExpiresAfter", lock.Duration.String())
	os.Exit(1)
}

func newLogger(format string) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}
