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
// then each container's process entered into the namespace from outside,
// so that its parent PID is 0 there, each in a mount namespace of its own
// (as runc makes one per container). The Secret volume is one tmpfs,
// bind-mounted into the app's and the agent's namespaces at different
// paths, as the kubelet does. Beside the app run a "proxy" container that
// does not mount it and an "exec probe" entered into the app's namespaces
// after the app: only the app may be signalled.
func TestSignalPodContainers(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to create namespaces")
	}
	for _, tool := range []string{"unshare", "nsenter", "mount", "umount", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (util-linux)", tool)
		}
	}
	if out, err := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "true").CombinedOutput(); err != nil {
		t.Skipf("cannot create a PID namespace here: %v: %s", err, out)
	}
	dir := sharedDir(t)
	// The volume: a tmpfs, mounted before pause so that every namespace
	// copied from pause's has it; each container's own namespace then
	// binds it where that container wants it (or drops it).
	vol := filepath.Join(dir, "volume")
	for _, d := range []string{vol, filepath.Join(dir, "app-secret"), filepath.Join(dir, "agent-secret")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "secret-volume", vol).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", vol).Run() })

	// pause: PID 1 of a new PID namespace with its own /proc. sleep dies
	// of a SIGHUP, so it also proves the agent spared it.
	pause := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "--propagation", "private", "sleep", "60")
	if err := pause.Start(); err != nil {
		t.Skipf("cannot create a PID namespace: %v", err)
	}
	t.Cleanup(func() { _ = pause.Process.Kill(); _ = pause.Wait() })
	nsInit := waitChild(t, pause.Process.Pid)

	exe := map[string]string{}
	for _, name := range []string{"app", "proxy", "probe", "k8secrets-agent"} {
		exe[name] = filepath.Join(dir, name)
		copyFile(t, mustExecutable(t), exe[name])
	}
	hups := func(name string) string { return filepath.Join(dir, name+".hups") }
	// container starts name in the pod's PID namespace and a new mount
	// namespace set up by the shell commands setup.
	container := func(name, setup string, env ...string) {
		t.Helper()
		cmd := exec.Command("nsenter", "-t", strconv.Itoa(nsInit), "-p", "-m",
			"unshare", "--mount", "--propagation", "private", "sh", "-c", setup+` && exec "$0"`, exe[name])
		cmd.Env = append(os.Environ(), append(env, "GORACE=atexit_sleep_ms=0", "RELOAD_TEST_HELPER=app", "HUPS="+hups(name))...)
		waitReady(t, cmd)
	}
	container("app", "mount --bind "+vol+" "+filepath.Join(dir, "app-secret"))
	container("proxy", "umount "+vol)
	app := running(t, exe["app"])
	// The exec probe: entered later into the app's namespaces, parent PID 0.
	probe := exec.Command("nsenter", "-t", strconv.Itoa(app), "-p", "-m", exe["probe"])
	probe.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "RELOAD_TEST_HELPER=app", "HUPS="+hups("probe"))
	waitReady(t, probe)

	agentCmd := exec.Command("nsenter", "-t", strconv.Itoa(nsInit), "-p", "-m",
		"unshare", "--mount", "--propagation", "private", "sh", "-c",
		"mount --bind "+vol+" "+filepath.Join(dir, "agent-secret")+` && exec "$0"`, exe["k8secrets-agent"])
	agentCmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "RELOAD_TEST_HELPER=signal-pod", "WATCH="+filepath.Join(dir, "agent-secret"))
	res, err := agentCmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(res)) != "signalled app" {
		t.Fatalf("agent: %q, %v; want it to signal the app only", res, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if b, _ := os.ReadFile(hups("app")); strings.Count(string(b), "\n") == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("app got no SIGHUP")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, other := range []string{"proxy", "probe"} {
		if b, _ := os.ReadFile(hups(other)); len(b) != 0 {
			t.Errorf("%s got %d SIGHUPs; want none", other, strings.Count(string(b), "\n"))
		}
	}
	if err := syscall.Kill(nsInit, 0); err != nil {
		t.Errorf("pause (PID 1 in the namespace) is gone: %v", err)
	}
}

// waitReady starts cmd (an app helper) and waits for its "ready" line.
func waitReady(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("%s did not start: %q, %v", cmd.Args, line, err)
	}
}

// running returns the (host) PID of the process that runs exe.
func running(t *testing.T, exe string) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); target == exe {
			return pid
		}
	}
	t.Fatalf("no process runs %s", exe)
	return 0
}

// signalPod is the agent's side of TestSignalPodContainers, run inside the
// namespace: find the default targets, print them, signal them.
func signalPod() {
	target := Target{Dirs: []string{os.Getenv("WATCH")}}
	procs, err := target.Find()
	if err != nil {
		fmt.Println(err)
		return
	}
	var names []string
	for _, p := range procs {
		names = append(names, p.Comm)
	}
	if err := (&Signal{Sig: syscall.SIGHUP, Target: target}).Reload(context.Background()); err != nil {
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
