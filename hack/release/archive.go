package main

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// archiveFile is one file of an archive: Name inside it, Src on disk.
type archiveFile struct {
	Name, Src string
}

// writeArchive writes a tar.gz of files at dst, every entry owned by root and
// stamped mtime, so that one commit always gives the same bytes.
func writeArchive(dst string, files []archiveFile, mtime time.Time) error {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	for _, af := range files {
		st, err := os.Stat(af.Src)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: af.Name, Mode: int64(st.Mode().Perm()), Size: st.Size(), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return err
		}
		in, err := os.Open(af.Src)
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, in)
		in.Close()
		if err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	return f.Close()
}

// fileSHA256 is the hex sha256 of the file at path.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checksumsFile is the name, in dist/, of the sha256sum-format list of every
// archive and SBOM (`sha256sum -c checksums.txt` in dist/ checks them).
const checksumsFile = "checksums.txt"

// writeChecksums writes checksums.txt in dist for names (relative to dist).
func writeChecksums(dist string, names []string) error {
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		sum, err := fileSHA256(filepath.Join(dist, n))
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s  %s\n", sum, n)
	}
	return os.WriteFile(filepath.Join(dist, checksumsFile), []byte(b.String()), 0o644)
}

// readChecksums parses checksums.txt: name → hex sha256.
func readChecksums(dist string) (map[string]string, error) {
	f, err := os.Open(filepath.Join(dist, checksumsFile))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sums := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok || len(sum) != 64 {
			return nil, fmt.Errorf("%s: bad line %q", checksumsFile, sc.Text())
		}
		sums[name] = sum
	}
	return sums, sc.Err()
}
