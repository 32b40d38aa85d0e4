package libvirt

import (
	"os"
	"reflect"
	"testing"
	"time"

	"lifeboat/vmconfig"
)

func TestParseDomain(t *testing.T) {
	raw, err := os.ReadFile("testdata/domain.xml")
	if err != nil {
		t.Fatal(err)
	}
	_, s, disks, err := parseDomain(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := vmconfig.VM{
		Name: "web01", ID: "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f", Hypervisor: "libvirt", Machine: "q35",
		CPUs: 4, MemoryMiB: 4096,
		NICs: []vmconfig.NIC{
			{MAC: "52:54:00:aa:bb:01", Network: "prod", VLAN: 42, Model: "virtio"},
			{MAC: "52:54:00:aa:bb:02", Network: "br-mgmt", VLAN: 10, Model: "e1000e"},
			{MAC: "52:54:00:aa:bb:03"},
		},
		Disks: []vmconfig.Disk{
			{Bus: "virtio", Target: "vda", Path: "/var/lib/libvirt/images/web01.qcow2", Format: "qcow2", Kind: "disk"},
			{Bus: "virtio", Target: "vdb", Path: "/dev/vg0/web01-data", Format: "raw", Kind: "disk"},
			{Bus: "sata", Target: "sda", Path: "/srv/imported.vhd", Format: "vhd", ReadOnly: true, Kind: "disk"},
			{Bus: "sata", Controller: 0, Slot: 1, Target: "sdb", Path: "/srv/iso/install.iso", Format: "raw", ReadOnly: true, Kind: "cdrom"},
		},
		Notes: []string{
			"NIC 1 (52:54:00:aa:bb:02): VLAN trunk 10,20; the summary keeps the first",
			"NIC 2 (52:54:00:aa:bb:03): user-mode networking (no host network)",
		},
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("summary:\n got  %+v\n want %+v", s, want)
	}
	if err := s.Validate(); err != nil {
		t.Errorf("summary does not validate: %v", err)
	}
	if disks[0].Chain[0] != "/var/lib/libvirt/images/base.qcow2" {
		t.Errorf("backing chain %v", disks[0].Chain)
	}
	var backed []string
	for _, d := range disks {
		if d.backupable() {
			backed = append(backed, d.Target)
		}
	}
	if !reflect.DeepEqual(backed, []string{"vda", "vdb"}) {
		t.Errorf("backed-up disks %v, want vda vdb (not read-only, not CD-ROM)", backed)
	}
}

func TestParseDomainErrors(t *testing.T) {
	for _, c := range []string{
		"",
		"<domain",
		"<domain type='kvm'><memory>1</memory></domain>",
		"<domain type='kvm'><name>x</name><memory unit='parsecs'>1</memory></domain>",
	} {
		if _, _, _, err := parseDomain([]byte(c)); err == nil {
			t.Errorf("parseDomain(%q) succeeded", c)
		}
	}
}

func TestMemoryUnits(t *testing.T) {
	for _, c := range []struct {
		v    uint
		unit string
		want int64
	}{{1, "", 1024}, {1, "KiB", 1024}, {3, "MB", 3e6}, {2, "G", 2 << 30}, {5, "bytes", 5}, {1, "TiB", 1 << 40}} {
		got, err := memoryBytes(c.v, c.unit)
		if err != nil || got != c.want {
			t.Errorf("memoryBytes(%d, %q) = %d, %v; want %d", c.v, c.unit, got, err, c.want)
		}
	}
}

func TestParseSnapshot(t *testing.T) {
	s, err := parseSnapshot(`<domainsnapshot><name>before-upgrade</name><state>running</state>
<creationTime>1700000000</creationTime><parent><name>base</name></parent></domainsnapshot>`)
	if err != nil {
		t.Fatal(err)
	}
	want := vmconfig.Snapshot{ID: "before-upgrade", Name: "before-upgrade", ParentID: "base", Time: time.Unix(1700000000, 0).UTC()}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("got %+v, want %+v", s, want)
	}
}
