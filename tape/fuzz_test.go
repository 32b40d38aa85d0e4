package tape

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"testing"
	"time"

	"lifeboat/repo"
)

// memDrive is a tape in memory: blocks, with nil for a filemark.
type memDrive struct {
	entries [][]byte
	pos     int
}

func (m *memDrive) ReadBlock(p []byte) (int, error) {
	if m.pos >= len(m.entries) {
		return 0, ErrEndOfData
	}
	e := m.entries[m.pos]
	if e == nil {
		m.pos++
		return 0, ErrFilemark
	}
	if len(e) > len(p) {
		return 0, errors.New("block larger than the buffer")
	}
	m.pos++
	return copy(p, e), nil
}

func (m *memDrive) WriteBlock(p []byte) error {
	m.entries = append(m.entries[:m.pos], append([]byte(nil), p...))
	m.pos++
	return nil
}

func (m *memDrive) WriteFilemarks(n int) error {
	m.entries = m.entries[:m.pos]
	for range n {
		m.entries = append(m.entries, nil)
		m.pos++
	}
	return nil
}

func (m *memDrive) SpaceFilemarks(n int) error {
	for ; n > 0; n-- {
		for {
			if m.pos >= len(m.entries) {
				return ErrEndOfData
			}
			m.pos++
			if m.entries[m.pos-1] == nil {
				break
			}
		}
	}
	for ; n < 0; n++ {
		for {
			if m.pos == 0 {
				return errors.New("beginning of tape")
			}
			m.pos--
			if m.entries[m.pos] == nil {
				break
			}
		}
	}
	return nil
}

func (m *memDrive) Rewind() error           { m.pos = 0; return nil }
func (m *memDrive) EarlyWarning() bool      { return false }
func (m *memDrive) Status() (Status, error) { return Status{File: -1, Block: -1}, nil }
func (m *memDrive) Close() error            { return nil }

const fuzzBlock = MinBlockSize

var fuzzSet = [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

func fuzzLabel() *Label {
	return &Label{Format: labelFormat, Version: formatVersion, ID: "0123456789abcdef0123456789abcdef", Barcode: "FZ0001L8",
		Set: "0102030405060708090a0b0c0d0e0f10", Seq: 1, BlockSz: fuzzBlock, Time: time.Unix(1700000000, 0).UTC(),
		Repository: "00112233445566778899aabbccddeeff", Hash: "blake3", ChunkSize: 64 << 10, Writer: "lifeboat"}
}

// labelSection writes a label section onto d and returns the writer.
func labelSection(d Drive, l *Label) *blockWriter {
	w := newBlockWriter(d, l.Barcode, l.BlockSz, l.setID(), uint32(l.Seq))
	lj, _ := json.Marshal(l)
	w.begin(kindLabel)
	w.writeRecord(recLabel, 0, lj)
	w.end()
	return w
}

// FuzzReadLabel feeds arbitrary first blocks to the label reader. The
// input is the start of the block (header and payload); the rest is zeros
// up to the next block size, so the fuzzer works on the bytes that matter.
func FuzzReadLabel(f *testing.F) {
	used := func(b []byte) []byte { return b[:blockHeaderLen+int(binary.LittleEndian.Uint32(b[28:]))] }
	d := &memDrive{}
	labelSection(d, fuzzLabel())
	f.Add(used(d.entries[0]), true)
	f.Add(used(d.entries[0]), false)
	l2 := fuzzLabel()
	l2.Seq, l2.Previous = 2, "FZ0000L8"
	d2 := &memDrive{}
	labelSection(d2, l2)
	f.Add(used(d2.entries[0]), true)
	f.Add([]byte("LBTB"), false)
	f.Fuzz(func(t *testing.T, head []byte, fix bool) {
		size := MinBlockSize
		for size < len(head) {
			size *= 2
		}
		if size > 64<<10 {
			return
		}
		b := make([]byte, size)
		copy(b, head)
		if fix {
			// Let the fuzzer past the CRC to the fields and the JSON.
			binary.LittleEndian.PutUint32(b[44:], 0)
			binary.LittleEndian.PutUint32(b[44:], crc32.Checksum(b, castagnoli))
		}
		d := &memDrive{entries: [][]byte{b, nil, nil}}
		l, err := readLabel(newBlockReader(d, "FZ"))
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrEndOfData) && !errors.Is(err, ErrTruncated) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		if err := l.validate(); err != nil {
			t.Fatalf("accepted an invalid label: %v", err)
		}
		if l.BlockSz != len(b) {
			t.Fatalf("label of %d-byte blocks accepted from a %d-byte block", l.BlockSz, len(b))
		}
	})
}

// fuzzStream packs data as a data section's record stream: record headers
// come from the data, their lengths are clipped and CRCs fixed (when fix
// is set) so the record decoders see the fuzzer's bodies.
func fuzzCartridge(data []byte, fix bool) *memDrive {
	d := &memDrive{}
	l := fuzzLabel()
	w := labelSection(d, l)
	w.begin(kindData)
	for len(data) > 0 {
		if len(data) < recordHeaderLen || !fix {
			w.write(data, true)
			break
		}
		h := append([]byte(nil), data[:recordHeaderLen]...)
		n := int(binary.LittleEndian.Uint32(h[4:]) % 8192)
		n = min(n, len(data)-recordHeaderLen)
		body := data[recordHeaderLen : recordHeaderLen+n]
		binary.LittleEndian.PutUint32(h[4:], uint32(n))
		binary.LittleEndian.PutUint32(h[8:], crc32.Checksum(body, castagnoli))
		binary.LittleEndian.PutUint32(h[12:], crc32.Checksum(h[:12], castagnoli))
		w.write(h, true)
		w.write(body, false)
		data = data[recordHeaderLen+n:]
	}
	w.end() // and no catalog: a cartridge never closed
	return d
}

// validStream is a well-formed data section: one point, one file of three
// slots (one a hole), its chunks and the end record.
func validStream() []byte {
	p := &repo.Point{Version: 1, ID: "20240102T030405Z-0a0b0c0d", Name: "vm", Kind: "image", Time: time.Unix(1700000000, 0).UTC(),
		Consistency: "file"}
	c1, c2 := make([]byte, 512), make([]byte, 100)
	c1[5], c2[7] = 1, 2
	x := &repo.Index{Size: 2*512 + 100, ChunkSize: 512, Slots: []repo.Slot{{ID: repo.ID{1}}, {Hole: true}, {ID: repo.ID{2}}}}
	xb, _ := x.MarshalBinary()
	p.Files = []repo.File{{Path: "disk.raw", Role: repo.RoleDisk, Size: x.Size, Index: repo.ID{9}.String()}}
	m, _ := json.Marshal(p)
	var out []byte
	rec := func(typ, flags byte, body ...[]byte) {
		h := encodeRecordHeader(typ, flags, body...)
		out = append(out, h[:]...)
		for _, b := range body {
			out = append(out, b...)
		}
	}
	rec(recPoint, 0, m)
	hj, _ := marshalFileHeader(fileHeader{Path: "disk.raw", Index: p.Files[0].Index, Chunks: 2}, nil)
	rec(recFile, 0, hj, xb)
	for _, c := range []struct {
		slot int64
		id   repo.ID
		data []byte
	}{{0, repo.ID{1}, c1}, {2, repo.ID{2}, c2}} {
		rec(recChunk, 0, chunkPrefixBytes(c.slot, c.id, sha256.Sum256(c.data)), c.data)
	}
	e, _ := json.Marshal(endOfPoint{Point: p.ID, Files: 1, Chunks: 2, Bytes: int64(len(c1) + len(c2))})
	rec(recEnd, 0, e)
	return out
}

// FuzzReadRecord feeds arbitrary record streams (and, unfixed, arbitrary
// bytes) through the record reader, every record decoder and the catalog
// rebuild of a verifying scan.
func FuzzReadRecord(f *testing.F) {
	good := validStream()
	f.Add(good, true)
	f.Add(good, false)
	f.Add(good[:len(good)/2], true)
	f.Add([]byte{}, true)
	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		if len(data) > 1<<20 {
			return
		}
		d := fuzzCartridge(data, fix)
		info, err := ScanCartridge(context.Background(), d, "FZ0001L8", ScanOptions{Verify: true})
		if err == nil {
			t.Fatal("a cartridge without a catalog verified")
		}
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTruncated) {
			t.Fatalf("unclassified error: %v", err)
		}
		for _, s := range info.Catalog.Sections {
			if s.FirstBlock < 1 || s.LastBlock < s.FirstBlock || !repo.ValidPointID(s.Point) {
				t.Fatalf("rebuilt an impossible section %+v", s)
			}
		}
		// The decoders on the raw bytes, too.
		if len(data) > 0 {
			parseFileHeader(data)
			parseChunk(data)
			parseEnd(data)
			parseCatalog(data)
			parseTrailer(data)
			decodeManifest(data)
			parseLabel(data)
		}
	})
}

// The well-formed stream rebuilds to one complete section.
func TestFuzzSeedRebuilds(t *testing.T) {
	d := fuzzCartridge(validStream(), true)
	info, err := ScanCartridge(context.Background(), d, "FZ0001L8", ScanOptions{})
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("scan of an unclosed cartridge: %v", err)
	}
	if len(info.Catalog.Sections) != 1 || info.Catalog.Sections[0].Continues || info.Catalog.Sections[0].Chunks != 2 {
		t.Fatalf("rebuilt %+v", info.Catalog.Sections)
	}
}
