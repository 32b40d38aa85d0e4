package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/disk/formats"
	"lifeboat/lab"
)

// guestWrite makes the running VM write a pattern to its disk through
// QEMU, as a guest would.
func guestWrite(t *testing.T, uri, vm string, pattern byte, off, n int64) {
	t.Helper()
	cmd := fmt.Sprintf(`qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "write -P %#x %d %d"`, pattern, off, n)
	out, err := exec.Command("virsh", "-c", uri, "qemu-monitor-command", "--hmp", vm, cmd).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Fatalf("guest write: %v %s", err, out)
	}
}

func vmState(t *testing.T, uri, vm string) string {
	out, _ := exec.Command("virsh", "-c", uri, "domstate", vm).CombinedOutput()
	return strings.TrimSpace(string(out))
}

// Issue 3 through the CLI on the lab: an online backup of a running VM,
// an incremental that reads only what the guest wrote, both restoring to
// what the guest saw at the snapshot moment; then an offline backup that
// holds the saved state and leaves the VM running.
func TestLibvirtVMBackup(t *testing.T) {
	l := lab.Start(t)
	n := l.Node("node0")
	if len(n.VMs) == 0 {
		t.Fatal("lab node0 runs no VM")
	}
	vm := n.VMs[0]
	if s := vmState(t, n.URI, vm); s != "running" {
		exec.Command("virsh", "-c", n.URI, "start", vm).Run()
	}
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	lb(t, repoDir, false, "repo", "init")

	// The lab's VMs outlive test runs: reset the regions this test checks
	// so a pattern left by an earlier run cannot pass for a new write.
	guestWrite(t, n.URI, vm, 0x11, 20<<20, 1<<20)
	guestWrite(t, n.URI, vm, 0x11, 40<<20+512<<10, 512<<10)
	guestWrite(t, n.URI, vm, 0x5c, 8<<20, 1<<20)
	var r1 struct {
		Point       string   `json:"point"`
		Consistency string   `json:"consistency"`
		Notes       []string `json:"notes"`
		Stats       struct {
			BytesRead int64 `json:"bytes_read"`
		} `json:"stats"`
	}
	json.Unmarshal([]byte(lb(t, repoDir, false, "backup", "--libvirt", n.URI, "--vm", vm, "--json")), &r1)
	if r1.Consistency != "crash" && r1.Consistency != "application" {
		t.Fatalf("online backup consistency %q", r1.Consistency)
	}
	// Written after the snapshot: must not be in the first point.
	guestWrite(t, n.URI, vm, 0x6d, 20<<20, 1<<20)
	guestWrite(t, n.URI, vm, 0x7e, 40<<20+512<<10, 512<<10)
	var r2 = r1
	json.Unmarshal([]byte(lb(t, repoDir, false, "backup", "--libvirt", n.URI, "--vm", vm, "--json")), &r2)
	written := int64(1<<20 + 512<<10)
	if r2.Stats.BytesRead == 0 || r2.Stats.BytesRead > 2*written {
		t.Errorf("incremental read %d bytes for %d written (notes %v)", r2.Stats.BytesRead, written, r2.Notes)
	}
	t.Logf("full read %d bytes; incremental read %d bytes for %d written", r1.Stats.BytesRead, r2.Stats.BytesRead, written)

	check := func(point string, want map[int64]byte, absent map[int64]byte) {
		out := filepath.Join(dir, "r-"+point)
		lb(t, repoDir, false, "restore", "--point", point, "--to", out)
		var disks []string
		filepath.Walk(filepath.Join(out, "disks"), func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				disks = append(disks, p)
			}
			return nil
		})
		if len(disks) != 1 {
			t.Fatalf("point %s restored %d disks", point, len(disks))
		}
		img, err := formats.Open(context.Background(), disks[0])
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		buf := make([]byte, 512<<10)
		for off, p := range want {
			img.ReadAt(buf, off)
			if !bytes.Equal(buf, bytes.Repeat([]byte{p}, len(buf))) {
				t.Errorf("point %s: guest pattern %#x missing at %d", point, p, off)
			}
		}
		for off, p := range absent {
			img.ReadAt(buf, off)
			if bytes.Equal(buf, bytes.Repeat([]byte{p}, len(buf))) {
				t.Errorf("point %s holds pattern %#x at %d, written after its snapshot", point, p, off)
			}
		}
	}
	check(r1.Point, map[int64]byte{8 << 20: 0x5c}, map[int64]byte{20 << 20: 0x6d, 40<<20 + 512<<10: 0x7e})
	check(r2.Point, map[int64]byte{8 << 20: 0x5c, 20 << 20: 0x6d, 40<<20 + 512<<10: 0x7e}, nil)

	// Offline: the saved state is part of the point and the VM runs again.
	out := lb(t, repoDir, false, "backup", "--libvirt", n.URI, "--vm", vm, "--offline", "--json")
	var r3 = r1
	json.Unmarshal([]byte(out), &r3)
	if r3.Consistency != "offline" {
		t.Errorf("offline backup consistency %q", r3.Consistency)
	}
	pts := points(t, repoDir)
	roles := map[string]bool{}
	for _, f := range pts[len(pts)-1].Files {
		roles[f.Role] = true
	}
	if !roles["saved-state"] || !roles["config"] || !roles["disk"] {
		t.Errorf("offline point roles %v, want saved-state, config and disk", roles)
	}
	if s := vmState(t, n.URI, vm); s != "running" {
		t.Errorf("VM is %q after the offline backup, want running", s)
	}
	if out := lb(t, repoDir, false, "verify"); !strings.HasPrefix(out, "ok:") {
		t.Fatalf("verify: %s", out)
	}
}
