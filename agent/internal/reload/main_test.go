package reload

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the app and as an unprivileged agent:
// RELOAD_TEST_HELPER selects the part.
func TestMain(m *testing.M) {
	switch os.Getenv("RELOAD_TEST_HELPER") {
	case "app":
		app()
	case "signal-pod":
		signalPod()
		os.Exit(0)
	case "signal":
		// An agent without root's right to signal anyone.
		err := (&Signal{Sig: syscall.SIGHUP, Target: Target{PIDFile: os.Getenv("PIDFILE")}}).Reload(context.Background())
		fmt.Print(err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// app counts the SIGHUPs it receives into $HUPS, one line each, and exits
// on SIGTERM unless IGNORE_TERM is set.
func app() {
	hups := os.Getenv("HUPS")
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, syscall.SIGHUP, syscall.SIGTERM)
	fmt.Println("ready")
	for sig := range ch {
		if sig == syscall.SIGTERM {
			if os.Getenv("IGNORE_TERM") != "" {
				continue
			}
			os.Exit(0)
		}
		f, err := os.OpenFile(hups, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintln(f, "hup")
			f.Close()
		}
	}
}

// testApp is a running app helper.
type testApp struct {
	cmd  *exec.Cmd
	hups string
	done chan struct{}
}

// startApp starts the test binary as an app, from a copy named name (so
// that its comm is name), optionally as another user.
func startApp(t *testing.T, name string, cred *syscall.Credential, env ...string) *testApp {
	t.Helper()
	dir := sharedDir(t)
	exe := filepath.Join(dir, name)
	if _, err := os.Stat(exe); err != nil {
		copyFile(t, mustExecutable(t), exe)
	}
	a := &testApp{hups: filepath.Join(dir, name+".hups"), done: make(chan struct{})}
	a.cmd = exec.Command(exe)
	// Under -race, a process lingers 1s at exit unless told otherwise.
	a.cmd.Env = append(os.Environ(), append(env, "GORACE=atexit_sleep_ms=0", "RELOAD_TEST_HELPER=app", "HUPS="+a.hups)...)
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := a.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(out, buf); err != nil {
		t.Fatalf("app did not start: %v", err)
	}
	go func() { _ = a.cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		_ = a.cmd.Process.Kill()
		<-a.done
	})
	return a
}

func (a *testApp) count() int {
	b, _ := os.ReadFile(a.hups)
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}

func (a *testApp) waitCount(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for a.count() < want {
		if time.Now().After(deadline) {
			t.Fatalf("app saw %d SIGHUPs; want %d", a.count(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sharedDir is a temporary directory other users may enter; the test is
// skipped if an ancestor of the temporary directory is closed to them.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		_ = os.Chmod(d, 0o755)
	}
	for d := os.TempDir(); ; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm()&0o001 == 0 {
			t.Skipf("%s is closed to other users; set TMPDIR", d)
		}
		if d == "/" {
			break
		}
	}
	return dir
}

func mustExecutable(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func writePIDFile(t *testing.T, dir string, pid int) string {
	t.Helper()
	p := filepath.Join(dir, "app.pid")
	if err := os.WriteFile(p, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
