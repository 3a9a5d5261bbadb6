package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/k8secrets/k8secrets/internal/wellknown"
)

// restartAllAgent is one run of the agent's binary in restart-all mode.
type restartAllAgent struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
}

func startRestartAll(t *testing.T, dir, state string) *restartAllAgent {
	t.Helper()
	args := []string{"--watch=" + dir, "--reload=restart-all", "--listen=127.0.0.1:0", "--log-format=json", "--min-interval=0"}
	if state != "" {
		args = append(args, "--state-dir="+state)
	}
	cmd, out := agentProcess(t, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &restartAllAgent{cmd: cmd, out: out, done: make(chan error, 1)}
	go func() { a.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return a
}

// exitCode waits for the agent to end by itself.
func (a *restartAllAgent) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case err := <-a.done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(20 * time.Second):
		t.Fatalf("the agent did not exit within 20s\n%s", a.out)
		return -1
	}
}

// ready waits until the agent serves /readyz: it has taken its start-up
// decision (made before it serves) and its first reading of the files.
// It fails the test if the agent exits first.
func (a *restartAllAgent) ready(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-a.done:
			t.Fatalf("the agent exited (%v) instead of serving\n%s", err, a.out)
		default:
		}
		if addr := listenAddr(a.out.String()); addr != "" {
			if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the agent was not ready within 20s\n%s", a.out)
}

// stop ends the agent with SIGTERM and wants exit 0: it had not decided to
// restart the pod.
func (a *restartAllAgent) stop(t *testing.T) {
	t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := a.exitCode(t); code != 0 {
		t.Fatalf("agent exited %d after SIGTERM; want 0\n%s", code, a.out)
	}
}

func listenAddr(log string) string {
	for _, line := range strings.Split(log, "\n") {
		var rec struct {
			Msg    string `json:"msg"`
			Listen string `json:"listen"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "k8secrets-agent started" {
			return rec.Listen
		}
	}
	return ""
}

// In restart-all mode the agent exits with the restart rule's code once per
// content: for a change it sees, for a change made while it was down, and
// never again for content the pod already restarted for.
func TestRestartAll(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	vol := newVolume(t, dir, secretPayload("one"))
	state := t.TempDir()
	var logs []string

	a := startRestartAll(t, dir, state)
	a.ready(t) // first start: "one" is the baseline
	write(t, vol, secretPayload("two"))
	if code := a.exitCode(t); code != wellknown.RestartAllExitCode {
		t.Fatalf("after an update the agent exited %d; want %d\n%s", code, wellknown.RestartAllExitCode, a.out)
	}
	logs = append(logs, a.out.String())

	// The kubelet restarted every container: the agent comes back to the
	// content it restarted the pod for, and must not ask again.
	a = startRestartAll(t, dir, state)
	a.ready(t)
	a.stop(t)
	logs = append(logs, a.out.String())

	// Changed while the agent was down: it restarts the pod at start.
	write(t, vol, secretPayload("three"))
	a = startRestartAll(t, dir, state)
	if code := a.exitCode(t); code != wellknown.RestartAllExitCode {
		t.Fatalf("after an update made while it was down the agent exited %d; want %d\n%s", code, wellknown.RestartAllExitCode, a.out)
	}
	if !strings.Contains(a.out.String(), "changed while the agent was down") {
		t.Errorf("the agent did not say why it restarted the pod at start\n%s", a.out)
	}
	logs = append(logs, a.out.String())
	a = startRestartAll(t, dir, state)
	a.ready(t)
	a.stop(t)
	logs = append(logs, a.out.String())

	for _, v := range []string{"one", "two", "three"} {
		if strings.Contains(strings.Join(logs, ""), secretValue(v)) {
			t.Fatalf("the agent logged a Secret's value (%s)", v)
		}
	}
}

// A bad configuration exits 2, never the restart rule's code: the kubelet
// applies no crash-loop backoff to the rule, so a misconfigured agent must
// not restart the pod in a loop.
func TestRestartAllMisconfiguredExits2(t *testing.T) {
	for _, args := range [][]string{
		{"--watch=/tmp", "--reload=restart-all", "--reload=signal:SIGHUP"},
		{"--watch=/tmp", "--reload=restart-all:now"},
		{"--watch=/tmp", "--reload=signal:SIGHUP", "--state-dir=/tmp"},
	} {
		cmd, out := agentProcess(t, args...)
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("agent %q: %v; want exit 2\n%s", args, err, out)
		}
	}
}

// Without --state-dir the agent still restarts the pod once per change it
// sees, and takes what it finds at start as the baseline.
func TestRestartAllWithoutState(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	vol := newVolume(t, dir, secretPayload("one"))
	a := startRestartAll(t, dir, "")
	a.ready(t)
	write(t, vol, secretPayload("two"))
	if code := a.exitCode(t); code != wellknown.RestartAllExitCode {
		t.Fatalf("after an update the agent exited %d; want %d\n%s", code, wellknown.RestartAllExitCode, a.out)
	}
	a = startRestartAll(t, dir, "")
	a.ready(t)
	a.stop(t)
}
