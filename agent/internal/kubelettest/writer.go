// Package kubelettest writes a Secret volume exactly as the kubelet's atomic
// writer (k8s.io/kubernetes pkg/volume/util/atomic_writer.go) does, so that
// the agent's tests and benchmark see the same names, permissions and event
// sequence as in a pod.
//
// The sequence of one Write:
//
//  1. a new timestamped directory "..2006_01_02_15_04_05.<random>" (0755),
//  2. the payload written into it (files 0644, the Secret volume's default
//     mode),
//  3. a symlink "..data_tmp" pointing at it,
//  4. "..data_tmp" renamed over "..data" (the atomic swap),
//  5. user-visible symlinks "key -> ..data/key" for new top-level names,
//  6. user-visible names no longer in the payload removed,
//  7. the previous timestamped directory removed.
package kubelettest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

const (
	dataDirName    = "..data"
	newDataDirName = "..data_tmp"

	// FileMode is a Secret volume's defaultMode (0644).
	FileMode os.FileMode = 0o644
)

// Writer projects payloads into Dir. It is not safe for concurrent use, like
// the kubelet's.
type Writer struct {
	Dir string
	// Swapped is when the last Write began to rename "..data_tmp" over
	// "..data", the moment the new content becomes visible: the benchmark
	// measures the reload latency from it. (Taken before the rename, so
	// that a writer descheduled after it cannot make the latency look
	// shorter.)
	Swapped time.Time
}

// New returns a Writer for dir, creating dir (0755) if needed, as the kubelet
// does before the first write.
func New(dir string) (*Writer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create volume dir %s: %w", dir, err)
	}
	return &Writer{Dir: dir}, nil
}

// Write projects payload (file name to content) like the kubelet: nothing
// happens when the payload equals what is on disk.
func (w *Writer) Write(payload map[string][]byte) error {
	return w.write(payload, false)
}

// Swap projects payload even when it equals what is on disk: a full swap of
// "..data" with identical content, which the agent must ignore.
func (w *Writer) Swap(payload map[string][]byte) error {
	return w.write(payload, true)
}

// WriteStrings is Write for string contents.
func (w *Writer) WriteStrings(payload map[string]string) error {
	p := make(map[string][]byte, len(payload))
	for k, v := range payload {
		p[k] = []byte(v)
	}
	return w.Write(p)
}

func (w *Writer) write(payload map[string][]byte, force bool) error {
	for name := range payload {
		if name == "" || filepath.IsAbs(name) || strings.HasPrefix(name, "..") || strings.Contains(name, "/../") {
			return fmt.Errorf("invalid payload path %q", name)
		}
	}
	dataDirPath := filepath.Join(w.Dir, dataDirName)
	oldTsDir, err := os.Readlink(dataDirPath)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("read link %s: %w", dataDirPath, err)
	}
	oldTsPath := ""
	var toRemove []string
	if oldTsDir != "" {
		oldTsPath = filepath.Join(w.Dir, oldTsDir)
		toRemove, err = pathsToRemove(payload, oldTsPath)
		if err != nil {
			return err
		}
		if !force && len(toRemove) == 0 && !changed(payload, oldTsPath) {
			return nil
		}
	}

	// (1) The kubelet uses os.MkdirTemp with this prefix, then chmods 0755
	// whatever the umask.
	tsDir, err := os.MkdirTemp(w.Dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return fmt.Errorf("create timestamped dir: %w", err)
	}
	if err := os.Chmod(tsDir, 0o755); err != nil {
		return fmt.Errorf("chmod %s: %w", tsDir, err)
	}
	// (2)
	for name, data := range payload {
		full := filepath.Join(tsDir, name)
		if err := os.MkdirAll(filepath.Dir(full), os.ModePerm); err != nil {
			return fmt.Errorf("create dir for %s: %w", name, err)
		}
		if err := os.WriteFile(full, data, FileMode); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
		if err := os.Chmod(full, FileMode); err != nil {
			return fmt.Errorf("chmod %s: %w", name, err)
		}
	}
	// (3)
	newDataDirPath := filepath.Join(w.Dir, newDataDirName)
	if err := os.Symlink(filepath.Base(tsDir), newDataDirPath); err != nil {
		os.RemoveAll(tsDir)
		return fmt.Errorf("symlink %s: %w", newDataDirPath, err)
	}
	// (4)
	w.Swapped = time.Now()
	if err := os.Rename(newDataDirPath, dataDirPath); err != nil {
		os.Remove(newDataDirPath)
		os.RemoveAll(tsDir)
		return fmt.Errorf("rename %s: %w", newDataDirPath, err)
	}
	// (5)
	for name := range payload {
		top := strings.SplitN(name, "/", 2)[0]
		visible := filepath.Join(w.Dir, top)
		if _, err := os.Readlink(visible); err != nil && os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join(dataDirName, top), visible); err != nil {
				return fmt.Errorf("symlink %s: %w", visible, err)
			}
		}
	}
	// (6)
	for _, p := range toRemove {
		if strings.Contains(p, "/") {
			continue
		}
		if err := os.Remove(filepath.Join(w.Dir, p)); err != nil {
			return fmt.Errorf("remove old path %s: %w", p, err)
		}
	}
	// (7)
	if oldTsPath != "" {
		if err := os.RemoveAll(oldTsPath); err != nil {
			return fmt.Errorf("remove old dir %s: %w", oldTsPath, err)
		}
	}
	return nil
}

func changed(payload map[string][]byte, oldTsPath string) bool {
	for name, data := range payload {
		old, err := os.ReadFile(filepath.Join(oldTsPath, name))
		if err != nil || !bytes.Equal(old, data) {
			return true
		}
	}
	return false
}

// pathsToRemove lists the paths of the old version that are not in payload
// (nor parents of a payload path).
func pathsToRemove(payload map[string][]byte, oldTsPath string) ([]string, error) {
	keep := map[string]bool{}
	for name := range payload {
		for p := name; p != "." && p != ""; p = filepath.Dir(p) {
			keep[p] = true
		}
	}
	var out []string
	err := filepath.Walk(oldTsPath, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(oldTsPath, path)
		if rel != "." && !keep[rel] {
			out = append(out, rel)
		}
		return nil
	})
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("walk %s: %w", oldTsPath, err)
	}
	sort.Strings(out)
	return out, nil
}
