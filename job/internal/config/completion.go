package config

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// Completion is the command that prints a shell completion script.
const Completion = "completion"

// addCompletion adds `completion bash|zsh|fish|powershell` (cobra's
// generators, which call the binary's hidden __complete command for the
// words) and the completions of flag values that have a fixed set. printed
// is called once a script has been written.
func addCompletion(root *cobra.Command, printed func()) {
	name := root.Name()
	plugin := ""
	if root.DisplayName() == PluginDisplayName {
		plugin = fmt.Sprintf(`

As a kubectl plugin: kubectl completes "kubectl k8secrets ..." itself (bash,
zsh, fish, powershell; kubectl 1.26 or later) when an executable named
%[1]s is on the PATH. This binary is one under that name:

  ln -s "$(command -v %[2]s)" "$(dirname "$(command -v %[2]s)")/%[1]s"`, PluginCompletionName, PluginName)
	}
	c := &cobra.Command{
		Use:   Completion + " bash|zsh|fish|powershell",
		Short: "Print a shell completion script",
		Long: fmt.Sprintf(`Print the completion script of %[1]s for a shell. Load it:

  bash:  source <(%[1]s completion bash)        (needs bash-completion v2)
  zsh:   source <(%[1]s completion zsh)
  fish:  %[1]s completion fish | source

or write it where your shell loads completions from.%[2]s`, name, plugin),
		Example: fmt.Sprintf(`  %[1]s completion bash > /etc/bash_completion.d/%[1]s
  %[1]s completion zsh > "${fpath[1]}/_%[1]s"
  %[1]s completion fish > ~/.config/fish/completions/%[1]s.fish`, name),
		Args:                  cobra.MatchAll(cobra.ExactArgs(1), cobra.OnlyValidArgs),
		ValidArgs:             []string{"bash", "zsh", "fish", "powershell"},
		DisableFlagsInUseLine: true,
		RunE: func(c *cobra.Command, args []string) error {
			printed()
			out := c.OutOrStdout()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(out, true)
			case "zsh":
				return root.GenZshCompletion(out)
			case "fish":
				return root.GenFishCompletion(out, true)
			default:
				return root.GenPowerShellCompletionWithDesc(out)
			}
		},
	}
	root.AddCommand(c)

	complete := func(values ...string) cobra.CompletionFunc {
		return func(_ *cobra.Command, _ []string, typed string) ([]cobra.Completion, cobra.ShellCompDirective) {
			var out []cobra.Completion
			for _, v := range values {
				if strings.HasPrefix(v, typed) {
					out = append(out, v)
				}
			}
			d := cobra.ShellCompDirectiveNoFileComp
			if len(out) == 1 && strings.HasSuffix(strings.SplitN(out[0], "\t", 2)[0], ":") {
				d |= cobra.ShellCompDirectiveNoSpace // http: needs its URL after it
			}
			return out, d
		}
	}
	_ = root.RegisterFlagCompletionFunc("log-format", complete("text", "json"))
	for _, sub := range root.Commands() {
		if sub.Flags().Lookup("reload") != nil {
			_ = sub.RegisterFlagCompletionFunc("reload", complete(
				"restart\trestart the app's container in place",
				"restart-all\tthe kubelet restarts every container of the pod (Kubernetes 1.36+)",
				"signal:SIGHUP\tsignal the app's process",
				"http:\tcall the app's reload URL"))
		}
	}
}
