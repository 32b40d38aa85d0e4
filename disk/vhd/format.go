// Package vhd reads and writes Microsoft Virtual Hard Disk images, version 1
// (VHD, and the AVHD files Hyper-V makes for snapshots): fixed, dynamic and
// differencing disks, as described by Microsoft's "Virtual Hard Disk Image
// Format Specification" (October 2006, published under the Open
// Specification Promise). The code is written from that specification; where
// real files disagree with it (locator data space in bytes, the sizing rule
// that depends on the creator) the comments say so.
//
// All integers on disk are big-endian. Layout:
//
//   - fixed:   guest data, then a 512-byte footer (often no copy at 0);
//   - dynamic: footer copy at 0, 1 KiB dynamic header, block allocation
//     table (BAT), blocks (sector bitmap padded to 512 bytes, then data),
//     footer at the end;
//   - differencing: like dynamic, plus the parent's unique ID, name and
//     locators in the header; clear bitmap bits read from the parent.
package vhd

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"unicode/utf16"
)

const (
	sectorSize = 512
	footerSize = 512
	headerSize = 1024

	footerCookie = "conectix"
	headerCookie = "cxsparse"

	diskFixed   = 2
	diskDynamic = 3
	diskDiff    = 4

	// batUnused marks a block that is not stored in the file.
	batUnused = 0xFFFFFFFF

	// maxBlockSize bounds what a reader accepts: real files use 512 KiB or
	// 2 MiB, and a bound keeps a corrupt header from asking for huge buffers.
	maxBlockSize = 256 << 20
	// maxLocatorLen bounds one parent locator's data: a Windows path is at
	// most 32767 UTF-16 units.
	maxLocatorLen = 64 << 10

	// maxDiskSize is the largest disk the writer makes. Block offsets in the
	// BAT are 32-bit sector numbers, so a dynamic file cannot pass 2 TiB;
	// 2040 GiB leaves room for metadata and is the limit Microsoft documents.
	maxDiskSize = 2040 << 30

	// footer field offsets
	fDataOffset = 16
	fChecksum   = 64

	// header field offsets
	hTableOffset = 16
	hMaxEntries  = 28
	hBlockSize   = 32
	hChecksum    = 36
	hParentUID   = 40
	hParentName  = 64
	hLocators    = 576
	locatorSize  = 24
	numLocators  = 8
)

// vhdEpoch is the zero of VHD timestamps, 2000-01-01 00:00:00 UTC, in Unix
// seconds.
const vhdEpoch = 946684800

// footer is the decoded hard disk footer.
type footer struct {
	dataOffset uint64
	timestamp  uint32
	creatorApp [4]byte
	creatorOS  [4]byte
	curSize    uint64
	cylinders  uint16
	heads      uint8
	spt        uint8
	diskType   uint32
	uid        [16]byte
}

// checksum is the one's complement of the byte sum of b, skipping the four
// checksum bytes at skip.
func checksum(b []byte, skip int) uint32 {
	var s uint32
	for i, c := range b {
		if i >= skip && i < skip+4 {
			continue
		}
		s += uint32(c)
	}
	return ^s
}

// parseFooter decodes a 512-byte footer. It returns a description of the
// problem instead of an error so the caller can decide which copy to trust.
func parseFooter(b []byte) (footer, string) {
	var f footer
	if len(b) < footerSize {
		return f, fmt.Sprintf("footer is %d bytes, want %d", len(b), footerSize)
	}
	if string(b[:8]) != footerCookie {
		return f, fmt.Sprintf("footer cookie is %q, want %q", b[:8], footerCookie)
	}
	stored := binary.BigEndian.Uint32(b[fChecksum:])
	if sum := checksum(b[:footerSize], fChecksum); sum != stored {
		return f, fmt.Sprintf("footer checksum mismatch: stored %#08x, computed %#08x", stored, sum)
	}
	f.dataOffset = binary.BigEndian.Uint64(b[fDataOffset:])
	f.timestamp = binary.BigEndian.Uint32(b[24:])
	copy(f.creatorApp[:], b[28:32])
	copy(f.creatorOS[:], b[36:40])
	f.curSize = binary.BigEndian.Uint64(b[48:])
	f.cylinders = binary.BigEndian.Uint16(b[56:])
	f.heads = b[58]
	f.spt = b[59]
	f.diskType = binary.BigEndian.Uint32(b[60:])
	copy(f.uid[:], b[68:84])
	return f, ""
}

// currentSizeCreators are the creator applications whose footer current_size
// is the disk size. Virtual PC (and anything unknown) sizes the disk by its
// CHS geometry instead, which is what qemu and the Windows stack agree on.
// Disk2vhd writes "d2v\0" although qemu's table lists "d2v "; both are taken
// as current_size because Disk2vhd images are made for Hyper-V, and reading
// them by geometry would cut off the end of the captured disk.
var currentSizeCreators = [...]string{"win ", "qem2", "d2v ", "d2v\x00", "CTXS", "tap\x00"}

// virtualSize applies the sizing rule to a footer.
func (f *footer) virtualSize() uint64 {
	for _, c := range currentSizeCreators {
		if string(f.creatorApp[:]) == c {
			return f.curSize
		}
	}
	// At the maximum geometry the CHS product is smaller than the disk, so
	// only current_size can be right; a zero geometry carries no size at all.
	if f.cylinders == 65535 && f.heads == 16 && f.spt == 255 {
		return f.curSize
	}
	chs := uint64(f.cylinders) * uint64(f.heads) * uint64(f.spt) * sectorSize
	if chs == 0 {
		return f.curSize
	}
	return chs
}

// geometry computes cylinders/heads/sectors-per-track for a disk size the
// way the specification's appendix does.
func geometry(size int64) (cyl uint16, heads, spt uint8) {
	total := size / sectorSize
	if total > 65535*16*255 {
		total = 65535 * 16 * 255
	}
	var h, s, cth int64
	if total >= 65535*16*63 {
		s, h = 255, 16
		cth = total / s
	} else {
		s = 17
		cth = total / s
		h = (cth + 1023) / 1024
		if h < 4 {
			h = 4
		}
		if cth >= h*1024 || h > 16 {
			s, h = 31, 16
			cth = total / s
		}
		if cth >= h*1024 {
			s, h = 63, 16
			cth = total / s
		}
	}
	return uint16(cth / h), uint8(h), uint8(s)
}

// uuidString is the canonical text of 16 bytes in file order.
func uuidString(b [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// parseUUID accepts canonical UUID text, optionally in braces, or 32 hex
// digits.
func parseUUID(s string) ([16]byte, error) {
	var u [16]byte
	t := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "{"), "}")
	if len(t) == 36 {
		if t[8] != '-' || t[13] != '-' || t[18] != '-' || t[23] != '-' {
			return u, fmt.Errorf("invalid UUID %q", s)
		}
		t = t[0:8] + t[9:13] + t[14:18] + t[19:23] + t[24:]
	}
	if len(t) != 32 {
		return u, fmt.Errorf("invalid UUID %q", s)
	}
	if _, err := hex.Decode(u[:], []byte(t)); err != nil {
		return u, fmt.Errorf("invalid UUID %q: %v", s, err)
	}
	return u, nil
}

// decodeUTF16 decodes UTF-16 text up to its first NUL.
func decodeUTF16(b []byte, order binary.ByteOrder) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := order.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// encodeUTF16 encodes s without a terminating NUL.
func encodeUTF16(s string, order binary.ByteOrder) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 2*len(u))
	for i, c := range u {
		order.PutUint16(b[2*i:], c)
	}
	return b
}

// bitmapBytes is the size of a block's sector bitmap, padded to a sector.
func bitmapBytes(blockSize int64) int64 {
	bits := blockSize / sectorSize
	return roundUp((bits+7)/8, sectorSize)
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
