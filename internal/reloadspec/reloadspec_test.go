package reloadspec

import (
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		spec string
		want Reload
	}{
		{"restart", Reload{Kind: "restart"}},
		{"restart-all", Reload{Kind: "restart-all"}},
		{"signal:SIGHUP", Reload{Kind: "signal", Signal: syscall.SIGHUP}},
		{"signal:usr1", Reload{Kind: "signal", Signal: syscall.SIGUSR1}},
		{"signal:1", Reload{Kind: "signal", Signal: syscall.SIGHUP}},
		{"exec:/bin/kill -HUP 1", Reload{Kind: "exec", Args: []string{"/bin/kill", "-HUP", "1"}}},
		{`exec:/bin/sh -c "echo 'a b'"`, Reload{Kind: "exec", Args: []string{"/bin/sh", "-c", "echo 'a b'"}}},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := Parse(tt.spec)
			if err != nil {
				t.Fatalf("Parse(%q) error = %v", tt.spec, err)
			}
			if got.Kind != tt.want.Kind || got.Signal != tt.want.Signal || !slices.Equal(got.Args, tt.want.Args) {
				t.Errorf("Parse(%q) = %+v; want %+v", tt.spec, got, tt.want)
			}
		})
	}
	got, err := Parse("http://user:secret@127.0.0.1:8080/-/reload")
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("Parse(http URL without prefix) = %+v, %v; want an error without the password", got, err)
	}
	if _, err := Parse("restart-all:now"); err == nil {
		t.Error("Parse(restart-all:now) = nil error")
	}
	if _, err := Parse("exec:'unterminated"); err == nil {
		t.Error("Parse(unterminated quote) = nil error")
	}
}
