// Package config parses the Job's command line, K8SECRETS_* environment
// variables and an optional config file, in that order of precedence, into
// one typed Config, and validates it before any API call.
package config

import (
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/k8secrets/k8secrets/internal/reloadspec"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/k8secrets/k8secrets/internal/version"
	"github.com/k8secrets/k8secrets/internal/wellknown"
)

// ErrInvalid wraps every bad-input error: exit code 2.
var ErrInvalid = errors.New("invalid input")

// ErrHelp is returned when --help (or a completion script, or completions)
// was asked for; it has been printed.
var ErrHelp = errors.New("help requested")

// Commands.
const (
	Inject  = "inject"
	Remove  = "remove"
	Status  = "status"
	Refresh = "refresh"
	Version = "version"
	// WatchCommand: "watch", the long-running rotation controller.
	WatchCommand = "watch"
)

// Config is everything one run of the Job needs.
type Config struct {
	Command string

	Selector  string
	Secret    string
	Namespace string // empty: the context's or the pod's namespace

	Kubeconfig string
	Context    string
	Cluster    string // kubeconfig cluster, overriding the context's
	User       string // kubeconfig user, overriding the context's

	MountPath  string // empty: DefaultMountPath(Secret)
	Containers []string

	Agent      bool
	AgentImage string
	Reload     string

	DryRun  bool
	Timeout time.Duration
	// MaxParallel is how many workloads roll out at once (1: one at a time).
	MaxParallel int
	// HealthyFor is how long a rolled-out workload's new pods must stay
	// Ready, with no restart, before it counts as rolled out (0: no hold).
	HealthyFor time.Duration
	// Settle bounds refresh's wait for each restarting pod.
	Settle    time.Duration
	Output    string
	LogFormat string

	// Wait: refresh waits until every pod has loaded the current content.
	Wait bool
	// Via is how status and refresh reach the agents: auto, direct or proxy.
	Via string
	// Watch configures the watch command.
	Watch Watch
	// KubeAPIQPS and KubeAPIBurst bound the client's own request rate
	// (client-go's token bucket): the command's defaults unless
	// --kube-api-qps and --kube-api-burst say otherwise.
	KubeAPIQPS   float32
	KubeAPIBurst int
}

// DefaultAgentImage is the agent image of the same release as this Job.
func DefaultAgentImage() string {
	return "ghcr.io/k8secrets/k8secrets-agent:" + version.Version
}

// DefaultMountPath is where the Secret is mounted unless --mount-path says
// otherwise.
func DefaultMountPath(secret string) string {
	return path.Join(wellknown.DefaultMountDir, secret)
}

// ExitCodes is the table printed in --help and the README.
const ExitCodes = `Exit codes:
  0  success, or nothing to do
  1  any other error; also an interrupt (a second SIGINT/SIGTERM exits at once)
     or a lost lease: nothing is rolled back blindly, rerun to converge
  2  bad input (selector, names, flags); nothing was read or changed
  3  the Secret is missing or cannot be mounted (wrong type, empty, forbidden)
  4  the plan was rejected: a conflict found while planning, or a server-side
     dry-run rejection (validation, admission, quota); nothing was changed
  5  a rollout failed and that workload was rolled back
  6  the rollback failed too: the message names the objects that need attention
  7  another run holds the lock for this Secret, or still holds one of the
     workloads after --timeout; nothing was changed on it
  8  a rerun found a workload unhealthy for a reason the Job did not cause
     (another manager's change, or pods lost after a finished rollout); it
     was reported and left alone: nothing was changed
  9  refresh --wait: not every pod that mounts the Secret had loaded its
     current content within --timeout, or the Job could not verify them; the
     message names the pods and the way it asked (direct or proxy). The pods
     were refreshed`

// Parse reads args (without the program name), the environment and the
// optional config file. It prints help and usage to out. Bad input returns
// an error wrapping ErrInvalid that lists every problem.
func Parse(args []string, env func(string) (string, bool), out io.Writer) (Config, error) {
	return ParseAs(JobName, args, env, out)
}

// ParseAs is Parse for the binary run as name (JobName or PluginName, see
// Invoked): help and messages name it as its user typed it.
func ParseAs(name string, args []string, env func(string) (string, bool), out io.Writer) (Config, error) {
	var cfg Config
	var parseErr error
	printed := false
	root := &cobra.Command{
		Use:         name,
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: displayName(name)},
		Short:       "Mount a Secret into running workloads, with a reload sidecar, safely",
		Long: displayName(name) + ` mounts an existing Secret into the Deployments, StatefulSets and
DaemonSets whose running pods match a label selector, adds the k8secrets reload
agent, checks every change with a server-side dry-run, then rolls the workloads
out one at a time (or --max-parallel at once) and rolls back what fails.

Flags may also be set as K8SECRETS_<FLAG> environment variables (dashes become
underscores) or in a --config file (YAML, JSON or TOML, keys named as the flags).
Command-line flags win over the environment, which wins over the file.
Values from the environment and the file are parsed as the flags are: a
boolean is true or false (not yes), a duration needs its unit (300s, 5m); a
value that does not parse is exit 2, naming the variable or key.

` + ExitCodes,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(out)
	if completing(args) {
		// Completions go to out, ending with cobra's ":directive" line,
		// which kubectl reads as the last one: cobra's debug notes must
		// not follow it.
		root.SetErr(io.Discard)
	}
	root.SetArgs(args)
	root.SetGlobalNormalizationFunc(normalize)
	root.CompletionOptions.DisableDefaultCmd = true // ours: addCompletion

	pf := root.PersistentFlags()
	pf.StringP("namespace", "n", "", "namespace of the Secret and the workloads (default: the context's, or the pod's when run in a cluster)")
	pf.String("kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
	pf.String("context", "", "kubeconfig context to use")
	pf.String("cluster", "", "kubeconfig cluster to use (default: the context's)")
	pf.String("user", "", "kubeconfig user to use (default: the context's)")
	pf.StringP("output", "o", "text", "report format: text or json")
	pf.String("log-format", "text", "log format: text or json")
	pf.String("config", "", "optional config file")
	pf.Duration("timeout", 5*time.Minute, "how long to wait for each workload's rollout before rolling it back")

	selection := func(fs *pflag.FlagSet, required bool) {
		req := ""
		if required {
			req = " (required)"
		}
		fs.StringP("selector", "l", "", "label selector of the running pods, e.g. app=web,tier!=db or 'env in (a,b)'"+req)
		fs.String("secret", "", "name of the Secret"+req)
	}
	change := func(fs *pflag.FlagSet) {
		fs.Bool("dry-run", false, "plan and server-side dry-run only; print the plan as a diff and change nothing")
		fs.Duration("healthy-for", 10*time.Second, "after a workload has rolled out, how long its new pods must stay Ready with no container restart before it counts as rolled out; a crash within it fails the rollout, which is rolled back (0: do not wait)")
		fs.Int("max-parallel", 1, "how many workloads to roll out at once; each is still waited for and rolled back on its own, and the first failure stops new ones from starting")
	}

	mk := func(name, short string, flags func(*pflag.FlagSet)) *cobra.Command {
		c := &cobra.Command{
			Use:   name,
			Short: short,
			Args:  cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error {
				cfg, parseErr = load(name, c, env)
				return nil
			},
		}
		if flags != nil {
			flags(c.Flags())
			apiFlags(c.Flags(), name)
		}
		root.AddCommand(c)
		return c
	}
	mk(Inject, "Mount the Secret into the matching workloads and add the reload agent", func(fs *pflag.FlagSet) {
		selection(fs, true)
		change(fs)
		fs.String("mount-path", "", "where to mount the Secret in the containers (default "+wellknown.DefaultMountDir+"/<secret>); not at, above or inside /, /proc, /sys, /dev or the service account's /var/run/secrets/kubernetes.io, nor overlapping a mount the containers have")
		fs.StringSlice("container", nil, "container to mount the Secret into; repeatable (default: every app container)")
		fs.Bool("agent", true, "add the k8secrets reload agent as a sidecar")
		fs.Bool("no-agent", false, "do not add the reload agent (same as --agent=false)")
		fs.String("agent-image", DefaultAgentImage(), "image of the reload agent")
		fs.String("reload", "restart", "how the agent reloads the app when the Secret changes: restart (restart the app's container in place), restart-all (the kubelet restarts every container of the pod in place; Kubernetes 1.36+), signal:SIGHUP (signal the app's process), http:URL (call the app)")
	})
	mk(Remove, "Undo an injection: volume, mounts, agent and marks, rolled out the same safe way", func(fs *pflag.FlagSet) {
		selection(fs, true)
		change(fs)
	})
	mk(Status, "List the workloads this tool injected, with Secret, hash and rollout state", func(fs *pflag.FlagSet) {
		selection(fs, false)
		verifyFlags(fs, false)
	})
	mk(Refresh, "Make the kubelets rewrite the Secret's volume in every pod that mounts it, now (run it right after updating the Secret)", func(fs *pflag.FlagSet) {
		fs.String("secret", "", "name of the Secret (required)")
		fs.Duration("settle", 30*time.Second, "how long to wait for each pod whose agent restarts the app to restart and be Ready before the next")
		verifyFlags(fs, true)
	})
	mk(WatchCommand, "Rotate the injected Secrets with no pipeline step: on each change of their data, refresh and verify the pods (long-running; see manifests/watch)", func(fs *pflag.FlagSet) {
		watchFlags(fs)
		verifyFlags(fs, false)
	})
	v := mk(Version, "Print the version", nil)
	v.RunE = func(c *cobra.Command, _ []string) error {
		cfg = Config{Command: Version}
		return nil
	}

	addCompletion(root, func() { printed = true })
	addExamples(root, displayName(name))

	if err := root.Execute(); err != nil {
		return Config{}, fmt.Errorf("%w: %v; see %s --help", ErrInvalid, err, displayName(name))
	}
	if parseErr != nil {
		return Config{}, parseErr
	}
	if printed || completing(args) {
		return Config{}, ErrHelp
	}
	if cfg.Command == "" { // cobra printed the help: asked for, or no command given
		for _, a := range args {
			if a == "-h" || a == "--help" || a == "help" {
				return Config{}, ErrHelp
			}
		}
		return Config{}, fmt.Errorf("%w: no command given; use inject, remove, status, refresh, watch or version", ErrInvalid)
	}
	return cfg, nil
}

// normalize accepts the seed's spellings: --pod_labels, --pod-labels,
// --secret_name and --secret-name, and underscores for dashes in general.
func normalize(_ *pflag.FlagSet, name string) pflag.NormalizedName {
	name = strings.ReplaceAll(name, "_", "-")
	switch name {
	case "pod-labels", "labels":
		name = "selector"
	case "secret-name":
		name = "secret"
	}
	return pflag.NormalizedName(name)
}

func load(command string, c *cobra.Command, env func(string) (string, bool)) (Config, error) {
	fs := c.Flags()
	problems := fillFromEnvAndFile(fs, env)
	v := viper.New()
	if err := v.BindPFlags(fs); err != nil {
		return Config{}, fmt.Errorf("bind flags: %w", err)
	}

	cfg := Config{
		Command:     command,
		Selector:    v.GetString("selector"),
		Secret:      v.GetString("secret"),
		Namespace:   v.GetString("namespace"),
		Kubeconfig:  v.GetString("kubeconfig"),
		Context:     v.GetString("context"),
		Cluster:     v.GetString("cluster"),
		User:        v.GetString("user"),
		MountPath:   v.GetString("mount-path"),
		Containers:  v.GetStringSlice("container"),
		Agent:       v.GetBool("agent") && !v.GetBool("no-agent"),
		AgentImage:  v.GetString("agent-image"),
		Reload:      v.GetString("reload"),
		DryRun:      v.GetBool("dry-run"),
		Timeout:     v.GetDuration("timeout"),
		MaxParallel: v.GetInt("max-parallel"),
		HealthyFor:  v.GetDuration("healthy-for"),
		Settle:      v.GetDuration("settle"),
		Wait:        v.GetBool("wait"),
		Via:         v.GetString("verify-via"),
		Output:      v.GetString("output"),
		LogFormat:   v.GetString("log-format"),
		// float32 is the flag's own type: a value that does not
		// fit was refused by its parser.
		KubeAPIQPS:   float32(v.GetFloat64("kube-api-qps")),
		KubeAPIBurst: v.GetInt("kube-api-burst"),
	}
	if command == WatchCommand {
		cfg.Namespace, cfg.Watch = "", loadWatch(v)
	}
	if cfg.MountPath == "" && cfg.Secret != "" {
		cfg.MountPath = DefaultMountPath(cfg.Secret)
	}
	if err := errors.Join(append(problems, cfg.Validate())...); err != nil {
		return Config{}, err
	}
	cfg.MountPath = path.Clean(cfg.MountPath) // trailing slashes: validated above
	return cfg, nil
}

// Validate reports every problem at once, each wrapping ErrInvalid.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...))
	}
	needsTarget := c.Command == Inject || c.Command == Remove
	if needsTarget && strings.TrimSpace(c.Selector) == "" {
		bad("--selector is required: an empty selector would match every pod in the namespace")
	}
	if c.Selector != "" {
		if _, err := labels.Parse(c.Selector); err != nil {
			bad("--selector %q: %v", c.Selector, err)
		}
	}
	if (needsTarget || c.Command == Refresh) && c.Secret == "" {
		bad("--secret is required")
	}
	if c.Secret != "" {
		for _, m := range validation.IsDNS1123Subdomain(c.Secret) {
			bad("--secret %q: %s", c.Secret, m)
		}
	}
	if c.Namespace != "" {
		for _, m := range validation.IsDNS1123Label(c.Namespace) {
			bad("--namespace %q: %s", c.Namespace, m)
		}
	}
	if c.Command == Inject {
		if !path.IsAbs(c.MountPath) {
			bad("--mount-path %q: must be an absolute path", c.MountPath)
		}
		for _, el := range strings.Split(c.MountPath, "/") {
			if el == ".." {
				bad("--mount-path %q: must not contain '..'", c.MountPath)
			}
		}
		if strings.Contains(c.MountPath, ":") {
			bad("--mount-path %q: must not contain ':'", c.MountPath)
		}
		if path.IsAbs(c.MountPath) {
			if r, ok := Reserved(c.MountPath); ok {
				bad("--mount-path %q: %s; choose a path of its own, such as %s", c.MountPath, r, DefaultMountPath(c.Secret))
			}
		}
		for _, n := range c.Containers {
			for _, m := range validation.IsDNS1123Label(n) {
				bad("--container %q: %s", n, m)
			}
		}
		if c.Agent {
			if strings.TrimSpace(c.AgentImage) == "" {
				bad("--agent-image is empty; name the agent image or pass --no-agent")
			}
			// The agent's own parser: a spec it would refuse at start
			// (signal:SIGHUPP) must not cost a rollout and a rollback.
			if _, err := reloadspec.Parse(c.Reload); err != nil {
				bad("%v", err)
			}
		}
	}
	errs = append(errs, c.validateWatch()...)
	if c.Command == Refresh && c.Settle <= 0 {
		bad("--settle %s: must be positive", c.Settle)
	}
	errs = append(errs, c.validateVerify()...)
	if c.Timeout <= 0 {
		bad("--timeout %s: must be positive", c.Timeout)
	}
	if needsTarget && c.HealthyFor < 0 {
		bad("--healthy-for %s: must be 0 or more", c.HealthyFor)
	}
	if needsTarget && c.MaxParallel < 1 {
		bad("--max-parallel %d: must be 1 or more", c.MaxParallel)
	}
	if c.Output != "text" && c.Output != "json" {
		bad("--output %q: must be text or json", c.Output)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("--log-format %q: must be text or json", c.LogFormat)
	}
	errs = append(errs, c.validateAPI()...)
	return errors.Join(errs...)
}
