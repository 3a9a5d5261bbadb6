package watch

import (
	"time"

	"github.com/k8secrets/k8secrets/internal/contentid"
)

// The states of a directory in Status.
const (
	StateLoaded  = "loaded"  // the app has loaded what is on disk
	StatePending = "pending" // newer content is on disk; its reload has not finished
	StateFailed  = "failed"  // the last reload of the content on disk failed (retrying)
	StateRefused = "refused" // the content on disk is refused by validation
)

// DirStatus is what GET /status reports of one watched directory. Loaded
// and Seen are contentid.Of(key, files) over the directory's user-visible
// files (a Secret's keys), "" without a key: a keyed digest, never the
// data, and never an unkeyed hash of it.
type DirStatus struct {
	Path        string     `json:"path"`
	Loaded      string     `json:"loaded"`
	LoadedAt    *time.Time `json:"loadedAt,omitempty"`
	Seen        string     `json:"seen"`
	State       string     `json:"state"`
	Error       string     `json:"error,omitempty"`
	LastAttempt *time.Time `json:"lastAttempt,omitempty"`
}

// status is what a directory's Status derives from; guarded by w.mu. The
// contents are named by their digest (dirState.digest, unkeyed, never
// served), the keyed ids computed once per content.
type status struct {
	ids      map[string]string // digest -> keyed id, of the loaded and current content only
	unhashed map[string][]byte // files of the current content while its id is not computed yet
	gated    string            // digest the last reload the gate let through read
	loaded   string            // digest of what the app has loaded
	version  string            // its version (see Snapshot.Version)
	loadedAt time.Time
	attempt  string // digest the last failed reload attempt read
	err      error  // why it failed
	at       time.Time
}

// Keyed reports whether the watcher names content with a valid key.
func (w *Watcher) Keyed() bool { return w.opts.Key != "" }

// Status reports every directory, in the order of Options.Dirs.
func (w *Watcher) Status() []DirStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]DirStatus, 0, len(w.dirs))
	for _, d := range w.dirs {
		s := DirStatus{Path: d.path, Loaded: w.idOf(d, d.st.loaded), Seen: w.idOf(d, d.digest)}
		if !d.st.loadedAt.IsZero() {
			t := d.st.loadedAt
			s.LoadedAt = &t
		}
		if !d.st.at.IsZero() {
			t := d.st.at
			s.LastAttempt = &t
		}
		switch {
		case d.digest == "":
			s.State = StatePending // nothing read yet
		case d.digest == d.st.loaded:
			s.State = StateLoaded
			if d.invalid != nil {
				// What the app read at its start, refused since (expired).
				s.Error = d.invalid.Error()
			}
		case d.invalid != nil:
			s.State, s.Error = StateRefused, d.invalid.Error()
		case d.st.err != nil && d.st.attempt == d.digest:
			s.State, s.Error = StateFailed, d.st.err.Error()
		default:
			s.State = StatePending
		}
		out = append(out, s)
	}
	return out
}

// idOf is the keyed id of d's content with digest, or "" (no key, no such
// content); it computes the id of the current content if the watcher has
// not yet. w.mu held.
func (w *Watcher) idOf(d *dirState, digest string) string {
	if digest == "" || !w.Keyed() {
		return ""
	}
	if id, ok := d.st.ids[digest]; ok {
		return id
	}
	if digest != d.digest || d.st.unhashed == nil {
		return ""
	}
	id := w.hash(d.st.unhashed)
	w.remember(d, digest, id)
	return id
}

// hash names files with the key; "" without one.
func (w *Watcher) hash(files map[string][]byte) string {
	if !w.Keyed() {
		return ""
	}
	id, err := contentid.Of(w.opts.Key, files)
	if err != nil {
		// New checked the key: unreachable.
		return ""
	}
	return id
}

// remember keeps the id of d's content digest, and only those of the
// current, loaded and gated (being reloaded) contents. w.mu held.
func (w *Watcher) remember(d *dirState, digest, id string) {
	keep := func(k string) bool { return k == d.digest || k == d.st.loaded || k == d.st.gated }
	if !keep(digest) {
		return
	}
	if d.st.ids == nil {
		d.st.ids = map[string]string{}
	}
	d.st.ids[digest] = id
	for k := range d.st.ids {
		if !keep(k) {
			delete(d.st.ids, k)
		}
	}
	if digest == d.digest {
		d.st.unhashed = nil
	}
}

// seen records that d holds new content (files; its digest is d.digest);
// its id is computed later, by hashed. w.mu held.
func (w *Watcher) seen(d *dirState, files map[string][]byte) {
	if w.Keyed() {
		d.st.unhashed = files
	}
}

// hashed computes the id of d's new content after the reloader was
// notified, off its path: the reload need not wait for an HMAC.
func (w *Watcher) hashed(d *dirState, digest string, files map[string][]byte) {
	if !w.Keyed() {
		return
	}
	id := w.hash(files)
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := d.st.ids[digest]; ok {
		return
	}
	w.remember(d, digest, id)
	if digest == d.st.loaded {
		// Reloaded ran before the id existed: publish it now.
		w.publish(d)
	}
}

// baseline records what the app read at its start. w.mu held.
func (w *Watcher) baseline(d *dirState, files map[string][]byte) {
	d.st.gated, d.st.loaded, d.st.version, d.st.loadedAt = d.digest, d.digest, d.version, time.Now()
	w.remember(d, d.digest, w.hash(files))
	w.publish(d)
}

// loaded records that the reload the gate last let through succeeded.
// w.mu held.
func (w *Watcher) loaded(d *dirState, at time.Time) {
	d.st.loaded, d.st.version, d.st.loadedAt = d.st.gated, d.gated, at
	d.st.attempt, d.st.err, d.st.at = "", nil, at
	w.idOf(d, d.st.loaded) // hashed now if the watcher has not yet
	w.publish(d)
}

// publish sets the loaded_info series of d. w.mu held.
func (w *Watcher) publish(d *dirState) {
	id := ""
	if w.Keyed() {
		var ok bool
		if id, ok = d.st.ids[d.st.loaded]; !ok {
			// Being hashed: hashed publishes it.
			return
		}
	}
	w.opts.Metrics.Loaded(d.path, d.st.version, id)
}

// Stale records that the app started before the content the watcher read
// at its start (the start-up check): the app has not loaded it, and what it
// has loaded is unknown. The start-up reload, when it succeeds, loads it.
func (w *Watcher) Stale() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, d := range w.dirs {
		if d.st.loaded == d.digest {
			d.st.loaded, d.st.loadedAt = "", time.Time{}
			w.opts.Metrics.Unloaded(d.path)
		}
	}
}

// Failed records that a reload attempt failed with err: the directories
// whose content the gate let through and the app has not loaded are failed
// (for that content). err must name no Secret value.
func (w *Watcher) Failed(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	for _, d := range w.dirs {
		if d.st.gated != "" && d.st.gated != d.st.loaded {
			d.st.attempt, d.st.err, d.st.at = d.st.gated, err, now
		}
	}
}
