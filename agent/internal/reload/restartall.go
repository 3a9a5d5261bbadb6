package reload

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrRestartAll ends the agent with wellknown.RestartAllExitCode, on which
// the kubelet restarts every container of the pod in place.
var ErrRestartAll = errors.New("restarting every container of the pod for new content")

// stateFile, in RestartAll.StateDir, holds the content identifier the agent
// last restarted the pod for.
const stateFile = "restarted-for"

// RestartAll asks the kubelet to restart every container of the pod, by
// ending the agent with the one exit code its container's restartPolicyRules
// name (KEP-5532, action RestartAllContainers). Nothing is signalled, so it
// needs no shared PID namespace, no matching of the app's user and no
// target: every container restarts, init containers run again, and the app
// reads the files as they are then.
//
// The kubelet applies no crash-loop backoff to a rule's restart, so the
// agent asks at most once per content: it writes the content's identifier
// to StateDir (an emptyDir, which outlives the containers' restarts) before
// it exits, and never exits again for the content recorded there.
type RestartAll struct {
	// StateDir, if set, remembers the content across the agent's restarts.
	// Without it the agent cannot tell, at start, whether the content
	// changed while it was down, and takes what it finds as a baseline.
	StateDir string
	// Content identifies the watched content now (digests, not data).
	Content func() (string, error)
	// Exit ends the agent with err (wrapping ErrRestartAll).
	Exit func(err error)
}

// Kind implements Action.
func (r *RestartAll) Kind() string { return "restart-all" }

// Reload implements Action: it records the content and ends the agent,
// unless the pod was already restarted for this content.
func (r *RestartAll) Reload(context.Context) error {
	id, err := r.Content()
	if err != nil {
		return fmt.Errorf("restart-all: read the content: %w", err)
	}
	if r.StateDir != "" {
		prev, err := r.recorded()
		if err != nil {
			return err
		}
		if prev == id {
			return nil // the pod has restarted for this content already
		}
		if err := r.record(id); err != nil {
			return err
		}
	}
	r.Exit(fmt.Errorf("%w (content %s)", ErrRestartAll, short(id)))
	return nil
}

// Start is called once, before the watcher's first reading. It reports
// whether the content changed while the agent was down (the state holds
// another identifier), so that the pod restarts for it now; on the first
// start of the pod it records the content as the baseline.
func (r *RestartAll) Start() (changed bool, err error) {
	if r.StateDir == "" {
		return false, nil
	}
	id, err := r.Content()
	if err != nil {
		return false, fmt.Errorf("restart-all: read the content: %w", err)
	}
	prev, err := r.recorded()
	if err != nil {
		return false, err
	}
	if prev == "" {
		return false, r.record(id)
	}
	return prev != id, nil
}

func (r *RestartAll) recorded() (string, error) {
	b, err := os.ReadFile(filepath.Join(r.StateDir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("restart-all: read the state in --state-dir: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// record writes id atomically: a crash mid-write must not leave a partial
// identifier that would differ from every content and restart the pod.
func (r *RestartAll) record(id string) error {
	tmp, err := os.CreateTemp(r.StateDir, stateFile+".tmp*")
	if err != nil {
		return fmt.Errorf("restart-all: write the state in --state-dir (mount a writable emptyDir there): %w", err)
	}
	_, werr := tmp.WriteString(id + "\n")
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("restart-all: write the state in --state-dir: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(r.StateDir, stateFile)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("restart-all: write the state in --state-dir: %w", err)
	}
	return nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
