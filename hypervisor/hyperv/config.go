package hyperv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"lifeboat/vmconfig"
)

// Format is a configuration file format.
type Format int

const (
	FormatUnknown Format = iota
	FormatXML            // 2008 R2 – 2012 R2 .xml
	FormatVMCX           // 2016+ .vmcx / .vmrs container
)

func (f Format) String() string {
	switch f {
	case FormatXML:
		return "xml"
	case FormatVMCX:
		return "vmcx"
	}
	return "unknown"
}

// MaxConfigSize bounds what ReadFile reads. Real configurations are tens of
// kilobytes (a .vmrs of a saved VM is larger, but its memory is not part of
// the key tree ReadFile is for).
const MaxConfigSize = 64 << 20

// Config is a parsed configuration file: the typed key tree whose root is
// the <configuration> element (XML) or "configuration" key (VMCX). The two
// formats carry the same schema, so one extractor serves both.
type Config struct {
	File   string // the name errors use
	Format Format
	Root   *Node
}

// Sniff tells the format of a configuration file from its first bytes.
func Sniff(data []byte) Format {
	if IsVMCX(data) {
		return FormatVMCX
	}
	text, err := utf8Text(data[:min(len(data), 512)&^1])
	if err != nil {
		return FormatUnknown
	}
	text = bytes.TrimLeft(text, " \t\r\n")
	if bytes.HasPrefix(text, []byte("<")) {
		return FormatXML
	}
	return FormatUnknown
}

// Parse parses a configuration in either format.
func Parse(name string, data []byte) (*Config, error) {
	switch Sniff(data) {
	case FormatVMCX:
		return ParseVMCX(name, data)
	case FormatXML:
		return ParseXML(name, data)
	}
	return nil, &ParseError{File: name, Offset: -1, Err: errors.New("neither a VMCX container nor an XML document: not a Hyper-V configuration")}
}

// ReadFile reads and parses a configuration file.
func ReadFile(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("hyperv: %s: %w", path, err)
	}
	if len(data) > MaxConfigSize {
		return nil, &ParseError{File: path, Offset: -1, Err: fmt.Errorf("larger than %d MiB: not a configuration file", MaxConfigSize>>20)}
	}
	return Parse(path, data)
}

// Device classes (manifest "device" GUIDs) that matter to a rebuild.
const (
	classIDE      = "83f8638b-8dca-4152-9eda-2ca8b33039b4" // Microsoft Emulated IDE Controller
	classSCSI     = "d422512d-2bf2-4752-809d-7b82b5fcb1b4" // Synthetic SCSI Controller
	classFloppy   = "8f0d2762-0b00-4e04-af4f-19010527cb93" // Microsoft Emulated Floppy Controller
	classSynthNIC = "2fc216b0-d2e2-4967-9b6d-b8a5c9ca2778" // Synthetic Ethernet Port
	classGuestRT  = "917bd8cb-3bb6-4124-9383-b7d21ac07f79" // Microsoft Guest Runtime State (.vmgs)
	featureVLAN   = "952C5004-4465-451C-8CB8-FA9AB382B773" // Ethernet Switch Port VLAN Settings
)

var (
	sectionRE = regexp.MustCompile(`^_([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})_$`)
	indexedRE = regexp.MustCompile(`^([a-z]+)([0-9]{1,3})$`)
)

type vdev struct {
	class, name string
	order       int
}

// section is one `_<instance GUID>_` device section.
type section struct {
	node *Node
	vdev
}

// VM extracts the hypervisor-neutral summary. Only what the configuration
// itself says is filled in; saved state and snapshot details come from
// the files around it (see Layout.VM). The summary is validated.
//
// What is read, and from where:
//   - Name, ID: properties/name, properties/global_id.
//   - Version: properties/version, major<<8|minor (1280 = "5.0").
//   - Machine: properties/subtype, 0 = "gen1", 1 = "gen2".
//   - CPUs: settings/processors/count; MemoryMiB: settings/memory/bank/size
//     (the startup amount, in MB, also with dynamic memory).
//   - Disks: the controllerN/driveM keys (pathname, type VHD|ISO|VFD|NONE)
//     of the IDE, SCSI and floppy sections, found by the manifest's
//     device classes (vdevNNN/device, vdevNNN/instance). SCSI controllers
//     are numbered in vdevNNN order. Empty hard-drive slots and the
//     built-in empty floppy drive are left out; an empty DVD drive is kept.
//   - NICs: every device section with a MacAddress key: FriendlyName,
//     Connection/AltSwitchName (else SwitchName), MacAddress (all zero =
//     dynamic, not yet assigned, kept as "").
//   - Snapshots: the GUIDs listed under global_settings/snapshots/list.
//   - GuestState: the Guest Runtime State device's StateFilePath (.vmgs).
//
// The VLAN id is not decoded: Hyper-V keeps it in the VLAN port feature
// (Connection/Feature_952C5004-…) as a binary blob whose layout no
// available sample shows. A NIC that has that feature gets a Note.
func (c *Config) VM() (vmconfig.VM, error) {
	root := c.Root
	var errs []error
	fail := func(err error) { errs = append(errs, err) }
	str := func(path string) string {
		s, err := stringAt(root, path)
		if err != nil {
			fail(err)
		}
		return s
	}
	num := func(path string) int64 {
		v, err := intAt(root, path)
		if err != nil {
			fail(err)
		}
		return v
	}

	vm := vmconfig.VM{Hypervisor: vmconfig.HyperV}
	vm.Name = str("properties/name")
	vm.ID = strings.Trim(str("properties/global_id"), "{}")
	vm.CPUs = int(num("settings/processors/count"))
	vm.MemoryMiB = num("settings/memory/bank/size")
	if v, err := intAt(root, "properties/version"); err == nil {
		vm.Version = fmt.Sprintf("%d.%d", v>>8, v&0xFF)
	}
	if v, err := intAt(root, "properties/subtype"); err == nil {
		switch v {
		case 0:
			vm.Machine = "gen1"
		case 1:
			vm.Machine = "gen2"
		default:
			vm.Notes = append(vm.Notes, fmt.Sprintf("unknown VM subtype %d (generation)", v))
		}
	}

	// The manifest maps device instances to device classes.
	vdevs := map[string]vdev{}
	if m := root.Child("manifest"); m != nil {
		for i, d := range m.Children {
			if d.Kind != KindNode {
				continue
			}
			inst, err1 := stringAt(d, "instance")
			class, err2 := stringAt(d, "device")
			if err1 != nil || err2 != nil {
				continue
			}
			name, _ := stringAt(d, "name")
			order := len(m.Children) + i // after every vdevNNN if unnumbered
			if nm := indexedRE.FindStringSubmatch(d.Name); nm != nil && nm[1] == "vdev" {
				order, _ = strconv.Atoi(nm[2])
			}
			vdevs[strings.ToLower(strings.Trim(inst, "{}"))] = vdev{class: strings.ToLower(strings.Trim(class, "{}")), name: name, order: order}
		}
	}
	var sections []section
	for _, n := range root.Children {
		m := sectionRE.FindStringSubmatch(n.Name)
		if m == nil || n.Kind != KindNode {
			continue
		}
		inst := strings.ToLower(m[1])
		v, ok := vdevs[inst]
		if !ok {
			// Singletons (IDE, floppy) use their class GUID as instance.
			v = vdev{class: inst, order: 1<<20 + len(sections)}
		}
		sections = append(sections, section{node: n, vdev: v})
	}
	slices.SortStableFunc(sections, func(a, b section) int { return a.order - b.order })

	scsiIndex := 0
	for _, s := range sections {
		switch s.class {
		case classIDE:
			vm.Disks = append(vm.Disks, drives(s.node, "ide", -1, &vm, &errs)...)
		case classSCSI:
			vm.Disks = append(vm.Disks, drives(s.node, "scsi", scsiIndex, &vm, &errs)...)
			scsiIndex++
		case classFloppy:
			vm.Disks = append(vm.Disks, drives(s.node, "floppy", -1, &vm, &errs)...)
		case classGuestRT:
			if p, err := stringAt(s.node, "StateFilePath"); err == nil {
				vm.GuestState = p
			}
		}
		if s.node.Child("MacAddress") != nil {
			if nic, err := nicOf(s, &vm); err != nil {
				fail(err)
			} else {
				vm.NICs = append(vm.NICs, nic)
			}
		}
	}

	if list := root.Lookup("global_settings/snapshots/list"); list != nil {
		for _, n := range list.Children {
			if n.Kind != KindString || n.Err != nil {
				continue
			}
			if id := strings.Trim(strings.TrimSpace(n.Str), "{}"); vmconfig.IsUUID(id) {
				vm.Snapshots = append(vm.Snapshots, vmconfig.Snapshot{ID: id})
			}
		}
	}

	if len(errs) == 0 {
		if err := vm.Validate(); err != nil {
			fail(err)
		}
	}
	if len(errs) > 0 {
		return vm, &ParseError{File: c.File, Offset: -1, Err: errors.Join(errs...)}
	}
	return vm, nil
}

// drives lists the drives of one controller section. For IDE and floppy
// the controllerN index is the controller number; a SCSI section holds one
// controller (controller0), numbered by scsiIndex.
func drives(sec *Node, bus string, scsiIndex int, vm *vmconfig.VM, errs *[]error) []vmconfig.Disk {
	var out []vmconfig.Disk
	for _, ctl := range sec.Children {
		m := indexedRE.FindStringSubmatch(ctl.Name)
		if m == nil || m[1] != "controller" || ctl.Kind != KindNode {
			continue
		}
		ci, _ := strconv.Atoi(m[2])
		if scsiIndex >= 0 {
			ci = scsiIndex
		}
		for _, drv := range ctl.Children {
			dm := indexedRE.FindStringSubmatch(drv.Name)
			if dm == nil || dm[1] != "drive" || drv.Kind != KindNode {
				continue
			}
			slot, _ := strconv.Atoi(dm[2])
			where := fmt.Sprintf("%s/%s/%s", sec.Name, ctl.Name, drv.Name)
			typ, err := stringAt(drv, "type")
			if err != nil {
				*errs = append(*errs, fmt.Errorf("%s: %w", where, err))
				continue
			}
			path, err := stringAt(drv, "pathname")
			if err != nil && !errors.Is(err, errMissing) {
				*errs = append(*errs, fmt.Errorf("%s: %w", where, err))
				continue
			}
			d := vmconfig.Disk{Bus: bus, Controller: ci, Slot: slot, Path: path, Format: formatOf(path)}
			switch strings.ToUpper(typ) {
			case "NONE", "":
				continue
			case "VHD":
				d.Kind = vmconfig.KindDisk
				if path == "" {
					vm.Notes = append(vm.Notes, fmt.Sprintf("%s %d:%d: hard drive without an image, not recorded", bus, ci, slot))
					continue
				}
			case "ISO":
				d.Kind, d.ReadOnly = vmconfig.KindCDROM, true
			case "VFD":
				d.Kind = vmconfig.KindFloppy
				if path == "" {
					continue // every generation 1 VM has this drive
				}
			default:
				d.Kind = vmconfig.KindDisk
				vm.Notes = append(vm.Notes, fmt.Sprintf("%s %d:%d: drive type %q (pass-through?) recorded as a disk", bus, ci, slot, typ))
				if path == "" {
					continue
				}
			}
			out = append(out, d)
		}
	}
	return out
}

func formatOf(path string) string {
	i := strings.LastIndexAny(path, `\/.`)
	if i < 0 || path[i] != '.' {
		return ""
	}
	switch strings.ToLower(path[i+1:]) {
	case "vhd", "avhd":
		return "vhd"
	case "vhdx", "avhdx":
		return "vhdx"
	case "iso":
		return "iso"
	case "vfd", "flp":
		return "vfd"
	}
	return ""
}

func nicOf(s section, vm *vmconfig.VM) (vmconfig.NIC, error) {
	n := s.node
	var nic vmconfig.NIC
	mac, err := stringAt(n, "MacAddress")
	if err != nil {
		return nic, fmt.Errorf("%s/%w", n.Name, err)
	}
	if strings.Trim(mac, "0-:") != "" {
		if nic.MAC, err = vmconfig.NormalizeMAC(mac); err != nil {
			return nic, fmt.Errorf("%s/MacAddress (%s): %w", n.Name, n.Child("MacAddress").Pos, err)
		}
	}
	nic.Name, _ = stringAt(n, "FriendlyName")
	if sw, _ := stringAt(n, "Connection/AltSwitchName"); sw != "" {
		nic.Network = sw
	} else {
		nic.Network, _ = stringAt(n, "SwitchName")
	}
	switch {
	case s.class == classSynthNIC:
		nic.Model = "synthetic"
	case strings.Contains(strings.ToLower(s.name), "emulated"), strings.Contains(strings.ToLower(s.name), "legacy"):
		nic.Model = "emulated"
	}
	if conn := n.Child("Connection"); conn != nil && conn.Child("Feature_"+featureVLAN) != nil {
		label := nic.Name
		if label == "" {
			label = n.Name
		}
		vm.Notes = append(vm.Notes, fmt.Sprintf("NIC %q has a VLAN setting whose id was not decoded; set it by hand", label))
	}
	return nic, nil
}

// filetime converts a Windows FILETIME (100 ns since 1601) to time.
func filetime(v uint64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	const epochDiff = 116444736000000000 // 1601-01-01 to 1970-01-01 in 100 ns
	if v < epochDiff {
		return time.Time{}
	}
	d := v - epochDiff
	return time.Unix(int64(d/1e7), int64(d%1e7)*100).UTC()
}

// CreationTime returns properties/creation_time, stored as the 8 bytes of
// a FILETIME; zero when absent.
func (c *Config) CreationTime() time.Time {
	b, err := bytesAt(c.Root, "properties/creation_time")
	if err != nil || len(b) != 8 {
		return time.Time{}
	}
	return filetime(binary.LittleEndian.Uint64(b))
}
