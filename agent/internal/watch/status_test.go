package watch

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/k8secrets/k8secrets/agent/internal/metrics"
	"github.com/k8secrets/k8secrets/internal/contentid"
)

// idOf is the id the Job computes over a Secret's data.
func idOf(t *testing.T, key string, data map[string]string) string {
	t.Helper()
	files := map[string][]byte{}
	for k, v := range data {
		files[k] = []byte(v)
	}
	id, err := contentid.Of(key, files)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newKey(t *testing.T) string {
	t.Helper()
	key, err := contentid.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// only is the status of the single watched directory.
func only(t *testing.T, w *Watcher) DirStatus {
	t.Helper()
	s := w.Status()
	if len(s) != 1 {
		t.Fatalf("Status() has %d directories; want 1", len(s))
	}
	return s[0]
}

// checkStatus compares the fields that do not hold a time.
func checkStatus(t *testing.T, what string, got DirStatus, loaded, seen, state, errPart string) {
	t.Helper()
	if got.Loaded != loaded || got.Seen != seen || got.State != state {
		t.Errorf("%s: Status() = loaded %.12s, seen %.12s, state %s; want loaded %.12s, seen %.12s, state %s", what, got.Loaded, got.Seen, got.State, loaded, seen, state)
	}
	if errPart == "" && got.Error != "" || !strings.Contains(got.Error, errPart) {
		t.Errorf("%s: error %q; want %q", what, got.Error, errPart)
	}
}

// TestStatusStates walks one directory through every state: the start-up
// baseline (loaded), new content (pending), a failed reload of it (failed,
// the old content still loaded), newer content during the retries
// (pending), a successful reload (loaded), and content refused by
// validation (refused, a certificate not valid yet). Every id is the one
// the Job computes over the Secret's data with the same key.
func TestStatusStates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	one := map[string]string{"password": "one", "username": "app"}
	vol := newVolume(t, dir, one)
	key := newKey(t)
	m := metrics.New("test")
	w, changes := startWatcher(t, Options{Dirs: []string{dir}, Key: key, Validate: validFrom, Metrics: m})
	if !w.Keyed() {
		t.Fatal("Keyed() = false with a valid key")
	}

	s := only(t, w)
	checkStatus(t, "baseline", s, idOf(t, key, one), idOf(t, key, one), StateLoaded, "")
	if s.Path != dir || s.LoadedAt == nil || s.LastAttempt != nil {
		t.Errorf("baseline: path %s, loadedAt %v, lastAttempt %v; want %s, the time of the first reading, none", s.Path, s.LoadedAt, s.LastAttempt, dir)
	}
	loadedInfo := func(version string, data map[string]string) string {
		return metric(m, `k8secrets_agent_loaded_info{path="`+dir+`",version="`+version+`",content_id="`+idOf(t, key, data)+`"}`)
	}
	if got := loadedInfo(versionOf(t, dir), one); got != "1" {
		t.Errorf("loaded_info of the baseline = %q; want 1:\n%s", got, exposition(m))
	}

	two := map[string]string{"password": "two", "username": "app"}
	if err := vol.WriteStrings(two); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)
	checkStatus(t, "new content", only(t, w), idOf(t, key, one), idOf(t, key, two), StatePending, "")

	// The reloader's attempt: the gate lets it through, the app fails.
	if err := w.Invalid(); err != nil {
		t.Fatal(err)
	}
	w.Failed(errors.New("POST http://127.0.0.1:8080/-/reload: status 500"))
	s = only(t, w)
	checkStatus(t, "reload failed", s, idOf(t, key, one), idOf(t, key, two), StateFailed, "status 500")
	if s.LastAttempt == nil {
		t.Error("reload failed: no lastAttempt")
	}

	// Newer content while retrying: its reload has not been tried.
	three := map[string]string{"password": "three", "username": "app"}
	if err := vol.WriteStrings(three); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)
	v3 := versionOf(t, dir)
	checkStatus(t, "newer content during retries", only(t, w), idOf(t, key, one), idOf(t, key, three), StatePending, "")

	// The reload the gate lets through reads the third content; the
	// fourth arrives while it runs: only the third is loaded.
	if err := w.Invalid(); err != nil {
		t.Fatal(err)
	}
	four := map[string]string{"password": "four", "username": "app"}
	if err := vol.WriteStrings(four); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)
	w.Reloaded()
	checkStatus(t, "content newer than the reload", only(t, w), idOf(t, key, three), idOf(t, key, four), StatePending, "")
	if got := loadedInfo(v3, three); got != "1" {
		t.Errorf("loaded_info after the reload of the third content = %q; want 1:\n%s", got, exposition(m))
	}

	three = four
	if err := w.Invalid(); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	w.Reloaded()
	s = only(t, w)
	checkStatus(t, "reloaded", s, idOf(t, key, three), idOf(t, key, three), StateLoaded, "")
	if s.LoadedAt == nil || s.LoadedAt.Before(before) {
		t.Errorf("reloaded: loadedAt %v; want the time of the success, after %v", s.LoadedAt, before)
	}
	if got := loadedInfo(versionOf(t, dir), three); got != "1" {
		t.Errorf("loaded_info after the reload = %q; want 1:\n%s", got, exposition(m))
	}
	if strings.Count(exposition(m), "k8secrets_agent_loaded_info{") != 1 {
		t.Errorf("more than one loaded_info series:\n%s", exposition(m))
	}

	// A certificate not valid yet: refused, the reload never made.
	ahead := map[string]string{"password": "three", "username": "app", "notbefore": fmt.Sprint(time.Now().Add(time.Hour).UnixNano())}
	if err := vol.WriteStrings(ahead); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, dir)
	if err := w.Invalid(); err == nil {
		t.Fatal("Invalid() = nil for content not valid yet")
	}
	s = only(t, w)
	checkStatus(t, "refused", s, idOf(t, key, three), idOf(t, key, ahead), StateRefused, "not valid before")
	if s.LastAttempt == nil {
		t.Error("refused: no lastAttempt")
	}
}

// versionOf is the loaded version of a kubelet volume: its "..data" target.
func versionOf(t *testing.T, dir string) string {
	t.Helper()
	snap, err := Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	return snap.Version
}

// TestStatusWithoutKey: without a key, or with one that is not a key, the
// ids are empty (nothing to compare, nothing to guess at) and the states
// still follow the content.
func TestStatusWithoutKey(t *testing.T) {
	for _, tt := range []struct{ name, key string }{{"no key", ""}, {"not a key", "s3cr3t"}} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "db-creds")
			vol := newVolume(t, dir, map[string]string{"password": "one"})
			m := metrics.New("test")
			w, changes := startWatcher(t, Options{Dirs: []string{dir}, Key: tt.key, Metrics: m})
			if w.Keyed() {
				t.Error("Keyed() = true")
			}
			checkStatus(t, "baseline", only(t, w), "", "", StateLoaded, "")
			if err := vol.WriteStrings(map[string]string{"password": "two"}); err != nil {
				t.Fatal(err)
			}
			expectChange(t, changes, dir)
			checkStatus(t, "new content", only(t, w), "", "", StatePending, "")
			if err := w.Invalid(); err != nil {
				t.Fatal(err)
			}
			w.Reloaded()
			checkStatus(t, "reloaded", only(t, w), "", "", StateLoaded, "")
			if out := exposition(m); !strings.Contains(out, `content_id=""} 1`) {
				t.Errorf("loaded_info has a content id without a key:\n%s", out)
			}
		})
	}
}

// TestStatusMissingAtStart: a directory the agent has never read is
// pending with no ids; its first content, which the app did not read at
// its start, is owed a reload.
func TestStatusMissingAtStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	key := newKey(t)
	w, changes := startWatcher(t, Options{Dirs: []string{dir}, Key: key})
	s := only(t, w)
	checkStatus(t, "missing", s, "", "", StatePending, "")
	if s.LoadedAt != nil {
		t.Errorf("missing: loadedAt %v; want none", s.LoadedAt)
	}
	one := map[string]string{"password": "one"}
	newVolume(t, dir, one)
	expectChange(t, changes, dir)
	checkStatus(t, "first content", only(t, w), "", idOf(t, key, one), StatePending, "")
}

// TestStatusStale: when the start-up check finds the app older than the
// content (it changed while the agent was down), the content the agent
// read at its start is not what the app has loaded: loaded is unknown
// ("") until the start-up reload succeeds, and a failure of it is failed.
func TestStatusStale(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db-creds")
	one := map[string]string{"password": "one"}
	newVolume(t, dir, one)
	key := newKey(t)
	m := metrics.New("test")
	w, _ := startWatcher(t, Options{Dirs: []string{dir}, Key: key, Metrics: m})
	w.Stale()
	if out := exposition(m); strings.Contains(out, "k8secrets_agent_loaded_info{") {
		t.Errorf("loaded_info of content the app has not loaded:\n%s", out)
	}
	s := only(t, w)
	checkStatus(t, "stale app", s, "", idOf(t, key, one), StatePending, "")
	if s.LoadedAt != nil {
		t.Errorf("stale app: loadedAt %v; want none", s.LoadedAt)
	}
	if err := w.Current(); err != nil {
		t.Fatal(err)
	}
	w.Failed(errors.New("signal app (pid 12): operation not permitted"))
	checkStatus(t, "start-up reload failed", only(t, w), "", idOf(t, key, one), StateFailed, "operation not permitted")
	if err := w.Current(); err != nil {
		t.Fatal(err)
	}
	w.Reloaded()
	checkStatus(t, "start-up reload", only(t, w), idOf(t, key, one), idOf(t, key, one), StateLoaded, "")
	if got := metric(m, `k8secrets_agent_loaded_info{path="`+dir+`",version="`+versionOf(t, dir)+`",content_id="`+idOf(t, key, one)+`"}`); got != "1" {
		t.Errorf("loaded_info after the start-up reload = %q; want 1:\n%s", got, exposition(m))
	}
}
