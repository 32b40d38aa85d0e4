package tape

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
)

// Block sizes: every block of a cartridge has the label's size.
const (
	MinBlockSize     = 4 << 10
	MaxBlockSize     = 8 << 20
	DefaultBlockSize = 256 << 10
)

const (
	blockMagic     = "LBTB"
	formatVersion  = 1
	blockHeaderLen = 48
	noRecord       = 0xFFFFFFFF

	kindLabel   = 'L'
	kindData    = 'D'
	kindCatalog = 'C'
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// blockHeader is the fixed head of every block.
type blockHeader struct {
	Kind   byte
	Shift  uint8
	Set    [16]byte
	Seq    uint32
	Used   uint32
	Number uint64
	First  uint32 // offset of the first record starting here, or noRecord
}

func validBlockSize(n int) bool {
	return n >= MinBlockSize && n <= MaxBlockSize && n&(n-1) == 0
}

// sealBlock writes h into b[:48] and the CRC over all of b. The payload
// (b[48:48+Used]) and zero padding must already be in place.
func sealBlock(b []byte, h blockHeader) {
	copy(b[0:4], blockMagic)
	b[4] = formatVersion
	b[5] = h.Kind
	b[6] = h.Shift
	b[7] = 0
	copy(b[8:24], h.Set[:])
	binary.LittleEndian.PutUint32(b[24:], h.Seq)
	binary.LittleEndian.PutUint32(b[28:], h.Used)
	binary.LittleEndian.PutUint64(b[32:], h.Number)
	binary.LittleEndian.PutUint32(b[40:], h.First)
	binary.LittleEndian.PutUint32(b[44:], 0)
	binary.LittleEndian.PutUint32(b[44:], crc32.Checksum(b, castagnoli))
}

// openBlock checks a block read from tape and returns its header and
// payload. Every check failure wraps ErrCorrupt.
func openBlock(b []byte) (blockHeader, []byte, error) {
	var h blockHeader
	if len(b) < MinBlockSize || len(b) > MaxBlockSize || len(b)&(len(b)-1) != 0 {
		return h, nil, fmt.Errorf("block of %d bytes is not a Lifeboat tape block: %w", len(b), ErrCorrupt)
	}
	if string(b[0:4]) != blockMagic {
		return h, nil, fmt.Errorf("bad block magic %q: %w", b[0:4], ErrCorrupt)
	}
	want := binary.LittleEndian.Uint32(b[44:])
	binary.LittleEndian.PutUint32(b[44:], 0)
	got := crc32.Checksum(b, castagnoli)
	binary.LittleEndian.PutUint32(b[44:], want)
	if got != want {
		return h, nil, fmt.Errorf("CRC32C mismatch (stored %08x, computed %08x): %w", want, got, ErrCorrupt)
	}
	if b[4] != formatVersion {
		return h, nil, fmt.Errorf("tape format version %d not supported: %w", b[4], ErrCorrupt)
	}
	h.Kind, h.Shift = b[5], b[6]
	copy(h.Set[:], b[8:24])
	h.Seq = binary.LittleEndian.Uint32(b[24:])
	h.Used = binary.LittleEndian.Uint32(b[28:])
	h.Number = binary.LittleEndian.Uint64(b[32:])
	h.First = binary.LittleEndian.Uint32(b[40:])
	if h.Kind != kindLabel && h.Kind != kindData && h.Kind != kindCatalog {
		return h, nil, fmt.Errorf("unknown section kind %q: %w", h.Kind, ErrCorrupt)
	}
	if h.Shift >= 32 || 1<<h.Shift != len(b) || b[7] != 0 {
		return h, nil, fmt.Errorf("block header says 2^%d bytes, block has %d: %w", h.Shift, len(b), ErrCorrupt)
	}
	if int64(h.Used) > int64(len(b)-blockHeaderLen) {
		return h, nil, fmt.Errorf("block uses %d payload bytes of %d: %w", h.Used, len(b)-blockHeaderLen, ErrCorrupt)
	}
	if h.First != noRecord && h.First >= h.Used {
		return h, nil, fmt.Errorf("first record at %d past the %d bytes used: %w", h.First, h.Used, ErrCorrupt)
	}
	return h, b[blockHeaderLen : blockHeaderLen+int(h.Used)], nil
}

// blockWriter packs a section's record stream into blocks.
type blockWriter struct {
	d       Drive
	barcode string
	bs      int
	shift   uint8
	set     [16]byte
	seq     uint32
	next    uint64 // number of the next block to write
	buf     []byte
	kind    byte
	used    int
	first   int // first record start in buf, -1 none
	written int // blocks written in the open section
}

func newBlockWriter(d Drive, barcode string, bs int, set [16]byte, seq uint32) *blockWriter {
	return &blockWriter{d: d, barcode: barcode, bs: bs, shift: uint8(bits.TrailingZeros(uint(bs))),
		set: set, seq: seq, buf: make([]byte, bs), first: -1}
}

func (w *blockWriter) capacity() int { return w.bs - blockHeaderLen }

// begin opens a section; sections start on a new block.
func (w *blockWriter) begin(kind byte) {
	w.kind, w.used, w.first, w.written = kind, 0, -1, 0
}

// write appends p to the section's stream; start marks p as the start of
// a record.
func (w *blockWriter) write(p []byte, start bool) error {
	for len(p) > 0 || start {
		if w.used == w.capacity() {
			if err := w.flush(); err != nil {
				return err
			}
		}
		if start {
			if w.first < 0 {
				w.first = w.used
			}
			start = false
		}
		n := copy(w.buf[blockHeaderLen+w.used:], p)
		w.used += n
		p = p[n:]
	}
	return nil
}

// flush writes the current block, padded with zeros.
func (w *blockWriter) flush() error {
	clear(w.buf[blockHeaderLen+w.used:])
	first := uint32(noRecord)
	if w.first >= 0 {
		first = uint32(w.first)
	}
	sealBlock(w.buf, blockHeader{Kind: w.kind, Shift: w.shift, Set: w.set, Seq: w.seq,
		Used: uint32(w.used), Number: w.next, First: first})
	if err := w.d.WriteBlock(w.buf); err != nil {
		if errors.Is(err, ErrEndOfMedia) {
			err = fmt.Errorf("%w: the cartridge filled up past its early-warning zone", err)
		}
		return &BlockError{Barcode: w.barcode, Block: int64(w.next), File: -1, Err: err}
	}
	w.next++
	w.written++
	w.used, w.first = 0, -1
	return nil
}

// end flushes the section's last block and writes its filemark.
func (w *blockWriter) end() error {
	if w.used > 0 || w.written == 0 {
		if err := w.flush(); err != nil {
			return err
		}
	}
	if err := w.d.WriteFilemarks(1); err != nil {
		return &BlockError{Barcode: w.barcode, Block: int64(w.next), File: -1, Err: fmt.Errorf("write filemark: %w", err)}
	}
	return nil
}

// at is the number of the block the next byte of the stream lands in.
func (w *blockWriter) at() uint64 {
	if w.used == w.capacity() {
		return w.next + 1
	}
	return w.next
}

// last is the number of the block holding the last byte written.
func (w *blockWriter) last() uint64 {
	if w.used == 0 {
		return w.next - 1
	}
	return w.next
}

// blockReader reads a cartridge's blocks and checks each one.
type blockReader struct {
	d       Drive
	barcode string
	bs      int // 0 until the label is read
	set     [16]byte
	seq     uint32
	bound   bool // set and seq are known (label read)
	buf     []byte
	next    uint64 // expected next block number
	known   bool   // next is known
	file    int    // tape file being read
}

func newBlockReader(d Drive, barcode string) *blockReader {
	return &blockReader{d: d, barcode: barcode}
}

// probeBufs keeps a few MaxBlockSize buffers for reading label blocks: a
// free list rather than a sync.Pool, which would drop them at every GC.
var probeBufs = make(chan []byte, 2)

func getProbe() []byte {
	select {
	case b := <-probeBufs:
		return b
	default:
		return make([]byte, MaxBlockSize)
	}
}

func putProbe(b []byte) {
	select {
	case probeBufs <- b:
	default:
	}
}

// errEndOfSection is returned at a filemark.
var errEndOfSection = errors.New("end of section")

func (r *blockReader) fail(block int64, err error) error {
	return &BlockError{Barcode: r.barcode, Block: block, File: r.file, Err: err}
}

func (r *blockReader) expected() int64 {
	if r.known {
		return int64(r.next)
	}
	return -1
}

// read returns the next block of the current section, errEndOfSection at
// its filemark (the reader then stands in the next tape file).
func (r *blockReader) read() (blockHeader, []byte, error) {
	var n int
	var err error
	if r.bs == 0 {
		// The block size is not known yet: read into the largest buffer
		// a block may need, then keep a buffer of the size found.
		probe := getProbe()
		n, err = r.d.ReadBlock(probe)
		if err == nil {
			r.buf = append(r.buf[:0], probe[:n]...)
		}
		putProbe(probe)
	} else {
		if len(r.buf) < r.bs {
			r.buf = make([]byte, r.bs)
		}
		n, err = r.d.ReadBlock(r.buf[:r.bs])
	}
	switch {
	case errors.Is(err, ErrFilemark):
		r.file++
		return blockHeader{}, nil, errEndOfSection
	case errors.Is(err, ErrEndOfData):
		if r.file == 0 && r.known && r.next == 0 {
			return blockHeader{}, nil, r.fail(0, fmt.Errorf("the cartridge is blank: %w", ErrEndOfData))
		}
		return blockHeader{}, nil, r.fail(r.expected(), fmt.Errorf("recorded data ends inside tape file %d: %w", r.file, ErrTruncated))
	case err != nil:
		return blockHeader{}, nil, r.fail(r.expected(), err)
	}
	if r.bs == 0 {
		r.bs = n // the label block tells the size; openBlock checks it
	} else if n != r.bs {
		return blockHeader{}, nil, r.fail(r.expected(), fmt.Errorf("block of %d bytes where the label says %d: %w", n, r.bs, ErrCorrupt))
	}
	h, payload, err := openBlock(r.buf[:n])
	if err != nil {
		return h, nil, r.fail(r.expected(), err)
	}
	if r.bound && (h.Set != r.set || h.Seq != r.seq) {
		return h, nil, r.fail(int64(h.Number), fmt.Errorf("block belongs to set %x cartridge %d, not set %x cartridge %d: %w", h.Set, h.Seq, r.set, r.seq, ErrCorrupt))
	}
	if r.known && h.Number != r.next {
		return h, nil, r.fail(r.expected(), fmt.Errorf("found block number %d: a block was lost or repeated: %w", h.Number, ErrCorrupt))
	}
	r.next, r.known = h.Number+1, true
	return h, payload, nil
}

// space skips n tape files forward; block numbers are then re-learnt.
func (r *blockReader) space(n int) error {
	if n == 0 {
		return nil
	}
	if err := r.d.SpaceFilemarks(n); err != nil {
		if errors.Is(err, ErrEndOfData) {
			err = fmt.Errorf("recorded data ends before tape file %d: %w", r.file+n, ErrTruncated)
		}
		return r.fail(-1, err)
	}
	r.file += n
	r.known = false
	return nil
}

// rewind goes back to block 0.
func (r *blockReader) rewind() error {
	if err := r.d.Rewind(); err != nil {
		return r.fail(-1, fmt.Errorf("rewind: %w", err))
	}
	r.file, r.next, r.known = 0, 0, true
	return nil
}
