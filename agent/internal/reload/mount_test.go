package reload

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestWatchedVolumes(t *testing.T) {
	dir := t.TempDir()
	table := filepath.Join(dir, "mountinfo")
	// The root, a Secret volume at a path with a space, a second tmpfs
	// stacked on the same point later (it hides the first), and a bind
	// of a subdirectory of a disk.
	err := os.WriteFile(table, []byte(`1 0 0:50 / / rw - overlay overlay rw
2 1 0:60 / /run/my\040secret rw - tmpfs tmpfs rw
3 1 0:61 / /run/stacked rw - tmpfs tmpfs rw
4 3 0:62 / /run/stacked rw - tmpfs tmpfs rw
5 1 8:1 /var/lib/kubelet/pods/x/volumes/y /data rw shared:1 - ext4 /dev/sda1 rw
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	mounts, err := readMounts(table)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dir  string
		want volume
	}{
		{"/run/my secret", volume{"0:60", "/"}},
		{"/run/my secret/sub/", volume{"0:60", "/sub"}},
		{"/run/stacked", volume{"0:62", "/"}},
		{"/data/certs", volume{"8:1", "/var/lib/kubelet/pods/x/volumes/y/certs"}},
		{"/etc", volume{"0:50", "/etc"}},
	}
	for _, tt := range tests {
		got := watchedVolumes(mounts, []string{tt.dir})
		if !slices.Equal(got, []volume{tt.want}) {
			t.Errorf("watchedVolumes(%q) = %v; want %v", tt.dir, got, tt.want)
		}
	}
	// A container that mounts the volume's parent sees it; one that mounts
	// a sibling does not.
	vols := []volume{{"8:1", "/var/lib/kubelet/pods/x/volumes/y/certs"}}
	for _, tt := range []struct {
		root string
		want bool
	}{{"/var/lib/kubelet/pods/x/volumes/y", true}, {"/var/lib/kubelet/pods/x/volumes/y/certs/a", true}, {"/var/lib/kubelet/pods/x/volumes/z", false}, {"/var/lib/kubelet/pods/x/volumes/y2", false}} {
		if got := holding([]mount{{id: "9", dev: "8:1", root: tt.root}}, vols) != ""; got != tt.want {
			t.Errorf("a container mounting %s holds %v: %v; want %v", tt.root, vols, got, tt.want)
		}
	}
}
