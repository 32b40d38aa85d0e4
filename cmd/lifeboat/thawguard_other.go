//go:build !unix

package main

import "lifeboat/hypervisor/libvirt"

// newThawGuard: the libvirt driver reaches only local unix-socket
// daemons, so no guard here.
func newThawGuard() libvirt.ThawGuardFunc { return nil }

func ignoreStopSignals() {}
