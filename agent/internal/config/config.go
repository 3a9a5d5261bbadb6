// Package config reads the agent's configuration from flags, K8SECRETS_AGENT_*
// environment variables and an optional file, in that order of precedence,
// into one typed Config. Viper stays inside this package.
package config

import (
	"crypto/x509"
	"encoding/csv"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/k8secrets/k8secrets/internal/reloadspec"
	"github.com/spf13/cast"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// EnvPrefix prefixes the environment variables: --min-interval is
// K8SECRETS_AGENT_MIN_INTERVAL.
const EnvPrefix = "K8SECRETS_AGENT"

// ErrInvalid wraps every configuration problem; main exits 2 on it.
var ErrInvalid = errors.New("invalid configuration")

// ErrHelp is returned when --help was asked for; the usage is printed.
var ErrHelp = pflag.ErrHelp

// Config is the agent's whole configuration.
type Config struct {
	Watch            []string
	Reload           []string
	Process          string
	PIDFile          string
	TargetMount      []string
	StateDir         string
	TurnFile         string
	HeldFile         string
	TurnHold         time.Duration
	HTTPMethod       string
	HTTPSuccessCodes string
	HTTPTimeout      time.Duration
	HTTPCAFile       string
	ExecTimeout      time.Duration
	RestartGrace     time.Duration
	RestartJitter    time.Duration
	MinInterval      time.Duration
	ResyncPeriod     time.Duration
	Validation       string
	Listen           string
	LogFormat        string
	Version          bool

	// BackoffInitial and BackoffMax bound the retry delay of a failed
	// reload. They are not flags: tests shorten them.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
}

// Default returns the defaults, each justified where it is set.
func Default() Config {
	return Config{
		HTTPMethod:       "POST",
		HTTPSuccessCodes: "2xx",
		// A reload endpoint answers at once; 5s is generous without
		// hiding a hung app for long.
		HTTPTimeout: 5 * time.Second,
		ExecTimeout: 30 * time.Second,
		// Shorter than the pod's default terminationGracePeriodSeconds
		// (30s) so a hung app is not kept for long, long enough to drain.
		RestartGrace: 10 * time.Second,
		// Replicas whose volumes are updated together (a Secret update
		// reaches every kubelet within its sync period) should not all
		// restart at the same moment; 5s spreads them by more than a
		// restart takes and stays well inside the Job's 30s --settle.
		RestartJitter: 5 * time.Second,
		// Longer than the Job's one-at-a-time restart of a workload takes
		// (about 5 to 15 s a pod), short enough that an app whose owners
		// run neither the watch nor refresh still gets the content.
		TurnHold: 5 * time.Minute,
		// Folds a burst (several Secrets updated together) into at most
		// two reloads while the first change still reloads at once.
		MinInterval: time.Second,
		// inotify rarely loses events; a minute bounds the damage cheaply.
		ResyncPeriod:   time.Minute,
		Validation:     "auto",
		Listen:         fmt.Sprintf(":%d", 9533),
		LogFormat:      "auto",
		BackoffInitial: 500 * time.Millisecond,
		BackoffMax:     30 * time.Second,
	}
}

const usageHead = `k8secrets-agent watches mounted Secret directories and reloads the app in
place when their content changes.

Usage:
  k8secrets-agent --watch DIR --reload SPEC [flags]
  k8secrets-agent version

Reload specs (repeatable, run in order):
  signal:NAME   send a signal (e.g. signal:SIGHUP) to the target processes
  restart       end the target processes (SIGTERM, SIGKILL after
                --restart-grace) so the kubelet restarts their containers
  restart-all   exit with code 87, on which the agent's restartPolicyRules
                (action RestartAllContainers, Kubernetes 1.36+) make the
                kubelet restart every container of the pod in place; once
                per content (--state-dir remembers it across restarts); the
                only spec when used
  http:URL      send --http-method to URL
  exec:COMMAND  run COMMAND in the agent's container (split like a shell
                would, without a shell)

Turns (restart and restart-all, with --turn-file):
  a restart waits for the pod's turn: a change of its k8secrets.io/refreshed-at
  annotation, which the Job's watch and refresh make one pod at a time, each
  Ready before the next. The kubelet's own periodic sync delivers content to
  any pod at any moment; without turns, pods that got it restarted at once,
  beside the one being restarted. No turn within --turn-hold: restart anyway,
  unless --held-file is not empty (the Job holds the pod: a pass stopped at a
  pod that is not Ready again, or a rotation waits for its pods).

Target processes (signal and restart):
  --process NAME  processes whose /proc/PID/comm or executable base name is NAME
                  (the topmost of a tree of them, e.g. nginx's master)
  --pidfile PATH  the process whose PID is in PATH
  neither         the main process of each container that mounts a watched
                  directory's volume (the same filesystem and subtree, at any
                  path; with --target-mount DIR, DIR's volume instead: the
                  Job's marker for apps that take the Secret through env),
                  found in /proc/PID/mountinfo through the pod's shared
                  PID namespace (shareProcessNamespace: true): per container
                  the first process started whose parent PID is 0.
                  Containers that do not mount it (a mesh proxy, a debug
                  container), exec probes and kubectl exec sessions are
                  never targets.
  always          never the agent's own container, PID 1 (pause) or any
                  k8secrets-agent; a process started after the change is
                  spared (it read the new content), and one that has exited
                  counts as done. At start, if the content is newer than a
                  target's start time (it changed while the agent was
                  down), the agent reloads once and logs why. Signalling
                  needs the app's UID (runAsUser) or CAP_KILL.

Every flag can be set as K8SECRETS_AGENT_<FLAG> (e.g. K8SECRETS_AGENT_MIN_INTERVAL;
repeatable flags take comma-separated values) or in the --config file (YAML
or JSON, keys named like the flags). Flags win over the environment,
which wins over the file.

Flags:
`

func newFlagSet(out io.Writer) *pflag.FlagSet {
	d := Default()
	fs := pflag.NewFlagSet("k8secrets-agent", pflag.ContinueOnError)
	fs.SetOutput(out)
	fs.SortFlags = false
	fs.StringArray("watch", nil, "directory of a mounted Secret to watch (repeatable)")
	fs.StringArray("reload", nil, "how to reload: signal:NAME, restart, http:URL or exec:COMMAND (repeatable)")
	fs.String("process", "", "target the processes named NAME (comm or executable base name)")
	fs.String("pidfile", "", "target the process whose PID is in this file")
	fs.StringArray("target-mount", nil, "target the containers that mount the volume the agent sees at this directory (repeatable; default: the --watch directories' volumes); the Job's marker for apps that take the Secret through env")
	fs.String("state-dir", "", "restart-all: a writable directory that outlives the agent's restarts (an emptyDir), to restart the pod once per content and catch changes made while the agent was down")
	fs.String("turn-file", "", "restart and restart-all: a downward API file of the pod's k8secrets.io/refreshed-at annotation; a restart waits until it changes (the pod's turn, given by the Job's watch or refresh), at most --turn-hold")
	fs.String("held-file", "", "with --turn-file: a downward API file of the pod's k8secrets.io/restart-held annotation; while it is not empty, --turn-hold does not end the wait")
	fs.Duration("turn-hold", d.TurnHold, "with --turn-file: restart anyway when no turn came within this")
	fs.String("http-method", d.HTTPMethod, "method of http: reloads")
	fs.String("http-success-codes", d.HTTPSuccessCodes, "status codes that mean success: comma-separated codes, ranges (200-299) or classes (2xx)")
	fs.Duration("http-timeout", d.HTTPTimeout, "timeout of an http: reload")
	fs.String("http-ca-file", "", "PEM bundle of the certificate authorities trusted for https: reloads, added to the system pool (the image has none); read again before each reload")
	fs.Duration("exec-timeout", d.ExecTimeout, "timeout of an exec: reload")
	fs.Duration("restart-grace", d.RestartGrace, "time between SIGTERM and SIGKILL for restart")
	fs.Duration("restart-jitter", d.RestartJitter, "random delay up to this before restart, so replicas do not restart together")
	fs.Duration("min-interval", d.MinInterval, "at most one reload per interval; changes inside it fold into one more reload")
	fs.Duration("resync-period", d.ResyncPeriod, "rescan the directories this often in case events were lost (0 disables)")
	fs.String("validate", d.Validation, "auto: refuse to reload a directory whose tls.crt and tls.key are not a valid, current pair; none")
	fs.String("listen", d.Listen, "address of /healthz, /readyz and /metrics")
	fs.String("log-format", d.LogFormat, "text or json (auto: json unless stderr is a terminal)")
	fs.String("config", "", "optional configuration file")
	fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprint(out, usageHead)
		fs.PrintDefaults()
	}
	return fs
}

// Load parses args (without the program name) and the environment. It
// returns ErrHelp after printing the usage to out, and an error wrapping
// ErrInvalid listing every problem. It does not call Validate when
// --version is set.
func Load(args []string, out io.Writer) (Config, error) {
	fs := newFlagSet(out)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return Config{}, ErrHelp
		}
		return Config{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if fs.NArg() > 0 {
		if fs.Arg(0) == "version" && fs.NArg() == 1 {
			return Config{Version: true}, nil
		}
		return Config{}, fmt.Errorf("%w: unexpected arguments %q", ErrInvalid, fs.Args())
	}

	v := viper.New()
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()
	// Binding every flag also gives every key a default, which Unmarshal
	// and AutomaticEnv need (viper issue 761).
	if err := v.BindPFlags(fs); err != nil {
		return Config{}, fmt.Errorf("bind flags: %w", err)
	}

	var problems []error
	if file := v.GetString("config"); file != "" {
		if err := readFile(v, file); err != nil {
			problems = append(problems, err)
		}
		for _, k := range v.AllKeys() {
			if fs.Lookup(k) == nil {
				problems = append(problems, fmt.Errorf("config file %s: unknown key %q", file, k))
			}
		}
	}

	r := reader{v: v}
	c := Default()
	c.Version = r.bool("version")
	c.Watch = r.list("watch")
	c.Reload = r.list("reload")
	c.Process = v.GetString("process")
	c.PIDFile = v.GetString("pidfile")
	c.TargetMount = r.list("target-mount")
	c.StateDir = v.GetString("state-dir")
	c.TurnFile = v.GetString("turn-file")
	c.HeldFile = v.GetString("held-file")
	c.TurnHold = r.duration("turn-hold")
	c.HTTPMethod = v.GetString("http-method")
	c.HTTPSuccessCodes = v.GetString("http-success-codes")
	c.HTTPTimeout = r.duration("http-timeout")
	c.HTTPCAFile = v.GetString("http-ca-file")
	c.ExecTimeout = r.duration("exec-timeout")
	c.RestartGrace = r.duration("restart-grace")
	c.RestartJitter = r.duration("restart-jitter")
	c.MinInterval = r.duration("min-interval")
	c.ResyncPeriod = r.duration("resync-period")
	c.Validation = v.GetString("validate")
	c.Listen = v.GetString("listen")
	c.LogFormat = v.GetString("log-format")
	problems = append(problems, r.problems...)
	if c.Version {
		return c, nil
	}
	problems = append(problems, c.problems()...)
	if len(problems) > 0 {
		return Config{}, fmt.Errorf("%w: %w", ErrInvalid, errors.Join(problems...))
	}
	return c, nil
}

// readFile merges a YAML (or JSON, which is YAML) file into v. It decodes
// the file itself rather than through viper.ReadInConfig, whose codec
// registry links TOML, dotenv and more into the binary: a quarter of a
// megabyte of resident memory for formats nobody mounts from a ConfigMap.
func readFile(v *viper.Viper, file string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read config file: %w", err)
	}
	m := map[string]any{}
	if err := yaml.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("config file %s: %w", file, err)
	}
	return v.MergeConfigMap(m)
}

type reader struct {
	v        *viper.Viper
	problems []error
}

func (r *reader) duration(key string) time.Duration {
	d, err := cast.ToDurationE(r.v.Get(key))
	if err != nil {
		r.problems = append(r.problems, fmt.Errorf("--%s: %q is not a duration (like 500ms, 10s, 1m)", key, fmt.Sprint(r.v.Get(key))))
	}
	return d
}

func (r *reader) bool(key string) bool {
	b, err := cast.ToBoolE(r.v.Get(key))
	if err != nil {
		r.problems = append(r.problems, fmt.Errorf("--%s: %q is not a boolean", key, fmt.Sprint(r.v.Get(key))))
	}
	return b
}

// list reads a repeatable key: a list from flags or a file, or a
// comma-separated string (CSV quoting allowed) from the environment.
func (r *reader) list(key string) []string {
	switch val := r.v.Get(key).(type) {
	case nil:
		return nil
	case []string:
		return val
	case string:
		if strings.TrimSpace(val) == "" {
			return nil
		}
		rec, err := csv.NewReader(strings.NewReader(val)).Read()
		if err != nil {
			r.problems = append(r.problems, fmt.Errorf("%s_%s: %w", EnvPrefix, strings.ToUpper(strings.ReplaceAll(key, "-", "_")), err))
			return nil
		}
		return rec
	default:
		s, err := cast.ToStringSliceE(val)
		if err != nil {
			r.problems = append(r.problems, fmt.Errorf("%s: not a list of strings", key))
		}
		return s
	}
}

// Validate returns every problem of c at once, wrapped in ErrInvalid.
func (c Config) Validate() error {
	if p := c.problems(); len(p) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(p...))
	}
	return nil
}

func (c Config) problems() []error {
	var p []error
	add := func(format string, a ...any) { p = append(p, fmt.Errorf(format, a...)) }
	if len(c.Watch) == 0 {
		add("--watch: at least one directory is required")
	}
	for _, w := range c.Watch {
		if strings.TrimSpace(w) == "" {
			add("--watch: empty directory")
		} else if fi, err := os.Stat(w); err == nil && !fi.IsDir() {
			// A missing directory is waited for; a file would be
			// watched through a directory it is not the whole of.
			add("--watch %s: is a file, not a directory; watch the directory it is in (a Secret volume's mount path)", w)
		}
	}
	if len(c.Reload) == 0 {
		add("--reload: at least one spec is required (signal:NAME, restart, http:URL or exec:COMMAND)")
	}
	targets, restartAll, restart := false, false, false
	for _, s := range c.Reload {
		r, err := reloadspec.Parse(s)
		if err != nil {
			p = append(p, err)
			continue
		}
		targets = targets || r.Kind == "signal" || r.Kind == "restart"
		restartAll = restartAll || r.Kind == "restart-all"
		restart = restart || r.Kind == "restart"
	}
	if restartAll && len(c.Reload) > 1 {
		add("--reload restart-all: must be the only spec (it restarts every container of the pod)")
	}
	if c.StateDir != "" && !restartAll {
		add("--state-dir: only used by --reload restart-all")
	}
	if c.TurnFile != "" && !restart && !restartAll {
		add("--turn-file: only used by --reload restart and restart-all (the reloads that take the app down)")
	}
	if c.HeldFile != "" && c.TurnFile == "" {
		add("--held-file: only used with --turn-file")
	}
	if c.TurnHold <= 0 {
		add("--turn-hold: must be positive, got %s", c.TurnHold)
	}
	if c.Process != "" && c.PIDFile != "" {
		add("--process and --pidfile: set at most one")
	}
	if !targets && (c.Process != "" || c.PIDFile != "") {
		add("--process/--pidfile: only used by signal: and restart reloads")
	}
	if len(c.TargetMount) > 0 && (!targets || c.Process != "" || c.PIDFile != "") {
		add("--target-mount: only used by signal: and restart reloads without --process or --pidfile")
	}
	for _, d := range c.TargetMount {
		if strings.TrimSpace(d) == "" {
			add("--target-mount: empty directory")
		}
	}
	if c.HTTPCAFile != "" {
		if b, err := os.ReadFile(c.HTTPCAFile); err != nil {
			add("--http-ca-file: %v", err)
		} else if !hasPEMCertificate(b) {
			add("--http-ca-file %s: no PEM certificate found", c.HTTPCAFile)
		}
	}
	if c.HTTPMethod == "" || strings.ContainsAny(c.HTTPMethod, " \t/") {
		add("--http-method: %q is not an HTTP method", c.HTTPMethod)
	}
	if _, err := ParseCodes(c.HTTPSuccessCodes); err != nil {
		p = append(p, err)
	}
	positive := map[string]time.Duration{"--http-timeout": c.HTTPTimeout, "--exec-timeout": c.ExecTimeout, "--restart-grace": c.RestartGrace}
	for _, name := range slices.Sorted(maps.Keys(positive)) {
		if positive[name] <= 0 {
			add("%s: must be positive, got %s", name, positive[name])
		}
	}
	nonNeg := map[string]time.Duration{"--restart-jitter": c.RestartJitter, "--min-interval": c.MinInterval, "--resync-period": c.ResyncPeriod}
	for _, name := range slices.Sorted(maps.Keys(nonNeg)) {
		if nonNeg[name] < 0 {
			add("%s: must not be negative, got %s", name, nonNeg[name])
		}
	}
	if c.Validation != "auto" && c.Validation != "none" {
		add("--validate: %q is not auto or none", c.Validation)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		add("--listen: %q is not host:port: %v", c.Listen, err)
	}
	if c.LogFormat != "auto" && c.LogFormat != "text" && c.LogFormat != "json" {
		add("--log-format: %q is not text or json", c.LogFormat)
	}
	return p
}

// ParseCodes parses --http-success-codes: comma-separated codes (204),
// ranges (200-299) and classes (2xx).
func ParseCodes(s string) (func(int) bool, error) {
	type span struct{ lo, hi int }
	var spans []span
	bad := fmt.Errorf("--http-success-codes: %q is not a list of codes, ranges (200-299) or classes (2xx)", s)
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(strings.ToLower(part))
		switch {
		case len(part) == 3 && strings.HasSuffix(part, "xx") && part[0] >= '1' && part[0] <= '5':
			c := int(part[0]-'0') * 100
			spans = append(spans, span{c, c + 99})
		case strings.Contains(part, "-"):
			a, b, _ := strings.Cut(part, "-")
			lo, err1 := strconv.Atoi(a)
			hi, err2 := strconv.Atoi(b)
			if err1 != nil || err2 != nil || lo < 100 || hi > 599 || lo > hi {
				return nil, bad
			}
			spans = append(spans, span{lo, hi})
		default:
			c, err := strconv.Atoi(part)
			if err != nil || c < 100 || c > 599 {
				return nil, bad
			}
			spans = append(spans, span{c, c})
		}
	}
	return func(code int) bool {
		for _, sp := range spans {
			if code >= sp.lo && code <= sp.hi {
				return true
			}
		}
		return false
	}, nil
}

// hasPEMCertificate reports whether b holds a PEM "CERTIFICATE" block that
// parses.
func hasPEMCertificate(b []byte) bool {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return false
		}
		if blk.Type == "CERTIFICATE" {
			if _, err := x509.ParseCertificate(blk.Bytes); err == nil {
				return true
			}
		}
	}
}
