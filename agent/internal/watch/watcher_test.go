package watch

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/k8secrets/k8secrets/agent/internal/kubelettest"
)

// quiet is how long a test waits to be sure that no change is reported.
const quiet = 300 * time.Millisecond

func startWatcher(t *testing.T, opts Options) (*Watcher, <-chan string) {
	t.Helper()
	changes := make(chan string, 100)
	opts.OnChange = func(dir string) { changes <- dir }
	w := New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run() = %v", err)
		}
		if w.Alive() {
			t.Error("Alive() = true after Run returned")
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for !w.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("watcher not ready after 5s")
		}
		time.Sleep(time.Millisecond)
	}
	if !w.Alive() {
		t.Fatal("Alive() = false while running")
	}
	return w, changes
}

func expectChange(t *testing.T, changes <-chan string, dir string) {
	t.Helper()
	select {
	case got := <-changes:
		if got != dir {
			t.Fatalf("change in %s; want %s", got, dir)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no change reported for %s", dir)
	}
}

func expectNone(t *testing.T, changes <-chan string) {
	t.Helper()
	select {
	case got := <-changes:
		t.Fatalf("unexpected change in %s", got)
	case <-time.After(quiet):
	}
}

func newVolume(t *testing.T, dir string, payload map[string]string) *kubelettest.Writer {
	t.Helper()
	w, err := kubelettest.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if payload != nil {
		if err := w.WriteStrings(payload); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

func TestSingleUpdate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	vol := newVolume(t, dir, map[string]string{"password": "one"})
	_, changes := startWatcher(t, Options{Dirs: []string{dir}})
	expectNone(t, changes) // the first digest is the baseline
	if err := vol.WriteStrings(map[string]string{"password": "two"}); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)
	expectNone(t, changes) // the rest of the kubelet's sequence is not a change
}

func TestUnchangedRewrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	vol := newVolume(t, dir, map[string]string{"password": "one"})
	_, changes := startWatcher(t, Options{Dirs: []string{dir}})
	for range 3 {
		if err := vol.Swap(map[string][]byte{"password": []byte("one")}); err != nil {
			t.Fatal(err)
		}
	}
	expectNone(t, changes)
}

func TestDirectoryMissingAtStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mounts", "db-creds")
	w, changes := startWatcher(t, Options{Dirs: []string{dir}})
	if !w.Ready() {
		t.Fatal("not ready with a missing directory")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	expectNone(t, changes) // empty: nothing to reload into
	newVolume(t, dir, map[string]string{"password": "one"})
	expectChange(t, changes, dir)
	vol := &kubelettest.Writer{Dir: dir}
	if err := vol.WriteStrings(map[string]string{"password": "two"}); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)
}

// removeVolume removes dir at once, as an unmount does: renamed away, then
// deleted. (os.RemoveAll on dir itself would show a half-deleted volume.)
func removeVolume(t *testing.T, dir string) {
	t.Helper()
	gone := dir + ".removed"
	if err := os.Rename(dir, gone); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(gone); err != nil {
		t.Fatal(err)
	}
}

func TestDirectoryDeletedAndRecreated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	newVolume(t, dir, map[string]string{"password": "one"})
	_, changes := startWatcher(t, Options{Dirs: []string{dir}})

	removeVolume(t, dir)
	expectNone(t, changes) // a vanished directory is not content to reload
	// Back with the same content: the app already has it.
	vol := newVolume(t, dir, map[string]string{"password": "one"})
	expectNone(t, changes)
	// And the watch works on the new directory.
	if err := vol.WriteStrings(map[string]string{"password": "two"}); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)

	// Removed and back with new content.
	removeVolume(t, dir)
	time.Sleep(50 * time.Millisecond)
	newVolume(t, dir, map[string]string{"password": "three"})
	expectChange(t, changes, dir)
}

func TestResyncFindsLostEvents(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	newVolume(t, dir, map[string]string{"password": "one"})
	_, changes := startWatcher(t, Options{Dirs: []string{dir}, ResyncPeriod: 100 * time.Millisecond})
	// Change the file inside the timestamped directory: no event reaches
	// the watched directory, as if inotify had lost it.
	ts, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ts, "password"), []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)
}

func TestPlainDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, changes := startWatcher(t, Options{Dirs: []string{dir}})
	if err := os.WriteFile(filepath.Join(dir, "config"), []byte("b"), 0o644); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)
}

func TestInvalidContent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	vol := newVolume(t, dir, map[string]string{"tls.crt": "good", "tls.key": "good"})
	bad := errors.New("bad pair")
	w, changes := startWatcher(t, Options{Dirs: []string{dir}, Validate: func(f map[string][]byte) error {
		if string(f["tls.crt"]) != "good" {
			return bad
		}
		return nil
	}})
	if err := w.Invalid(); err != nil {
		t.Fatalf("Invalid() = %v; want nil", err)
	}
	if err := vol.WriteStrings(map[string]string{"tls.crt": "broken", "tls.key": "good"}); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)
	if err := w.Invalid(); !errors.Is(err, bad) {
		t.Fatalf("Invalid() = %v; want %v", err, bad)
	}
	if err := vol.WriteStrings(map[string]string{"tls.crt": "good", "tls.key": "good"}); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)
	if err := w.Invalid(); err != nil {
		t.Fatalf("Invalid() = %v; want nil", err)
	}
}

func TestDigest(t *testing.T) {
	tests := []struct {
		name string
		a, b map[string][]byte
		same bool
	}{
		{"equal", map[string][]byte{"a": []byte("1"), "b": []byte("2")}, map[string][]byte{"b": []byte("2"), "a": []byte("1")}, true},
		{"content", map[string][]byte{"a": []byte("1")}, map[string][]byte{"a": []byte("2")}, false},
		{"name", map[string][]byte{"a": []byte("1")}, map[string][]byte{"b": []byte("1")}, false},
		{"boundary", map[string][]byte{"ab": []byte("c")}, map[string][]byte{"a": []byte("bc")}, false},
		{"empty vs none", map[string][]byte{}, map[string][]byte{"a": nil}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Digest(tt.a) == Digest(tt.b); got != tt.same {
				t.Errorf("Digest(a) == Digest(b) is %v; want %v", got, tt.same)
			}
		})
	}
}

func TestReadKubeletVolume(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	vol := newVolume(t, dir, nil)
	if err := vol.Write(map[string][]byte{"a": []byte("1"), "nested/b": []byte("2")}); err != nil {
		t.Fatal(err)
	}
	snap, err := Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Present || len(snap.Files) != 2 || string(snap.Files["nested/b"]) != "2" {
		t.Errorf("Read() = present %v, %d files; want 2 files with nested/b", snap.Present, len(snap.Files))
	}
	missing, err := Read(filepath.Join(dir, "nope"))
	if err != nil || missing.Present {
		t.Errorf("Read(missing) = present %v, %v; want absent, nil", missing.Present, err)
	}
}

// TestNewKeyWaitsForItsLink swaps in a version with a new key but holds
// back its user-visible link, which the kubelet creates just after the
// swap: the change counts only once the app can open the new file.
func TestNewKeyWaitsForItsLink(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	newVolume(t, dir, map[string]string{"user": "a"})
	_, changes := startWatcher(t, Options{Dirs: []string{dir}})

	ts := filepath.Join(dir, "..2026_11_27_12_00_00.123456789")
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"user": "a", "password": "b"} {
		if err := os.WriteFile(filepath.Join(ts, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	expectNone(t, changes)
	if err := os.Symlink("..data/password", filepath.Join(dir, "password")); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)
}
