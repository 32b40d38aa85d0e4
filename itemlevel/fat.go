package itemlevel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
	"time"
	"unicode/utf16"
)

// A read-only FAT12/FAT16/FAT32 reader with VFAT long names. The FAT is
// read on demand through a small cache; every cluster chain is bounded by
// the length it can legitimately have, so a looping chain is an error.

type fatBPB struct {
	kind        int   // 12, 16 or 32
	bps         int64 // bytes per sector
	clusterSize int64
	fatStart    int64  // byte offset of the first FAT
	fatBytes    int64  // bytes of one FAT
	rootStart   int64  // FAT12/16: byte offset of the fixed root directory
	rootBytes   int64  // FAT12/16: its length
	rootCluster uint32 // FAT32
	dataStart   int64  // byte offset of cluster 2
	clusters    uint32 // data clusters (numbered 2 .. clusters+1)
	label       string
}

var errNotFAT = errors.New("not a FAT boot sector")

// parseBPB checks a boot sector's BIOS parameter block the way Linux does
// and derives the layout. length is the volume's size in bytes.
func parseBPB(b []byte, length int64) (fatBPB, error) {
	if len(b) < 512 || (b[0] != 0xEB && b[0] != 0xE9) {
		return fatBPB{}, errNotFAT
	}
	le := binary.LittleEndian
	bps := int64(le.Uint16(b[11:]))
	spc := int64(b[13])
	reserved := int64(le.Uint16(b[14:]))
	nFATs := int64(b[16])
	rootEnt := int64(le.Uint16(b[17:]))
	totSec := int64(le.Uint16(b[19:]))
	media := b[21]
	fatSz := int64(le.Uint16(b[22:]))
	if totSec == 0 {
		totSec = int64(le.Uint32(b[32:]))
	}
	fat32 := fatSz == 0
	if fat32 {
		fatSz = int64(le.Uint32(b[36:]))
	}
	switch {
	case bps != 512 && bps != 1024 && bps != 2048 && bps != 4096,
		spc == 0 || spc&(spc-1) != 0 || bps*spc > 256<<10,
		reserved == 0, nFATs == 0 || nFATs > 4,
		media != 0xF0 && media < 0xF8,
		totSec == 0, fatSz == 0:
		return fatBPB{}, errNotFAT
	}
	p := fatBPB{bps: bps, clusterSize: bps * spc}
	rootSectors := (rootEnt*32 + bps - 1) / bps
	p.fatStart = reserved * bps
	p.fatBytes = fatSz * bps
	firstData := reserved + nFATs*fatSz + rootSectors
	if firstData >= totSec {
		return fatBPB{}, errNotFAT
	}
	p.rootStart = (reserved + nFATs*fatSz) * bps
	p.rootBytes = rootEnt * 32
	p.dataStart = firstData * bps
	clusters := (totSec - firstData) / spc
	switch {
	case fat32:
		p.kind = 32
		if rootEnt != 0 {
			return fatBPB{}, errNotFAT
		}
		p.rootCluster = le.Uint32(b[44:])
		if b[66] == 0x29 {
			p.label = cString(b[71:82])
		}
	case clusters < 4085:
		p.kind = 12
	default:
		p.kind = 16
	}
	if p.kind != 32 && b[38] == 0x29 {
		p.label = cString(b[43:54])
	}
	if p.label == "NO NAME" {
		p.label = ""
	}
	// The FAT must have an entry for every cluster; like Linux, believe
	// the smaller of the two counts.
	if max := p.fatBytes*8/int64(p.kind) - 2; clusters > max {
		clusters = max
	}
	if clusters <= 0 || clusters > 0x0FFFFFF5 {
		return fatBPB{}, errNotFAT
	}
	p.clusters = uint32(clusters)
	if p.kind == 32 && (p.rootCluster < 2 || p.rootCluster >= p.clusters+2) {
		return fatBPB{}, fmt.Errorf("%w: FAT32 root cluster %d", ErrCorrupt, p.rootCluster)
	}
	_ = length
	return p, nil
}

type fatFS struct {
	r     io.ReaderAt
	p     fatBPB
	cache map[int64][]byte // FAT chunk index → bytes
}

const fatChunk = 64 << 10

func openFAT(r *io.SectionReader, vol Volume) (FS, error) {
	b := make([]byte, 512)
	if err := readFull(r, b, 0); err != nil {
		return nil, fmt.Errorf("read boot sector: %w", err)
	}
	p, err := parseBPB(b, r.Size())
	if err != nil {
		if errors.Is(err, errNotFAT) {
			return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		return nil, err
	}
	f := &fatFS{r: r, p: p, cache: map[int64][]byte{}}
	return &treeFS{vol: vol, drv: f, foldCase: true}, nil
}

// fatBytes reads n bytes of the first FAT at off.
func (f *fatFS) fatBytesAt(off int64, n int) ([]byte, error) {
	out := make([]byte, 0, n)
	for len(out) < n {
		o := off + int64(len(out))
		if o >= f.p.fatBytes {
			return nil, fmt.Errorf("%w: FAT entry beyond the FAT", ErrCorrupt)
		}
		idx := o / fatChunk
		c, ok := f.cache[idx]
		if !ok {
			sz := min(int64(fatChunk), f.p.fatBytes-idx*fatChunk)
			c = make([]byte, sz)
			if err := readFull(f.r, c, f.p.fatStart+idx*fatChunk); err != nil {
				return nil, fmt.Errorf("read FAT at byte %d: %w", f.p.fatStart+idx*fatChunk, err)
			}
			if len(f.cache) >= 64 {
				clear(f.cache)
			}
			f.cache[idx] = c
		}
		k := o - idx*fatChunk
		out = append(out, c[k:min(int64(len(c)), k+int64(n-len(out)))]...)
	}
	return out, nil
}

// next returns the FAT entry of cluster c: the next cluster, or end set
// at the end of the chain.
func (f *fatFS) next(c uint32) (next uint32, end bool, err error) {
	var v uint32
	switch f.p.kind {
	case 12:
		b, err := f.fatBytesAt(int64(c)+int64(c)/2, 2)
		if err != nil {
			return 0, false, err
		}
		v = uint32(binary.LittleEndian.Uint16(b))
		if c&1 == 1 {
			v >>= 4
		} else {
			v &= 0xFFF
		}
		if v >= 0xFF8 {
			return 0, true, nil
		}
		if v == 0xFF7 {
			return 0, false, fmt.Errorf("%w: cluster %d is marked bad", ErrCorrupt, c)
		}
	case 16:
		b, err := f.fatBytesAt(int64(c)*2, 2)
		if err != nil {
			return 0, false, err
		}
		v = uint32(binary.LittleEndian.Uint16(b))
		if v >= 0xFFF8 {
			return 0, true, nil
		}
		if v == 0xFFF7 {
			return 0, false, fmt.Errorf("%w: cluster %d is marked bad", ErrCorrupt, c)
		}
	default:
		b, err := f.fatBytesAt(int64(c)*4, 4)
		if err != nil {
			return 0, false, err
		}
		v = binary.LittleEndian.Uint32(b) & 0x0FFFFFFF
		if v >= 0x0FFFFFF8 {
			return 0, true, nil
		}
		if v == 0x0FFFFFF7 {
			return 0, false, fmt.Errorf("%w: cluster %d is marked bad", ErrCorrupt, c)
		}
	}
	if v < 2 || v >= f.p.clusters+2 {
		return 0, false, fmt.Errorf("%w: cluster %d links to %d", ErrCorrupt, c, v)
	}
	return v, false, nil
}

// fatRun is count clusters from cluster start, contiguous on disk.
type fatRun struct{ start, count uint32 }

// chain follows a cluster chain for at most limit clusters. With exact
// set the chain must have at least limit clusters (a file); otherwise it
// must end within limit (a directory), which also catches loops.
func (f *fatFS) chain(first uint32, limit int64, exact bool) ([]fatRun, error) {
	var runs []fatRun
	if limit == 0 {
		return nil, nil
	}
	c := first
	for n := int64(0); ; {
		if c < 2 || c >= f.p.clusters+2 {
			return nil, fmt.Errorf("%w: cluster %d out of range", ErrCorrupt, c)
		}
		if k := len(runs); k > 0 && runs[k-1].start+runs[k-1].count == c {
			runs[k-1].count++
		} else {
			runs = append(runs, fatRun{start: c, count: 1})
		}
		n++
		if exact && n == limit {
			return runs, checkRuns(runs, first)
		}
		nx, end, err := f.next(c)
		if err != nil {
			return nil, err
		}
		if end {
			if exact {
				return nil, fmt.Errorf("%w: cluster chain from %d ends after %d of %d clusters", ErrCorrupt, first, n, limit)
			}
			return runs, checkRuns(runs, first)
		}
		if n >= limit {
			return nil, fmt.Errorf("%w: cluster chain from %d is longer than %d clusters (a loop?)", ErrCorrupt, first, limit)
		}
		c = nx
	}
}

// checkRuns fails when a chain uses a cluster twice (it loops).
func checkRuns(runs []fatRun, first uint32) error {
	s := append([]fatRun(nil), runs...)
	sort.Slice(s, func(a, b int) bool { return s[a].start < s[b].start })
	for i := 1; i < len(s); i++ {
		if s[i].start < s[i-1].start+s[i-1].count {
			return fmt.Errorf("%w: cluster chain from %d uses cluster %d twice (a loop)", ErrCorrupt, first, s[i].start)
		}
	}
	return nil
}

// fatReader reads the bytes of a chain.
type fatReader struct {
	f    *fatFS
	runs []fatRun
	size int64
}

func (x *fatReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= x.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > x.size-off {
		p = p[:x.size-off]
	}
	cs := x.f.p.clusterSize
	done := 0
	base := int64(0) // file offset of the current run
	for _, r := range x.runs {
		runLen := int64(r.count) * cs
		pos := off + int64(done)
		if done == len(p) {
			break
		}
		if pos >= base+runLen {
			base += runLen
			continue
		}
		n := min(int64(len(p)-done), base+runLen-pos)
		src := x.f.p.dataStart + int64(r.start-2)*cs + (pos - base)
		if err := readFull(x.f.r, p[done:done+int(n)], src); err != nil {
			return done, fmt.Errorf("read cluster data at byte %d: %w", src, err)
		}
		done += int(n)
		base += runLen
	}
	if done < want {
		return done, io.EOF
	}
	return done, nil
}

// ---- directories ----

type fatDir struct {
	cluster uint32
	root    bool
}

func (f *fatFS) root() (node, error) {
	c := uint32(0)
	if f.p.kind == 32 {
		c = f.p.rootCluster
	}
	return node{Entry: Entry{IsDir: true, Mode: fs.ModeDir | 0o755, ID: uint64(c)}, ref: fatDir{cluster: c, root: true}}, nil
}

func (f *fatFS) dirBytes(d fatDir) ([]byte, error) {
	if d.cluster == 0 {
		if f.p.kind == 32 || !d.root {
			return nil, fmt.Errorf("%w: directory without clusters", ErrCorrupt)
		}
		b := make([]byte, f.p.rootBytes)
		if err := readFull(f.r, b, f.p.rootStart); err != nil {
			return nil, fmt.Errorf("read root directory: %w", err)
		}
		return b, nil
	}
	// A directory has at most 65536 entries of 32 bytes.
	limit := (65536*32 + f.p.clusterSize - 1) / f.p.clusterSize
	runs, err := f.chain(d.cluster, limit, false)
	if err != nil {
		return nil, err
	}
	var n int64
	for _, r := range runs {
		n += int64(r.count) * f.p.clusterSize
	}
	b := make([]byte, n)
	rd := &fatReader{f: f, runs: runs, size: n}
	if _, err := rd.ReadAt(b, 0); err != nil {
		return nil, err
	}
	return b, nil
}

func (f *fatFS) list(dir node) ([]node, error) {
	b, err := f.dirBytes(dir.ref.(fatDir))
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	var out []node
	var (
		lfn    [20][13]uint16
		lfnN   int  // parts in the current long name, 0 if none
		expect int  // next part number expected
		sum    byte // checksum the long name parts carry
	)
	for i := 0; i+32 <= len(b); i += 32 {
		e := b[i : i+32]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xE5 {
			lfnN = 0
			continue
		}
		attr := e[11]
		if attr&0x3F == 0x0F {
			seq := int(e[0] & 0x1F)
			switch {
			case e[0]&0x40 != 0 && seq >= 1 && seq <= 20:
				lfnN, expect, sum = seq, seq, e[13]
			case lfnN == 0 || seq != expect || e[13] != sum:
				lfnN = 0
				continue
			}
			for k, o := range [13]int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30} {
				lfn[seq-1][k] = le.Uint16(e[o:])
			}
			expect--
			continue
		}
		longN := lfnN
		lfnN = 0
		if attr&0x08 != 0 { // volume label
			continue
		}
		short := append([]byte(nil), e[:11]...)
		if short[0] == 0x05 {
			short[0] = 0xE5
		}
		base := strings.TrimRight(cp437(short[:8]), " ")
		ext := strings.TrimRight(cp437(short[8:11]), " ")
		if base == "." || base == ".." {
			continue
		}
		if e[12]&0x08 != 0 {
			base = strings.ToLower(base)
		}
		if e[12]&0x10 != 0 {
			ext = strings.ToLower(ext)
		}
		name := base
		if ext != "" {
			name += "." + ext
		}
		if longN > 0 && expect == 0 && shortSum(short) == sum {
			var u []uint16
		parts:
			for k := 0; k < longN; k++ {
				for _, c := range lfn[k] {
					if c == 0 {
						break parts
					}
					u = append(u, c)
				}
			}
			name = string(utf16.Decode(u))
		}
		cluster := uint32(le.Uint16(e[26:]))
		if f.p.kind == 32 {
			cluster |= uint32(le.Uint16(e[20:])) << 16
		}
		n := node{Entry: Entry{
			Name:    name,
			IsDir:   attr&0x10 != 0,
			Size:    int64(le.Uint32(e[28:])),
			ModTime: fatTime(le.Uint16(e[24:]), le.Uint16(e[22:])),
			Mode:    0o644,
			ID:      uint64(cluster),
		}, ref: fatEntry{cluster: cluster}}
		if attr&0x01 != 0 {
			n.Mode = 0o444
		}
		if n.IsDir {
			n.Size = 0
			n.Mode = fs.ModeDir | 0o755
			n.ref = fatDir{cluster: cluster}
		}
		out = append(out, n)
	}
	return out, nil
}

type fatEntry struct{ cluster uint32 }

func (f *fatFS) open(n node) (File, error) {
	fe, ok := n.ref.(fatEntry)
	if !ok {
		return nil, ErrNotRegular
	}
	if n.Size == 0 {
		return &readerAtFile{r: bytesReaderAt(nil), size: 0}, nil
	}
	need := (n.Size + f.p.clusterSize - 1) / f.p.clusterSize
	if need > int64(f.p.clusters) {
		return nil, fmt.Errorf("%w: file of %d bytes is larger than the volume", ErrCorrupt, n.Size)
	}
	runs, err := f.chain(fe.cluster, need, true)
	if err != nil {
		return nil, err
	}
	return &readerAtFile{r: &fatReader{f: f, runs: runs, size: n.Size}, size: n.Size}, nil
}

func shortSum(name []byte) byte {
	var s byte
	for _, c := range name {
		s = (s&1)<<7 + s>>1 + c
	}
	return s
}

// fatTime decodes a FAT date and time. FAT stores the guest's local wall
// clock without a zone; it is read in the host's zone, like Linux does.
func fatTime(d, t uint16) time.Time {
	if d == 0 {
		return time.Time{}
	}
	year, month, day := 1980+int(d>>9), int(d>>5&15), int(d&31)
	h, m, s := int(t>>11), int(t>>5&63), int(t&31)*2
	if month < 1 || month > 12 || day < 1 || day > 31 || h > 23 || m > 59 || s > 59 {
		return time.Time{}
	}
	return time.Date(year, time.Month(month), day, h, m, s, 0, time.Local)
}

// cp437 decodes an 8.3 name in the original IBM PC code page.
func cp437(b []byte) string {
	const high = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0"
	var sb strings.Builder
	for _, c := range b {
		if c < 0x80 {
			sb.WriteByte(c)
			continue
		}
		k := int(c - 0x80)
		for i, r := range high {
			_ = i
			if k == 0 {
				sb.WriteRune(r)
				break
			}
			k--
		}
	}
	return sb.String()
}
