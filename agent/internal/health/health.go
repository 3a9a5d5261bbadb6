// Package health serves the agent's /healthz, /readyz and /metrics.
//
// It speaks just enough HTTP/1.1 for the kubelet's probes and a Prometheus
// scrape (GET or HEAD, one request per connection) instead of using
// net/http's server: net/http and the HTTP/2 and TLS code it brings were
// half of the agent's resident memory (measured with agent/cmd/bench: the
// agent idled at 8.4 MiB with it; the target is 8 MiB).
package health

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"time"
)

// Limits that keep a slow or hostile client from holding the agent.
const (
	readTimeout    = 5 * time.Second
	writeTimeout   = 10 * time.Second
	maxHeaderBytes = 8 << 10
	maxConns       = 16
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

// Serve answers on ln until ctx is done, then closes ln and waits for the
// requests in flight. It returns nil after ctx ends, or the accept error.
func Serve(ctx context.Context, ln net.Listener, c Checks) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	// On stop, cut the connections in flight too: the agent must exit
	// within a second of SIGTERM, whatever a slow client does.
	var mu sync.Mutex
	active := map[net.Conn]struct{}{}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for conn := range active {
			_ = conn.SetDeadline(time.Unix(1, 0))
		}
	})
	defer stop()
	sem := make(chan struct{}, maxConns)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		select {
		case sem <- struct{}{}:
		default:
			conn.Close() // busy: the client retries
			continue
		}
		mu.Lock()
		active[conn] = struct{}{}
		if ctx.Err() != nil {
			_ = conn.SetDeadline(time.Unix(1, 0))
		}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			deadline := func(read bool, d time.Duration) {
				mu.Lock()
				defer mu.Unlock()
				t := time.Now().Add(d)
				if ctx.Err() != nil {
					t = time.Unix(1, 0)
				}
				if read {
					_ = conn.SetReadDeadline(t)
				} else {
					_ = conn.SetWriteDeadline(t)
				}
			}
			serveConn(conn, c, deadline)
			mu.Lock()
			delete(active, conn)
			mu.Unlock()
		}()
	}
}

// serveConn answers one request; deadline sets the read or write deadline
// (to the past once the server stops).
func serveConn(conn net.Conn, c Checks, deadline func(read bool, d time.Duration)) {
	defer conn.Close()
	deadline(true, readTimeout)
	method, path, err := readRequest(bufio.NewReaderSize(io.LimitReader(conn, maxHeaderBytes), 1024))
	deadline(false, writeTimeout)
	if err != nil {
		respond(conn, "", 400, "text/plain", []byte("bad request\n"))
		return
	}
	if method != "GET" && method != "HEAD" {
		respond(conn, method, 405, "text/plain", []byte("method not allowed\n"))
		return
	}
	switch path {
	case "/healthz":
		status(conn, method, c.Alive(), "watcher not running")
	case "/readyz":
		status(conn, method, c.Ready(), "first scan not done")
	case "/metrics":
		var b bytes.Buffer
		c.Metrics(&b)
		respond(conn, method, 200, "text/plain; version=0.0.4; charset=utf-8", b.Bytes())
	default:
		respond(conn, method, 404, "text/plain", []byte("not found\n"))
	}
}

// readRequest reads the request line and the headers, and returns the
// method and the path without its query.
func readRequest(br *bufio.Reader) (method, path string, err error) {
	tp := textproto.NewReader(br)
	line, err := tp.ReadLine()
	if err != nil {
		return "", "", err
	}
	f := strings.Fields(line)
	if len(f) != 3 || !strings.HasPrefix(f[2], "HTTP/1.") || !strings.HasPrefix(f[1], "/") {
		return "", "", fmt.Errorf("malformed request line")
	}
	if _, err := tp.ReadMIMEHeader(); err != nil {
		return "", "", err
	}
	path, _, _ = strings.Cut(f[1], "?")
	return f[0], path, nil
}

func status(w io.Writer, method string, ok bool, why string) {
	if !ok {
		respond(w, method, 503, "text/plain", []byte(why+"\n"))
		return
	}
	respond(w, method, 200, "text/plain", []byte("ok\n"))
}

var reasons = map[int]string{200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}

func respond(w io.Writer, method string, code int, contentType string, body []byte) {
	bw := bufio.NewWriterSize(w, 4096)
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n", code, reasons[code], contentType, len(body))
	if code == 405 {
		bw.WriteString("Allow: GET, HEAD\r\n")
	}
	bw.WriteString("\r\n")
	if method != "HEAD" {
		bw.Write(body)
	}
	_ = bw.Flush()
}
