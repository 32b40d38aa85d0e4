package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	"lifeboat/disk"
)

// BlockSize is the overlay's allocation unit: its bitmaps have one bit per
// BlockSize bytes of the export, and a write that covers part of a block
// not yet in the overlay first copies the block from the base.
const BlockSize = 4096

// lockStripes is how many mutexes serialise writers per block.
const lockStripes = 256

var (
	// ErrClosed is returned by an Overlay after Close.
	ErrClosed = errors.New("overlay closed")
	// ErrOutOfRange is returned for accesses past the end of the export.
	ErrOutOfRange = errors.New("outside the export")
)

// OverlayOptions say where an overlay lives.
type OverlayOptions struct {
	// Path is the overlay's data file: a sparse file of the base's size
	// holding the blocks written. Its allocation bitmap is kept beside it
	// in Path+".bitmap". An existing overlay at Path is reopened (it must
	// have been made over a base of the same size and BaseID); otherwise
	// a new one is created.
	//
	// "" makes a temporary overlay in Dir (os.TempDir() when empty),
	// unlinked at once, that lives as long as the Overlay and promises no
	// durability: Flush does nothing.
	Path string
	Dir  string
	// BaseID names the base (a recovery point and disk, say). It is
	// stored with the bitmap and must match when the overlay is reopened,
	// so an overlay is never laid over the wrong base.
	BaseID string
}

// blockState is what the overlay holds for one block.
type blockState uint8

const (
	stUnalloc blockState = iota // read from the base
	stData                      // read from the overlay file
	stZero                      // reads as zeros (write zeroes, trim)
)

// Overlay is a writable view of a read-only base image: blocks written go
// to a sparse local file, the rest is read from the base. It is safe for
// concurrent use; see the package documentation for its crash semantics
// and for Finalize.
type Overlay struct {
	base   disk.Image
	size   int64
	nblk   int64
	f      *os.File
	path   string
	bmPath string
	temp   bool
	baseID string
	unlock func()

	// alloc marks blocks the overlay defines; zero, a subset, those that
	// read as zeros. A block moves unalloc -> data|zero and between data
	// and zero, never back to unalloc.
	alloc, zero *bitmap
	version     atomic.Uint64 // bumped on every change of alloc or zero

	stripes [lockStripes]sync.Mutex
	// pause is held shared by every write for its whole duration and
	// exclusively by Close and by Finalize's last pass.
	pause  sync.RWMutex
	closed bool // under pause

	flushMu sync.Mutex
	saved   uint64 // version of the persisted bitmap, under flushMu

	// Dirty tracking for Finalize.
	dirty      *bitmap
	tracking   atomic.Bool
	gen        atomic.Uint64
	finalizing atomic.Bool

	blocks sync.Pool // *[BlockSize]byte
}

// OpenOverlay opens or creates the overlay described by opts over base.
// The overlay does not own base: close it after the overlay.
func OpenOverlay(base disk.Image, opts OverlayOptions) (*Overlay, error) {
	size := base.Size()
	if size < 0 {
		return nil, fmt.Errorf("overlay: base has negative size %d", size)
	}
	o := &Overlay{
		base:   base,
		size:   size,
		nblk:   (size + BlockSize - 1) / BlockSize,
		baseID: opts.BaseID,
		unlock: func() {},
	}
	o.alloc, o.zero, o.dirty = newBitmap(o.nblk), newBitmap(o.nblk), newBitmap(o.nblk)
	o.blocks.New = func() any { return new([BlockSize]byte) }
	if opts.Path == "" {
		f, err := os.CreateTemp(opts.Dir, "lifeboat-overlay-*")
		if err != nil {
			return nil, fmt.Errorf("overlay: %w", err)
		}
		os.Remove(f.Name())
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, fmt.Errorf("overlay: %w", err)
		}
		o.f, o.path, o.temp = f, f.Name(), true
		return o, nil
	}
	o.path = opts.Path
	o.bmPath = opts.Path + ".bitmap"
	if err := o.open(); err != nil {
		return nil, fmt.Errorf("overlay %s: %w", opts.Path, err)
	}
	return o, nil
}

// open opens or creates the data file and bitmap of a persistent overlay.
// Creation writes the (empty) bitmap first: a bitmap without a data file
// is a creation cut short, a data file without a bitmap is refused.
func (o *Overlay) open() error {
	bm, err := os.ReadFile(o.bmPath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if _, err := os.Lstat(o.path); err == nil {
			return fmt.Errorf("data file exists but its bitmap %s is missing: refusing to guess which blocks it holds", o.bmPath)
		}
		if err := o.persist(make([]uint64, len(o.alloc.w)), make([]uint64, len(o.zero.w))); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		alloc, zero, err := decodeBitmap(bm, o.size, o.baseID)
		if err != nil {
			return fmt.Errorf("bitmap %s: %w", o.bmPath, err)
		}
		for i := range zero {
			zero[i] &= alloc[i]
		}
		o.alloc.load(alloc)
		o.zero.load(zero)
	}
	f, err := os.OpenFile(o.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	unlock, err := lockFile(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("in use by another process: %w", err)
	}
	st, err := f.Stat()
	if err == nil && st.Size() != o.size {
		if st.Size() == 0 && o.alloc.count() == 0 {
			// Created just now, or a creation cut short.
			if err = f.Truncate(o.size); err == nil {
				if err = f.Sync(); err == nil {
					err = syncDir(filepath.Dir(o.path))
				}
			}
		} else {
			err = fmt.Errorf("data file is %d bytes, the base %d", st.Size(), o.size)
		}
	}
	if err != nil {
		unlock()
		f.Close()
		return err
	}
	o.f, o.unlock = f, unlock
	return nil
}

// Size is the export's size: the base's.
func (o *Overlay) Size() int64 { return o.size }

// Path is the overlay's data file (for a temporary overlay, its
// now-unlinked name).
func (o *Overlay) Path() string { return o.path }

// Base is the image under the overlay.
func (o *Overlay) Base() disk.Image { return o.base }

// Allocated is how many bytes of the export the overlay defines (written,
// zeroed or trimmed blocks).
func (o *Overlay) Allocated() int64 {
	return min(o.alloc.count()*BlockSize, o.size)
}

func (o *Overlay) state(b int64) blockState {
	if !o.alloc.get(b) {
		return stUnalloc
	}
	if o.zero.get(b) {
		return stZero
	}
	return stData
}

// run returns the state of block b and the end of the run of blocks with
// that state, at most end.
func (o *Overlay) run(b, end int64) (blockState, int64) {
	st := o.state(b)
	for b++; b < end; b++ {
		if b&63 == 0 && end-b >= 64 {
			a, z := o.alloc.w[b>>6].Load(), o.zero.w[b>>6].Load()
			if (st == stUnalloc && a == 0) || (st == stData && a == ^uint64(0) && z == 0) || (st == stZero && a&z == ^uint64(0)) {
				b += 63
				continue
			}
		}
		if o.state(b) != st {
			break
		}
	}
	return st, b
}

func (o *Overlay) blockEnd(b int64) int64 { return min((b+1)*BlockSize, o.size) }

// ReadAt reads the merged view: overlay blocks over the base.
func (o *Overlay) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("overlay: read at negative offset %d", off)
	}
	if off >= o.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := min(int64(len(p)), o.size-off)
	end := off + n
	for pos := off; pos < end; {
		st, rb := o.run(pos/BlockSize, (end-1)/BlockSize+1)
		re := min(rb*BlockSize, end)
		dst := p[pos-off : re-off]
		switch st {
		case stData:
			if err := o.readFile(dst, pos); err != nil {
				return 0, err
			}
		case stZero:
			clear(dst)
		default:
			if err := o.readBase(dst, pos); err != nil {
				return 0, err
			}
		}
		pos = re
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

func (o *Overlay) readFile(dst []byte, off int64) error {
	k, err := o.f.ReadAt(dst, off)
	if k == len(dst) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = fmt.Errorf("short read of %d bytes at %d: %d", len(dst), off, k)
	}
	return fmt.Errorf("overlay %s: %w", o.path, err)
}

func (o *Overlay) readBase(dst []byte, off int64) error {
	k, err := o.base.ReadAt(dst, off)
	if k == len(dst) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = fmt.Errorf("short read of %d bytes at %d: %d", len(dst), off, k)
	}
	return fmt.Errorf("overlay base: %w", err)
}

func (o *Overlay) check(off, n int64) error {
	if off < 0 || n < 0 || off > o.size || n > o.size-off {
		return fmt.Errorf("overlay: %d bytes at offset %d: %w (%d bytes)", n, off, ErrOutOfRange, o.size)
	}
	return nil
}

// lockBlocks locks the stripes of blocks [b0, b1] in ascending stripe
// order, so that writers never deadlock.
func (o *Overlay) lockBlocks(b0, b1 int64) func() {
	const n = lockStripes
	var r [2][2]int64 // stripe ranges [lo, hi), ascending
	s0, s1 := b0%n, b1%n
	switch {
	case b1-b0+1 >= n:
		r[0] = [2]int64{0, n}
	case s0 <= s1:
		r[0] = [2]int64{s0, s1 + 1}
	default:
		r[0], r[1] = [2]int64{0, s1 + 1}, [2]int64{s0, n}
	}
	for _, x := range r {
		for i := x[0]; i < x[1]; i++ {
			o.stripes[i].Lock()
		}
	}
	return func() {
		for _, x := range r {
			for i := x[0]; i < x[1]; i++ {
				o.stripes[i].Unlock()
			}
		}
	}
}

// begin starts a write-type operation on [off, off+n): it holds the pause
// lock and the blocks' stripes until the returned function runs, which
// also records the blocks as dirty for Finalize.
func (o *Overlay) begin(off, n int64) (func(), error) {
	if err := o.check(off, n); err != nil {
		return nil, err
	}
	o.pause.RLock()
	if o.closed {
		o.pause.RUnlock()
		return nil, ErrClosed
	}
	if n == 0 {
		return o.pause.RUnlock, nil
	}
	b0, b1 := off/BlockSize, (off+n-1)/BlockSize
	unlock := o.lockBlocks(b0, b1)
	return func() {
		// Marked after the data is in place: a Finalize pass that
		// misses the bit has read the new data already.
		if o.tracking.Load() {
			o.dirty.setRange(b0, b1+1)
		}
		unlock()
		o.pause.RUnlock()
	}, nil
}

func (o *Overlay) markData(lo, hi int64) {
	o.zero.clearRange(lo, hi)
	o.alloc.setRange(lo, hi)
	o.version.Add(1)
}

func (o *Overlay) markZero(lo, hi int64) {
	o.zero.setRange(lo, hi)
	o.alloc.setRange(lo, hi)
	o.version.Add(1)
}

// pieces splits [off, end) into runs of whole blocks (the export's last,
// short block counts as whole) and pieces of single blocks.
func (o *Overlay) pieces(off, end int64, whole func(pos, e int64) error, part func(b, pos, e int64) error) error {
	for pos := off; pos < end; {
		b := pos / BlockSize
		be := o.blockEnd(b)
		if pos == b*BlockSize && end >= be {
			e := pos + (end-pos)/BlockSize*BlockSize
			if end == o.size {
				e = end
			}
			if err := whole(pos, e); err != nil {
				return err
			}
			pos = e
			continue
		}
		e := min(end, be)
		if err := part(b, pos, e); err != nil {
			return err
		}
		pos = e
	}
	return nil
}

func (o *Overlay) pwrite(p []byte, off int64) error {
	if _, err := o.f.WriteAt(p, off); err != nil {
		return fmt.Errorf("overlay %s: %w", o.path, err)
	}
	return nil
}

// cow writes block b from its current content (base or zeros) with
// change applied, and marks it data.
func (o *Overlay) cow(b int64, st blockState, change func(blk []byte)) error {
	bs := b * BlockSize
	bufp := o.blocks.Get().(*[BlockSize]byte)
	defer o.blocks.Put(bufp)
	blk := bufp[:o.blockEnd(b)-bs]
	if st == stZero {
		clear(blk)
	} else if err := o.readBase(blk, bs); err != nil {
		return err
	}
	change(blk)
	if err := o.pwrite(blk, bs); err != nil {
		return err
	}
	o.markData(b, b+1)
	return nil
}

// WriteAt writes p at off into the overlay. A write must lie inside the
// export.
func (o *Overlay) WriteAt(p []byte, off int64) (int, error) {
	end, err := o.begin(off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	defer end()
	err = o.pieces(off, off+int64(len(p)),
		func(pos, e int64) error {
			if err := o.pwrite(p[pos-off:e-off], pos); err != nil {
				return err
			}
			o.markData(pos/BlockSize, (e+BlockSize-1)/BlockSize)
			return nil
		},
		func(b, pos, e int64) error {
			src := p[pos-off : e-off]
			st := o.state(b)
			if st == stData {
				return o.pwrite(src, pos)
			}
			return o.cow(b, st, func(blk []byte) { copy(blk[pos-b*BlockSize:], src) })
		})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

var zeroBlock [BlockSize]byte

// WriteZeroes makes [off, off+n) read as zeros. Whole blocks become zero
// blocks (their space in the overlay file is released); parts of blocks
// are written.
func (o *Overlay) WriteZeroes(off, n int64) error {
	return o.zeroRange(off, n, false)
}

// Trim discards [off, off+n): whole blocks in it read as zeros afterwards
// (and their space is released); parts of blocks are left alone, as TRIM
// allows.
func (o *Overlay) Trim(off, n int64) error {
	return o.zeroRange(off, n, true)
}

func (o *Overlay) zeroRange(off, n int64, wholeOnly bool) error {
	end, err := o.begin(off, n)
	if err != nil {
		return err
	}
	defer end()
	return o.pieces(off, off+n,
		func(pos, e int64) error {
			// Reads of zero blocks never look at the file: releasing
			// the space is only an optimisation.
			punchHole(o.f, pos, e-pos)
			o.markZero(pos/BlockSize, (e+BlockSize-1)/BlockSize)
			return nil
		},
		func(b, pos, e int64) error {
			if wholeOnly {
				return nil
			}
			switch st := o.state(b); st {
			case stZero:
				return nil
			case stData:
				return o.pwrite(zeroBlock[:e-pos], pos)
			default:
				rel, k := pos-b*BlockSize, e-pos
				return o.cow(b, st, func(blk []byte) { clear(blk[rel : rel+k]) })
			}
		})
}

// Flush makes every write that completed before it durable: the data file
// is synced, then the bitmap (as it was before the sync) is replaced
// atomically. See the package documentation.
func (o *Overlay) Flush() error {
	if o.temp {
		return nil
	}
	o.flushMu.Lock()
	defer o.flushMu.Unlock()
	return o.flushLocked()
}

func (o *Overlay) flushLocked() error {
	v := o.version.Load()
	// Snapshot before the sync: every bit in it belongs to a write whose
	// data was in the file before the sync started. Reading alloc before
	// zero matches the order writers set them (see markData, markZero).
	alloc := o.alloc.snapshot()
	zero := o.zero.snapshot()
	if err := o.f.Sync(); err != nil {
		return fmt.Errorf("overlay %s: sync: %w", o.path, err)
	}
	if v == o.saved {
		return nil
	}
	if err := o.persist(alloc, zero); err != nil {
		return err
	}
	o.saved = v
	return nil
}

// persist replaces the bitmap file atomically: temporary file, fsync,
// rename, fsync of the folder.
func (o *Overlay) persist(alloc, zero []uint64) error {
	b := encodeBitmap(o.size, o.baseID, alloc, zero)
	tmp := o.bmPath + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("overlay bitmap: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, o.bmPath)
	}
	if err == nil {
		err = syncDir(filepath.Dir(o.bmPath))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("overlay bitmap %s: %w", o.bmPath, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	d.Close()
	if errors.Is(err, syscall.EINVAL) {
		return nil // file systems that cannot sync folders
	}
	return err
}

// Close waits for writes in progress, flushes, and closes the overlay
// file (a temporary overlay is gone then). It does not close the base.
func (o *Overlay) Close() error {
	o.pause.Lock()
	defer o.pause.Unlock()
	if o.closed {
		return nil
	}
	o.closed = true
	var err error
	if !o.temp {
		o.flushMu.Lock()
		err = o.flushLocked()
		o.flushMu.Unlock()
	}
	o.unlock()
	if cerr := o.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Extents describes the merged view over [off, off+length) (clamped to
// the export): overlay blocks as Data or Zero, the rest as the base's
// whole chain resolves it (disk.ResolvedExtents).
func (o *Overlay) Extents(ctx context.Context, off, length int64) ([]disk.Extent, error) {
	off, length = disk.ClampRange(off, length, o.size)
	end := off + length
	var out []disk.Extent
	for pos := off; pos < end; {
		st, rb := o.run(pos/BlockSize, (end-1)/BlockSize+1)
		re := min(rb*BlockSize, end)
		switch st {
		case stData:
			out = disk.AppendExtent(out, disk.Extent{Offset: pos, Length: re - pos, Kind: disk.Data})
		case stZero:
			out = disk.AppendExtent(out, disk.Extent{Offset: pos, Length: re - pos, Kind: disk.Zero})
		default:
			ext, err := disk.ResolvedExtents(ctx, o.base, pos, re-pos)
			if err != nil {
				return nil, fmt.Errorf("overlay base: %w", err)
			}
			for _, e := range ext {
				out = disk.AppendExtent(out, e)
			}
		}
		pos = re
	}
	return out, nil
}

// Image is the merged view as a flat disk.Image (raw, no parent), for
// disk.Copy and the like. Closing it does not close the overlay.
func (o *Overlay) Image() disk.Image { return mergedImage{o} }

type mergedImage struct{ o *Overlay }

var _ disk.Image = mergedImage{}

func (m mergedImage) ReadAt(p []byte, off int64) (int, error) { return m.o.ReadAt(p, off) }
func (m mergedImage) Close() error                            { return nil }
func (m mergedImage) Format() disk.Format                     { return disk.Raw }
func (m mergedImage) Size() int64                             { return m.o.size }
func (m mergedImage) Parent() disk.Image                      { return nil }
func (m mergedImage) Info() disk.Info {
	return disk.Info{Format: disk.Raw, Size: m.o.size, ClusterSize: BlockSize, Subformat: "overlay"}
}
func (m mergedImage) Extents(ctx context.Context, off, length int64) ([]disk.Extent, error) {
	return m.o.Extents(ctx, off, length)
}
