package reload

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSignalPodContainers checks the default target in a real shared PID
// namespace, built the way a pod's is: a first process (pause) as PID 1,
// then the app and the agent entered into the namespace from outside, so
// that their parent PID is 0 there, as a container's init process is.
func TestSignalPodContainers(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to create namespaces")
	}
	for _, tool := range []string{"unshare", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (util-linux)", tool)
		}
	}
	if out, err := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "true").CombinedOutput(); err != nil {
		t.Skipf("cannot create a PID namespace here: %v: %s", err, out)
	}
	// pause: PID 1 of a new PID namespace with its own /proc. sleep dies
	// of a SIGHUP, so it also proves the agent spared it.
	pause := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "sleep", "60")
	if err := pause.Start(); err != nil {
		t.Skipf("cannot create a PID namespace: %v", err)
	}
	t.Cleanup(func() { _ = pause.Process.Kill(); _ = pause.Wait() })
	nsInit := waitChild(t, pause.Process.Pid)

	dir := sharedDir(t)
	app := filepath.Join(dir, "app")
	agent := filepath.Join(dir, "k8secrets-agent")
	copyFile(t, mustExecutable(t), app)
	copyFile(t, mustExecutable(t), agent)
	hups := filepath.Join(dir, "hups")

	appCmd := exec.Command("nsenter", "-t", strconv.Itoa(nsInit), "-p", "-m", app)
	appCmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "RELOAD_TEST_HELPER=app", "HUPS="+hups)
	out, err := appCmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := appCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = appCmd.Process.Kill(); _ = appCmd.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("app did not start: %q, %v", line, err)
	}

	agentCmd := exec.Command("nsenter", "-t", strconv.Itoa(nsInit), "-p", "-m", agent)
	agentCmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "RELOAD_TEST_HELPER=signal-pod")
	res, err := agentCmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(res)) != "signalled app" {
		t.Fatalf("agent: %q, %v; want it to signal the app only", res, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if b, _ := os.ReadFile(hups); strings.Count(string(b), "\n") == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("app got no SIGHUP")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := syscall.Kill(nsInit, 0); err != nil {
		t.Errorf("pause (PID 1 in the namespace) is gone: %v", err)
	}
}

// signalPod is the agent's side of TestSignalPodContainers, run inside the
// namespace: find the default targets, print them, signal them.
func signalPod() {
	procs, err := Target{}.Find()
	if err != nil {
		fmt.Println(err)
		return
	}
	var names []string
	for _, p := range procs {
		names = append(names, p.Comm)
	}
	if err := (&Signal{Sig: syscall.SIGHUP, Target: Target{}}).Reload(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("signalled", strings.Join(names, " "))
}

// waitChild returns the PID of parent's first child.
func waitChild(t *testing.T, parent int) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", parent, parent))
		if err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				pid, _ := strconv.Atoi(f[0])
				return pid
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("namespace init did not start")
	return 0
}
