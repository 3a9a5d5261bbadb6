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
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/k8secrets/k8secrets/agent/internal/metrics"
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

	// changed is when the current content appeared (see Changed).
	changed time.Time
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

// Invalid returns the validation problems of the current content of every
// directory, or nil. The reloader refuses to reload while it is not nil.
func (w *Watcher) Invalid() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var errs []error
	for _, d := range w.dirs {
		if d.invalid != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.path, d.invalid))
		}
	}
	return errors.Join(errs...)
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

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-beat.C:
			w.lastBeat.Store(time.Now().UnixNano())
		case <-resync:
			w.lastBeat.Store(time.Now().UnixNano())
			w.opts.Metrics.Resync()
			w.reconcile()
			for _, d := range w.dirs {
				w.scan(d, "resync")
			}
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
		w.mu.Unlock()
		return
	}
	d.digest = snap.Digest
	d.changed = contentTime(d.path, snap)
	d.invalid = nil
	if w.opts.Validate != nil {
		d.invalid = w.opts.Validate(snap.Files)
	}
	invalid := d.invalid
	w.mu.Unlock()

	w.opts.Metrics.WatchedFiles(d.path, len(snap.Files))
	if invalid != nil {
		w.opts.Metrics.InvalidContent(d.path)
		w.log.Warn("invalid content; not reloading until it is fixed", "path", d.path, "err", invalid)
	}
	if first {
		w.log.Info("watching", "path", d.path, "files", len(snap.Files))
		return
	}
	w.opts.Metrics.ContentChange(d.path)
	w.log.Info("content changed", "path", d.path, "files", len(snap.Files), "found_by", reason)
	w.opts.OnChange(d.path)
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
