package nbd

import (
	"context"
	"fmt"
	"strings"

	"lifeboat/disk"
	"lifeboat/nbd/internal/wire"
)

// Extent is a range of the export with the status flags one metadata
// context gives it.
type Extent struct {
	Offset int64
	Length int64
	Flags  uint32
}

// End is the first offset past the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// appendExtent appends e, merging it into the last extent when they touch
// and have the same flags.
func appendExtent(list []Extent, e Extent) []Extent {
	if n := len(list); n > 0 && list[n-1].End() == e.Offset && list[n-1].Flags == e.Flags {
		list[n-1].Length += e.Length
		return list
	}
	return append(list, e)
}

func (c *Client) checkRange(op string, off, length int64) error {
	if off < 0 || length < 0 || off > c.info.Size || length > c.info.Size-off {
		return fmt.Errorf("nbd: %s of %d bytes at offset %d: outside the export (%d bytes)", op, length, off, c.info.Size)
	}
	return nil
}

// BlockStatus describes [off, off+length) in one negotiated metadata
// context as sorted, adjacent extents that cover the range exactly
// (neighbours with equal flags merged). Servers may answer a query with
// less than asked for; BlockStatus asks again until the range is covered.
// Query windows of at most a few GiB: a call returns at most 2 Mi extents.
func (c *Client) BlockStatus(ctx context.Context, off, length int64, metaContext string) ([]Extent, error) {
	if err := c.checkRange("block status", off, length); err != nil {
		return nil, err
	}
	id, ok := c.contexts[metaContext]
	if !ok {
		return nil, fmt.Errorf("nbd: block status of %q: %w (negotiated: %s)", metaContext, ErrNoMetaContext, strings.Join(c.info.MetaContexts, ", "))
	}
	if length == 0 {
		return nil, nil
	}
	end := off + length
	m := c.minBlock
	pos := off - off%m
	reqEnd := min(end+(m-end%m)%m, c.info.Size)
	var out []Extent
	for pos < end {
		r := &request{cmd: wire.CmdBlockStatus, off: pos, length: min(reqEnd-pos, maxBlockStatus), want: id}
		err := c.start(ctx, r, 0)
		if err == nil {
			err = c.wait(ctx, r)
		}
		if err != nil {
			return nil, withRequest(err, off, length, "block status of %q for %d bytes at offset %d", metaContext, r.length, r.off)
		}
		for _, e := range r.extents {
			s, t := max(e.Offset, off), min(e.End(), end)
			if t > s {
				out = appendExtent(out, Extent{Offset: s, Length: t - s, Flags: e.Flags})
			}
		}
		if len(out) > maxStatusExtents {
			return nil, fmt.Errorf("nbd: block status of %q for %d bytes at offset %d: more than %d extents; query a smaller range", metaContext, length, off, maxStatusExtents)
		}
		// finish made sure the reply held at least one extent, each
		// at least a byte long, so this always moves on.
		pos = r.extents[len(r.extents)-1].End()
	}
	return out, nil
}

// AllocationKind maps base:allocation flags to a disk.ExtentKind: a hole
// that reads as zeros is Unallocated, other ranges that read as zeros are
// Zero, and everything else, including holes of undefined content, is Data.
func AllocationKind(flags uint32) disk.ExtentKind {
	switch flags & (StateHole | StateZero) {
	case StateHole | StateZero:
		return disk.Unallocated
	case StateZero:
		return disk.Zero
	}
	return disk.Data
}

// Allocation describes [off, off+length) from base:allocation in the terms
// of disk.Image.Extents. When the server has no base:allocation, the whole
// range is Data.
func (c *Client) Allocation(ctx context.Context, off, length int64) ([]disk.Extent, error) {
	if err := c.checkRange("allocation map", off, length); err != nil {
		return nil, err
	}
	if length == 0 {
		return nil, nil
	}
	if !c.HasMetaContext(BaseAllocation) {
		return []disk.Extent{{Offset: off, Length: length, Kind: disk.Data}}, nil
	}
	ext, err := c.BlockStatus(ctx, off, length, BaseAllocation)
	if err != nil {
		return nil, err
	}
	out := make([]disk.Extent, 0, len(ext))
	for _, e := range ext {
		out = disk.AppendExtent(out, disk.Extent{Offset: e.Offset, Length: e.Length, Kind: AllocationKind(e.Flags)})
	}
	return out, nil
}

// Dirty returns the ranges of [off, off+length) that the QEMU dirty bitmap
// marks dirty, as sorted, merged extents of kind Data. The bitmap's context
// (DirtyBitmapContext(bitmap)) must have been in Options.MetaContexts.
func (c *Client) Dirty(ctx context.Context, bitmap string, off, length int64) ([]disk.Extent, error) {
	ext, err := c.BlockStatus(ctx, off, length, DirtyBitmapContext(bitmap))
	if err != nil {
		return nil, err
	}
	var out []disk.Extent
	for _, e := range ext {
		if e.Flags&StateDirty != 0 {
			out = disk.AppendExtent(out, disk.Extent{Offset: e.Offset, Length: e.Length, Kind: disk.Data})
		}
	}
	return out, nil
}
