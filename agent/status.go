package main

import (
	"log/slog"
	"os"

	"github.com/k8secrets/k8secrets/agent/internal/watch"
	"github.com/k8secrets/k8secrets/internal/contentid"
	"github.com/k8secrets/k8secrets/internal/version"
)

// status is the document of GET /status (agent/README.md, "What the app
// has loaded"): what each watched directory's app has loaded and what is on
// disk, named by keyed content ids.
type status struct {
	Agent       string            `json:"agent"`
	Keyed       bool              `json:"keyed"`
	Directories []watch.DirStatus `json:"directories"`
}

func statusOf(w *watch.Watcher) status {
	return status{Agent: version.Version, Keyed: w.Keyed(), Directories: w.Status()}
}

// contentKey is the key of the content ids, from the environment only: a
// flag would show in ps. It is never logged; an invalid one is dropped with
// a warning (the ids are "" then, and the Job reports the pod unverified).
func contentKey(logger *slog.Logger) string {
	key, ok := os.LookupEnv(contentid.KeyEnv)
	if !ok || key == "" {
		return ""
	}
	if _, err := contentid.Of(key, nil); err != nil {
		logger.Warn("ignoring an invalid content key: /status serves no content ids; the Job sets it (a fresh key: rerun the injection)", "env", contentid.KeyEnv, "err", err)
		return ""
	}
	return key
}
