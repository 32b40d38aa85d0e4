//go:build linux

package st

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The ioctl numbers match <linux/mtio.h> as compiled on this machine.
func TestIoctlNumbers(t *testing.T) {
	switch runtime.GOARCH {
	case "amd64", "arm64", "riscv64", "loong64", "s390x":
		if mtiocTop != 0x40086d01 || mtiocGet != 0x80306d02 {
			t.Fatalf("MTIOCTOP %#x, MTIOCGET %#x", mtiocTop, mtiocGet)
		}
	case "386", "arm":
		if mtiocTop != 0x40086d01 || mtiocGet != 0x801c6d02 {
			t.Fatalf("MTIOCTOP %#x, MTIOCGET %#x", mtiocTop, mtiocGet)
		}
	}
}

// No hardware here: Open refuses rewinding devices and anything that is
// not a tape drive, with the reason.
func TestOpenRefuses(t *testing.T) {
	if _, err := Open("/dev/st0", Options{}); err == nil || !strings.Contains(err.Error(), "no-rewind device /dev/nst0") {
		t.Fatalf("open /dev/st0: %v", err)
	}
	p := filepath.Join(t.TempDir(), "nst9")
	os.WriteFile(p, nil, 0o644)
	if _, err := Open(p, Options{}); err == nil || !strings.Contains(err.Error(), "is it a tape drive") {
		t.Fatalf("open a plain file: %v", err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "nst8"), Options{}); err == nil {
		t.Fatal("opened a missing device")
	}
}
