package qcow2

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	"lifeboat/disk"
)

const (
	// L2 tables kept in memory per image; past this the cache starts over.
	maxL2CacheBytes = 32 << 20
	// zstd frames qemu writes use windows no larger than a cluster; a
	// bigger one is hostile input and must not make us allocate.
	maxZstdWindow = 8 << 20
)

type segKind uint8

const (
	segUnalloc segKind = iota
	segZero
	segData
	segCompressed
)

// seg is a guest range [off, off+n) mapped one way by this layer.
type seg struct {
	off, n int64
	kind   segKind
	// host is where the bytes at off live (segData), or where the
	// compressed cluster starts (segCompressed).
	host  int64
	clen  int64 // compressed length, segCompressed only
	inner int64 // offset of off inside its cluster, segCompressed only
}

// walk calls fn for consecutive segments covering [off, off+length), which
// must lie inside the virtual size. Unallocated L1 entries come as one
// segment so a sparse image is walked in few steps.
func (img *Image) walk(ctx context.Context, off, length int64, fn func(seg) error) error {
	end := off + length
	span := img.cs * img.l2Entries
	for off < end {
		l1i := off / span
		spanEnd := min((l1i+1)*span, end)
		if l1i >= int64(len(img.l1)) {
			return img.errorf(int64(img.h.l1Offset), "guest offset %d is beyond the L1 table", off)
		}
		l2off := img.l1[l1i] & offsetMask
		if l2off == 0 {
			if err := fn(seg{off: off, n: spanEnd - off, kind: segUnalloc}); err != nil {
				return err
			}
			off = spanEnd
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		tbl, err := img.l2Table(l1i, l2off)
		if err != nil {
			return err
		}
		for off < spanEnd {
			cEnd := min((off/img.cs+1)*img.cs, spanEnd)
			if err := img.cluster(tbl, l2off, (off%span)/img.cs, off, cEnd, fn); err != nil {
				return err
			}
			off = cEnd
		}
	}
	return nil
}

// cluster decodes L2 entry ci of the table at l2off for [off, end), which
// lies inside that one cluster.
func (img *Image) cluster(tbl []uint64, l2off uint64, ci, off, end int64, fn func(seg) error) error {
	var e, bitmap uint64
	entryAt := int64(l2off) + ci*8
	if img.extended {
		e, bitmap = tbl[2*ci], tbl[2*ci+1]
		entryAt = int64(l2off) + ci*16
	} else {
		e = tbl[ci]
	}
	inner := off % img.cs
	if e&flagCompressed != 0 {
		bits := img.h.clusterBits
		x := 62 - (bits - 8)
		host := int64(e & (1<<x - 1))
		sectors := int64((e>>x)&(1<<(bits-8)-1)) + 1
		if host == 0 || host >= img.fileSize {
			return img.errorf(entryAt, "compressed cluster for guest offset %d at host offset %d is outside the file (size %d)", off-inner, host, img.fileSize)
		}
		clen := sectors*512 - host&511
		return fn(seg{off: off, n: end - off, kind: segCompressed, host: host, clen: clen, inner: inner})
	}
	host := int64(e & offsetMask)
	// A cluster's host offset matters only where bytes are read from it:
	// zero clusters may keep a preallocated one.
	checkHost := func() error {
		if host%img.cs != 0 {
			return img.errorf(entryAt, "cluster for guest offset %d at host offset %#x is not cluster aligned", off-inner, host)
		}
		if host >= img.fileSize {
			return img.errorf(entryAt, "cluster for guest offset %d at host offset %d is past the end of the file (size %d)", off-inner, host, img.fileSize)
		}
		return nil
	}
	if !img.extended {
		switch {
		case e&flagZero != 0 && img.h.version < 3:
			return img.errorf(entryAt, "zero cluster flag for guest offset %d in a version 2 image", off-inner)
		case e&flagZero != 0:
			return fn(seg{off: off, n: end - off, kind: segZero})
		case host == 0:
			return fn(seg{off: off, n: end - off, kind: segUnalloc})
		}
		if err := checkHost(); err != nil {
			return err
		}
		return fn(seg{off: off, n: end - off, kind: segData, host: host + inner})
	}
	if bitmap&0xffffffff != 0 && host != 0 {
		if err := checkHost(); err != nil {
			return err
		}
	}
	sc := img.cs / subclusters
	for off < end {
		i := (off % img.cs) / sc
		sEnd := min(off-off%sc+sc, end)
		alloc, zero := bitmap>>i&1 != 0, bitmap>>(32+i)&1 != 0
		var s seg
		switch {
		case alloc && zero:
			return img.errorf(entryAt, "subcluster %d of guest cluster %d is marked both allocated and zero", i, off/img.cs)
		case zero:
			s = seg{kind: segZero}
		case alloc && host == 0:
			return img.errorf(entryAt, "subcluster %d of guest cluster %d is allocated but the cluster has no host offset", i, off/img.cs)
		case alloc:
			s = seg{kind: segData, host: host + off%img.cs}
		default:
			s = seg{kind: segUnalloc}
		}
		s.off, s.n = off, sEnd-off
		if err := fn(s); err != nil {
			return err
		}
		off = sEnd
	}
	return nil
}

// l2Table returns the entries of the L2 table at l2off, which L1 entry l1i
// points to.
func (img *Image) l2Table(l1i int64, l2off uint64) ([]uint64, error) {
	img.mu.Lock()
	t, ok := img.l2cache[l2off]
	img.mu.Unlock()
	if ok {
		return t, nil
	}
	at := int64(img.h.l1Offset) + l1i*8
	if l2off%uint64(img.cs) != 0 {
		return nil, img.errorf(at, "L2 table offset %#x in L1 entry %d is not cluster aligned", l2off, l1i)
	}
	if l2off >= uint64(img.fileSize) || img.cs > img.fileSize-int64(l2off) {
		return nil, img.errorf(at, "L2 table at offset %d (L1 entry %d) is past the end of the file (size %d)", l2off, l1i, img.fileSize)
	}
	raw := make([]byte, img.cs)
	if err := img.readFull(raw, int64(l2off), fmt.Sprintf("L2 table (L1 entry %d)", l1i)); err != nil {
		return nil, err
	}
	t = make([]uint64, img.cs/8)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	img.mu.Lock()
	if img.l2bytes+img.cs > maxL2CacheBytes {
		clear(img.l2cache)
		img.l2bytes = 0
	}
	img.l2cache[l2off] = t
	img.l2bytes += img.cs
	img.mu.Unlock()
	return t, nil
}

// ReadAt reads guest bytes, from the parent where this layer has none.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d", img.path, off)
	}
	if off >= img.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), img.size-off)
	// Neighbouring segments that are contiguous on the host (or both
	// zero, or both from the parent) are read in one go.
	var pend seg
	have := false
	err := img.walk(context.Background(), off, n, func(s seg) error {
		if have && pend.kind == s.kind && pend.off+pend.n == s.off &&
			(s.kind == segZero || s.kind == segUnalloc || s.kind == segData && pend.host+pend.n == s.host) {
			pend.n += s.n
			return nil
		}
		if have {
			if err := img.fill(p[pend.off-off:pend.off-off+pend.n], pend); err != nil {
				return err
			}
		}
		pend, have = s, true
		return nil
	})
	if err == nil && have {
		err = img.fill(p[pend.off-off:pend.off-off+pend.n], pend)
	}
	if err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

func (img *Image) fill(dst []byte, s seg) error {
	switch s.kind {
	case segZero:
		clear(dst)
	case segUnalloc:
		return img.readParent(dst, s.off)
	case segData:
		return img.readHost(dst, s.host)
	case segCompressed:
		return img.readCompressed(dst, s)
	}
	return nil
}

// readHost reads file bytes; like qemu, bytes of a cluster past the end of
// the file read as zero.
func (img *Image) readHost(dst []byte, host int64) error {
	k := min(int64(len(dst)), max(img.fileSize-host, 0))
	if k > 0 {
		if err := img.readFull(dst[:k], host, "data cluster"); err != nil {
			return err
		}
	}
	clear(dst[k:])
	return nil
}

// readParent reads guest bytes at off from the backing file; past its end,
// or without one, they are zero.
func (img *Image) readParent(dst []byte, off int64) error {
	k := int64(0)
	if img.parent != nil {
		k = min(int64(len(dst)), max(img.parent.Size()-off, 0))
	}
	if k > 0 {
		n, err := img.parent.ReadAt(dst[:k], off)
		if int64(n) < k {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("%s: read backing file %q at %d: %w", img.path, img.h.backingFile, off, err)
		}
	}
	clear(dst[k:])
	return nil
}

// readCompressed inflates the cluster s points into and copies its part.
func (img *Image) readCompressed(dst []byte, s seg) error {
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.lastCluster == nil || img.lastComp != uint64(s.host) {
		// The sector count may run past the end of the file for the
		// last compressed cluster; the data itself ends before it.
		comp := make([]byte, min(s.clen, img.fileSize-s.host))
		if err := img.readFull(comp, s.host, "compressed cluster"); err != nil {
			return err
		}
		if img.lastCluster == nil {
			img.lastCluster = make([]byte, img.cs)
		}
		img.lastComp = 0
		var err error
		switch img.h.compressionType {
		case compressionZstd:
			if img.zstd == nil {
				img.zstd, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1),
					zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderMaxMemory(maxZstdWindow))
				if err != nil {
					return err
				}
			}
			if err = img.zstd.Reset(bytes.NewReader(comp)); err == nil {
				_, err = io.ReadFull(img.zstd, img.lastCluster)
			}
		default:
			_, err = io.ReadFull(flate.NewReader(bytes.NewReader(comp)), img.lastCluster)
		}
		if err != nil {
			return &disk.FormatError{Path: img.path, Offset: s.host,
				Msg: fmt.Sprintf("decompress cluster for guest offset %d (%d bytes)", s.off-s.inner, len(comp)), Err: err}
		}
		img.lastComp = uint64(s.host)
	}
	copy(dst, img.lastCluster[s.inner:])
	return nil
}

// Extents maps this layer only: Data for allocated and compressed
// clusters, Zero for zero clusters, Unallocated where the backing file (or
// zeros) shows through.
func (img *Image) Extents(ctx context.Context, off, length int64) ([]disk.Extent, error) {
	off, length = disk.ClampRange(off, length, img.size)
	var out []disk.Extent
	err := img.walk(ctx, off, length, func(s seg) error {
		k := disk.Unallocated
		switch s.kind {
		case segZero:
			k = disk.Zero
		case segData, segCompressed:
			k = disk.Data
		}
		out = disk.AppendExtent(out, disk.Extent{Offset: s.off, Length: s.n, Kind: k})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
