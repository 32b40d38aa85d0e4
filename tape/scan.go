package tape

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"lifeboat/repo"
)

// Catalog is what a set of cartridges holds: each cartridge's label and
// catalog, and where each point's copies are.
type Catalog struct {
	Cartridges []CartridgeInfo `json:"cartridges"`
	Copies     []PointCopy     `json:"copies"`
}

// CartridgeInfo is one cartridge as scanned (or written).
type CartridgeInfo struct {
	// Barcode is the library's barcode; the label's is in Label.
	Barcode string            `json:"barcode"`
	Blank   bool              `json:"blank,omitempty"`
	Label   *Label            `json:"label,omitempty"`
	Catalog *CartridgeCatalog `json:"catalog,omitempty"`
	// Rebuilt says the catalog was rebuilt by reading the data sections
	// because the one on the cartridge was missing or damaged; Verified
	// that every block was read and checked.
	Rebuilt  bool `json:"rebuilt,omitempty"`
	Verified bool `json:"verified,omitempty"`
	// Problem says what was wrong, "" when nothing was.
	Problem string `json:"problem,omitempty"`
}

// PointCopy is one copy of a point: its sections in order across the
// cartridges of one set.
type PointCopy struct {
	Point string    `json:"point"`
	Name  string    `json:"name"`
	Kind  string    `json:"kind"`
	Time  time.Time `json:"time"`
	Set   string    `json:"set"`
	// Written is the label time of the copy's first cartridge.
	Written  time.Time `json:"written"`
	Parts    []Part    `json:"parts"`
	Chunks   int64     `json:"chunks"`
	Bytes    int64     `json:"bytes"`
	Complete bool      `json:"complete"`
	// Problem says why the copy is incomplete.
	Problem string `json:"problem,omitempty"`
}

// Part is one section of a point copy: a tape file on one cartridge.
type Part struct {
	Barcode    string `json:"barcode"`
	Label      string `json:"label"`
	Seq        int    `json:"seq"`
	File       int    `json:"file"`
	FirstBlock int64  `json:"first_block"`
	LastBlock  int64  `json:"last_block"`
	BlockSize  int    `json:"block_size"`
	Continued  bool   `json:"continued"`
	Continues  bool   `json:"continues"`
}

// Find returns the copy of a point to restore from: in set when given,
// else the most recently written complete copy.
func (c *Catalog) Find(point, set string) (*PointCopy, error) {
	var best, partial *PointCopy
	for i := range c.Copies {
		cp := &c.Copies[i]
		if cp.Point != point || (set != "" && cp.Set != set) {
			continue
		}
		if !cp.Complete {
			partial = cp
			continue
		}
		if best == nil || cp.Written.After(best.Written) {
			best = cp
		}
	}
	switch {
	case best != nil:
		return best, nil
	case partial != nil:
		return nil, fmt.Errorf("point %s: the copy in set %s is incomplete: %s: %w", point, partial.Set, partial.Problem, ErrNoCartridge)
	}
	return nil, fmt.Errorf("point %s is on none of the cartridges scanned: %w", point, ErrNoCartridge)
}

// ScanOptions steer Scan.
type ScanOptions struct {
	// Verify reads and checks every block and record, and compares the
	// catalog with what the data sections hold. Otherwise only labels
	// and catalogs are read (the data only when a catalog is missing).
	Verify bool
	// Barcodes limits the scan to these cartridges.
	Barcodes []string
}

// Scan reads every cartridge of the library (blank ones are listed, not
// loaded) and returns what they hold. Needs no repository and no server.
// A cartridge that cannot be read fully is reported in the returned error
// (with its barcode and block number) and in its CartridgeInfo.Problem;
// the others are still scanned.
func Scan(ctx context.Context, lib Library, opts ScanOptions) (*Catalog, error) {
	inv, err := lib.Inventory(ctx)
	if err != nil {
		return nil, fmt.Errorf("tape scan: inventory: %w", err)
	}
	want := map[string]bool{}
	for _, b := range opts.Barcodes {
		want[b] = true
	}
	cat := &Catalog{}
	var errs []error
	for _, c := range inv {
		if len(want) > 0 && !want[c.Barcode] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return cat, err
		}
		if c.Blank {
			cat.Cartridges = append(cat.Cartridges, CartridgeInfo{Barcode: c.Barcode, Blank: true})
			continue
		}
		d, err := lib.Load(ctx, c.Barcode)
		if err != nil {
			errs = append(errs, fmt.Errorf("load cartridge %s: %w", c.Barcode, err))
			cat.Cartridges = append(cat.Cartridges, CartridgeInfo{Barcode: c.Barcode, Problem: err.Error()})
			continue
		}
		info, err := ScanCartridge(ctx, d, c.Barcode, opts)
		if uerr := lib.Unload(ctx, d); uerr != nil && err == nil {
			err = fmt.Errorf("unload cartridge %s: %w", c.Barcode, uerr)
		}
		if err != nil {
			errs = append(errs, err)
		}
		cat.Cartridges = append(cat.Cartridges, *info)
	}
	cat.Copies = buildCopies(cat.Cartridges)
	return cat, errors.Join(errs...)
}

// ScanCartridge reads the cartridge in d: its label, then its catalog (by
// spacing over the data sections), rebuilding the catalog from the data
// when it is missing or damaged. barcode is the library's name for it,
// used in messages ("" uses the label's).
func ScanCartridge(ctx context.Context, d Drive, barcode string, opts ScanOptions) (*CartridgeInfo, error) {
	info := &CartridgeInfo{Barcode: barcode}
	br := newBlockReader(d, barcode)
	l, err := readLabel(br)
	if errors.Is(err, ErrEndOfData) {
		info.Blank = true
		return info, nil
	}
	if err != nil {
		info.Problem = err.Error()
		return info, err
	}
	info.Label = l
	if info.Barcode == "" {
		info.Barcode = l.Barcode
	}
	if barcode != "" && l.Barcode != barcode {
		info.Problem = fmt.Sprintf("the label names the cartridge %s, the library %s", l.Barcode, barcode)
	}
	if !opts.Verify {
		c, err := quickCatalog(br, l)
		if err == nil {
			info.Catalog = c
			return info, nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return info, cerr
		}
		info.Problem = joinProblem(info.Problem, fmt.Sprintf("catalog unreadable, rebuilt from the data: %v", err))
	}
	c, onTape, catErr, err := rebuild(ctx, br, l)
	info.Catalog, info.Rebuilt = c, true
	if catErr != nil {
		info.Problem = joinProblem(info.Problem, fmt.Sprintf("catalog damaged: %v", catErr))
	}
	if err != nil {
		info.Problem = joinProblem(info.Problem, err.Error())
		return info, err
	}
	if opts.Verify {
		if catErr != nil {
			return info, catErr
		}
		a, _ := json.Marshal(c.Sections)
		b, _ := json.Marshal(onTape.Sections)
		if !bytes.Equal(a, b) || c.CatalogBlock != onTape.CatalogBlock {
			err := &BlockError{Barcode: info.Barcode, Block: onTape.CatalogBlock, File: len(c.Sections) + 1,
				Err: fmt.Errorf("the catalog does not describe the data sections as read: %w", ErrCorrupt)}
			info.Problem = joinProblem(info.Problem, err.Error())
			return info, err
		}
		info.Catalog, info.Rebuilt, info.Verified = onTape, false, true
	}
	return info, nil
}

func joinProblem(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// quickCatalog spaces over the data sections (reading the first block of
// each) to the catalog section, reads it and checks it against what it
// passed. br stands after the label.
func quickCatalog(br *blockReader, l *Label) (*CartridgeCatalog, error) {
	var firsts []int64
	for {
		h, p, err := br.read()
		if errors.Is(err, errEndOfSection) {
			return nil, br.fail(-1, fmt.Errorf("empty tape file %d before any catalog: %w", br.file-1, ErrCorrupt))
		}
		if err != nil {
			return nil, err
		}
		switch h.Kind {
		case kindData:
			firsts = append(firsts, int64(h.Number))
			if err := br.space(1); err != nil {
				return nil, err
			}
			continue
		case kindCatalog:
		default:
			return nil, br.fail(int64(h.Number), fmt.Errorf("a %q block starts tape file %d: %w", h.Kind, br.file, ErrCorrupt))
		}
		rr := newRecordReader(br)
		rr.use(h, p)
		c, err := readCatalogSection(rr, l, nil)
		if err != nil {
			return nil, err
		}
		if c.CatalogBlock != int64(h.Number) || len(c.Sections) != len(firsts) {
			return nil, br.fail(int64(h.Number), fmt.Errorf("catalog lists %d sections before block %d, the tape has %d before block %d: %w",
				len(c.Sections), c.CatalogBlock, len(firsts), h.Number, ErrCorrupt))
		}
		for i, s := range c.Sections {
			if s.FirstBlock != firsts[i] {
				return nil, br.fail(int64(h.Number), fmt.Errorf("catalog puts tape file %d at block %d, the tape at %d: %w", i+1, s.FirstBlock, firsts[i], ErrCorrupt))
			}
		}
		return c, nil
	}
}

// use makes rr continue from a block already read.
func (r *recordReader) use(h blockHeader, p []byte) {
	r.hdr, r.payload, r.pos, r.started, r.block, r.inSect = h, p, 0, false, int64(h.Number), true
}

// readCatalogSection reads the 'C' and 'T' records and the filemark.
// first is the 'C' record when it has been read already.
func readCatalogSection(rr *recordReader, l *Label, first *record) (*CartridgeCatalog, error) {
	var rec record
	if first != nil {
		rec = *first
	} else {
		var err error
		if rec, err = rr.next(); err != nil {
			return nil, err
		}
	}
	if rec.Type != recCatalog {
		return nil, rr.br.fail(rec.Block, fmt.Errorf("catalog section starts with a %q record: %w", rec.Type, ErrCorrupt))
	}
	c, err := parseCatalog(rec.Body)
	if err != nil {
		return nil, rr.br.fail(rec.Block, err)
	}
	trec, err := rr.next()
	if err != nil {
		if errors.Is(err, errEndOfSection) {
			err = rr.br.fail(rec.Block, fmt.Errorf("catalog without trailer: %w", ErrCorrupt))
		}
		return nil, err
	}
	if trec.Type != recTrailer {
		return nil, rr.br.fail(trec.Block, fmt.Errorf("a %q record follows the catalog: %w", trec.Type, ErrCorrupt))
	}
	t, err := parseTrailer(trec.Body)
	if err != nil {
		return nil, rr.br.fail(trec.Block, err)
	}
	if err := checkTrailer(t, c, rec.Body, l); err != nil {
		return nil, rr.br.fail(trec.Block, err)
	}
	if err := rr.expectEnd(); err != nil {
		return nil, err
	}
	return c, nil
}

// rebuild reads every data section from the start of the tape and builds
// the catalog they describe, checking every block and record. It also
// returns the catalog found on the tape when it is readable, else why not
// (catErr). A damaged data section is left out of the catalog, reported in
// err, and skipped to go on with the next one; a damaged first block of
// the last tape file is taken for a damaged catalog section.
func rebuild(ctx context.Context, br *blockReader, l *Label) (c, onTape *CartridgeCatalog, catErr, err error) {
	c = &CartridgeCatalog{Format: catalogFormat, Version: formatVersion, Label: l.ID, Barcode: l.Barcode,
		Set: l.Set, Seq: l.Seq, BlockSize: l.BlockSz, Sections: []Section{}}
	if _, err := readLabel(br); err != nil {
		return c, nil, nil, err
	}
	var errs []error
	damaged := -1 // last tape file found damaged
	for file := 1; ; file++ {
		if err := ctx.Err(); err != nil {
			return c, nil, nil, err
		}
		rr := newRecordReader(br)
		rec, err := rr.next()
		if errors.Is(err, errEndOfSection) {
			if damaged == file-1 && damaged > 0 {
				// The damaged file was followed by the end-of-data filemark:
				// it was the catalog section.
				catErr = errs[len(errs)-1]
				return c, nil, catErr, errors.Join(errs[:len(errs)-1]...)
			}
			errs = append(errs, br.fail(-1, fmt.Errorf("empty tape file %d before any catalog: %w", file, ErrCorrupt)))
			return c, nil, nil, errors.Join(errs...)
		}
		if err == nil && rr.hdr.Kind == kindCatalog {
			c.CatalogBlock = rec.Block
			onTape, err := readCatalogSection(rr, l, &rec)
			if err != nil {
				return c, nil, err, errors.Join(errs...)
			}
			return c, onTape, nil, errors.Join(errs...)
		}
		if err == nil && rr.hdr.Kind != kindData {
			err = br.fail(rec.Block, fmt.Errorf("a %q block starts tape file %d: %w", rr.hdr.Kind, file, ErrCorrupt))
		}
		var s *Section
		if err == nil {
			s, err = readSection(rr, rec, file)
		}
		if err == nil {
			c.Sections = append(c.Sections, *s)
			continue
		}
		if errors.Is(err, ErrTruncated) {
			err = fmt.Errorf("%w (no catalog: the cartridge was not closed, or was cut short, after %d data sections)", err, len(c.Sections))
		}
		errs = append(errs, err)
		if !errors.Is(err, ErrCorrupt) || errors.Is(err, ErrTruncated) {
			return c, nil, nil, errors.Join(errs...)
		}
		// Skip the rest of the damaged file, unless its filemark was read.
		damaged = file
		if br.file == file {
			if err := br.space(1); err != nil {
				errs = append(errs, err)
				return c, nil, nil, errors.Join(errs...)
			}
		}
	}
}

// readSection reads one data section whose first record is first, checking
// every record, and describes it.
func readSection(rr *recordReader, first record, file int) (*Section, error) {
	br := rr.br
	if first.Type != recPoint {
		return nil, br.fail(first.Block, fmt.Errorf("data section starts with a %q record: %w", first.Type, ErrCorrupt))
	}
	p, err := decodeManifest(first.Body)
	if err != nil {
		return nil, br.fail(first.Block, err)
	}
	s := &Section{File: file, FirstBlock: first.Block, Point: p.ID, Name: p.Name, Kind: p.Kind, Time: p.Time,
		Continued: first.Flags&flagContinued != 0, Files: []SectionFile{}}
	var fc fileCursor
	fileIdx := -1
	ended := false
	for {
		rec, err := rr.next()
		if errors.Is(err, errEndOfSection) {
			break
		}
		if err != nil {
			return nil, err
		}
		if ended {
			return nil, br.fail(rec.Block, fmt.Errorf("a %q record follows the end of point %s: %w", rec.Type, p.ID, ErrCorrupt))
		}
		switch rec.Type {
		case recFile:
			h, x, _, err := parseFileHeader(rec.Body)
			if err != nil {
				return nil, br.fail(rec.Block, err)
			}
			cont := rec.Flags&flagContinued != 0
			if cont && !(s.Continued && fileIdx == -1) {
				return nil, br.fail(rec.Block, fmt.Errorf("file header of %s has continued=%v in the wrong place: %w", h.Path, cont, ErrCorrupt))
			}
			if fileIdx >= 0 {
				if err := fc.done(); err != nil {
					return nil, br.fail(rec.Block, err)
				}
			}
			next := fileIdx + 1
			for next < len(p.Files) && p.Files[next].Path != h.Path {
				next++
			}
			if next >= len(p.Files) || p.Files[next].Index != h.Index || (!s.Continued && fileIdx == -1 && next != 0) || (!cont && fileIdx >= 0 && next != fileIdx+1) {
				return nil, br.fail(rec.Block, fmt.Errorf("file header of %s is out of the manifest's order: %w", h.Path, ErrCorrupt))
			}
			if !cont && h.FirstSlot != 0 {
				return nil, br.fail(rec.Block, fmt.Errorf("file header of %s starts at slot %d: %w", h.Path, h.FirstSlot, ErrCorrupt))
			}
			fileIdx = next
			fc = fileCursor{h: h, x: x, cursor: h.FirstSlot}
			s.Files = append(s.Files, SectionFile{Path: h.Path, FirstBlock: rec.Block, LastBlock: rr.block, FirstSlot: h.FirstSlot, EndSlot: h.FirstSlot})
		case recChunk:
			if fileIdx < 0 {
				return nil, br.fail(rec.Block, fmt.Errorf("chunk before any file header: %w", ErrCorrupt))
			}
			ch, err := fc.check(rec.Body)
			if err != nil {
				return nil, br.fail(rec.Block, err)
			}
			sf := &s.Files[len(s.Files)-1]
			n := int64(len(ch.Plain))
			sf.EndSlot, sf.Chunks, sf.Bytes, sf.LastBlock = ch.Slot+1, sf.Chunks+1, sf.Bytes+n, rr.block
			s.Chunks++
			s.Bytes += n
		case recEnd:
			e, err := parseEnd(rec.Body)
			if err != nil {
				return nil, br.fail(rec.Block, err)
			}
			if fileIdx >= 0 {
				if err := fc.done(); err != nil {
					return nil, br.fail(rec.Block, err)
				}
			}
			if e.Point != p.ID || fileIdx != len(p.Files)-1 || e.Files != len(p.Files) || (!s.Continued && (e.Chunks != s.Chunks || e.Bytes != s.Bytes)) {
				return nil, br.fail(rec.Block, fmt.Errorf("end of point %s counts %d files, %d chunks, %d bytes; the section holds %d files, %d chunks, %d bytes: %w",
					e.Point, e.Files, e.Chunks, e.Bytes, fileIdx+1, s.Chunks, s.Bytes, ErrCorrupt))
			}
			ended = true
		default:
			return nil, br.fail(rec.Block, fmt.Errorf("unexpected %q record in a data section: %w", rec.Type, ErrCorrupt))
		}
	}
	s.LastBlock = int64(br.next) - 1
	s.Continues = !ended
	return s, nil
}

// decodeManifest decodes a 'P' body as the repository would.
func decodeManifest(body []byte) (*repo.Point, error) {
	var head struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &head); err != nil {
		return nil, fmt.Errorf("point header: %v: %w", err, ErrCorrupt)
	}
	if !repo.ValidPointID(head.ID) {
		return nil, fmt.Errorf("point header names point %q: %w", head.ID, ErrCorrupt)
	}
	p, err := repo.DecodePoint(head.ID, body)
	if err != nil {
		return nil, fmt.Errorf("point header: %v: %w", err, ErrCorrupt)
	}
	return p, nil
}

// fileCursor checks a file's chunks as they come: each stored slot once,
// in order, with the index's chunk ID, the slot's length and its SHA-256.
type fileCursor struct {
	h      *fileHeader
	x      *repo.Index
	cursor int64 // next slot that may come
}

// nextStored is the next stored slot at or after the cursor, or -1.
func (f *fileCursor) nextStored() int64 {
	for s := f.cursor; s < int64(len(f.x.Slots)); s++ {
		if !f.x.Slots[s].Hole {
			return s
		}
	}
	return -1
}

func (f *fileCursor) slotLen(s int64) int64 {
	return min(f.x.ChunkSize, f.x.Size-s*f.x.ChunkSize)
}

func (f *fileCursor) check(body []byte) (*chunk, error) {
	ch, err := parseChunk(body)
	if err != nil {
		return nil, fmt.Errorf("file %s: %w", f.h.Path, err)
	}
	want := f.nextStored()
	if ch.Slot != want {
		return nil, fmt.Errorf("file %s: chunk for slot %d where slot %d was due: %w", f.h.Path, ch.Slot, want, ErrCorrupt)
	}
	if ch.ID != f.x.Slots[want].ID || int64(len(ch.Plain)) != f.slotLen(want) {
		return nil, fmt.Errorf("file %s: chunk %s of %d bytes for slot %d, the index names %s of %d bytes: %w",
			f.h.Path, ch.ID, len(ch.Plain), want, f.x.Slots[want].ID, f.slotLen(want), ErrCorrupt)
	}
	f.cursor = want + 1
	return ch, nil
}

// done checks that no chunk of the file is missing.
func (f *fileCursor) done() error {
	if s := f.nextStored(); s >= 0 {
		return fmt.Errorf("file %s: the chunk for slot %d is missing: %w", f.h.Path, s, ErrCorrupt)
	}
	return nil
}

// buildCopies puts the sections of all cartridges together into point
// copies, following each set's sequence numbers.
func buildCopies(carts []CartridgeInfo) []PointCopy {
	type key struct{ set, point string }
	bySet := map[string][]*CartridgeInfo{}
	for i := range carts {
		c := &carts[i]
		if c.Label == nil || c.Catalog == nil {
			continue
		}
		bySet[c.Label.Set] = append(bySet[c.Label.Set], c)
	}
	sets := make([]string, 0, len(bySet))
	for s := range bySet {
		sets = append(sets, s)
	}
	sort.Strings(sets)
	var out []PointCopy
	for _, set := range sets {
		cs := bySet[set]
		sort.SliceStable(cs, func(i, j int) bool { return cs[i].Label.Seq < cs[j].Label.Seq })
		open := map[key]int{} // copies awaiting their next part → index in out
		for _, c := range cs {
			for _, s := range c.Catalog.Sections {
				part := Part{Barcode: c.Label.Barcode, Label: c.Label.ID, Seq: c.Label.Seq, File: s.File,
					FirstBlock: s.FirstBlock, LastBlock: s.LastBlock, BlockSize: c.Label.BlockSz,
					Continued: s.Continued, Continues: s.Continues}
				k := key{set, s.Point}
				i, ok := open[k]
				if s.Continued && ok {
					last := out[i].Parts[len(out[i].Parts)-1]
					if last.Seq == c.Label.Seq-1 && last.Continues {
						out[i].Parts = append(out[i].Parts, part)
						out[i].Chunks += s.Chunks
						out[i].Bytes += s.Bytes
						if !s.Continues {
							delete(open, k)
						}
						continue
					}
				}
				cp := PointCopy{Point: s.Point, Name: s.Name, Kind: s.Kind, Time: s.Time, Set: set, Written: c.Label.Time,
					Parts: []Part{part}, Chunks: s.Chunks, Bytes: s.Bytes}
				if s.Continued {
					cp.Problem = fmt.Sprintf("its first part, before cartridge %s (number %d of the set), is missing", c.Label.Barcode, c.Label.Seq)
				}
				out = append(out, cp)
				if s.Continues {
					open[k] = len(out) - 1
				} else {
					delete(open, k)
				}
			}
		}
	}
	for i := range out {
		cp := &out[i]
		last := cp.Parts[len(cp.Parts)-1]
		if cp.Problem == "" && last.Continues {
			cp.Problem = fmt.Sprintf("it continues after cartridge %s (number %d of the set), and the next cartridge was not scanned or is unreadable", last.Barcode, last.Seq)
		}
		cp.Complete = cp.Problem == ""
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Time.Equal(out[j].Time) {
			return out[i].Time.Before(out[j].Time)
		}
		return out[i].Written.Before(out[j].Written)
	})
	return out
}
