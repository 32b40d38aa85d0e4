package vhd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"lifeboat/disk"
)

// Image is an opened VHD. It is safe for concurrent ReadAt and Extents.
type Image struct {
	r        io.ReaderAt
	file     *os.File // nil when opened from memory
	path     string
	fileSize int64

	foot      footer
	footerOff int64
	size      int64
	sub       string

	// dynamic and differencing only
	blockSize  int64
	bitmapSize int64
	bat        []uint32 // one entry per block of the virtual size

	parent     disk.Image
	parentUID  [16]byte
	parentPath string
	locators   []locator

	warnings []string
}

// locator is one parent locator that held usable text.
type locator struct {
	code string
	path string
}

// openingKey carries, in a context, the files being opened further down a
// chain, so that a loop of parent links fails instead of recursing forever.
type openingKey struct{}

// maxChain bounds the depth of a differencing chain.
const maxChain = 256

// Probe reports whether the first bytes of a file are a VHD footer copy, as
// dynamic and differencing disks (and some fixed ones) have. A fixed VHD
// without the copy starts with guest data; use ProbeFile for those.
func Probe(header []byte) bool {
	return len(header) >= 8 && string(header[:8]) == footerCookie
}

// ProbeFile reports whether f, of the given size, is a VHD: a footer copy at
// offset 0, or a valid footer (cookie and checksum) in its last 512 bytes.
func ProbeFile(f io.ReaderAt, size int64) bool {
	b := make([]byte, footerSize)
	if n, _ := f.ReadAt(b[:8], 0); n == 8 && Probe(b) {
		return true
	}
	if size < footerSize {
		return false
	}
	if n, _ := f.ReadAt(b, size-footerSize); n != footerSize {
		return false
	}
	_, prob := parseFooter(b)
	return prob == ""
}

// Open opens the VHD at path read-only. A differencing disk's parent is
// opened through parents, given candidate paths built from the locators.
func Open(ctx context.Context, path string, parents disk.ParentOpener) (disk.Image, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	opening, _ := ctx.Value(openingKey{}).([]string)
	if slices.Contains(opening, abs) {
		return nil, fmt.Errorf("%s: differencing chain loops back to this file (chain: %s)", path, strings.Join(opening, " -> "))
	}
	if len(opening) >= maxChain {
		return nil, fmt.Errorf("%s: differencing chain deeper than %d layers", path, maxChain)
	}
	ctx = context.WithValue(ctx, openingKey{}, append(slices.Clip(opening), abs))

	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	// Seek rather than Stat so block devices report their size too.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	img, err := openReader(ctx, f, size, path, parents)
	if err != nil {
		f.Close()
		return nil, err
	}
	img.file = f
	return img, nil
}

// openReader parses a VHD held by r. path is used in errors and to resolve
// relative parent locators.
func openReader(ctx context.Context, r io.ReaderAt, fileSize int64, path string, parents disk.ParentOpener) (*Image, error) {
	m := &Image{r: r, path: path, fileSize: fileSize}
	if err := m.readFooter(); err != nil {
		return nil, err
	}
	vs := m.foot.virtualSize()
	if vs > math.MaxInt64 {
		return nil, disk.Errorf(path, m.footerOff+48, "disk size %d is out of range", vs)
	}
	// Readers address whole sectors; qemu rounds down the same way.
	m.size = int64(vs) / sectorSize * sectorSize

	switch m.foot.diskType {
	case diskFixed:
		m.sub = "fixed"
		if m.size > m.footerOff {
			return nil, disk.Errorf(path, m.footerOff, "fixed disk of %d bytes needs %d bytes of data before the footer, file has %d (truncated?)", m.size, m.size, m.footerOff)
		}
	case diskDynamic, diskDiff:
		m.sub = "dynamic"
		if m.foot.diskType == diskDiff {
			m.sub = "differencing"
		}
		if err := m.readDynamic(ctx, parents); err != nil {
			return nil, err
		}
	default:
		return nil, disk.Errorf(path, m.footerOff+60, "unsupported disk type %d (want 2 fixed, 3 dynamic or 4 differencing)", m.foot.diskType)
	}
	return m, nil
}

// readFooter finds a valid footer: at the end, at the end of a file written
// with the old 511-byte footer, or (dynamic disks only) the copy at 0.
func (m *Image) readFooter() error {
	if m.fileSize < footerSize {
		return disk.Errorf(m.path, 0, "file is %d bytes, too small to hold a VHD footer (%d bytes)", m.fileSize, footerSize)
	}
	buf := make([]byte, footerSize)
	end := m.fileSize - footerSize
	if err := readFull(m.r, buf, end); err != nil {
		return disk.Errorf(m.path, end, "reading footer: %v", err)
	}
	f, prob := parseFooter(buf)
	if prob == "" {
		m.foot, m.footerOff = f, end
		return nil
	}
	// Virtual PC before 2004 wrote a 511-byte footer; its checksum is the
	// same as that of the footer padded with a zero byte.
	clear(buf)
	if err := readFull(m.r, buf[:footerSize-1], m.fileSize-(footerSize-1)); err == nil {
		if f2, p2 := parseFooter(buf); p2 == "" && f2.diskType == diskFixed {
			m.foot, m.footerOff = f2, m.fileSize-(footerSize-1)
			return nil
		}
	}
	// A dynamic disk whose end was cut or damaged still has the copy at 0;
	// its blocks are checked against the file size later.
	if m.fileSize >= 2*footerSize {
		if err := readFull(m.r, buf, 0); err == nil {
			if f0, p0 := parseFooter(buf); p0 == "" && (f0.diskType == diskDynamic || f0.diskType == diskDiff) {
				m.foot, m.footerOff = f0, 0
				m.warnings = append(m.warnings, fmt.Sprintf("footer at offset %d is bad (%s); using the copy at offset 0", end, prob))
				return nil
			}
		}
	}
	return disk.Errorf(m.path, end, "%s", prob)
}

// readDynamic reads the dynamic header and the BAT, and opens the parent of
// a differencing disk.
func (m *Image) readDynamic(ctx context.Context, parents disk.ParentOpener) error {
	ho := m.foot.dataOffset
	if ho > uint64(m.fileSize) || uint64(m.fileSize)-ho < headerSize {
		return disk.Errorf(m.path, m.footerOff+fDataOffset, "dynamic header offset %d is beyond the end of the file (%d bytes)", ho, m.fileSize)
	}
	hoff := int64(ho)
	h := make([]byte, headerSize)
	if err := readFull(m.r, h, hoff); err != nil {
		return disk.Errorf(m.path, hoff, "reading dynamic header: %v", err)
	}
	if string(h[:8]) != headerCookie {
		return disk.Errorf(m.path, hoff, "dynamic header cookie is %q, want %q", h[:8], headerCookie)
	}
	stored := binary.BigEndian.Uint32(h[hChecksum:])
	if sum := checksum(h, hChecksum); sum != stored {
		return disk.Errorf(m.path, hoff+hChecksum, "dynamic header checksum mismatch: stored %#08x, computed %#08x", stored, sum)
	}
	bs := int64(binary.BigEndian.Uint32(h[hBlockSize:]))
	if bs < sectorSize || bs > maxBlockSize || bs&(bs-1) != 0 {
		return disk.Errorf(m.path, hoff+hBlockSize, "block size %d is not a power of two between %d and %d", bs, sectorSize, maxBlockSize)
	}
	m.blockSize = bs
	m.bitmapSize = bitmapBytes(bs)

	maxEntries := int64(binary.BigEndian.Uint32(h[hMaxEntries:]))
	// m.size < 2^63 and bs >= 512, so this cannot overflow.
	nBlocks := m.size/bs + min(m.size%bs, 1)
	if nBlocks > maxEntries {
		return disk.Errorf(m.path, hoff+hMaxEntries, "BAT has %d entries, but a disk of %d bytes with %d-byte blocks needs %d", maxEntries, m.size, bs, nBlocks)
	}
	to := binary.BigEndian.Uint64(h[hTableOffset:])
	// nBlocks <= 2^32, so the BAT read is bounded by the file size checked
	// here, never by a size taken on trust.
	if to > uint64(m.fileSize) || uint64(m.fileSize)-to < uint64(nBlocks*4) {
		return disk.Errorf(m.path, hoff+hTableOffset, "BAT at offset %d with %d entries runs past the end of the file (%d bytes)", to, nBlocks, m.fileSize)
	}
	tableOff := int64(to)
	raw := make([]byte, nBlocks*4)
	if err := readFull(m.r, raw, tableOff); err != nil {
		return disk.Errorf(m.path, tableOff, "reading BAT: %v", err)
	}
	m.bat = make([]uint32, nBlocks)
	for i := range m.bat {
		if i%65536 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		e := binary.BigEndian.Uint32(raw[4*i:])
		m.bat[i] = e
		if e == batUnused {
			continue
		}
		off := int64(e) * sectorSize
		// The last block may be stored short of a full block; only the part
		// inside the virtual disk must exist.
		need := m.bitmapSize + min(bs, m.size-int64(i)*bs)
		if off+need > m.fileSize {
			return disk.Errorf(m.path, tableOff+4*int64(i), "BAT entry %d points to a block at offset %d (%d bytes with its bitmap), past the end of the file (%d bytes)", i, off, need, m.fileSize)
		}
	}
	if m.foot.diskType == diskDiff {
		return m.openParent(ctx, h, hoff, parents)
	}
	return nil
}

// Platform codes of parent locators.
const (
	platW2ru = "W2ru" // relative path, UTF-16LE
	platW2ku = "W2ku" // absolute path, UTF-16LE
	platWi2r = "Wi2r" // deprecated relative path
	platWi2k = "Wi2k" // deprecated absolute path
	platMac  = "Mac " // Mac OS alias blob: not usable here
	platMacX = "MacX" // file URL, UTF-8
)

// readLocators decodes the usable parent locators of header h (at hoff).
// Unreadable locators are skipped with a warning: the parent may still be
// found through another one or through its name.
func (m *Image) readLocators(h []byte, hoff int64) {
	for i := range numLocators {
		e := h[hLocators+locatorSize*i:][:locatorSize]
		code := string(e[:4])
		if binary.BigEndian.Uint32(e) == 0 || code == platMac {
			continue
		}
		length := int64(binary.BigEndian.Uint32(e[8:]))
		off := binary.BigEndian.Uint64(e[16:])
		entryOff := hoff + hLocators + int64(locatorSize*i)
		if length == 0 {
			continue
		}
		if length > maxLocatorLen || off > uint64(m.fileSize) || uint64(m.fileSize)-off < uint64(length) {
			m.warnings = append(m.warnings, fmt.Sprintf("parent locator %d (%q) at offset %d: %d bytes at offset %d do not fit in the file; ignored", i, code, entryOff, length, off))
			continue
		}
		data := make([]byte, length)
		if err := readFull(m.r, data, int64(off)); err != nil {
			m.warnings = append(m.warnings, fmt.Sprintf("parent locator %d (%q) at offset %d: %v", i, code, entryOff, err))
			continue
		}
		var p string
		switch code {
		case platW2ru, platW2ku:
			p = decodeUTF16(data, binary.LittleEndian)
		case platWi2r, platWi2k:
			p = decodeLegacy(data)
		case platMacX:
			p = decodeFileURL(string(bytes.TrimRight(data, "\x00")))
		default:
			m.warnings = append(m.warnings, fmt.Sprintf("parent locator %d at offset %d has unknown platform code %q; ignored", i, entryOff, code))
			continue
		}
		if p != "" {
			m.locators = append(m.locators, locator{code: code, path: p})
		}
	}
}

// decodeLegacy decodes a Wi2r/Wi2k locator: the specification leaves their
// encoding open, and files hold either UTF-16LE or 8-bit text.
func decodeLegacy(b []byte) string {
	if len(b) >= 2 && b[1] == 0 && b[0] != 0 {
		return decodeUTF16(b, binary.LittleEndian)
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// decodeFileURL turns a MacX "file://host/path" locator into a path.
func decodeFileURL(s string) string {
	rest, ok := strings.CutPrefix(s, "file://")
	if !ok {
		return s
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		rest = rest[i:]
	}
	var b strings.Builder
	for i := 0; i < len(rest); i++ {
		if rest[i] == '%' && i+2 < len(rest) {
			var v byte
			if _, err := fmt.Sscanf(rest[i+1:i+3], "%02x", &v); err == nil {
				b.WriteByte(v)
				i += 2
				continue
			}
		}
		b.WriteByte(rest[i])
	}
	return b.String()
}

// localPath turns a locator path into this OS's separators.
func localPath(p string) string {
	return filepath.FromSlash(strings.ReplaceAll(p, `\`, "/"))
}

// baseName is the last element of a Windows or Unix path.
func baseName(p string) string {
	if i := strings.LastIndexAny(p, `\/`); i >= 0 {
		p = p[i+1:]
	}
	if p == "." || p == ".." {
		return ""
	}
	return p
}

// candidates lists where the parent may be, best first: relative locators
// resolved against the child's folder, absolute locators that make sense on
// this OS, then the base names of all of them in the child's folder.
func (m *Image) candidates(parentName string) []string {
	dir := filepath.Dir(m.path)
	self, _ := filepath.Abs(m.path)
	var out []string
	add := func(p string) {
		p = filepath.Clean(p)
		if a, err := filepath.Abs(p); err == nil && a == self {
			return
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	for _, l := range m.locators {
		if l.code == platW2ru || l.code == platWi2r {
			p := localPath(l.path)
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			add(p)
		}
	}
	for _, l := range m.locators {
		if l.code == platW2ku || l.code == platWi2k || l.code == platMacX {
			if p := localPath(l.path); filepath.IsAbs(p) {
				add(p)
			}
		}
	}
	names := make([]string, 0, len(m.locators)+1)
	for _, l := range m.locators {
		names = append(names, l.path)
	}
	names = append(names, parentName)
	for _, n := range names {
		if b := baseName(n); b != "" {
			add(filepath.Join(dir, b))
		}
	}
	return out
}

// openParent reads the parent link of a differencing header and opens the
// parent through parents.
func (m *Image) openParent(ctx context.Context, h []byte, hoff int64, parents disk.ParentOpener) error {
	copy(m.parentUID[:], h[hParentUID:])
	name := decodeUTF16(h[hParentName:hLocators], binary.BigEndian)
	m.readLocators(h, hoff)
	for _, code := range []string{platW2ru, platWi2r, platW2ku, platWi2k, platMacX} {
		if i := slices.IndexFunc(m.locators, func(l locator) bool { return l.code == code }); i >= 0 {
			m.parentPath = m.locators[i].path
			break
		}
	}
	if m.parentPath == "" {
		m.parentPath = name
	}
	want := uuidString(m.parentUID)
	cands := m.candidates(name)
	// Paths are quoted by hand: %q would double every Windows backslash.
	var stored []string
	for _, l := range m.locators {
		stored = append(stored, l.code+` "`+l.path+`"`)
	}
	if name != "" {
		stored = append(stored, `name "`+name+`"`)
	}
	desc := strings.Join(stored, ", ")
	if desc == "" {
		desc = "none"
	}
	if parents == nil || len(cands) == 0 {
		return fmt.Errorf("%s: differencing VHD's parent %s cannot be opened (locators: %s; candidates: %s): %w", m.path, want, desc, quoteList(cands), disk.ErrParentNotFound)
	}
	p, err := parents(ctx, cands)
	if err != nil {
		if errors.Is(err, disk.ErrParentNotFound) {
			return fmt.Errorf("%s: differencing VHD's parent %s not found (locators: %s; tried %s): %w", m.path, want, desc, quoteList(cands), err)
		}
		return fmt.Errorf("%s: opening parent (locators: %s): %w", m.path, desc, err)
	}
	if p == nil {
		return fmt.Errorf("%s: differencing VHD's parent %s not found (tried %s): %w", m.path, want, quoteList(cands), disk.ErrParentNotFound)
	}
	if got := p.Info().ID; got != want {
		where := "one of " + quoteList(cands)
		if pi, ok := p.(*Image); ok {
			where = pi.path
		}
		p.Close()
		return fmt.Errorf("%s records parent ID %s, but the parent found at %s has ID %s: %w", m.path, want, where, got, disk.ErrParentMismatch)
	}
	m.parent = p
	return nil
}

func quoteList(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return `"` + strings.Join(l, `", "`) + `"`
}

// Format implements disk.Image.
func (m *Image) Format() disk.Format { return disk.VHD }

// Size implements disk.Image.
func (m *Image) Size() int64 { return m.size }

// Parent implements disk.Image.
func (m *Image) Parent() disk.Image { return m.parent }

// Path is the file the image was opened from.
func (m *Image) Path() string { return m.path }

// Warnings lists problems that did not stop the image from opening, such as
// a damaged end footer replaced by the copy at offset 0.
func (m *Image) Warnings() []string { return slices.Clone(m.warnings) }

// Info implements disk.Image.
func (m *Image) Info() disk.Info {
	in := disk.Info{
		Format:      disk.VHD,
		Size:        m.size,
		ID:          uuidString(m.foot.uid),
		ClusterSize: m.blockSize,
		Subformat:   m.sub,
	}
	if m.foot.diskType == diskDiff {
		in.ParentID = uuidString(m.parentUID)
		in.ParentPath = m.parentPath
	}
	return in
}

// Close closes the file and the parent chain.
func (m *Image) Close() error {
	var errs []error
	if m.parent != nil {
		errs = append(errs, m.parent.Close())
		m.parent = nil
	}
	if m.file != nil {
		errs = append(errs, m.file.Close())
		m.file = nil
	}
	return errors.Join(errs...)
}

// ReadAt implements io.ReaderAt over the guest-visible bytes.
func (m *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d", m.path, off)
	}
	if off >= m.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > m.size-off {
		p = p[:m.size-off]
		eof = io.EOF
	}
	if m.foot.diskType == diskFixed {
		if err := readFull(m.r, p, off); err != nil {
			return 0, disk.Errorf(m.path, off, "reading data: %v", err)
		}
		return len(p), eof
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		b := pos / m.blockSize
		in := pos % m.blockSize
		n := int(min(int64(len(p)-done), m.blockSize-in))
		if err := m.readBlock(p[done:done+n], b, in); err != nil {
			return done, err
		}
		done += n
	}
	return done, eof
}

// readBlock fills buf from block b starting at byte in of the block.
func (m *Image) readBlock(buf []byte, b, in int64) error {
	e := m.bat[b]
	base := b * m.blockSize
	if e == batUnused {
		return m.readBelow(buf, base+in)
	}
	bm, first, err := m.bitmap(b, in, int64(len(buf)))
	if err != nil {
		return err
	}
	data := int64(e)*sectorSize + m.bitmapSize
	pos, end := in, in+int64(len(buf))
	for pos < end {
		set := bitSet(bm, pos/sectorSize-first)
		next := m.runEnd(bm, first, pos, end, set)
		chunk := buf[pos-in : next-in]
		if set {
			if err := readFull(m.r, chunk, data+pos); err != nil {
				return disk.Errorf(m.path, data+pos, "reading block %d: %v", b, err)
			}
		} else if err := m.readBelow(chunk, base+pos); err != nil {
			return err
		}
		pos = next
	}
	return nil
}

// bitmap reads the bitmap bytes of block b that cover [in, in+n) of the
// block; first is the block sector number of the first bit returned.
func (m *Image) bitmap(b, in, n int64) ([]byte, int64, error) {
	s0 := in / sectorSize
	s1 := (in + n + sectorSize - 1) / sectorSize
	b0, b1 := s0/8, (s1+7)/8
	bm := make([]byte, b1-b0)
	off := int64(m.bat[b])*sectorSize + b0
	if err := readFull(m.r, bm, off); err != nil {
		return nil, 0, disk.Errorf(m.path, off, "reading sector bitmap of block %d: %v", b, err)
	}
	return bm, b0 * 8, nil
}

// bitSet reports bit i of a bitmap whose sectors are numbered from the most
// significant bit of each byte, as the specification lays them out.
func bitSet(bm []byte, i int64) bool { return bm[i/8]&(0x80>>(i%8)) != 0 }

// runEnd is the first block offset after pos, at most end, where the bitmap
// bit differs from set.
func (m *Image) runEnd(bm []byte, first, pos, end int64, set bool) int64 {
	s := pos/sectorSize + 1
	for ; s*sectorSize < end; s++ {
		i := s - first
		// Skip whole bytes that agree, which is the common case.
		if i%8 == 0 && (s+8)*sectorSize <= end {
			if v := bm[i/8]; (set && v == 0xFF) || (!set && v == 0) {
				s += 7
				continue
			}
		}
		if bitSet(bm, i) != set {
			return s * sectorSize
		}
	}
	return end
}

// readBelow fills buf for a range this layer does not hold: from the parent,
// or zeros.
func (m *Image) readBelow(buf []byte, off int64) error {
	if m.parent == nil {
		clear(buf)
		return nil
	}
	ps := m.parent.Size()
	k := int64(0)
	if off < ps {
		k = min(int64(len(buf)), ps-off)
		n, err := m.parent.ReadAt(buf[:k], off)
		if int64(n) != k {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("%s: reading parent at %d: %w", m.path, off, err)
		}
	}
	clear(buf[k:])
	return nil
}

// Extents implements disk.Image: Data where this layer holds sectors,
// Unallocated elsewhere. The range is clamped to the disk.
func (m *Image) Extents(ctx context.Context, off, length int64) ([]disk.Extent, error) {
	off, length = disk.ClampRange(off, length, m.size)
	if length == 0 {
		return nil, nil
	}
	if m.foot.diskType == diskFixed {
		return []disk.Extent{{Offset: off, Length: length, Kind: disk.Data}}, nil
	}
	var out []disk.Extent
	end := off + length
	for pos, i := off, 0; pos < end; i++ {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		b := pos / m.blockSize
		in := pos % m.blockSize
		n := min(end-pos, m.blockSize-in)
		if m.bat[b] == batUnused {
			out = disk.AppendExtent(out, disk.Extent{Offset: pos, Length: n, Kind: disk.Unallocated})
			pos += n
			continue
		}
		bm, first, err := m.bitmap(b, in, n)
		if err != nil {
			return nil, err
		}
		base := b * m.blockSize
		for p := in; p < in+n; {
			set := bitSet(bm, p/sectorSize-first)
			next := m.runEnd(bm, first, p, in+n, set)
			k := disk.Unallocated
			if set {
				k = disk.Data
			}
			out = disk.AppendExtent(out, disk.Extent{Offset: base + p, Length: next - p, Kind: k})
			p = next
		}
		pos += n
	}
	return out, nil
}

// readFull reads len(b) bytes at off, treating a short read as an error.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}
