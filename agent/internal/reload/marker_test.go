package reload

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Mount tables of a pod where the app takes the Secret through env: the
// Secret volume (tmpfs 0:60) is mounted in the agent only, the Job's target
// marker (tmpfs 0:70) in the agent and the env app.
const (
	markedAgentMounts = `100 90 0:50 / / rw,relatime - overlay overlay rw
101 100 0:60 / /var/run/secrets/k8secrets/db rw,relatime - tmpfs tmpfs rw
102 100 0:70 / /var/run/k8secrets-target/db ro,relatime - tmpfs tmpfs rw
`
	envAppMounts = `200 190 0:51 / / rw,relatime - overlay overlay rw
201 200 0:70 / /var/run/k8secrets-target/db ro,relatime - tmpfs tmpfs rw
`
	fileAppMounts = `300 290 0:52 / / rw,relatime - overlay overlay rw
301 300 0:60 / /etc/db ro,relatime - tmpfs tmpfs rw
`
	bystanderMounts = `400 390 0:53 / / rw,relatime - overlay overlay rw
401 400 0:54 / /data rw,relatime - tmpfs tmpfs rw
`
)

// TestFindByMarker: with Marks, the agent selects the containers that
// mount the marker's volume, and only those: not a container that mounts
// the watched Secret, not a bystander, never the agent's own container.
func TestFindByMarker(t *testing.T) {
	boot := time.Now().Add(-time.Hour)
	proc := fakeProc(t,
		fakeProcess{pid: 1, comm: "pause", ppid: 0, start: boot},
		fakeProcess{pid: 7, comm: "env-app", ppid: 0, mounts: envAppMounts, start: boot.Add(time.Second)},
		fakeProcess{pid: 8, comm: "probe", ppid: 0, mounts: envAppMounts, start: boot.Add(time.Minute)},
		fakeProcess{pid: 20, comm: "file-app", ppid: 0, mounts: fileAppMounts, start: boot.Add(time.Second)},
		fakeProcess{pid: 25, comm: "bystander", ppid: 0, mounts: bystanderMounts, start: boot},
		fakeProcess{pid: 31, comm: "in-agent", ppid: 0, mounts: markedAgentMounts, start: boot.Add(time.Minute)},
	)
	if err := os.Mkdir(filepath.Join(proc, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, "self", "mountinfo"), []byte(markedAgentMounts), 0o644); err != nil {
		t.Fatal(err)
	}
	watch := []string{"/var/run/secrets/k8secrets/db"}
	tests := []struct {
		name   string
		target Target
		want   []int
	}{
		{"the marker selects the env app only", Target{Dirs: watch, Marks: []string{"/var/run/k8secrets-target/db"}}, []int{7}},
		{"without it, the containers that mount the Secret", Target{Dirs: watch}, []int{20}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.target.ProcRoot = proc
			got, err := tt.target.Find()
			if err != nil {
				t.Fatalf("Find() error = %v", err)
			}
			if !slices.Equal(pids(got), tt.want) {
				t.Errorf("Find() = %v; want %v", pids(got), tt.want)
			}
		})
	}
	_, err := Target{Dirs: watch, Marks: []string{"/nowhere"}, ProcRoot: proc}.Find()
	if err == nil || !strings.Contains(err.Error(), "/nowhere") {
		t.Errorf("Find() with a marker the agent does not mount = %v; want an error naming it", err)
	}
}
