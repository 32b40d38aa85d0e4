package recovery

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"

	"lifeboat/backup"
	"lifeboat/cluster"
	"lifeboat/cluster/pacemaker"
	"lifeboat/cluster/pacemaker/pacemakerlab"
	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/hypervisor"
	"lifeboat/hypervisor/libvirt"
	"lifeboat/lab"
	"lifeboat/repo"
	"lifeboat/repo/storage/local"
)

func TestMain(m *testing.M) {
	code := m.Run()
	// The cluster first: stopping its resources needs node0's libvirtd.
	if err := pacemakerlab.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	if err := lab.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func openNode(t *testing.T, n lab.Node) *libvirt.Driver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := libvirt.Open(ctx, libvirt.Options{URI: n.URI, ScratchDir: n.Scratch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func newRepo(t *testing.T) (*repo.Repository, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	b, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Init(context.Background(), b, repo.InitOptions{ChunkSize: repo.DefaultChunkSize, Hash: repo.HashBLAKE3})
	if err != nil {
		t.Fatal(err)
	}
	return r, dir
}

// vmXML is a TCG guest with no OS, like the lab's, with an NTFS disk (vda)
// and an ext4 disk (vdb).
func vmXML(name, vda, vdb, mac string) []byte {
	return []byte(fmt.Sprintf(`<domain type='qemu'>
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
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <interface type='user'>
      <mac address='%s'/>
      <model type='virtio'/>
    </interface>
    <memballoon model='none'/>
  </devices>
</domain>
`, name, vda, vdb, mac))
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// removeVM powers a VM off and undefines it, ignoring a missing one.
func removeVM(d hypervisor.Driver, name string) {
	ctx := context.Background()
	d.Destroy(ctx, name)
	d.Undefine(ctx, name)
}

// guestWrite writes a pattern through QEMU's qemu-io, as the guest would.
func guestWrite(t *testing.T, d *libvirt.Driver, vm, alias string, pattern byte, off, n int64) {
	t.Helper()
	cmd := fmt.Sprintf(`qemu-io -d /machine/peripheral/%s/virtio-backend "write -P %#x %d %d"`, alias, pattern, off, n)
	out, err := d.QEMUMonitor(context.Background(), vm, cmd, true)
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("guest write: %v %s", err, out)
	}
}

func state(t *testing.T, d hypervisor.Driver, vm string) hypervisor.State {
	t.Helper()
	st, err := vmState(context.Background(), d, vm)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// sameContent compares a file on disk with a point's file, byte for byte
// over the virtual disk.
func sameContent(t *testing.T, r *repo.Repository, pt *repo.Point, file, path string) {
	t.Helper()
	ctx := context.Background()
	want, err := r.OpenFile(ctx, pt, file)
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()
	got, err := formats.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if got.Size() != want.Size() {
		t.Fatalf("%s: size %d, point %d", path, got.Size(), want.Size())
	}
	a, b := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); off < want.Size(); off += int64(len(a)) {
		n := min(int64(len(a)), want.Size()-off)
		if _, err := want.ReadAt(a[:n], off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if _, err := got.ReadAt(b[:n], off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(a[:n], b[:n]) {
			t.Fatalf("%s differs from the point's %s in [%d, %d)", path, file, off, off+n)
		}
	}
}

// fakeHA is an HA manager in memory.
type fakeHA struct {
	res map[string]cluster.VirtualDomainSpec
}

func (f *fakeHA) Exists(_ context.Context, id string) (bool, error) {
	_, ok := f.res[id]
	return ok, nil
}
func (f *fakeHA) AddVirtualDomain(_ context.Context, d cluster.VirtualDomainSpec) error {
	if _, ok := f.res[d.ID]; ok {
		return cluster.ErrExists
	}
	f.res[d.ID] = d
	return nil
}

// tree records every entry under a folder with its size and mtime.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			out[p] = fmt.Sprintf("%v %d %d", fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		}
		return nil
	})
	return out
}

func sameTree(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	for p, v := range after {
		if before[p] != v {
			t.Errorf("%s: %s changed or appeared (%q → %q)", what, p, before[p], v)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			t.Errorf("%s: %s disappeared", what, p)
		}
	}
}

func wantRefusal(t *testing.T, err error, code string) *PreflightError {
	t.Helper()
	pe, ok := AsPreflight(err)
	if !ok {
		t.Fatalf("got %v, want refusal %s", err, code)
	}
	if pe.Code != code {
		t.Fatalf("got refusal %v, want code %s", pe, code)
	}
	return pe
}

func hasNote(p *Plan, words ...string) bool {
	for _, n := range p.Notes {
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(n, w)
		}
		if ok {
			return true
		}
	}
	return false
}

// TestLab runs the methods on a throwaway two-disk VM (NTFS and ext4) on
// node0, backed up offline so its point holds a saved state.
func TestLab(t *testing.T) {
	l := lab.Start(t)
	ctx := context.Background()
	n0, n1 := l.Node("node0"), l.Node("node1")
	d0, d1 := openNode(t, n0), openNode(t, n1)
	start := time.Now()

	name := fmt.Sprintf("lbr%06x", time.Now().UnixNano()&0xffffff)
	folder := filepath.Join(n0.Disks, name)
	if err := os.Mkdir(folder, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(folder) })
	vda, vdb := filepath.Join(folder, "ntfs.qcow2"), filepath.Join(folder, "ext4.qcow2")
	copyFile(t, l.Images.NTFS, vda)
	copyFile(t, l.Images.EXT4, vdb)
	mac := fmt.Sprintf("52:54:00:1c:%02x:%02x", os.Getpid()&0xff, time.Now().UnixNano()&0xff)
	if _, err := d0.Define(ctx, vmXML(name, vda, vdb, mac)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeVM(d0, name) })
	if err := d0.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	guestWrite(t, d0, name, "virtio-disk0", 0x5a, 8<<20, 1<<20)
	guestWrite(t, d0, name, "virtio-disk1", 0x5b, 9<<20, 1<<20)
	r, repoDir := newRepo(t)
	pt, err := backup.RunVM(ctx, r, d0, name, backup.VMOptions{Options: backup.Options{Host: "node0"}, Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]int{}
	for _, f := range pt.Files {
		roles[f.Role]++
	}
	if roles[repo.RoleSavedState] != 1 || roles[repo.RoleDisk] != 2 || roles[repo.RoleConfig] != 1 {
		t.Fatalf("offline point roles %v", roles)
	}
	t.Logf("setup (VM, offline backup) %.1fs", time.Since(start).Seconds())
	origUUID := pt.Config

	// An interrupted method 1 leaves the VM as it was: same content,
	// running again, no temp file beside its disks.
	t.Run("original-interrupted", func(t *testing.T) {
		t0 := time.Now()
		guestWrite(t, d0, name, "virtio-disk0", 0xd1, 8<<20, 1<<20)
		before := []string{contentHash(t, vda), contentHash(t, vdb)}
		c, cancel := context.WithCancel(ctx)
		defer cancel()
		rc := &Recovery{Repo: r, GracefulTimeout: time.Second}
		p, err := rc.Plan(c, Request{Method: MethodOriginal, Point: pt.ID, Driver: d0})
		if err != nil {
			t.Fatal(err)
		}
		rc.Progress = func(done, total int64) {
			if done > 1<<20 {
				cancel()
			}
		}
		if _, err := rc.Execute(c, p); err == nil || !strings.Contains(err.Error(), "unchanged") {
			t.Fatalf("interrupted recovery: %v", err)
		}
		if st := state(t, d0, name); st != hypervisor.Running {
			t.Errorf("VM is %s after an interrupted recovery, want running again", st)
		}
		if after := []string{contentHash(t, vda), contentHash(t, vdb)}; after[0] != before[0] || after[1] != before[1] {
			t.Error("an interrupted recovery changed the disks")
		}
		if ents, _ := os.ReadDir(folder); len(ents) != 2 {
			t.Errorf("VM folder holds %d entries after an interrupted recovery", len(ents))
		}
		t.Logf("interrupted method 1 %.1fs", time.Since(t0).Seconds())
	})

	t.Run("original", func(t *testing.T) {
		t0 := time.Now()
		// Written after the backup: the recovery must undo it.
		guestWrite(t, d0, name, "virtio-disk0", 0xe1, 8<<20, 1<<20)
		guestWrite(t, d0, name, "virtio-disk1", 0xe2, 30<<20, 1<<20)
		rc := &Recovery{Repo: r, GracefulTimeout: time.Second}
		p, err := rc.Plan(ctx, Request{Method: MethodOriginal, Point: pt.ID, Driver: d0})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Disks) != 2 || p.WasState != hypervisor.Running {
			t.Fatalf("plan: %d disks, state %s", len(p.Disks), p.WasState)
		}
		for _, c := range p.Checks {
			t.Logf("check %s: %s", c.Name, c.Detail)
		}
		res, err := rc.Execute(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Running || state(t, d0, name) != hypervisor.Running {
			t.Errorf("VM not running after method 1 (result %+v)", res)
		}
		cfg, err := d0.Config(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Summary.ID != p.UUID || !bytes.Contains(origUUID, []byte(p.UUID)) {
			t.Errorf("UUID %s after recovery, want %s", cfg.Summary.ID, p.UUID)
		}
		for _, s := range p.Disks {
			if f, err := formats.Detect(s.Path); err != nil || f != disk.QCOW2 {
				t.Errorf("%s: format %s %v, want qcow2 like the file it replaced", s.Path, f, err)
			}
			sameContent(t, r, pt, s.File, s.Path)
		}
		ents, _ := os.ReadDir(folder)
		if len(ents) != 2 {
			t.Errorf("VM folder holds %d entries after method 1, want its 2 disks", len(ents))
		}
		t.Logf("method 1 end to end %.1fs", time.Since(t0).Seconds())
	})

	t.Run("vm-refusals", func(t *testing.T) {
		rc := &Recovery{Repo: r}
		_, err := rc.Plan(ctx, Request{Method: MethodVM, Point: pt.ID, Driver: d1, Dir: l.Shared, SharedVolumes: []string{l.Shared}})
		pe := wantRefusal(t, err, CodeSharedVolumeRoot)
		if !strings.Contains(pe.Error(), "the root of a shared volume cannot hold a VM's files; choose a folder on it") {
			t.Errorf("message %q", pe.Error())
		}
		_, err = rc.Plan(ctx, Request{Method: MethodVM, Point: pt.ID, Driver: d0, Dir: filepath.Join(l.Shared, name+"-x")})
		wantRefusal(t, err, CodeIdentityClash)
		_, err = rc.Plan(ctx, Request{Method: MethodVM, Point: pt.ID, Driver: d1, Dir: filepath.Join(l.Shared, name+"-x"), HA: true})
		wantRefusal(t, err, CodeNoHAManager)
		if _, err := os.Stat(filepath.Join(l.Shared, name+"-x")); err == nil {
			t.Error("a refused plan created the target folder")
		}
	})

	t.Run("vm-node1", func(t *testing.T) {
		t0 := time.Now()
		dir := filepath.Join(l.Shared, name+"-n1")
		t.Cleanup(func() { os.RemoveAll(dir) })
		t.Cleanup(func() { removeVM(d1, name) })
		rc := &Recovery{Repo: r}
		p, err := rc.Plan(ctx, Request{Method: MethodVM, Point: pt.ID, Driver: d1, TargetHost: "node1", Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range p.Notes {
			t.Logf("note: %s", n)
		}
		if p.KeepSavedState || !hasNote(p, "saved state", "dropped", "node1", "node0") {
			t.Errorf("saved state not dropped for another host: %v", p.Notes)
		}
		if !hasNote(p, dir, "final location", "must not be moved") {
			t.Errorf("no note that %s is final: %v", dir, p.Notes)
		}
		res, err := rc.Execute(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if st := state(t, d1, name); st != hypervisor.Running {
			t.Errorf("VM on node1 is %s, want running", st)
		}
		g, err := user.LookupGroup(l.SharedGroup)
		if err != nil {
			t.Fatal(err)
		}
		gid, _ := strconv.Atoi(g.Gid)
		for _, s := range p.Disks {
			fi, err := os.Stat(s.Path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o660 || int(fi.Sys().(*syscall.Stat_t).Gid) != gid {
				t.Errorf("%s: mode %v gid %d, want 0660 group %s", s.Path, fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid, l.SharedGroup)
			}
			sameContent(t, r, pt, s.File, s.Path)
		}
		cfg, err := d1.Config(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		var dom libvirtxml.Domain
		dom.Unmarshal(string(cfg.Raw))
		for _, dd := range dom.Devices.Disks {
			if !strings.HasPrefix(dd.Source.File.File, dir+"/") {
				t.Errorf("disk %s on node1 is %s, not in %s", dd.Target.Dev, dd.Source.File.File, dir)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "config.xml")); err != nil {
			t.Error(err)
		}
		t.Logf("method 2 to node1: %d files, %.1fs", len(res.Files), time.Since(t0).Seconds())
	})

	// A define that fails on the target removes what was restored.
	t.Run("vm-define-fails", func(t *testing.T) {
		dir := filepath.Join(l.Shared, name+"-df", "vm")
		t.Cleanup(func() { os.RemoveAll(filepath.Dir(dir)) })
		os.Mkdir(filepath.Dir(dir), 0o2770)
		rc := &Recovery{Repo: r}
		p, err := rc.Plan(ctx, Request{Method: MethodVM, Point: pt.ID, Driver: failDefine{d1}, Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rc.Execute(ctx, p); err == nil || !strings.Contains(err.Error(), "injected") {
			t.Fatalf("execute: %v", err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("a failed recovery left %s (%v)", dir, err)
		}
		if _, err := os.Stat(filepath.Dir(dir)); err != nil {
			t.Errorf("the folder that existed before is gone: %v", err)
		}
	})

	t.Run("vm-new-identity", func(t *testing.T) {
		t0 := time.Now()
		dir := filepath.Join(n0.Disks, name+"-ni")
		t.Cleanup(func() { os.RemoveAll(dir) })
		rc := &Recovery{Repo: r}
		p, err := rc.Plan(ctx, Request{Method: MethodVM, Point: pt.ID, Driver: d0, TargetHost: "node0", Dir: dir, NewIdentity: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { removeVM(d0, p.VM) })
		if p.VM != name+"-restored" || p.UUID == "" || bytes.Contains(origUUID, []byte(p.UUID)) || p.MACs[mac] == "" || p.MACs[mac] == mac {
			t.Fatalf("new identity: %s %s %v", p.VM, p.UUID, p.MACs)
		}
		if p.KeepSavedState {
			t.Error("a new identity kept the saved state")
		}
		if _, err := rc.Execute(ctx, p); err != nil {
			t.Fatal(err)
		}
		cfg, err := d0.Config(ctx, p.VM)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Summary.ID != p.UUID || len(cfg.Summary.NICs) != 1 || cfg.Summary.NICs[0].MAC != p.MACs[mac] {
			t.Errorf("defined copy: %+v", cfg.Summary)
		}
		if st := state(t, d0, p.VM); st != hypervisor.Running {
			t.Errorf("copy is %s", st)
		}
		t.Logf("method 2 --new-identity %.1fs", time.Since(t0).Seconds())
	})

	t.Run("original-gone", func(t *testing.T) {
		beforeVM, beforeRepo, beforeDisks := tree(t, folder), tree(t, repoDir), tree(t, n0.Disks)
		fi0, _ := os.Stat(folder)
		// The cluster lost the VM's resource: refused, with DPM's words.
		rc := &Recovery{Repo: r, HA: &fakeHA{res: map[string]cluster.VirtualDomainSpec{}}}
		_, err := rc.Plan(ctx, Request{Method: MethodOriginal, Point: pt.ID, Driver: d0})
		pe := wantRefusal(t, err, CodeOriginalGone)
		want := "LB-32579: the VM's cluster resource no longer exists; recover it as a VM on a host instead (method 2), choosing its original host"
		if pe.Error() != want {
			t.Errorf("refusal %q\nwant      %q", pe.Error(), want)
		}
		// The VM itself is deleted.
		removeVM(d0, name)
		rc = &Recovery{Repo: r}
		_, err = rc.Plan(ctx, Request{Method: MethodOriginal, Point: pt.ID, Driver: d0})
		pe = wantRefusal(t, err, CodeOriginalGone)
		if !strings.Contains(pe.Message, "no longer exists") || !strings.Contains(pe.Advice, "method 2") {
			t.Errorf("refusal %q", pe.Error())
		}
		sameTree(t, "VM folder", beforeVM, tree(t, folder))
		sameTree(t, "repository", beforeRepo, tree(t, repoDir))
		for p := range tree(t, n0.Disks) {
			if _, ok := beforeDisks[p]; !ok && strings.Contains(p, name) && !strings.Contains(p, name+"-ni") {
				t.Errorf("a refused plan created %s", p)
			}
		}
		if fi1, _ := os.Stat(folder); !fi1.ModTime().Equal(fi0.ModTime()) {
			t.Error("the VM folder's mtime changed")
		}
		if _, err := vmState(ctx, d0, name); err == nil {
			t.Error("a refused plan defined the VM")
		}
	})

	// The VM is gone from node0 now: method 2 to its own host resumes it
	// from the point's saved state.
	t.Run("vm-same-host-resume", func(t *testing.T) {
		t0 := time.Now()
		dir := filepath.Join(n0.Disks, name+"-rs")
		t.Cleanup(func() { os.RemoveAll(dir) })
		t.Cleanup(func() { removeVM(d0, name) })
		rc := &Recovery{Repo: r}
		p, err := rc.Plan(ctx, Request{Method: MethodVM, Point: pt.ID, Driver: d0, TargetHost: "node0", Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if !p.KeepSavedState {
			t.Fatalf("same host: saved state not kept: %v", p.Notes)
		}
		res, err := rc.Execute(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if st := state(t, d0, name); st != hypervisor.Running {
			t.Errorf("VM is %s after resuming", st)
		}
		t.Logf("method 2 on the same host, resumed (%v) %.1fs", res.Notes, time.Since(t0).Seconds())
	})
	t.Logf("total %.1fs", time.Since(start).Seconds())
}

// TestLabHA: method 2 with --ha registers the VM with the lab's Pacemaker
// cluster (crm_resource --list shows it, and it runs); method 1's
// preflight then finds its resource, and refuses once it is gone.
func TestLabHA(t *testing.T) {
	l := lab.Start(t)
	pc := pacemakerlab.Start(t)
	ctx := context.Background()
	n0 := l.Node("node0")
	d0 := openNode(t, n0)
	ha := pacemaker.New(pacemaker.Options{})
	t0 := time.Now()

	name := fmt.Sprintf("lbh%06x", time.Now().UnixNano()&0xffffff)
	folder := filepath.Join(n0.Disks, name)
	if err := os.Mkdir(folder, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(folder) })
	vda, vdb := filepath.Join(folder, "ntfs.qcow2"), filepath.Join(folder, "ext4.qcow2")
	copyFile(t, l.Images.NTFS, vda)
	copyFile(t, l.Images.EXT4, vdb)
	if _, err := d0.Define(ctx, vmXML(name, vda, vdb, "52:54:00:1e:00:01")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeVM(d0, name) })
	r, _ := newRepo(t)
	pt, err := backup.RunVM(ctx, r, d0, name, backup.VMOptions{Options: backup.Options{Host: "node0"}})
	if err != nil {
		t.Fatal(err)
	}
	removeVM(d0, name) // lost

	dir := filepath.Join(n0.Disks, name+"-ha")
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		if ok, _ := ha.Exists(c, name); ok {
			if err := ha.RemoveResource(c, name); err != nil {
				t.Errorf("clean-up: %v", err)
			}
		}
		removeVM(d0, name)
	})
	rc := &Recovery{Repo: r, HA: ha}
	req := Request{Method: MethodVM, Point: pt.ID, Driver: d0, TargetHost: "node0", Dir: dir, HA: true,
		HAOptions: cluster.VirtualDomainSpec{ForceStop: true, Nodes: []string{pc.Node}, MonitorInterval: 5 * time.Second}}
	p, err := rc.Plan(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	res, err := rc.Execute(ctx, p)
	if err != nil {
		t.Fatalf("%v\n%s", err, pc.LogLines(name, 20))
	}
	if !res.HA || !res.Running {
		t.Errorf("result %+v", res)
	}
	out, err := exec.Command("crm_resource", "--list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), name) {
		t.Errorf("crm_resource --list does not show %s: %v\n%s", name, err, out)
	}
	if st := state(t, d0, name); st != hypervisor.Running {
		t.Errorf("VM is %s", st)
	}
	// A second --ha recovery of the same resource is refused up front.
	req.Dir, req.NewIdentity, req.HAResource = dir+"-2", true, name
	if _, err := rc.Plan(ctx, req); err == nil {
		t.Error("an existing resource was not refused")
	} else {
		wantRefusal(t, err, CodeHAResourceExists)
	}

	// Method 1's preflight finds the resource and its definition file.
	p1, err := rc.Plan(ctx, Request{Method: MethodOriginal, Point: pt.ID, Driver: d0})
	if err != nil {
		t.Fatal(err)
	}
	if !p1.HA || p1.haConfig != filepath.Join(dir, "config.xml") {
		t.Errorf("method 1 plan: HA %v, cluster definition %q", p1.HA, p1.haConfig)
	}
	// Method 1 on the HA VM: the guest's writes are undone, Pacemaker
	// leaves the VM alone while it is rewritten (the resource is unmanaged,
	// then managed again), and the VM stays a running cluster resource.
	for _, n := range p1.Notes {
		if strings.Contains(n, "cannot be told") {
			t.Errorf("Pacemaker cannot unmanage the resource: %s", n)
		}
	}
	guestWrite(t, d0, name, "virtio-disk0", 0x6c, 4<<20, 1<<20)
	rc.GracefulTimeout = 2 * time.Second
	t1 := time.Now()
	res1, err := rc.Execute(ctx, p1)
	if err != nil {
		t.Fatalf("method 1 on an HA VM: %v\n%s", err, pc.LogLines(name, 20))
	}
	if !res1.Running || state(t, d0, name) != hypervisor.Running {
		t.Errorf("method 1 result %+v, VM %s", res1, state(t, d0, name))
	}
	for _, dk := range p1.Disks {
		want := l.Images.NTFS
		if dk.Target == "vdb" {
			want = l.Images.EXT4
		}
		if contentHash(t, dk.Path) != contentHash(t, want) {
			t.Errorf("disk %s (%s) after method 1 differs from the point", dk.Target, dk.Path)
		}
	}
	if err := ha.WaitStarted(ctx, name, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	rs, err := ha.Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.ID == name && (!r.Managed || r.State != cluster.StateStarted || len(r.Failures) != 0) {
			t.Errorf("after method 1 the resource is %+v", r)
		}
	}
	t.Logf("method 1 on an HA VM: %.1fs", time.Since(t1).Seconds())
	// The cluster loses the resource: LB-32579 although the VM exists.
	c, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := ha.RemoveResource(c, name); err != nil {
		t.Fatal(err)
	}
	_, err = rc.Plan(ctx, Request{Method: MethodOriginal, Point: pt.ID, Driver: d0})
	if pe := wantRefusal(t, err, CodeOriginalGone); !strings.Contains(pe.Error(), "the VM's cluster resource no longer exists; recover it as a VM on a host instead (method 2), choosing its original host") {
		t.Errorf("refusal %q", pe.Error())
	}
	t.Logf("method 2 --ha with Pacemaker and method 1 preflights: %.1fs", time.Since(t0).Seconds())
}

type failDefine struct{ hypervisor.Driver }

func (failDefine) Define(context.Context, []byte) (string, error) {
	return "", fmt.Errorf("injected define failure")
}

// contentHash hashes a disk's virtual content.
func contentHash(t *testing.T, path string) string {
	t.Helper()
	img, err := formats.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	h := sha256.New()
	buf := make([]byte, 4<<20)
	for off := int64(0); off < img.Size(); off += int64(len(buf)) {
		n := min(int64(len(buf)), img.Size()-off)
		if _, err := img.ReadAt(buf[:n], off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		h.Write(buf[:n])
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
