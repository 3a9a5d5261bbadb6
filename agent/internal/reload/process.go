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
	"time"
)

// ErrNoProcess means no target process was found; the reloader retries, as
// the app may not have started yet.
var ErrNoProcess = errors.New("no target process")

// agentComm is the agent's own comm (15 characters, the kernel's limit).
const agentComm = "k8secrets-agent"

// pfKthread is PF_KTHREAD in /proc/PID/stat's flags field.
const pfKthread = 0x00200000

// Target selects the processes to signal. With neither Name nor PIDFile set
// it selects the main process of each container that mounts one of Dirs:
// of the processes whose mount table shows a watched volume, grouped by
// mount namespace (one per container), the first one started among those
// whose parent PID is 0 (a container's first process appears so in the
// pod's shared PID namespace, its parent being outside it). Containers
// that do not mount them (a mesh proxy, a debug container), exec probes and
// `kubectl exec` sessions are never selected; nor, in any mode, are PID 1
// (pause), the agent's own container or any k8secrets-agent.
type Target struct {
	// Name matches /proc/PID/comm or the base name of /proc/PID/exe; of a
	// tree of matching processes only the topmost is selected.
	Name string
	// PIDFile holds the PID of the one process to signal.
	PIDFile string
	// Dirs are the watched directories, for the default selection.
	Dirs []string
	// Marks, when set, replace Dirs in the default selection: directories
	// (the Job's target marker, an emptyDir of its own) whose volume the
	// target containers mount, for apps that take the Secret through env
	// and do not mount it.
	Marks []string
	// Changed, when set, returns when the content to deliver appeared
	// (zero if unknown). A process that certainly started after it has
	// read that content and is spared: a second restart would be for
	// nothing, and a SIGHUP before the app installs its handler kills it.
	Changed func() time.Time
	// ProcRoot is "/proc" unless a test says otherwise.
	ProcRoot string
}

// Process is one found target.
type Process struct {
	PID  int
	Comm string
	// Started is when the process started, to the clock tick (10ms)
	// below.
	Started time.Time
	ppid    int
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
		return "the main process of each container that mounts " + strings.Join(t.marks(), ", ")
	}
}

// marks are the directories whose volumes select the target containers.
func (t Target) marks() []string {
	if len(t.Marks) > 0 {
		return t.Marks
	}
	return t.Dirs
}

func (t Target) proc() string {
	if t.ProcRoot == "" {
		return "/proc"
	}
	return t.ProcRoot
}

// Due returns the processes to reload now: those Find selects, except the
// ones that started after the content changed. It returns no process and no
// error when every target is that young.
func (t Target) Due() ([]Process, error) {
	procs, err := t.Find()
	if err != nil || t.Changed == nil {
		return procs, err
	}
	changed := t.Changed()
	return slices.DeleteFunc(procs, func(p Process) bool { return p.startedAfter(changed) }), nil
}

// Behind returns the processes that certainly started before the content
// changed: at the agent's start, those have not read it.
func (t Target) Behind() ([]Process, time.Time, error) {
	if t.Changed == nil {
		return nil, time.Time{}, nil
	}
	changed := t.Changed()
	procs, err := t.Find()
	if err != nil {
		return nil, changed, err
	}
	return slices.DeleteFunc(procs, func(p Process) bool { return !p.startedBefore(changed) }), changed, nil
}

// Find returns the processes the target selects, or ErrNoProcess.
func (t Target) Find() ([]Process, error) {
	proc := t.proc()
	self := os.Getpid()
	selfExe := exeID(filepath.Join(proc, "self", "exe"))
	// never is what no mode selects: the agent, PID 1 of its namespace
	// (pause, or the agent itself without a shared namespace), another
	// k8secrets-agent, a kernel thread, a zombie.
	never := func(pid int, st stat) string {
		switch {
		case pid == self:
			return "the agent itself"
		case pid == 1:
			return "PID 1 of the agent's PID namespace (the pod's pause process, or the agent itself without shareProcessNamespace)"
		case st.state == 'Z':
			return "a zombie"
		case st.flags&pfKthread != 0:
			return "a kernel thread"
		case st.comm == agentComm || (selfExe != "" && exeID(filepath.Join(proc, strconv.Itoa(pid), "exe")) == selfExe):
			return "a k8secrets-agent"
		}
		return ""
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
		if why := never(pid, st); why != "" {
			return nil, fmt.Errorf("pid file %s holds pid %d, %s, which the agent never signals; have the app write its own PID there (in the agent's PID namespace: shareProcessNamespace: true)", t.PIDFile, pid, why)
		}
		return []Process{{PID: pid, Comm: st.comm, Started: startedAt(st.start), start: st.start}}, nil
	}

	entries, err := os.ReadDir(proc)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var vols []volume
	selfNS := ""
	if t.Name == "" {
		mounts, err := readMounts(filepath.Join(proc, "self", "mountinfo"))
		if err != nil {
			return nil, fmt.Errorf("read the agent's mounts: %w", err)
		}
		if vols = watchedVolumes(mounts, t.marks()); len(vols) == 0 {
			return nil, fmt.Errorf("%w: no mount of the agent holds %s; set --process or --pidfile", ErrNoProcess, strings.Join(t.marks(), ", "))
		}
		selfNS = holding(mounts, vols)
	}
	name := t.Name
	if len(name) > 15 {
		name = name[:15]
	}
	var out []Process
	first := map[string]int{} // mount namespace -> index in out of its main process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(proc, pid)
		if err != nil || never(pid, st) != "" {
			continue
		}
		p := Process{PID: pid, Comm: st.comm, ppid: st.ppid, start: st.start}
		if t.Name != "" {
			target, _ := os.Readlink(filepath.Join(proc, e.Name(), "exe")) // unreadable for another user: comm decides
			if st.comm != name && filepath.Base(target) != t.Name {
				continue
			}
			out = append(out, p)
			continue
		}
		if st.ppid != 0 {
			continue
		}
		mounts, err := readMounts(filepath.Join(proc, e.Name(), "mountinfo"))
		if err != nil {
			continue // gone, or not ours to read: not a container we can tell
		}
		ns := holding(mounts, vols)
		if ns == "" || ns == selfNS {
			continue
		}
		// The container's first process started before the exec'd ones
		// (probes, kubectl exec) that share its mount namespace.
		if i, ok := first[ns]; ok {
			if q := out[i]; q.start < p.start || (q.start == p.start && q.PID < p.PID) {
				continue
			}
			out[i] = p
			continue
		}
		first[ns] = len(out)
		out = append(out, p)
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
			return nil, fmt.Errorf("%w: no other container that mounts %s has a visible process; does the pod set shareProcessNamespace: true?", ErrNoProcess, strings.Join(t.marks(), ", "))
		}
		return nil, fmt.Errorf("%w: no process named %s", ErrNoProcess, t.Name)
	}
	for i := range out {
		out[i].Started = startedAt(out[i].start)
	}
	slices.SortFunc(out, func(a, b Process) int { return a.PID - b.PID })
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
