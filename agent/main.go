// Command k8secrets-agent is the reload sidecar: it watches mounted Secret
// directories and reloads the app in place when their content changes.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/k8secrets/k8secrets/agent/internal/config"
	"github.com/k8secrets/k8secrets/agent/internal/reload"
	"github.com/k8secrets/k8secrets/internal/version"
	"github.com/k8secrets/k8secrets/internal/wellknown"
)

func main() {
	// One P unless GOMAXPROCS says otherwise. The agent's work is one short
	// chain per change (inotify, read, reload request), each step readying
	// the next goroutine: on one P the chain runs on one thread, where with
	// more the runtime wakes idle threads to steal it. make bench-agent,
	// alternating with the default, measured a p50 lower by about 0.1 ms
	// and a little less RSS (figures in agent/README.md).
	if _, set := os.LookupEnv("GOMAXPROCS"); !set {
		runtime.GOMAXPROCS(1)
	}
	os.Exit(mainCode(os.Args[1:]))
}

// mainCode is main without os.Exit: 0 on a clean stop, 2 on a bad
// configuration, 1 on any other error, and wellknown.RestartAllExitCode
// (87) only when restart-all asks the kubelet to restart the pod.
func mainCode(args []string) int {
	cfg, err := config.Load(args, os.Stdout)
	if errors.Is(err, config.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "k8secrets-agent: %v\n", err)
		return 2
	}
	if cfg.Version {
		fmt.Println(version.Version)
		return 0
	}
	logger := newLogger(cfg.LogFormat)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, logger); err != nil {
		if errors.Is(err, reload.ErrRestartAll) {
			// The one code the container's restartPolicyRules name.
			logger.Info("exiting so that the kubelet restarts every container of the pod", "reason", err.Error(), "exitCode", wellknown.RestartAllExitCode)
			return wellknown.RestartAllExitCode
		}
		logger.Error("k8secrets-agent failed", "err", err)
		return 1
	}
	return 0
}

func newLogger(format string) *slog.Logger {
	if format == "auto" {
		format = "json"
		if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			format = "text"
		}
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}
