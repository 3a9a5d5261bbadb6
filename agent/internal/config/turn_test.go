package config

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestTurnFile(t *testing.T) {
	for _, reload := range []string{"restart", "restart-all"} {
		c, err := Load([]string{"--watch=/w", "--reload=" + reload, "--turn-file=/t/refreshed-at"}, io.Discard)
		if err != nil || c.TurnFile != "/t/refreshed-at" || c.TurnHold != 5*time.Minute {
			t.Errorf("Load(--reload=%s --turn-file) = %q, %v, %v; want the file and the default hold of 5m", reload, c.TurnFile, c.TurnHold, err)
		}
	}
	t.Setenv("K8SECRETS_AGENT_TURN_HOLD", "90s")
	if c, err := Load([]string{"--watch=/w", "--reload=restart", "--turn-file=/t/f"}, io.Discard); err != nil || c.TurnHold != 90*time.Second {
		t.Errorf("Load() with K8SECRETS_AGENT_TURN_HOLD=90s = %v, %v; want 90s", c.TurnHold, err)
	}
	t.Setenv("K8SECRETS_AGENT_TURN_HOLD", "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--watch=/w", "--reload=signal:SIGHUP", "--turn-file=/t/f"}, "--turn-file: only used by --reload restart and restart-all"},
		{[]string{"--watch=/w", "--reload=restart", "--turn-file=/t/f", "--turn-hold=0s"}, "--turn-hold: must be positive"},
		{[]string{"--watch=/w", "--reload=restart", "--held-file=/t/h"}, "--held-file: only used with --turn-file"},
	} {
		if _, err := Load(c.args, io.Discard); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Load(%q) = %v; want ErrInvalid with %q", c.args, err, c.want)
		}
	}
}
