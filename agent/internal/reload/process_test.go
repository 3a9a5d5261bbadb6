package reload

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// fakeProc builds a /proc with the given processes: pid -> (comm, ppid,
// exe, kernel thread).
type fakeProcess struct {
	pid     int
	comm    string
	ppid    int
	exe     string
	kthread bool
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
		stat := fmt.Sprintf("%d (%s) S %d %d %d 0 -1 %d 0 0 0 0\n", p.pid, p.comm, p.ppid, p.pid, p.pid, flags)
		if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
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

func TestFind(t *testing.T) {
	// A pod with a shared PID namespace: pause, the app (nginx, with a
	// worker), a second app container (a Java app whose comm differs from
	// its executable), a k8secrets-agent of another injection, a shell
	// someone exec'd into the app container (ppid 0 too) and a kernel
	// thread as seen with hostPID.
	proc := fakeProc(t,
		fakeProcess{pid: 1, comm: "pause", ppid: 0},
		fakeProcess{pid: 7, comm: "nginx", ppid: 0, exe: "/usr/sbin/nginx"},
		fakeProcess{pid: 12, comm: "nginx", ppid: 7, exe: "/usr/sbin/nginx"},
		fakeProcess{pid: 20, comm: "java", ppid: 0, exe: "/opt/java/bin/java"},
		fakeProcess{pid: 21, comm: "C2 CompilerThre", ppid: 20},
		fakeProcess{pid: 30, comm: "k8secrets-agent", ppid: 0},
		fakeProcess{pid: 40, comm: "weird) name (x", ppid: 0},
		fakeProcess{pid: 2, comm: "kthreadd", ppid: 0, kthread: true},
	)
	tests := []struct {
		name   string
		target Target
		want   []int
	}{
		{"app containers' main processes", Target{}, []int{7, 20, 40}},
		{"by comm, the top of the tree", Target{Name: "nginx"}, []int{7}},
		{"by executable name", Target{Name: "java"}, []int{20}},
		{"never the agent", Target{Name: "k8secrets-agent"}, nil},
		{"never pause by default", Target{Name: ""}, []int{7, 20, 40}},
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

func TestFindAlone(t *testing.T) {
	// Without shareProcessNamespace the agent sees only pause-less itself.
	proc := fakeProc(t, fakeProcess{pid: 1, comm: "k8secrets-agent", ppid: 0})
	_, err := Target{ProcRoot: proc}.Find()
	if !errors.Is(err, ErrNoProcess) {
		t.Fatalf("Find() = %v; want ErrNoProcess", err)
	}
}
