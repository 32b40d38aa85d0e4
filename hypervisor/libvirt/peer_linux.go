package libvirt

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"syscall"
)

// peerPID is the pid of the process at the other end of a unix socket.
func peerPID(c net.Conn) int {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0
	}
	var cred *syscall.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return 0
	}
	return int(cred.Pid)
}

// procEnviron reads a process's environment (root can read any).
func procEnviron(pid int) map[string]string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	env := map[string]string{}
	if err != nil {
		return env
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if i := bytes.IndexByte(kv, '='); i > 0 {
			env[string(kv[:i])] = string(kv[i+1:])
		}
	}
	return env
}

// sameMountNS says whether pid sees the same mounts as this process (true
// when that cannot be told).
func sameMountNS(pid int) bool {
	a, errA := os.Readlink("/proc/self/ns/mnt")
	b, errB := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if errA != nil || errB != nil {
		return true
	}
	return a == b
}
