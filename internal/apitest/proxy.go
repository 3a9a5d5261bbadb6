package apitest

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
)

// CutProxy forwards TCP connections to an API server until Cut: then it
// closes every connection and refuses new ones, as an unreachable API
// server would, until Resume listens again on the same address. TLS passes
// through untouched; the serving certificate names 127.0.0.1, where the
// proxy listens, so clients still verify it.
type CutProxy struct {
	addr   string
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
	cut    bool
}

// NewCutProxy starts a proxy to the API server at host (a URL such as
// rest.Config.Host); it is cut at the end of the test.
func NewCutProxy(tb testing.TB, host string) *CutProxy {
	tb.Helper()
	u, err := url.Parse(host)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &CutProxy{addr: ln.Addr().String(), target: u.Host, ln: ln}
	go p.serve(ln)
	tb.Cleanup(p.Cut)
	return p
}

// Addr is where the proxy listens (host:port).
func (p *CutProxy) Addr() string { return p.addr }

// URL is the API server's URL through the proxy.
func (p *CutProxy) URL() string { return "https://" + p.addr }

func (p *CutProxy) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(up, c); up.Close() }()
		go func() { _, _ = io.Copy(c, up); c.Close() }()
	}
}

// Cut closes the listener and every forwarded connection.
func (p *CutProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	p.ln.Close()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// Resume listens again on the same address.
func (p *CutProxy) Resume(tb testing.TB) {
	tb.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		tb.Fatalf("listen again on %s: %v", p.addr, err)
	}
	p.mu.Lock()
	p.ln, p.cut = ln, false
	p.mu.Unlock()
	go p.serve(ln)
}
