package tape

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"lifeboat/disk"
	"lifeboat/repo"
)

// pointReader reads one copy of a point record by record, following its
// parts from cartridge to cartridge and checking every record.
type pointReader struct {
	ctx   context.Context
	lib   Library
	cp    *PointCopy
	part  int
	d     Drive
	br    *blockReader
	rr    *recordReader
	label *Label

	point    *repo.Point
	manifest []byte

	fileIdx int
	fc      *fileCursor
	xb      []byte
	chunks  int64
	bytes   int64
	ended   bool
}

// openPointReader loads the copy's first cartridge and reads the point's
// manifest.
func openPointReader(ctx context.Context, lib Library, cp *PointCopy) (*pointReader, error) {
	if len(cp.Parts) == 0 {
		return nil, fmt.Errorf("point %s: the copy has no parts", cp.Point)
	}
	pr := &pointReader{ctx: ctx, lib: lib, cp: cp, part: -1, fileIdx: -1}
	if err := pr.loadPart(0); err != nil {
		pr.close()
		return nil, err
	}
	return pr, nil
}

func (pr *pointReader) close() {
	if pr.d != nil {
		pr.lib.Unload(context.WithoutCancel(pr.ctx), pr.d)
		pr.d = nil
	}
}

// loadPart positions on part i's section and reads its point header (and,
// when the part resumes inside a file, that file's header again).
func (pr *pointReader) loadPart(i int) error {
	pr.close()
	part := pr.cp.Parts[i]
	d, err := pr.lib.Load(pr.ctx, part.Barcode)
	if err != nil {
		return fmt.Errorf("point %s: load cartridge %s (number %d of set %s): %w", pr.cp.Point, part.Barcode, part.Seq, pr.cp.Set, err)
	}
	pr.d, pr.part = d, i
	pr.br = newBlockReader(d, part.Barcode)
	l, err := readLabel(pr.br)
	if err != nil {
		return err
	}
	if l.ID != part.Label || l.Set != pr.cp.Set || l.Seq != part.Seq {
		return fmt.Errorf("cartridge %s holds cartridge %d of set %s (label %s), not cartridge %d of set %s (label %s): %w",
			part.Barcode, l.Seq, l.Set, l.ID, part.Seq, pr.cp.Set, part.Label, ErrNoCartridge)
	}
	pr.label = l
	if err := pr.br.space(part.File - 1); err != nil {
		return err
	}
	pr.rr = newRecordReader(pr.br)
	rec, err := pr.rr.next()
	if errors.Is(err, errEndOfSection) {
		return pr.br.fail(-1, fmt.Errorf("tape file %d is empty: %w", part.File, ErrCorrupt))
	}
	if err != nil {
		return err
	}
	if rec.Type != recPoint || rec.Block != part.FirstBlock || pr.rr.hdr.Kind != kindData {
		return pr.br.fail(rec.Block, fmt.Errorf("tape file %d starts with a %q record at block %d, not point %s at block %d: %w",
			part.File, rec.Type, rec.Block, pr.cp.Point, part.FirstBlock, ErrCorrupt))
	}
	if cont := rec.Flags&flagContinued != 0; cont != (i > 0) {
		return pr.br.fail(rec.Block, fmt.Errorf("point header continued=%v in part %d: %w", cont, i+1, ErrCorrupt))
	}
	if i == 0 {
		p, err := decodeManifest(rec.Body)
		if err != nil {
			return pr.br.fail(rec.Block, err)
		}
		if p.ID != pr.cp.Point {
			return pr.br.fail(rec.Block, fmt.Errorf("tape file %d holds point %s, not %s: %w", part.File, p.ID, pr.cp.Point, ErrCorrupt))
		}
		pr.point, pr.manifest = p, rec.Body
		return nil
	}
	if !bytes.Equal(rec.Body, pr.manifest) {
		return pr.br.fail(rec.Block, fmt.Errorf("point %s continues with a different manifest: %w", pr.cp.Point, ErrCorrupt))
	}
	if pr.fc == nil || pr.fc.nextStored() < 0 {
		return nil // the break fell between files
	}
	rec, err = pr.rr.next()
	if err != nil {
		if errors.Is(err, errEndOfSection) {
			err = pr.br.fail(-1, fmt.Errorf("point %s: file %s does not resume: %w", pr.cp.Point, pr.fc.h.Path, ErrCorrupt))
		}
		return err
	}
	if rec.Type != recFile || rec.Flags&flagContinued == 0 {
		return pr.br.fail(rec.Block, fmt.Errorf("point %s: a %q record where file %s should resume: %w", pr.cp.Point, rec.Type, pr.fc.h.Path, ErrCorrupt))
	}
	h, _, xb, err := parseFileHeader(rec.Body)
	if err != nil {
		return pr.br.fail(rec.Block, err)
	}
	if h.Path != pr.fc.h.Path || h.Index != pr.fc.h.Index || h.FirstSlot != pr.fc.nextStored() || !bytes.Equal(xb, pr.xb) {
		return pr.br.fail(rec.Block, fmt.Errorf("point %s: file %s resumes as %s at slot %d, want slot %d: %w",
			pr.cp.Point, pr.fc.h.Path, h.Path, h.FirstSlot, pr.fc.nextStored(), ErrCorrupt))
	}
	return nil
}

// next returns the point's next record, moving to the next part at the end
// of a section.
func (pr *pointReader) next() (record, error) {
	for {
		if err := pr.ctx.Err(); err != nil {
			return record{}, err
		}
		rec, err := pr.rr.next()
		if !errors.Is(err, errEndOfSection) {
			return rec, err
		}
		if pr.part+1 >= len(pr.cp.Parts) {
			return record{}, pr.br.fail(-1, fmt.Errorf("point %s ends in tape file %d without its end record, and no further cartridge is known: %w",
				pr.cp.Point, pr.cp.Parts[pr.part].File, ErrTruncated))
		}
		if err := pr.loadPart(pr.part + 1); err != nil {
			return record{}, err
		}
	}
}

// nextFile reads the next file header; io.EOF after the end of the point,
// whose counts are then checked.
func (pr *pointReader) nextFile() (*fileHeader, *repo.Index, error) {
	if pr.fc != nil {
		if err := pr.fc.done(); err != nil {
			return nil, nil, pr.br.fail(-1, err)
		}
	}
	rec, err := pr.next()
	if err != nil {
		return nil, nil, err
	}
	switch rec.Type {
	case recFile:
		if rec.Flags&flagContinued != 0 {
			return nil, nil, pr.br.fail(rec.Block, fmt.Errorf("a continued file header inside a section: %w", ErrCorrupt))
		}
		h, x, xb, err := parseFileHeader(rec.Body)
		if err != nil {
			return nil, nil, pr.br.fail(rec.Block, err)
		}
		pr.fileIdx++
		if pr.fileIdx >= len(pr.point.Files) || pr.point.Files[pr.fileIdx].Path != h.Path || pr.point.Files[pr.fileIdx].Index != h.Index || h.FirstSlot != 0 {
			return nil, nil, pr.br.fail(rec.Block, fmt.Errorf("point %s: file header of %s is out of the manifest's order: %w", pr.cp.Point, h.Path, ErrCorrupt))
		}
		pr.fc, pr.xb = &fileCursor{h: h, x: x}, xb
		return h, x, nil
	case recEnd:
		e, err := parseEnd(rec.Body)
		if err != nil {
			return nil, nil, pr.br.fail(rec.Block, err)
		}
		if e.Point != pr.cp.Point || e.Files != len(pr.point.Files) || pr.fileIdx != len(pr.point.Files)-1 || e.Chunks != pr.chunks || e.Bytes != pr.bytes {
			return nil, nil, pr.br.fail(rec.Block, fmt.Errorf("end of point %s counts %d files, %d chunks, %d bytes; read %d, %d, %d: %w",
				e.Point, e.Files, e.Chunks, e.Bytes, pr.fileIdx+1, pr.chunks, pr.bytes, ErrCorrupt))
		}
		if err := pr.rr.expectEnd(); err != nil {
			return nil, nil, err
		}
		pr.ended, pr.fc = true, nil
		return nil, nil, io.EOF
	}
	return nil, nil, pr.br.fail(rec.Block, fmt.Errorf("point %s: unexpected %q record: %w", pr.cp.Point, rec.Type, ErrCorrupt))
}

// nextChunk returns the current file's next stored slot and its checked
// plaintext; io.EOF when the file has no more.
func (pr *pointReader) nextChunk() (int64, []byte, error) {
	if pr.fc == nil || pr.fc.nextStored() < 0 {
		return 0, nil, io.EOF
	}
	rec, err := pr.next()
	if err != nil {
		return 0, nil, err
	}
	if rec.Type != recChunk {
		return 0, nil, pr.br.fail(rec.Block, fmt.Errorf("point %s file %s: a %q record where the chunk for slot %d was due: %w",
			pr.cp.Point, pr.fc.h.Path, rec.Type, pr.fc.nextStored(), ErrCorrupt))
	}
	ch, err := pr.fc.check(rec.Body)
	if err != nil {
		return 0, nil, pr.br.fail(rec.Block, err)
	}
	pr.chunks++
	pr.bytes += int64(len(ch.Plain))
	return ch.Slot, ch.Plain, nil
}

// tapeImage presents one file of the point being read as a disk.Image,
// its chunks coming off the tape as reads move forward. A repository's
// WriteImage reads stored slots in order, which is all it allows; a read
// that would need a chunk already passed fails.
type tapeImage struct {
	pr   *pointReader
	x    *repo.Index
	info disk.Info

	cache [4]cached
	ci    int
	// read, when set, counts bytes taken off the tape.
	read func(n int64)
}

type cached struct {
	slot int64
	data []byte
}

func newTapeImage(pr *pointReader, x *repo.Index, f *repo.File) *tapeImage {
	m := &tapeImage{pr: pr, x: x}
	if f.Disk != nil {
		m.info = *f.Disk
	} else {
		m.info = disk.Info{Format: disk.Raw, Size: x.Size}
	}
	for i := range m.cache {
		m.cache[i].slot = -1
	}
	return m
}

func (m *tapeImage) Format() disk.Format { return m.info.Format }
func (m *tapeImage) Size() int64         { return m.x.Size }
func (m *tapeImage) Info() disk.Info     { return m.info }
func (m *tapeImage) Parent() disk.Image  { return nil }
func (m *tapeImage) Close() error        { return nil }

// Extents is the stored layer map, or Data for stored slots and
// Unallocated for holes, as repo.FileImage has it.
func (m *tapeImage) Extents(ctx context.Context, off, length int64) ([]disk.Extent, error) {
	return m.x.ExtentsOf(off, length), nil
}

// ReadAt returns the layer's stored bytes (zeros in holes).
func (m *tapeImage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= m.x.Size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), m.x.Size-off))
	dst := p[:n]
	cs := m.x.ChunkSize
	for len(dst) > 0 {
		s := off / cs
		in := off - s*cs
		k := min(int64(len(dst)), cs-in)
		if m.x.Slots[s].Hole {
			clear(dst[:k])
		} else {
			data, err := m.slot(s)
			if err != nil {
				return 0, err
			}
			copy(dst[:k], data[in:in+k])
		}
		dst = dst[k:]
		off += k
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *tapeImage) slot(s int64) ([]byte, error) {
	for _, c := range m.cache {
		if c.slot == s {
			return c.data, nil
		}
	}
	for {
		next := m.pr.fc.nextStored()
		if next < 0 || next > s {
			return nil, fmt.Errorf("point %s file %s: slot %d was read out of order: the tape has moved past it", m.pr.cp.Point, m.pr.fc.h.Path, s)
		}
		if next < s {
			return nil, fmt.Errorf("point %s file %s: slot %d read before slot %d: a tape is read in order", m.pr.cp.Point, m.pr.fc.h.Path, s, next)
		}
		slot, data, err := m.pr.nextChunk()
		if err != nil {
			return nil, err
		}
		m.cache[m.ci] = cached{slot: slot, data: data}
		m.ci = (m.ci + 1) % len(m.cache)
		if m.read != nil {
			m.read(int64(len(data)))
		}
		if slot == s {
			return data, nil
		}
	}
}
