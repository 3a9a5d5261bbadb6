package config

import (
	"strings"

	"github.com/spf13/cobra"
)

// examples of each command for --help; PROG is the program as the user
// types it (k8secrets-job, or kubectl k8secrets).
var examples = map[string]string{
	Inject: `  # Mount the Secret db-creds into the workloads of the running pods labelled
  # app=web, with the reload agent; roll them out one at a time
  PROG inject -l app=web --secret db-creds -n shop

  # Print the change as a diff after a server-side dry-run; change nothing
  PROG inject -l app=web --secret db-creds -n shop --dry-run

  # An app that reloads on SIGHUP; only the container "api" mounts the files
  PROG inject -l app=api --secret api-tls --reload signal:SIGHUP --container api

  # An app that takes db-creds through env (secretKeyRef, envFrom): nothing to
  # add; the agent restarts exactly those containers in place on each update
  PROG inject -l app=worker --secret db-creds -n shop`,
	Remove: `  # Undo the injection of db-creds, rolled out the same safe way
  PROG remove -l app=web --secret db-creds -n shop`,
	Status: `  # What was injected in the namespace shop, and its rollout state
  PROG status -n shop

  # The same, as JSON, for another kubeconfig context
  PROG status -n shop --context prod -o json`,
	Refresh: `  # Update the Secret, then make every pod that mounts it see it now
  kubectl -n shop apply -f db-creds.yaml && PROG refresh --secret db-creds -n shop`,
	Version: `  PROG version`,
}

// addExamples sets each command's Example, naming the program as display.
func addExamples(root *cobra.Command, display string) {
	for _, c := range root.Commands() {
		if e, ok := examples[c.Name()]; ok && c.Example == "" {
			c.Example = strings.ReplaceAll(e, "PROG", display)
		}
	}
}
