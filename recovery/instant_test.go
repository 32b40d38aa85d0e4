package recovery

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/backup"
	"lifeboat/disk/formats"
	"lifeboat/hypervisor"
	"lifeboat/lab"
)

// TestLabInstant boots a point's VM as a new domain whose disks are served
// over NBD from the repository, writes through the guest into the overlay,
// finalizes into local qcow2 files and checks the VM no longer needs the
// server.
func TestLabInstant(t *testing.T) {
	l := lab.Start(t)
	ctx := context.Background()
	n0 := l.Node("node0")
	d0 := openNode(t, n0)
	start := time.Now()

	name := fmt.Sprintf("lbi%06x", time.Now().UnixNano()&0xffffff)
	folder := filepath.Join(n0.Disks, name)
	if err := os.Mkdir(folder, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(folder) })
	vda, vdb := filepath.Join(folder, "ntfs.qcow2"), filepath.Join(folder, "ext4.qcow2")
	copyFile(t, l.Images.NTFS, vda)
	copyFile(t, l.Images.EXT4, vdb)
	mac := fmt.Sprintf("52:54:00:1d:%02x:%02x", os.Getpid()&0xff, time.Now().UnixNano()&0xff)
	if _, err := d0.Define(ctx, vmXML(name, vda, vdb, mac)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeVM(d0, name) })
	r, _ := newRepo(t)
	pt, err := backup.RunVM(ctx, r, d0, name, backup.VMOptions{Options: backup.Options{Host: "node0"}, Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("setup (VM, backup) %.1fs", time.Since(start).Seconds())

	dir := filepath.Join(folder, "ir")
	rc := &Recovery{Repo: r, GracefulTimeout: 2 * time.Second, Log: func(m string) { t.Log(m) }}
	req := Request{Method: MethodInstant, Point: pt.ID, Driver: d0, Dir: dir}
	// The original still exists on node0: without a new identity, refused.
	if _, err := rc.Plan(ctx, req); err == nil {
		t.Fatal("instant recovery over the existing original was not refused")
	} else {
		wantRefusal(t, err, CodeIdentityClash)
	}
	req.NewIdentity = true
	p, err := rc.Plan(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	in, err := rc.StartInstant(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	info := in.Info()
	vm := info.VM
	t.Cleanup(func() { removeVM(d0, vm) })
	t.Logf("instant start %.1fs: %+v", time.Since(t0).Seconds(), info)
	if vm == name || len(info.Disks) != 2 {
		t.Fatalf("instant recovery: VM %s, %d disks", vm, len(info.Disks))
	}
	if st := state(t, d0, vm); st != hypervisor.Running {
		t.Fatalf("instant VM is %s, want running", st)
	}
	cfg, err := d0.Config(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if x := string(cfg.Raw); !strings.Contains(x, "protocol='nbd'") && !strings.Contains(x, `protocol="nbd"`) || !strings.Contains(x, info.Socket) {
		t.Fatalf("the running domain does not use the NBD socket %s:\n%s", info.Socket, x)
	}

	// A guest write lands in the overlay, not in the repository.
	const off, n = 4 << 20, 1 << 20
	guestWrite(t, d0, vm, "virtio-disk0", 0x77, off, n)
	want := bytes.Repeat([]byte{0x77}, n)
	d := info.Disks[0]
	if d.Target != "vda" {
		t.Fatalf("first disk is %s", d.Target)
	}
	ovf, err := os.ReadFile(d.Overlay)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(ovf)) < off+n || !bytes.Equal(ovf[off:off+n], want) {
		t.Fatal("the guest write is not in the overlay")
	}
	base, err := r.OpenFile(ctx, pt, d.File)
	if err != nil {
		t.Fatal(err)
	}
	orig := make([]byte, base.Size())
	if _, err := base.ReadAt(orig, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	base.Close()
	if bytes.Equal(orig[off:off+n], want) {
		t.Fatal("the guest write reached the repository")
	}

	// Finalize: local qcow2 disks, point + guest write, and no server.
	t1 := time.Now()
	res, err := in.Finalize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("finalize %.1fs: %+v", time.Since(t1).Seconds(), res)
	in.Close() // the server is already stopped; this must not touch the VM
	if _, err := os.Lstat(info.Socket); err == nil {
		t.Error("the NBD socket still exists after finalize")
	}
	if st := state(t, d0, vm); st != hypervisor.Running {
		t.Fatalf("finalized VM is %s, want running", st)
	}
	cfg, err = d0.Config(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if x := string(cfg.Raw); strings.Contains(x, "nbd") || !strings.Contains(x, d.Final) {
		t.Fatalf("the finalized domain does not run from %s:\n%s", d.Final, x)
	}
	copy(orig[off:], want)
	got, err := formats.Open(ctx, d.Final)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, got.Size())
	if _, err := got.ReadAt(buf, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	got.Close()
	if !bytes.Equal(buf, orig) {
		t.Fatal("the finalized vda is not the point plus the guest write")
	}
	sameContent(t, r, pt, info.Disks[1].File, info.Disks[1].Final)
	// The VM does I/O on its local disk with the server gone.
	guestWrite(t, d0, vm, "virtio-disk0", 0x78, off, 4096)
	time.Sleep(200 * time.Millisecond)
	if st := state(t, d0, vm); st != hypervisor.Running {
		t.Fatalf("finalized VM is %s after a write without the server", st)
	}
	t.Logf("total %.1fs", time.Since(start).Seconds())
}
