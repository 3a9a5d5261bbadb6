package apitest

import "syscall"

// sysProcAttr puts a server in its own process group and has the kernel kill
// it if the test binary dies without cleaning up (a test timeout's panic, a
// SIGKILL), so no etcd outlives its test.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
