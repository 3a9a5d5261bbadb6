package reload

import (
	"time"

	"golang.org/x/sys/unix"
)

// clockTick is USER_HZ, the unit of starttime in /proc/PID/stat: 100 per
// second on every architecture Linux and Go share.
const clockTick = 10 * time.Millisecond

// startedAt converts a starttime (clock ticks since boot, suspend
// included) to the wall-clock time at which that tick began: the process
// started in [startedAt, startedAt+clockTick).
func startedAt(ticks uint64) time.Time {
	now := time.Now().Round(0)
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Time{}
	}
	boot := now.Add(-time.Duration(ts.Nano()))
	return boot.Add(time.Duration(ticks) * clockTick)
}

// startedAfter reports whether p certainly started after t: it has read
// content that appeared at t. A zero t is before nothing.
func (p Process) startedAfter(t time.Time) bool {
	return !t.IsZero() && p.Started.After(t)
}

// startedBefore reports whether p certainly started before t: content that
// appeared at t is newer than anything it read at start.
func (p Process) startedBefore(t time.Time) bool {
	return !t.IsZero() && !p.Started.Add(clockTick).After(t)
}
