package watch

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// dataDirName is the kubelet's symlink to the current timestamped directory.
const dataDirName = "..data"

// maxDepth bounds the walk of nested items (and symlink loops in plain
// directories).
const maxDepth = 8

// MaxPlainBytes caps what the agent reads of a plain (non-kubelet)
// directory. A kubelet volume is bounded by the API (a Secret holds at most
// 1 MiB); a plain directory could be anything, and the agent reads it whole
// into memory (its limit is 64 MiB) to hash it.
const MaxPlainBytes = 8 << 20

// Snapshot is one consistent reading of a watched directory.
type Snapshot struct {
	// Present is false when the directory does not exist, or is a kubelet
	// volume being torn down (its "..data" is gone).
	Present bool
	// Kubelet is true for a kubelet volume (it has "..data").
	Kubelet bool
	// Linked is false while a kubelet volume lacks the user-visible link
	// of one of its names: the kubelet creates them just after the swap,
	// and an app told to reload before would not find a new key.
	Linked bool
	// Digest is a SHA-256 over the sorted file names and their contents.
	Digest string
	// Files maps each file's path, relative to the directory, to its content.
	Files map[string][]byte
	// Version identifies the content: the kubelet's "..data" target name
	// (e.g. "..2026_11_30_22_00_00.1234567890"), or "sha256:" and the
	// first 12 hex digits of the digest for a plain directory.
	Version string
	// Outside lists the symlinks of a plain directory that point outside
	// it: they are not followed.
	Outside []string
}

// Read reads dir as the app would see it. In a kubelet volume it reads the
// directory "..data" points at, so that every file comes from the same
// version even if a swap happens meanwhile (it retries if the version it was
// reading is removed under it); in a plain directory it follows symlinks
// that stay inside the directory, and reads at most MaxPlainBytes. Names
// beginning with ".." are the kubelet's own and are skipped.
func Read(dir string) (Snapshot, error) {
	var lastErr error
	for range 5 {
		snap, err := read(dir)
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			return snap, err
		}
		lastErr = err
	}
	return Snapshot{}, lastErr
}

func read(dir string) (Snapshot, error) {
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Snapshot{}, nil
		}
		return Snapshot{}, fmt.Errorf("stat %s: %w", dir, err)
	}
	root := dir
	kubelet := false
	version := ""
	if target, err := os.Readlink(filepath.Join(dir, dataDirName)); err == nil {
		version = filepath.Base(target)
		if !filepath.IsAbs(target) {
			target = filepath.Join(dir, target)
		}
		root, kubelet = target, true
	}
	t := tree{files: map[string][]byte{}}
	if !kubelet {
		// Symlinks are followed only inside the directory (os.Root
		// refuses the others), and the size is capped.
		r, err := os.OpenRoot(dir)
		if err != nil {
			return Snapshot{}, fmt.Errorf("open %s: %w", dir, err)
		}
		defer r.Close()
		t.root, t.budget = r, MaxPlainBytes
	}
	if err := t.read(root, "", 0); err != nil {
		return Snapshot{}, err
	}
	files := t.files
	linked := true
	if kubelet {
		for name := range files {
			top, _, _ := strings.Cut(name, "/")
			if _, err := os.Lstat(filepath.Join(dir, top)); err != nil {
				linked = false
				break
			}
		}
	}
	digest := Digest(files)
	if version == "" {
		version = "sha256:" + digest[:12]
	}
	return Snapshot{Present: true, Kubelet: kubelet, Linked: linked, Digest: digest, Files: files, Version: version, Outside: t.outside}, nil
}

// tree is one reading of a directory tree.
type tree struct {
	files map[string][]byte
	// root, for a plain directory, confines the reading to it; budget is
	// what may still be read of it.
	root    *os.Root
	budget  int64
	outside []string
}

func (t *tree) read(root, rel string, depth int) error {
	files := t.files
	if depth > maxDepth {
		return fmt.Errorf("read %s: nested deeper than %d", filepath.Join(root, rel), maxDepth)
	}
	entries, err := os.ReadDir(filepath.Join(root, rel))
	if err != nil {
		return fmt.Errorf("read dir: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "..") {
			continue
		}
		name := filepath.Join(rel, e.Name())
		full := filepath.Join(root, name)
		var fi fs.FileInfo
		var err error
		if t.root != nil {
			fi, err = t.root.Stat(name)
			if err != nil && e.Type()&fs.ModeSymlink != 0 && !errors.Is(err, fs.ErrNotExist) {
				// A link out of the directory (os.Root says "path
				// escapes from parent"): not followed.
				t.outside = append(t.outside, filepath.ToSlash(name))
				continue
			}
		} else {
			fi, err = os.Stat(full)
		}
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && e.Type()&fs.ModeSymlink != 0 {
				// A dangling user-visible symlink: in a kubelet volume the
				// link is created after the swap and removed with its key.
				continue
			}
			return fmt.Errorf("stat %s: %w", name, err)
		}
		if fi.IsDir() {
			if err := t.read(root, name, depth+1); err != nil {
				return err
			}
			continue
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		var data []byte
		if t.root != nil {
			if fi.Size() > t.budget {
				return fmt.Errorf("read %s: the directory holds more than %d MiB; the agent reads whole directories: watch one that holds only the app's Secret files", name, MaxPlainBytes>>20)
			}
			data, err = t.root.ReadFile(name)
			t.budget -= int64(len(data))
			if err == nil && t.budget < 0 {
				return fmt.Errorf("read %s: the directory holds more than %d MiB; the agent reads whole directories: watch one that holds only the app's Secret files", name, MaxPlainBytes>>20)
			}
		} else {
			data, err = os.ReadFile(full)
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		files[filepath.ToSlash(name)] = data
	}
	return nil
}

// Digest hashes the sorted names and contents; lengths are included so
// that no two different sets of files hash the same input.
func Digest(files map[string][]byte) string {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	var n [8]byte
	for _, name := range names {
		binary.BigEndian.PutUint64(n[:], uint64(len(name)))
		h.Write(n[:])
		h.Write([]byte(name))
		binary.BigEndian.PutUint64(n[:], uint64(len(files[name])))
		h.Write(n[:])
		h.Write(files[name])
	}
	return hex.EncodeToString(h.Sum(nil))
}
