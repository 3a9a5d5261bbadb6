package main

import (
	"fmt"
	"sort"
	"sync"
)

// flight is what the run is changing right now, for the message of a second
// interrupt: workload → its last rollout state.
var flight = struct {
	sync.Mutex
	m map[string]string
}{m: map[string]string{}}

func track(workload, state string) {
	flight.Lock()
	flight.m[workload] = state
	flight.Unlock()
}

func untrack(workload string) {
	flight.Lock()
	delete(flight.m, workload)
	flight.Unlock()
}

// inFlight lists the workloads being rolled out or back, with their last
// state. After a first interrupt only rollbacks go on: rollouts being waited
// for are left to a rerun at once.
func inFlight() []string {
	flight.Lock()
	defer flight.Unlock()
	var out []string
	for w, state := range flight.m {
		out = append(out, fmt.Sprintf("%s (being rolled out or back; last state: %s)", w, state))
	}
	sort.Strings(out)
	return out
}
