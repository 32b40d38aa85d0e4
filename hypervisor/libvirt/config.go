package libvirt

import (
	"fmt"
	"strings"
	"time"

	"libvirt.org/go/libvirtxml"

	"lifeboat/disk"
	"lifeboat/vmconfig"
)

// ConfigFormat names the raw configuration this driver returns.
const ConfigFormat = "libvirt-domain-xml"

// diskDef is one disk of a domain as the driver needs it.
type diskDef struct {
	Target string
	Device string
	Bus    string
	// Type is the source type: file, block, network, volume.
	Type     string
	Path     string
	Format   disk.Format
	Chain    []string // backing files, nearest first (live XML only)
	ReadOnly bool
}

// backupable says whether the disk takes part in a backup: a writable
// disk (not a CD-ROM or floppy) backed by a local file or block device.
func (d diskDef) backupable() bool {
	return d.Device == "disk" && !d.ReadOnly && d.Path != "" && (d.Type == "file" || d.Type == "block")
}

// parseDomain parses a domain XML document into the neutral summary and
// the disk definitions.
func parseDomain(raw []byte) (*libvirtxml.Domain, vmconfig.VM, []diskDef, error) {
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(string(raw)); err != nil {
		return nil, vmconfig.VM{}, nil, fmt.Errorf("domain XML does not parse: %w", err)
	}
	if dom.Name == "" {
		return nil, vmconfig.VM{}, nil, fmt.Errorf("domain XML has no <name>")
	}
	s := vmconfig.VM{Name: dom.Name, ID: dom.UUID, Hypervisor: vmconfig.Libvirt}
	if dom.OS != nil && dom.OS.Type != nil {
		s.Machine = dom.OS.Type.Machine
	}
	if dom.VCPU != nil {
		s.CPUs = int(dom.VCPU.Value)
	}
	if dom.Memory != nil {
		b, err := memoryBytes(dom.Memory.Value, dom.Memory.Unit)
		if err != nil {
			return nil, s, nil, err
		}
		s.MemoryMiB = (b + 1<<20 - 1) >> 20
	}
	var disks []diskDef
	if dom.Devices != nil {
		for i, ifc := range dom.Devices.Interfaces {
			n, note := nicOf(ifc)
			if note != "" {
				s.Notes = append(s.Notes, fmt.Sprintf("NIC %d (%s): %s", i, n.MAC, note))
			}
			s.NICs = append(s.NICs, n)
		}
		for _, dd := range dom.Devices.Disks {
			d := diskOf(dd)
			disks = append(disks, d)
			vd := vmconfig.Disk{Bus: d.Bus, Target: d.Target, Path: d.Path, Format: string(d.Format), ReadOnly: d.ReadOnly, Kind: d.Device}
			if d.Type == "network" || d.Type == "volume" {
				s.Notes = append(s.Notes, fmt.Sprintf("disk %s is a %s source (%s), not a file", d.Target, d.Type, d.Path))
			}
			if a := dd.Address; a != nil && a.Drive != nil {
				if a.Drive.Controller != nil {
					vd.Controller = int(*a.Drive.Controller)
				}
				if a.Drive.Unit != nil {
					vd.Slot = int(*a.Drive.Unit)
				}
			}
			s.Disks = append(s.Disks, vd)
		}
	}
	return &dom, s, disks, nil
}

func memoryBytes(v uint, unit string) (int64, error) {
	mult := map[string]int64{
		"": 1 << 10, "b": 1, "bytes": 1,
		"KB": 1000, "k": 1 << 10, "KiB": 1 << 10,
		"MB": 1000 * 1000, "M": 1 << 20, "MiB": 1 << 20,
		"GB": 1000 * 1000 * 1000, "G": 1 << 30, "GiB": 1 << 30,
		"TB": 1000 * 1000 * 1000 * 1000, "T": 1 << 40, "TiB": 1 << 40,
	}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("domain XML: unknown memory unit %q", unit)
	}
	return int64(v) * mult, nil
}

// nicOf summarises an interface; note says what the summary cannot hold.
func nicOf(ifc libvirtxml.DomainInterface) (vmconfig.NIC, string) {
	var n vmconfig.NIC
	var notes []string
	if ifc.MAC != nil {
		if m, err := vmconfig.NormalizeMAC(ifc.MAC.Address); err == nil {
			n.MAC = m
		} else {
			notes = append(notes, fmt.Sprintf("MAC %q does not parse", ifc.MAC.Address))
		}
	}
	if ifc.Alias != nil {
		n.Name = ifc.Alias.Name
	}
	if ifc.Model != nil {
		n.Model = ifc.Model.Type
	}
	if ifc.VLan != nil && len(ifc.VLan.Tags) > 0 {
		n.VLAN = int(ifc.VLan.Tags[0].ID)
		if len(ifc.VLan.Tags) > 1 || ifc.VLan.Trunk == "yes" {
			var ids []string
			for _, t := range ifc.VLan.Tags {
				ids = append(ids, fmt.Sprint(t.ID))
			}
			notes = append(notes, "VLAN trunk "+strings.Join(ids, ",")+"; the summary keeps the first")
		}
	}
	if src := ifc.Source; src != nil {
		switch {
		case src.Network != nil:
			n.Network = src.Network.Network
		case src.Bridge != nil:
			n.Network = src.Bridge.Bridge
		case src.Direct != nil:
			n.Network = src.Direct.Dev
			notes = append(notes, "macvtap (direct) on host device "+src.Direct.Dev)
		case src.User != nil:
			notes = append(notes, "user-mode networking (no host network)")
		case src.Ethernet != nil:
			if ifc.Target != nil {
				n.Network = ifc.Target.Dev
			}
			notes = append(notes, "ethernet (tap) interface")
		default:
			notes = append(notes, "interface type not summarised")
		}
	}
	return n, strings.Join(notes, "; ")
}

func diskOf(dd libvirtxml.DomainDisk) diskDef {
	d := diskDef{Device: dd.Device, ReadOnly: dd.ReadOnly != nil}
	if d.Device == "" {
		d.Device = "disk"
	}
	if dd.Target != nil {
		d.Target, d.Bus = dd.Target.Dev, dd.Target.Bus
	}
	if dd.Driver != nil {
		d.Format = formatOf(dd.Driver.Type)
	}
	d.Type, d.Path = sourceOf(dd.Source)
	for bs := dd.BackingStore; bs != nil; bs = bs.BackingStore {
		if _, p := sourceOf(bs.Source); p != "" {
			d.Chain = append(d.Chain, p)
		}
	}
	return d
}

func sourceOf(src *libvirtxml.DomainDiskSource) (typ, path string) {
	switch {
	case src == nil:
		return "", ""
	case src.File != nil:
		return "file", src.File.File
	case src.Block != nil:
		return "block", src.Block.Dev
	case src.Volume != nil:
		return "volume", src.Volume.Pool + "/" + src.Volume.Volume
	case src.Network != nil:
		return "network", src.Network.Protocol + ":" + src.Network.Name
	}
	return "", ""
}

// formatOf maps libvirt's driver type to Lifeboat's format names.
func formatOf(t string) disk.Format {
	switch t {
	case "vpc":
		return disk.VHD
	case "":
		return disk.Raw
	}
	return disk.Format(t)
}

// parseSnapshot reads a snapshot's XML into a tree node (libvirt names
// snapshots; the name is their ID).
func parseSnapshot(raw string) (vmconfig.Snapshot, error) {
	var s libvirtxml.DomainSnapshot
	if err := s.Unmarshal(raw); err != nil {
		return vmconfig.Snapshot{}, fmt.Errorf("snapshot XML does not parse: %w", err)
	}
	out := vmconfig.Snapshot{ID: s.Name, Name: s.Name}
	if s.Parent != nil {
		out.ParentID = s.Parent.Name
	}
	out.Time = unixTime(s.CreationTime)
	return out, nil
}

func unixTime(s string) time.Time {
	var sec int64
	if _, err := fmt.Sscan(s, &sec); err != nil {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}
