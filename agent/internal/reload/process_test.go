package reload

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeProc builds a /proc with the given processes: pid -> (comm, ppid,
// exe, kernel thread).
type fakeProcess struct {
	pid     int
	comm    string
	ppid    int
	exe     string
	kthread bool
	// mounts is /proc/PID/mountinfo; start, when set, the start time.
	mounts string
	start  time.Time
}

func fakeProc(t *testing.T, procs ...fakeProcess) string {
	t.Helper()
	root := t.TempDir()
	for _, p := range procs {
		dir := filepath.Join(root, fmt.Sprint(p.pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		flags := 4194560
		if p.kthread {
			flags |= pfKthread
		}
		ticks := uint64(0)
		if !p.start.IsZero() {
			ticks = uint64(p.start.Sub(startedAt(0)) / clockTick)
		}
		stat := fmt.Sprintf("%d (%s) S %d %d %d 0 -1 %d 0 0 0 0 0 0 0 0 20 0 1 0 %d 0 0\n", p.pid, p.comm, p.ppid, p.pid, p.pid, flags, ticks)
		if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
		if p.mounts != "" {
			if err := os.WriteFile(filepath.Join(dir, "mountinfo"), []byte(p.mounts), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if p.exe != "" {
			if err := os.Symlink(p.exe, filepath.Join(dir, "exe")); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

func pids(ps []Process) []int {
	var out []int
	for _, p := range ps {
		out = append(out, p.PID)
	}
	slices.Sort(out)
	return out
}

// Mount tables of a pod's containers: the Secret volume is the tmpfs 0:60,
// mounted at another path in the app (as the Job's --mount-path may be).
const (
	agentMounts = `100 90 0:50 / / rw,relatime - overlay overlay rw
101 100 0:60 / /var/run/secrets/k8secrets/db rw,relatime - tmpfs tmpfs rw
`
	appMounts = `200 190 0:51 / / rw,relatime - overlay overlay rw
201 200 0:60 / /etc/my\040app/db ro,relatime - tmpfs tmpfs rw
`
	javaMounts = `300 290 0:52 / / rw,relatime - overlay overlay rw
301 300 0:60 / /var/run/secrets/k8secrets/db ro,relatime - tmpfs tmpfs rw
`
	proxyMounts = `400 390 0:53 / / rw,relatime - overlay overlay rw
401 400 0:61 / /etc/istio/proxy rw,relatime - tmpfs tmpfs rw
`
	debugMounts = `500 490 0:54 / / rw,relatime - overlay overlay rw
`
)

func TestFind(t *testing.T) {
	// A pod with a shared PID namespace: pause, the app (nginx, with a
	// worker, and an exec probe and a kubectl exec shell started later in
	// its container), a second app container (a Java app whose comm
	// differs from its executable), a mesh proxy and a debug container
	// that do not mount the Secret, a k8secrets-agent of another
	// injection, a process run in the agent's own container, and a kernel
	// thread as seen with hostPID. The agent itself is "self".
	boot := time.Now().Add(-time.Hour)
	proc := fakeProc(t,
		fakeProcess{pid: 1, comm: "pause", ppid: 0, start: boot},
		fakeProcess{pid: 7, comm: "nginx", ppid: 0, exe: "/usr/sbin/nginx", mounts: appMounts, start: boot.Add(time.Second)},
		fakeProcess{pid: 12, comm: "nginx", ppid: 7, exe: "/usr/sbin/nginx", mounts: appMounts, start: boot.Add(2 * time.Second)},
		fakeProcess{pid: 3, comm: "probe", ppid: 0, mounts: appMounts, start: boot.Add(time.Minute)},
		fakeProcess{pid: 90, comm: "sh", ppid: 0, mounts: appMounts, start: boot.Add(time.Minute)},
		fakeProcess{pid: 20, comm: "java", ppid: 0, exe: "/opt/java/bin/java", mounts: javaMounts, start: boot.Add(time.Second)},
		fakeProcess{pid: 21, comm: "C2 CompilerThre", ppid: 20, mounts: javaMounts},
		fakeProcess{pid: 25, comm: "envoy", ppid: 0, mounts: proxyMounts, start: boot},
		fakeProcess{pid: 26, comm: "sh", ppid: 0, mounts: debugMounts, start: boot.Add(time.Minute)},
		fakeProcess{pid: 30, comm: "k8secrets-agent", ppid: 0, mounts: agentMounts},
		fakeProcess{pid: 31, comm: "in-agent", ppid: 0, mounts: agentMounts, start: boot.Add(time.Minute)},
		fakeProcess{pid: 40, comm: "weird) name (x", ppid: 0, mounts: javaMounts, start: boot.Add(2 * time.Second)},
		fakeProcess{pid: 2, comm: "kthreadd", ppid: 0, kthread: true},
	)
	if err := os.Mkdir(filepath.Join(proc, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, "self", "mountinfo"), []byte(agentMounts), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		target Target
		want   []int
	}{
		{"the main process of each container that mounts the Secret", Target{Dirs: []string{"/var/run/secrets/k8secrets/db"}}, []int{7, 20}},
		{"a watched subdirectory of the volume", Target{Dirs: []string{"/var/run/secrets/k8secrets/db/sub"}}, []int{7, 20}},
		{"a directory no container shares", Target{Dirs: []string{"/etc"}}, nil},
		{"by comm, the top of the tree", Target{Name: "nginx"}, []int{7}},
		{"by executable name", Target{Name: "java"}, []int{20}},
		{"never the agent", Target{Name: "k8secrets-agent"}, nil},
		{"never pause", Target{Name: "pause"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.target.ProcRoot = proc
			got, err := tt.target.Find()
			if len(tt.want) == 0 {
				if !errors.Is(err, ErrNoProcess) {
					t.Fatalf("Find() = %v, %v; want ErrNoProcess", pids(got), err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Find() error = %v", err)
			}
			if !slices.Equal(pids(got), tt.want) {
				t.Errorf("Find() = %v; want %v", pids(got), tt.want)
			}
		})
	}
}

// TestDueAndBehind: a process started after the content changed is spared
// on a change (it has read it) and is not behind at start-up; one started
// before is due and behind; the 10ms tick between is due but not behind.
func TestDueAndBehind(t *testing.T) {
	changed := time.Now().Add(-time.Minute).Truncate(time.Second)
	proc := fakeProc(t,
		fakeProcess{pid: 7, comm: "old", start: changed.Add(-time.Second)},
		fakeProcess{pid: 8, comm: "same-tick", start: changed},
		fakeProcess{pid: 9, comm: "young", start: changed.Add(time.Second)},
	)
	for _, tt := range []struct {
		name        string
		due, behind bool
	}{{"old", true, true}, {"same-tick", true, false}, {"young", false, false}} {
		target := Target{Name: tt.name, ProcRoot: proc, Changed: func() time.Time { return changed }}
		due, err := target.Due()
		if err != nil || (len(due) == 1) != tt.due {
			t.Errorf("Target{Name: %s}.Due() = %v, %v; want due %v", tt.name, pids(due), err, tt.due)
		}
		behind, _, err := target.Behind()
		if err != nil || (len(behind) == 1) != tt.behind {
			t.Errorf("Target{Name: %s}.Behind() = %v, %v; want behind %v", tt.name, pids(behind), err, tt.behind)
		}
	}
}

// TestPIDFileGuards: a pid file holding the agent's own PID, PID 1 or
// another agent is refused with the fix; a plain app is selected.
func TestPIDFileGuards(t *testing.T) {
	self := os.Getpid()
	proc := fakeProc(t,
		fakeProcess{pid: 1, comm: "pause"},
		fakeProcess{pid: self, comm: "k8secrets-agent"},
		fakeProcess{pid: 30, comm: "k8secrets-agent"},
		fakeProcess{pid: 2, comm: "kthreadd", kthread: true},
		fakeProcess{pid: 7, comm: "app"},
	)
	dir := t.TempDir()
	for _, tt := range []struct {
		pid  int
		want string
	}{{self, "the agent itself"}, {1, "PID 1"}, {30, "a k8secrets-agent"}, {2, "a kernel thread"}, {7, ""}} {
		target := Target{PIDFile: writePIDFile(t, dir, tt.pid), ProcRoot: proc}
		got, err := target.Find()
		if tt.want == "" {
			if err != nil || !slices.Equal(pids(got), []int{7}) {
				t.Errorf("pid file with %d: Find() = %v, %v; want [7]", tt.pid, pids(got), err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) || errors.Is(err, ErrNoProcess) {
			t.Errorf("pid file with %d: Find() = %v, %v; want an error naming %q", tt.pid, pids(got), err, tt.want)
		}
	}
}

func TestFindAlone(t *testing.T) {
	// Without shareProcessNamespace the agent sees only pause-less itself.
	proc := fakeProc(t, fakeProcess{pid: 1, comm: "k8secrets-agent", ppid: 0, mounts: agentMounts})
	if err := os.Mkdir(filepath.Join(proc, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, "self", "mountinfo"), []byte(agentMounts), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Target{ProcRoot: proc, Dirs: []string{"/var/run/secrets/k8secrets/db"}}.Find()
	if !errors.Is(err, ErrNoProcess) {
		t.Fatalf("Find() = %v; want ErrNoProcess", err)
	}
}
