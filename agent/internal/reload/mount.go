package reload

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// volume is a mounted filesystem's subtree: its device (major:minor, as
// /proc/PID/mountinfo writes it) and a path from that filesystem's root.
// The kubelet gives every Secret volume a tmpfs of its own and bind-mounts
// it into each container that mounts the volume, so the device names the
// volume in every container, whatever path the container mounts it at.
type volume struct {
	dev  string
	path string
}

// mount is one line of /proc/PID/mountinfo.
type mount struct {
	id    string // unique to this mount: differs in every mount namespace
	dev   string
	root  string // the mounted subtree of the filesystem
	point string // where it is mounted, in the process's view
}

// readMounts parses a /proc/PID/mountinfo file: "ID PARENT MAJ:MIN ROOT
// POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS".
func readMounts(path string) ([]mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		out = append(out, mount{id: fields[0], dev: fields[2], root: unescape(fields[3]), point: unescape(fields[4])})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return out, nil
}

// unescape undoes mountinfo's octal escapes of space, tab, newline and
// backslash.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) && isOctal(s[i+1:i+4]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(s string) bool {
	if len(s) != 3 {
		return false
	}
	for i := range 3 {
		if s[i] < '0' || s[i] > '7' {
			return false
		}
	}
	return true
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	return path == dir || dir == "/" || strings.HasPrefix(path, dir+"/")
}

// watchedVolumes returns the volume each of dirs lies on, from the agent's
// own mount table: the mount whose point holds the directory most closely
// (the last one, where mounts are stacked on one point).
func watchedVolumes(mounts []mount, dirs []string) []volume {
	var out []volume
	for _, d := range dirs {
		d = filepath.Clean(d)
		if r, err := filepath.EvalSymlinks(d); err == nil {
			d = r
		}
		best := -1
		for i, m := range mounts {
			if within(d, m.point) && (best < 0 || len(m.point) >= len(mounts[best].point)) {
				best = i
			}
		}
		if best < 0 {
			continue
		}
		m := mounts[best]
		rel := strings.TrimPrefix(strings.TrimPrefix(d, m.point), "/")
		out = append(out, volume{dev: m.dev, path: filepath.Join(m.root, rel)})
	}
	return out
}

// holding returns the ID of the first mount of mounts that shows one of
// vols, or "": a process whose mount table has one sees the watched
// content. The ID is the same for every process of one mount namespace (a
// container) and differs between namespaces, even for the same volume.
func holding(mounts []mount, vols []volume) string {
	for _, m := range mounts {
		for _, v := range vols {
			// The process mounts the watched subtree, or a part of it.
			if m.dev == v.dev && (within(v.path, m.root) || within(m.root, v.path)) {
				return m.id
			}
		}
	}
	return ""
}
