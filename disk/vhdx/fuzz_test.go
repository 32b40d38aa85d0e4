package vhdx

import (
	"bytes"
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

// padded reads b and then zeros up to size, so that a seed can be the
// start of a file: the regions past it read as zero instead of failing.
type padded struct {
	b    []byte
	size int64
}

func (p *padded) ReadAt(q []byte, off int64) (int, error) {
	if off < 0 || off >= p.size {
		return 0, io.EOF
	}
	n := min(int64(len(q)), p.size-off)
	k := 0
	if off < int64(len(p.b)) {
		k = copy(q[:n], p.b[off:])
	}
	clear(q[k:n])
	if n < int64(len(q)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// fixCRCs recomputes every checksum in a fuzzed file, so that mutations
// reach the parsers behind the CRC checks.
func fixCRCs(b []byte) {
	for _, off := range []int{header1Offset, header2Offset} {
		if len(b) >= off+headerSize {
			binary.LittleEndian.PutUint32(b[off+4:], crcWithZeroedField(b[off:off+headerSize], 4))
		}
	}
	for _, off := range []int{region1Offset, region2Offset} {
		if len(b) >= off+regionSize {
			binary.LittleEndian.PutUint32(b[off+4:], crcWithZeroedField(b[off:off+regionSize], 4))
		}
	}
	if len(b) < header1Offset+headerSize {
		return
	}
	h, _ := parseHeader(b[header1Offset:]) // CRC now valid
	lo, ll := h.LogOffset, uint64(h.LogLength)
	if ll%logSector != 0 || lo > uint64(len(b)) || ll > uint64(len(b))-lo {
		return
	}
	fixLogCRCs(b[lo : lo+ll])
}

// fixLogCRCs recomputes the checksum of every entry that does not wrap.
func fixLogCRCs(log []byte) {
	for pos := 0; pos+logSector <= len(log); pos += logSector {
		if string(log[pos:pos+4]) != "loge" {
			continue
		}
		n := int(binary.LittleEndian.Uint32(log[pos+8:]))
		if n < logSector || pos+n > len(log) {
			continue
		}
		binary.LittleEndian.PutUint32(log[pos+4:], crcWithZeroedField(log[pos:pos+n], 4))
	}
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
		map[int64][]byte{1024: pattern(3, 1536), 2 * mib: pattern(4, mib), 3 * mib: make([]byte, 512)})
	return out
}

// fixtureSeed is a fixture's first 4 MiB (header section, log, metadata
// and the start of the BAT), without trailing zeros.
func fixtureSeed(f *testing.F, name string) []byte {
	path := testenv.HyperV(f, name)
	fh, err := os.Open(path)
	if err != nil {
		f.Fatal(err)
	}
	defer fh.Close()
	b := make([]byte, 4*mib)
	n, _ := io.ReadFull(fh, b)
	return bytes.TrimRight(b[:n], "\x00")
}

func FuzzOpen(f *testing.F) {
	for _, b := range seedImages(f) {
		f.Add(b)
	}
	for _, name := range []string{"vhdx-log-replay.vhdx", "iotest-dirtylog-10G-4M.vhdx", "differencing.avhdx", "test-disk2vhd.vhdx", "iotest-dynamic-1G.vhdx", "fixed.vhdx"} {
		f.Add(fixtureSeed(f, name))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// As a file of exactly these bytes...
		fuzzOpen(t, bytes.NewReader(data), int64(len(data)))
		// ...and as the start of a larger one with every checksum
		// repaired, so that mutations reach the metadata, BAT and log.
		fixed := bytes.Clone(data)
		fixCRCs(fixed)
		fuzzOpen(t, &padded{fixed, max(int64(len(fixed)), 16*mib)}, max(int64(len(fixed)), 16*mib))
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
		seq := activeSequence(log, g)
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
				t.Fatalf("zero spans %v not sorted and disjoint", o.zeros)
			}
			for k := range o.pages {
				if k < z.end && k+logSector > z.start {
					t.Fatalf("page %d overlaps zero span %v", k, z)
				}
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
