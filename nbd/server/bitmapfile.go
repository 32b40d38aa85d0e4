package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// The bitmap file:
//
//	magic "LBOVLMAP", u32 version 1, u32 block size, u64 export size,
//	u32 length + base ID,
//	twice (alloc, then zero): u64 run count, then runs of non-zero words:
//	    u64 first word index, u32 word count, the words (u64 each),
//	u32 CRC-32C of everything before.
//
// All integers are little-endian. Runs keep the file small for a mostly
// empty bitmap without costing much for a full one.

const bitmapMagic = "LBOVLMAP"

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func encodeBitmap(size int64, baseID string, maps ...[]uint64) []byte {
	b := []byte(bitmapMagic)
	b = binary.LittleEndian.AppendUint32(b, 1)
	b = binary.LittleEndian.AppendUint32(b, BlockSize)
	b = binary.LittleEndian.AppendUint64(b, uint64(size))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(baseID)))
	b = append(b, baseID...)
	for _, m := range maps {
		countAt := len(b)
		b = binary.LittleEndian.AppendUint64(b, 0)
		var nruns uint64
		for i := 0; i < len(m); {
			if m[i] == 0 {
				i++
				continue
			}
			j := i
			for j < len(m) && m[j] != 0 && j-i < 1<<31 {
				j++
			}
			b = binary.LittleEndian.AppendUint64(b, uint64(i))
			b = binary.LittleEndian.AppendUint32(b, uint32(j-i))
			for _, w := range m[i:j] {
				b = binary.LittleEndian.AppendUint64(b, w)
			}
			nruns++
			i = j
		}
		binary.LittleEndian.PutUint64(b[countAt:], nruns)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

var errBitmapCorrupt = errors.New("corrupt bitmap file")

// decodeBitmap parses a bitmap file for an export of size bytes and checks
// it belongs to baseID. It returns the alloc and zero words.
func decodeBitmap(b []byte, size int64, baseID string) (alloc, zero []uint64, err error) {
	if len(b) < 36 || string(b[:8]) != bitmapMagic {
		return nil, nil, fmt.Errorf("%w: bad magic", errBitmapCorrupt)
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return nil, nil, fmt.Errorf("%w: checksum mismatch", errBitmapCorrupt)
	}
	le := binary.LittleEndian
	if v := le.Uint32(body[8:]); v != 1 {
		return nil, nil, fmt.Errorf("unsupported bitmap version %d", v)
	}
	if bs := le.Uint32(body[12:]); bs != BlockSize {
		return nil, nil, fmt.Errorf("bitmap block size %d, want %d", bs, BlockSize)
	}
	if s := le.Uint64(body[16:]); s != uint64(size) {
		return nil, nil, fmt.Errorf("overlay was made for a base of %d bytes, this one has %d", s, size)
	}
	idLen := uint64(le.Uint32(body[24:]))
	p := body[28:]
	if idLen > uint64(len(p)) {
		return nil, nil, fmt.Errorf("%w: base ID length", errBitmapCorrupt)
	}
	if id := string(p[:idLen]); id != baseID {
		return nil, nil, fmt.Errorf("overlay was made for base %q, not %q", id, baseID)
	}
	p = p[idLen:]
	nblk := (size + BlockSize - 1) / BlockSize
	nwords := uint64((nblk + 63) / 64)
	var maps [2][]uint64
	for k := range maps {
		m := make([]uint64, nwords)
		if len(p) < 8 {
			return nil, nil, fmt.Errorf("%w: truncated", errBitmapCorrupt)
		}
		nruns := le.Uint64(p)
		p = p[8:]
		next := uint64(0) // runs ascend and do not overlap
		for range nruns {
			if len(p) < 12 {
				return nil, nil, fmt.Errorf("%w: truncated run", errBitmapCorrupt)
			}
			first, count := le.Uint64(p), uint64(le.Uint32(p[8:]))
			p = p[12:]
			if first < next || first > nwords || count > nwords-first || count*8 > uint64(len(p)) {
				return nil, nil, fmt.Errorf("%w: run of %d words at %d", errBitmapCorrupt, count, first)
			}
			for i := range count {
				m[first+i] = le.Uint64(p[8*i:])
			}
			p = p[8*count:]
			next = first + count
		}
		maps[k] = m
	}
	if len(p) != 0 {
		return nil, nil, fmt.Errorf("%w: %d trailing bytes", errBitmapCorrupt, len(p))
	}
	// Bits past the last block must be clear.
	if r := nblk % 64; r != 0 {
		for _, m := range maps {
			if m[len(m)-1]>>uint(r) != 0 {
				return nil, nil, fmt.Errorf("%w: bits past the end", errBitmapCorrupt)
			}
		}
	}
	return maps[0], maps[1], nil
}
