//go:build unix

package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"lifeboat/hypervisor/libvirt"
)

// newThawGuard starts thaw guards as copies of this binary in a session
// of their own: a signal to the backup's process group or terminal (^C,
// kill -KILL -PGID) does not reach them.
func newThawGuard() libvirt.ThawGuardFunc {
	return func(_ context.Context, uri, vm string, freezeTimeout time.Duration) (func(bool), error) {
		exe, err := selfExe()
		if err != nil {
			return nil, fmt.Errorf("start thaw guard: %w", err)
		}
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("start thaw guard: %w", err)
		}
		// Not CommandContext: the guard is for when this process and its
		// contexts are gone.
		cmd := exec.Command(exe, thawGuardCmd, "--uri", uri, "--vm", vm,
			"--parent", strconv.Itoa(os.Getpid()), "--freeze-timeout", freezeTimeout.String())
		cmd.Args[0] = "lifeboat"
		cmd.Dir = "/"
		cmd.Stdin = r
		if guardStderrOK() {
			cmd.Stderr = os.Stderr
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			r.Close()
			w.Close()
			return nil, fmt.Errorf("start thaw guard: %w", err)
		}
		r.Close()
		exited := make(chan struct{})
		go func() {
			cmd.Wait() // reaps it: the agent runs for months
			close(exited)
		}()
		return func(thawed bool) {
			if thawed {
				// A guard already gone (it gave up waiting and
				// thawed, or was killed) makes this fail: nothing
				// to tell it then.
				w.WriteString(libvirt.ThawGuardDone)
			}
			w.Close()
			if thawed {
				select {
				case <-exited:
				case <-time.After(guardReleaseWait):
				}
			}
		}, nil
	}
}

// selfExe is this binary, even when the file was replaced or deleted
// since it started (an upgrade under a running agent).
func selfExe() (string, error) {
	if _, err := os.Stat("/proc/self/exe"); err == nil {
		return "/proc/self/exe", nil
	}
	return os.Executable()
}

// guardStderrOK says the guard may share this process's stderr: not when
// it is a pipe, whose reader (a test, `| tee`) would wait for the guard
// as well.
func guardStderrOK() bool {
	fi, err := os.Stderr.Stat()
	return err == nil && fi.Mode()&fs.ModeNamedPipe == 0
}

func ignoreStopSignals() { signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP) }
