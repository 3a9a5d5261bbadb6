// Package health serves the agent's /healthz, /readyz and /metrics.
package health

import (
	"io"
	"net/http"
)

// Checks are what the endpoints report.
type Checks struct {
	// Alive is false when the watcher or the reloader is dead: /healthz
	// then fails so that the kubelet restarts the agent.
	Alive func() bool
	// Ready is true once the baseline digests exist.
	Ready func() bool
	// Metrics writes the Prometheus text format.
	Metrics func(io.Writer)
}

// Handler returns the mux of the three endpoints.
func Handler(c Checks) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		status(w, c.Alive(), "watcher not running")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		status(w, c.Ready(), "first scan not done")
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		c.Metrics(w)
	})
	return mux
}

func status(w http.ResponseWriter, ok bool, why string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, why+"\n")
		return
	}
	io.WriteString(w, "ok\n")
}
