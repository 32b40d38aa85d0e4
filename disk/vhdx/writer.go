package vhdx

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"strings"
	"sync"

	"lifeboat/disk"
)

// Layout of files this package writes. Everything is 1 MiB aligned as the
// spec requires; the log is empty (LogGuid zero) but present, because
// Hyper-V expects a log region it can use when it opens the file.
const (
	writeLogOffset  = 1 * mib
	writeLogLength  = 1 * mib
	writeMetaOffset = 2 * mib
	writeMetaLength = 1 * mib
	writeBATOffset  = 3 * mib

	// DefaultBlockSize is the block size Create uses when
	// CreateOptions.ClusterSize is 0: smaller than Hyper-V's 32 MiB so
	// that sparse restores and differencing layers stay small.
	DefaultBlockSize = 2 * mib

	writeLogicalSector  = 512
	writePhysicalSector = 4096
	creatorName         = "Lifeboat"
)

// Writer builds a new VHDX file. It is safe for concurrent use.
type Writer struct {
	mu     sync.Mutex
	f      *os.File
	path   string
	err    error // sticky: the first failed write poisons Close
	closed bool

	size, blockSize, chunkRatio int64
	fixed, diff                 bool
	bat                         []uint64
	batLength                   int64
	// bitmaps holds the sector bitmap of each PARTIALLY_PRESENT block of a
	// differencing image (one bit per logical sector written).
	bitmaps map[int64][]byte
	next    int64 // first free file offset, 1 MiB aligned

	dataWrite, fileWrite, virtualID GUID
	parentID                        GUID
	parentPath                      string
}

// Create starts a new VHDX at path: dynamic by default, fixed with
// opts.Fixed, differencing when opts.ParentPath is set. Offsets and
// lengths given to WriteAt must be multiples of 512 bytes.
func Create(ctx context.Context, path string, opts disk.CreateOptions) (disk.Writer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w := &Writer{path: path, size: opts.Size, blockSize: opts.ClusterSize, fixed: opts.Fixed, diff: opts.ParentPath != ""}
	if w.size <= 0 || w.size%writeLogicalSector != 0 || w.size > maxDiskSize {
		return nil, fmt.Errorf("%s: VHDX size %d must be a positive multiple of %d up to 64 TiB", path, w.size, writeLogicalSector)
	}
	if w.blockSize == 0 {
		w.blockSize = DefaultBlockSize
	}
	if w.blockSize < minBlockSize || w.blockSize > maxBlockSize || w.blockSize&(w.blockSize-1) != 0 {
		return nil, fmt.Errorf("%s: VHDX block size %d must be a power of two between 1 MiB and 256 MiB", path, w.blockSize)
	}
	if w.fixed && w.diff {
		return nil, fmt.Errorf("%s: a differencing VHDX cannot be fixed", path)
	}
	var err error
	if opts.ID != "" {
		if w.dataWrite, err = ParseGUID(opts.ID); err != nil {
			return nil, fmt.Errorf("%s: ID: %w", path, err)
		}
	} else if w.dataWrite, err = newGUID(); err != nil {
		return nil, err
	}
	if w.fileWrite, err = newGUID(); err != nil {
		return nil, err
	}
	if w.virtualID, err = newGUID(); err != nil {
		return nil, err
	}
	if w.diff {
		pid := opts.ParentID
		if pid == "" && opts.Parent != nil {
			pid = opts.Parent.Info().ID
		}
		if pid == "" {
			return nil, fmt.Errorf("%s: a differencing VHDX needs the parent's ID (its DataWriteGuid)", path)
		}
		if w.parentID, err = ParseGUID(pid); err != nil {
			return nil, fmt.Errorf("%s: parent ID: %w", path, err)
		}
		// Windows resolves relative_path with backslashes; readers here
		// turn them back into slashes.
		w.parentPath = strings.ReplaceAll(opts.ParentPath, "/", `\`)
		if len(encodeUTF16(w.parentPath)) > 0xffff {
			return nil, fmt.Errorf("%s: parent path is too long for a VHDX parent locator", path)
		}
	}

	w.chunkRatio = sectorsPerBitmap * writeLogicalSector / w.blockSize
	n := batEntries(w.size, w.blockSize, w.chunkRatio, w.diff)
	w.bat = make([]uint64, n)
	w.batLength = max((n*8+mib-1)/mib*mib, mib)
	w.next = writeBATOffset + w.batLength
	w.bitmaps = map[int64][]byte{}
	if w.fixed {
		for b := range dataBlocks(w.size, w.blockSize) {
			w.allocate(payloadIndex(b, w.chunkRatio), payloadFullyPresent)
		}
	}

	w.f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	return w, nil
}

// allocate gives BAT entry idx a new block at the end of the file.
func (w *Writer) allocate(idx int64, state uint64) int64 {
	off := w.next
	w.next += w.blockSize
	w.bat[idx] = uint64(off/mib)<<20 | state
	return off
}

// WriteAt implements io.WriterAt.
func (w *Writer) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, fmt.Errorf("%s: write after Close", w.path)
	}
	if w.err != nil {
		return 0, w.err
	}
	if off < 0 || off%writeLogicalSector != 0 || len(p)%writeLogicalSector != 0 {
		return 0, fmt.Errorf("%s: write of %d bytes at %d is not aligned to %d-byte sectors", w.path, len(p), off, writeLogicalSector)
	}
	if off > w.size || int64(len(p)) > w.size-off {
		return 0, fmt.Errorf("%s: write of %d bytes at %d goes past the %d-byte disk", w.path, len(p), off, w.size)
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		b := pos / w.blockSize
		in := pos % w.blockSize
		n := int(min(int64(len(p)-done), w.blockSize-in))
		if err := w.writeBlock(b, in, p[done:done+n]); err != nil {
			w.err = err
			return done, err
		}
		done += n
	}
	return done, nil
}

// writeBlock writes data at byte in of payload block b, allocating the
// block when it first holds something that must be stored.
func (w *Writer) writeBlock(b, in int64, data []byte) error {
	idx := payloadIndex(b, w.chunkRatio)
	blockLen := min(w.blockSize, w.size-b*w.blockSize)
	whole := in == 0 && int64(len(data)) == blockLen
	var off int64
	switch w.bat[idx] & 7 {
	case payloadFullyPresent:
		off = entryOffset(w.bat[idx])
	case payloadPartiallyPresent:
		off = entryOffset(w.bat[idx])
		if w.markSectors(b, in, int64(len(data)), blockLen) {
			w.bat[idx] = w.bat[idx]&^7 | payloadFullyPresent
		}
	default:
		zero := allZero(data)
		if !w.diff && zero {
			// A base image reads zero where nothing is allocated.
			return nil
		}
		// Zeros in a differencing image must hide the parent. A whole
		// zero block could be PAYLOAD_BLOCK_ZERO without any space, but
		// libvhdi (20210425) reads such blocks from the parent, so the
		// block is allocated instead; it costs no disk space because it
		// stays a hole.
		state := uint64(payloadFullyPresent)
		if w.diff && !whole {
			state = payloadPartiallyPresent
		}
		off = w.allocate(idx, state)
		if state == payloadPartiallyPresent && w.markSectors(b, in, int64(len(data)), blockLen) {
			w.bat[idx] = w.bat[idx]&^7 | payloadFullyPresent
		}
		if zero {
			// Fresh space lies past every byte written so far and
			// reads as zero.
			return nil
		}
	}
	if _, err := w.f.WriteAt(data, off+in); err != nil {
		return fmt.Errorf("%s: %w", w.path, err)
	}
	return nil
}

// markSectors sets the bitmap bits of [in, in+n) in block b and reports
// whether every sector of the block is now this layer's.
func (w *Writer) markSectors(b, in, n, blockLen int64) bool {
	bm := w.bitmaps[b]
	if bm == nil {
		bm = make([]byte, w.blockSize/writeLogicalSector/8)
		w.bitmaps[b] = bm
	}
	setBits(bm, in/writeLogicalSector, (in+n)/writeLogicalSector)
	count := 0
	for _, c := range bm {
		count += bits.OnesCount8(c)
	}
	if int64(count) == blockLen/writeLogicalSector {
		delete(w.bitmaps, b)
		return true
	}
	return false
}

// setBits sets bits [from, to), bit 0 being the low bit of byte 0.
func setBits(bm []byte, from, to int64) {
	for s := from; s < to; {
		if s%8 == 0 && to-s >= 8 {
			bm[s/8] = 0xff
			s += 8
			continue
		}
		bm[s/8] |= 1 << (s % 8)
		s++
	}
}

// Close writes the sector bitmaps, BAT, metadata, region tables and
// headers, fsyncs and closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errors.New(w.path + ": already closed")
	}
	w.closed = true
	err := w.finish()
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return err
}

func (w *Writer) finish() error {
	if w.err != nil {
		return w.err
	}
	if w.diff {
		if err := w.writeBitmaps(); err != nil {
			return err
		}
	}
	bat := make([]byte, w.batLength)
	for i, e := range w.bat {
		binary.LittleEndian.PutUint64(bat[8*i:], e)
	}
	fileID := make([]byte, 8+512)
	copy(fileID, fileIDSignature)
	copy(fileID[8:], encodeUTF16(creatorName))
	regions := marshalRegionTable([]regionEntry{
		{GUID: guidBATRegion, Offset: writeBATOffset, Length: uint32(w.batLength), Required: true},
		{GUID: guidMetaRegion, Offset: writeMetaOffset, Length: writeMetaLength, Required: true},
	})
	h := header{
		Seq:           1,
		FileWriteGUID: w.fileWrite,
		DataWriteGUID: w.dataWrite,
		Version:       1,
		LogLength:     writeLogLength,
		LogOffset:     writeLogOffset,
	}
	h1 := h.marshal()
	h.Seq = 2
	h2 := h.marshal()
	// Headers go last, so a file cut short by a crash has none and cannot
	// be mistaken for a finished image.
	writes := []struct {
		b   []byte
		off int64
	}{
		{w.metadata(), writeMetaOffset},
		{bat, writeBATOffset},
		{regions, region1Offset},
		{regions, region2Offset},
		{fileID, 0},
		{h1, header1Offset},
		{h2, header2Offset},
	}
	for _, x := range writes {
		if _, err := w.f.WriteAt(x.b, x.off); err != nil {
			return fmt.Errorf("%s: %w", w.path, err)
		}
	}
	if err := w.f.Truncate(w.next); err != nil {
		return fmt.Errorf("%s: %w", w.path, err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("%s: %w", w.path, err)
	}
	return nil
}

// writeBitmaps stores a sector bitmap block for each chunk that has a
// PARTIALLY_PRESENT block. Fully present blocks get their bits set too,
// for readers that consult the bitmap regardless of the block state.
func (w *Writer) writeBitmaps() error {
	cr := w.chunkRatio
	blocks := dataBlocks(w.size, w.blockSize)
	perBlock := w.blockSize / writeLogicalSector
	for c := int64(0); c*cr < blocks; c++ {
		first, last := c*cr, min((c+1)*cr, blocks)
		partial := false
		for b := first; b < last; b++ {
			partial = partial || w.bat[payloadIndex(b, cr)]&7 == payloadPartiallyPresent
		}
		if !partial {
			continue
		}
		bm := make([]byte, sbBlockSize)
		for b := first; b < last; b++ {
			j := b - first
			switch w.bat[payloadIndex(b, cr)] & 7 {
			case payloadPartiallyPresent:
				copy(bm[j*perBlock/8:], w.bitmaps[b])
			case payloadFullyPresent:
				blockLen := min(w.blockSize, w.size-b*w.blockSize)
				setBits(bm, j*perBlock, j*perBlock+blockLen/writeLogicalSector)
			}
		}
		off := w.next
		w.next += sbBlockSize
		w.bat[bitmapIndex(c, cr)] = uint64(off/mib)<<20 | sbPresent
		if _, err := w.f.WriteAt(bm, off); err != nil {
			return fmt.Errorf("%s: %w", w.path, err)
		}
	}
	return nil
}

// metadata builds the metadata region: the table, then the items.
func (w *Writer) metadata() []byte {
	type item struct {
		id    GUID
		flags uint32
		data  []byte
	}
	u32 := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	var fpFlags uint32
	if w.fixed {
		fpFlags |= fpLeaveBlocksAllocated
	}
	if w.diff {
		fpFlags |= fpHasParent
	}
	items := []item{
		{guidFileParameters, metaIsRequired, append(u32(uint32(w.blockSize)), u32(fpFlags)...)},
		{guidVirtualSize, metaIsRequired | metaIsVirtualDisk, binary.LittleEndian.AppendUint64(nil, uint64(w.size))},
		{guidVirtualDiskID, metaIsRequired | metaIsVirtualDisk, w.virtualID[:]},
		{guidLogicalSector, metaIsRequired | metaIsVirtualDisk, u32(writeLogicalSector)},
		{guidPhysicalSector, metaIsRequired | metaIsVirtualDisk, u32(writePhysicalSector)},
	}
	if w.diff {
		items = append(items, item{guidParentLocator, metaIsRequired, marshalLocator([][2]string{
			{"parent_linkage", "{" + w.parentID.String() + "}"},
			{"relative_path", w.parentPath},
		})})
	}
	b := make([]byte, writeMetaLength)
	copy(b, metaSignature)
	binary.LittleEndian.PutUint16(b[10:12], uint16(len(items)))
	pos := uint32(metaTableSize)
	for i, it := range items {
		e := b[32+32*i:]
		copy(e[0:16], it.id[:])
		binary.LittleEndian.PutUint32(e[16:20], pos)
		binary.LittleEndian.PutUint32(e[20:24], uint32(len(it.data)))
		binary.LittleEndian.PutUint32(e[24:28], it.flags)
		copy(b[pos:], it.data)
		pos += (uint32(len(it.data)) + 7) &^ 7
	}
	return b
}

// marshalLocator builds a VHDX parent locator item from key/value pairs.
func marshalLocator(kv [][2]string) []byte {
	b := make([]byte, 20+12*len(kv))
	copy(b[0:16], guidVHDXLocator[:])
	binary.LittleEndian.PutUint16(b[18:20], uint16(len(kv)))
	for i, p := range kv {
		k, v := encodeUTF16(p[0]), encodeUTF16(p[1])
		e := b[20+12*i:]
		binary.LittleEndian.PutUint32(e[0:4], uint32(len(b)))
		binary.LittleEndian.PutUint16(e[8:10], uint16(len(k)))
		b = append(b, k...)
		e = b[20+12*i:]
		binary.LittleEndian.PutUint32(e[4:8], uint32(len(b)))
		binary.LittleEndian.PutUint16(e[10:12], uint16(len(v)))
		b = append(b, v...)
	}
	return b
}
