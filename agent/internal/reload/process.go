package reload

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// ErrNoProcess means no target process was found; the reloader retries, as
// the app may not have started yet.
var ErrNoProcess = errors.New("no target process")

// agentComm is the agent's own comm (15 characters, the kernel's limit).
const agentComm = "k8secrets-agent"

// pfKthread is PF_KTHREAD in /proc/PID/stat's flags field.
const pfKthread = 0x00200000

// Target selects the processes to signal. With neither Name nor PIDFile set
// it selects the main process of every other container of the pod: the
// processes whose parent PID is 0 in the shared PID namespace, except PID 1
// (the pause process), the agent itself and any other k8secrets-agent.
type Target struct {
	// Name matches /proc/PID/comm or the base name of /proc/PID/exe; of a
	// tree of matching processes only the topmost is selected.
	Name string
	// PIDFile holds the PID of the one process to signal.
	PIDFile string
	// ProcRoot is "/proc" unless a test says otherwise.
	ProcRoot string
}

// Process is one found target.
type Process struct {
	PID  int
	Comm string
	ppid int
	// start tells this process from a later one given the same PID.
	start uint64
}

func (t Target) String() string {
	switch {
	case t.PIDFile != "":
		return "pid file " + t.PIDFile
	case t.Name != "":
		return "process " + t.Name
	default:
		return "the pod's app containers' main processes"
	}
}

// Find returns the processes the target selects, or ErrNoProcess.
func (t Target) Find() ([]Process, error) {
	proc := t.ProcRoot
	if proc == "" {
		proc = "/proc"
	}
	if t.PIDFile != "" {
		b, err := os.ReadFile(t.PIDFile)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("%w: pid file %s does not exist", ErrNoProcess, t.PIDFile)
			}
			return nil, fmt.Errorf("read pid file: %w", err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("pid file %s does not hold a PID", t.PIDFile)
		}
		st, err := readStat(proc, pid)
		if err != nil || st.state == 'Z' {
			return nil, fmt.Errorf("%w: pid %d from %s is not running", ErrNoProcess, pid, t.PIDFile)
		}
		return []Process{{PID: pid, Comm: st.comm, start: st.start}}, nil
	}

	self := os.Getpid()
	selfExe := exeID(filepath.Join(proc, "self", "exe"))
	entries, err := os.ReadDir(proc)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	name := t.Name
	if len(name) > 15 {
		name = name[:15]
	}
	var out []Process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		st, err := readStat(proc, pid)
		if err != nil || st.state == 'Z' || st.flags&pfKthread != 0 || st.comm == agentComm {
			continue
		}
		exe := filepath.Join(proc, e.Name(), "exe")
		if selfExe != "" && exeID(exe) == selfExe {
			continue
		}
		if t.Name != "" {
			target, _ := os.Readlink(exe) // unreadable for another user: comm decides
			if st.comm != name && filepath.Base(target) != t.Name {
				continue
			}
		} else if st.ppid != 0 || pid == 1 {
			continue
		}
		out = append(out, Process{PID: pid, Comm: st.comm, ppid: st.ppid, start: st.start})
	}
	// Of a process tree with one name (nginx's master and workers), only
	// the top is signalled: it handles reloads for its children.
	matched := map[int]bool{}
	for _, p := range out {
		matched[p.PID] = true
	}
	out = slices.DeleteFunc(out, func(p Process) bool { return matched[p.ppid] })
	if len(out) == 0 {
		if t.Name == "" {
			return nil, fmt.Errorf("%w: no other container's process is visible; does the pod set shareProcessNamespace: true?", ErrNoProcess)
		}
		return nil, fmt.Errorf("%w: no process named %s", ErrNoProcess, t.Name)
	}
	return out, nil
}

type stat struct {
	comm  string
	state byte
	ppid  int
	flags uint64
	start uint64 // starttime, in clock ticks since boot
}

// readStat parses /proc/PID/stat: "pid (comm) state ppid pgrp session
// tty_nr tpgid flags ...". comm may hold spaces and parentheses, so it ends
// at the last ')'.
func readStat(proc string, pid int) (stat, error) {
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return stat{}, err
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return stat{}, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[end+1:])
	if len(fields) < 7 || len(fields[0]) != 1 {
		return stat{}, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return stat{}, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	flags, _ := strconv.ParseUint(fields[6], 10, 64)
	var start uint64
	if len(fields) > 19 {
		start, _ = strconv.ParseUint(fields[19], 10, 64)
	}
	return stat{comm: s[open+1 : end], state: fields[0][0], ppid: ppid, flags: flags, start: start}, nil
}

// exeID identifies an executable by device and inode, so that the agent
// recognises another copy of itself under any name; "" if unreadable.
func exeID(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// alive reports whether p still runs: not a zombie, and not a later
// process that was given its PID.
func alive(proc string, p Process) bool {
	st, err := readStat(proc, p.PID)
	return err == nil && st.state != 'Z' && st.start == p.start
}
