package vhdx

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/disk"
	"lifeboat/internal/testenv"
)

// smallImage writes a 8 MiB dynamic image with 1 MiB blocks whose block 0
// holds pattern(1) and block 2 pattern(2), and returns its bytes.
func smallImage(t *testing.T, opts disk.CreateOptions) []byte {
	t.Helper()
	if opts.Size == 0 {
		opts.Size = 8 * mib
	}
	if opts.ClusterSize == 0 {
		opts.ClusterSize = mib
	}
	path := filepath.Join(t.TempDir(), "small.vhdx")
	writeImage(t, path, opts, map[int64][]byte{0: pattern(1, mib), 2 * mib: pattern(2, mib)})
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// openBytes opens b from a file, the way users do.
func openBytes(t *testing.T, b []byte) (*Image, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "t.vhdx")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return openFile(context.Background(), path, nil, options{})
}

func rewriteHeader(b []byte, off int, edit func(*header)) {
	h, _ := parseHeader(b[off:])
	edit(&h)
	copy(b[off:], h.marshal())
}

func rewriteRegionCRC(b []byte, off int) {
	binary.LittleEndian.PutUint32(b[off+4:], crcWithZeroedField(b[off:off+regionSize], 4))
}

// metaEntryAt finds the metadata table entry for id in a writer-made file.
func metaEntryAt(t *testing.T, b []byte, id GUID) int {
	t.Helper()
	for i := 0; i < 16; i++ {
		at := writeMetaOffset + 32 + 32*i
		if bytes.Equal(b[at:at+16], id[:]) {
			return at
		}
	}
	t.Fatalf("metadata item %s not found", id)
	return 0
}

func TestBadInput(t *testing.T) {
	batEntry := func(b []byte, idx int) int { return writeBATOffset + 8*idx }
	cases := []struct {
		name    string
		opts    disk.CreateOptions
		corrupt func(t *testing.T, b []byte) []byte
		want    string // in the error; "" means the open must succeed
	}{
		{"header 1 CRC", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			b[header1Offset+100] ^= 1
			return b
		}, ""},
		{"both header CRCs", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			b[header1Offset+100] ^= 1
			b[header2Offset+4] ^= 1
			return b
		}, "no valid header"},
		{"header signature", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			copy(b[header1Offset:], "HEAD")
			copy(b[header2Offset:], "HEAD")
			return b
		}, "no valid header"},
		{"equal sequence, different headers", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			rewriteHeader(b, header1Offset, func(h *header) { h.Seq = 2; h.FileWriteGUID[0]++ })
			return b
		}, "both headers are valid with sequence number 2 but differ"},
		{"version 2", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			rewriteHeader(b, header1Offset, func(h *header) { h.Version = 2 })
			rewriteHeader(b, header2Offset, func(h *header) { h.Version = 2 })
			return b
		}, "unsupported VHDX version 2"},
		{"file identifier", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			copy(b, "vhdxfilf")
			return b
		}, "not a VHDX file"},
		{"region table 1 CRC", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			b[region1Offset+20] ^= 1
			return b
		}, ""},
		{"both region table CRCs", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			b[region1Offset+20] ^= 1
			b[region2Offset+20] ^= 1
			return b
		}, "region table CRC-32C"},
		{"unknown required region", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			for _, off := range []int{region1Offset, region2Offset} {
				e := b[off+16+32*2:]
				binary.LittleEndian.PutUint32(b[off+8:], 3)
				copy(e, []byte("0123456789abcdef"))
				binary.LittleEndian.PutUint32(e[28:], 1)
				rewriteRegionCRC(b, off)
			}
			return b
		}, "is marked required"},
		{"BAT region past EOF", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			for _, off := range []int{region1Offset, region2Offset} {
				binary.LittleEndian.PutUint64(b[off+16+16:], 64*mib) // BAT is entry 0
				rewriteRegionCRC(b, off)
			}
			return b
		}, "lies outside the"},
		{"BAT entry past EOF", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			binary.LittleEndian.PutUint64(b[batEntry(b, 2):], 100<<20|payloadFullyPresent)
			return b
		}, "BAT entry 2 (block 2) points at file offset 104857600, outside the"},
		{"BAT entry invalid state", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			binary.LittleEndian.PutUint64(b[batEntry(b, 5):], 4)
			return b
		}, "BAT entry 5 (block 5) has invalid state 4"},
		{"BAT entry in header section", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			binary.LittleEndian.PutUint64(b[batEntry(b, 0):], payloadFullyPresent)
			return b
		}, "BAT entry 0 (block 0) points at file offset 0"},
		{"partially present in base", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			e := binary.LittleEndian.Uint64(b[batEntry(b, 0):])
			binary.LittleEndian.PutUint64(b[batEntry(b, 0):], e&^7|payloadPartiallyPresent)
			return b
		}, "PARTIALLY_PRESENT in a file without a parent"},
		{"missing Virtual Disk Size", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			at := metaEntryAt(t, b, guidVirtualSize)
			copy(b[at:], []byte("not-a-known-item"))
			binary.LittleEndian.PutUint32(b[at+24:], 0)
			return b
		}, "required metadata item Virtual Disk Size (2fa54224-cd1b-4876-b211-5dbed83bf4b8) is missing"},
		{"missing File Parameters", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			at := metaEntryAt(t, b, guidFileParameters)
			binary.LittleEndian.PutUint32(b[at+24:], metaIsUser)
			return b
		}, "required metadata item File Parameters"},
		{"unknown required item", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			at := metaEntryAt(t, b, guidVirtualDiskID)
			copy(b[at:], []byte("not-a-known-item"))
			return b
		}, "is marked required"},
		{"metadata signature", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			copy(b[writeMetaOffset:], "METADATA")
			return b
		}, "metadata table signature"},
		{"block size", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			at := metaEntryAt(t, b, guidFileParameters)
			item := writeMetaOffset + int(binary.LittleEndian.Uint32(b[at+16:]))
			binary.LittleEndian.PutUint32(b[item:], 3*mib)
			return b
		}, "block size 3145728"},
		{"sector size", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			at := metaEntryAt(t, b, guidLogicalSector)
			item := writeMetaOffset + int(binary.LittleEndian.Uint32(b[at+16:]))
			binary.LittleEndian.PutUint32(b[item:], 1024)
			return b
		}, "logical sector size 1024"},
		{"item outside region", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			at := metaEntryAt(t, b, guidVirtualSize)
			binary.LittleEndian.PutUint32(b[at+16:], writeMetaLength-4)
			return b
		}, "lies outside the 1048576-byte metadata region"},
		{"truncated in a block", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			return b[:len(b)-512]
		}, "outside the"},
		{"truncated to 1000 bytes", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			return b[:1000]
		}, "shorter than the 1 MiB VHDX header section"},
		{"truncated before BAT", disk.CreateOptions{}, func(t *testing.T, b []byte) []byte {
			return b[:3*mib]
		}, "lies outside the"},
		{"sector bitmap missing", disk.CreateOptions{ParentPath: "p.vhdx", ParentID: "0f0e0d0c-0b0a-0908-0706-050403020100", Size: 8 * mib}, func(t *testing.T, b []byte) []byte {
			// Block 0 becomes partial; chunk 0's bitmap entry stays absent.
			e := binary.LittleEndian.Uint64(b[batEntry(b, 0):])
			binary.LittleEndian.PutUint64(b[batEntry(b, 0):], e&^7|payloadPartiallyPresent)
			return b
		}, "its sector bitmap (state 0) is not present"},
		{"locator without linkage", disk.CreateOptions{ParentPath: "p.vhdx", ParentID: "0f0e0d0c-0b0a-0908-0706-050403020100"}, func(t *testing.T, b []byte) []byte {
			at := metaEntryAt(t, b, guidParentLocator)
			item := writeMetaOffset + int(binary.LittleEndian.Uint32(b[at+16:]))
			i := bytes.Index(b[item:item+1024], encodeUTF16("parent_linkage"))
			copy(b[item+i:], encodeUTF16("parent_linkagx"))
			return b
		}, "parent locator has no parent_linkage"},
		{"locator entry outside item", disk.CreateOptions{ParentPath: "p.vhdx", ParentID: "0f0e0d0c-0b0a-0908-0706-050403020100"}, func(t *testing.T, b []byte) []byte {
			at := metaEntryAt(t, b, guidParentLocator)
			item := writeMetaOffset + int(binary.LittleEndian.Uint32(b[at+16:]))
			binary.LittleEndian.PutUint32(b[item+20+4:], 0xffffff00)
			return b
		}, "parent locator entry 0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.corrupt(t, smallImage(t, c.opts))
			img, err := openBytes(t, b)
			if c.want == "" {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				defer img.Close()
				if got := readAt(t, img, 0, mib); !bytes.Equal(got, pattern(1, mib)) {
					t.Errorf("block 0 reads wrong")
				}
				return
			}
			if err == nil {
				img.Close()
				t.Fatalf("open succeeded, want error containing %q", c.want)
			}
			var fe *disk.FormatError
			if !errors.As(err, &fe) || !strings.HasSuffix(fe.Path, "t.vhdx") {
				t.Errorf("error %v is not a *disk.FormatError naming the file", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
		})
	}
}

// TestHeaderChoice checks that the header with the larger sequence number
// wins whichever slot it is in.
func TestHeaderChoice(t *testing.T) {
	a, _ := ParseGUID("11111111-2222-3333-4444-555555555555")
	bID, _ := ParseGUID("66666666-7777-8888-9999-aaaaaaaaaaaa")
	for _, c := range []struct {
		seq1, seq2 uint64
		want       GUID
	}{{5, 3, a}, {3, 5, bID}, {1 << 63, 2, a}} {
		b := smallImage(t, disk.CreateOptions{})
		rewriteHeader(b, header1Offset, func(h *header) { h.Seq = c.seq1; h.DataWriteGUID = a })
		rewriteHeader(b, header2Offset, func(h *header) { h.Seq = c.seq2; h.DataWriteGUID = bID })
		img, err := openBytes(t, b)
		if err != nil {
			t.Fatal(err)
		}
		if got := img.Info().ID; got != c.want.String() {
			t.Errorf("seq %d/%d: ID %s, want %s", c.seq1, c.seq2, got, c.want)
		}
		img.Close()
	}
}

// logDesc for tests: a zero range or one 4 KiB data page.
type testDesc struct {
	zero bool
	off  int64
	n    int64  // zero length
	data []byte // 4 KiB
}

// buildEntry encodes a log entry the way MS-VHDX lays it out.
func buildEntry(seq uint64, tail uint32, g GUID, flushed, last uint64, descs []testDesc) []byte {
	ndata := 0
	for _, d := range descs {
		if !d.zero {
			ndata++
		}
	}
	descSectors := (64 + 32*len(descs) + logSector - 1) / logSector
	b := make([]byte, (descSectors+ndata)*logSector)
	copy(b, "loge")
	binary.LittleEndian.PutUint32(b[8:], uint32(len(b)))
	binary.LittleEndian.PutUint32(b[12:], tail)
	binary.LittleEndian.PutUint64(b[16:], seq)
	binary.LittleEndian.PutUint32(b[24:], uint32(len(descs)))
	copy(b[32:], g[:])
	binary.LittleEndian.PutUint64(b[48:], flushed)
	binary.LittleEndian.PutUint64(b[56:], last)
	k := 0
	for i, d := range descs {
		p := b[64+32*i:]
		binary.LittleEndian.PutUint64(p[16:], uint64(d.off))
		binary.LittleEndian.PutUint64(p[24:], seq)
		if d.zero {
			copy(p, "zero")
			binary.LittleEndian.PutUint64(p[8:], uint64(d.n))
			continue
		}
		copy(p, "desc")
		binary.LittleEndian.PutUint32(p[4:], binary.LittleEndian.Uint32(d.data[logSector-4:]))
		binary.LittleEndian.PutUint64(p[8:], binary.LittleEndian.Uint64(d.data[0:8]))
		s := b[(descSectors+k)*logSector:]
		k++
		copy(s, "data")
		binary.LittleEndian.PutUint32(s[4:], uint32(seq>>32))
		copy(s[8:logSector-4], d.data[8:logSector-4])
		binary.LittleEndian.PutUint32(s[logSector-4:], uint32(seq))
	}
	binary.LittleEndian.PutUint32(b[4:], crcWithZeroedField(b, 4))
	return b
}

// TestLogReplay replays hand-built logs over a small image. Block 0 of the
// image is at file offset 4 MiB and block 2 at 5 MiB.
func TestLogReplay(t *testing.T) {
	g, _ := ParseGUID("e6fc743c-81ed-4fe8-bf54-698ed57ba0b8")
	stale, _ := ParseGUID("0e6fc743-81ed-4fe8-bf54-698ed57ba0b8")
	const blk0, blk2 = 4 * mib, 5 * mib
	X, Y := pattern(7, logSector), pattern(8, logSector)
	type placed struct {
		pos   int
		entry []byte
	}
	// expect maps a guest offset to the 4 KiB it must read.
	cases := []struct {
		name    string
		size    int64 // file size; 0 keeps it
		entries func(fs uint64) []placed
		expect  map[int64][]byte
		want    string // error
	}{
		{"data and zero descriptors", 0, func(fs uint64) []placed {
			return []placed{{0, buildEntry(9, 0, g, fs, fs, []testDesc{
				{off: blk0 + 8192, data: X},
				{zero: true, off: blk2, n: 3 * logSector},
				{off: blk2 + 4096, data: Y}, // later descriptor wins over the zero
			})}}
		}, map[int64][]byte{
			0: pattern(1, mib)[:logSector], 8192: X,
			2 * mib: make([]byte, logSector), 2*mib + 4096: Y, 2*mib + 8192: make([]byte, logSector),
			2*mib + 12288: pattern(2, mib)[12288 : 12288+logSector],
		}, ""},
		{"only the sequence from the head's tail", 0, func(fs uint64) []placed {
			return []placed{
				{0, buildEntry(20, 0, g, fs, fs, []testDesc{{off: blk0, data: X}})},       // before the tail: already applied
				{8192, buildEntry(21, 8192, g, fs, fs, []testDesc{{off: blk2, data: Y}})}, // tail
				{16384, buildEntry(22, 8192, g, fs, fs, []testDesc{{zero: true, off: blk2 + 4096, n: 4096}})},
				{24576, buildEntry(99, 24576, stale, fs, fs, []testDesc{{off: blk0 + 4096, data: Y}})}, // stale LogGuid
			}
		}, map[int64][]byte{
			0: pattern(1, mib)[:logSector], 4096: pattern(1, mib)[4096 : 2*logSector],
			2 * mib: Y, 2*mib + 4096: make([]byte, logSector),
		}, ""},
		{"newest of two complete sequences", 0, func(fs uint64) []placed {
			return []placed{
				{0, buildEntry(5, 0, g, fs, fs, []testDesc{{off: blk0, data: X}})},
				{65536, buildEntry(7, 65536, g, fs, fs, []testDesc{{off: blk0, data: Y}})},
				{131072, buildEntry(6, 131072, g, fs, fs, []testDesc{{off: blk0 + 4096, data: X}})},
			}
		}, map[int64][]byte{0: Y, 4096: pattern(1, mib)[4096 : 2*logSector]}, ""},
		{"entry wrapping the ring", 0, func(fs uint64) []placed {
			return []placed{{writeLogLength - logSector, buildEntry(3, writeLogLength-logSector, g, fs, fs, []testDesc{{off: blk0, data: X}})}}
		}, map[int64][]byte{0: X}, ""},
		{"file extended to LastFileOffset", 0, func(fs uint64) []placed {
			// Block 1 moves past the end of the file: without the
			// extension the BAT entry would be rejected.
			bat := make([]byte, logSector)
			binary.LittleEndian.PutUint64(bat[0:], blk0>>20<<20|payloadFullyPresent)
			binary.LittleEndian.PutUint64(bat[8:], (fs+mib)>>20<<20|payloadFullyPresent)
			binary.LittleEndian.PutUint64(bat[16:], blk2>>20<<20|payloadFullyPresent)
			return []placed{{0, buildEntry(3, 0, g, fs, fs+2*mib, []testDesc{{off: writeBATOffset, data: bat}})}}
		}, map[int64][]byte{0: pattern(1, mib)[:logSector], mib: make([]byte, logSector), 2 * mib: pattern(2, mib)[:logSector]}, ""},
		{"no valid entry", 0, func(fs uint64) []placed {
			e := buildEntry(3, 0, g, fs, fs, []testDesc{{off: blk0, data: X}})
			e[5000] ^= 1
			return []placed{{0, e}}
		}, nil, "holds no complete valid log sequence"},
		{"tail points at nothing", 0, func(fs uint64) []placed {
			return []placed{{8192, buildEntry(3, 0, g, fs, fs, []testDesc{{off: blk0, data: X}})}}
		}, nil, "holds no complete valid log sequence"},
		{"gap in sequence numbers", 0, func(fs uint64) []placed {
			return []placed{
				{0, buildEntry(3, 0, g, fs, fs, nil)},
				{4096, buildEntry(5, 0, g, fs, fs, nil)},
			}
		}, map[int64][]byte{0: pattern(1, mib)[:logSector]}, ""}, // entry 3 alone is complete
		{"data sector with wrong sequence", 0, func(fs uint64) []placed {
			e := buildEntry(3, 0, g, fs, fs, []testDesc{{off: blk0, data: X}})
			binary.LittleEndian.PutUint32(e[2*logSector-4:], 4)
			binary.LittleEndian.PutUint32(e[4:], crcWithZeroedField(e, 4))
			return []placed{{0, e}}
		}, nil, "holds no complete valid log sequence"},
		{"file shorter than FlushedFileOffset", 0, func(fs uint64) []placed {
			return []placed{{0, buildEntry(3, 0, g, fs+mib, fs+mib, []testDesc{{off: blk0, data: X}})}}
		}, nil, "shorter than the log's FlushedFileOffset"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := smallImage(t, disk.CreateOptions{})
			for _, p := range c.entries(uint64(len(b))) {
				for i := range p.entry {
					b[writeLogOffset+(p.pos+i)%writeLogLength] = p.entry[i]
				}
			}
			rewriteHeader(b, header1Offset, func(h *header) { h.LogGUID = g })
			rewriteHeader(b, header2Offset, func(h *header) { h.LogGUID = g })
			img, err := openBytes(t, b)
			if c.want != "" {
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("open: %v, want error containing %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if !img.replayed {
				t.Error("not replayed")
			}
			for off, want := range c.expect {
				if got := readAt(t, img, off, logSector); !bytes.Equal(got, want) {
					t.Errorf("guest offset %d reads wrong after replay", off)
				}
			}
			// The file on disk is untouched.
			if after, _ := os.ReadFile(img.path); !bytes.Equal(after, b) {
				t.Error("source file changed")
			}
		})
	}
}

// TestDirtyFixtureCorrupt breaks the log of Hyper-V's dirty fixture.
func TestDirtyFixtureCorrupt(t *testing.T) {
	src, err := os.ReadFile(testenv.HyperV(t, "vhdx-log-replay.vhdx"))
	if err != nil {
		t.Fatal(err)
	}
	h, _ := parseHeader(src[header1Offset:])
	if h2, ok := parseHeader(src[header2Offset:]); ok && h2.Seq > h.Seq {
		h = h2
	}
	for _, c := range []struct {
		name string
		edit func([]byte) []byte
		want string
	}{
		{"log zeroed", func(b []byte) []byte {
			clear(b[h.LogOffset : h.LogOffset+uint64(h.LogLength)])
			return b
		}, "holds no complete valid log sequence"},
		{"file truncated", func(b []byte) []byte { return b[:len(b)-mib] }, "shorter than the log's FlushedFileOffset 37748736"},
		{"log version", func(b []byte) []byte {
			for _, off := range []int{header1Offset, header2Offset} {
				rewriteHeader(b, off, func(h *header) { h.LogVersion = 1 })
			}
			return b
		}, "log version 1"},
		{"log past EOF", func(b []byte) []byte {
			for _, off := range []int{header1Offset, header2Offset} {
				rewriteHeader(b, off, func(h *header) { h.LogOffset = 1 << 40 })
			}
			return b
		}, "past the end of the"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := openBytes(t, c.edit(bytes.Clone(src)))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("open: %v, want error containing %q", err, c.want)
			}
		})
	}
}
