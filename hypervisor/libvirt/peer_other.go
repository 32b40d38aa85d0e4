//go:build !linux

package libvirt

import "net"

func peerPID(net.Conn) int              { return 0 }
func procEnviron(int) map[string]string { return map[string]string{} }
func sameMountNS(int) bool              { return true }
