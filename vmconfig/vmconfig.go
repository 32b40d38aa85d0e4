// Package vmconfig is the hypervisor-neutral summary of a VM's configuration
// that a recovery point stores (as JSON in the manifest's "config" field) and
// that recovery uses to rebuild the VM on a host of the same kind.
//
// It is a summary, not a copy: the hypervisor's own configuration file is
// backed up byte for byte as a file of the point, and is what an import on
// the same hypervisor uses. The summary exists so that Lifeboat can list,
// check and rebuild a VM without parsing Hyper-V's or libvirt's formats at
// recovery time, on a machine that may have neither: name, identity, size,
// networks, the disk attachments in boot-relevant order, and the snapshot
// tree that gives meaning to differencing disks.
//
// Paths are kept exactly as the source configuration spells them (a Hyper-V
// disk path is a Windows path such as C:\ClusterStorage\Volume1\vm\a.vhdx);
// mapping them to files inside a recovery point is the hypervisor package's
// job, because only it knows the folder layout.
package vmconfig

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Hypervisor names, the values of VM.Hypervisor.
const (
	HyperV  = "hyperv"
	Libvirt = "libvirt"
)

// Disk kinds, the values of Disk.Kind.
const (
	KindDisk   = "disk"
	KindCDROM  = "cdrom"
	KindFloppy = "floppy"
)

// VM is one virtual machine's configuration summary.
type VM struct {
	Name string `json:"name"`
	// ID is the hypervisor's identity of the VM as UUID/GUID text without
	// braces (Hyper-V's global_id, libvirt's <uuid>), spelled as the
	// source spells it. Recovery uses it to tell "the same VM" from a copy.
	ID         string `json:"id"`
	Hypervisor string `json:"hypervisor"`
	// Machine is the virtual hardware family a rebuilt VM must have, because
	// a guest installed on one does not boot on another: "gen1"/"gen2" for
	// Hyper-V, the machine type ("pc-q35-7.2") for libvirt.
	Machine string `json:"machine,omitempty"`
	// Version is the hypervisor's configuration version ("5.0" for Hyper-V
	// 2012 R2, "9.0" for 2019), which decides which hosts can import it.
	Version   string `json:"version,omitempty"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int64  `json:"memory_mib"`
	NICs      []NIC  `json:"nics,omitempty"`
	// Disks are in the order the configuration lists them; DiskOrder gives
	// the controller order.
	Disks     []Disk     `json:"disks,omitempty"`
	Snapshots []Snapshot `json:"snapshots,omitempty"`
	// CurrentSnapshot is the ID of the snapshot the running state descends
	// from ("" when there are none or it is unknown).
	CurrentSnapshot string `json:"current_snapshot,omitempty"`
	// SavedState lists the runtime/saved-state files present beside the
	// configuration (Hyper-V .vsv/.bin, or .vmrs, which 2016+ keeps even
	// for a VM that is off; libvirt managed save), relative to the VM's
	// folder. They hold memory only if the VM was saved; restoring them
	// resumes it, leaving them out boots it cold.
	SavedState []string `json:"saved_state,omitempty"`
	// GuestState is the VM guest state file (Hyper-V 2016+ .vmgs: UEFI
	// variables and vTPM) as the configuration names it. Unlike saved
	// state it is needed for every boot of such a VM.
	GuestState string `json:"guest_state,omitempty"`
	// Notes are what the parser could not express or verify, for the
	// operator to check when rebuilding (for example a VLAN whose id is
	// stored in a form that was not decoded).
	Notes []string `json:"notes,omitempty"`
}

// NIC is one network adapter.
type NIC struct {
	Name string `json:"name,omitempty"`
	// Network is what the adapter is plugged into: a Hyper-V virtual
	// switch's name, a libvirt network or bridge name. "" is unplugged.
	Network string `json:"network,omitempty"`
	// MAC is lower-case, colon-separated ("00:15:5d:01:07:dc"); "" when the
	// hypervisor assigns it dynamically and has not yet done so.
	MAC string `json:"mac,omitempty"`
	// VLAN is the access VLAN id; 0 is untagged (or unknown: see VM.Notes).
	VLAN int `json:"vlan,omitempty"`
	// Model is the adapter model ("synthetic", "emulated", "virtio",
	// "e1000"), "" when unknown.
	Model string `json:"model,omitempty"`
}

// Disk is one drive attachment: a virtual disk, an optical drive or a
// floppy drive, with or without media.
type Disk struct {
	// Bus is the controller type: "ide", "scsi", "floppy", "sata",
	// "virtio", "usb".
	Bus string `json:"bus"`
	// Controller numbers controllers of the same Bus from 0; Slot is the
	// position on it (Hyper-V's controller location, libvirt's unit).
	Controller int `json:"controller"`
	Slot       int `json:"slot"`
	// Target is libvirt's guest device name ("vda"), "" on Hyper-V.
	Target string `json:"target,omitempty"`
	// Path is the image as the configuration names it; "" for a drive
	// without media.
	Path string `json:"path,omitempty"`
	// Format is "vhd", "vhdx", "qcow2", "raw", "iso", "vfd", or "" when
	// unknown.
	Format   string `json:"format,omitempty"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// Kind is KindDisk, KindCDROM or KindFloppy.
	Kind string `json:"kind"`
}

// Snapshot is one node of the snapshot (checkpoint) tree.
type Snapshot struct {
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
	// ParentID is "" for a snapshot taken from the VM's base disks.
	ParentID string    `json:"parent_id,omitempty"`
	Time     time.Time `json:"time,omitzero"`
	// Files are the snapshot's own files (its configuration and saved
	// state), relative to the VM's folder.
	Files []string `json:"files,omitempty"`
}

// busRank orders buses the way firmware usually probes them, so DiskOrder
// puts the likely boot disk first.
var busRank = map[string]int{"ide": 0, "sata": 1, "scsi": 2, "virtio": 3, "usb": 4, "floppy": 5}

// DiskOrder returns the disks sorted by bus, controller, slot and target:
// the order in which a rebuilt VM should attach them. The VM is unchanged.
func (vm *VM) DiskOrder() []Disk {
	out := slices.Clone(vm.Disks)
	rank := func(bus string) int {
		if r, ok := busRank[bus]; ok {
			return r
		}
		return len(busRank)
	}
	slices.SortStableFunc(out, func(a, b Disk) int {
		if c := rank(a.Bus) - rank(b.Bus); c != 0 {
			return c
		}
		if c := strings.Compare(a.Bus, b.Bus); c != 0 {
			return c
		}
		if c := a.Controller - b.Controller; c != 0 {
			return c
		}
		if c := a.Slot - b.Slot; c != 0 {
			return c
		}
		return strings.Compare(a.Target, b.Target)
	})
	return out
}

// Images returns the paths of the disks that hold images (media of any
// kind), in DiskOrder: the files a backup must find.
func (vm *VM) Images() []string {
	var out []string
	for _, d := range vm.DiskOrder() {
		if d.Path != "" {
			out = append(out, d.Path)
		}
	}
	return out
}

// Snapshot returns the snapshot with the given ID.
func (vm *VM) Snapshot(id string) (Snapshot, bool) {
	for _, s := range vm.Snapshots {
		if strings.EqualFold(s.ID, id) {
			return s, true
		}
	}
	return Snapshot{}, false
}

// Lineage returns the snapshots from the root of the tree down to id: what
// must be restored, in order, to bring the VM back to that snapshot.
func (vm *VM) Lineage(id string) ([]Snapshot, error) {
	var rev []Snapshot
	seen := map[string]bool{}
	for cur := id; cur != ""; {
		key := strings.ToLower(cur)
		if seen[key] {
			return nil, fmt.Errorf("vmconfig: snapshot %s: parent chain loops", id)
		}
		seen[key] = true
		s, ok := vm.Snapshot(cur)
		if !ok {
			return nil, fmt.Errorf("vmconfig: snapshot %s not found", cur)
		}
		rev = append(rev, s)
		cur = s.ParentID
	}
	slices.Reverse(rev)
	return rev, nil
}

var uuidRE = regexp.MustCompile(`^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$`)

// IsUUID reports whether s is UUID/GUID text (8-4-4-4-12 hex digits, no
// braces), in either case.
func IsUUID(s string) bool { return uuidRE.MatchString(s) }

// NormalizeMAC turns a MAC in any usual spelling ("00-15-5D-01-07-DC",
// "00155D0107DC", "00:15:5d:01:07:dc") into the form NIC.MAC uses.
func NormalizeMAC(s string) (string, error) {
	s = strings.TrimSpace(s)
	if len(s) == 12 && !strings.ContainsAny(s, ":-.") {
		var b strings.Builder
		for i := 0; i < 12; i += 2 {
			if i > 0 {
				b.WriteByte(':')
			}
			b.WriteString(s[i : i+2])
		}
		s = b.String()
	}
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("vmconfig: %q is not a 48-bit MAC address", s)
	}
	return hw.String(), nil
}

// Validate checks what recovery relies on and returns every problem found,
// joined. A VM that fails it must not be rebuilt from the summary alone.
func (vm *VM) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("vmconfig: "+format, a...)) }

	if strings.TrimSpace(vm.Name) == "" {
		bad("VM has no name")
	}
	if !IsUUID(vm.ID) {
		bad("VM %q: id %q is not a UUID", vm.Name, vm.ID)
	}
	if vm.Hypervisor != HyperV && vm.Hypervisor != Libvirt {
		bad("VM %q: unknown hypervisor %q", vm.Name, vm.Hypervisor)
	}
	if vm.CPUs < 1 {
		bad("VM %q: %d CPUs", vm.Name, vm.CPUs)
	}
	if vm.MemoryMiB < 1 {
		bad("VM %q: %d MiB of memory", vm.Name, vm.MemoryMiB)
	}
	for i, n := range vm.NICs {
		if n.MAC != "" {
			if m, err := NormalizeMAC(n.MAC); err != nil || m != n.MAC {
				bad("NIC %d: MAC %q is not lower-case colon form", i, n.MAC)
			}
		}
		if n.VLAN < 0 || n.VLAN > 4094 {
			bad("NIC %d: VLAN %d out of 0..4094", i, n.VLAN)
		}
	}
	slots := map[string]int{}
	for i, d := range vm.Disks {
		switch d.Kind {
		case KindDisk:
			if d.Path == "" {
				bad("disk %d (%s %d:%d) has no path", i, d.Bus, d.Controller, d.Slot)
			}
		case KindCDROM, KindFloppy:
		default:
			bad("disk %d: unknown kind %q", i, d.Kind)
		}
		if d.Bus == "" {
			bad("disk %d: no bus", i)
		}
		if d.Controller < 0 || d.Slot < 0 {
			bad("disk %d: negative controller or slot", i)
		}
		key := fmt.Sprintf("%s/%d/%d/%s", d.Bus, d.Controller, d.Slot, d.Target)
		if j, dup := slots[key]; dup {
			bad("disks %d and %d share %s controller %d slot %d", j, i, d.Bus, d.Controller, d.Slot)
		}
		slots[key] = i
	}
	ids := map[string]bool{}
	for _, s := range vm.Snapshots {
		k := strings.ToLower(s.ID)
		if s.ID == "" {
			bad("snapshot %q has no id", s.Name)
		} else if ids[k] {
			bad("snapshot %s listed twice", s.ID)
		}
		ids[k] = true
	}
	for _, s := range vm.Snapshots {
		if s.ParentID != "" && !ids[strings.ToLower(s.ParentID)] {
			bad("snapshot %s: parent %s not in the tree", s.ID, s.ParentID)
		} else if _, err := vm.Lineage(s.ID); err != nil && s.ID != "" {
			errs = append(errs, err)
		}
	}
	if vm.CurrentSnapshot != "" && !ids[strings.ToLower(vm.CurrentSnapshot)] {
		bad("current snapshot %s not in the tree", vm.CurrentSnapshot)
	}
	return errors.Join(errs...)
}
