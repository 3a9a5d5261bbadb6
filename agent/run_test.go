package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/k8secrets/k8secrets/agent/internal/kubelettest"
)

// quiet is how long a test waits to be sure nothing more happens.
const quiet = 400 * time.Millisecond

func TestSignalOnUpdate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	vol := newVolume(t, dir, secretPayload("one"))
	app := newApp(t, "hup-app", dir)
	app.start(t)
	cfg := testConfig(dir)
	cfg.Reload = []string{"signal:SIGHUP"}
	cfg.Process = "hup-app"
	a := startAgent(t, cfg)

	time.Sleep(quiet)
	if got := app.events("hup"); len(got) != 0 {
		t.Fatalf("app got %q at the agent's start; want no reload", got)
	}
	write(t, vol, secretPayload("two"))
	waitFor(t, "the SIGHUP", func() bool { return len(app.events("hup")) == 1 })
	time.Sleep(quiet)
	if got, want := app.events("hup"), []string{"hup " + secretValue("two")}; !slices.Equal(got, want) {
		t.Errorf("app saw %q; want %q", got, want)
	}
	if v := a.metric(t, `k8secrets_agent_reloads_total{action="signal",result="success"}`); v != 1 {
		t.Errorf("reloads_total{signal,success} = %v; want 1", v)
	}
	if v := a.metric(t, `k8secrets_agent_content_changes_total{path="`+dir+`"}`); v != 1 {
		t.Errorf("content_changes_total = %v; want 1", v)
	}
	if v := a.metric(t, `k8secrets_agent_watched_files{path="`+dir+`"}`); v != 1 {
		t.Errorf("watched_files = %v; want 1", v)
	}
	if v := a.metric(t, `k8secrets_agent_last_reload_success_timestamp_seconds`); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last_reload_success_timestamp_seconds = %v; want about now", v)
	}
	if code := a.get(t, "/healthz"); code != 200 {
		t.Errorf("/healthz = %d; want 200", code)
	}
}

func TestBurst(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	vol := newVolume(t, dir, secretPayload("0"))
	srv := newAppServer(t, dir)
	cfg := testConfig(dir)
	cfg.Reload = []string{"http:" + srv.url}
	cfg.MinInterval = time.Second
	startAgent(t, cfg)

	const writes = 1000
	start := time.Now()
	for i := 1; i <= writes; i++ {
		write(t, vol, secretPayload(fmt.Sprint(i)))
	}
	took := time.Since(start)
	final := secretValue(fmt.Sprint(writes))
	waitFor(t, "the final content to be reloaded", func() bool {
		c := srv.calls()
		return len(c) > 0 && c[len(c)-1] == final
	})
	time.Sleep(cfg.MinInterval + quiet)
	calls := srv.calls()
	t.Logf("%d writes in %v: %d reloads", writes, took, len(calls))
	// A leading reload, one per interval while the burst lasts, and a
	// trailing one: at most 3 for a burst shorter than two intervals. On a
	// machine so loaded that the writes alone take longer, the bound grows
	// with them, and the log says so.
	limit := 3
	if took >= 2*cfg.MinInterval {
		limit = 2 + int(took/cfg.MinInterval)
		t.Logf("the writes took %v, more than two intervals: allowing %d reloads", took, limit)
	}
	if last := calls[len(calls)-1]; len(calls) > limit || last != final {
		t.Errorf("%d writes in %v: %d reloads, the last seeing %q; want at most %d, the last seeing %q", writes, took, len(calls), last, limit, final)
	}
}

func TestUnchangedRewrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	vol := newVolume(t, dir, secretPayload("one"))
	srv := newAppServer(t, dir)
	cfg := testConfig(dir)
	cfg.Reload = []string{"http:" + srv.url}
	startAgent(t, cfg)
	for range 3 {
		if err := vol.Swap(map[string][]byte{secretKey: []byte(secretValue("one"))}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(quiet)
	if c := srv.calls(); len(c) != 0 {
		t.Errorf("%d reloads for unchanged content; want 0", len(c))
	}
}

func TestDirectoryMissingAtStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "secrets", "db-creds")
	srv := newAppServer(t, dir)
	cfg := testConfig(dir)
	cfg.Reload = []string{"http:" + srv.url}
	startAgent(t, cfg)
	newVolume(t, dir, secretPayload("one"))
	waitFor(t, "a reload", func() bool { return len(srv.calls()) == 1 })
	if got := srv.calls()[0]; got != secretValue("one") {
		t.Errorf("app saw %q; want %q", got, secretValue("one"))
	}
}

func TestDirectoryDeletedAndRecreated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	newVolume(t, dir, secretPayload("one"))
	srv := newAppServer(t, dir)
	cfg := testConfig(dir)
	cfg.Reload = []string{"http:" + srv.url}
	cfg.MinInterval = 0
	a := startAgent(t, cfg)

	// Removed at once, as by an unmount.
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir + ".old"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(quiet)
	if c := srv.calls(); len(c) != 0 {
		t.Fatalf("%d reloads after the directory vanished; want 0", len(c))
	}
	if code := a.get(t, "/healthz"); code != 200 {
		t.Errorf("/healthz = %d while the directory is gone; want 200", code)
	}
	vol := newVolume(t, dir, secretPayload("two"))
	waitFor(t, "a reload", func() bool { return len(srv.calls()) == 1 })
	write(t, vol, secretPayload("three"))
	waitFor(t, "a second reload", func() bool { return len(srv.calls()) == 2 })
	if got, want := srv.calls(), []string{secretValue("two"), secretValue("three")}; !slices.Equal(got, want) {
		t.Errorf("app saw %q; want %q", got, want)
	}
}

// TestProcessMissingThenStarted: while the app is not running the reload
// fails and is retried; the app that then starts reads the new content
// itself, so it gets no signal (a SIGHUP before it installs its handler
// would kill it) and the reload counts as done.
func TestProcessMissingThenStarted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	vol := newVolume(t, dir, secretPayload("one"))
	app := newApp(t, "late-app", dir)
	cfg := testConfig(dir)
	cfg.Reload = []string{"signal:SIGHUP"}
	cfg.Process = "late-app"
	a := startAgent(t, cfg)

	write(t, vol, secretPayload("two"))
	failures := `k8secrets_agent_reloads_total{action="signal",result="failure"}`
	waitFor(t, "a failed reload", func() bool { return a.metric(t, failures) >= 2 })
	if code := a.get(t, "/healthz"); code != 200 {
		t.Errorf("/healthz = %d while retrying; want 200", code)
	}
	app.start(t)
	waitFor(t, "the reload to succeed", func() bool {
		return a.metric(t, `k8secrets_agent_reloads_total{action="signal",result="success"}`) == 1
	})
	time.Sleep(quiet)
	if got := app.events("hup"); len(got) != 0 {
		t.Errorf("the app started after the change got %q; want no SIGHUP", got)
	}
	if got, want := app.events("start"), []string{"start " + secretValue("two")}; !slices.Equal(got, want) {
		t.Errorf("app starts saw %q; want %q", got, want)
	}
	if !strings.Contains(a.logs.String(), "no process named late-app") {
		t.Error("the logs do not say which process is missing")
	}
}

// TestStartupDeliversMissedUpdate: the Secret changes while the agent is
// not running; the agent that starts then finds the content newer than the
// app's process, says so, and reloads it once. An agent started again with
// nothing new does not reload.
func TestStartupDeliversMissedUpdate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	vol := newVolume(t, dir, secretPayload("one"))
	app := newApp(t, "missed-app", dir)
	app.start(t)
	// Two clock ticks of /proc (10ms each), so that the app's start time
	// is certainly before the update.
	time.Sleep(25 * time.Millisecond)
	write(t, vol, secretPayload("two"))

	cfg := testConfig(dir)
	cfg.Reload = []string{"signal:SIGHUP"}
	cfg.Process = "missed-app"
	a := startAgent(t, cfg)
	waitFor(t, "the SIGHUP", func() bool { return len(app.events("hup")) == 1 })
	time.Sleep(quiet)
	if got, want := app.events("hup"), []string{"hup " + secretValue("two")}; !slices.Equal(got, want) {
		t.Errorf("app saw %q; want %q", got, want)
	}
	if !strings.Contains(a.logs.String(), "newer than the app") {
		t.Error("the logs do not say why the agent reloaded at start")
	}
	if v := a.metric(t, `k8secrets_agent_content_changes_total{path="`+dir+`"}`); v != 0 {
		t.Errorf("content_changes_total = %v; want 0 (the start-up reading is not a change)", v)
	}
}

// TestStartupAfterRestartModeDoesNotRepeat: in restart mode, the app the
// agent restarted is younger than the content: a second agent (as after
// the agent's own restart) leaves it alone.
func TestStartupAfterRestartModeDoesNotRepeat(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	vol := newVolume(t, dir, secretPayload("one"))
	app := newApp(t, "restarted-app", dir)
	app.start(t)
	time.Sleep(25 * time.Millisecond)
	write(t, vol, secretPayload("two"))
	// The app read "two" when it started again, after the update (as the
	// kubelet starts the container the agent ended).
	app.stop(t)
	app.start(t)

	cfg := testConfig(dir)
	cfg.Reload = []string{"restart"}
	cfg.Process = "restarted-app"
	cfg.RestartJitter = 0
	a := startAgent(t, cfg)
	waitFor(t, "the agent to be ready", func() bool { return a.get(t, "/readyz") == 200 })
	time.Sleep(quiet)
	if got := app.events("term"); len(got) != 1 {
		t.Errorf("app got %d SIGTERMs; want 1 (the test's own stop)", len(got))
	}
	if v := a.metric(t, `k8secrets_agent_reloads_total{action="restart",result="success"}`); v != 0 {
		t.Errorf("reloads_total{restart,success} = %v; want 0", v)
	}
}

func TestHTTPErrorThenSuccess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	vol := newVolume(t, dir, secretPayload("one"))
	srv := newAppServer(t, dir)
	srv.fail = 1
	cfg := testConfig(dir)
	cfg.Reload = []string{"http:" + srv.url}
	a := startAgent(t, cfg)
	write(t, vol, secretPayload("two"))
	waitFor(t, "the retry", func() bool { return len(srv.calls()) == 2 })
	time.Sleep(quiet)
	if got, want := srv.calls(), []string{secretValue("two"), secretValue("two")}; !slices.Equal(got, want) {
		t.Errorf("app saw %q; want %q", got, want)
	}
	for result, want := range map[string]float64{"failure": 1, "success": 1} {
		if v := a.metric(t, `k8secrets_agent_reloads_total{action="http",result="`+result+`"}`); v != want {
			t.Errorf("reloads_total{http,%s} = %v; want %v", result, v, want)
		}
	}
}

func TestInvalidTLSContent(t *testing.T) {
	now := time.Now()
	goodCrt, goodKey := tlsPair(t, now.Add(-time.Hour), now.Add(time.Hour))
	_, otherKey := tlsPair(t, now.Add(-time.Hour), now.Add(time.Hour))
	oldCrt, oldKey := tlsPair(t, now.Add(-2*time.Hour), now.Add(-time.Hour))
	newCrt, newKey := tlsPair(t, now.Add(-time.Hour), now.Add(time.Hour))
	tests := []struct {
		name     string
		crt, key string
	}{
		{"mismatched pair", goodCrt, otherKey},
		{"expired certificate", oldCrt, oldKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "tls")
			vol := newVolume(t, dir, map[string]string{"tls.crt": goodCrt, "tls.key": goodKey})
			srv := newAppServer(t, dir)
			cfg := testConfig(dir)
			cfg.Reload = []string{"http:" + srv.url}
			cfg.MinInterval = 0
			a := startAgent(t, cfg)

			write(t, vol, map[string]string{"tls.crt": tt.crt, "tls.key": tt.key})
			series := `k8secrets_agent_invalid_content_total{path="` + dir + `"}`
			waitFor(t, "the invalid content to be counted", func() bool { return a.metric(t, series) == 1 })
			time.Sleep(quiet)
			if c := srv.calls(); len(c) != 0 {
				t.Fatalf("%d reloads into invalid content; want 0", len(c))
			}
			// A fixed pair reloads.
			write(t, vol, map[string]string{"tls.crt": newCrt, "tls.key": newKey, secretKey: secretValue("three")})
			waitFor(t, "a reload", func() bool { return len(srv.calls()) == 1 })
			if strings.Contains(a.logs.String(), "BEGIN") {
				t.Error("the logs contain PEM")
			}
		})
	}
}

func TestResyncAfterLostEvents(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	newVolume(t, dir, secretPayload("one"))
	srv := newAppServer(t, dir)
	cfg := testConfig(dir)
	cfg.Reload = []string{"http:" + srv.url}
	cfg.ResyncPeriod = 200 * time.Millisecond
	a := startAgent(t, cfg)
	// Rewrite the file inside the timestamped directory: the watched
	// directory gets no event, as if inotify had lost it.
	ts, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ts, secretKey), []byte(secretValue("two")), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a reload", func() bool { return len(srv.calls()) == 1 })
	if got := srv.calls()[0]; got != secretValue("two") {
		t.Errorf("app saw %q; want %q", got, secretValue("two"))
	}
	if v := a.metric(t, "k8secrets_agent_resyncs_total"); v < 1 {
		t.Errorf("resyncs_total = %v; want at least 1", v)
	}
}

func TestRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	vol := newVolume(t, dir, secretPayload("one"))
	app := newApp(t, "restart-app", dir)
	app.start(t)
	// The kubelet's part: start the container again when it ends.
	stop := make(chan struct{})
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		app.mu.Lock()
		done := app.done
		app.mu.Unlock()
		select {
		case <-done:
		case <-stop:
			return
		}
		app.start(t)
	}()
	t.Cleanup(func() { close(stop) })

	cfg := testConfig(dir)
	cfg.Reload = []string{"restart"}
	cfg.Process = "restart-app"
	cfg.RestartGrace = 2 * time.Second
	startAgent(t, cfg)
	write(t, vol, secretPayload("two"))
	select {
	case <-restarted:
	case <-time.After(10 * time.Second):
		t.Fatal("app not restarted")
	}
	want := []string{"start " + secretValue("one"), "start " + secretValue("two")}
	if got := app.events("start"); !slices.Equal(got, want) {
		t.Errorf("app starts saw %q; want %q", got, want)
	}
	if got := app.events("term"); len(got) != 1 {
		t.Errorf("app got %d SIGTERMs; want 1", len(got))
	}
}

// agentProcess runs the agent's main in a child process.
func agentProcess(t *testing.T, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "AGENT_TEST_HELPER=agent")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	return cmd, out
}

func TestSIGTERM(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	newVolume(t, dir, secretPayload("one"))
	srv := newAppServer(t, dir)
	cmd, out := agentProcess(t, "--watch="+dir, "--reload=http:"+srv.url, "--listen=127.0.0.1:0", "--log-format=json")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the agent to start", func() bool { return strings.Contains(out.String(), "k8secrets-agent started") })
	time.Sleep(100 * time.Millisecond) // let the watcher take its baseline
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	took := time.Since(start)
	if err != nil {
		t.Errorf("agent exited with %v after SIGTERM; want 0\n%s", err, out)
	}
	if took > time.Second {
		t.Errorf("agent took %v to stop; want at most 1s", took)
	}
}

func TestExitCodes(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		out  string
	}{
		{"bad configuration", []string{"--reload=bounce"}, 2, "--watch: at least one directory"},
		{"unknown flag", []string{"--nope"}, 2, "unknown flag"},
		{"version", []string{"version"}, 0, "dev"},
		{"help", []string{"--help"}, 0, "parent PID is 0"},
		{"listen fails", []string{"--watch=/tmp", "--reload=restart", "--listen=256.0.0.1:1"}, 1, "listen on"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd, out := agentProcess(t, tt.args...)
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.code || !strings.Contains(out.String(), tt.out) {
				t.Errorf("exit %d with %q; want exit %d with %q", code, out, tt.code, tt.out)
			}
		})
	}
}

// openDir is a temporary directory every user may use; the test is skipped
// where an ancestor is closed to other users.
func openDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		_ = os.Chmod(d, 0o755)
	}
	_ = os.Chmod(dir, 0o777)
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

// TestEPERM runs the app as nobody (65534) and the agent, as a process, as
// another unprivileged user: the signal fails with EPERM, the agent says
// what to do, counts and retries, and stays healthy.
func TestEPERM(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the app and the agent as two other users")
	}
	shared, dir, vol, app := foreignApp(t, "eperm-app")

	cmd := exec.Command(filepath.Join(shared, "agent"), "--watch="+dir, "--reload=signal:SIGHUP", "--process=eperm-app",
		"--listen=127.0.0.1:0", "--log-format=json", "--min-interval=0")
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "AGENT_TEST_HELPER=agent")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65533, Gid: 65533}}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	a := &agent{logs: out}
	waitFor(t, "the agent to start", func() bool {
		_, rest, ok := strings.Cut(out.String(), `"listen":"`)
		if ok {
			a.addr, _, _ = strings.Cut(rest, `"`)
		}
		return ok && a.get(t, "/readyz") == 200
	})

	write(t, vol, secretPayload("two"))
	failures := `k8secrets_agent_reloads_total{action="signal",result="failure"}`
	waitFor(t, "retried failures", func() bool { return a.metric(t, failures) >= 2 })
	if !strings.Contains(out.String(), "operation not permitted; run the agent as the app's user (runAsUser) or give it CAP_KILL") {
		t.Errorf("the agent's logs do not say what to do:\n%s", out)
	}
	if code := a.get(t, "/healthz"); code != 200 {
		t.Errorf("/healthz = %d while retrying; want 200", code)
	}
	if got := app.events("hup"); len(got) != 0 {
		t.Errorf("app got %q; want nothing", got)
	}
	if strings.Contains(out.String(), "s3cr3t") {
		t.Error("the agent's logs contain a Secret value")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st, err := cmd.Process.Wait(); err != nil || !st.Success() {
		t.Errorf("agent exited %v, %v after SIGTERM; want 0", st, err)
	}
}

// TestStartupRefusesInvalidContent: content that changed while the agent
// was down is judged like any change: an expired pair is not delivered at
// start-up, and the valid one that follows is.
func TestStartupRefusesInvalidContent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	now := time.Now()
	crt, key := tlsPair(t, now.Add(-time.Hour), now.Add(time.Hour))
	vol := newVolume(t, dir, map[string]string{"tls.crt": crt, "tls.key": key, secretKey: secretValue("one")})
	app := newApp(t, "tls-app", dir)
	app.start(t)
	time.Sleep(25 * time.Millisecond) // the app starts certainly before the update
	oldCrt, oldKey := tlsPair(t, now.Add(-2*time.Hour), now.Add(-time.Hour))
	write(t, vol, map[string]string{"tls.crt": oldCrt, "tls.key": oldKey, secretKey: secretValue("two")})

	cfg := testConfig(dir)
	cfg.Reload = []string{"signal:SIGHUP"}
	cfg.Process = "tls-app"
	a := startAgent(t, cfg)
	waitFor(t, "the start-up refusal", func() bool { return strings.Contains(a.logs.String(), "but refused") })
	if got := app.events("hup"); len(got) != 0 {
		t.Fatalf("the app got %d SIGHUPs for an expired certificate at start-up; want 0", len(got))
	}
	newCrt, newKey := tlsPair(t, now.Add(-time.Minute), now.Add(time.Hour))
	write(t, vol, map[string]string{"tls.crt": newCrt, "tls.key": newKey, secretKey: secretValue("three")})
	waitFor(t, "the SIGHUP for the valid pair", func() bool { return len(app.events("hup")) == 1 })
}

// foreignApp copies the test binary, as the app (name) and "agent", into a
// directory every user can read, makes the kubelet volume db-creds holding
// "one" beside them, and starts the app as user 65534; it returns once the
// app has started.
func foreignApp(t *testing.T, name string) (shared, dir string, vol *kubelettest.Writer, app *testApp) {
	t.Helper()
	shared = openDir(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{name, "agent"} {
		if err := os.WriteFile(filepath.Join(shared, n), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir = filepath.Join(shared, "db-creds")
	vol = newVolume(t, dir, secretPayload("one"))
	app = &testApp{exe: filepath.Join(shared, name), log: filepath.Join(shared, "app.log"), secret: filepath.Join(dir, secretKey)}
	appCmd := exec.Command(app.exe)
	appCmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "AGENT_TEST_HELPER=app", "APP_LOG="+app.log, "APP_SECRET="+app.secret)
	appCmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := appCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = appCmd.Process.Kill(); _ = appCmd.Wait() })
	waitFor(t, "the app to start", func() bool { return app.has("start ") })
	return shared, dir, vol, app
}
