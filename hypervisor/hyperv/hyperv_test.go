package hyperv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"lifeboat/internal/testenv"
	"lifeboat/vmconfig"
)

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(testenv.HyperV(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// vmXMLWant is what vm.XML (Hyper-V 2012 R2, from mwrock/packer-templates)
// says, read off the file by hand.
var vmXMLWant = vmconfig.VM{
	Name:       "2012R2",
	ID:         "0AA394FA-7C4A-4070-BA32-773D43B28A68",
	Hypervisor: "hyperv",
	Machine:    "gen1", // properties/subtype 0, and it has IDE
	Version:    "5.0",  // properties/version 1280
	CPUs:       1,      // settings/processors/count
	MemoryMiB:  1024,   // settings/memory/bank/size
	NICs: []vmconfig.NIC{{
		Name:    "Network Adapter",         // FriendlyName
		Network: "Virtual External Switch", // Connection/AltSwitchName
		MAC:     "00:15:5d:01:07:dc",       // MacAddress 00-15-5D-01-07-DC
		Model:   "synthetic",               // manifest vdev012: 2fc216b0-…
	}},
	Disks: []vmconfig.Disk{
		{Bus: "ide", Controller: 0, Slot: 0, Path: `C:\dev\vagrant\Win2k12R2\.vagrant\machines\default\hyperv\disk.vhd`, Format: "vhd", Kind: "disk"},
		{Bus: "ide", Controller: 1, Slot: 0, ReadOnly: true, Kind: "cdrom"}, // type ISO, no media
	},
}

// vmcxWant is what test.vmcx (fox-it/dissect.hypervisor) holds, from a
// dump of its key tables.
var vmcxWant = vmconfig.VM{
	Name:       "Other Location",
	ID:         "282874FC-59D6-4F30-BC04-5FDD909C82E0",
	Hypervisor: "hyperv",
	Machine:    "gen1",
	Version:    "9.0", // 2304
	CPUs:       1,
	MemoryMiB:  1024,
	NICs:       []vmconfig.NIC{{Name: "Network Adapter", Model: "synthetic"}}, // MAC 00-00-…: dynamic, unassigned; not connected
	Disks: []vmconfig.Disk{
		{Bus: "ide", Controller: 0, Slot: 0, Path: `C:\Users\Public\Documents\Hyper-V\Virtual Hard Disks\Other Location.vhdx`, Format: "vhdx", Kind: "disk"},
		{Bus: "ide", Controller: 1, Slot: 0, ReadOnly: true, Kind: "cdrom"},
	},
	GuestState: `C:\Hyper-V\EasyToFind\Virtual Machines\282874FC-59D6-4F30-BC04-5FDD909C82E0.vmgs`,
}

func TestFixtures(t *testing.T) {
	xmlData := fixture(t, "vm.XML")
	vmcxData := fixture(t, "test.vmcx")
	tests := []struct {
		name    string
		data    []byte
		format  Format
		want    vmconfig.VM
		created time.Time
	}{
		{"vm.XML", xmlData, FormatXML, vmXMLWant, time.Date(2014, 11, 9, 5, 34, 40, 431732700, time.UTC)},
		{"vm.XML as UTF-16LE with BOM", utf16LE(xmlData, true), FormatXML, vmXMLWant, time.Date(2014, 11, 9, 5, 34, 40, 431732700, time.UTC)},
		{"vm.XML as UTF-16LE without BOM", utf16LE(xmlData, false), FormatXML, vmXMLWant, time.Date(2014, 11, 9, 5, 34, 40, 431732700, time.UTC)},
		{"vm.XML as UTF-16BE with BOM", utf16BE(xmlData), FormatXML, vmXMLWant, time.Date(2014, 11, 9, 5, 34, 40, 431732700, time.UTC)},
		{"vm.XML with CRLF", bytes.ReplaceAll(xmlData, []byte("\n"), []byte("\r\n")), FormatXML, vmXMLWant, time.Date(2014, 11, 9, 5, 34, 40, 431732700, time.UTC)},
		{"test.vmcx", vmcxData, FormatVMCX, vmcxWant, time.Date(2021, 8, 22, 21, 41, 0, 717226300, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if f := Sniff(tt.data); f != tt.format {
				t.Fatalf("Sniff = %v, want %v", f, tt.format)
			}
			c, err := Parse(tt.name, tt.data)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.VM()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("VM() =\n%+v\nwant\n%+v", got, tt.want)
			}
			if ct := c.CreationTime(); !ct.Equal(tt.created) {
				t.Errorf("CreationTime = %v, want %v", ct, tt.created)
			}
		})
	}
}

// TestUTF16SameTree: the re-encoded file gives the same tree, line numbers
// included, not just the same summary.
func TestUTF16SameTree(t *testing.T) {
	data := fixture(t, "vm.XML")
	a, err := ParseXML("a", data)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseXML("b", utf16LE(data, true))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a.Root, b.Root) {
		t.Fatal("UTF-16LE re-encoding parsed to a different tree")
	}
	if n := a.Root.Lookup("settings/processors/count"); n == nil || n.Pos != "line 410" {
		t.Fatalf("processors/count at %+v, want line 410", n)
	}
}

// TestVMCXTree checks the key tree against the counts dissect.hypervisor's
// own test asserts for this fixture (distinct key names per node).
func TestVMCXTree(t *testing.T) {
	c, info, err := ParseVMCXInfo("test.vmcx", fixture(t, "test.vmcx"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != 0x400 || info.KeyTables != 8 || info.Sequence != 25 {
		t.Fatalf("info = %+v", info)
	}
	distinct := func(n *Node) int {
		m := map[string]bool{}
		for _, c := range n.Children {
			m[c.Name] = true
		}
		return len(m)
	}
	for path, want := range map[string]int{"": 27, "manifest": 39, "properties": 11, "settings": 6} {
		n := c.Root
		if path != "" {
			n = c.Root.Lookup(path)
		}
		if got := distinct(n); got != want {
			t.Errorf("%q has %d keys, want %d", path, got, want)
		}
	}
	if v, err := boolAt(c.Root, "settings/vnuma/enabled"); err != nil || !v {
		t.Errorf("settings/vnuma/enabled = %v, %v", v, err)
	}
	if b, err := bytesAt(c.Root, "_1bc9500e-ad4b-426e-ad70-d04cbeb2033b_/Connection/Feature_C885BFD1-ABB7-418F-8163-9F379C9F7166/Setting_E76F45DE-B447-410A-B707-575A534B4927/Data"); err != nil || len(b) != 56 {
		t.Errorf("offload feature data = %x, %v", b, err)
	}
}

// TestVMRS: the runtime-state file is the same container; its tree matches
// what dissect.hypervisor's test expects, and it is not a VM configuration.
func TestVMRS(t *testing.T) {
	data := fixture(t, "test.VMRS")
	if Sniff(data) != FormatVMCX {
		t.Fatal("test.VMRS not recognised")
	}
	c, info, err := ParseVMCXInfo("test.VMRS", data)
	if err != nil {
		t.Fatal(err)
	}
	if info.KeyTables != 2 {
		t.Errorf("key tables = %d, want 2", info.KeyTables)
	}
	if v, err := intAt(c.Root, "properties/version"); err != nil || v != 2304 {
		t.Errorf("properties/version = %d, %v", v, err)
	}
	if v, err := intAt(c.Root, "_83f8638b-8dca-4152-9eda-2ca8b33039b4_/VDEVVersion"); err != nil || v != 1792 {
		t.Errorf("IDE VDEVVersion = %d, %v", v, err)
	}
	// metrics repeats "devicetype"; the tree keeps all three.
	n := 0
	for _, ch := range c.Root.Lookup("global_settings/metrics").Children {
		if ch.Name == "devicetype" {
			n++
		}
	}
	if n != 3 {
		t.Errorf("%d devicetype keys, want 3", n)
	}
	_, err = c.VM()
	var pe *ParseError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "test.VMRS") || !strings.Contains(err.Error(), "properties/name: missing") {
		t.Fatalf("VM() of a .vmrs: %v", err)
	}
}

func TestXMLErrors(t *testing.T) {
	good := fixture(t, "vm.XML")
	tests := []struct {
		name string
		data []byte
		want []string
	}{
		{"truncated", good[:len(good)/2], []string{"hyperv: broken.xml:", "unexpected EOF"}},
		{"mismatched tag", bytes.Replace(good, []byte("</controller0>"), []byte("</controllerX>"), 1), []string{"broken.xml:84", "controllerX"}},
		{"wrong root", []byte(`<?xml version="1.0"?><domain><name>x</name></domain>`), []string{"broken.xml:1", "root element is <domain>"}},
		{"no root", []byte(`<?xml version="1.0"?>`), []string{"no <configuration> element"}},
		{"odd UTF-16", append([]byte{0xFF, 0xFE}, utf16LE(good, false)[:101]...), []string{"odd length"}},
		{"unknown charset", []byte(`<?xml version="1.0" encoding="EBCDIC"?><configuration/>`), []string{"EBCDIC"}},
		{"typed with child", []byte(`<configuration><a type="string"><b/></a></configuration>`), []string{"broken.xml:1", "configuration/a", "typed (string) element has a child element <b>"}},
		{"two roots", []byte(`<configuration/><configuration/>`), []string{"second root"}},
		{"deep", []byte("<configuration>" + strings.Repeat("<a>", 100)), []string{"nested deeper than 64"}},
		{"not xml", []byte("hello"), []string{"broken.xml", "not a Hyper-V configuration"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("broken.xml", tt.data)
			if err == nil {
				t.Fatal("parsed")
			}
			var pe *ParseError
			if !errors.As(err, &pe) || pe.File != "broken.xml" {
				t.Fatalf("error %v is not a ParseError naming the file", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestXMLBadValues: a malformed value the summary needs is reported with
// its key path and line; malformed values nobody reads do not matter.
func TestXMLBadValues(t *testing.T) {
	good := fixture(t, "vm.XML")
	bad := bytes.Replace(good, []byte(`<count type="integer">1</count>`), []byte(`<count type="integer">one</count>`), 1)
	bad = bytes.Replace(bad, []byte(`<peaktime type="integer">0</peaktime>`), []byte(`<peaktime type="integer">zero</peaktime>`), 1)
	c, err := ParseXML("vm.XML", bad)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.VM()
	if err == nil || !strings.Contains(err.Error(), "hyperv: vm.XML") ||
		!strings.Contains(err.Error(), "settings/processors/count (line 410)") || strings.Contains(err.Error(), "peaktime") {
		t.Fatalf("VM() error = %v", err)
	}
	noName := bytes.Replace(good, []byte(`<name type="string">2012R2</name>`), nil, 1)
	c, err = ParseXML("vm.XML", noName)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.VM(); err == nil || !strings.Contains(err.Error(), "properties/name: missing") {
		t.Fatalf("VM() without a name: %v", err)
	}
}

// setCRC recomputes the CRC-32 at ckAt of b (taken as zero while hashing).
func setCRC(b []byte, ckAt int) {
	binary.LittleEndian.PutUint32(b[ckAt:], 0)
	binary.LittleEndian.PutUint32(b[ckAt:], crc32.ChecksumIEEE(b))
}

func TestVMCXDamage(t *testing.T) {
	good := fixture(t, "test.vmcx")
	mod := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	tests := []struct {
		name string
		data []byte
		want []string // "" = parses
		is   error
	}{
		{"header 0 damaged, header 1 used", mod(func(b []byte) { b[5] ^= 1 }), nil, nil},
		{"both headers damaged", mod(func(b []byte) { b[5] ^= 1; b[0x1005] ^= 1 }), []string{"neither storage header"}, nil},
		{"not vmcx", []byte("MZ\x90\x00"), []string{"not a .vmcx/.vmrs file"}, nil},
		{"version", mod(func(b []byte) {
			for _, h := range []int{0, 0x1000} {
				binary.LittleEndian.PutUint32(b[h+10:], 0x300)
				setCRC(b[h:h+vmcxHeaderSize], 4)
			}
		}), []string{"version 0x300"}, ErrUnsupported},
		{"pending log", mod(func(b []byte) {
			binary.LittleEndian.PutUint32(b[0xa008:], 2)
			setCRC(b[0xa000:0xa000+vmcxReplayHeaderSize], 4)
		}), []string{"offset 0xa000", "2 entries"}, ErrLogPending},
		{"key entry bit flip", mod(func(b []byte) { b[0x13000+0xaf+40] ^= 0x20 }), []string{"offset 0x130af", `key "pathname": checksum mismatch`}, nil},
		{"object entry bit flip", mod(func(b []byte) { b[0x2008+7] ^= 1 }), []string{"object table entry 0: checksum mismatch"}, nil},
		{"key table header", mod(func(b []byte) { b[0x3004] ^= 1 }), []string{"offset 0x3000", "bad key table header"}, nil},
		{"truncated", good[:0x8000], []string{"outside the file"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseVMCX("x.vmcx", tt.data)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if vm, err := c.VM(); err != nil || vm.Name != "Other Location" {
					t.Fatalf("VM() = %+v, %v", vm, err)
				}
				return
			}
			if err == nil {
				t.Fatal("parsed")
			}
			if !strings.HasPrefix(err.Error(), "hyperv: x.vmcx") {
				t.Errorf("error %q does not name the file", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %q is not %v", err, tt.is)
			}
		})
	}
}

// TestVMCXFileObject moves the disk path into a file object, the way
// Hyper-V stores values of 2 KiB and more, and reads it back.
func TestVMCXFileObject(t *testing.T) {
	b := fixture(t, "test.vmcx")
	const path = `D:\Very\Long\Folder\Name\Virtual Hard Disks\moved.vhdx`
	u := utf16.Encode([]rune(path))
	obj := make([]byte, 0x1000)
	for i, c := range u {
		binary.LittleEndian.PutUint16(obj[2*i:], c)
	}
	objOff := uint64(len(b))
	b = append(b, obj...)
	// An unallocated object-table slot becomes the file object.
	slot := b[0x2008+9*vmcxObjectEntrySize : 0x2008+10*vmcxObjectEntrySize]
	if slot[17] != 0 {
		t.Fatal("slot 9 in use")
	}
	slot[0] = 3
	binary.LittleEndian.PutUint64(slot[5:], objOff)
	binary.LittleEndian.PutUint32(slot[13:], 0x1000)
	slot[17] = 1
	setCRC(slot, 1)
	// The pathname entry points at it.
	e := b[0x13000+0xaf:]
	size := binary.LittleEndian.Uint32(e[2:])
	e = e[:size]
	do := int(e[20])
	binary.LittleEndian.PutUint16(e, 0x0106)
	v := e[vmcxKeyEntryHeader+do:]
	binary.LittleEndian.PutUint32(v, uint32(2*len(u)))
	binary.LittleEndian.PutUint64(v[4:], objOff)
	setCRC(e[:vmcxKeyEntryHeader+do+12], 12)

	c, err := ParseVMCX("moved.vmcx", b)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := c.VM()
	if err != nil {
		t.Fatal(err)
	}
	if vm.Disks[0].Path != path {
		t.Fatalf("disk path = %q", vm.Disks[0].Path)
	}
	// A pointer to a place the object table does not hold is refused.
	binary.LittleEndian.PutUint64(v[4:], objOff+0x10)
	setCRC(e[:vmcxKeyEntryHeader+do+12], 12)
	if _, err := ParseVMCX("moved.vmcx", b); err == nil || !strings.Contains(err.Error(), "file object") {
		t.Fatalf("dangling file object pointer: %v", err)
	}
}

// TestSCSIAndSnapshots covers what the fixtures lack, on an edited copy of
// vm.XML: SCSI controllers numbered in manifest order, an emulated NIC
// with a VLAN feature, and a snapshot list.
func TestSCSIAndSnapshots(t *testing.T) {
	data := string(fixture(t, "vm.XML"))
	scsi := `<_d7a36e9b-9256-4f0d-be2c-3a13887f7b03_>
    <ChannelInstanceGuid type="string">{125506a8-a651-4852-87ad-3e7a29dd07fa}</ChannelInstanceGuid>
    <controller0>
      <drive0><pathname type="string">C:\VMs\2012R2\Virtual Hard Disks\data.vhdx</pathname><type type="string">VHD</type></drive0>
      <drive1><pathname type="string">C:\VMs\2012R2\Virtual Hard Disks\logs_9E3A.avhdx</pathname><type type="string">VHD</type></drive1>
      <drive2><pathname type="string"></pathname><type type="string">VHD</type></drive2>
    </controller0>
    <VDEVVersion type="integer">256</VDEVVersion>
  </_d7a36e9b-9256-4f0d-be2c-3a13887f7b03_>
  <_11111111-2222-3333-4444-555555555555_>
    <controller0>
      <drive0><pathname type="string">\\filer\vms\shared.vhdx</pathname><type type="string">VHD</type></drive0>
    </controller0>
  </_11111111-2222-3333-4444-555555555555_>
  <_aaaaaaaa-2222-3333-4444-555555555555_>
    <FriendlyName type="string">Legacy Network Adapter</FriendlyName>
    <MacAddress type="string">00155D0107DD</MacAddress>
    <SwitchName type="string">438B7B13-6180-4155-B7BF-08709CCF234D</SwitchName>
    <Connection>
      <Feature_952C5004-4465-451C-8CB8-FA9AB382B773><Data type="bytes">AAAAAA==</Data></Feature_952C5004-4465-451C-8CB8-FA9AB382B773>
    </Connection>
  </_aaaaaaaa-2222-3333-4444-555555555555_>`
	data = strings.Replace(data, `<_d7a36e9b-9256-4f0d-be2c-3a13887f7b03_>
    <ChannelInstanceGuid type="string">{125506a8-a651-4852-87ad-3e7a29dd07fa}</ChannelInstanceGuid>
    <VDEVVersion type="integer">256</VDEVVersion>
  </_d7a36e9b-9256-4f0d-be2c-3a13887f7b03_>`, scsi, 1)
	// The second SCSI controller comes first in the manifest.
	data = strings.Replace(data, `<size type="integer">13</size>`, `<size type="integer">15</size>
    <vdev000>
      <device type="string">d422512d-2bf2-4752-809d-7b82b5fcb1b4</device>
      <instance type="string">11111111-2222-3333-4444-555555555555</instance>
      <name type="string">Synthetic SCSI Controller</name>
    </vdev000>
    <vdev014>
      <device type="string">1f2e3d4c-0000-0000-0000-000000000000</device>
      <instance type="string">AAAAAAAA-2222-3333-4444-555555555555</instance>
      <name type="string">Emulated Ethernet Port</name>
    </vdev014>`, 1)
	data = strings.Replace(data, `<size type="integer">0</size>
      </list>`, `<size type="integer">2</size>
        <guid0 type="string">{6C2A4C3B-1E9B-4A6F-9C53-1D0F8B7A2E11}</guid0>
        <guid1 type="string">8D1B2C3A-4E5F-4A6B-8C7D-9E0F1A2B3C4D</guid1>
      </list>`, 1)
	c, err := ParseXML("edited.xml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	vm, err := c.VM()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range vm.DiskOrder() {
		got = append(got, strings.Join([]string{d.Bus, strconv.Itoa(d.Controller), strconv.Itoa(d.Slot), d.Path, d.Format, d.Kind}, "|"))
	}
	want := []string{
		`ide|0|0|C:\dev\vagrant\Win2k12R2\.vagrant\machines\default\hyperv\disk.vhd|vhd|disk`,
		`ide|1|0|||cdrom`,
		`scsi|0|0|\\filer\vms\shared.vhdx|vhdx|disk`,
		`scsi|1|0|C:\VMs\2012R2\Virtual Hard Disks\data.vhdx|vhdx|disk`,
		`scsi|1|1|C:\VMs\2012R2\Virtual Hard Disks\logs_9E3A.avhdx|vhdx|disk`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("disks:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(vm.NICs) != 2 || vm.NICs[0].MAC != "00:15:5d:01:07:dc" || vm.NICs[1] != (vmconfig.NIC{Name: "Legacy Network Adapter", Network: "438B7B13-6180-4155-B7BF-08709CCF234D", MAC: "00:15:5d:01:07:dd", Model: "emulated"}) {
		t.Fatalf("NICs = %+v", vm.NICs)
	}
	notes := strings.Join(vm.Notes, "\n")
	if !strings.Contains(notes, `"Legacy Network Adapter" has a VLAN setting`) || !strings.Contains(notes, "scsi 1:2: hard drive without an image") {
		t.Fatalf("notes = %q", notes)
	}
	if len(vm.Snapshots) != 2 || vm.Snapshots[0].ID != "6C2A4C3B-1E9B-4A6F-9C53-1D0F8B7A2E11" || vm.Snapshots[1].ID != "8D1B2C3A-4E5F-4A6B-8C7D-9E0F1A2B3C4D" {
		t.Fatalf("snapshots = %+v", vm.Snapshots)
	}
}

func TestResolve(t *testing.T) {
	l := &Layout{Root: "/r", Files: []string{
		"Virtual Hard Disks/disk.vhd",
		"Virtual Hard Disks/data.VHDX",
		"old/Virtual Hard Disks/data.vhdx",
		"a/x.vhdx",
		"b/x.vhdx",
		"Virtual Machines/0AA394FA-7C4A-4070-BA32-773D43B28A68.xml",
	}}
	tests := []struct{ in, want, err string }{
		{`C:\dev\vagrant\Win2k12R2\.vagrant\machines\default\hyperv\disk.vhd`, "Virtual Hard Disks/disk.vhd", ""},
		{`C:\ClusterStorage\Volume1\vm1\Virtual Hard Disks\DATA.vhdx`, "Virtual Hard Disks/data.VHDX", "several"},
		{`C:\ClusterStorage\Volume1\vm1\old\Virtual Hard Disks\data.vhdx`, "old/Virtual Hard Disks/data.vhdx", ""},
		{`\\filer\share\a\x.vhdx`, "a/x.vhdx", ""},
		{`\\?\C:\b\x.vhdx`, "b/x.vhdx", ""},
		{`C:\elsewhere\x.vhdx`, "", "several"},
		{`C:\missing.vhdx`, "", "not found"},
		{``, "", "not found"},
	}
	for _, tt := range tests {
		got, err := l.Resolve(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Resolve(%q) = %q, %v; want error %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func writeFile(t *testing.T, root, rel string, data []byte) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestLayout builds a 2012 R2 VM folder around vm.XML (with a saved state
// and a snapshot) and a 2016 folder around test.vmcx.
func TestLayout(t *testing.T) {
	xmlData := fixture(t, "vm.XML")
	const vmID = "0AA394FA-7C4A-4070-BA32-773D43B28A68"
	const snapID = "6C2A4C3B-1E9B-4A6F-9C53-1D0F8B7A2E11"
	root := t.TempDir()
	withSnap := bytes.Replace(xmlData, []byte(`<size type="integer">0</size>
      </list>`), []byte(`<size type="integer">1</size>
        <guid0 type="string">`+snapID+`</guid0>
      </list>`), 1)
	writeFile(t, root, "Virtual Machines/"+vmID+".xml", utf16LE(withSnap, true))
	writeFile(t, root, "Virtual Machines/"+vmID+"/"+vmID+".vsv", []byte("vsv"))
	writeFile(t, root, "Virtual Machines/"+vmID+"/"+vmID+".bin", []byte("bin"))
	writeFile(t, root, "Virtual Hard Disks/disk.vhd", []byte("vhd"))
	snapXML := bytes.Replace(xmlData, []byte(`<name type="string">2012R2</name>`), []byte(`<name type="string">2012R2 - (11/10/2014 - 09:00:00)</name>`), 1)
	writeFile(t, root, "Snapshots/"+strings.ToLower(snapID)+".XML", snapXML)
	writeFile(t, root, "Snapshots/"+strings.ToLower(snapID)+"/"+snapID+".bin", []byte("bin"))
	writeFile(t, root, "notes.xml", []byte("<notes/>"))

	l, err := OpenLayout(root)
	if err != nil {
		t.Fatal(err)
	}
	if l.Config != "Virtual Machines/"+vmID+".xml" {
		t.Fatalf("Config = %q", l.Config)
	}
	vm, cfg, err := l.VM()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Format != FormatXML || vm.Name != "2012R2" {
		t.Fatalf("VM = %+v", vm)
	}
	wantState := []string{"Virtual Machines/" + vmID + "/" + vmID + ".bin", "Virtual Machines/" + vmID + "/" + vmID + ".vsv"}
	if !reflect.DeepEqual(vm.SavedState, wantState) {
		t.Fatalf("SavedState = %q", vm.SavedState)
	}
	wantSnap := vmconfig.Snapshot{
		ID:   snapID,
		Name: "2012R2 - (11/10/2014 - 09:00:00)",
		Time: time.Date(2014, 11, 9, 5, 34, 40, 431732700, time.UTC),
		Files: []string{
			"Snapshots/" + strings.ToLower(snapID) + ".XML",
			"Snapshots/" + strings.ToLower(snapID) + "/" + snapID + ".bin",
		},
	}
	if len(vm.Snapshots) != 1 || !reflect.DeepEqual(vm.Snapshots[0], wantSnap) {
		t.Fatalf("Snapshots = %+v", vm.Snapshots)
	}
	if rel, err := l.Resolve(vm.Disks[0].Path); err != nil || rel != "Virtual Hard Disks/disk.vhd" {
		t.Fatalf("Resolve = %q, %v", rel, err)
	}

	// 2016+: .vmcx with .vmrs beside it.
	root2 := t.TempDir()
	const id2 = "282874FC-59D6-4F30-BC04-5FDD909C82E0"
	writeFile(t, root2, "Virtual Machines/"+id2+".vmcx", fixture(t, "test.vmcx"))
	writeFile(t, root2, "Virtual Machines/"+id2+".VMRS", fixture(t, "test.VMRS"))
	writeFile(t, root2, "Virtual Machines/"+id2+".vmgs", []byte("gs"))
	writeFile(t, root2, "Virtual Hard Disks/Other Location.vhdx", []byte("x"))
	l2, err := OpenLayout(root2)
	if err != nil {
		t.Fatal(err)
	}
	vm2, _, err := l2.VM()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(vm2.SavedState, []string{"Virtual Machines/" + id2 + ".VMRS"}) {
		t.Fatalf("SavedState = %q", vm2.SavedState)
	}
	for _, p := range []string{vm2.Disks[0].Path, vm2.GuestState} {
		if _, err := l2.Resolve(p); err != nil {
			t.Errorf("Resolve(%q): %v", p, err)
		}
	}

	// Two VMs in one folder, and none.
	writeFile(t, root2, "Virtual Machines/11111111-1111-1111-1111-111111111111.vmcx", fixture(t, "test.vmcx"))
	if _, err := OpenLayout(root2); err == nil || !strings.Contains(err.Error(), "2 VM configurations") {
		t.Fatalf("two VMs: %v", err)
	}
	if _, err := OpenLayout(t.TempDir()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("empty folder: %v", err)
	}
}

func utf16LE(b []byte, bom bool) []byte {
	var out []byte
	if bom {
		out = append(out, 0xFF, 0xFE)
	}
	for _, u := range utf16.Encode([]rune(string(b))) {
		out = binary.LittleEndian.AppendUint16(out, u)
	}
	return out
}

func utf16BE(b []byte) []byte {
	out := []byte{0xFE, 0xFF}
	for _, u := range utf16.Encode([]rune(string(b))) {
		out = binary.BigEndian.AppendUint16(out, u)
	}
	return out
}

// testKey is one key of a synthetic VMCX file: parent indexes an earlier
// key, -1 for a root.
type testKey struct {
	name   string
	typ    uint16
	parent int
	value  []byte // the value bytes after the name, as stored
}

// buildVMCX lays out the smallest VMCX container this reader accepts: both
// headers, the object table at 0x2000 with one key table, an empty replay
// log, and the keys in one table. Checksums are set.
func buildVMCX(keys []testKey) []byte {
	const replayAt, tableAt = 0x2040, 0x2080
	var table []byte
	table = append(table, 2, 0, 1, 0, 1, 0, 0, 0, 0, 0) // sig, index 1, seq 1, crc
	offs := make([]int, len(keys))
	for i, k := range keys {
		offs[i] = len(table)
		e := make([]byte, vmcxKeyEntryHeader, vmcxKeyEntryHeader+len(k.name)+1+len(k.value))
		binary.LittleEndian.PutUint16(e, k.typ)
		if k.parent >= 0 {
			binary.LittleEndian.PutUint16(e[6:], 1)
			binary.LittleEndian.PutUint32(e[8:], uint32(offs[k.parent]))
		}
		binary.LittleEndian.PutUint32(e[16:], uint32(i+1))
		e[20] = byte(len(k.name) + 1)
		e = append(e, k.name...)
		e = append(e, 0)
		e = append(e, k.value...)
		binary.LittleEndian.PutUint32(e[2:], uint32(len(e)))
		setCRC(e, 12)
		table = append(table, e...)
	}
	table = append(table, make([]byte, vmcxKeyEntryHeader)...) // size 0 ends the table
	setCRC(table[:vmcxKeyTableHeader], 6)

	b := make([]byte, tableAt+len(table))
	copy(b[tableAt:], table)
	for i, h := range []int{0, 0x1000} {
		binary.LittleEndian.PutUint32(b[h:], vmcxSignature)
		binary.LittleEndian.PutUint16(b[h+8:], uint16(2-i))
		binary.LittleEndian.PutUint32(b[h+10:], vmcxVersion)
		binary.LittleEndian.PutUint32(b[h+22:], 0x1000)
		binary.LittleEndian.PutUint64(b[h+26:], replayAt)
		binary.LittleEndian.PutUint64(b[h+34:], 0x40)
		binary.LittleEndian.PutUint32(b[h+42:], 0x1000)
		setCRC(b[h:h+vmcxHeaderSize], 4)
	}
	binary.LittleEndian.PutUint32(b[replayAt:], vmcxReplayLogSig)
	setCRC(b[replayAt:replayAt+vmcxReplayHeaderSize], 4)
	ot := b[vmcxObjectTableAt:]
	binary.LittleEndian.PutUint32(ot, vmcxObjectTableSig)
	binary.LittleEndian.PutUint32(ot[4:], 1)
	e := ot[8 : 8+vmcxObjectEntrySize]
	e[0] = 2
	binary.LittleEndian.PutUint64(e[5:], tableAt)
	binary.LittleEndian.PutUint32(e[13:], uint32(len(table)))
	e[17] = 1
	setCRC(e, 1)
	return b
}

func vNode() []byte { return make([]byte, 12) }
func vInt(v int64) []byte {
	return binary.LittleEndian.AppendUint64(nil, uint64(v))
}
func vStr(s string) []byte {
	u := utf16.Encode([]rune(s))
	b := binary.LittleEndian.AppendUint32(nil, uint32(2*len(u)))
	for _, c := range u {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return b
}

// smallVMCX is a minimal generation 2 VM with one SCSI disk.
func smallVMCX() []byte {
	return buildVMCX([]testKey{
		{"configuration", 9, -1, vNode()},                                 // 0
		{"properties", 9, 0, vNode()},                                     // 1
		{"name", 6, 1, vStr("small")},                                     // 2
		{"global_id", 6, 1, vStr("11111111-2222-3333-4444-555555555555")}, // 3
		{"subtype", 3, 1, vInt(1)},                                        // 4
		{"settings", 9, 0, vNode()},                                       // 5
		{"processors", 9, 5, vNode()},                                     // 6
		{"count", 4, 6, vInt(4)},                                          // 7: uint64
		{"memory", 9, 5, vNode()},                                         // 8
		{"bank", 9, 8, vNode()},                                           // 9
		{"size", 3, 9, vInt(4096)},                                        // 10
		{"_d422512d-2bf2-4752-809d-7b82b5fcb1b4_", 9, 0, vNode()},         // 11
		{"controller0", 9, 11, vNode()},                                   // 12
		{"drive3", 9, 12, vNode()},                                        // 13
		{"pathname", 6, 13, vStr(`E:\VMs\small\Virtual Hard Disks\small.vhdx`)},
		{"type", 6, 13, vStr("VHD")},
	})
}

func TestSmallVMCX(t *testing.T) {
	b := smallVMCX()
	c, err := Parse("small.vmcx", b)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := c.VM()
	if err != nil {
		t.Fatal(err)
	}
	want := vmconfig.VM{Name: "small", ID: "11111111-2222-3333-4444-555555555555", Hypervisor: "hyperv", Machine: "gen2", CPUs: 4, MemoryMiB: 4096,
		Disks: []vmconfig.Disk{{Bus: "scsi", Controller: 0, Slot: 3, Path: `E:\VMs\small\Virtual Hard Disks\small.vhdx`, Format: "vhdx", Kind: "disk"}}}
	if !reflect.DeepEqual(vm, want) {
		t.Fatalf("VM() =\n%+v\nwant\n%+v", vm, want)
	}

	// A value key as a parent, a missing parent, and a parent cycle.
	bad := []struct {
		name string
		keys []testKey
		want string
	}{
		{"value parent", []testKey{{"configuration", 9, -1, vNode()}, {"a", 3, 0, vInt(1)}, {"b", 3, 1, vInt(2)}}, `parent "a" holds a integer value, not keys`},
		{"no root", []testKey{{"other", 9, -1, vNode()}}, `no root key "configuration"`},
		{"unknown type", []testKey{{"configuration", 9, -1, vNode()}, {"x", 12, 0, vInt(1)}}, "unknown value type 12"},
	}
	for _, tt := range bad {
		if _, err := ParseVMCX("bad.vmcx", buildVMCX(tt.keys)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
	deep := []testKey{{"configuration", 9, -1, vNode()}}
	for i := range 70 {
		deep = append(deep, testKey{"n", 9, i, vNode()})
	}
	if _, err := ParseVMCX("deep.vmcx", buildVMCX(deep)); err == nil || !strings.Contains(err.Error(), "nested deeper") {
		t.Errorf("deep: %v", err)
	}
}
