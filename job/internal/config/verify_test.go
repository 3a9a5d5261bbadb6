package config

import (
	"errors"
	"io"
	"strings"
	"testing"
)

func TestVerifyFlags(t *testing.T) {
	env := func(vars map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	}
	cfg, err := Parse([]string{"refresh", "--secret", "s"}, env(nil), io.Discard)
	if err != nil || !cfg.Wait || cfg.Via != "auto" {
		t.Fatalf("Parse(refresh) = wait %v, via %q, %v; want waiting, auto", cfg.Wait, cfg.Via, err)
	}
	cfg, err = Parse([]string{"refresh", "--secret", "s", "--wait=false", "--verify-via", "proxy"}, env(nil), io.Discard)
	if err != nil || cfg.Wait || cfg.Via != "proxy" {
		t.Fatalf("Parse(refresh --wait=false --verify-via proxy) = wait %v, via %q, %v", cfg.Wait, cfg.Via, err)
	}
	if cfg, err = Parse([]string{"status"}, env(map[string]string{"K8SECRETS_VERIFY_VIA": "direct"}), io.Discard); err != nil || cfg.Via != "direct" {
		t.Fatalf("Parse(status, K8SECRETS_VERIFY_VIA=direct) = via %q, %v", cfg.Via, err)
	}
	if cfg, err = Parse([]string{"watch", "--verify-via", "proxy"}, env(nil), io.Discard); err != nil || cfg.Via != "proxy" {
		t.Fatalf("Parse(watch --verify-via proxy) = via %q, %v", cfg.Via, err)
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"status", "--verify-via", "tunnel"}, nil, `--verify-via "tunnel": must be auto, direct or proxy`},
		{[]string{"watch", "--verify-via", "tunnel"}, nil, `--verify-via "tunnel": must be auto, direct or proxy`},
		{[]string{"refresh", "--secret", "s"}, map[string]string{"K8SECRETS_WAIT": "yes"}, "K8SECRETS_WAIT"},
		{[]string{"inject", "-l", "a=b", "--secret", "s", "--wait"}, nil, "unknown flag: --wait"},
	} {
		if _, err := Parse(tc.args, env(tc.env), io.Discard); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q, %v) = %v; want ErrInvalid saying %q", tc.args, tc.env, err, tc.want)
		}
	}
	if !strings.Contains(ExitCodes, "\n  9  refresh --wait") {
		t.Errorf("ExitCodes does not document 9")
	}
}
