// Package health serves the agent's /healthz, /readyz, /metrics and /status
// with the standard library's HTTP server.
//
// The server has no connection limit: a limit is what let 16 idle
// connections from any pod make /healthz fail (issue 10), and the kubelet
// then restarted the agent. Slow or idle clients are bounded by the
// server's own timeouts instead, so each costs a goroutine for a few
// seconds at most.
package health

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"time"
)

// Limits that keep a slow or idle client from holding the agent for long.
const (
	// readHeaderTimeout bounds a client that connects and sends nothing
	// (or its headers a byte at a time). The kubelet's probes send their
	// request at once; 5s is far above what a loaded node needs.
	readHeaderTimeout = 5 * time.Second
	// readTimeout also covers a request body, which no endpoint wants.
	readTimeout = 10 * time.Second
	// writeTimeout bounds a client that does not read its response.
	writeTimeout = 10 * time.Second
	// idleTimeout closes a kept-alive connection between requests: a
	// Prometheus scrape every 15-60s reconnects cheaply.
	idleTimeout = 30 * time.Second
	// maxHeaderBytes is enough for any probe or scrape.
	maxHeaderBytes = 8 << 10
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
	// Status, when set, is the document of GET /status, served as JSON
	// (what the app has loaded; see agent/README.md). Unset: 404.
	Status func() any
}

// Handler serves the endpoints (GET and HEAD).
func Handler(c Checks) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		status(w, c.Alive(), "watcher not running")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		status(w, c.Ready(), "first scan not done")
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		var b bytes.Buffer
		c.Metrics(&b)
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_, _ = w.Write(b.Bytes())
	})
	if c.Status != nil {
		mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
			b, err := json.Marshal(c.Status())
			if err != nil {
				http.Error(w, "encode status: "+err.Error(), http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(append(b, '\n'))
		})
	}
	return mux
}

// Serve answers on ln until ctx is done, then closes ln and every
// connection. It returns nil after ctx ends, or the accept error.
func Serve(ctx context.Context, ln net.Listener, c Checks) error {
	srv := &http.Server{
		Handler:           Handler(c),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// The server's own log lines (a TLS probe, a bad request) say
		// nothing an operator can act on.
		ErrorLog:    log.New(io.Discard, "", 0),
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	// Close, not Shutdown: the agent must exit within a second of
	// SIGTERM, whatever a slow client does; the endpoints hold no state
	// that a cut response would lose.
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	defer stop()
	err := srv.Serve(ln)
	if ctx.Err() != nil && errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func status(w http.ResponseWriter, ok bool, why string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, why+"\n")
		return
	}
	_, _ = io.WriteString(w, "ok\n")
}
