package config

import (
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
)

// Names the Job's binary answers to. kubectl runs any executable named
// kubectl-NAME on the PATH as `kubectl NAME`, passing it the remaining
// arguments untouched (its own global flags included, which the plugin
// must parse itself), and for completion runs kubectl_complete-NAME with
// the words to complete (the last one possibly empty).
const (
	JobName              = "k8secrets-job"
	PluginName           = "kubectl-k8secrets"
	PluginCompletionName = "kubectl_complete-k8secrets"
	// PluginDisplayName is how kubectl users type it, and what help and
	// usage say when the binary runs as PluginName.
	PluginDisplayName = "kubectl k8secrets"
)

// Invoked tells from argv (os.Args) under which name the binary runs and
// which arguments to parse: as kubectl_complete-k8secrets it answers
// kubectl's completion requests, which are cobra's __complete command.
func Invoked(argv []string) (name string, args []string) {
	if len(argv) == 0 {
		return JobName, nil
	}
	base := strings.TrimSuffix(filepath.Base(argv[0]), ".exe")
	switch base {
	case PluginName:
		return PluginName, argv[1:]
	case PluginCompletionName:
		return PluginName, append([]string{cobra.ShellCompRequestCmd}, argv[1:]...)
	}
	return JobName, argv[1:]
}

// displayName is how help and messages name the program run as name.
func displayName(name string) string {
	if name == PluginName {
		return PluginDisplayName
	}
	return name
}

// completing reports whether args ask cobra's hidden completion command
// (the shells' scripts and kubectl call it), which prints and changes
// nothing.
func completing(args []string) bool {
	return len(args) > 0 && (args[0] == cobra.ShellCompRequestCmd || args[0] == cobra.ShellCompNoDescRequestCmd)
}
