package tape

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"lifeboat/repo"
)

// WriteOptions steer WritePoints.
type WriteOptions struct {
	// Cartridges are the barcodes to write, in order. Empty takes the
	// library's blank cartridges in slot order.
	Cartridges []string
	// Overwrite allows writing over cartridges that hold data. Without it
	// a cartridge whose first block is not blank is refused.
	Overwrite bool
	// BlockSize is the tape block size; DefaultBlockSize when 0.
	BlockSize int
	// Plaintext must be set to copy points of an encrypted repository:
	// the tape holds chunks in plaintext.
	Plaintext bool
	// Readers load chunks from the repository ahead of the drive; 4 when 0.
	Readers int
	// Progress receives the chunk bytes written so far.
	Progress func(done int64)
	// Now is the clock for labels; time.Now when nil.
	Now func() time.Time
}

// Result is what WritePoints wrote: one set of cartridges.
type Result struct {
	Set string `json:"set"`
	// Bytes is the chunk plaintext written.
	Bytes int64 `json:"bytes"`
	Catalog
}

// WritePoints copies points of r to a new set of cartridges from lib: each
// point's manifest, then per file its index and stored chunks (plaintext,
// holes left out), spanning cartridges as they fill. It holds a shared
// lock on the repository. The result lists the cartridges written and
// where each point is, as Scan would find them.
func WritePoints(ctx context.Context, r *repo.Repository, points []*repo.Point, lib Library, opts WriteOptions) (*Result, error) {
	if len(points) == 0 {
		return nil, errors.New("tape write: no points given")
	}
	cfg := r.Config()
	if cfg.Encryption != nil && !opts.Plaintext {
		return nil, errors.New("tape write: the repository is encrypted and a tape holds chunks in plaintext; set Plaintext to write anyway")
	}
	bs := opts.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	if !validBlockSize(bs) {
		return nil, fmt.Errorf("tape write: block size %d is not a power of two from %d to %d", bs, MinBlockSize, MaxBlockSize)
	}
	manifests := make([][]byte, len(points))
	seen := map[string]bool{}
	for i, p := range points {
		m, err := json.Marshal(p)
		if err != nil {
			return nil, fmt.Errorf("tape write: point %s: %w", p.ID, err)
		}
		if _, err := repo.DecodePoint(p.ID, m); err != nil {
			return nil, fmt.Errorf("tape write: %w", err)
		}
		if seen[p.ID] {
			return nil, fmt.Errorf("tape write: point %s given twice", p.ID)
		}
		seen[p.ID] = true
		manifests[i] = m
	}
	queue := opts.Cartridges
	for _, b := range queue {
		if !validBarcode(b) {
			return nil, fmt.Errorf("tape write: %q is not a barcode", b)
		}
	}
	if len(queue) == 0 {
		inv, err := lib.Inventory(ctx)
		if err != nil {
			return nil, fmt.Errorf("tape write: inventory: %w", err)
		}
		for _, c := range inv {
			if c.Blank && !c.Loaded {
				queue = append(queue, c.Barcode)
			}
		}
		if opts.Overwrite {
			// Blank cartridges first; then, as asked, those that hold data.
			for _, c := range inv {
				if !c.Blank && !c.Loaded {
					queue = append(queue, c.Barcode)
				}
			}
		}
		if len(queue) == 0 {
			return nil, fmt.Errorf("tape write: %w: the library has no blank cartridge", ErrNoCartridge)
		}
	}
	lock, err := r.Lock(ctx, false, "tape write")
	if err != nil {
		return nil, fmt.Errorf("tape write: %w", err)
	}
	defer lock.Unlock(context.WithoutCancel(ctx))

	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	var set [16]byte
	rand.Read(set[:])
	w := &writer{ctx: ctx, r: r, lib: lib, opts: opts, bs: bs, set: set, queue: queue, now: now}
	if w.opts.Readers <= 0 {
		w.opts.Readers = 4
	}
	for i, p := range points {
		if err := w.writePoint(p, manifests[i]); err != nil {
			w.abandon()
			return w.result(), err
		}
	}
	if err := w.closeCartridge(nil); err != nil {
		w.abandon()
		return w.result(), err
	}
	return w.result(), nil
}

type writer struct {
	ctx   context.Context
	r     *repo.Repository
	lib   Library
	opts  WriteOptions
	bs    int
	set   [16]byte
	queue []string
	now   func() time.Time
	bytes int64
	done  []CartridgeInfo

	// The cartridge being written.
	seq     int
	d       Drive
	label   *Label
	bw      *blockWriter
	cat     *CartridgeCatalog
	records int // data records on this cartridge

	// The point being written.
	point    *repo.Point
	manifest []byte
	sec      *Section
	sf       *SectionFile
}

// fileCont is where a file resumes on the next cartridge.
type fileCont struct {
	h  fileHeader
	xb []byte
}

func (w *writer) result() *Result {
	res := &Result{Set: hex.EncodeToString(w.set[:]), Bytes: w.bytes}
	res.Cartridges = w.done
	res.Copies = buildCopies(w.done)
	return res
}

// abandon unloads a cartridge left open by an error; it stays without a
// catalog, which a scan reports and rebuilds.
func (w *writer) abandon() {
	if w.d != nil {
		w.lib.Unload(context.WithoutCancel(w.ctx), w.d)
		w.d = nil
	}
}

func (w *writer) writePoint(p *repo.Point, manifest []byte) error {
	if w.d == nil {
		if err := w.openCartridge(); err != nil {
			return err
		}
	}
	if err := w.room(recordSize(len(manifest)), nil); err != nil {
		return err
	}
	w.point, w.manifest = p, manifest
	if err := w.beginSection(false); err != nil {
		return err
	}
	var chunks, bytes int64
	for i := range p.Files {
		f := &p.Files[i]
		id, err := repo.ParseID(f.Index)
		if err != nil {
			return fmt.Errorf("point %s file %s: %w", p.ID, f.Path, err)
		}
		x, err := w.r.LoadIndex(w.ctx, id)
		if err != nil {
			return fmt.Errorf("point %s file %s: %w", p.ID, f.Path, err)
		}
		xb, err := x.MarshalBinary()
		if err != nil {
			return err
		}
		h := fileHeader{Path: f.Path, Index: f.Index}
		for _, s := range x.Slots {
			if !s.Hole {
				h.Chunks++
			}
		}
		hj, _ := marshalFileHeader(h, nil)
		if err := w.room(recordSize(len(hj)+len(xb)), nil); err != nil {
			return err
		}
		if err := w.writeFile(h, xb, false); err != nil {
			return err
		}
		err = w.chunks(x, func(slot int64, cid repo.ID, sum [32]byte, data []byte) error {
			if err := w.room(recordSize(chunkPrefix+len(data)), &fileCont{h: fileHeader{Path: h.Path, Index: h.Index, Chunks: h.Chunks, FirstSlot: slot}, xb: xb}); err != nil {
				return err
			}
			if err := w.bw.writeRecord(recChunk, 0, chunkPrefixBytes(slot, cid, sum), data); err != nil {
				return err
			}
			w.records++
			n := int64(len(data))
			w.sf.EndSlot, w.sf.Chunks, w.sf.Bytes, w.sf.LastBlock = slot+1, w.sf.Chunks+1, w.sf.Bytes+n, int64(w.bw.last())
			w.sec.Chunks++
			w.sec.Bytes += n
			chunks++
			bytes += n
			w.bytes += n
			if w.opts.Progress != nil {
				w.opts.Progress(w.bytes)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("point %s file %s: %w", p.ID, f.Path, err)
		}
		w.sf = nil
	}
	end, _ := json.Marshal(endOfPoint{Point: p.ID, Files: len(p.Files), Chunks: chunks, Bytes: bytes})
	if err := w.bw.writeRecord(recEnd, 0, end); err != nil {
		return err
	}
	if err := w.endSection(false); err != nil {
		return err
	}
	w.point, w.manifest = nil, nil
	return nil
}

// room switches to the next cartridge when a record of n stream bytes
// should not go on this one. cont is where the current file resumes when
// the switch falls inside it.
func (w *writer) room(n int, cont *fileCont) error {
	if !w.full(n) {
		return nil
	}
	if w.records == 0 {
		return fmt.Errorf("cartridge %s: a record of %d bytes does not fit on the empty cartridge: %w", w.label.Barcode, n, ErrEndOfMedia)
	}
	if err := w.switchCartridge(cont); err != nil {
		return err
	}
	if w.full(n) {
		return fmt.Errorf("cartridge %s: a record of %d bytes does not fit on a fresh cartridge: %w", w.label.Barcode, n, ErrEndOfMedia)
	}
	return nil
}

// full reports that the cartridge is at early warning, or (on drives that
// know) that n more stream bytes plus the catalog would not fit.
func (w *writer) full(n int) bool {
	if w.d.EarlyWarning() {
		return true
	}
	sr, ok := w.d.(SpaceReporter)
	if !ok {
		return false
	}
	capac := w.bs - blockHeaderLen
	files := 0
	for _, s := range w.cat.Sections {
		files += len(s.Files)
	}
	catalog := recordSize(4096+512*(len(w.cat.Sections)+files+2)) + recordSize(trailerLen)
	blocks := int64(n/capac+2) + int64(catalog/capac+2)
	// Each block may cost some framing on the drive; filemarks a little.
	need := blocks*int64(w.bs+64) + 4*64
	return sr.Remaining() < need
}

func (w *writer) openCartridge() error {
	if len(w.queue) == 0 {
		return fmt.Errorf("%w: cartridge %d of the set is needed and none is left", ErrNoCartridge, w.seq+1)
	}
	barcode := w.queue[0]
	w.queue = w.queue[1:]
	d, err := w.lib.Load(w.ctx, barcode)
	if err != nil {
		return fmt.Errorf("load cartridge %s: %w", barcode, err)
	}
	if !w.opts.Overwrite {
		l, err := readLabel(newBlockReader(d, barcode))
		switch {
		case err == nil:
			w.lib.Unload(context.WithoutCancel(w.ctx), d)
			return fmt.Errorf("cartridge %s holds cartridge %d of set %s written %s; refusing to overwrite it", barcode, l.Seq, l.Set, l.Time.Format(time.RFC3339))
		case !errors.Is(err, ErrEndOfData):
			w.lib.Unload(context.WithoutCancel(w.ctx), d)
			return fmt.Errorf("cartridge %s is not blank (%v); refusing to overwrite it", barcode, err)
		}
	}
	if err := d.Rewind(); err != nil {
		w.lib.Unload(context.WithoutCancel(w.ctx), d)
		return fmt.Errorf("cartridge %s: rewind: %w", barcode, err)
	}
	prev := ""
	if w.label != nil {
		prev = w.label.Barcode
	}
	var id [16]byte
	rand.Read(id[:])
	cfg := w.r.Config()
	w.seq++
	w.d, w.records = d, 0
	w.label = &Label{Format: labelFormat, Version: formatVersion, ID: hex.EncodeToString(id[:]), Barcode: barcode,
		Set: hex.EncodeToString(w.set[:]), Seq: w.seq, Previous: prev, BlockSz: w.bs, Time: w.now().UTC(),
		Repository: cfg.ID, Hash: cfg.Hash, ChunkSize: cfg.ChunkSize, Encrypted: cfg.Encryption != nil, Writer: "lifeboat"}
	w.bw = newBlockWriter(d, barcode, w.bs, w.set, uint32(w.seq))
	w.cat = &CartridgeCatalog{Format: catalogFormat, Version: formatVersion, Label: w.label.ID, Barcode: barcode,
		Set: w.label.Set, Seq: w.seq, BlockSize: w.bs}
	lj, _ := json.Marshal(w.label)
	w.bw.begin(kindLabel)
	if err := w.bw.writeRecord(recLabel, 0, lj); err != nil {
		return err
	}
	return w.bw.end()
}

func (w *writer) beginSection(continued bool) error {
	p := w.point
	w.cat.Sections = append(w.cat.Sections, Section{File: len(w.cat.Sections) + 1, FirstBlock: int64(w.bw.next),
		Point: p.ID, Name: p.Name, Kind: p.Kind, Time: p.Time, Continued: continued, Files: []SectionFile{}})
	w.sec = &w.cat.Sections[len(w.cat.Sections)-1]
	w.bw.begin(kindData)
	var flags byte
	if continued {
		flags = flagContinued
	}
	if err := w.bw.writeRecord(recPoint, flags, w.manifest); err != nil {
		return err
	}
	w.records++
	return nil
}

func (w *writer) writeFile(h fileHeader, xb []byte, continued bool) error {
	w.sec.Files = append(w.sec.Files, SectionFile{Path: h.Path, FirstBlock: int64(w.bw.at()), FirstSlot: h.FirstSlot, EndSlot: h.FirstSlot})
	w.sf = &w.sec.Files[len(w.sec.Files)-1]
	var flags byte
	if continued {
		flags = flagContinued
	}
	hj, _ := marshalFileHeader(h, nil)
	if err := w.bw.writeRecord(recFile, flags, hj, xb); err != nil {
		return err
	}
	w.sf.LastBlock = int64(w.bw.last())
	w.records++
	return nil
}

func (w *writer) endSection(continues bool) error {
	if err := w.bw.end(); err != nil {
		return err
	}
	w.sec.LastBlock = int64(w.bw.next) - 1
	w.sec.Continues = continues
	w.sec, w.sf = nil, nil
	return nil
}

// switchCartridge closes the cartridge and opens the next, resuming the
// point (and the file, when cont is set) being written.
func (w *writer) switchCartridge(cont *fileCont) error {
	inPoint := w.sec != nil
	if inPoint {
		if err := w.endSection(true); err != nil {
			return err
		}
	}
	next := &NextRef{Seq: w.seq + 1}
	if len(w.queue) > 0 {
		next.Barcode = w.queue[0]
	}
	if !inPoint {
		next = nil
	}
	if err := w.closeCartridge(next); err != nil {
		return err
	}
	if err := w.openCartridge(); err != nil {
		return err
	}
	if !inPoint {
		return nil
	}
	if err := w.beginSection(true); err != nil {
		return err
	}
	if cont != nil {
		return w.writeFile(cont.h, cont.xb, true)
	}
	return nil
}

// closeCartridge writes the catalog section and the end-of-data filemark,
// and unloads the cartridge.
func (w *writer) closeCartridge(next *NextRef) error {
	w.cat.CatalogBlock = int64(w.bw.next)
	w.cat.Next = next
	body, err := json.Marshal(w.cat)
	if err != nil {
		return err
	}
	t := trailer{Seq: uint32(w.seq), Set: w.set, CatalogBlock: uint64(w.cat.CatalogBlock), Sections: uint32(len(w.cat.Sections)),
		Continues: next != nil, CatalogSum: sha256.Sum256(body)}
	w.bw.begin(kindCatalog)
	if err := w.bw.writeRecord(recCatalog, 0, body); err != nil {
		return err
	}
	if err := w.bw.writeRecord(recTrailer, 0, t.marshal()); err != nil {
		return err
	}
	if err := w.bw.end(); err != nil {
		return err
	}
	if err := w.d.WriteFilemarks(1); err != nil {
		return &BlockError{Barcode: w.label.Barcode, Block: int64(w.bw.next), File: -1, Err: fmt.Errorf("write end-of-data filemark: %w", err)}
	}
	d := w.d
	w.d = nil
	if err := w.lib.Unload(w.ctx, d); err != nil {
		return fmt.Errorf("unload cartridge %s: %w", w.label.Barcode, err)
	}
	cat := *w.cat
	w.done = append(w.done, CartridgeInfo{Barcode: w.label.Barcode, Label: w.label, Catalog: &cat})
	return nil
}

type fetched struct {
	slot int64
	id   repo.ID
	sum  [32]byte
	data []byte
	err  error
}

// chunks loads the stored slots of x in order, a few ahead of fn, and
// checks each is as long as its slot.
func (w *writer) chunks(x *repo.Index, fn func(slot int64, id repo.ID, sum [32]byte, data []byte) error) error {
	ctx, cancel := context.WithCancel(w.ctx)
	defer cancel()
	queue := make(chan chan fetched, w.opts.Readers)
	sem := make(chan struct{}, w.opts.Readers)
	go func() {
		defer close(queue)
		for s, sl := range x.Slots {
			if sl.Hole {
				continue
			}
			c := make(chan fetched, 1)
			select {
			case queue <- c:
			case <-ctx.Done():
				return
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				c <- fetched{err: ctx.Err()}
				return
			}
			go func(slot int64, id repo.ID) {
				data, err := w.r.LoadChunk(ctx, id)
				<-sem
				var sum [32]byte
				if err == nil {
					sum = sha256.Sum256(data)
				}
				c <- fetched{slot: slot, id: id, sum: sum, data: data, err: err}
			}(int64(s), sl.ID)
		}
	}()
	for c := range queue {
		f := <-c
		if f.err != nil {
			return f.err
		}
		want := min(x.ChunkSize, x.Size-f.slot*x.ChunkSize)
		if int64(len(f.data)) != want {
			return fmt.Errorf("slot %d: chunk %s holds %d bytes, the slot %d: %w", f.slot, f.id, len(f.data), want, repo.ErrCorrupt)
		}
		if err := fn(f.slot, f.id, f.sum, f.data); err != nil {
			return err
		}
	}
	return ctx.Err()
}
