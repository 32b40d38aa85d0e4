package libvirt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"

	"lifeboat/hypervisor"
	"lifeboat/hypervisor/hypervisortest"
	"lifeboat/lab"
	"lifeboat/vmconfig"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if err := lab.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func openNode(t *testing.T, n lab.Node) *Driver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := Open(ctx, Options{URI: n.URI, ScratchDir: n.Scratch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// testVMXML is a TCG guest with no OS like the lab's own.
func testVMXML(name, diskPath string) string {
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <mac address='52:54:00:1b:%02x:%02x'/>
      <model type='virtio'/>
    </interface>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
`, name, diskPath, time.Now().UnixNano()%256, os.Getpid()%256)
}

// newDisk copies the lab's NTFS image to dir/name.qcow2, readable by the
// node's user.
func newDisk(t *testing.T, l *lab.Lab, n lab.Node, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name+".qcow2")
	src, err := os.Open(l.Images.NTFS)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(p) })
	if n.User != "root" {
		u, err := user.Lookup(n.User)
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if dir == l.Shared {
			g, err := user.LookupGroup(l.SharedGroup)
			if err != nil {
				t.Fatal(err)
			}
			gid, _ = strconv.Atoi(g.Gid)
			uid = 0
		}
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, 0o660)
	}
	return p
}

// guestWrite writes through QEMU's qemu-io on the disk's virtio backend,
// as a guest would. qemu-io prints its result to QEMU's stdout (the domain
// log), so only errors come back in the monitor reply.
func guestWrite(d *Driver) func(ctx context.Context, vm, target string, off, length int64, pattern byte) error {
	return func(ctx context.Context, vm, target string, off, length int64, pattern byte) error {
		dom, err := d.lookup(ctx, vm)
		if err != nil {
			return err
		}
		x, err := d.l.DomainGetXMLDesc(dom, 0)
		if err != nil {
			return err
		}
		var dx libvirtxml.Domain
		if err := dx.Unmarshal(x); err != nil {
			return err
		}
		alias := ""
		for _, dk := range dx.Devices.Disks {
			if dk.Target != nil && dk.Target.Dev == target && dk.Alias != nil {
				alias = dk.Alias.Name
			}
		}
		if alias == "" {
			return fmt.Errorf("disk %s of %s has no alias", target, vm)
		}
		cmd := fmt.Sprintf(`qemu-io -d /machine/peripheral/%s/virtio-backend "write -P %#x %d %d"`, alias, pattern, off, length)
		out, err := d.QEMUMonitor(ctx, vm, cmd, true)
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "" {
			return fmt.Errorf("qemu-io: %s", out)
		}
		return nil
	}
}

func harness(t *testing.T, l *lab.Lab, n lab.Node, d *Driver, diskDir string) hypervisortest.Harness {
	return hypervisortest.Harness{
		Driver: d,
		Target: "vda",
		NewVM: func(t *testing.T, name string) ([]byte, string) {
			p := newDisk(t, l, n, diskDir, name)
			return []byte(testVMXML(name, p)), l.Images.NTFS
		},
		GuestWrite:  guestWrite(d),
		CanRun:      true,
		Online:      true,
		ManagedSave: true,
		Prefix:      "lbt-" + n.Name,
	}
}

// TestConformance runs the driver suite on the system daemon (node0, own
// disks folder) and on a session daemon (node1, disks on the shared
// volume).
func TestConformance(t *testing.T) {
	l := lab.Start(t)
	t.Run("node0", func(t *testing.T) {
		n := l.Node("node0")
		d := openNode(t, n)
		hypervisortest.Run(t, harness(t, l, n, d, n.Disks))
	})
	t.Run("node1", func(t *testing.T) {
		n := l.Node("node1")
		d := openNode(t, n)
		hypervisortest.Run(t, harness(t, l, n, d, l.Shared))
	})
}

// TestChainBrokenByMove backs a VM up on node1, moves it to node2 (its
// checkpoints stay behind), and checks that the next incremental falls
// back to a full read whose content is right.
func TestChainBrokenByMove(t *testing.T) {
	l := lab.Start(t)
	ctx := context.Background()
	n1, n2 := l.Node("node1"), l.Node("node2")
	d1, d2 := openNode(t, n1), openNode(t, n2)
	name := fmt.Sprintf("lbt-move-%d", time.Now().UnixNano()%1e6)
	p := newDisk(t, l, n1, l.Shared, name)
	raw := []byte(testVMXML(name, p))
	if _, err := d1.Define(ctx, raw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, d := range []*Driver{d1, d2} {
			d.Destroy(ctx, name)
			d.Undefine(ctx, name)
		}
	})
	if err := d1.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	w1 := guestWrite(d1)
	if err := w1(ctx, name, "vda", 4<<20, 1<<20, 0x61); err != nil {
		t.Fatal(err)
	}
	s, err := d1.Backup(ctx, name, hypervisor.BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	cp := s.Checkpoint()

	// Move: stop on node1, define and start on node2.
	cfg, err := d1.Config(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := d1.Destroy(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := d1.Undefine(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.Define(ctx, cfg.Raw); err != nil {
		t.Fatal(err)
	}
	if err := d2.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := guestWrite(d2)(ctx, name, "vda", 6<<20, 1<<20, 0x62); err != nil {
		t.Fatal(err)
	}
	s2, err := d2.Backup(ctx, name, hypervisor.BackupOptions{Incremental: true, Since: cp})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.End(ctx)
	if s2.Incremental() || s2.Fallback() == "" {
		t.Fatalf("after a move: Incremental %v, Fallback %q; want a full read", s2.Incremental(), s2.Fallback())
	}
	t.Logf("fell back to a full read: %s", s2.Fallback())
	img := s2.Disks()[0].Image
	buf := make([]byte, 1<<20)
	for _, c := range []struct {
		off int64
		b   byte
	}{{4 << 20, 0x61}, {6 << 20, 0x62}} {
		if _, err := img.ReadAt(buf, c.off); err != nil {
			t.Fatal(err)
		}
		for i, b := range buf {
			if b != c.b {
				t.Fatalf("at %d: %#x, want %#x", c.off+int64(i), b, c.b)
			}
		}
	}
	if err := s2.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// The new chain on node2 works.
	s3, err := d2.Backup(ctx, name, hypervisor.BackupOptions{Incremental: true, Since: s2.Checkpoint()})
	if err != nil {
		t.Fatal(err)
	}
	defer s3.End(ctx)
	if !s3.Incremental() {
		t.Fatalf("second backup on node2 not incremental: %s", s3.Fallback())
	}
}

// TestBadInput: clear errors, nothing left behind.
func TestBadInput(t *testing.T) {
	l := lab.Start(t)
	ctx := context.Background()
	n := l.Node("node0")
	d := openNode(t, n)
	if _, err := d.Define(ctx, []byte("<domain")); err == nil || !strings.Contains(err.Error(), "does not parse") {
		t.Errorf("Define of broken XML: %v", err)
	}
	if _, err := d.Backup(ctx, "no-such-vm", hypervisor.BackupOptions{}); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Errorf("Backup of a missing VM: %v", err)
	}
	// A defined VM whose disk is missing: the offline backup says which.
	name := fmt.Sprintf("lbt-nodisk-%d", time.Now().UnixNano()%1e6)
	if _, err := d.Define(ctx, []byte(testVMXML(name, filepath.Join(n.Disks, name+"-missing.qcow2")))); err != nil {
		t.Fatal(err)
	}
	defer d.Undefine(ctx, name)
	_, err := d.Backup(ctx, name, hypervisor.BackupOptions{})
	if err == nil || !strings.Contains(err.Error(), "missing.qcow2") {
		t.Errorf("backup with a missing disk: %v", err)
	}
	if _, err := Open(ctx, Options{URI: "qemu:///session?socket=" + filepath.Join(t.TempDir(), "none")}); err == nil {
		t.Error("Open of a missing socket succeeded")
	}
	if _, err := Open(ctx, Options{URI: "qemu+ssh://host/system"}); err == nil {
		t.Error("Open of a remote URI succeeded")
	}
}

// TestLabScript checks that lab.sh status reports every node.
func TestLabScript(t *testing.T) {
	l := lab.Start(t)
	out, err := exec.Command("bash", filepath.Join("..", "..", "lab", "lab.sh"), "status").CombinedOutput()
	if err != nil {
		t.Fatalf("lab.sh status: %v\n%s", err, out)
	}
	for _, n := range l.Nodes {
		if !strings.Contains(string(out), n.URI) {
			t.Errorf("status does not show %s", n.URI)
		}
	}
}

// TestChainBrokenBitmapLost removes the dirty bitmap of the last checkpoint
// from QEMU behind libvirt's back (as a lost or corrupted bitmap would):
// the incremental falls back to a full read, and the chain goes on from
// the new checkpoint.
func TestChainBrokenBitmapLost(t *testing.T) {
	l := lab.Start(t)
	ctx := context.Background()
	n := l.Node("node0")
	d := openNode(t, n)
	name := fmt.Sprintf("lbt-lost-%d", time.Now().UnixNano()%1e6)
	p := newDisk(t, l, n, n.Disks, name)
	if _, err := d.Define(ctx, []byte(testVMXML(name, p))); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Destroy(ctx, name)
		d.Undefine(ctx, name)
	})
	if err := d.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	s, err := d.Backup(ctx, name, hypervisor.BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	cp := s.Checkpoint()
	out, err := d.QEMUMonitor(ctx, name, fmt.Sprintf(
		`{"execute":"block-dirty-bitmap-remove","arguments":{"node":"libvirt-1-format","name":%q}}`, cp), false)
	if err != nil {
		t.Fatalf("remove bitmap: %v", err)
	}
	if !strings.Contains(out, `"return"`) {
		t.Fatalf("remove bitmap: %s", out)
	}
	if err := guestWrite(d)(ctx, name, "vda", 12<<20, 1<<20, 0x71); err != nil {
		t.Fatal(err)
	}
	s2, err := d.Backup(ctx, name, hypervisor.BackupOptions{Incremental: true, Since: cp})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.End(ctx)
	if s2.Incremental() || !strings.Contains(s2.Fallback(), "bitmap") {
		t.Fatalf("lost bitmap: Incremental %v, Fallback %q", s2.Incremental(), s2.Fallback())
	}
	t.Logf("fell back to a full read: %s", s2.Fallback())
	buf := make([]byte, 1<<20)
	if _, err := s2.Disks()[0].Image.ReadAt(buf, 12<<20); err != nil {
		t.Fatal(err)
	}
	for i, b := range buf {
		if b != 0x71 {
			t.Fatalf("at %d: %#x", 12<<20+i, b)
		}
	}
	// Commit prunes the broken checkpoint too.
	if err := s2.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	dom, _ := d.lookup(ctx, name)
	cps, err := d.checkpoints(dom)
	if err != nil {
		t.Fatal(err)
	}
	if len(cps) != 1 || cps[0].Name != s2.Checkpoint() {
		t.Errorf("checkpoints after commit: %+v, want only %s", cps, s2.Checkpoint())
	}
	s3, err := d.Backup(ctx, name, hypervisor.BackupOptions{Incremental: true, Since: s2.Checkpoint()})
	if err != nil {
		t.Fatal(err)
	}
	defer s3.End(ctx)
	if !s3.Incremental() {
		t.Fatalf("chain after the fallback: %s", s3.Fallback())
	}
}

// TestSnapshotTree: Config reports the VM's snapshot tree.
func TestSnapshotTree(t *testing.T) {
	l := lab.Start(t)
	ctx := context.Background()
	n := l.Node("node0")
	d := openNode(t, n)
	name := fmt.Sprintf("lbt-snap-%d", time.Now().UnixNano()%1e6)
	p := newDisk(t, l, n, n.Disks, name)
	if _, err := d.Define(ctx, []byte(testVMXML(name, p))); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Undefine(ctx, name) })
	dom, err := d.lookup(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"base", "child-a", "child-b"} {
		if s == "child-b" {
			// child-b hangs off base too: revert first.
			sn, err := d.l.DomainSnapshotLookupByName(dom, "base", 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.l.DomainRevertToSnapshot(sn, 0); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := d.l.DomainSnapshotCreateXML(dom, "<domainsnapshot><name>"+s+"</name></domainsnapshot>", 0); err != nil {
			t.Fatalf("snapshot %s: %v", s, err)
		}
		time.Sleep(1100 * time.Millisecond) // distinct creation times
	}
	cfg, err := d.Config(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]vmconfig.Snapshot{}
	for _, s := range cfg.Summary.Snapshots {
		got[s.ID] = s
	}
	if len(got) != 3 || got["base"].ParentID != "" || got["child-a"].ParentID != "base" || got["child-b"].ParentID != "base" ||
		cfg.Summary.CurrentSnapshot != "child-b" || got["base"].Time.IsZero() {
		t.Errorf("snapshot tree: %+v, current %q", cfg.Summary.Snapshots, cfg.Summary.CurrentSnapshot)
	}
	if err := cfg.Summary.Validate(); err != nil {
		t.Error(err)
	}
}

// TestDaemonDiesMidBackup kills node2's libvirtd while a backup is open:
// the VM keeps running, the session's End reports the lost daemon, and
// after the daemon is back the next backup ends the stale job and works.
func TestDaemonDiesMidBackup(t *testing.T) {
	l := lab.Start(t)
	ctx := context.Background()
	n := l.Node("node2")
	d := openNode(t, n)
	name := fmt.Sprintf("lbt-kill-%d", time.Now().UnixNano()%1e6)
	p := newDisk(t, l, n, l.Shared, name)
	if _, err := d.Define(ctx, []byte(testVMXML(name, p))); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// With a new connection: the test kills the daemon of d.
		exec.Command("bash", filepath.Join("..", "..", "lab", "lab.sh"), "up").Run()
		if d, err := Open(ctx, Options{URI: n.URI}); err == nil {
			d.Destroy(ctx, name)
			d.Undefine(ctx, name)
			d.Close()
		}
	})
	if err := d.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	s, err := d.Backup(ctx, name, hypervisor.BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pid, err := os.ReadFile(n.Pidfile)
	if err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("kill", "-9", strings.TrimSpace(string(pid))).Run(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	err = s.End(ctx)
	if err == nil {
		t.Error("End with the daemon gone reported no error")
	} else {
		t.Logf("End: %v", err)
	}
	if out, err := exec.Command("bash", filepath.Join("..", "..", "lab", "lab.sh"), "up").CombinedOutput(); err != nil {
		t.Fatalf("lab.sh up: %v\n%s", err, out)
	}
	d2 := openNode(t, n)
	vms, err := d2.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vms {
		if v.Name == name && v.State != hypervisor.Running {
			t.Errorf("VM is %s after the daemon died", v.State)
		}
	}
	s2, err := d2.Backup(ctx, name, hypervisor.BackupOptions{})
	if err != nil {
		t.Fatalf("backup after the daemon came back: %v", err)
	}
	if err := s2.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	dom, _ := d2.lookup(ctx, name)
	cps, err := d2.checkpoints(dom)
	if err != nil {
		t.Fatal(err)
	}
	if len(cps) != 1 || cps[0].Name != s2.Checkpoint() {
		t.Errorf("checkpoints left: %d (want only the committed one)", len(cps))
	}
	if left, _ := filepath.Glob(filepath.Join(n.Scratch, "lifeboat-*")); len(left) != 0 {
		t.Errorf("scratch files left: %v", left)
	}
}
