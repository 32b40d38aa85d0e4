package vhdx

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"unicode/utf16"
)

// On-disk constants from MS-VHDX.
const (
	kib = 1 << 10
	mib = 1 << 20

	fileIDSignature = "vhdxfile"
	headerSignature = "head"
	regionSignature = "regi"
	metaSignature   = "metadata"

	header1Offset = 64 * kib
	header2Offset = 128 * kib
	headerSize    = 4 * kib
	region1Offset = 192 * kib
	region2Offset = 256 * kib
	regionSize    = 64 * kib
	metaTableSize = 64 * kib

	maxRegionEntries = 2047
	maxMetaEntries   = 2047
	// The spec caps a metadata item at 1 MB; it also bounds what a
	// hostile table can make us allocate.
	maxMetaItem = 1 * mib

	minBlockSize = 1 * mib
	maxBlockSize = 256 * mib
	maxDiskSize  = 64 << 40
	sbBlockSize  = 1 * mib
	// sectorsPerBitmap is the number of logical sectors one 1 MiB sector
	// bitmap block describes (one bit each).
	sectorsPerBitmap = 1 << 23

	// File offsets are 44-bit MB numbers in the BAT; anything beyond this
	// is corrupt, and the bound keeps offset arithmetic from overflowing.
	maxFileOffset = 1 << 62
)

// Payload BAT entry states.
const (
	payloadNotPresent       = 0
	payloadUndefined        = 1
	payloadZero             = 2
	payloadUnmapped         = 3
	payloadFullyPresent     = 6
	payloadPartiallyPresent = 7
)

// Sector bitmap BAT entry states.
const (
	sbNotPresent = 0
	sbPresent    = 6
)

// Metadata item flags.
const (
	metaIsUser        = 1 << 0
	metaIsVirtualDisk = 1 << 1
	metaIsRequired    = 1 << 2
)

// File parameter flags.
const (
	fpLeaveBlocksAllocated = 1 << 0
	fpHasParent            = 1 << 1
)

// Well-known identifiers; immutable after package initialisation.
var (
	guidBATRegion      = mustGUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
	guidMetaRegion     = mustGUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
	guidFileParameters = mustGUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
	guidVirtualSize    = mustGUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
	guidVirtualDiskID  = mustGUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
	guidLogicalSector  = mustGUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
	guidPhysicalSector = mustGUID("CDA348C7-445D-4471-9CC9-E9885251C556")
	guidParentLocator  = mustGUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
	guidVHDXLocator    = mustGUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

// crcWithZeroedField computes CRC-32C over b as if the 4 bytes at off
// were zero, which is how every VHDX checksum is defined.
func crcWithZeroedField(b []byte, off int) uint32 {
	var zero [4]byte
	c := crc32.Update(0, castagnoli, b[:off])
	c = crc32.Update(c, castagnoli, zero[:])
	return crc32.Update(c, castagnoli, b[off+4:])
}

// header is one of the two 4 KiB file headers.
type header struct {
	Seq           uint64
	FileWriteGUID GUID
	DataWriteGUID GUID
	LogGUID       GUID
	LogVersion    uint16
	Version       uint16
	LogLength     uint32
	LogOffset     uint64
}

// parseHeader returns the header in b (4 KiB) and whether its signature
// and checksum are valid.
func parseHeader(b []byte) (header, bool) {
	var h header
	if len(b) < headerSize || string(b[0:4]) != headerSignature {
		return h, false
	}
	if binary.LittleEndian.Uint32(b[4:8]) != crcWithZeroedField(b[:headerSize], 4) {
		return h, false
	}
	h.Seq = binary.LittleEndian.Uint64(b[8:16])
	copy(h.FileWriteGUID[:], b[16:32])
	copy(h.DataWriteGUID[:], b[32:48])
	copy(h.LogGUID[:], b[48:64])
	h.LogVersion = binary.LittleEndian.Uint16(b[64:66])
	h.Version = binary.LittleEndian.Uint16(b[66:68])
	h.LogLength = binary.LittleEndian.Uint32(b[68:72])
	h.LogOffset = binary.LittleEndian.Uint64(b[72:80])
	return h, true
}

func (h header) marshal() []byte {
	b := make([]byte, headerSize)
	copy(b[0:4], headerSignature)
	binary.LittleEndian.PutUint64(b[8:16], h.Seq)
	copy(b[16:32], h.FileWriteGUID[:])
	copy(b[32:48], h.DataWriteGUID[:])
	copy(b[48:64], h.LogGUID[:])
	binary.LittleEndian.PutUint16(b[64:66], h.LogVersion)
	binary.LittleEndian.PutUint16(b[66:68], h.Version)
	binary.LittleEndian.PutUint32(b[68:72], h.LogLength)
	binary.LittleEndian.PutUint64(b[72:80], h.LogOffset)
	binary.LittleEndian.PutUint32(b[4:8], crcWithZeroedField(b, 4))
	return b
}

type regionEntry struct {
	GUID     GUID
	Offset   uint64
	Length   uint32
	Required bool
}

func marshalRegionTable(entries []regionEntry) []byte {
	b := make([]byte, regionSize)
	copy(b[0:4], regionSignature)
	binary.LittleEndian.PutUint32(b[8:12], uint32(len(entries)))
	for i, e := range entries {
		p := b[16+32*i:]
		copy(p[0:16], e.GUID[:])
		binary.LittleEndian.PutUint64(p[16:24], e.Offset)
		binary.LittleEndian.PutUint32(p[24:28], e.Length)
		if e.Required {
			binary.LittleEndian.PutUint32(p[28:32], 1)
		}
	}
	binary.LittleEndian.PutUint32(b[4:8], crcWithZeroedField(b, 4))
	return b
}

type metaEntry struct {
	ID     GUID
	Offset uint32
	Length uint32
	Flags  uint32
}

// decodeUTF16 decodes little-endian UTF-16, stopping at a NUL.
func decodeUTF16(b []byte) string {
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

func encodeUTF16(s string) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 2*len(u))
	for i, c := range u {
		binary.LittleEndian.PutUint16(b[2*i:], c)
	}
	return b
}

func allZero(b []byte) bool {
	// Comparing slices of a shared zero page uses the vectorised
	// bytes.Equal without allocating.
	for len(b) > 0 {
		n := min(len(b), len(zeroPage))
		if !bytes.Equal(b[:n], zeroPage[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// zeroPage is read-only.
var zeroPage [64 * kib]byte
