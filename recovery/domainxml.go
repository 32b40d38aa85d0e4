package recovery

import (
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"libvirt.org/go/libvirtxml"

	"lifeboat/disk"
	"lifeboat/repo"
	"lifeboat/vmconfig"
)

// domainDoc is a libvirt domain definition being rewritten for recovery.
type domainDoc struct {
	dom libvirtxml.Domain
}

func parseDomainXML(raw []byte) (*domainDoc, error) {
	var d domainDoc
	if err := d.dom.Unmarshal(string(raw)); err != nil {
		return nil, err
	}
	if d.dom.Name == "" {
		return nil, fmt.Errorf("the domain has no <name>")
	}
	return &d, nil
}

func (d *domainDoc) marshal() ([]byte, error) {
	s, err := d.dom.Marshal()
	if err != nil {
		return nil, err
	}
	return []byte(s + "\n"), nil
}

// domDisk is one disk of a definition.
type domDisk struct {
	Index    int
	Target   string
	Device   string
	Type     string // file, block, network, volume, ""
	Source   string
	Format   disk.Format
	ReadOnly bool
}

// restorable says the disk's data comes from the point: a writable disk
// backed by a file or block device.
func (d domDisk) restorable() bool {
	return (d.Device == "" || d.Device == "disk") && !d.ReadOnly && d.Source != "" && (d.Type == "file" || d.Type == "block")
}

func (d *domainDoc) disks() []domDisk {
	if d.dom.Devices == nil {
		return nil
	}
	var out []domDisk
	for i, dd := range d.dom.Devices.Disks {
		x := domDisk{Index: i, Device: dd.Device, ReadOnly: dd.ReadOnly != nil}
		if x.Device == "" {
			x.Device = "disk"
		}
		if dd.Target != nil {
			x.Target = dd.Target.Dev
		}
		if dd.Driver != nil {
			x.Format = formatOfDriver(dd.Driver.Type)
		}
		if s := dd.Source; s != nil {
			switch {
			case s.File != nil:
				x.Type, x.Source = "file", s.File.File
			case s.Block != nil:
				x.Type, x.Source = "block", s.Block.Dev
			case s.Volume != nil:
				x.Type, x.Source = "volume", s.Volume.Pool+"/"+s.Volume.Volume
			case s.Network != nil:
				x.Type, x.Source = "network", s.Network.Protocol+":"+s.Network.Name
			}
		}
		out = append(out, x)
	}
	return out
}

func formatOfDriver(t string) disk.Format {
	switch t {
	case "vpc":
		return disk.VHD
	case "":
		return disk.Raw
	}
	return disk.Format(t)
}

func driverOfFormat(f disk.Format) string {
	if f == disk.VHD {
		return "vpc"
	}
	return string(f)
}

// setDiskFile points disk i at a file of the given format and drops any
// backing-store description (the image header names its own parents).
func (d *domainDoc) setDiskFile(i int, file string, f disk.Format) {
	dd := &d.dom.Devices.Disks[i]
	src := &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: file}}
	if old := dd.Source; old != nil {
		src.StartupPolicy = old.StartupPolicy
		src.Encryption = old.Encryption
	}
	dd.Source = src
	dd.BackingStore = nil
	if dd.Driver == nil {
		dd.Driver = &libvirtxml.DomainDiskDriver{Name: "qemu"}
	}
	dd.Driver.Type = driverOfFormat(f)
}

// macs returns the interfaces' MACs (normalized), in order.
func (d *domainDoc) macs() []string {
	if d.dom.Devices == nil {
		return nil
	}
	var out []string
	for _, ifc := range d.dom.Devices.Interfaces {
		if ifc.MAC != nil {
			if m, err := vmconfig.NormalizeMAC(ifc.MAC.Address); err == nil {
				out = append(out, m)
			}
		}
	}
	return out
}

// newIdentity gives the domain a name, UUID and MACs; macs maps old MACs
// to new ones (an interface without a MAC gets one libvirt chooses).
func (d *domainDoc) newIdentity(name, uuid string, macs map[string]string) {
	d.dom.Name, d.dom.UUID = name, uuid
	if d.dom.Devices == nil {
		return
	}
	for i := range d.dom.Devices.Interfaces {
		ifc := &d.dom.Devices.Interfaces[i]
		if ifc.MAC == nil {
			continue
		}
		if m, err := vmconfig.NormalizeMAC(ifc.MAC.Address); err == nil && macs[m] != "" {
			ifc.MAC.Address = macs[m]
		}
		// A tap device name belongs to the VM it was made for.
		if ifc.Target != nil && ifc.Target.Managed != "no" {
			ifc.Target = nil
		}
	}
}

// forgetRuntime drops what a host generated for one run of the VM: socket
// paths of channels under its per-domain folders, which the target host
// generates anew.
func (d *domainDoc) forgetRuntime() {
	if d.dom.Devices == nil {
		return
	}
	for i := range d.dom.Devices.Channels {
		ch := &d.dom.Devices.Channels[i]
		if ch.Source != nil && ch.Source.UNIX != nil && strings.Contains(ch.Source.UNIX.Path, "/"+"domain-") {
			ch.Source.UNIX.Path = ""
		}
	}
}

// diskFile is a disk of a definition with the point's file for it.
type diskFile struct {
	domDisk
	File repo.File
}

// mapDisks finds, for every restorable disk of the definition, the point's
// file that holds it. A backup through a driver names it disks/<base> (or
// disks/<target>-<base> when two disks share a base name); a VM folder
// keeps the file's own name, so a unique base name matches too.
func mapDisks(pt *repo.Point, doc *domainDoc) ([]diskFile, error) {
	byPath := map[string]repo.File{}
	isParent := map[string]bool{}
	for _, f := range pt.Files {
		byPath[f.Path] = f
		if f.Parent != "" {
			isParent[f.Parent] = true
		}
	}
	used := map[string]bool{}
	var out []diskFile
	for _, dd := range doc.disks() {
		if !dd.restorable() {
			continue
		}
		base := filepath.Base(dd.Source)
		var found *repo.File
		for _, c := range []string{"disks/" + dd.Target + "-" + base, "disks/" + base} {
			if f, ok := byPath[c]; ok && f.Disk != nil && !used[c] {
				found = &f
				break
			}
		}
		if found == nil {
			var cands []repo.File
			for _, f := range pt.Files {
				if f.Disk != nil && !isParent[f.Path] && !used[f.Path] && path.Base(f.Path) == base {
					cands = append(cands, f)
				}
			}
			if len(cands) > 1 {
				return nil, refuse(CodePointUnusable, "recover the files with method 3 and attach them by hand",
					"point %s holds %d files that could be disk %s (%s)", pt.ID, len(cands), dd.Target, dd.Source)
			}
			if len(cands) == 1 {
				found = &cands[0]
			}
		}
		if found == nil {
			return nil, refuse(CodePointUnusable, "choose a point that holds every disk of the VM",
				"point %s holds no file for disk %s (%s)", pt.ID, dd.Target, dd.Source)
		}
		used[found.Path] = true
		out = append(out, diskFile{domDisk: dd, File: *found})
	}
	return out, nil
}

// subPoint is the point restricted to some files and every ancestor of
// their layers, for restore.Run.
func subPoint(pt *repo.Point, paths []string) *repo.Point {
	byPath := map[string]repo.File{}
	for _, f := range pt.Files {
		byPath[f.Path] = f
	}
	keep := map[string]bool{}
	for _, p := range paths {
		for q, depth := p, 0; q != "" && !keep[q] && depth < 64; depth++ {
			keep[q] = true
			q = byPath[q].Parent
		}
	}
	cp := *pt
	cp.Files = nil
	for _, f := range pt.Files {
		if keep[f.Path] {
			cp.Files = append(cp.Files, f)
		}
	}
	return &cp
}

// hasChain says whether a point file is a differencing layer.
func hasChain(f repo.File) bool { return f.Parent != "" }
