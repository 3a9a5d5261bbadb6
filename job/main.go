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
	"syscall"

	"github.com/k8secrets/k8secrets/internal/kube"
	"github.com/k8secrets/k8secrets/internal/version"
	"github.com/k8secrets/k8secrets/job/internal/config"
)

func main() {
	os.Exit(mainE())
}

func mainE() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cfg, err := config.Parse(os.Args[1:], os.LookupEnv, os.Stdout)
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

	// client-go's default 5 QPS would make the dry-run of a thousand
	// workloads take 200 s; the API server's priority and fairness is what
	// should bound a well-behaved client, not a client-side throttle.
	rc, ns, err := kube.Config(kube.Options{Kubeconfig: cfg.Kubeconfig, Context: cfg.Context, UserAgent: "k8secrets-job", QPS: 100, Burst: 200})
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

func newLogger(format string) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}
