package vhdx

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"lifeboat/disk"
	"lifeboat/internal/testenv"
)

// standIn is a parent for fuzzed differencing images: 0x5a up to its size.
type standIn struct{ size int64 }

func (p *standIn) ReadAt(b []byte, off int64) (int, error) {
	if off >= p.size {
		return 0, io.EOF
	}
	n := min(int64(len(b)), p.size-off)
	for i := range b[:n] {
		b[i] = 0x5a
	}
	if n < int64(len(b)) {
		return int(n), io.EOF
	}
	return int(n), nil
}
func (p *standIn) Close() error        { return nil }
func (p *standIn) Format() disk.Format { return disk.Raw }
func (p *standIn) Size() int64         { return p.size }
func (p *standIn) Parent() disk.Image  { return nil }
func (p *standIn) Info() disk.Info     { return disk.Info{Format: disk.Raw, Size: p.size} }
func (p *standIn) Extents(ctx context.Context, off, n int64) ([]disk.Extent, error) {
	off, n = disk.ClampRange(off, n, p.size)
	return []disk.Extent{{Offset: off, Length: n, Kind: disk.Data}}, nil
}

// sparseFile is a file held as 4 KiB pages; missing pages read as zero.
// Fuzz inputs describe files this way, so that a few kilobytes of input
// can stand for a multi-megabyte VHDX whose structures sit megabytes apart.
type sparseFile struct {
	pages map[int64][]byte
	size  int64
}

const maxFuzzFile = 256 * mib

// decodeSparse reads a fuzz input: the file size (u64, reduced modulo
// 256 MiB + 1), then records of u32 offset, u16 length and the bytes.
func decodeSparse(data []byte) *sparseFile {
	s := &sparseFile{pages: map[int64][]byte{}}
	if len(data) < 8 {
		return nil
	}
	s.size = int64(binary.LittleEndian.Uint64(data) % (maxFuzzFile + 1))
	data = data[8:]
	for len(data) >= 6 {
		off := int64(binary.LittleEndian.Uint32(data))
		n := int(binary.LittleEndian.Uint16(data[4:]))
		data = data[6:]
		n = min(n, len(data))
		s.write(off, data[:n])
		data = data[n:]
	}
	return s
}

// encodeSparse turns a file into a fuzz input, leaving out zero bytes at
// the ends of each page.
func encodeSparse(b []byte, size int64) []byte {
	out := binary.LittleEndian.AppendUint64(nil, uint64(size))
	for off := 0; off < len(b); off += logSector {
		p := b[off:min(off+logSector, len(b))]
		lo := len(p) - len(bytes.TrimLeft(p, "\x00"))
		hi := len(bytes.TrimRight(p, "\x00"))
		if lo >= hi {
			continue
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(off+lo))
		out = binary.LittleEndian.AppendUint16(out, uint16(hi-lo))
		out = append(out, p[lo:hi]...)
	}
	return out
}

func (s *sparseFile) write(off int64, b []byte) {
	for len(b) > 0 {
		k := off / logSector * logSector
		p := s.pages[k]
		if p == nil {
			p = make([]byte, logSector)
			s.pages[k] = p
		}
		n := copy(p[off-k:], b)
		b, off = b[n:], off+int64(n)
	}
}

func (s *sparseFile) ReadAt(q []byte, off int64) (int, error) {
	if off < 0 || off >= s.size {
		return 0, io.EOF
	}
	n := min(int64(len(q)), s.size-off)
	for pos := off; pos < off+n; {
		k := pos / logSector * logSector
		end := min(k+logSector, off+n)
		if p := s.pages[k]; p != nil {
			copy(q[pos-off:end-off], p[pos-k:end-k])
		} else {
			clear(q[pos-off : end-off])
		}
		pos = end
	}
	if n < int64(len(q)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// fixCRCs recomputes every checksum in a fuzzed file, so that mutations
// reach the parsers behind the CRC checks.
func fixCRCs(s *sparseFile) {
	fix := func(off, n int64) {
		b := make([]byte, n)
		s.ReadAt(b, off)
		s.write(off+4, binary.LittleEndian.AppendUint32(nil, crcWithZeroedField(b, 4)))
	}
	fix(header1Offset, headerSize)
	fix(header2Offset, headerSize)
	fix(region1Offset, regionSize)
	fix(region2Offset, regionSize)
	hb := make([]byte, headerSize)
	s.ReadAt(hb, header1Offset)
	h, _ := parseHeader(hb)
	if h.LogLength%logSector != 0 || h.LogLength > 4*mib || h.LogOffset > maxFuzzFile {
		return
	}
	log := make([]byte, h.LogLength)
	s.ReadAt(log, int64(h.LogOffset))
	for pos, crc := range fixLogCRCs(log) {
		s.write(int64(h.LogOffset)+int64(pos)+4, binary.LittleEndian.AppendUint32(nil, crc))
	}
}

// fixLogCRCs recomputes the checksum of every entry that does not wrap
// and returns the new checksums by entry position.
func fixLogCRCs(log []byte) map[int]uint32 {
	out := map[int]uint32{}
	for pos := 0; pos+logSector <= len(log); pos += logSector {
		if string(log[pos:pos+4]) != "loge" {
			continue
		}
		n := int(binary.LittleEndian.Uint32(log[pos+8:]))
		if n < logSector || pos+n > len(log) {
			continue
		}
		crc := crcWithZeroedField(log[pos:pos+n], 4)
		binary.LittleEndian.PutUint32(log[pos+4:], crc)
		out[pos] = crc
	}
	return out
}

// exercise reads through an opened image the way a backup does, within
// a budget that keeps each fuzz run fast.
func exercise(t *testing.T, img *Image) {
	ctx := context.Background()
	size := img.Size()
	win := 64 * img.blockSize
	for _, off := range []int64{0, max(0, size-win), size / 2} {
		ext, err := img.Extents(ctx, off, win)
		if err != nil {
			continue
		}
		o, n := disk.ClampRange(off, win, size)
		if err := disk.CheckExtents(ext, o, n); err != nil {
			t.Fatalf("extents(%d,%d): %v", o, n, err)
		}
	}
	buf := make([]byte, 64*kib)
	for _, off := range []int64{0, 512, size/2 - 100, size - 4096, size - 1} {
		if off < 0 {
			continue
		}
		n, err := img.ReadAt(buf, off)
		if n > len(buf) || (err == nil && n != len(buf)) {
			t.Fatalf("ReadAt(%d) = %d, %v", off, n, err)
		}
	}
	_ = img.Info()
	_ = img.Details()
}

func fuzzOpen(t *testing.T, r io.ReaderAt, size int64) {
	parents := func(ctx context.Context, cands []string) (disk.Image, error) {
		return &standIn{size: 64 * mib}, nil
	}
	img, err := openReaderAt(context.Background(), r, size, "fuzz.vhdx", parents, options{trustParent: true})
	if err != nil {
		if err.Error() == "" {
			t.Fatal("empty error")
		}
		return
	}
	defer img.Close()
	exercise(t, img)
}

// seedImages are small images this package writes, as bytes.
func seedImages(f *testing.F) [][]byte {
	dir := f.TempDir()
	var out [][]byte
	build := func(name string, opts disk.CreateOptions, writes map[int64][]byte) {
		path := filepath.Join(dir, name)
		w, err := Create(context.Background(), path, opts)
		if err != nil {
			f.Fatal(err)
		}
		offs := make([]int64, 0, len(writes))
		for o := range writes {
			offs = append(offs, o)
		}
		sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
		for _, o := range offs {
			if _, err := w.WriteAt(writes[o], o); err != nil {
				f.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			f.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	build("dyn.vhdx", disk.CreateOptions{Size: 3 * mib, ClusterSize: mib}, map[int64][]byte{512: pattern(1, 1024)})
	build("fixed.vhdx", disk.CreateOptions{Size: 2 * mib, ClusterSize: mib, Fixed: true}, map[int64][]byte{0: pattern(2, 512)})
	build("child.vhdx", disk.CreateOptions{Size: 3*mib + 512, ClusterSize: mib, ParentPath: `..\base.vhdx`, ParentID: "0f0e0d0c-0b0a-0908-0706-050403020100"},
		map[int64][]byte{1024: pattern(3, 1536), 2 * mib: make([]byte, mib), 3 * mib: pattern(4, 512)})
	return out
}

// fixtureSeed is a fixture's first 4 MiB (header section, log, metadata
// and the start of the BAT), without trailing zeros. Only that much is
// decompressed: the full fixtures are up to 270 MiB.
func fixtureSeed(f *testing.F, name string) []byte {
	base := filepath.Join(testenv.SharedDir(f), "testdata", "hyperv", name)
	var r io.Reader
	if fh, err := os.Open(base + ".gz"); err == nil {
		defer fh.Close()
		zr, err := gzip.NewReader(fh)
		if err != nil {
			f.Fatal(err)
		}
		r = zr
	} else if fh, err := os.Open(base + ".bz2"); err == nil {
		defer fh.Close()
		r = bzip2.NewReader(fh)
	} else {
		testenv.HyperV(f, name) // fails or skips with the usual message
		return nil
	}
	b := make([]byte, 4*mib)
	n, err := io.ReadFull(r, b)
	if err != nil && err != io.ErrUnexpectedEOF {
		f.Fatal(err)
	}
	return bytes.TrimRight(b[:n], "\x00")
}

func FuzzOpen(f *testing.F) {
	for _, b := range seedImages(f) {
		f.Add(encodeSparse(b, int64(len(b))))
	}
	for _, name := range []string{"vhdx-log-replay.vhdx", "iotest-dirtylog-10G-4M.vhdx", "differencing.avhdx", "test-disk2vhd.vhdx", "iotest-dynamic-1G.vhdx", "fixed.vhdx"} {
		f.Add(encodeSparse(fixtureSeed(f, name), 8*mib))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := decodeSparse(data)
		if s == nil {
			return
		}
		fuzzOpen(t, s, s.size)
		// With every checksum repaired, mutations reach the region
		// table, metadata, BAT and log parsers.
		fixCRCs(s)
		fuzzOpen(t, s, s.size)
	})
}

func FuzzLogReplay(f *testing.F) {
	g, _ := ParseGUID("e6fc743c-81ed-4fe8-bf54-698ed57ba0b8")
	X := pattern(9, logSector)
	f.Add(append(g[:], buildEntry(3, 0, g, 8*mib, 8*mib, []testDesc{{off: 4 * mib, data: X}, {zero: true, off: 5 * mib, n: 8192}})...))
	two := append(buildEntry(20, 0, g, 8*mib, 9*mib, []testDesc{{off: 0, data: X}}), buildEntry(21, 0, g, 8*mib, 9*mib, []testDesc{{zero: true, off: 4096, n: 4096}, {off: 4096, data: X}})...)
	f.Add(append(g[:], two...))
	for _, name := range []string{"vhdx-log-replay.vhdx", "iotest-dirtylog-10G-4M.vhdx"} {
		b := fixtureSeed(f, name)
		h, _ := parseHeader(b[header1Offset:])
		if h2, ok := parseHeader(b[header2Offset:]); ok && h2.Seq > h.Seq {
			h = h2
		}
		log := bytes.TrimRight(b[h.LogOffset:h.LogOffset+uint64(h.LogLength)], "\x00")
		f.Add(append(h.LogGUID[:], log...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 16+logSector {
			return
		}
		var g GUID
		copy(g[:], data)
		log := bytes.Clone(data[16 : 16+(len(data)-16)/logSector*logSector])
		fixLogCRCs(log)
		seq, err := activeSequence(log, g)
		if err != nil {
			return
		}
		if seq == nil {
			return
		}
		for i, e := range seq {
			if e.seq != seq[0].seq+uint64(i) {
				t.Fatalf("sequence numbers %d, %d not consecutive", seq[0].seq, e.seq)
			}
		}
		if seq[0].pos != seq[len(seq)-1].tail {
			t.Fatalf("sequence starts at %d, head's tail is %d", seq[0].pos, seq[len(seq)-1].tail)
		}
		const fileSize = 8 * mib
		o := replay(seq, fileSize)
		for i, z := range o.zeros {
			if z.start >= z.end || (i > 0 && o.zeros[i-1].end >= z.start) {
				t.Fatalf("zero spans %v not sorted, disjoint and merged", o.zeros)
			}
		}
		for i, j := 0, 0; i < len(o.offs); i++ {
			k := o.offs[i]
			for j < len(o.zeros) && o.zeros[j].end <= k {
				j++
			}
			if j < len(o.zeros) && o.zeros[j].start < k+logSector {
				t.Fatalf("page %d overlaps zero span %v", k, o.zeros[j])
			}
		}
		src := &source{r: bytes.NewReader(make([]byte, 0)), size: 0, ov: o}
		buf := make([]byte, 3*logSector)
		for _, off := range []int64{0, 4096 - 7, 4 * mib, o.size - 100} {
			if off >= 0 {
				src.ReadAt(buf, off)
			}
		}
	})
}
