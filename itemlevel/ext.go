package itemlevel

import (
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"time"
)

// A read-only ext2/ext3/ext4 reader: superblock, group descriptors
// (32/64-bit, meta_bg), inodes, extent trees (with unwritten extents read
// as zeros), indirect block maps, inline data, linear and htree
// directories (read linearly), fast and slow symlinks. The journal is not
// replayed. Every on-disk number is checked before it is used, so a
// corrupt image gives an error, never a hang or a huge allocation.

const (
	extIncompatCompression = 0x1
	extIncompatFiletype    = 0x2
	extIncompatRecover     = 0x4
	extIncompatJournalDev  = 0x8
	extIncompatMetaBG      = 0x10
	extIncompat64Bit       = 0x80
	extIncompatDirData     = 0x1000

	extROCompatSparseSuper = 0x1
	extROCompatHugeFile    = 0x8

	extFlagEncrypt = 0x800
	extFlagHuge    = 0x40000
	extFlagExtents = 0x80000
	extFlagInline  = 0x10000000

	extMaxDirBytes = 1 << 30 // a directory larger than this is refused
	extMaxDepth    = 5       // extent tree depth limit (the kernel's)
)

type extFS struct {
	r           io.ReaderAt // the volume
	size        int64
	bs          int64
	blocks      uint64
	firstData   uint64
	perGroup    uint64 // blocks per group
	inodesPG    uint64
	inodes      uint64
	inodeSize   int64
	descSize    int64
	groups      uint64
	incompat    uint32
	roCompat    uint32
	firstMetaBG uint64

	itable map[uint64]uint64 // group → inode table block
}

func openExt(r *io.SectionReader, vol Volume) (FS, error) {
	e, err := newExt(r, r.Size())
	if err != nil {
		return nil, err
	}
	t := &treeFS{vol: vol, drv: e}
	if e.incompat&extIncompatRecover != 0 {
		t.warnings = append(t.warnings, "the journal needs recovery and is not replayed: changes made shortly before the backup may be missing")
	}
	return t, nil
}

func newExt(r io.ReaderAt, size int64) (*extFS, error) {
	sb := make([]byte, 1024)
	if err := readFull(r, sb, 1024); err != nil {
		return nil, fmt.Errorf("read ext superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[56:]) != 0xEF53 {
		return nil, fmt.Errorf("%w: no ext superblock magic", ErrCorrupt)
	}
	e := &extFS{r: r, size: size, itable: map[uint64]uint64{}}
	logBS := le.Uint32(sb[24:])
	if logBS > 6 {
		return nil, fmt.Errorf("%w: ext block size 2^(10+%d)", ErrCorrupt, logBS)
	}
	e.bs = 1024 << logBS
	e.inodes = uint64(le.Uint32(sb[0:]))
	e.blocks = uint64(le.Uint32(sb[4:]))
	e.firstData = uint64(le.Uint32(sb[20:]))
	e.perGroup = uint64(le.Uint32(sb[32:]))
	e.inodesPG = uint64(le.Uint32(sb[40:]))
	e.incompat = le.Uint32(sb[96:])
	e.roCompat = le.Uint32(sb[100:])
	e.inodeSize = 128
	if le.Uint32(sb[76:]) >= 1 {
		e.inodeSize = int64(le.Uint16(sb[88:]))
	}
	e.descSize = 32
	if e.incompat&extIncompat64Bit != 0 {
		e.blocks |= uint64(le.Uint32(sb[0x150:])) << 32
		e.descSize = int64(le.Uint16(sb[0xFE:]))
	}
	e.firstMetaBG = uint64(le.Uint32(sb[0x104:]))

	switch {
	case e.incompat&extIncompatJournalDev != 0:
		return nil, fmt.Errorf("%w: this is an external ext journal, not a filesystem", ErrUnsupported)
	case e.incompat&extIncompatCompression != 0:
		return nil, fmt.Errorf("%w: ext compression", ErrUnsupported)
	case e.incompat&extIncompatDirData != 0:
		return nil, fmt.Errorf("%w: ext dirdata (Lustre)", ErrUnsupported)
	case e.inodeSize < 128 || e.inodeSize > e.bs || e.inodeSize&(e.inodeSize-1) != 0:
		return nil, fmt.Errorf("%w: ext inode size %d", ErrCorrupt, e.inodeSize)
	case e.descSize < 32 || e.descSize > 1024 || e.descSize&(e.descSize-1) != 0:
		return nil, fmt.Errorf("%w: ext group descriptor size %d", ErrCorrupt, e.descSize)
	case e.perGroup == 0 || e.perGroup > 8*uint64(e.bs):
		return nil, fmt.Errorf("%w: ext blocks per group %d", ErrCorrupt, e.perGroup)
	case e.inodesPG == 0 || e.inodesPG > 8*uint64(e.bs):
		return nil, fmt.Errorf("%w: ext inodes per group %d", ErrCorrupt, e.inodesPG)
	case e.blocks <= e.firstData:
		return nil, fmt.Errorf("%w: ext block count %d", ErrCorrupt, e.blocks)
	case e.bs == 1024 && e.firstData != 1, e.bs > 1024 && e.firstData != 0:
		return nil, fmt.Errorf("%w: ext first data block %d with %d-byte blocks", ErrCorrupt, e.firstData, e.bs)
	}
	e.groups = (e.blocks - e.firstData + e.perGroup - 1) / e.perGroup
	if e.inodes == 0 || e.inodes > e.groups*e.inodesPG {
		return nil, fmt.Errorf("%w: ext inode count %d for %d groups of %d", ErrCorrupt, e.inodes, e.groups, e.inodesPG)
	}
	return e, nil
}

// hasSuper reports whether group g holds a superblock backup (and so, for
// meta_bg, its descriptor block follows it).
func (e *extFS) hasSuper(g uint64) bool {
	if g <= 1 || e.roCompat&extROCompatSparseSuper == 0 {
		return true
	}
	for _, b := range []uint64{3, 5, 7} {
		p := b
		for p < g {
			p *= b
		}
		if p == g {
			return true
		}
	}
	return false
}

// inodeTable returns the first block of group g's inode table.
func (e *extFS) inodeTable(g uint64) (uint64, error) {
	if b, ok := e.itable[g]; ok {
		return b, nil
	}
	perBlock := uint64(e.bs / e.descSize)
	var off int64
	if e.incompat&extIncompatMetaBG != 0 && g/perBlock >= e.firstMetaBG {
		first := g / perBlock * perBlock
		blk := e.firstData + first*e.perGroup
		if e.hasSuper(first) {
			blk++
		}
		off = int64(blk)*e.bs + int64(g%perBlock)*e.descSize
	} else {
		off = int64(e.firstData+1)*e.bs + int64(g)*e.descSize
	}
	d := make([]byte, e.descSize)
	if err := readFull(e.r, d, off); err != nil {
		return 0, fmt.Errorf("read group descriptor %d at byte %d: %w", g, off, err)
	}
	b := uint64(binary.LittleEndian.Uint32(d[8:]))
	if e.descSize >= 64 {
		b |= uint64(binary.LittleEndian.Uint32(d[0x28:])) << 32
	}
	if b == 0 || b >= e.blocks {
		return 0, fmt.Errorf("%w: group %d inode table at block %d", ErrCorrupt, g, b)
	}
	if len(e.itable) > 65536 {
		clear(e.itable)
	}
	e.itable[g] = b
	return b, nil
}

type extInode struct {
	num   uint64
	raw   []byte
	mode  uint16
	size  uint64
	flags uint32
}

func (e *extFS) readInode(num uint64) (*extInode, error) {
	if num == 0 || num > e.inodes {
		return nil, fmt.Errorf("%w: inode number %d out of range", ErrCorrupt, num)
	}
	g, idx := (num-1)/e.inodesPG, (num-1)%e.inodesPG
	tbl, err := e.inodeTable(g)
	if err != nil {
		return nil, err
	}
	off := int64(tbl)*e.bs + int64(idx)*e.inodeSize
	raw := make([]byte, e.inodeSize)
	if err := readFull(e.r, raw, off); err != nil {
		return nil, fmt.Errorf("read inode %d at byte %d: %w", num, off, err)
	}
	le := binary.LittleEndian
	in := &extInode{
		num:   num,
		raw:   raw,
		mode:  le.Uint16(raw[0:]),
		size:  uint64(le.Uint32(raw[4:])) | uint64(le.Uint32(raw[108:]))<<32,
		flags: le.Uint32(raw[32:]),
	}
	if in.size > 1<<60 {
		return nil, fmt.Errorf("%w: inode %d size %d", ErrCorrupt, num, in.size)
	}
	return in, nil
}

func (in *extInode) extraSize() int64 {
	if len(in.raw) <= 128 {
		return 0
	}
	x := int64(binary.LittleEndian.Uint16(in.raw[128:]))
	if 128+x > int64(len(in.raw)) {
		return 0
	}
	return x
}

func (in *extInode) mtime() time.Time {
	sec := int64(int32(binary.LittleEndian.Uint32(in.raw[16:])))
	var nsec int64
	if in.extraSize() >= 12 {
		x := binary.LittleEndian.Uint32(in.raw[0x88:])
		sec += int64(x&3) << 32
		nsec = int64(x >> 2)
		if nsec > 999999999 {
			nsec = 0
		}
	}
	return time.Unix(sec, nsec).UTC()
}

func (in *extInode) fileMode() fs.FileMode {
	m := fs.FileMode(in.mode & 0o777)
	if in.mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if in.mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if in.mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	switch in.mode & 0xF000 {
	case 0x4000:
		m |= fs.ModeDir
	case 0x8000:
	case 0xA000:
		m |= fs.ModeSymlink
	case 0x2000:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case 0x6000:
		m |= fs.ModeDevice
	case 0x1000:
		m |= fs.ModeNamedPipe
	case 0xC000:
		m |= fs.ModeSocket
	default:
		m |= fs.ModeIrregular
	}
	return m
}

// inlineData returns the bytes of an inline-data inode: i_block followed by
// the value of the in-inode extended attribute system.data.
func (in *extInode) inlineData() ([]byte, error) {
	data := append([]byte(nil), in.raw[40:100]...)
	le := binary.LittleEndian
	base := 128 + in.extraSize()
	if len(in.raw) > 128 && base+4 <= int64(len(in.raw)) && le.Uint32(in.raw[base:]) == 0xEA020000 {
		entries := base + 4
		p := entries
		for p+16 <= int64(len(in.raw)) && le.Uint32(in.raw[p:]) != 0 {
			nameLen := int64(in.raw[p])
			index := in.raw[p+1]
			voff := int64(le.Uint16(in.raw[p+2:]))
			vsize := int64(le.Uint32(in.raw[p+8:]))
			if p+16+nameLen > int64(len(in.raw)) {
				break
			}
			if index == 7 && string(in.raw[p+16:p+16+nameLen]) == "data" {
				if entries+voff+vsize > int64(len(in.raw)) {
					return nil, fmt.Errorf("%w: inode %d inline data attribute out of bounds", ErrCorrupt, in.num)
				}
				data = append(data, in.raw[entries+voff:entries+voff+vsize]...)
				break
			}
			p += (16 + nameLen + 3) &^ 3
		}
	}
	if uint64(len(data)) < in.size {
		return nil, fmt.Errorf("%w: inode %d has %d bytes of inline data, size %d", ErrCorrupt, in.num, len(data), in.size)
	}
	return data[:in.size], nil
}

// extent maps count blocks from logical block logical to physical.
type extent struct {
	logical, physical, count uint64
	unwritten                bool
}

// mapping returns the sorted extents of a file, an extent tree's or an
// indirect map's; blocks past the end of the file are left out.
func (e *extFS) mapping(in *extInode) ([]extent, error) {
	nblocks := (in.size + uint64(e.bs) - 1) / uint64(e.bs)
	var out []extent
	var err error
	if in.flags&extFlagExtents != 0 {
		seen := map[uint64]bool{}
		err = e.walkExtents(in, in.raw[40:100], extMaxDepth+1, nblocks, seen, &out)
	} else {
		out, err = e.blockMap(in, nblocks)
	}
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(a, b int) bool { return out[a].logical < out[b].logical })
	for i := 1; i < len(out); i++ {
		if out[i].logical < out[i-1].logical+out[i-1].count {
			return nil, fmt.Errorf("%w: inode %d has overlapping extents at block %d", ErrCorrupt, in.num, out[i].logical)
		}
	}
	return out, nil
}

func (e *extFS) walkExtents(in *extInode, node []byte, maxDepth int, nblocks uint64, seen map[uint64]bool, out *[]extent) error {
	le := binary.LittleEndian
	if len(node) < 12 || le.Uint16(node[0:]) != 0xF30A {
		return fmt.Errorf("%w: inode %d: bad extent header", ErrCorrupt, in.num)
	}
	entries := int(le.Uint16(node[2:]))
	depth := int(le.Uint16(node[6:]))
	if 12+12*entries > len(node) {
		return fmt.Errorf("%w: inode %d: %d extent entries do not fit the node", ErrCorrupt, in.num, entries)
	}
	if depth >= maxDepth {
		return fmt.Errorf("%w: inode %d: extent tree depth %d", ErrCorrupt, in.num, depth)
	}
	for i := 0; i < entries; i++ {
		x := node[12+12*i : 24+12*i]
		logical := uint64(le.Uint32(x[0:]))
		if depth == 0 {
			n := uint64(le.Uint16(x[4:]))
			unwritten := false
			if n > 32768 {
				n -= 32768
				unwritten = true
			}
			phys := uint64(le.Uint16(x[6:]))<<32 | uint64(le.Uint32(x[8:]))
			if n == 0 || logical >= nblocks {
				continue
			}
			if logical+n > nblocks {
				n = nblocks - logical
			}
			if !unwritten && (phys == 0 || phys+n > e.blocks) {
				return fmt.Errorf("%w: inode %d: extent at block %d points to blocks %d+%d outside the filesystem", ErrCorrupt, in.num, logical, phys, n)
			}
			if uint64(len(*out)) >= min(nblocks, e.blocks) {
				return fmt.Errorf("%w: inode %d: more extents than blocks", ErrCorrupt, in.num)
			}
			*out = append(*out, extent{logical: logical, physical: phys, count: n, unwritten: unwritten})
			continue
		}
		child := uint64(le.Uint16(x[8:]))<<32 | uint64(le.Uint32(x[4:]))
		if child == 0 || child >= e.blocks || seen[child] {
			return fmt.Errorf("%w: inode %d: extent index points to block %d", ErrCorrupt, in.num, child)
		}
		seen[child] = true
		b := make([]byte, e.bs)
		if err := readFull(e.r, b, int64(child)*e.bs); err != nil {
			return fmt.Errorf("inode %d: read extent block %d: %w", in.num, child, err)
		}
		if int(le.Uint16(b[6:])) != depth-1 {
			return fmt.Errorf("%w: inode %d: extent block %d has depth %d under depth %d", ErrCorrupt, in.num, child, le.Uint16(b[6:]), depth)
		}
		if err := e.walkExtents(in, b, depth, nblocks, seen, out); err != nil {
			return err
		}
	}
	return nil
}

// blockMap reads an ext2/ext3 indirect block map.
func (e *extFS) blockMap(in *extInode, nblocks uint64) ([]extent, error) {
	le := binary.LittleEndian
	per := uint64(e.bs / 4)
	var out []extent
	var mapped uint64
	seen := map[uint64]bool{}
	add := func(logical, phys uint64) error {
		if phys == 0 || logical >= nblocks {
			return nil
		}
		if phys >= e.blocks {
			return fmt.Errorf("%w: inode %d: block %d maps to %d outside the filesystem", ErrCorrupt, in.num, logical, phys)
		}
		if mapped++; mapped > e.blocks {
			return fmt.Errorf("%w: inode %d maps more blocks than the filesystem has", ErrCorrupt, in.num)
		}
		if n := len(out); n > 0 && out[n-1].logical+out[n-1].count == logical && out[n-1].physical+out[n-1].count == phys {
			out[n-1].count++
			return nil
		}
		out = append(out, extent{logical: logical, physical: phys, count: 1})
		return nil
	}
	// walk maps the blocks under an indirect block of the given level
	// (0 = data block) covering logical blocks from first.
	var walk func(ptr uint64, level int, first uint64) error
	walk = func(ptr uint64, level int, first uint64) error {
		if level == 0 {
			return add(first, ptr)
		}
		if ptr == 0 || first >= nblocks {
			return nil
		}
		if ptr >= e.blocks || seen[ptr] {
			return fmt.Errorf("%w: inode %d: indirect block %d outside the filesystem or used twice", ErrCorrupt, in.num, ptr)
		}
		seen[ptr] = true
		b := make([]byte, e.bs)
		if err := readFull(e.r, b, int64(ptr)*e.bs); err != nil {
			return fmt.Errorf("inode %d: read indirect block %d: %w", in.num, ptr, err)
		}
		span := uint64(1)
		for i := 1; i < level; i++ {
			span *= per
		}
		for i := uint64(0); i < per; i++ {
			start := first + i*span
			if start >= nblocks {
				break
			}
			if err := walk(uint64(le.Uint32(b[4*i:])), level-1, start); err != nil {
				return err
			}
		}
		return nil
	}
	ptr := func(i int) uint64 { return uint64(le.Uint32(in.raw[40+4*i:])) }
	for i := 0; i < 12; i++ {
		if err := add(uint64(i), ptr(i)); err != nil {
			return nil, err
		}
	}
	first := uint64(12)
	span := per
	for level := 1; level <= 3; level++ {
		if err := walk(ptr(11+level), level, first); err != nil {
			return nil, err
		}
		first += span
		span *= per
	}
	return out, nil
}

// extReader reads a file's bytes through its extents; holes and unwritten
// extents read as zeros.
type extReader struct {
	e    *extFS
	ext  []extent
	size int64
}

func (x *extReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= x.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > x.size-off {
		p = p[:x.size-off]
	}
	bs := x.e.bs
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		blk := uint64(pos / bs)
		// first extent ending after blk
		i := sort.Search(len(x.ext), func(i int) bool { return x.ext[i].logical+x.ext[i].count > blk })
		var n int64
		if i < len(x.ext) && x.ext[i].logical <= blk {
			ex := x.ext[i]
			end := int64(ex.logical+ex.count) * bs
			n = min(int64(len(p)-done), end-pos)
			if ex.unwritten {
				clear(p[done : done+int(n)])
			} else {
				src := int64(ex.physical)*bs + (pos - int64(ex.logical)*bs)
				if err := readFull(x.e.r, p[done:done+int(n)], src); err != nil {
					return done, fmt.Errorf("read block %d: %w", ex.physical+uint64(pos/bs)-ex.logical, err)
				}
			}
		} else {
			n = int64(len(p) - done)
			if i < len(x.ext) {
				n = min(n, int64(x.ext[i].logical)*bs-pos)
			}
			clear(p[done : done+int(n)])
		}
		done += int(n)
	}
	if done < want {
		return done, io.EOF
	}
	return done, nil
}

// data returns a reader over an inode's bytes.
func (e *extFS) data(in *extInode) (io.ReaderAt, error) {
	if in.flags&extFlagInline != 0 {
		b, err := in.inlineData()
		if err != nil {
			return nil, err
		}
		return bytesReaderAt(b), nil
	}
	m, err := e.mapping(in)
	if err != nil {
		return nil, err
	}
	return &extReader{e: e, ext: m, size: int64(in.size)}, nil
}

type bytesReaderAt []byte

func (b bytesReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// ---- driver ----

func (e *extFS) node(num uint64, name string) (node, error) {
	in, err := e.readInode(num)
	if err != nil {
		return node{}, err
	}
	n := node{Entry: Entry{
		Name:    name,
		Size:    int64(in.size),
		ModTime: in.mtime(),
		Mode:    in.fileMode(),
		ID:      num,
	}, ref: in}
	n.IsDir = n.Mode.IsDir()
	if n.IsDir {
		n.Size = 0
	}
	if n.Mode&fs.ModeSymlink != 0 {
		n.IsSymlink = true
		n.LinkTarget, _ = e.readLink(in)
	}
	return n, nil
}

func (e *extFS) readLink(in *extInode) (string, error) {
	if in.size > 4096 {
		return "", fmt.Errorf("%w: symlink of %d bytes", ErrCorrupt, in.size)
	}
	le := binary.LittleEndian
	blocks := uint64(le.Uint32(in.raw[28:]))
	acl := le.Uint32(in.raw[104:])
	fast := blocks == 0 || (acl != 0 && blocks == uint64(e.bs/512))
	if in.flags&(extFlagExtents|extFlagInline) == 0 && fast && in.size < 60 {
		return string(in.raw[40 : 40+in.size]), nil
	}
	r, err := e.data(in)
	if err != nil {
		return "", err
	}
	b := make([]byte, in.size)
	if err := readFull(r, b, 0); err != nil && in.size > 0 {
		return "", err
	}
	return string(b), nil
}

func (e *extFS) root() (node, error) {
	n, err := e.node(2, "")
	if err != nil {
		return node{}, err
	}
	if !n.IsDir {
		return node{}, fmt.Errorf("%w: root inode is not a directory", ErrCorrupt)
	}
	return n, nil
}

type extDirent struct {
	ino  uint64
	name string
}

// dirents reads the names of a directory.
func (e *extFS) dirents(in *extInode) ([]extDirent, error) {
	if in.size > extMaxDirBytes {
		return nil, fmt.Errorf("%w: directory of %d bytes", ErrCorrupt, in.size)
	}
	var out []extDirent
	if in.flags&extFlagInline != 0 {
		b, err := in.inlineData()
		if err != nil {
			return nil, err
		}
		if len(b) < 4 {
			return nil, fmt.Errorf("%w: inline directory of %d bytes", ErrCorrupt, len(b))
		}
		// 4 bytes of parent inode, the rest of i_block, then the
		// attribute's part, each a run of entries.
		first := min(len(b), 60)
		if err := e.parseDirBlock(in, b[4:first], &out); err != nil {
			return nil, err
		}
		if len(b) > 60 {
			if err := e.parseDirBlock(in, b[60:], &out); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	m, err := e.mapping(in)
	if err != nil {
		return nil, err
	}
	// Only mapped blocks are read: a hole in a directory holds nothing.
	blk := make([]byte, e.bs)
	for _, ex := range m {
		if ex.unwritten {
			continue
		}
		for i := uint64(0); i < ex.count; i++ {
			off := int64(ex.logical+i) * e.bs
			b := blk[:min(e.bs, int64(in.size)-off)]
			if err := readFull(e.r, b, int64(ex.physical+i)*e.bs); err != nil {
				return nil, fmt.Errorf("directory inode %d: read block %d: %w", in.num, ex.physical+i, err)
			}
			if err := e.parseDirBlock(in, b, &out); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func (e *extFS) parseDirBlock(in *extInode, b []byte, out *[]extDirent) error {
	le := binary.LittleEndian
	for p := 0; p+8 <= len(b); {
		ino := uint64(le.Uint32(b[p:]))
		rec := int(le.Uint16(b[p+4:]))
		if e.bs >= 65536 && (rec == 65535 || rec == 0) {
			rec = 65536
		}
		nameLen := int(b[p+6])
		if e.incompat&extIncompatFiletype == 0 {
			nameLen = int(le.Uint16(b[p+6:]))
		}
		if rec < 8 || rec%4 != 0 || p+rec > len(b) || 8+nameLen > rec {
			if ino == 0 && rec == 0 && allZero(b[p:]) {
				return nil // an unused, zeroed tail
			}
			return fmt.Errorf("%w: directory inode %d: bad entry at offset %d (record length %d, name length %d)", ErrCorrupt, in.num, p, rec, nameLen)
		}
		if ino != 0 && nameLen > 0 {
			name := string(b[p+8 : p+8+nameLen])
			if name != "." && name != ".." {
				*out = append(*out, extDirent{ino: ino, name: name})
			}
		}
		p += rec
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (e *extFS) list(dir node) ([]node, error) {
	in := dir.ref.(*extInode)
	ds, err := e.dirents(in)
	if err != nil {
		return nil, err
	}
	out := make([]node, 0, len(ds))
	for _, d := range ds {
		n, err := e.node(d.ino, d.name)
		if err != nil {
			return nil, fmt.Errorf("entry %q: %w", d.name, err)
		}
		out = append(out, n)
	}
	return out, nil
}

func (e *extFS) open(n node) (File, error) {
	in := n.ref.(*extInode)
	if in.flags&extFlagEncrypt != 0 {
		return nil, fmt.Errorf("%w: file is encrypted (fscrypt)", ErrUnsupported)
	}
	r, err := e.data(in)
	if err != nil {
		return nil, err
	}
	return &readerAtFile{r: r, size: int64(in.size)}, nil
}
