package qcow2

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sync"

	"lifeboat/disk"
)

const (
	defaultClusterSize = 64 << 10
	minWriteCluster    = 4 << 10
	maxWriteCluster    = 2 << 20
	writeHeaderLen     = 112 // v3 header with the compression_type byte, padded
	refcountOrder      = 4   // 16-bit refcounts, qemu's default
)

// Writer builds a qcow2 v3 image. Data clusters are appended to the file in
// the order they are first written; L2 tables stay in memory until Close
// lays them out after the data, followed by the L1 table and the refcount
// structures, and finally writes the header into cluster 0. Every cluster
// is referenced exactly once, so every refcount is 1.
type Writer struct {
	mu   sync.Mutex
	f    *os.File
	path string
	size int64
	cs   int64
	bits uint32

	backing       string
	backingFormat string
	parent        disk.Image
	overlay       bool

	l2      map[int64][]uint64 // L1 index -> L2 entries
	next    int64              // host offset of the next free cluster
	scratch []byte
	closed  bool
	err     error // first write failure; the image is unusable after it
}

var _ disk.Writer = (*Writer)(nil)

// Create starts a qcow2 image at path. opts.ClusterSize must be a power of
// two from 4 KiB to 2 MiB (default 64 KiB) and opts.Size a multiple of 512.
// With opts.ParentPath the image is an overlay: ParentPath and ParentFormat
// are recorded as the backing file, and opts.Parent supplies the bytes of
// partly written clusters. ID, ParentID and Fixed have no qcow2 meaning.
func Create(ctx context.Context, path string, opts disk.CreateOptions) (*Writer, error) {
	cs := opts.ClusterSize
	if cs == 0 {
		cs = defaultClusterSize
	}
	if cs < minWriteCluster || cs > maxWriteCluster || cs&(cs-1) != 0 {
		return nil, fmt.Errorf("%s: cluster size %d is not a power of two from %d to %d", path, cs, minWriteCluster, maxWriteCluster)
	}
	if opts.Size < 0 || opts.Size%512 != 0 || opts.Size > maxVirtualSize {
		return nil, fmt.Errorf("%s: virtual size %d must be a multiple of 512 up to %d", path, opts.Size, int64(maxVirtualSize))
	}
	if span := cs * (cs / 8); (opts.Size+span-1)/span*8 > maxL1Bytes {
		return nil, fmt.Errorf("%s: virtual size %d needs an L1 table larger than %d bytes with %d byte clusters", path, opts.Size, maxL1Bytes, cs)
	}
	if len(opts.ParentPath) > 1023 {
		return nil, fmt.Errorf("%s: backing file name of %d bytes is longer than 1023", path, len(opts.ParentPath))
	}
	if len(opts.ParentFormat) > 255 {
		return nil, fmt.Errorf("%s: backing format name too long", path)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	bits := uint32(0)
	for int64(1)<<bits < cs {
		bits++
	}
	return &Writer{
		f: f, path: path, size: opts.Size, cs: cs, bits: bits,
		backing: opts.ParentPath, backingFormat: string(opts.ParentFormat),
		parent: opts.Parent, overlay: opts.ParentPath != "",
		l2: map[int64][]uint64{}, next: cs, scratch: make([]byte, cs),
	}, nil
}

func (w *Writer) entries() int64 { return w.cs / 8 }

func (w *Writer) entry(vc int64) uint64 {
	t := w.l2[vc/w.entries()]
	if t == nil {
		return 0
	}
	return t[vc%w.entries()]
}

func (w *Writer) setEntry(vc int64, e uint64) {
	i := vc / w.entries()
	t := w.l2[i]
	if t == nil {
		t = make([]uint64, w.entries())
		w.l2[i] = t
	}
	t[vc%w.entries()] = e
}

// WriteAt stores p at guest offset off. Writes may cover clusters partly;
// the rest of a newly allocated cluster comes from the parent in an
// overlay and is zero otherwise.
func (w *Writer) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, fmt.Errorf("%s: write after close", w.path)
	}
	if w.err != nil {
		return 0, w.err
	}
	if off < 0 || off > w.size || int64(len(p)) > w.size-off {
		return 0, fmt.Errorf("%s: write of %d bytes at %d is outside the image (size %d)", w.path, len(p), off, w.size)
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		vc, inner := pos/w.cs, pos%w.cs
		n := min(w.cs-inner, int64(len(p)-done))
		if err := w.writeCluster(vc, inner, p[done:done+int(n)]); err != nil {
			w.err = err
			return done, err
		}
		done += int(n)
	}
	return done, nil
}

func (w *Writer) writeCluster(vc, inner int64, chunk []byte) error {
	e := w.entry(vc)
	if host := int64(e & offsetMask); host != 0 {
		return w.pwrite(chunk, host+inner)
	}
	zero := allZero(chunk)
	visibleEnd := min(w.cs, w.size-vc*w.cs)
	whole := inner == 0 && int64(len(chunk)) >= visibleEnd
	hidden := e&flagZero != 0 // the parent no longer shows through
	switch {
	case zero && (hidden || !w.overlay):
		return nil // already reads as zero
	case zero && whole:
		w.setEntry(vc, flagZero)
		return nil
	}
	buf := w.scratch
	switch {
	case whole:
		clear(buf[len(chunk):])
	case hidden || !w.overlay:
		clear(buf)
	default:
		if err := w.readParent(buf, vc*w.cs); err != nil {
			return err
		}
	}
	copy(buf[inner:], chunk)
	host := w.next
	if err := w.pwrite(buf, host); err != nil {
		return err
	}
	w.next += w.cs
	w.setEntry(vc, uint64(host)|flagCopied)
	return nil
}

// readParent fills buf with the parent's bytes of the cluster at guest
// offset off.
func (w *Writer) readParent(buf []byte, off int64) error {
	if w.parent == nil {
		return fmt.Errorf("%s: partial write to cluster at %d needs the parent's data, but no parent image was given", w.path, off)
	}
	k := min(int64(len(buf)), max(w.parent.Size()-off, 0))
	if k > 0 {
		n, err := w.parent.ReadAt(buf[:k], off)
		if int64(n) < k {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("%s: read parent at %d: %w", w.path, off, err)
		}
	}
	clear(buf[k:])
	return nil
}

func (w *Writer) pwrite(b []byte, off int64) error {
	if _, err := w.f.WriteAt(b, off); err != nil {
		return fmt.Errorf("%s: write at %d: %w", w.path, off, err)
	}
	return nil
}

// Close lays out the metadata, writes the header, fsyncs and closes.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return w.err
	}
	w.closed = true
	err := w.err
	if err == nil {
		err = w.finish()
	}
	if err == nil {
		err = w.f.Sync()
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		w.err = fmt.Errorf("%s: close: %w", w.path, err)
	}
	return w.err
}

func (w *Writer) finish() error {
	be := binary.BigEndian
	cs := w.cs
	clusters := func(bytes int64) int64 { return max((bytes+cs-1)/cs, 1) }

	// L2 tables, in guest order.
	span := cs * w.entries()
	l1Entries := (w.size + span - 1) / span
	// An empty disk has no L1 table at all, as qemu makes it: an
	// allocated but unreferenced one would count as leaked.
	var l1 []byte
	if l1Entries > 0 {
		l1 = make([]byte, clusters(l1Entries*8)*cs)
	}
	for _, i := range slices.Sorted(maps.Keys(w.l2)) {
		t := w.l2[i]
		buf := make([]byte, cs)
		for j, e := range t {
			be.PutUint64(buf[j*8:], e)
		}
		if err := w.pwrite(buf, w.next); err != nil {
			return err
		}
		be.PutUint64(l1[i*8:], uint64(w.next)|flagCopied)
		w.next += cs
	}
	var l1Offset int64
	if len(l1) > 0 {
		l1Offset = w.next
		if err := w.pwrite(l1, l1Offset); err != nil {
			return err
		}
		w.next += int64(len(l1))
	}

	// The refcount structures must also count themselves: grow them until
	// they cover every cluster including their own.
	used := w.next / cs
	perBlock := cs * 8 / (1 << refcountOrder)
	var blocks, tableClusters int64
	for {
		total := used + blocks + tableClusters
		nb := (total + perBlock - 1) / perBlock
		nt := clusters(nb * 8)
		if nb == blocks && nt == tableClusters {
			break
		}
		blocks, tableClusters = nb, nt
	}
	total := used + blocks + tableClusters
	rtOffset := w.next
	rt := make([]byte, tableClusters*cs)
	rb := make([]byte, blocks*cs)
	for b := range blocks {
		be.PutUint64(rt[b*8:], uint64(rtOffset+(tableClusters+b)*cs))
	}
	for c := range total {
		be.PutUint16(rb[c*2:], 1)
	}
	if err := w.pwrite(rt, rtOffset); err != nil {
		return err
	}
	if err := w.pwrite(rb, rtOffset+tableClusters*cs); err != nil {
		return err
	}

	h := make([]byte, cs)
	be.PutUint32(h[0:], magic)
	be.PutUint32(h[4:], 3)
	be.PutUint32(h[20:], w.bits)
	be.PutUint64(h[24:], uint64(w.size))
	be.PutUint32(h[36:], uint32(l1Entries))
	be.PutUint64(h[40:], uint64(l1Offset))
	be.PutUint64(h[48:], uint64(rtOffset))
	be.PutUint32(h[56:], uint32(tableClusters))
	be.PutUint32(h[96:], refcountOrder)
	be.PutUint32(h[100:], writeHeaderLen)
	pos := writeHeaderLen
	if w.backingFormat != "" {
		be.PutUint32(h[pos:], extBackingFormat)
		be.PutUint32(h[pos+4:], uint32(len(w.backingFormat)))
		copy(h[pos+8:], w.backingFormat)
		pos += 8 + (len(w.backingFormat)+7)&^7
	}
	pos += 8 // end-of-extensions marker, all zero
	if w.backing != "" {
		be.PutUint64(h[8:], uint64(pos))
		be.PutUint32(h[16:], uint32(len(w.backing)))
		copy(h[pos:], w.backing)
	}
	return w.pwrite(h, 0)
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
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
