package watch

import (
	"os"
	"path/filepath"
	"time"
)

// Changed returns when the newest content of the watched directories
// appeared, as their files say: in a kubelet volume the time of the
// "..data" link (the kubelet creates it just before the swap), in a plain
// directory the newest modification time of the directory and its files.
// It is zero before the first reading. The reloader compares it with the
// app's start time: a process started later has read the content, one
// started earlier has not.
func (w *Watcher) Changed() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	var t time.Time
	for _, d := range w.dirs {
		if d.changed.After(t) {
			t = d.changed
		}
	}
	return t
}

// contentTime is the time snap's content appeared in dir (see Changed).
func contentTime(dir string, snap Snapshot) time.Time {
	if snap.Kubelet {
		if fi, err := os.Lstat(filepath.Join(dir, dataDirName)); err == nil {
			return fi.ModTime()
		}
	}
	var t time.Time
	if fi, err := os.Stat(dir); err == nil {
		t = fi.ModTime()
	}
	for name := range snap.Files {
		if fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(name))); err == nil && fi.ModTime().After(t) {
			t = fi.ModTime()
		}
	}
	return t
}
