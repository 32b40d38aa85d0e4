package server

import (
	"os"
	"syscall"
)

// punchHole releases [off, off+n) of f; failures are ignored (the caller
// never reads the range).
func punchHole(f *os.File, off, n int64) {
	const punchHole, keepSize = 0x02, 0x01 // FALLOC_FL_*
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) { syscall.Fallocate(int(fd), punchHole|keepSize, off, n) })
}
