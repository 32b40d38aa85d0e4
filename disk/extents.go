package disk

import (
	"context"
	"fmt"
)

// AppendExtent appends e to list, merging it with the last extent when they
// touch and have the same kind. Zero-length extents are dropped.
func AppendExtent(list []Extent, e Extent) []Extent {
	if e.Length <= 0 {
		return list
	}
	if n := len(list); n > 0 {
		last := &list[n-1]
		if last.Kind == e.Kind && last.End() == e.Offset {
			last.Length += e.Length
			return list
		}
	}
	return append(list, e)
}

// CheckExtents verifies the Image.Extents contract for [off, off+length):
// sorted, adjacent, valid kinds, covering the range exactly. The conformance
// suite and fuzz targets use it.
func CheckExtents(list []Extent, off, length int64) error {
	pos := off
	for i, e := range list {
		if e.Offset != pos {
			return fmt.Errorf("extent %d starts at %d, want %d", i, e.Offset, pos)
		}
		if e.Length <= 0 {
			return fmt.Errorf("extent %d has length %d", i, e.Length)
		}
		if e.Kind < Data || e.Kind > Unallocated {
			return fmt.Errorf("extent %d has kind %d", i, e.Kind)
		}
		pos = e.End()
	}
	if pos != off+length {
		return fmt.Errorf("extents end at %d, want %d", pos, off+length)
	}
	return nil
}

// ClampRange limits [off, off+length) to [0, size).
func ClampRange(off, length, size int64) (int64, int64) {
	if off < 0 {
		length += off
		off = 0
	}
	if off > size {
		off = size
	}
	if off+length > size {
		length = size - off
	}
	if length < 0 {
		length = 0
	}
	return off, length
}

// ResolvedExtents describes the guest-visible content of the whole chain
// over [off, off+length): a range is Data if any layer down the chain holds
// data there before a Zero hides it, Zero if the nearest defining layer
// says zero, and Unallocated if no layer defines it (reads as zeros).
func ResolvedExtents(ctx context.Context, img Image, off, length int64) ([]Extent, error) {
	own, err := img.Extents(ctx, off, length)
	if err != nil {
		return nil, err
	}
	parent := img.Parent()
	if parent == nil {
		return own, nil
	}
	var out []Extent
	for _, e := range own {
		if e.Kind != Unallocated {
			out = AppendExtent(out, e)
			continue
		}
		// A parent may be smaller than the child; past its end reads zero.
		pEnd := min(e.End(), parent.Size())
		if pEnd > e.Offset {
			sub, err := ResolvedExtents(ctx, parent, e.Offset, pEnd-e.Offset)
			if err != nil {
				return nil, err
			}
			for _, s := range sub {
				out = AppendExtent(out, s)
			}
		}
		if rest := max(e.Offset, pEnd); rest < e.End() {
			out = AppendExtent(out, Extent{Offset: rest, Length: e.End() - rest, Kind: Unallocated})
		}
	}
	return out, nil
}
