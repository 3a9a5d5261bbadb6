package reload

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestExecEnvironment: an exec: command sees a PATH and none of the agent's
// environment.
func TestExecEnvironment(t *testing.T) {
	t.Setenv("K8SECRETS_AGENT_RELOAD", "http:http://127.0.0.1/-/reload?token=s3cr3t")
	out := filepath.Join(t.TempDir(), "env")
	e := &Exec{Args: []string{"/bin/sh", "-c", "env > " + out}, Timeout: 5 * time.Second}
	if err := e.Reload(context.Background()); err != nil {
		t.Fatalf("Reload() = %v", err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "s3cr3t") || strings.Contains(string(b), "K8SECRETS_AGENT") {
		t.Errorf("exec: command saw the agent's environment")
	}
	if !strings.Contains(string(b), "PATH=/usr/local/sbin:") {
		t.Errorf("exec: command has no PATH")
	}
}
