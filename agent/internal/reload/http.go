package reload

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"sync"
	"time"
)

// maxDrain is the most of a response body read to keep its connection.
const maxDrain = 64 << 10

// HTTP sends a request to the app's reload endpoint with the standard
// library's client. The connection is kept alive between reloads (a warm
// connection keeps a reload well under a millisecond); redirects are not
// followed (their status is judged like any other) and no proxy from the
// environment is used: the endpoint is the app's own, usually on localhost.
type HTTP struct {
	URL     *url.URL
	Method  string
	Success func(code int) bool
	Timeout time.Duration
	// CAFile, when set, is a PEM bundle of the certificate authorities
	// trusted for an https URL, added to the system pool (empty in the
	// FROM-scratch image). It is read again before each reload, so a
	// rotated CA (a mounted ConfigMap or Secret) needs no restart.
	CAFile string

	mu     sync.Mutex
	client *http.Client
	ca     []byte // content of CAFile the client was built with
}

// Kind implements Action.
func (h *HTTP) Kind() string { return "http" }

// Reload implements Action.
func (h *HTTP) Reload(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.setup(); err != nil {
		return fmt.Errorf("%s %s: %w", h.Method, Redact(h.URL), err)
	}
	if h.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.Timeout)
		defer cancel()
	}
	code, reused, err := h.do(ctx)
	if err != nil && reused && ctx.Err() == nil {
		// The app closed the kept-alive connection as the request went
		// out (or restarted): once more on a new one.
		code, _, err = h.do(ctx)
	}
	if err != nil {
		// The client's *url.Error quotes the whole URL, tokens included.
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("timed out after %s", h.Timeout)
		}
		return fmt.Errorf("%s %s: %w", h.Method, Redact(h.URL), err)
	}
	if !h.Success(code) {
		return fmt.Errorf("%s %s: status %d", h.Method, Redact(h.URL), code)
	}
	return nil
}

// Close closes the kept-alive connection, if any.
func (h *HTTP) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.client != nil {
		h.client.CloseIdleConnections()
	}
}

// setup builds the client, again when the CA file's content changed.
func (h *HTTP) setup() error {
	var ca []byte
	if h.CAFile != "" {
		b, err := os.ReadFile(h.CAFile)
		if err != nil {
			return fmt.Errorf("read --http-ca-file: %w", err)
		}
		ca = b
	}
	if h.client != nil && bytes.Equal(ca, h.ca) {
		return nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if h.CAFile != "" {
		pool, err := CAPool(ca)
		if err != nil {
			return fmt.Errorf("--http-ca-file %s: %w", h.CAFile, err)
		}
		tc.RootCAs = pool
	}
	if h.client != nil {
		h.client.CloseIdleConnections()
	}
	h.ca = ca
	h.client = &http.Client{
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:     tc,
			TLSHandshakeTimeout: 10 * time.Second,
			MaxIdleConns:        1,
			MaxIdleConnsPerHost: 1,
			// The app may close an idle connection first; a minute is
			// longer than most reload intervals of a burst.
			IdleConnTimeout:    time.Minute,
			DisableCompression: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return nil
}

// CAPool is the system pool (empty where the image has none) with the
// certificates of the PEM bundle added.
func CAPool(pemData []byte) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, errors.New("no PEM certificate found")
	}
	return pool, nil
}

// do sends one request and reads the status; it reports whether the
// connection was a kept-alive one. The body is read (up to maxDrain) only
// so that the connection can be kept.
func (h *HTTP) do(ctx context.Context) (code int, reused bool, err error) {
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), h.Method, h.URL.String(), http.NoBody)
	if err != nil {
		return 0, false, err
	}
	req.Header.Set("User-Agent", "k8secrets-agent")
	resp, err := h.client.Do(req)
	if err != nil {
		return 0, reused, err
	}
	_, _ = io.CopyN(io.Discard, resp.Body, maxDrain)
	resp.Body.Close()
	return resp.StatusCode, reused, nil
}

// Redact returns u for a log line or an error: its password and the values
// of its query (where reload endpoints take tokens, e.g. ?token=) replaced
// by "xxxxx".
func Redact(u *url.URL) string {
	if u == nil {
		return ""
	}
	c := *u
	if c.RawQuery != "" {
		q := c.Query()
		for k, vs := range q {
			for i := range vs {
				vs[i] = "xxxxx"
			}
			q[k] = vs
		}
		c.RawQuery = q.Encode()
	}
	c.Fragment, c.RawFragment = "", ""
	return c.Redacted()
}
