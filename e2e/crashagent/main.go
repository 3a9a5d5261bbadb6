// Command crashagent stands in for a k8secrets agent that starts, passes
// its probes, and dies soon after: it serves 200 on /healthz and /readyz at
// the --listen address the Job gives the agent, and exits 1 eight seconds
// after it started. The e2e tests inject it with --agent-image to prove
// that a crash after Ready fails the rollout (--healthy-for).
package main

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	addr := ":9533"
	for _, a := range os.Args[1:] {
		if v, ok := strings.CutPrefix(a, "--listen="); ok {
			addr = v
		}
	}
	ok := func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }
	http.HandleFunc("/healthz", ok)
	http.HandleFunc("/readyz", ok)
	go func() {
		time.Sleep(8 * time.Second)
		fmt.Fprintln(os.Stderr, "crashagent: exiting 1, as planned")
		os.Exit(1)
	}()
	if err := http.ListenAndServe(addr, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
