package config

import (
	"fmt"
	"math"

	"github.com/spf13/pflag"
)

// Client-side rate limits of the API client, per command (client-go's
// token bucket: QPS requests a second on average, Burst at once). They are
// a client's courtesy, not the API server's protection: API Priority and
// Fairness queues each client's requests in its priority level and
// answers 429 (which client-go retries after Retry-After) when that level
// is full, so a generous client cannot starve the others. client-go's own
// default of 5 QPS would make the dry-run of a thousand workloads take
// 200 s.
const (
	// DefaultQPS and DefaultBurst: inject, remove, status, refresh.
	DefaultQPS   = 100
	DefaultBurst = 200
	// WatchQPS and WatchBurst: the watch. One update of a Secret mounted
	// by 1,000 pods in 100 workloads is about 1,500 requests (a patch per
	// pod, then per workload two pod lists, two Events and a record): at
	// 100 a second the client's own limiter made it last 14.5 s on kwok
	// (README); with these it is bound by the API server instead.
	WatchQPS   = 500
	WatchBurst = 1000
)

// apiFlags are --kube-api-qps and --kube-api-burst (the names of
// kube-controller-manager's and kube-scheduler's), with the command's
// defaults.
func apiFlags(fs *pflag.FlagSet, command string) {
	qps, burst := float32(DefaultQPS), DefaultBurst
	if command == WatchCommand {
		qps, burst = WatchQPS, WatchBurst
	}
	fs.Float32("kube-api-qps", qps, "requests a second this client sends to the API server on average (client-side limit; the API server's priority and fairness protects it regardless)")
	fs.Int("kube-api-burst", burst, "requests this client may send at once above --kube-api-qps")
}

func (c Config) validateAPI() []error {
	if c.Command == Version {
		return nil
	}
	var errs []error
	// NaN and infinities parse as float32; neither is a rate.
	if q := float64(c.KubeAPIQPS); !(q > 0) || math.IsInf(q, 0) {
		errs = append(errs, fmt.Errorf("%w: --kube-api-qps %v: must be a positive number", ErrInvalid, c.KubeAPIQPS))
	}
	if c.KubeAPIBurst < 1 {
		errs = append(errs, fmt.Errorf("%w: --kube-api-burst %d: must be 1 or more", ErrInvalid, c.KubeAPIBurst))
	}
	return errs
}
