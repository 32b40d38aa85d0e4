//go:build unix

package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
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
		// One guard per VM at a time: the lock passes to the guard (the
		// same open file), so it is held until both this backup has
		// released it and the guard has exited.
		lock, err := lockThawGuard(uri, vm, guardLockWait)
		if err != nil {
			return nil, err
		}
		r, w, err := os.Pipe()
		if err != nil {
			lock.Close()
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
		cmd.ExtraFiles = []*os.File{lock}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			r.Close()
			w.Close()
			lock.Close()
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
			lock.Close()
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

// guardLockWait is how long a backup waits for an earlier backup's thaw
// guard of the same VM to finish (it thaws within seconds of its backup's
// death) before it backs up without freezing.
const guardLockWait = 10 * time.Second

// lockThawGuard takes the per-VM thaw-guard lock, waiting up to wait.
func lockThawGuard(uri, vm string, wait time.Duration) (*os.File, error) {
	sum := sha256.Sum256([]byte(uri + "\x00" + vm))
	path := filepath.Join(os.TempDir(), "lifeboat-thaw-"+hex.EncodeToString(sum[:8])+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("thaw guard lock: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if err != syscall.EWOULDBLOCK || time.Now().After(deadline) {
			f.Close()
			if err == syscall.EWOULDBLOCK {
				return nil, fmt.Errorf("VM %s: %w (lock %s)", vm, libvirt.ErrGuardBusy, path)
			}
			return nil, fmt.Errorf("thaw guard lock %s: %w", path, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
