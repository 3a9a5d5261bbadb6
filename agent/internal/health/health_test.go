package health

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestServe(t *testing.T) {
	var alive, ready atomic.Bool
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ln, Checks{Alive: alive.Load, Ready: ready.Load, Metrics: func(w io.Writer) {
			fmt.Fprintln(w, "k8secrets_agent_resyncs_total 3")
		}})
	}()
	base := "http://" + ln.Addr().String()
	get := func(method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	tests := []struct {
		name         string
		alive, ready bool
		method, path string
		code         int
		body         string
	}{
		{"dead watcher", false, true, "GET", "/healthz", 503, "watcher not running"},
		{"alive", true, false, "GET", "/healthz", 200, "ok"},
		{"not ready", true, false, "GET", "/readyz", 503, "first scan not done"},
		{"ready", true, true, "GET", "/readyz?verbose", 200, "ok"},
		{"head", true, true, "HEAD", "/healthz", 200, ""},
		{"metrics", true, true, "GET", "/metrics", 200, "k8secrets_agent_resyncs_total 3"},
		{"unknown path", true, true, "GET", "/", 404, "not found"},
		{"post", true, true, "POST", "/healthz", 405, "Method Not Allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			alive.Store(tt.alive)
			ready.Store(tt.ready)
			code, body := get(tt.method, tt.path)
			if code != tt.code || !strings.Contains(body, tt.body) {
				t.Errorf("%s %s = %d %q; want %d %q", tt.method, tt.path, code, body, tt.code, tt.body)
			}
		})
	}

	// A malformed request gets a 400, not a hang.
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(conn, "nonsense\r\n\r\n")
	b, _ := io.ReadAll(conn)
	conn.Close()
	if !strings.HasPrefix(string(b), "HTTP/1.1 400 ") {
		t.Errorf("malformed request answered %q; want 400", b)
	}

	// Idle connections from anyone do not starve the probes: with 64 of
	// them open, /healthz still answers (the hand-written server of
	// before refused every connection beyond 16).
	var idles []net.Conn
	for range 64 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		idles = append(idles, c)
	}
	time.Sleep(50 * time.Millisecond) // let the server accept them all
	alive.Store(true)
	if code, body := get("GET", "/healthz"); code != 200 {
		t.Errorf("GET /healthz with 64 idle connections open = %d %q; want 200", code, body)
	}
	for _, c := range idles {
		c.Close()
	}

	// A client that never sends its request does not delay the stop.
	idle, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve() = %v; want nil after cancel", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Serve() took %v to stop with an idle client; want at once", d)
	}
}

// TestStatus: GET /status serves the document as JSON when set; an agent
// without it (older than /status) answers 404, which the Job reports as
// "unknown".
func TestStatus(t *testing.T) {
	type dir struct {
		Path, Loaded, State string
	}
	doc := struct {
		Keyed       bool  `json:"keyed"`
		Directories []dir `json:"directories"`
	}{true, []dir{{"/var/run/secrets/k8secrets/app", strings.Repeat("ab", 32), "failed"}}}
	tests := []struct {
		name   string
		status func() any
		code   int
		body   string
		ctype  string
	}{
		{"served", func() any { return doc }, 200, `{"keyed":true,"directories":[{"Path":"/var/run/secrets/k8secrets/app","Loaded":"` + strings.Repeat("ab", 32) + `","State":"failed"}]}` + "\n", "application/json"},
		{"not served", nil, 404, "404 page not found\n", "text/plain; charset=utf-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- Serve(ctx, ln, Checks{Alive: func() bool { return true }, Ready: func() bool { return true }, Metrics: func(io.Writer) {}, Status: tt.status})
			}()
			defer func() { cancel(); <-done }()
			resp, err := http.Get("http://" + ln.Addr().String() + "/status")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.code || string(b) != tt.body || resp.Header.Get("Content-Type") != tt.ctype {
				t.Errorf("GET /status = %d %s %q; want %d %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), b, tt.code, tt.ctype, tt.body)
			}
		})
	}
}
