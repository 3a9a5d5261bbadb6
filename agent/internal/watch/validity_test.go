package watch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/k8secrets/k8secrets/agent/internal/metrics"
)

// notYet is content valid from at on, like a certificate ahead of the clock.
type notYet struct{ at time.Time }

func (e *notYet) Error() string      { return "not valid before " + e.at.Format(time.RFC3339Nano) }
func (e *notYet) RetryAt() time.Time { return e.at }

// validFrom refuses content whose "notbefore" file (Unix nanoseconds) is
// in the future, saying when it becomes valid.
func validFrom(f map[string][]byte) error {
	var ns int64
	if _, err := fmt.Sscan(string(f["notbefore"]), &ns); err != nil {
		return nil
	}
	if at := time.Unix(0, ns); time.Now().Before(at) {
		return &notYet{at: at}
	}
	return nil
}

// TestRefusedUntilNotBefore: content refused because it is not valid yet is
// reloaded once the clock reaches its validity, with no further write; the
// gauge of refused content follows.
func TestRefusedUntilNotBefore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	vol := newVolume(t, dir, map[string]string{"notbefore": "0"})
	m := metrics.New("test")
	w, changes := startWatcher(t, Options{Dirs: []string{dir}, Validate: validFrom, Metrics: m})
	at := time.Now().Add(2 * time.Second)
	if err := vol.WriteStrings(map[string]string{"notbefore": fmt.Sprint(at.UnixNano())}); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)
	// The reloader asks now: refused (the clock is before at, as the
	// watcher judged it before notifying).
	if err := w.Invalid(); err == nil {
		if time.Now().Before(at) {
			t.Fatal("Invalid() = nil for content not valid yet")
		}
		t.Skip("the machine is too slow to ask before the content became valid")
	}
	if got := metric(m, `k8secrets_agent_content_refused{path="`+dir+`"}`); got != "1" {
		t.Errorf("content_refused = %s; want 1", got)
	}
	// At NotBefore, without another write: a change, and the gate lets it
	// through.
	expectChange(t, changes, dir)
	if time.Now().Before(at) {
		t.Errorf("change reported before the content was valid")
	}
	if err := w.Invalid(); err != nil {
		t.Errorf("Invalid() = %v after NotBefore; want nil", err)
	}
	if got := metric(m, `k8secrets_agent_content_refused{path="`+dir+`"}`); got != "0" {
		t.Errorf("content_refused = %s; want 0", got)
	}
	expectNone(t, changes)
}

// TestRefusedRevalidatedOnResync: content refused for a reason with no known
// end is judged again on resync, and reloaded when it passes.
func TestRefusedRevalidatedOnResync(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	vol := newVolume(t, dir, map[string]string{"tls.crt": "v1"})
	var refuse atomic.Bool
	bad := errors.New("not trusted yet")
	w, changes := startWatcher(t, Options{Dirs: []string{dir}, ResyncPeriod: 50 * time.Millisecond, Validate: func(map[string][]byte) error {
		if refuse.Load() {
			return bad
		}
		return nil
	}})
	refuse.Store(true)
	if err := vol.WriteStrings(map[string]string{"tls.crt": "v2"}); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)
	if err := w.Invalid(); !errors.Is(err, bad) {
		t.Fatalf("Invalid() = %v; want %v", err, bad)
	}
	expectNone(t, changes) // resyncs judge it again, still refused
	refuse.Store(false)
	expectChange(t, changes, dir)
	if err := w.Invalid(); err != nil {
		t.Errorf("Invalid() = %v; want nil", err)
	}
}

// TestBaselineBecomingValidIsNotReloaded: content the app read at its start
// is not reloaded when it becomes valid: the app already has it.
func TestBaselineBecomingValidIsNotReloaded(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	at := time.Now().Add(200 * time.Millisecond)
	newVolume(t, dir, map[string]string{"notbefore": fmt.Sprint(at.UnixNano())})
	_, changes := startWatcher(t, Options{Dirs: []string{dir}, Validate: validFrom})
	time.Sleep(time.Until(at))
	expectNone(t, changes)
}

// TestRefusalIsPerDirectory: refused content in one directory does not
// block the reload of a valid change in another; a change that is refused
// alone is.
func TestRefusalIsPerDirectory(t *testing.T) {
	root := t.TempDir()
	a, b := filepath.Join(root, "a"), filepath.Join(root, "b")
	va := newVolume(t, a, map[string]string{"tls.crt": "good"})
	vb := newVolume(t, b, map[string]string{"password": "1"})
	bad := errors.New("bad pair")
	m := metrics.New("test")
	w, changes := startWatcher(t, Options{Dirs: []string{a, b}, Metrics: m, Validate: func(f map[string][]byte) error {
		if c, ok := f["tls.crt"]; ok && string(c) != "good" {
			return bad
		}
		return nil
	}})
	if err := va.WriteStrings(map[string]string{"tls.crt": "broken"}); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, a)
	if err := w.Invalid(); !errors.Is(err, bad) {
		t.Fatalf("Invalid() after a refused change of %s = %v; want %v", a, err, bad)
	}
	if err := vb.WriteStrings(map[string]string{"password": "2"}); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, b)
	if err := w.Invalid(); err != nil {
		t.Fatalf("Invalid() after a valid change of %s while %s is refused = %v; want nil", b, a, err)
	}
	if got := metric(m, "k8secrets_agent_reloads_refused_total"); got != "1" {
		t.Errorf("reloads_refused_total = %s; want 1", got)
	}
	// What the app loaded: b's new version, a's version of the start.
	w.Reloaded()
	out := exposition(m)
	if !strings.Contains(out, `k8secrets_agent_loaded_info{path="`+b+`",version="`) || strings.Count(out, "k8secrets_agent_loaded_info{") != 2 {
		t.Errorf("loaded_info series of %s and %s missing:\n%s", a, b, out)
	}
	// Fixing a reloads it.
	if err := va.WriteStrings(map[string]string{"tls.crt": "good"}); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, a)
	if err := w.Invalid(); err != nil {
		t.Errorf("Invalid() after fixing %s = %v; want nil", a, err)
	}
}

// TestLoadedInfoIsTheDataTarget: the version of a kubelet volume is the
// name of the directory "..data" points at.
func TestLoadedInfoIsTheDataTarget(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "secret")
	newVolume(t, dir, map[string]string{"password": "1"})
	target, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New("test")
	startWatcher(t, Options{Dirs: []string{dir}, Metrics: m})
	want := `k8secrets_agent_loaded_info{path="` + dir + `",version="` + filepath.Base(target) + `",content_id=""} 1`
	if out := exposition(m); !strings.Contains(out, want) {
		t.Errorf("exposition lacks %q:\n%s", want, out)
	}
}

// TestPlainDirectoryConfined: in a plain directory, a symlink out of it is
// not followed, one inside it is, and more than MaxPlainBytes is an error.
func TestPlainDirectoryConfined(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "plain")
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(p, s string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "outside"), "not the app's")
	write(filepath.Join(dir, "sub", "key"), "k")
	if err := os.Symlink("../outside", filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "outside"), filepath.Join(dir, "escape-abs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/key", filepath.Join(dir, "inside")); err != nil {
		t.Fatal(err)
	}
	snap, err := Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := snap.Files["escape"]; ok {
		t.Error("Read followed a relative symlink out of the directory")
	}
	if _, ok := snap.Files["escape-abs"]; ok {
		t.Error("Read followed an absolute symlink out of the directory")
	}
	if string(snap.Files["inside"]) != "k" || string(snap.Files["sub/key"]) != "k" {
		t.Errorf("Read() files = %v; want inside and sub/key", keys(snap.Files))
	}
	if strings.Join(snap.Outside, ",") != "escape,escape-abs" {
		t.Errorf("Outside = %q; want escape, escape-abs", snap.Outside)
	}
	if !strings.HasPrefix(snap.Version, "sha256:") {
		t.Errorf("Version of a plain directory = %q; want sha256:...", snap.Version)
	}

	big := make([]byte, MaxPlainBytes/2+1)
	write(filepath.Join(dir, "big1"), string(big))
	if _, err := Read(dir); err != nil {
		t.Fatalf("Read() of half the cap = %v", err)
	}
	write(filepath.Join(dir, "big2"), string(big))
	if _, err := Read(dir); err == nil || !strings.Contains(err.Error(), "more than 8 MiB") {
		t.Errorf("Read() beyond the cap = %v; want an error naming the cap", err)
	}
}

func keys(m map[string][]byte) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}

func exposition(m *metrics.Agent) string {
	var b strings.Builder
	m.WritePrometheus(&b)
	return b.String()
}

// metric is the value of the series named exactly so, or "".
func metric(m *metrics.Agent, series string) string {
	for _, line := range strings.Split(exposition(m), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}
