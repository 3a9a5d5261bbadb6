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
}

// Read reads dir as the app would see it. In a kubelet volume it reads the
// directory "..data" points at, so that every file comes from the same
// version even if a swap happens meanwhile (it retries if the version it was
// reading is removed under it); in a plain directory it follows symlinks.
// Names beginning with ".." are the kubelet's own and are skipped.
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
	if target, err := os.Readlink(filepath.Join(dir, dataDirName)); err == nil {
		if !filepath.IsAbs(target) {
			target = filepath.Join(dir, target)
		}
		root, kubelet = target, true
	}
	files := map[string][]byte{}
	if err := readTree(root, "", 0, files); err != nil {
		return Snapshot{}, err
	}
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
	return Snapshot{Present: true, Kubelet: kubelet, Linked: linked, Digest: Digest(files), Files: files}, nil
}

func readTree(root, rel string, depth int, files map[string][]byte) error {
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
		fi, err := os.Stat(full)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && e.Type()&fs.ModeSymlink != 0 {
				// A dangling user-visible symlink: in a kubelet volume the
				// link is created after the swap and removed with its key.
				continue
			}
			return fmt.Errorf("stat %s: %w", name, err)
		}
		if fi.IsDir() {
			if err := readTree(root, name, depth+1, files); err != nil {
				return err
			}
			continue
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		data, err := os.ReadFile(full)
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
