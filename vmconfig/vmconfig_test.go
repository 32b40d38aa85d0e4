package vmconfig

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sample() VM {
	return VM{
		Name:       "web1",
		ID:         "0AA394FA-7C4A-4070-BA32-773D43B28A68",
		Hypervisor: HyperV,
		Machine:    "gen1",
		Version:    "5.0",
		CPUs:       2,
		MemoryMiB:  2048,
		NICs:       []NIC{{Name: "Network Adapter", Network: "External", MAC: "00:15:5d:01:07:dc", VLAN: 12, Model: "synthetic"}},
		Disks: []Disk{
			{Bus: "scsi", Controller: 0, Slot: 1, Path: `C:\vm\data.vhdx`, Format: "vhdx", Kind: KindDisk},
			{Bus: "ide", Controller: 1, Slot: 0, Kind: KindCDROM, ReadOnly: true},
			{Bus: "ide", Controller: 0, Slot: 0, Path: `C:\vm\boot.vhd`, Format: "vhd", Kind: KindDisk},
			{Bus: "scsi", Controller: 0, Slot: 0, Path: `C:\vm\logs.avhdx`, Format: "vhdx", Kind: KindDisk},
		},
		Snapshots: []Snapshot{
			{ID: "11111111-1111-1111-1111-111111111111", Name: "base", Time: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)},
			{ID: "22222222-2222-2222-2222-222222222222", Name: "patched", ParentID: "11111111-1111-1111-1111-111111111111"},
		},
		CurrentSnapshot: "22222222-2222-2222-2222-222222222222",
		SavedState:      []string{"Virtual Machines/X/X.vsv", "Virtual Machines/X/X.bin"},
	}
}

func TestValidateGood(t *testing.T) {
	vm := sample()
	if err := vm.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateBad(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*VM)
		want   string
	}{
		{"no name", func(v *VM) { v.Name = " " }, "no name"},
		{"bad id", func(v *VM) { v.ID = "{0AA394FA-7C4A-4070-BA32-773D43B28A68}" }, "not a UUID"},
		{"hypervisor", func(v *VM) { v.Hypervisor = "vmware" }, "unknown hypervisor"},
		{"cpus", func(v *VM) { v.CPUs = 0 }, "0 CPUs"},
		{"memory", func(v *VM) { v.MemoryMiB = 0 }, "MiB of memory"},
		{"mac form", func(v *VM) { v.NICs[0].MAC = "00-15-5D-01-07-DC" }, "colon form"},
		{"vlan", func(v *VM) { v.NICs[0].VLAN = 4095 }, "VLAN 4095"},
		{"disk path", func(v *VM) { v.Disks[0].Path = "" }, "has no path"},
		{"disk kind", func(v *VM) { v.Disks[0].Kind = "tape" }, "unknown kind"},
		{"disk bus", func(v *VM) { v.Disks[0].Bus = "" }, "no bus"},
		{"dup slot", func(v *VM) { v.Disks[0].Slot = 0 }, "share scsi controller 0 slot 0"},
		{"dup snap", func(v *VM) { v.Snapshots[1].ID = strings.ToLower(v.Snapshots[0].ID) }, "listed twice"},
		{"orphan", func(v *VM) { v.Snapshots[1].ParentID = "33333333-3333-3333-3333-333333333333" }, "not in the tree"},
		{"loop", func(v *VM) { v.Snapshots[0].ParentID = v.Snapshots[1].ID }, "loops"},
		{"current", func(v *VM) { v.CurrentSnapshot = "44444444-4444-4444-4444-444444444444" }, "current snapshot"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := sample()
			vm.NICs = append([]NIC(nil), vm.NICs...)
			vm.Disks = append([]Disk(nil), vm.Disks...)
			vm.Snapshots = append([]Snapshot(nil), vm.Snapshots...)
			tt.mutate(&vm)
			err := vm.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestDiskOrder(t *testing.T) {
	vm := sample()
	got := vm.DiskOrder()
	var paths []string
	for _, d := range got {
		paths = append(paths, d.Bus+":"+d.Path)
	}
	want := []string{`ide:C:\vm\boot.vhd`, `ide:`, `scsi:C:\vm\logs.avhdx`, `scsi:C:\vm\data.vhdx`}
	if !reflect.DeepEqual(paths, want) {
		t.Fatalf("DiskOrder = %q, want %q", paths, want)
	}
	if vm.Disks[0].Path != `C:\vm\data.vhdx` {
		t.Fatal("DiskOrder changed the VM")
	}
	if imgs := vm.Images(); !reflect.DeepEqual(imgs, []string{`C:\vm\boot.vhd`, `C:\vm\logs.avhdx`, `C:\vm\data.vhdx`}) {
		t.Fatalf("Images = %q", imgs)
	}
}

func TestLineage(t *testing.T) {
	vm := sample()
	l, err := vm.Lineage("22222222-2222-2222-2222-222222222222")
	if err != nil || len(l) != 2 || l[0].Name != "base" || l[1].Name != "patched" {
		t.Fatalf("Lineage = %+v, %v", l, err)
	}
	if _, err := vm.Lineage("nope"); err == nil {
		t.Fatal("Lineage of a missing snapshot succeeded")
	}
}

func TestNormalizeMAC(t *testing.T) {
	for in, want := range map[string]string{
		"00-15-5D-01-07-DC": "00:15:5d:01:07:dc",
		"00155D0107DC":      "00:15:5d:01:07:dc",
		"00:15:5d:01:07:dc": "00:15:5d:01:07:dc",
	} {
		if got, err := NormalizeMAC(in); err != nil || got != want {
			t.Errorf("NormalizeMAC(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "00-15-5D", "0015.5d01.07dc.0000", "zz155D0107DC"} {
		if _, err := NormalizeMAC(in); err == nil {
			t.Errorf("NormalizeMAC(%q) succeeded", in)
		}
	}
}

// TestJSONRoundTrip pins the field names a manifest stores: changing one
// breaks reading older recovery points.
func TestJSONRoundTrip(t *testing.T) {
	vm := sample()
	b, err := json.Marshal(vm)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"name"`, `"id"`, `"hypervisor"`, `"machine"`, `"cpus"`, `"memory_mib"`, `"nics"`, `"mac"`, `"vlan"`,
		`"disks"`, `"bus"`, `"controller"`, `"slot"`, `"path"`, `"format"`, `"read_only"`, `"kind"`,
		`"snapshots"`, `"parent_id"`, `"time"`, `"current_snapshot"`, `"saved_state"`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("JSON lacks %s: %s", key, b)
		}
	}
	var back VM
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, vm) {
		t.Fatalf("round trip changed the VM:\n%+v\n%+v", back, vm)
	}
	// Empty optional parts are left out, so manifests stay small.
	b, _ = json.Marshal(VM{Name: "x"})
	if strings.Contains(string(b), "snapshots") || strings.Contains(string(b), `"time"`) {
		t.Fatalf("empty fields serialised: %s", b)
	}
}
