package vhd

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"lifeboat/disk"
)

// DefaultBlockSize is the block size of dynamic disks unless
// CreateOptions.ClusterSize says otherwise; Hyper-V uses it too.
const DefaultBlockSize = 2 << 20

// maxBATEntries bounds the writer's in-memory BAT (64 MiB); a disk that
// needs more must use a larger block size.
const maxBATEntries = 1 << 24

// creatorApp is the footer's creator application. Readers size a VHD by its
// CHS geometry unless they know the creator trusts current_size, and a CHS
// product cannot express most sizes (8 MiB + 1536 bytes is 16387 sectors, a
// prime times 7). Hyper-V and Windows always use current_size; qemu uses it
// only for a fixed list of creators. "qem2" is the code qemu itself writes
// when it wants current_size to be authoritative (qemu-img's force_size), so
// it states exactly our intent without claiming to be Windows, and both
// Windows and qemu then read the exact size we were asked for.
const creatorApp = "qem2"

// creatorVersion is ours (Lifeboat VHD writer 1.0); no reader interprets it.
const creatorVersion = 0x00010000

// Writer builds a new VHD. It is safe for concurrent WriteAt calls.
type Writer struct {
	mu     sync.Mutex
	f      *os.File
	path   string
	size   int64
	kind   uint32
	footer []byte // checksum filled in at Close
	err    error  // sticky: after a failed write the image cannot be finished
	closed bool

	// dynamic and differencing only
	header     []byte
	locData    []locWrite
	blockSize  int64
	bitmapSize int64
	tableOff   int64
	bat        []uint32
	bitmaps    map[int64][]byte // differencing: per-block sector bitmaps
	next       int64            // file offset of the next block
}

type locWrite struct {
	off  int64
	data []byte
}

// Create starts a new VHD at path: dynamic by default, fixed with
// opts.Fixed, differencing when opts.ParentPath is set. The file is not a
// valid image until Close returns nil.
func Create(ctx context.Context, path string, opts disk.CreateOptions) (disk.Writer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	diff := opts.ParentPath != ""
	if !diff && (opts.ParentID != "" || opts.Parent != nil) {
		return nil, fmt.Errorf("vhd create %s: a parent ID or image was given without ParentPath", path)
	}
	size := opts.Size
	if size == 0 && opts.Parent != nil {
		size = opts.Parent.Size()
	}
	if size <= 0 || size%sectorSize != 0 {
		return nil, fmt.Errorf("vhd create %s: size %d is not a positive multiple of %d", path, size, sectorSize)
	}
	if size > maxDiskSize {
		return nil, fmt.Errorf("vhd create %s: size %d exceeds the VHD limit of %d bytes", path, size, int64(maxDiskSize))
	}
	if diff && opts.Fixed {
		return nil, fmt.Errorf("vhd create %s: a differencing disk cannot be fixed", path)
	}
	var uid [16]byte
	if opts.ID != "" {
		u, err := parseUUID(opts.ID)
		if err != nil {
			return nil, fmt.Errorf("vhd create %s: ID: %w", path, err)
		}
		uid = u
	} else {
		rand.Read(uid[:])
		uid[6] = uid[6]&0x0F | 0x40 // version 4
		uid[8] = uid[8]&0x3F | 0x80 // RFC 4122 variant
	}
	w := &Writer{path: path, size: size, kind: diskDynamic}
	switch {
	case opts.Fixed:
		w.kind = diskFixed
	case diff:
		w.kind = diskDiff
	}
	if w.kind != diskFixed {
		bs := opts.ClusterSize
		if bs == 0 {
			bs = DefaultBlockSize
		}
		if bs < sectorSize || bs > maxBlockSize || bs&(bs-1) != 0 {
			return nil, fmt.Errorf("vhd create %s: block size %d is not a power of two between %d and %d", path, bs, sectorSize, maxBlockSize)
		}
		n := (size + bs - 1) / bs
		if n > maxBATEntries {
			return nil, fmt.Errorf("vhd create %s: %d blocks of %d bytes are too many; use a larger block size", path, n, bs)
		}
		w.blockSize, w.bitmapSize = bs, bitmapBytes(bs)
		w.bat = make([]uint32, n)
		for i := range w.bat {
			w.bat[i] = batUnused
		}
	}
	w.footer = makeFooter(w.kind, size, uid)
	if w.kind != diskFixed {
		if err := w.layout(opts); err != nil {
			return nil, err
		}
	}

	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	w.f = f
	if w.kind == diskFixed {
		// Sparse where the file system allows; unwritten sectors read zero.
		if err := f.Truncate(size + footerSize); err != nil {
			f.Close()
			return nil, fmt.Errorf("vhd create %s: %w", path, err)
		}
	}
	return w, nil
}

// makeFooter builds a footer without its checksum.
func makeFooter(kind uint32, size int64, uid [16]byte) []byte {
	b := make([]byte, footerSize)
	copy(b, footerCookie)
	binary.BigEndian.PutUint32(b[8:], 2) // features: the "reserved" bit that must be set
	binary.BigEndian.PutUint32(b[12:], 0x00010000)
	if kind == diskFixed {
		binary.BigEndian.PutUint64(b[fDataOffset:], math.MaxUint64)
	} else {
		binary.BigEndian.PutUint64(b[fDataOffset:], footerSize)
	}
	binary.BigEndian.PutUint32(b[24:], timestamp(time.Now()))
	copy(b[28:], creatorApp)
	binary.BigEndian.PutUint32(b[32:], creatorVersion)
	copy(b[36:], "Wi2k") // the host OS code Windows and qemu write; "Mac " is the only other
	binary.BigEndian.PutUint64(b[40:], uint64(size))
	binary.BigEndian.PutUint64(b[48:], uint64(size))
	c, h, s := geometry(size)
	binary.BigEndian.PutUint16(b[56:], c)
	b[58], b[59] = h, s
	binary.BigEndian.PutUint32(b[60:], kind)
	copy(b[68:], uid[:])
	return b
}

// timestamp is t in VHD seconds, clamped to the field's range.
func timestamp(t time.Time) uint32 {
	s := t.Unix() - vhdEpoch
	return uint32(max(0, min(s, math.MaxUint32)))
}

// layout builds the dynamic header and places the locators and BAT:
// footer copy at 0, header at 512, locator data, BAT, then blocks.
func (w *Writer) layout(opts disk.CreateOptions) error {
	h := make([]byte, headerSize)
	copy(h, headerCookie)
	binary.BigEndian.PutUint64(h[8:], math.MaxUint64)
	binary.BigEndian.PutUint32(h[24:], 0x00010000)
	binary.BigEndian.PutUint32(h[hMaxEntries:], uint32(len(w.bat)))
	binary.BigEndian.PutUint32(h[hBlockSize:], uint32(w.blockSize))
	pos := int64(footerSize + headerSize)
	if w.kind == diskDiff {
		pid := opts.ParentID
		if pid == "" && opts.Parent != nil {
			pid = opts.Parent.Info().ID
		}
		if pid == "" {
			return fmt.Errorf("vhd create %s: a differencing VHD needs the parent's ID (CreateOptions.ParentID)", w.path)
		}
		u, err := parseUUID(pid)
		if err != nil {
			return fmt.Errorf("vhd create %s: parent ID: %w", w.path, err)
		}
		copy(h[hParentUID:], u[:])
		// The parent timestamp stays 0: Windows and qemu do not require it,
		// and a restored parent's modification time would not match anyway.
		name := encodeUTF16(baseName(opts.ParentPath), binary.BigEndian)
		if len(name) > hLocators-hParentName {
			return fmt.Errorf("vhd create %s: parent name %q is longer than the 256 UTF-16 units the header holds", w.path, baseName(opts.ParentPath))
		}
		copy(h[hParentName:], name)

		loc := encodeUTF16(locatorPath(opts.ParentPath), binary.LittleEndian)
		if len(loc) > maxLocatorLen {
			return fmt.Errorf("vhd create %s: parent path is too long (%d bytes)", w.path, len(loc))
		}
		// W2ru and W2ku hold the same path so that Windows finds the parent
		// whichever it tries first.
		for i, code := range []string{platW2ru, platW2ku} {
			space := roundUp(int64(max(len(loc), 1)), sectorSize)
			e := h[hLocators+locatorSize*i:]
			copy(e, code)
			// The specification counts data space in sectors, but Windows
			// writes bytes (see win8-child.vhd) and reads it that way.
			binary.BigEndian.PutUint32(e[4:], uint32(space))
			binary.BigEndian.PutUint32(e[8:], uint32(len(loc)))
			binary.BigEndian.PutUint64(e[16:], uint64(pos))
			w.locData = append(w.locData, locWrite{off: pos, data: loc})
			pos += space
		}
		w.bitmaps = make(map[int64][]byte)
	}
	w.tableOff = pos
	binary.BigEndian.PutUint64(h[hTableOffset:], uint64(pos))
	w.next = pos + roundUp(int64(len(w.bat))*4, sectorSize)
	w.header = h
	return nil
}

// locatorPath is the parent path in Windows form; a bare relative path gets
// the ".\" prefix Windows itself writes.
func locatorPath(p string) string {
	wp := strings.ReplaceAll(p, "/", `\`)
	if !filepath.IsAbs(p) && !strings.HasPrefix(wp, `\`) && !strings.HasPrefix(wp, `.\`) && !strings.HasPrefix(wp, `..\`) && !(len(wp) >= 2 && wp[1] == ':') {
		wp = `.\` + wp
	}
	return wp
}

// WriteAt stores p at off. Offsets and lengths must be multiples of 512.
func (w *Writer) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, fmt.Errorf("vhd %s: write after Close: %w", w.path, os.ErrClosed)
	}
	if w.err != nil {
		return 0, w.err
	}
	if off < 0 || off%sectorSize != 0 || len(p)%sectorSize != 0 {
		return 0, fmt.Errorf("vhd %s: write of %d bytes at %d is not sector aligned", w.path, len(p), off)
	}
	if off > w.size || int64(len(p)) > w.size-off {
		return 0, fmt.Errorf("vhd %s: write of %d bytes at %d passes the disk size %d", w.path, len(p), off, w.size)
	}
	if w.kind == diskFixed {
		n, err := w.f.WriteAt(p, off)
		if err != nil {
			w.err = err
		}
		return n, err
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		b := pos / w.blockSize
		in := pos % w.blockSize
		n := int(min(int64(len(p)-done), w.blockSize-in))
		if err := w.writeBlock(p[done:done+n], b, in); err != nil {
			w.err = err
			return done, err
		}
		done += n
	}
	return done, nil
}

func (w *Writer) writeBlock(chunk []byte, b, in int64) error {
	if w.bat[b] == batUnused {
		// In a base image unwritten sectors read as zero already.
		if w.kind == diskDynamic && allZero(chunk) {
			return nil
		}
		if w.next/sectorSize > math.MaxUint32-1 {
			return fmt.Errorf("vhd %s: file would pass the 2 TiB a VHD can address", w.path)
		}
		w.bat[b] = uint32(w.next / sectorSize)
		bm := make([]byte, w.bitmapSize)
		if w.kind == diskDynamic {
			// Base images mark every sector present, as Windows and qemu
			// do: unwritten ones are zero in the file and read as zero.
			for i := range bm {
				bm[i] = 0xFF
			}
			if _, err := w.f.WriteAt(bm, w.next); err != nil {
				return err
			}
		} else {
			w.bitmaps[b] = bm
		}
		w.next += w.bitmapSize + w.blockSize
	}
	start := int64(w.bat[b])*sectorSize + w.bitmapSize
	if _, err := w.f.WriteAt(chunk, start+in); err != nil {
		return err
	}
	if bm := w.bitmaps[b]; bm != nil {
		// Differencing: only written sectors (zeros too) hide the parent.
		for s := in / sectorSize; s < (in+int64(len(chunk)))/sectorSize; s++ {
			bm[s/8] |= 0x80 >> (s % 8)
		}
	}
	return nil
}

// Close writes the metadata (bitmaps, BAT, header, both footers), fsyncs and
// closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return fmt.Errorf("vhd %s: %w", w.path, os.ErrClosed)
	}
	w.closed = true
	if w.err != nil {
		w.f.Close()
		return fmt.Errorf("vhd %s: not finalised after an earlier write error: %w", w.path, w.err)
	}
	err := w.finish()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("vhd %s: %w", w.path, err)
	}
	return nil
}

func (w *Writer) finish() error {
	binary.BigEndian.PutUint32(w.footer[fChecksum:], checksum(w.footer, fChecksum))
	if w.kind == diskFixed {
		if _, err := w.f.WriteAt(w.footer, w.size); err != nil {
			return err
		}
		return w.f.Sync()
	}
	var errs []error
	write := func(b []byte, off int64) {
		_, err := w.f.WriteAt(b, off)
		errs = append(errs, err)
	}
	keys := make([]int64, 0, len(w.bitmaps))
	for b := range w.bitmaps {
		keys = append(keys, b)
	}
	slices.Sort(keys)
	for _, b := range keys {
		write(w.bitmaps[b], int64(w.bat[b])*sectorSize)
	}
	for _, l := range w.locData {
		write(l.data, l.off)
	}
	bat := make([]byte, roundUp(int64(len(w.bat))*4, sectorSize))
	for i := range bat {
		bat[i] = 0xFF // padding after the last entry reads as unused too
	}
	for i, e := range w.bat {
		binary.BigEndian.PutUint32(bat[4*i:], e)
	}
	write(bat, w.tableOff)
	binary.BigEndian.PutUint32(w.header[hChecksum:], checksum(w.header, hChecksum))
	write(w.header, footerSize)
	write(w.footer, 0)
	write(w.footer, w.next)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := w.f.Truncate(w.next + footerSize); err != nil {
		return err
	}
	return w.f.Sync()
}
