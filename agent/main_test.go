package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/k8secrets/k8secrets/agent/internal/config"
	"github.com/k8secrets/k8secrets/agent/internal/kubelettest"
)

// The test binary doubles as the app and as the agent's binary:
// AGENT_TEST_HELPER selects the part.
func TestMain(m *testing.M) {
	switch os.Getenv("AGENT_TEST_HELPER") {
	case "app":
		app()
		return
	case "agent":
		os.Exit(mainCode(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// app logs to $APP_LOG what a real app would see: at start and on every
// SIGHUP, the content of $APP_SECRET as it reads it then. It exits 0 on
// SIGTERM.
func app() {
	logf := func(event string) {
		secret, _ := os.ReadFile(os.Getenv("APP_SECRET"))
		f, err := os.OpenFile(os.Getenv("APP_LOG"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			os.Exit(3)
		}
		fmt.Fprintf(f, "%s %d %s\n", event, os.Getpid(), secret)
		f.Close()
	}
	ch := make(chan os.Signal, 64)
	signal.Notify(ch, syscall.SIGHUP, syscall.SIGTERM)
	logf("start")
	for sig := range ch {
		if sig == syscall.SIGTERM {
			logf("term")
			os.Exit(0)
		}
		logf("hup")
	}
}

// secret is the test Secret's key; values are "s3cr3t-..." so that a test
// can check that they never reach a log.
const secretKey = "password"

func secretValue(s string) string { return "s3cr3t-" + s }

// testApp runs the app helper from a copy of the test binary named name, so
// that --process can find it and the agent does not take it for itself.
type testApp struct {
	exe, log, secret string
	mu               sync.Mutex
	cmd              *exec.Cmd
	done             chan struct{}
}

var (
	copyOnce sync.Once
	copyDir  string
	copyErr  error
)

func newApp(t *testing.T, name, secretDir string) *testApp {
	t.Helper()
	copyOnce.Do(func() {
		copyDir, copyErr = os.MkdirTemp("", "k8secrets-agent-test-")
		if copyErr != nil {
			return
		}
		var self []byte
		exe, _ := os.Executable()
		if self, copyErr = os.ReadFile(exe); copyErr == nil {
			copyErr = os.WriteFile(filepath.Join(copyDir, "app"), self, 0o755)
		}
	})
	if copyErr != nil {
		t.Fatal(copyErr)
	}
	exe := filepath.Join(t.TempDir(), name)
	// A hard link keeps the copy's inode (not the test binary's) and its
	// own name for comm.
	if err := os.Link(filepath.Join(copyDir, "app"), exe); err != nil {
		t.Fatal(err)
	}
	return &testApp{exe: exe, log: filepath.Join(t.TempDir(), "app.log"), secret: filepath.Join(secretDir, secretKey)}
}

// start starts the app and waits until it logged its start.
func (a *testApp) start(t *testing.T) {
	t.Helper()
	a.mu.Lock()
	cmd := exec.Command(a.exe)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "AGENT_TEST_HELPER=app", "APP_LOG="+a.log, "APP_SECRET="+a.secret)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	a.cmd, a.done = cmd, done
	a.mu.Unlock()
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	waitFor(t, "the app to start", func() bool { return a.has(fmt.Sprintf("start %d ", cmd.Process.Pid)) })
}

// stop ends the app with SIGTERM and waits for it.
func (a *testApp) stop(t *testing.T) {
	t.Helper()
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	<-done
}

func (a *testApp) lines() []string {
	b, _ := os.ReadFile(a.log)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func (a *testApp) has(prefix string) bool {
	for _, l := range a.lines() {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

// events returns the app's log lines of kind event ("hup", "start"), as
// "event content" without the PID.
func (a *testApp) events(event string) []string {
	var out []string
	for _, l := range a.lines() {
		f := strings.SplitN(l, " ", 3)
		if len(f) == 3 && f[0] == event {
			out = append(out, f[0]+" "+f[2])
		}
	}
	return out
}

// appServer is an app with a reload endpoint: it reads the Secret when
// called and answers 500 to the first fail calls.
type appServer struct {
	mu     sync.Mutex
	secret string
	fail   int
	seen   []string
	url    string
}

func newAppServer(t *testing.T, secretDir string) *appServer {
	t.Helper()
	s := &appServer{secret: filepath.Join(secretDir, secretKey)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := os.ReadFile(s.secret)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.seen = append(s.seen, string(b))
		if s.fail > 0 {
			s.fail--
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	t.Cleanup(srv.Close)
	s.url = srv.URL + "/-/reload"
	return s
}

func (s *appServer) calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

// syncBuffer collects the agent's logs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// agent is the agent running in the test process through serve.
type agent struct {
	addr string
	logs *syncBuffer
}

func testConfig(dirs ...string) config.Config {
	c := config.Default()
	c.Watch = dirs
	c.Listen = "127.0.0.1:0"
	c.RestartJitter = 0
	c.BackoffInitial = 50 * time.Millisecond
	c.BackoffMax = 200 * time.Millisecond
	return c
}

func startAgent(t *testing.T, cfg config.Config) *agent {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{addr: ln.Addr().String(), logs: &syncBuffer{}}
	logger := slog.New(slog.NewJSONHandler(a.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, logger, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve() = %v", err)
		}
		if strings.Contains(a.logs.String(), "s3cr3t") {
			t.Error("the agent's logs contain a Secret value")
		}
		if t.Failed() {
			t.Logf("agent logs:\n%s", a.logs)
		}
	})
	waitFor(t, "/readyz", func() bool { return a.get(t, "/readyz") == http.StatusOK })
	return a
}

func (a *agent) get(t *testing.T, path string) int {
	resp, err := http.Get("http://" + a.addr + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// metric returns a sample's value from /metrics (0 if absent).
func (a *agent) metric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + a.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newVolume(t *testing.T, dir string, payload map[string]string) *kubelettest.Writer {
	t.Helper()
	w, err := kubelettest.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if payload != nil {
		write(t, w, payload)
	}
	return w
}

func write(t *testing.T, w *kubelettest.Writer, payload map[string]string) {
	t.Helper()
	if err := w.WriteStrings(payload); err != nil {
		t.Fatal(err)
	}
}

func secretPayload(v string) map[string]string { return map[string]string{secretKey: secretValue(v)} }

// tlsPair returns a PEM certificate and key valid from notBefore to
// notAfter.
func tlsPair(t *testing.T, notBefore, notAfter time.Time) (crt, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "app"}, NotBefore: notBefore, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}))
}
