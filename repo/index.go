package repo

import (
	"encoding/binary"
	"fmt"

	"lifeboat/disk"
)

// Index describes one file of a recovery point as fixed-size slots of
// ChunkSize bytes aligned to file offsets: each slot is a hole (reads as
// zeros) or names the chunk holding its bytes. For a differencing disk
// layer, Extents is the layer's own allocation map, so a restore can
// rebuild the layer (and keep the parent visible where it is unallocated);
// the chunks then hold the layer's bytes with every non-Data range zeroed.
// Base layers and plain files have no Extents: holes say enough.
//
// Binary form (little-endian), inside an envelope of type 'I':
//
//	"LBIX" | u32 version (1) | u64 size | u32 chunk size
//	u32 extent count | count × (u64 offset, u64 length, u8 kind)
//	u64 slot count (= ceil(size / chunk size))
//	slot count × (u8 0 = hole | u8 1 followed by a 32-byte chunk ID)
type Index struct {
	Size      int64
	ChunkSize int64
	Extents   []disk.Extent
	Slots     []Slot
}

// Slot is one chunk-sized piece of a file.
type Slot struct {
	Hole bool
	ID   ID
}

const indexMagic = "LBIX"

// maxSlots bounds decoding: 64 TiB at the smallest chunk size.
const maxSlots = 1 << 30

// SlotCount is the number of slots a file of size bytes needs.
func SlotCount(size, chunkSize int64) int64 { return (size + chunkSize - 1) / chunkSize }

// MarshalBinary encodes the index.
func (x *Index) MarshalBinary() ([]byte, error) {
	n := 4 + 4 + 8 + 4 + 4 + len(x.Extents)*17 + 8
	for _, s := range x.Slots {
		n++
		if !s.Hole {
			n += 32
		}
	}
	b := make([]byte, 0, n)
	b = append(b, indexMagic...)
	b = binary.LittleEndian.AppendUint32(b, 1)
	b = binary.LittleEndian.AppendUint64(b, uint64(x.Size))
	b = binary.LittleEndian.AppendUint32(b, uint32(x.ChunkSize))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(x.Extents)))
	for _, e := range x.Extents {
		b = binary.LittleEndian.AppendUint64(b, uint64(e.Offset))
		b = binary.LittleEndian.AppendUint64(b, uint64(e.Length))
		b = append(b, byte(e.Kind))
	}
	b = binary.LittleEndian.AppendUint64(b, uint64(len(x.Slots)))
	for _, s := range x.Slots {
		if s.Hole {
			b = append(b, 0)
			continue
		}
		b = append(b, 1)
		b = append(b, s.ID[:]...)
	}
	return b, nil
}

// UnmarshalIndex decodes and validates an index. Every field read from the
// bytes is checked before it sizes an allocation.
func UnmarshalIndex(b []byte) (*Index, error) {
	r := reader{b: b}
	if string(r.next(4)) != indexMagic {
		return nil, fmt.Errorf("index: bad magic: %w", ErrCorrupt)
	}
	if v := r.u32(); v != 1 {
		return nil, fmt.Errorf("index: version %d: %w", v, ErrCorrupt)
	}
	x := &Index{Size: int64(r.u64()), ChunkSize: int64(r.u32())}
	if r.err != nil {
		return nil, r.err
	}
	if x.Size < 0 || x.ChunkSize < 512 || x.ChunkSize > 64<<20 {
		return nil, fmt.Errorf("index: size %d, chunk size %d: %w", x.Size, x.ChunkSize, ErrCorrupt)
	}
	ne := int(r.u32())
	if ne < 0 || ne > r.remaining()/17 {
		return nil, fmt.Errorf("index: extent count %d exceeds data: %w", ne, ErrCorrupt)
	}
	pos := int64(0)
	for i := 0; i < ne; i++ {
		e := disk.Extent{Offset: int64(r.u64()), Length: int64(r.u64()), Kind: disk.ExtentKind(r.u8())}
		if e.Offset != pos || e.Length <= 0 || e.End() > x.Size || e.End() < e.Offset || e.Kind < disk.Data || e.Kind > disk.Unallocated {
			return nil, fmt.Errorf("index: extent %d %+v is invalid: %w", i, e, ErrCorrupt)
		}
		pos = e.End()
		x.Extents = append(x.Extents, e)
	}
	if ne > 0 && pos != x.Size {
		return nil, fmt.Errorf("index: extents cover %d of %d bytes: %w", pos, x.Size, ErrCorrupt)
	}
	ns := r.u64()
	if r.err != nil {
		return nil, r.err
	}
	if ns != uint64(SlotCount(x.Size, x.ChunkSize)) || ns > maxSlots || ns > uint64(r.remaining()) {
		return nil, fmt.Errorf("index: %d slots for %d bytes: %w", ns, x.Size, ErrCorrupt)
	}
	x.Slots = make([]Slot, ns)
	for i := range x.Slots {
		switch r.u8() {
		case 0:
			x.Slots[i].Hole = true
		case 1:
			copy(x.Slots[i].ID[:], r.next(32))
		default:
			if r.err == nil {
				return nil, fmt.Errorf("index: slot %d has a bad tag: %w", i, ErrCorrupt)
			}
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	if r.remaining() != 0 {
		return nil, fmt.Errorf("index: %d trailing bytes: %w", r.remaining(), ErrCorrupt)
	}
	return x, nil
}

type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) remaining() int { return len(r.b) - r.off }

func (r *reader) next(n int) []byte {
	if r.err != nil || n > r.remaining() {
		if r.err == nil {
			r.err = fmt.Errorf("index: truncated at byte %d: %w", r.off, ErrCorrupt)
		}
		return make([]byte, n)
	}
	s := r.b[r.off : r.off+n]
	r.off += n
	return s
}

func (r *reader) u8() uint8   { return r.next(1)[0] }
func (r *reader) u32() uint32 { return binary.LittleEndian.Uint32(r.next(4)) }
func (r *reader) u64() uint64 { return binary.LittleEndian.Uint64(r.next(8)) }

// ExtentsOf describes [off, off+length) of the stored file as a
// disk.Image's Extents would: the stored layer map of a differencing
// layer, or Data for stored slots and Unallocated for holes.
func (x *Index) ExtentsOf(off, length int64) []disk.Extent {
	off, length = disk.ClampRange(off, length, x.Size)
	end := off + length
	var out []disk.Extent
	if x.Extents != nil {
		for _, e := range x.Extents {
			lo, hi := max(e.Offset, off), min(e.End(), end)
			if lo < hi {
				out = disk.AppendExtent(out, disk.Extent{Offset: lo, Length: hi - lo, Kind: e.Kind})
			}
		}
		return out
	}
	cs := x.ChunkSize
	for s := off / cs; s*cs < end; s++ {
		lo, hi := max(s*cs, off), min((s+1)*cs, end)
		k := disk.Data
		if x.Slots[s].Hole {
			k = disk.Unallocated
		}
		out = disk.AppendExtent(out, disk.Extent{Offset: lo, Length: hi - lo, Kind: k})
	}
	return out
}
