package reload

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestSignalByName(t *testing.T) {
	a := startApp(t, "sighup-app", nil)
	s := &Signal{Sig: syscall.SIGHUP, Target: Target{Name: "sighup-app"}}
	if err := s.Reload(context.Background()); err != nil {
		t.Fatalf("Reload() = %v", err)
	}
	a.waitCount(t, 1)
}

func TestSignalByPIDFile(t *testing.T) {
	a := startApp(t, "pidfile-app", nil)
	s := &Signal{Sig: syscall.SIGHUP, Target: Target{PIDFile: writePIDFile(t, t.TempDir(), a.cmd.Process.Pid)}}
	if err := s.Reload(context.Background()); err != nil {
		t.Fatalf("Reload() = %v", err)
	}
	a.waitCount(t, 1)
}

func TestSignalMissingProcess(t *testing.T) {
	s := &Signal{Sig: syscall.SIGHUP, Target: Target{Name: "no-such-app"}}
	if err := s.Reload(context.Background()); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("Reload() = %v; want ErrNoProcess", err)
	}
	s = &Signal{Sig: syscall.SIGHUP, Target: Target{PIDFile: filepath.Join(t.TempDir(), "missing.pid")}}
	if err := s.Reload(context.Background()); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("Reload() = %v; want ErrNoProcess", err)
	}
}

// TestSignalEPERM runs the app as nobody (65534) and the signalling agent as
// another unprivileged user: the agent gets EPERM and says what to do.
func TestSignalEPERM(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the app and the agent as two other users")
	}
	app := startApp(t, "eperm-app", &syscall.Credential{Uid: 65534, Gid: 65534})
	dir := sharedDir(t)
	pidfile := writePIDFile(t, dir, app.cmd.Process.Pid)
	agent := filepath.Join(dir, "agent")
	copyFile(t, mustExecutable(t), agent)
	cmd := exec.Command(agent)
	cmd.Env = append(os.Environ(), "RELOAD_TEST_HELPER=signal", "PIDFILE="+pidfile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65533, Gid: 65533}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("agent helper: %v", err)
	}
	msg := string(out)
	for _, want := range []string{"operation not permitted", "run the agent as the app's user (runAsUser) or give it CAP_KILL"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error = %q; want it to contain %q", msg, want)
		}
	}
	if app.count() != 0 {
		t.Error("app received a SIGHUP")
	}
}

func TestRestart(t *testing.T) {
	tests := []struct {
		name       string
		ignoreTerm bool
	}{
		{"exits on SIGTERM", false},
		{"killed after the grace period", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var env []string
			if tt.ignoreTerm {
				env = append(env, "IGNORE_TERM=1")
			}
			a := startApp(t, "restart-app", nil, env...)
			r := &Restart{Target: Target{Name: "restart-app"}, Grace: 300 * time.Millisecond}
			start := time.Now()
			if err := r.Reload(context.Background()); err != nil {
				t.Fatalf("Reload() = %v", err)
			}
			select {
			case <-a.done:
			case <-time.After(5 * time.Second):
				t.Fatal("app still running")
			}
			ws := a.cmd.ProcessState.Sys().(syscall.WaitStatus)
			if tt.ignoreTerm {
				if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
					t.Errorf("app ended with %v; want SIGKILL", ws)
				}
				if time.Since(start) < r.Grace {
					t.Errorf("SIGKILL before the grace period")
				}
			} else if ws.ExitStatus() != 0 {
				t.Errorf("app ended with %v; want exit 0 on SIGTERM", ws)
			}
		})
	}
}

func TestHTTP(t *testing.T) {
	var mu sync.Mutex
	hits, conns := 0, 0
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		n := hits
		mu.Unlock()
		if r.Method != http.MethodPost || r.URL.RequestURI() != "/-/reload?x=1" {
			t.Errorf("request %s %s; want POST /-/reload?x=1", r.Method, r.URL.RequestURI())
		}
		if u, p, _ := r.BasicAuth(); u != "admin" || p != "hunter2" {
			t.Errorf("basic auth %q %q; want the URL's", u, p)
		}
		switch n {
		case 1:
			w.WriteHeader(http.StatusInternalServerError)
		case 3:
			// A chunked body: the agent reads the status and closes.
			w.Write([]byte("reloaded"))
			w.(http.Flusher).Flush()
			w.Write([]byte(" all"))
		case 5:
			time.Sleep(300 * time.Millisecond)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns++
			mu.Unlock()
		}
	}
	srv.Start()
	defer srv.Close()
	u, _ := url.Parse(srv.URL + "/-/reload?x=1")
	u.User = url.UserPassword("admin", "hunter2")
	h := &HTTP{URL: u, Method: http.MethodPost, Success: func(c int) bool { return c/100 == 2 }, Timeout: 100 * time.Millisecond}
	defer h.Close()

	err := h.Reload(context.Background())
	if err == nil || !strings.Contains(err.Error(), "status 500") {
		t.Fatalf("first Reload() = %v; want status 500", err)
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error %q shows the password", err)
	}
	for i := 2; i <= 4; i++ {
		if err := h.Reload(context.Background()); err != nil {
			t.Fatalf("Reload() #%d = %v", i, err)
		}
	}
	mu.Lock()
	if conns != 1 {
		t.Errorf("%d connections for 4 reloads; want 1 (kept alive, a short chunked body included)", conns)
	}
	mu.Unlock()
	// The app drops idle connections: the next reload redials.
	srv.CloseClientConnections()
	if err := h.Reload(context.Background()); err == nil || !strings.Contains(err.Error(), "timed out after 100ms") {
		t.Fatalf("slow Reload() = %v; want a timeout", err)
	}
	if err := h.Reload(context.Background()); err != nil {
		t.Fatalf("Reload() after the timeout = %v", err)
	}
}

func TestExec(t *testing.T) {
	out := filepath.Join(t.TempDir(), "ran")
	e := &Exec{Args: []string{"/bin/sh", "-c", "echo ran > " + out}, Timeout: 5 * time.Second}
	if err := e.Reload(context.Background()); err != nil {
		t.Fatalf("Reload() = %v", err)
	}
	if _, err := os.Stat(out); err != nil {
		t.Errorf("command did not run: %v", err)
	}
	e = &Exec{Args: []string{"/bin/false"}, Timeout: 5 * time.Second}
	if err := e.Reload(context.Background()); err == nil {
		t.Error("Reload(false) = nil; want an error")
	}
}

// TestRestartGateAfterJitter: content refused while the restart waits out
// its jitter is never what a restarted app reads: the app is not ended, and
// the runner drops the reload without counting a failure or retrying.
func TestRestartGateAfterJitter(t *testing.T) {
	a := startApp(t, "gated-app", nil)
	var refused atomic.Bool
	var asked atomic.Int32
	gate := func() error {
		asked.Add(1)
		if refused.Load() {
			return errors.New("tls.crt: certificate expired")
		}
		return nil
	}
	r := &Restart{Target: Target{Name: "gated-app"}, Grace: 300 * time.Millisecond, Jitter: 200 * time.Millisecond, Gate: gate}
	// The runner's gate passes; the content is refused during the jitter.
	runner := startRunner(t, RunnerOptions{Actions: []Action{r}, BackoffInitial: 50 * time.Millisecond,
		Gate: func() error { refused.Store(true); return nil }})
	runner.Notify()
	waitFor(t, "the gate after the jitter", func() bool { return asked.Load() == 1 })
	// A SIGTERM would follow the gate at once; a retry within the backoff.
	time.Sleep(300 * time.Millisecond)
	select {
	case <-a.done:
		t.Fatal("the app was restarted into refused content")
	default:
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("the gate was asked %d times; want 1 (a refused reload is dropped, not retried)", n)
	}
	if err := r.Reload(context.Background()); !errors.Is(err, ErrRefused) {
		t.Errorf("Reload() = %v; want ErrRefused", err)
	}
}

// TestSignalSparesYoungProcess: a process started after the change has
// read the new content: it gets no signal (a SIGHUP before its handler is
// installed would kill it), and that is success.
func TestSignalSparesYoungProcess(t *testing.T) {
	changed := time.Now()
	time.Sleep(25 * time.Millisecond) // two ticks of /proc's start times
	a := startApp(t, "young-app", nil)
	s := &Signal{Sig: syscall.SIGHUP, Target: Target{Name: "young-app", Changed: func() time.Time { return changed }}}
	if err := s.Reload(context.Background()); err != nil {
		t.Fatalf("Reload() = %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if n := a.count(); n != 0 {
		t.Errorf("app started after the change got %d SIGHUPs; want 0", n)
	}
	s.Target.Changed = func() time.Time { return time.Now() }
	if err := s.Reload(context.Background()); err != nil {
		t.Fatalf("Reload() = %v", err)
	}
	a.waitCount(t, 1)
}

// With Up, a restart succeeds once the ended process runs again (started
// after the end), and fails if it does not within Up: what the agent
// reports loaded is an app that runs, not one in the kubelet's backoff.
func TestRestartWaitsForTheAppToRunAgain(t *testing.T) {
	a := startApp(t, "up-app", nil)
	r := &Restart{Target: Target{Name: "up-app"}, Grace: 300 * time.Millisecond, Up: 5 * time.Second}
	var starting atomic.Bool // set before the new process exists
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-a.done
		time.Sleep(300 * time.Millisecond) // the kubelet's backoff
		starting.Store(true)
		startApp(t, "up-app", nil)
	}()
	start := time.Now()
	if err := r.Reload(context.Background()); err != nil {
		t.Fatalf("Reload() = %v; want success once the app runs again", err)
	}
	if !starting.Load() {
		t.Fatalf("Reload() returned after %v, before the app ran again", time.Since(start))
	}
	<-done

	r.Up = 300 * time.Millisecond
	if err := r.Reload(context.Background()); err == nil || !strings.Contains(err.Error(), "0 of 1 ended processes running again") {
		t.Fatalf("Reload() = %v; want an error: the app did not run again within Up", err)
	}
}
