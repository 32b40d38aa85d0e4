//go:build unix

package main

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"lifeboat/hypervisor/libvirt"
)

// One thaw guard per VM: while an earlier guard (here: its lock) lives, a
// new backup waits for it and then gives up with ErrGuardBusy; other VMs
// are not held up; once the earlier one is gone the lock is free again.
func TestThawGuardLock(t *testing.T) {
	uri, vm := "qemu:///test", fmt.Sprintf("lbt-lock-%d", time.Now().UnixNano())
	first, err := lockThawGuard(uri, vm, 0)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := lockThawGuard(uri, vm, 300*time.Millisecond); !errors.Is(err, libvirt.ErrGuardBusy) {
		t.Fatalf("second guard of the same VM: %v, want ErrGuardBusy", err)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Errorf("gave up after %s without waiting", waited)
	}
	other, err := lockThawGuard(uri, vm+"-other", 0)
	if err != nil {
		t.Fatalf("another VM: %v", err)
	}
	other.Close()
	first.Close()
	again, err := lockThawGuard(uri, vm, 0)
	if err != nil {
		t.Fatalf("after the first guard ended: %v", err)
	}
	again.Close()
}
