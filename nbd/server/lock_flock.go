//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package server

import (
	"os"
	"syscall"
)

// lockFile takes an exclusive, non-blocking flock on f so that two servers
// never share an overlay.
func lockFile(f *os.File) (func(), error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) { lerr = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB) }); err != nil {
		return nil, err
	}
	if lerr != nil {
		return nil, lerr
	}
	return func() {
		rc.Control(func(fd uintptr) { syscall.Flock(int(fd), syscall.LOCK_UN) })
	}, nil
}
