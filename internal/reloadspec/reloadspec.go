// Package reloadspec parses the agent's --reload specs. The agent parses
// them at start; the Job parses the same spec before it plans an injection,
// so a spec the agent would refuse never costs a rollout and a rollback.
package reloadspec

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reload is one parsed --reload spec.
type Reload struct {
	Kind   string // "signal", "restart", "restart-all", "http" or "exec"
	Signal syscall.Signal
	URL    *url.URL
	Args   []string
}

// Parse parses a --reload spec.
func Parse(spec string) (Reload, error) {
	kind, arg, _ := strings.Cut(spec, ":")
	switch kind {
	case "restart":
		if arg != "" {
			return Reload{}, fmt.Errorf("--reload %q: restart takes no argument", spec)
		}
		return Reload{Kind: "restart"}, nil
	case "restart-all":
		if arg != "" {
			return Reload{}, fmt.Errorf("--reload %q: restart-all takes no argument", spec)
		}
		return Reload{Kind: "restart-all"}, nil
	case "signal":
		sig := unix.SignalNum(strings.ToUpper(arg))
		if sig == 0 {
			sig = unix.SignalNum("SIG" + strings.ToUpper(arg))
		}
		if n, err := strconv.Atoi(arg); err == nil && n > 0 && n < 65 {
			sig = syscall.Signal(n)
		}
		if sig == 0 {
			return Reload{}, fmt.Errorf("--reload %q: %q is not a signal name or number (like SIGHUP)", spec, arg)
		}
		return Reload{Kind: "signal", Signal: sig}, nil
	case "http":
		u, err := url.Parse(arg)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return Reload{}, fmt.Errorf("--reload http:URL: %q is not an http or https URL", redact(arg))
		}
		return Reload{Kind: "http", URL: u}, nil
	case "exec":
		args, err := splitCommand(arg)
		if err != nil {
			return Reload{}, fmt.Errorf("--reload %q: %w", spec, err)
		}
		return Reload{Kind: "exec", Args: args}, nil
	default:
		return Reload{}, fmt.Errorf("--reload %q: not one of signal:NAME, restart, restart-all, http:URL, exec:COMMAND", redact(spec))
	}
}

// redact hides a URL's password and the values of its query (where reload
// endpoints take tokens, e.g. ?token=).
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil || (u.User == nil && u.RawQuery == "") {
		return s
	}
	if u.RawQuery != "" {
		q := u.Query()
		for _, vs := range q {
			for i := range vs {
				vs[i] = "xxxxx"
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// splitCommand splits an exec: command into arguments like a shell would,
// for single and double quotes and backslashes, without expansions.
func splitCommand(s string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inArg, quote := false, rune(0)
	esc := false
	for _, r := range s {
		switch {
		case esc:
			cur.WriteRune(r)
			esc = false
		case r == '\\' && quote != '\'':
			esc, inArg = true, true
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inArg = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(r)
			inArg = true
		}
	}
	if quote != 0 || esc {
		return nil, errors.New("unterminated quote or escape")
	}
	if inArg {
		args = append(args, cur.String())
	}
	if len(args) == 0 {
		return nil, errors.New("empty command")
	}
	return args, nil
}
