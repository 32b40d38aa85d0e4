// Package raw reads and writes raw disk images: a file (or a block device)
// whose bytes are the guest-visible disk. Raw is the fallback format when no
// other format recognises a file, so it has no Probe.
//
// The allocation map comes from the filesystem's holes (SEEK_DATA/SEEK_HOLE
// on Linux); elsewhere the whole image is reported as data. Images written
// here are sparse: all-zero writes leave holes.
package raw

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"

	"lifeboat/disk"
)

// Image is an opened raw image or block device.
type Image struct {
	f      *os.File
	path   string
	size   int64
	device bool
}

var _ disk.Image = (*Image)(nil)

// Open opens path read-only. The size comes from seeking to the end, which
// works for regular files and block devices alike (Stat reports 0 for a
// device). parents is unused: raw images have no parent.
func Open(ctx context.Context, path string, parents disk.ParentOpener) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("%s: is a directory, not a disk image", path)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: find size: %w", path, err)
	}
	return &Image{f: f, path: path, size: size, device: !st.Mode().IsRegular()}, nil
}

func (img *Image) Format() disk.Format { return disk.Raw }
func (img *Image) Size() int64         { return img.size }
func (img *Image) Parent() disk.Image  { return nil }
func (img *Image) Close() error        { return img.f.Close() }
func (img *Image) Info() disk.Info {
	in := disk.Info{Format: disk.Raw, Size: img.size}
	if img.device {
		in.Subformat = "device"
	}
	return in
}

// ReadAt reads through to the file, stopping at the size found at open so a
// device or a file that grows later still reads as the image it was.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d", img.path, off)
	}
	if off >= img.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), img.size-off)
	n, err := img.f.ReadAt(p[:want], off)
	if int64(n) == want {
		err = nil
	} else if err == nil || err == io.EOF {
		// The file shrank under us: the image is no longer what we sized.
		err = fmt.Errorf("%s: short read at offset %d: %d of %d bytes", img.path, off, n, want)
	}
	if err == nil && want < int64(len(p)) {
		err = io.EOF
	}
	return n, err
}

// Extents reports filesystem holes as Unallocated and everything else as
// Data; where holes cannot be queried the whole range is Data.
func (img *Image) Extents(ctx context.Context, off, length int64) ([]disk.Extent, error) {
	off, length = disk.ClampRange(off, length, img.size)
	if length == 0 {
		return nil, nil
	}
	if img.device {
		return []disk.Extent{{Offset: off, Length: length, Kind: disk.Data}}, nil
	}
	return holes(ctx, img.f, img.path, off, length)
}

// Writer writes a sparse raw image.
type Writer struct {
	mu   sync.Mutex
	f    *os.File
	path string
	size int64
	// device targets may hold old bytes anywhere, so zeros are always
	// written to them.
	device bool
	// direct is a second descriptor opened with O_DIRECT (Linux), used
	// for block-aligned writes: a restore then costs no page-cache copy
	// (which measured as most of a restore's CPU time) and leaves no
	// gigabytes of dirty pages for the final fsync. nil where the OS or
	// the filesystem (tmpfs) has no direct I/O; noDirect is set once a
	// direct write was refused, and the rest goes through the page cache.
	direct   *os.File
	noDirect bool
	// written holds sorted, merged [start, end) ranges that received
	// non-zero bytes: only zero writes overlapping them must touch the file.
	written []span
	closed  bool
}

type span struct{ start, end int64 }

var _ disk.Writer = (*Writer)(nil)

// Create makes a new sparse file of opts.Size bytes at path, or writes onto
// an existing block device of at least that size. Parent, ClusterSize and
// Fixed are ignored: raw has no parent and no allocation unit.
func Create(ctx context.Context, path string, opts disk.CreateOptions) (*Writer, error) {
	if opts.Size < 0 {
		return nil, fmt.Errorf("%s: negative size %d", path, opts.Size)
	}
	if opts.ParentPath != "" {
		return nil, fmt.Errorf("%s: raw images cannot have a parent", path)
	}
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() && st.Mode()&os.ModeDevice != 0 {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		end, err := f.Seek(0, io.SeekEnd)
		if err == nil && end < opts.Size {
			err = fmt.Errorf("%s: device holds %d bytes, image needs %d", path, end, opts.Size)
		}
		if err != nil {
			f.Close()
			return nil, err
		}
		return &Writer{f: f, path: path, size: opts.Size, device: true, direct: openDirect(path)}, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(opts.Size); err != nil {
		f.Close()
		return nil, err
	}
	return &Writer{f: f, path: path, size: opts.Size, direct: openDirect(path)}, nil
}

// WriteAt accepts any offset and length inside the image.
func (w *Writer) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, fmt.Errorf("%s: write after close", w.path)
	}
	if off < 0 || off > w.size || int64(len(p)) > w.size-off {
		return 0, fmt.Errorf("%s: write of %d bytes at %d is outside the image (size %d)", w.path, len(p), off, w.size)
	}
	if len(p) == 0 {
		return 0, nil
	}
	end := off + int64(len(p))
	if !allZero(p) {
		// pwrite needs no lock; marking first is safe because a failed
		// write fails the whole image.
		w.mark(off, end)
		d := w.direct
		if w.noDirect || !directAligned(p, off) {
			d = nil
		}
		w.mu.Unlock()
		if d != nil {
			n, err := d.WriteAt(p, off)
			if err == nil || !directRefused(err) {
				w.mu.Lock()
				return n, err
			}
			w.mu.Lock()
			w.noDirect = true
			w.mu.Unlock()
		}
		n, err := w.f.WriteAt(p, off)
		if err == nil && !w.device {
			startWriteback(w.f, off, int64(n))
		}
		w.mu.Lock()
		return n, err
	}
	if !w.device && !w.overlaps(off, end) {
		return len(p), nil // already a hole
	}
	if !w.device && punchHole(w.f, off, int64(len(p))) == nil {
		return len(p), nil
	}
	return w.f.WriteAt(p, off)
}

// mark records [start, end) as holding data, merging neighbours.
func (w *Writer) mark(start, end int64) {
	i := sort.Search(len(w.written), func(i int) bool { return w.written[i].end >= start })
	j := i
	for j < len(w.written) && w.written[j].start <= end {
		start = min(start, w.written[j].start)
		end = max(end, w.written[j].end)
		j++
	}
	w.written = append(w.written[:i], append([]span{{start, end}}, w.written[j:]...)...)
}

func (w *Writer) overlaps(start, end int64) bool {
	i := sort.Search(len(w.written), func(i int) bool { return w.written[i].end > start })
	return i < len(w.written) && w.written[i].start < end
}

// ConcurrentWrites tells disk.Copy that WriteAt may be called from
// several goroutines at once for disjoint ranges.
func (w *Writer) ConcurrentWrites() bool { return true }

// Close fsyncs and closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if w.direct != nil {
		w.direct.Close()
	}
	err := w.f.Sync()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: close: %w", w.path, err)
	}
	return nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

var errNoHoles = errors.New("hole queries not supported")
