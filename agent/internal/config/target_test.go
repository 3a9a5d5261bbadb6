package config

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestTargetMount(t *testing.T) {
	c, err := Load([]string{"--watch=/w", "--reload=restart", "--target-mount=/var/run/k8secrets-target/db"}, io.Discard)
	if err != nil || !slices.Equal(c.TargetMount, []string{"/var/run/k8secrets-target/db"}) {
		t.Errorf("Load(--target-mount) = %q, %v; want the marker directory", c.TargetMount, err)
	}
	t.Setenv("K8SECRETS_AGENT_TARGET_MOUNT", "/m1,/m2")
	if c, err := Load([]string{"--watch=/w", "--reload=restart"}, io.Discard); err != nil || !slices.Equal(c.TargetMount, []string{"/m1", "/m2"}) {
		t.Errorf("Load() with K8SECRETS_AGENT_TARGET_MOUNT = %q, %v; want /m1, /m2", c.TargetMount, err)
	}
	t.Setenv("K8SECRETS_AGENT_TARGET_MOUNT", "")
	for _, args := range [][]string{
		{"--watch=/w", "--reload=http:http://localhost/", "--target-mount=/m"},
		{"--watch=/w", "--reload=restart-all", "--target-mount=/m"},
		{"--watch=/w", "--reload=restart", "--process=app", "--target-mount=/m"},
	} {
		if _, err := Load(args, io.Discard); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "--target-mount") {
			t.Errorf("Load(%q) = %v; want ErrInvalid naming --target-mount", args, err)
		}
	}
}
