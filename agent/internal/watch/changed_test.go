package watch

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestChanged: the content time is the "..data" link's time in a kubelet
// volume, set at the first reading (the baseline) and moved by a swap; the
// baseline callback comes once, after the first reading.
func TestChanged(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	vol := newVolume(t, dir, map[string]string{"password": "one"})
	linkTime := func() time.Time {
		fi, err := os.Lstat(filepath.Join(dir, "..data"))
		if err != nil {
			t.Fatal(err)
		}
		return fi.ModTime()
	}
	baseline := make(chan struct{}, 2)
	w, changes := startWatcher(t, Options{Dirs: []string{dir}, OnBaseline: func() { baseline <- struct{}{} }})
	select {
	case <-baseline:
		if got, want := w.Changed(), linkTime(); !got.Equal(want) {
			t.Errorf("Changed() at the baseline = %v; want the ..data link's time %v", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no baseline callback")
	}
	first := w.Changed()
	time.Sleep(10 * time.Millisecond) // a later mtime for the next link
	if err := vol.WriteStrings(map[string]string{"password": "two"}); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)
	if got, want := w.Changed(), linkTime(); !got.Equal(want) || !got.After(first) {
		t.Errorf("Changed() after a swap = %v; want the new ..data link's time %v, after %v", got, want, first)
	}
	if len(baseline) != 0 {
		t.Error("OnBaseline called more than once")
	}
}
