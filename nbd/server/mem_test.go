package server

import (
	"context"
	"io"

	"lifeboat/disk"
)

// memImage is a base image in memory: 64 KiB pieces that are all zeros
// are Unallocated, the rest Data.
type memImage struct{ b []byte }

const memPiece = 64 << 10

func (m *memImage) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (m *memImage) Close() error        { return nil }
func (m *memImage) Format() disk.Format { return disk.Raw }
func (m *memImage) Size() int64         { return int64(len(m.b)) }
func (m *memImage) Parent() disk.Image  { return nil }
func (m *memImage) Info() disk.Info     { return disk.Info{Format: disk.Raw, Size: int64(len(m.b))} }
func (m *memImage) Extents(ctx context.Context, off, length int64) ([]disk.Extent, error) {
	off, length = disk.ClampRange(off, length, int64(len(m.b)))
	var out []disk.Extent
	for pos := off; pos < off+length; {
		e := min((pos/memPiece+1)*memPiece, off+length)
		k := disk.Data
		if allZero(m.b[pos/memPiece*memPiece : min((pos/memPiece+1)*memPiece, int64(len(m.b)))]) {
			k = disk.Unallocated
		}
		out = disk.AppendExtent(out, disk.Extent{Offset: pos, Length: e - pos, Kind: k})
		pos = e
	}
	return out, nil
}
