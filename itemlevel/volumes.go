package itemlevel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf16"
)

// Partitioning schemes reported in Volume.Scheme.
const (
	SchemeNone = "none" // a filesystem on the whole disk
	SchemeMBR  = "mbr"
	SchemeGPT  = "gpt"
)

// Filesystem names reported in Volume.FS. Only NTFS, Ext4 (ext2, ext3 and
// ext4), FAT (FAT12, FAT16, FAT32) and XFS can be opened; the others are
// recognised so that a listing can say what a volume holds.
const (
	FSNTFS    = "ntfs"
	FSExt4    = "ext4"
	FSFAT     = "fat"
	FSXFS     = "xfs"
	FSExFAT   = "exfat"
	FSBtrfs   = "btrfs"
	FSLVM     = "lvm2"
	FSLUKS    = "luks"
	FSSwap    = "swap"
	FSUnknown = "unknown"
)

// Volume is one filesystem-bearing region of a disk: a partition, or the
// whole disk when it has no partition table.
type Volume struct {
	// Index is the partition number as the guest numbers it: MBR primary
	// slots 1-4, logical partitions from 5 in chain order, GPT entry
	// number (1-based). 0 is the whole disk.
	Index  int    `json:"index"`
	Scheme string `json:"scheme"`
	// Start and Length are byte offsets in the disk image.
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	// Type is the MBR type byte ("0x83") or the GPT type GUID in its
	// canonical upper-case text; TypeName says what it means when known.
	Type     string `json:"type,omitempty"`
	TypeName string `json:"type_name,omitempty"`
	// Name is the GPT partition name; GUID is the GPT unique partition GUID.
	Name string `json:"name,omitempty"`
	GUID string `json:"guid,omitempty"`
	// Bootable is the MBR active flag.
	Bootable bool `json:"bootable,omitempty"`
	// FS is the filesystem found by its signature (FSNTFS, FSExt4 ...).
	FS string `json:"fs"`
	// Label is the filesystem label where the superblock holds one.
	Label string `json:"label,omitempty"`
	// Truncated is set when the partition table says the volume extends
	// past the end of the disk; Length is then cut to the disk.
	Truncated bool `json:"truncated,omitempty"`
}

// String names the volume in messages: "volume 2 (ntfs)".
func (v Volume) String() string {
	if v.Index == 0 {
		return fmt.Sprintf("whole-disk volume (%s)", v.FS)
	}
	return fmt.Sprintf("volume %d (%s)", v.Index, v.FS)
}

// Limits that keep corrupt partition tables from costing much.
const (
	maxLogical       = 128     // logical partitions in one MBR chain
	maxGPTTableBytes = 4 << 20 // bytes of GPT partition entries
)

// ErrNoDisk is returned when the image is too small to hold a partition
// table or a filesystem.
var ErrNoDisk = errors.New("image is smaller than one sector")

// OpenVolumes lists the volumes of a disk image: the partitions of a GPT or
// MBR table (extended partitions are followed to their logical
// partitions), or the whole disk as one volume when it holds a filesystem
// directly or no table at all. Each volume's filesystem is detected by its
// signature. r is only read.
func OpenVolumes(ctx context.Context, r io.ReaderAt, size int64) ([]Volume, error) {
	if size < 512 {
		return nil, ErrNoDisk
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sector0 := make([]byte, 512)
	if err := readFull(r, sector0, 0); err != nil {
		return nil, fmt.Errorf("read sector 0: %w", err)
	}
	mbr, mbrOK := parseMBR(sector0)

	// GPT: a valid header at LBA 1 wins, whether or not the protective
	// MBR is intact (hybrid MBRs exist). Try 512-byte then 4096-byte
	// sectors.
	protective := mbrOK && mbr.hasType(0xEE)
	var gptErrs []string
	for _, ss := range []int64{512, 4096} {
		if size < 3*ss {
			continue
		}
		vols, err := readGPT(ctx, r, size, ss, protective)
		if err == nil {
			for i := range vols {
				detectInto(r, &vols[i])
			}
			return vols, nil
		}
		if !errors.Is(err, errNoGPT) {
			gptErrs = append(gptErrs, fmt.Sprintf("%d-byte sectors: %v", ss, err))
		}
	}
	if protective {
		msg := "no GPT header found"
		if len(gptErrs) > 0 {
			msg = strings.Join(gptErrs, "; ")
		}
		return nil, fmt.Errorf("protective MBR but unreadable GPT: %s", msg)
	}

	whole := Volume{Index: 0, Scheme: SchemeNone, Start: 0, Length: size}
	// A filesystem boot sector also ends in 0x55AA: a strong signature in
	// sector 0 means the disk is one filesystem, not an MBR.
	switch fs, _ := detectFS(r, 0, size); fs {
	case FSNTFS, FSFAT, FSXFS, FSExFAT, FSLUKS:
		detectInto(r, &whole)
		return []Volume{whole}, nil
	}
	if mbrOK && len(mbr.entries) > 0 {
		vols, err := readMBRVolumes(ctx, r, size, mbr)
		if err != nil {
			return nil, err
		}
		for i := range vols {
			detectInto(r, &vols[i])
		}
		return vols, nil
	}
	detectInto(r, &whole)
	return []Volume{whole}, nil
}

func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// ---- MBR ----

type mbrEntry struct {
	slot   int // 1-4
	boot   byte
	typ    byte
	start  uint32 // LBA
	length uint32 // sectors
}

type mbrTable struct{ entries []mbrEntry }

func (t mbrTable) hasType(typ byte) bool {
	for _, e := range t.entries {
		if e.typ == typ {
			return true
		}
	}
	return false
}

// parseMBR reads the four primary entries of a sector holding an MBR or
// EBR. ok is false when the sector is not a partition table: no 0x55AA, or
// a boot flag other than 0x00/0x80. Empty slots are left out.
func parseMBR(sec []byte) (mbrTable, bool) {
	if len(sec) < 512 || sec[510] != 0x55 || sec[511] != 0xAA {
		return mbrTable{}, false
	}
	var t mbrTable
	for i := 0; i < 4; i++ {
		e := sec[446+16*i : 446+16*(i+1)]
		if e[0] != 0 && e[0] != 0x80 {
			return mbrTable{}, false
		}
		me := mbrEntry{
			slot:   i + 1,
			boot:   e[0],
			typ:    e[4],
			start:  binary.LittleEndian.Uint32(e[8:]),
			length: binary.LittleEndian.Uint32(e[12:]),
		}
		if me.typ == 0 || me.length == 0 {
			continue
		}
		t.entries = append(t.entries, me)
	}
	return t, true
}

func isExtended(typ byte) bool { return typ == 0x05 || typ == 0x0F || typ == 0x85 }

func readMBRVolumes(ctx context.Context, r io.ReaderAt, size int64, t mbrTable) ([]Volume, error) {
	const ss = 512
	var vols []Volume
	var extended []mbrEntry
	for _, e := range t.entries {
		if isExtended(e.typ) {
			extended = append(extended, e)
			continue
		}
		if v, ok := mbrVolume(e.slot, e, 0, size); ok {
			vols = append(vols, v)
		}
	}
	next := 5
	for _, ext := range extended {
		extStart := int64(ext.start)
		extEnd := extStart + int64(ext.length)
		seen := map[int64]bool{}
		ebr := extStart
		sec := make([]byte, ss)
		for n := 0; n < maxLogical; n++ {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if seen[ebr] || ebr*ss+ss > size || ebr < extStart || ebr >= extEnd {
				break
			}
			seen[ebr] = true
			if err := readFull(r, sec, ebr*ss); err != nil {
				return nil, fmt.Errorf("read extended boot record at sector %d: %w", ebr, err)
			}
			et, ok := parseMBR(sec)
			if !ok {
				break
			}
			var link *mbrEntry
			for i := range et.entries {
				e := et.entries[i]
				switch {
				case e.slot == 1 && !isExtended(e.typ):
					if v, ok := mbrVolume(next, e, ebr, size); ok {
						vols = append(vols, v)
					}
					next++
				case e.slot == 2 && isExtended(e.typ):
					link = &et.entries[i]
				}
			}
			if link == nil {
				break
			}
			ebr = extStart + int64(link.start)
		}
	}
	return vols, nil
}

// mbrVolume makes a Volume of an entry whose start is relative to base
// (sectors); ok is false when it starts beyond the disk.
func mbrVolume(index int, e mbrEntry, base, size int64) (Volume, bool) {
	start := (base + int64(e.start)) * 512
	length := int64(e.length) * 512
	if e.start == 0 || start >= size {
		return Volume{}, false
	}
	v := Volume{
		Index:    index,
		Scheme:   SchemeMBR,
		Start:    start,
		Length:   length,
		Type:     fmt.Sprintf("0x%02x", e.typ),
		TypeName: mbrTypeName(e.typ),
		Bootable: e.boot == 0x80,
	}
	if start+length > size {
		v.Length = size - start
		v.Truncated = true
	}
	return v, true
}

func mbrTypeName(t byte) string {
	switch t {
	case 0x01:
		return "FAT12"
	case 0x04, 0x06, 0x0E:
		return "FAT16"
	case 0x0B, 0x0C:
		return "FAT32"
	case 0x07:
		return "NTFS/exFAT"
	case 0x27:
		return "Windows recovery"
	case 0x82:
		return "Linux swap"
	case 0x83:
		return "Linux"
	case 0x8E:
		return "Linux LVM"
	case 0xEF:
		return "EFI system"
	case 0xFD:
		return "Linux RAID"
	}
	return ""
}

// ---- GPT ----

var errNoGPT = errors.New("no GPT signature")

// readGPT reads the primary GPT header at LBA 1, or the backup one when the
// primary is damaged, and returns the used entries as volumes.
// The backup is tried when the primary has its signature but is damaged,
// or when protective says the disk is GPT although LBA 1 has no header.
func readGPT(ctx context.Context, r io.ReaderAt, size, ss int64, protective bool) ([]Volume, error) {
	primary, perr := readGPTHeader(r, size, ss, 1)
	if perr == nil {
		vols, err := readGPTEntries(ctx, r, size, ss, primary)
		if err == nil {
			return vols, nil
		}
		perr = err
	}
	if errors.Is(perr, errNoGPT) && !protective {
		return nil, perr
	}
	// The primary has the signature but is damaged: the backup is at the
	// last LBA (or where the primary says, if it was readable).
	last := size/ss - 1
	backup, berr := readGPTHeader(r, size, ss, last)
	if errors.Is(perr, errNoGPT) && errors.Is(berr, errNoGPT) {
		return nil, errNoGPT
	}
	if berr != nil {
		return nil, fmt.Errorf("primary GPT header: %v; backup GPT header at LBA %d: %v", perr, last, berr)
	}
	vols, err := readGPTEntries(ctx, r, size, ss, backup)
	if err != nil {
		return nil, fmt.Errorf("primary GPT header: %v; backup GPT: %v", perr, err)
	}
	return vols, nil
}

type gptHeader struct {
	entriesLBA int64
	count      int64
	entrySize  int64
	entriesCRC uint32
}

func readGPTHeader(r io.ReaderAt, size, ss, lba int64) (gptHeader, error) {
	if lba < 1 || (lba+1)*ss > size {
		return gptHeader{}, errNoGPT
	}
	b := make([]byte, ss)
	if err := readFull(r, b, lba*ss); err != nil {
		return gptHeader{}, fmt.Errorf("read GPT header at LBA %d: %w", lba, err)
	}
	if !bytes.Equal(b[:8], []byte("EFI PART")) {
		return gptHeader{}, errNoGPT
	}
	hsize := int64(binary.LittleEndian.Uint32(b[12:]))
	if hsize < 92 || hsize > ss {
		return gptHeader{}, fmt.Errorf("GPT header at LBA %d: header size %d", lba, hsize)
	}
	want := binary.LittleEndian.Uint32(b[16:])
	h := make([]byte, hsize)
	copy(h, b[:hsize])
	binary.LittleEndian.PutUint32(h[16:], 0)
	if got := crc32.ChecksumIEEE(h); got != want {
		return gptHeader{}, fmt.Errorf("GPT header at LBA %d: CRC32 %08x, header says %08x", lba, got, want)
	}
	if my := binary.LittleEndian.Uint64(b[24:]); my != uint64(lba) {
		return gptHeader{}, fmt.Errorf("GPT header at LBA %d says it is at LBA %d", lba, my)
	}
	g := gptHeader{
		entriesLBA: int64(binary.LittleEndian.Uint64(b[72:]) & (1<<62 - 1)),
		count:      int64(binary.LittleEndian.Uint32(b[80:])),
		entrySize:  int64(binary.LittleEndian.Uint32(b[84:])),
		entriesCRC: binary.LittleEndian.Uint32(b[88:]),
	}
	if g.entrySize < 128 || g.entrySize%8 != 0 || g.entrySize > 4096 {
		return gptHeader{}, fmt.Errorf("GPT header at LBA %d: entry size %d", lba, g.entrySize)
	}
	if g.count*g.entrySize > maxGPTTableBytes {
		return gptHeader{}, fmt.Errorf("GPT header at LBA %d: %d entries of %d bytes is too large", lba, g.count, g.entrySize)
	}
	if g.entriesLBA < 1 || g.entriesLBA > size/ss || g.entriesLBA*ss+g.count*g.entrySize > size {
		return gptHeader{}, fmt.Errorf("GPT header at LBA %d: partition entries at LBA %d are outside the disk", lba, g.entriesLBA)
	}
	return g, nil
}

func readGPTEntries(ctx context.Context, r io.ReaderAt, size, ss int64, h gptHeader) ([]Volume, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	tbl := make([]byte, h.count*h.entrySize)
	if err := readFull(r, tbl, h.entriesLBA*ss); err != nil {
		return nil, fmt.Errorf("read GPT entries at LBA %d: %w", h.entriesLBA, err)
	}
	if got := crc32.ChecksumIEEE(tbl); got != h.entriesCRC {
		return nil, fmt.Errorf("GPT entries at LBA %d: CRC32 %08x, header says %08x", h.entriesLBA, got, h.entriesCRC)
	}
	vols := []Volume{}
	var zero [16]byte
	for i := int64(0); i < h.count; i++ {
		e := tbl[i*h.entrySize : (i+1)*h.entrySize]
		if bytes.Equal(e[:16], zero[:]) {
			continue
		}
		first := binary.LittleEndian.Uint64(e[32:])
		last := binary.LittleEndian.Uint64(e[40:])
		if first == 0 || last < first || first > uint64(size/ss) {
			continue
		}
		start := int64(first) * ss
		length := int64(last-first+1) * ss
		if last-first+1 > uint64(size/ss) {
			length = size // overflow guard; cut below
		}
		v := Volume{
			Index:  int(i) + 1,
			Scheme: SchemeGPT,
			Start:  start,
			Length: length,
			Type:   guidString(e[:16]),
			GUID:   guidString(e[16:32]),
			Name:   utf16Name(e[56:128]),
		}
		v.TypeName = gptTypeName(v.Type)
		if v.Start+v.Length > size || v.Length < 0 {
			v.Length = size - v.Start
			v.Truncated = true
		}
		if v.Length <= 0 {
			continue
		}
		vols = append(vols, v)
	}
	return vols, nil
}

// guidString formats a GUID stored in the mixed-endian order of GPT and
// Windows (first three fields little-endian).
func guidString(b []byte) string {
	return fmt.Sprintf("%08X-%04X-%04X-%X-%X",
		binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint16(b[4:]),
		binary.LittleEndian.Uint16(b[6:]), b[8:10], b[10:16])
}

func utf16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

func gptTypeName(g string) string {
	switch g {
	case "C12A7328-F81F-11D2-BA4B-00A0C93EC93B":
		return "EFI system"
	case "21686148-6449-6E6F-744E-656564454649":
		return "BIOS boot"
	case "E3C9E316-0B5C-4DB8-817D-F92DF00215AE":
		return "Microsoft reserved"
	case "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7":
		return "Microsoft basic data"
	case "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC":
		return "Windows recovery"
	case "0FC63DAF-8483-4772-8E79-3D69D8477DE4":
		return "Linux filesystem"
	case "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F":
		return "Linux swap"
	case "E6D6D379-F507-44C2-A23C-238F2A3DF928":
		return "Linux LVM"
	case "A19D880F-05FC-4D3B-A006-743F0F84911E":
		return "Linux RAID"
	case "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709":
		return "Linux root (x86-64)"
	case "BC13C2FF-59E6-4262-A352-B275FD6F7172":
		return "Linux extended boot"
	}
	return ""
}

// ---- filesystem signatures ----

func detectInto(r io.ReaderAt, v *Volume) {
	v.FS, v.Label = detectFS(r, v.Start, v.Length)
}

// detectFS names the filesystem of [off, off+length) by its signature and
// returns its label where the superblock has one.
func detectFS(r io.ReaderAt, off, length int64) (fs, label string) {
	head := make([]byte, 8192)
	if length < int64(len(head)) {
		head = head[:length]
	}
	n, _ := r.ReadAt(head, off)
	head = head[:n]
	at := func(o int, sig string) bool {
		return len(head) >= o+len(sig) && string(head[o:o+len(sig)]) == sig
	}
	switch {
	case at(3, "NTFS    "):
		return FSNTFS, ""
	case at(3, "EXFAT   "):
		return FSExFAT, ""
	case at(0, "XFSB"):
		if len(head) >= 120 {
			return FSXFS, cString(head[108:120])
		}
		return FSXFS, ""
	case at(0, "LUKS\xba\xbe"):
		return FSLUKS, ""
	}
	if bpb, err := parseBPB(head, length); err == nil {
		return FSFAT, bpb.label
	}
	if len(head) >= 1024+0x88 && binary.LittleEndian.Uint16(head[1024+56:]) == 0xEF53 {
		return FSExt4, cString(head[1024+0x78 : 1024+0x88])
	}
	if at(512, "LABELONE") || at(24+512, "LVM2") {
		return FSLVM, ""
	}
	if at(4096-10, "SWAPSPACE2") || at(4096-10, "SWAP-SPACE") {
		return FSSwap, ""
	}
	if length >= 65536+72 {
		b := make([]byte, 8)
		if readFull(r, b, off+65536+64) == nil && string(b) == "_BHRfS_M" {
			return FSBtrfs, ""
		}
	}
	return FSUnknown, ""
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.TrimRight(string(bytes.ToValidUTF8(b, []byte("\uFFFD"))), " ")
}

// PickVolume returns the volume of that index, or with index < 0 the only
// volume that holds a known filesystem.
func PickVolume(vols []Volume, index int) (Volume, error) {
	var withFS []Volume
	for _, v := range vols {
		if index >= 0 && v.Index == index {
			return v, nil
		}
		if v.FS != "" && v.FS != "unknown" {
			withFS = append(withFS, v)
		}
	}
	if index >= 0 {
		return Volume{}, fmt.Errorf("no volume %d", index)
	}
	if len(withFS) != 1 {
		return Volume{}, fmt.Errorf("%d volumes hold a filesystem: choose one by its index", len(withFS))
	}
	return withFS[0], nil
}
