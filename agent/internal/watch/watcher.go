// Package watch watches mounted Secret directories and reports when their
// content changes.
//
// It watches the directories, never the files: the kubelet swaps a "..data"
// symlink to a new timestamped directory and removes the old one, and a
// watch on a file would vanish with it. Any event on "..data" is a candidate
// change; the content is then read and hashed, and only a new digest counts.
// A directory that does not exist yet (or is removed) is waited for through
// a watch on its nearest existing parent, and every directory is rescanned
// on a period and after an inotify queue overflow, in case events were lost.
package watch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/k8secrets/k8secrets/agent/internal/metrics"
	"github.com/k8secrets/k8secrets/internal/contentid"
)

// heartbeat is how often the event loop proves it is alive; Alive reports
// false once it has been silent for staleAfter.
const (
	heartbeat  = 5 * time.Second
	staleAfter = 30 * time.Second
)

// unlinkedGrace is how long a kubelet volume may lack the link of a name
// before its content counts anyway; the kubelet links within microseconds.
const unlinkedGrace = 2 * time.Second

// Options configure a Watcher.
type Options struct {
	// Dirs are the directories to watch.
	Dirs []string
	// ResyncPeriod rescans every directory; 0 disables it.
	ResyncPeriod time.Duration
	// Validate, when set, checks new content before it may be reloaded
	// (the TLS pair check). It must not keep files.
	Validate func(files map[string][]byte) error
	// OnChange is called, from the watcher's goroutine, after a directory's
	// content changed. It must not block.
	OnChange func(dir string)
	Logger   *slog.Logger
	Metrics  *metrics.Agent

	// OnBaseline, when set, is called once, from the watcher's goroutine,
	// after the first reading of every directory: the reloader then checks
	// whether the content is newer than the app (see Changed).
	OnBaseline func()

	// Key, when a valid contentid key, names each content in Status and
	// in the loaded_info metric (contentid.Of); otherwise those ids are "".
	Key string
}

type dirState struct {
	path    string
	present bool
	seen    bool // read at least once while present
	kubelet bool // a kubelet volume: had "..data" when last read
	filled  bool // had files when last read
	// unlinked is when a reading first found a name without its link.
	unlinked time.Time
	digest   string // last content digest; kept while the directory is absent
	invalid  error  // validation result of the current content
	ino      uint64 // inode of the watched directory, to notice replacement
	version  string // version identifier of the current content
	files    map[string][]byte
	// retryAt is when refused content becomes valid by the clock alone
	// (a certificate's NotBefore ahead); zero if never.
	retryAt time.Time
	// dirty: the content changed since the gate last judged a reload.
	dirty bool
	// owed: a reload for the current content was wanted and refused; it
	// is made when the content becomes valid.
	owed bool
	// gated is the version the last reload that the gate let through
	// read, published as loaded by Reloaded.
	gated string

	// changed is when the current content appeared (see Changed).
	changed time.Time

	st status // what Status reports (status.go)
}

// Watcher watches Options.Dirs. Create it with New and start it with Run.
type Watcher struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	dirs    []*dirState
	watches map[string]uint64 // path -> inode it was added at

	fs       *fsnotify.Watcher
	running  atomic.Bool
	ready    atomic.Bool
	lastBeat atomic.Int64
}

// New returns a Watcher; nothing happens until Run.
func New(opts Options) *Watcher {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.OnChange == nil {
		opts.OnChange = func(string) {}
	}
	if _, err := contentid.Of(opts.Key, nil); err != nil {
		opts.Key = ""
	}
	w := &Watcher{opts: opts, log: opts.Logger, watches: map[string]uint64{}}
	for _, d := range opts.Dirs {
		w.dirs = append(w.dirs, &dirState{path: filepath.Clean(d)})
	}
	return w
}

// Alive reports whether the event loop runs and has beaten recently: the
// liveness of the agent, not merely of its process.
func (w *Watcher) Alive() bool {
	return w.running.Load() && time.Since(time.Unix(0, w.lastBeat.Load())) < staleAfter
}

// Ready reports whether every directory has been read once (a missing
// directory counts as read): the baseline digests exist.
func (w *Watcher) Ready() bool { return w.ready.Load() }

// Invalid is the reloader's gate, called as a reload starts. It refuses the
// reload (returns the problems) when every directory whose content changed
// since the last call holds refused content: one directory's refusal does
// not block the reloads of another. A refused directory is owed a reload,
// made when its content becomes valid (fixed, or its NotBefore reached).
func (w *Watcher) Invalid() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var errs []error
	changed, valid := 0, 0
	for _, d := range w.dirs {
		if !d.dirty {
			continue
		}
		changed++
		if d.invalid != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.path, d.invalid))
		} else {
			valid++
		}
	}
	now := time.Now()
	for _, d := range w.dirs {
		if d.dirty && d.invalid != nil {
			d.owed = true
			d.st.at = now
		}
		d.dirty = false
	}
	if changed > 0 && valid == 0 {
		w.opts.Metrics.ReloadRefused()
		return errors.Join(errs...)
	}
	for _, d := range w.dirs {
		if d.invalid == nil {
			d.gated, d.st.gated = d.version, d.digest
		}
	}
	if len(errs) > 0 {
		w.log.Warn("reloading for the directories whose new content is valid; the app also sees the refused content of others", "err", errors.Join(errs...))
	}
	return nil
}

// Current judges every directory's current content, for a reload the
// watcher did not ask for (the start-up check of content that changed while
// the agent was down): it refuses when any directory's content is refused,
// and a refused directory is owed the reload, made once its content becomes
// valid, as Invalid does for a change.
func (w *Watcher) Current() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var errs []error
	for _, d := range w.dirs {
		if d.invalid != nil {
			d.owed = true
			d.st.at = time.Now()
			errs = append(errs, fmt.Errorf("%s: %w", d.path, d.invalid))
		}
	}
	if len(errs) > 0 {
		w.opts.Metrics.ReloadRefused()
		return errors.Join(errs...)
	}
	for _, d := range w.dirs {
		d.gated, d.st.gated = d.version, d.digest
	}
	return nil
}

// Reloaded records that the reload the gate last let through succeeded:
// the versions it read are what the app has loaded.
func (w *Watcher) Reloaded() {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	for _, d := range w.dirs {
		if d.gated != "" {
			w.loaded(d, now)
		}
	}
}

// notify reports a change of d to the reloader; d.mu held.
func (w *Watcher) notify(d *dirState) {
	d.dirty = true
	w.opts.OnChange(d.path)
}

// Run watches until ctx is done. The first reading of each directory is the
// baseline and reports no change. It returns nil when ctx ends and an error
// if the watcher cannot run.
func (w *Watcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewBufferedWatcher(256)
	if err != nil {
		return fmt.Errorf("start inotify watcher: %w", err)
	}
	defer fw.Close()
	w.fs = fw
	w.lastBeat.Store(time.Now().UnixNano())
	w.running.Store(true)
	defer w.running.Store(false)

	w.reconcile()
	for _, d := range w.dirs {
		w.scan(d, "start")
	}
	w.ready.Store(true)
	if w.opts.OnBaseline != nil {
		w.opts.OnBaseline()
	}

	var resync <-chan time.Time
	if w.opts.ResyncPeriod > 0 {
		t := time.NewTicker(w.opts.ResyncPeriod)
		defer t.Stop()
		resync = t.C
	}
	beat := time.NewTicker(heartbeat)
	defer beat.Stop()
	// recheck fires when refused content becomes valid by the clock.
	recheck := time.NewTimer(time.Hour)
	recheck.Stop()
	defer recheck.Stop()
	w.arm(recheck)

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-beat.C:
			w.lastBeat.Store(time.Now().UnixNano())
		case <-recheck.C:
			for _, d := range w.dirs {
				w.scan(d, "not-before")
			}
			w.arm(recheck)
		case <-resync:
			w.lastBeat.Store(time.Now().UnixNano())
			w.opts.Metrics.Resync()
			w.reconcile()
			for _, d := range w.dirs {
				w.scan(d, "resync")
			}
			w.arm(recheck)
		case ev, ok := <-fw.Events:
			if !ok {
				return errors.New("inotify event channel closed")
			}
			// Take every event already queued before reading: one kubelet
			// write is several events, and a burst many more, but each
			// directory needs reading once for all of them. This costs no
			// latency: the reading starts as soon as the queue is empty.
			todo := map[*dirState]string{}
			w.handle(ev, todo)
		drain:
			for range 4096 {
				select {
				case ev, ok := <-fw.Events:
					if !ok {
						break drain
					}
					w.handle(ev, todo)
				default:
					break drain
				}
			}
			for _, d := range w.dirs {
				if reason, ok := todo[d]; ok {
					w.scan(d, reason)
				}
			}
			w.arm(recheck)
		case err, ok := <-fw.Errors:
			if !ok {
				return errors.New("inotify error channel closed")
			}
			if errors.Is(err, syscall.EINVAL) {
				// fsnotify removing, after a move, a watch the kernel or
				// reconcile already dropped: nothing is lost.
				w.log.Debug("stale inotify watch", "err", err)
				continue
			}
			w.opts.Metrics.WatchError()
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				w.log.Warn("inotify queue overflowed; rescanning", "err", err)
				w.reconcile()
				for _, d := range w.dirs {
					w.scan(d, "overflow")
				}
				w.arm(recheck)
				continue
			}
			w.log.Warn("watch error", "err", err)
		}
	}
}

// handle marks in todo the directories ev asks to read, with the reason.
func (w *Watcher) handle(ev fsnotify.Event, todo map[*dirState]string) {
	parent, base := filepath.Dir(ev.Name), filepath.Base(ev.Name)
	for _, d := range w.dirs {
		switch {
		case ev.Name == d.path:
			// The directory itself was created, removed or replaced.
			w.reconcile()
			todo[d] = "dir-event"
		case parent == d.path:
			// In a kubelet volume only the "..data" swap matters; the
			// timestamped directories, "..data_tmp" and the user-visible
			// links follow from it. Other names are files of a plain
			// directory.
			if base == dataDirName || !strings.HasPrefix(base, "..") {
				if _, ok := todo[d]; !ok {
					todo[d] = "event"
				}
			}
		case strings.HasPrefix(d.path, ev.Name+"/") || !d.present:
			// An ancestor of a directory was created or removed.
			w.reconcile()
			todo[d] = "dir-event"
		}
	}
}

// scan reads d and reports a change of content. An absent or empty
// directory never reports a change.
func (w *Watcher) scan(d *dirState, reason string) {
	snap, err := Read(d.path)
	if err != nil {
		w.opts.Metrics.WatchError()
		w.log.Warn("read watched directory", "path", d.path, "err", err)
		return
	}
	w.mu.Lock()
	d.present = snap.Present
	// A directory that is missing, empty, or a kubelet volume without
	// "..data" (being set up or torn down) holds nothing to reload into:
	// wait for content. The last digest is kept, so that content that
	// comes back unchanged causes no reload.
	if !snap.Present || len(snap.Files) == 0 || (d.kubelet && !snap.Kubelet) {
		had := d.filled
		d.filled = false
		w.mu.Unlock()
		switch {
		case had:
			w.log.Warn("watched directory removed or emptied; waiting for content", "path", d.path)
		case reason == "start":
			w.log.Info("watched directory missing or empty; waiting for content", "path", d.path)
		}
		return
	}
	d.filled = true
	d.kubelet = snap.Kubelet
	if !snap.Linked && reason != "start" {
		// The kubelet is about to link the new names; their creation
		// brings another event. A link missing for longer (removed by
		// hand) must not hold every later change back: the next reading
		// after unlinkedGrace goes ahead. (At start-up the content is
		// the baseline either way.)
		if d.unlinked.IsZero() {
			d.unlinked = time.Now()
		}
		if time.Since(d.unlinked) < unlinkedGrace {
			w.mu.Unlock()
			return
		}
	}
	d.unlinked = time.Time{}
	first := !d.seen && reason == "start"
	d.seen = true
	if snap.Digest == d.digest {
		w.revalidate(d)
		w.mu.Unlock()
		return
	}
	d.digest = snap.Digest
	d.version = snap.Version
	d.changed = contentTime(d.path, snap)
	d.owed = false
	w.validate(d, snap.Files)
	invalid := d.invalid
	if first {
		// What the app read at its start.
		d.gated = d.version
		w.baseline(d, snap.Files)
	} else {
		// Notify first: the reload need not wait for metrics and logs
		// (nor for the keyed id of the content, hashed below).
		w.notify(d)
		w.seen(d, snap.Files)
	}
	w.mu.Unlock()
	if !first {
		// The reloader's goroutine, readied by notify, waits in this
		// goroutine's scheduler slot until this one blocks: yield, so
		// that it runs now rather than after the hashing and the log
		// line's write.
		runtime.Gosched()
		w.hashed(d, snap.Digest, snap.Files)
	}

	w.opts.Metrics.WatchedFiles(d.path, len(snap.Files))
	if len(snap.Outside) > 0 {
		w.log.Warn("symlinks out of the watched directory are not followed", "path", d.path, "names", snap.Outside)
	}
	if invalid != nil {
		w.opts.Metrics.InvalidContent(d.path)
		w.log.Warn("invalid content; not reloading until it is fixed or valid", "path", d.path, "err", invalid)
	}
	if first {
		w.log.Info("watching", "path", d.path, "files", len(snap.Files))
		return
	}
	w.opts.Metrics.ContentChange(d.path)
	w.log.Info("content changed", "path", d.path, "files", len(snap.Files), "found_by", reason)
}

// validate judges d's content (files) and keeps the result; d.mu held.
// Validate sees the files only here and in revalidate, which keeps them
// only while they are refused.
func (w *Watcher) validate(d *dirState, files map[string][]byte) {
	d.invalid, d.retryAt, d.files = nil, time.Time{}, nil
	if w.opts.Validate != nil {
		d.invalid = w.opts.Validate(files)
	}
	if d.invalid != nil {
		// Kept to judge again on resync and at retryAt: refused content
		// may become valid by the clock alone.
		d.files = files
		var later interface{ RetryAt() time.Time }
		if errors.As(d.invalid, &later) {
			d.retryAt = later.RetryAt()
		}
	}
	w.opts.Metrics.ContentRefused(d.path, d.invalid != nil)
}

// revalidate judges refused, unchanged content again; content that became
// valid is reloaded if a reload was refused for it (or is pending). The
// baseline, which the app read at its start, is not. d.mu held.
func (w *Watcher) revalidate(d *dirState) {
	if d.invalid == nil || d.files == nil {
		return
	}
	was := d.invalid
	w.validate(d, d.files)
	if d.invalid != nil {
		return
	}
	w.log.Info("refused content is now valid", "path", d.path, "was", was.Error())
	if d.owed || d.dirty {
		d.owed = false
		w.notify(d)
	}
}

// arm sets t to fire at the earliest time refused content becomes valid.
func (w *Watcher) arm(t *time.Timer) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var next time.Time
	for _, d := range w.dirs {
		if d.invalid != nil && !d.retryAt.IsZero() && (next.IsZero() || d.retryAt.Before(next)) {
			next = d.retryAt
		}
	}
	t.Stop()
	if !next.IsZero() {
		// A little after, so that the clock has passed it; a time already
		// past that was judged still refused is tried again in a second,
		// not in a loop.
		wait := time.Until(next) + 10*time.Millisecond
		if wait <= 0 {
			wait = time.Second
		}
		t.Reset(wait)
	}
}

// reconcile adds a watch on every present directory and on the nearest
// existing ancestor of every absent one, re-adds watches whose directory was
// replaced, and drops watches no longer needed.
func (w *Watcher) reconcile() {
	// A directory created between the stat and the watch on its parent
	// sends no event: repeat until what exists matches what is watched.
	for range 8 {
		if !w.reconcileOnce() {
			return
		}
	}
}

// reconcileOnce updates the watches and reports whether it changed any.
func (w *Watcher) reconcileOnce() bool {
	changed := false
	want := map[string]uint64{}
	for _, d := range w.dirs {
		p := d.path
		for {
			if ino, ok := inode(p); ok {
				want[p] = ino
				break
			}
			up := filepath.Dir(p)
			if up == p {
				break
			}
			p = up
		}
	}
	for p, ino := range want {
		if have, ok := w.watches[p]; ok && have == ino {
			continue
		}
		changed = true
		_ = w.fs.Remove(p) // the kernel may have dropped it already
		if err := w.fs.Add(p); err != nil {
			w.opts.Metrics.WatchError()
			w.log.Warn("add watch", "path", p, "err", err)
			delete(w.watches, p)
			continue
		}
		w.watches[p] = ino
	}
	for p := range w.watches {
		if _, ok := want[p]; !ok {
			changed = true
			_ = w.fs.Remove(p)
			delete(w.watches, p)
		}
	}
	return changed
}

func inode(p string) (uint64, bool) {
	fi, err := os.Stat(p)
	if err != nil || !fi.IsDir() {
		return 0, false
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino, true
	}
	return 1, true
}
