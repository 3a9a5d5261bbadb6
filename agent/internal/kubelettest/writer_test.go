package kubelettest

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

func TestWriteLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	w, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteStrings(map[string]string{"user": "a", "password": "b"}); err != nil {
		t.Fatal(err)
	}
	first, _ := os.Readlink(filepath.Join(dir, "..data"))
	if !regexp.MustCompile(`^\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\d+$`).MatchString(first) {
		t.Errorf("..data -> %q; want a timestamped directory", first)
	}
	if fi, err := os.Stat(filepath.Join(dir, first)); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("timestamped dir mode = %v, %v; want 0755", fi.Mode().Perm(), err)
	}
	for _, k := range []string{"user", "password"} {
		link, err := os.Readlink(filepath.Join(dir, k))
		if err != nil || link != "..data/"+k {
			t.Errorf("%s -> %q, %v; want ..data/%s", k, link, err, k)
		}
		fi, err := os.Stat(filepath.Join(dir, first, k))
		if err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s mode = %v, %v; want 0644", k, fi.Mode().Perm(), err)
		}
	}

	// Unchanged payload: the kubelet writes nothing.
	if err := w.WriteStrings(map[string]string{"user": "a", "password": "b"}); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Readlink(filepath.Join(dir, "..data")); again != first {
		t.Errorf("unchanged Write swapped ..data to %q", again)
	}

	// A new version drops a key and removes the old directory.
	if err := w.WriteStrings(map[string]string{"user": "c"}); err != nil {
		t.Fatal(err)
	}
	second, _ := os.Readlink(filepath.Join(dir, "..data"))
	if second == first {
		t.Fatal("..data not swapped")
	}
	if _, err := os.Lstat(filepath.Join(dir, first)); !os.IsNotExist(err) {
		t.Errorf("old dir still there: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "password")); !os.IsNotExist(err) {
		t.Errorf("removed key still visible: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "..data_tmp")); !os.IsNotExist(err) {
		t.Errorf("..data_tmp left behind: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "user")); string(b) != "c" {
		t.Errorf("user = %q; want c", b)
	}

	// Swap forces a new version with the same content.
	if err := w.Swap(map[string][]byte{"user": []byte("c")}); err != nil {
		t.Fatal(err)
	}
	if third, _ := os.Readlink(filepath.Join(dir, "..data")); third == second {
		t.Error("Swap did not swap ..data")
	}
}
