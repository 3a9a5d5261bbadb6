package reload

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxDrain is the most of a response body read to keep its connection.
const maxDrain = 64 << 10

// HTTP sends a request to the app's reload endpoint.
//
// It speaks the little HTTP/1.1 a reload needs (one request, the status,
// a body of known length to skip) rather than using net/http: its client
// and server with their HTTP/2 and proxy support were half of the agent's
// resident memory, for a call to one local endpoint (see package health).
// The connection is kept alive when the response allows it: a warm
// connection is what keeps a reload well under a millisecond.
type HTTP struct {
	URL     *url.URL
	Method  string
	Success func(code int) bool
	Timeout time.Duration

	mu   sync.Mutex
	conn net.Conn
	br   *bufio.Reader
}

// Kind implements Action.
func (h *HTTP) Kind() string { return "http" }

// Reload implements Action.
func (h *HTTP) Reload(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.Timeout)
		defer cancel()
	}
	reused := h.conn != nil
	code, err := h.do(ctx)
	if err != nil && reused && ctx.Err() == nil {
		// The app closed the idle connection (or restarted): once more
		// on a new one.
		code, err = h.do(ctx)
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("timed out after %s", h.Timeout)
		}
		return fmt.Errorf("%s %s: %w", h.Method, h.URL.Redacted(), err)
	}
	if !h.Success(code) {
		return fmt.Errorf("%s %s: status %d", h.Method, h.URL.Redacted(), code)
	}
	return nil
}

// Close closes the kept-alive connection, if any.
func (h *HTTP) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.drop()
}

func (h *HTTP) drop() {
	if h.conn != nil {
		h.conn.Close()
		h.conn, h.br = nil, nil
	}
}

func (h *HTTP) do(ctx context.Context) (code int, err error) {
	if h.conn == nil {
		if err := h.dial(ctx); err != nil {
			return 0, err
		}
	}
	conn := h.conn
	keep := false
	defer func() {
		if !keep {
			h.drop()
		}
	}()
	dl, _ := ctx.Deadline()
	_ = conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var req strings.Builder
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: k8secrets-agent\r\nContent-Length: 0\r\n", h.Method, h.URL.RequestURI(), h.URL.Host)
	if u := h.URL.User; u != nil {
		pass, _ := u.Password()
		fmt.Fprintf(&req, "Authorization: Basic %s\r\n", base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass)))
	}
	req.WriteString("\r\n")
	if _, err := io.WriteString(conn, req.String()); err != nil {
		return 0, err
	}

	tp := textproto.NewReader(h.br)
	line, err := tp.ReadLine()
	if err != nil {
		return 0, fmt.Errorf("read response: %w", err)
	}
	proto, rest, _ := strings.Cut(line, " ")
	codeText, _, _ := strings.Cut(rest, " ")
	code, err = strconv.Atoi(codeText)
	if !strings.HasPrefix(proto, "HTTP/1.") || err != nil || code < 100 || code > 999 {
		return 0, errors.New("malformed status line")
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		return 0, fmt.Errorf("read response headers: %w", err)
	}
	// Keep the connection only when the body's end is known and small;
	// otherwise the status is all that matters.
	length, lerr := strconv.ParseInt(hdr.Get("Content-Length"), 10, 64)
	switch {
	case code == 204 || code == 304 || code < 200:
		length, lerr = 0, nil
	case hdr.Get("Transfer-Encoding") != "":
		lerr = errors.New("chunked")
	}
	if lerr != nil || length > maxDrain || strings.EqualFold(hdr.Get("Connection"), "close") || proto == "HTTP/1.0" {
		return code, nil
	}
	if _, err := io.CopyN(io.Discard, h.br, length); err != nil {
		return code, nil
	}
	keep = true
	return code, nil
}

func (h *HTTP) dial(ctx context.Context) error {
	host := h.URL.Host
	if h.URL.Port() == "" {
		port := "80"
		if h.URL.Scheme == "https" {
			port = "443"
		}
		host = net.JoinHostPort(h.URL.Hostname(), port)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return err
	}
	if h.URL.Scheme == "https" {
		tc := tls.Client(conn, &tls.Config{ServerName: h.URL.Hostname(), MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return err
		}
		conn = tc
	}
	h.conn, h.br = conn, bufio.NewReaderSize(conn, 4096)
	return nil
}
