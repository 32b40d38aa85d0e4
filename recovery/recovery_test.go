package recovery

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/disk"
	"lifeboat/hypervisor"
	"lifeboat/repo"
)

func TestPreflightErrorText(t *testing.T) {
	e := refuse(CodeOriginalGone, adviceMethod2, "the VM's cluster resource no longer exists")
	want := "LB-32579: the VM's cluster resource no longer exists; recover it as a VM on a host instead (method 2), choosing its original host"
	if e.Error() != want {
		t.Errorf("%q", e.Error())
	}
	var err error = e
	if pe, ok := AsPreflight(err); !ok || pe.Code != CodeOriginalGone {
		t.Error("AsPreflight")
	}
	if (&PreflightError{Code: "LB-1", Message: "m"}).Error() != "LB-1: m" {
		t.Error("no advice")
	}
}

func TestSharedRoot(t *testing.T) {
	dir := t.TempDir()
	vol := filepath.Join(dir, "vol")
	os.Mkdir(vol, 0o755)
	os.Symlink(vol, filepath.Join(dir, "link"))
	mi := filepath.Join(dir, "mountinfo")
	os.WriteFile(mi, []byte(
		"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"+
			"40 22 0:50 / /mnt/csv1 rw - gfs2 /dev/mapper/csv1 rw\n"+
			"41 22 0:51 / /mnt/nfs rw - nfs4 srv:/export rw\n"+
			"42 22 0:52 / /mnt/local rw - xfs /dev/sdb1 rw\n"), 0o644)
	for _, c := range []struct {
		dir, want string
	}{
		{vol, vol},
		{filepath.Join(dir, "link"), vol}, // the same folder by another name
		{filepath.Join(vol, "vm1"), ""},
		{"/mnt/csv1", "/mnt/csv1"},
		{"/mnt/csv1/vm1", ""},
		{"/mnt/nfs", "/mnt/nfs"},
		{"/mnt/local", ""},
	} {
		if got := sharedRoot(c.dir, []string{vol}, mi); got != c.want {
			t.Errorf("sharedRoot(%s) = %q, want %q", c.dir, got, c.want)
		}
	}
	p := &Plan{}
	_, err := checkDir(p, vol, []string{vol})
	if pe, ok := AsPreflight(err); !ok || pe.Code != CodeSharedVolumeRoot ||
		!strings.Contains(pe.Error(), "the root of a shared volume cannot hold a VM's files; choose a folder on it") {
		t.Errorf("checkDir on a shared root: %v", err)
	}
	for _, bad := range []string{"rel/dir", vol + "/../vol", ""} {
		if _, err := checkDir(p, bad, nil); err == nil {
			t.Errorf("checkDir(%q) passed", bad)
		}
	}
	if _, err := checkDir(p, filepath.Join(vol, "a", "b"), []string{vol}); err != nil {
		t.Errorf("a folder on the volume: %v", err)
	}
}

const testDomain = `<domain type='qemu'>
  <name>web</name>
  <uuid>0b7a3c3e-2f4c-4d3c-9a43-6f1e3c1d2a10</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/vms/a/disk.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/vms/a/base.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg/disk.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/install.iso'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:AA:BB:01'/>
      <source network='default'/>
      <target dev='vnet3'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:aa:bb:02'/>
    </interface>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-3-web/org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
  </devices>
</domain>`

func TestDomainRewrite(t *testing.T) {
	doc, err := parseDomainXML([]byte(testDomain))
	if err != nil {
		t.Fatal(err)
	}
	ds := doc.disks()
	if len(ds) != 3 || !ds[0].restorable() || !ds[1].restorable() || ds[2].restorable() {
		t.Fatalf("disks %+v", ds)
	}
	if ds[1].Type != "block" || ds[1].Format != disk.Raw {
		t.Errorf("vdb %+v", ds[1])
	}
	doc.setDiskFile(0, "/new/disks/disk.qcow2", disk.QCOW2)
	doc.setDiskFile(1, "/new/disks/vdb.vhd", disk.VHD)
	macs := map[string]string{"52:54:00:aa:bb:01": "52:54:00:00:00:01", "52:54:00:aa:bb:02": "52:54:00:00:00:02"}
	doc.newIdentity("web-restored", "11111111-2222-4333-8444-555555555555", macs)
	doc.forgetRuntime()
	raw, err := doc.marshal()
	if err != nil {
		t.Fatal(err)
	}
	out := string(raw)
	for _, want := range []string{
		"<name>web-restored</name>", "<uuid>11111111-2222-4333-8444-555555555555</uuid>",
		`<source file="/new/disks/disk.qcow2"`, `<source file="/new/disks/vdb.vhd"`, `type="vpc"`,
		`<mac address="52:54:00:00:00:01"`, `<mac address="52:54:00:00:00:02"`, `/iso/install.iso`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("rewritten XML lacks %s:\n%s", want, out)
		}
	}
	for _, gone := range []string{"base.qcow2", "/dev/vg", "vnet3", "domain-3-web", "aa:bb", "AA:BB"} {
		if strings.Contains(out, gone) {
			t.Errorf("rewritten XML still has %s:\n%s", gone, out)
		}
	}
	// The name stays alone on its line (Pacemaker's VirtualDomain greps it).
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == "<name>web-restored</name>" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("name line found %d times", n)
	}
}

func TestMapDisks(t *testing.T) {
	doc, _ := parseDomainXML([]byte(`<domain><name>x</name><devices>
  <disk type='file' device='disk'><source file='/a/d.qcow2'/><target dev='vda'/></disk>
  <disk type='file' device='disk'><source file='/b/d.qcow2'/><target dev='vdb'/></disk>
</devices></domain>`))
	qi := &disk.Info{Format: disk.QCOW2}
	// A backup through a driver: disks/<base>, then disks/<target>-<base>.
	pt := &repo.Point{ID: "p", Files: []repo.File{{Path: "config.xml", Role: "config"}, {Path: "disks/d.qcow2", Disk: qi}, {Path: "disks/vdb-d.qcow2", Disk: qi}}}
	dfs, err := mapDisks(pt, doc)
	if err != nil || len(dfs) != 2 || dfs[0].File.Path != "disks/d.qcow2" || dfs[1].File.Path != "disks/vdb-d.qcow2" {
		t.Fatalf("%v %+v", err, dfs)
	}
	// A VM folder: the top layer by its base name, never a parent.
	doc2, _ := parseDomainXML([]byte(`<domain><name>x</name><devices>
  <disk type='file' device='disk'><source file='/vms/x/s2.qcow2'/><target dev='vda'/></disk>
</devices></domain>`))
	pt2 := &repo.Point{ID: "p", Files: []repo.File{{Path: "base.qcow2", Disk: qi}, {Path: "s1.qcow2", Disk: qi, Parent: "base.qcow2"}, {Path: "s2.qcow2", Disk: qi, Parent: "s1.qcow2"}}}
	dfs, err = mapDisks(pt2, doc2)
	if err != nil || len(dfs) != 1 || dfs[0].File.Path != "s2.qcow2" {
		t.Fatalf("%v %+v", err, dfs)
	}
	sub := subPoint(pt2, []string{"s2.qcow2"})
	if len(sub.Files) != 3 {
		t.Errorf("subPoint dropped the chain: %+v", sub.Files)
	}
	// A disk the point lacks is refused.
	pt3 := &repo.Point{ID: "p", Files: []repo.File{{Path: "disks/other.qcow2", Disk: qi}}}
	if _, err := mapDisks(pt3, doc2); err == nil {
		t.Error("a missing disk was not refused")
	} else if pe, _ := AsPreflight(err); pe == nil || pe.Code != CodePointUnusable {
		t.Errorf("missing disk: %v", err)
	}
}

func TestIdentity(t *testing.T) {
	doc, _ := parseDomainXML([]byte(testDomain))
	list := []hypervisor.VMInfo{{Name: "web", ID: "0b7a3c3e-2f4c-4d3c-9a43-6f1e3c1d2a10"}, {Name: "web-restored", ID: "x"}}
	p := &Plan{}
	_, _, _, err := identity(p, doc, list, "h")
	if pe, ok := AsPreflight(err); !ok || pe.Code != CodeIdentityClash {
		t.Fatalf("clash: %v", err)
	}
	// The same UUID under another name clashes too.
	p.req.Name = "other"
	if _, _, _, err := identity(p, doc, list, "h"); err == nil {
		t.Error("UUID clash not refused")
	}
	p.req = Request{NewIdentity: true}
	name, uuid, macs, err := identity(p, doc, list, "h")
	if err != nil || name != "web-restored-2" || uuid == "" || strings.EqualFold(uuid, doc.dom.UUID) || len(macs) != 2 {
		t.Fatalf("new identity: %s %s %v %v", name, uuid, macs, err)
	}
	for old, m := range macs {
		if m == old || !strings.HasPrefix(m, "52:54:00:") {
			t.Errorf("MAC %s → %s", old, m)
		}
	}
}
