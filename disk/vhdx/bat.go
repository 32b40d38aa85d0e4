package vhdx

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"

	"lifeboat/disk"
)

// dataBlocks is the number of payload blocks covering the virtual disk.
func dataBlocks(size, blockSize int64) int64 { return (size + blockSize - 1) / blockSize }

// batEntries is the BAT length MS-VHDX requires: payload entries with a
// sector bitmap entry after every chunk, and for differencing files a
// whole last chunk so its bitmap entry exists.
func batEntries(size, blockSize, chunkRatio int64, hasParent bool) int64 {
	n := dataBlocks(size, blockSize)
	if n == 0 {
		return 0
	}
	if hasParent {
		return (n + chunkRatio - 1) / chunkRatio * (chunkRatio + 1)
	}
	return n + (n-1)/chunkRatio
}

func payloadIndex(block, chunkRatio int64) int64 { return block + block/chunkRatio }

func bitmapIndex(chunk, chunkRatio int64) int64 { return chunk*(chunkRatio+1) + chunkRatio }

// entryOffset is the file offset a BAT entry points at. The 44-bit MB
// field could overflow an int64 in bytes; offsets that large are past any
// file anyway, so they are clamped to one that still fails the checks.
func entryOffset(e uint64) int64 { return int64(min(e>>20, 1<<40)) * mib }

// readBAT loads the BAT and checks every entry the virtual disk uses, so
// that reads never meet an impossible state or a block outside the file.
func (img *Image) readBAT(ctx context.Context, region regionEntry) error {
	img.batOffset = int64(region.Offset)
	n := batEntries(img.size, img.blockSize, img.chunkRatio, img.hasParent)
	if n*8 > int64(region.Length) {
		return errorf(img.path, img.batOffset, "BAT region is %d bytes, too small for the %d entries a %d-byte disk with %d-byte blocks needs", region.Length, n, img.size, img.blockSize)
	}
	// The BAT must be backed by bytes the file (or the replayed log) holds;
	// a small hostile file must not make us allocate a huge table.
	if backed := img.src.backedBytes(); n*8 > backed {
		return errorf(img.path, img.batOffset, "BAT of %d entries is larger than the %d bytes the file holds", n, backed)
	}
	raw := make([]byte, n*8)
	if err := readFull(img.src, raw, img.batOffset); err != nil {
		return errorf(img.path, img.batOffset, "reading BAT: %v", err)
	}
	img.bat = make([]uint64, n)
	for i := range img.bat {
		img.bat[i] = binary.LittleEndian.Uint64(raw[8*i:])
	}
	fileEnd := img.src.Size()
	cr := img.chunkRatio
	blocks := dataBlocks(img.size, img.blockSize)
	for b := range blocks {
		if b%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		idx := payloadIndex(b, cr)
		e := img.bat[idx]
		at := img.batOffset + 8*idx
		switch st := e & 7; st {
		case payloadNotPresent, payloadUndefined, payloadZero, payloadUnmapped:
		case payloadFullyPresent, payloadPartiallyPresent:
			if st == payloadPartiallyPresent && !img.hasParent {
				return errorf(img.path, at, "BAT entry %d (block %d) is PARTIALLY_PRESENT in a file without a parent", idx, b)
			}
			off := entryOffset(e)
			need := min(img.blockSize, img.size-b*img.blockSize)
			if off < 1*mib || off+need > fileEnd {
				return errorf(img.path, at, "BAT entry %d (block %d) points at file offset %d, outside the %d-byte file", idx, b, off, fileEnd)
			}
			if st == payloadPartiallyPresent {
				si := bitmapIndex(b/cr, cr)
				se := img.bat[si]
				if se&7 != sbPresent {
					return errorf(img.path, img.batOffset+8*si, "BAT entry %d: block %d is PARTIALLY_PRESENT but its sector bitmap (state %d) is not present", si, b, se&7)
				}
				if so := entryOffset(se); so < 1*mib || so+sbBlockSize > fileEnd {
					return errorf(img.path, img.batOffset+8*si, "BAT entry %d (sector bitmap of chunk %d) points at file offset %d, outside the %d-byte file", si, b/cr, so, fileEnd)
				}
			}
		default:
			return errorf(img.path, at, "BAT entry %d (block %d) has invalid state %d", idx, b, st)
		}
	}
	return nil
}

// run is a piece of the virtual disk with one kind; Data runs also carry
// where their bytes are in the file.
type run struct {
	off, n  int64
	kind    disk.ExtentKind
	fileOff int64
}

// walk calls fn with the runs covering [off, off+n), merged where they
// are contiguous both on the virtual disk and, for data, in the file.
func (img *Image) walk(ctx context.Context, off, n int64, fn func(run) error) error {
	var pend run
	emit := func(r run) error {
		if r.n <= 0 {
			return nil
		}
		if pend.n > 0 && pend.kind == r.kind && pend.off+pend.n == r.off &&
			(r.kind != disk.Data || pend.fileOff+pend.n == r.fileOff) {
			pend.n += r.n
			return nil
		}
		if pend.n > 0 {
			if err := fn(pend); err != nil {
				return err
			}
		}
		pend = r
		return nil
	}
	end := off + n
	for pos, k := off, 0; pos < end; k++ {
		if k%4096 == 4095 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		b := pos / img.blockSize
		bEnd := min((b+1)*img.blockSize, end)
		if err := img.blockRuns(b, pos, bEnd, emit); err != nil {
			return err
		}
		pos = bEnd
	}
	if pend.n > 0 {
		return fn(pend)
	}
	return nil
}

// blockRuns describes [from, to) inside payload block b.
func (img *Image) blockRuns(b, from, to int64, emit func(run) error) error {
	cr := img.chunkRatio
	e := img.bat[payloadIndex(b, cr)]
	start := b * img.blockSize
	switch e & 7 {
	case payloadFullyPresent:
		return emit(run{from, to - from, disk.Data, entryOffset(e) + from - start})
	case payloadZero:
		return emit(run{from, to - from, disk.Zero, 0})
	case payloadPartiallyPresent:
	default:
		// NOT_PRESENT, UNDEFINED and UNMAPPED hold nothing this layer
		// vouches for: the parent's bytes, or zeros in a base file.
		return emit(run{from, to - from, disk.Unallocated, 0})
	}
	// The sector bitmap says, sector by sector, whether this file or the
	// parent holds the data. Bit 0 of byte 0 is the chunk's first sector.
	lss := img.lss
	sbOff := entryOffset(img.bat[bitmapIndex(b/cr, cr)])
	firstBit := (b % cr) * (img.blockSize / lss) // a multiple of 8
	s0 := (from - start) / lss
	s1 := (to - start + lss - 1) / lss
	bm := make([]byte, (s1+7)/8-s0/8)
	if err := readFull(img.src, bm, sbOff+(firstBit+s0)/8); err != nil {
		return errorf(img.path, sbOff, "reading sector bitmap of block %d: %v", b, err)
	}
	fileBase := entryOffset(e)
	for s := s0; s < s1; {
		set := bm[s/8-s0/8]>>(s%8)&1 != 0
		t := s + 1
		for t < s1 && (bm[t/8-s0/8]>>(t%8)&1 != 0) == set {
			t++
		}
		lo := max(start+s*lss, from)
		hi := min(start+t*lss, to)
		r := run{lo, hi - lo, disk.Unallocated, 0}
		if set {
			r.kind, r.fileOff = disk.Data, fileBase+lo-start
		}
		if err := emit(r); err != nil {
			return err
		}
		s = t
	}
	return nil
}

// ReadAt implements io.ReaderAt over the guest-visible disk.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d", img.path, off)
	}
	if off >= img.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := min(int64(len(p)), img.size-off)
	err := img.walk(context.Background(), off, n, func(r run) error {
		dst := p[r.off-off : r.off-off+r.n]
		switch r.kind {
		case disk.Data:
			if err := readFull(img.src, dst, r.fileOff); err != nil {
				return errorf(img.path, r.fileOff, "reading %d bytes of disk offset %d: %v", r.n, r.off, err)
			}
		case disk.Zero:
			clear(dst)
		default:
			return img.readParent(dst, r.off)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// readParent fills dst with the parent's bytes at off; past the parent's
// end (or with no parent) the disk reads zero.
func (img *Image) readParent(dst []byte, off int64) error {
	if img.parent == nil || off >= img.parent.Size() {
		clear(dst)
		return nil
	}
	m := min(int64(len(dst)), img.parent.Size()-off)
	k, err := img.parent.ReadAt(dst[:m], off)
	if int64(k) < m {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("%s: reading parent at %d: %w", img.path, off, err)
	}
	clear(dst[m:])
	return nil
}

// Extents implements disk.Image: this layer's allocation, exact to the
// logical sector for partially present blocks.
func (img *Image) Extents(ctx context.Context, off, length int64) ([]disk.Extent, error) {
	off, length = disk.ClampRange(off, length, img.size)
	var out []disk.Extent
	err := img.walk(ctx, off, length, func(r run) error {
		out = disk.AppendExtent(out, disk.Extent{Offset: r.off, Length: r.n, Kind: r.kind})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
