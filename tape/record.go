package tape

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Record types.
const (
	recLabel   = 'L'
	recPoint   = 'P'
	recFile    = 'F'
	recChunk   = 'K'
	recEnd     = 'Z'
	recCatalog = 'C'
	recTrailer = 'T'

	flagContinued = 1 << 0

	recordHeaderLen = 16
	maxRecordBody   = 256 << 20
)

func knownRecord(t byte) bool {
	switch t {
	case recLabel, recPoint, recFile, recChunk, recEnd, recCatalog, recTrailer:
		return true
	}
	return false
}

// record is one decoded record.
type record struct {
	Type  byte
	Flags byte
	Body  []byte
	// Block is where the record starts on the cartridge.
	Block int64
}

func encodeRecordHeader(typ, flags byte, body ...[]byte) [recordHeaderLen]byte {
	var h [recordHeaderLen]byte
	h[0], h[1] = typ, flags
	n := 0
	crc := uint32(0)
	for _, b := range body {
		n += len(b)
		crc = crc32.Update(crc, castagnoli, b)
	}
	binary.LittleEndian.PutUint32(h[4:], uint32(n))
	binary.LittleEndian.PutUint32(h[8:], crc)
	binary.LittleEndian.PutUint32(h[12:], crc32.Checksum(h[:12], castagnoli))
	return h
}

// decodeRecordHeader checks a record header and returns its type, flags,
// body length and body CRC.
func decodeRecordHeader(h []byte) (typ, flags byte, n int, crc uint32, err error) {
	if len(h) != recordHeaderLen {
		return 0, 0, 0, 0, fmt.Errorf("record header of %d bytes: %w", len(h), ErrCorrupt)
	}
	if got, want := crc32.Checksum(h[:12], castagnoli), binary.LittleEndian.Uint32(h[12:]); got != want {
		return 0, 0, 0, 0, fmt.Errorf("record header CRC32C mismatch: %w", ErrCorrupt)
	}
	typ, flags = h[0], h[1]
	if !knownRecord(typ) || flags&^flagContinued != 0 || h[2] != 0 || h[3] != 0 {
		return 0, 0, 0, 0, fmt.Errorf("unknown record type %q flags %#x: %w", typ, flags, ErrCorrupt)
	}
	l := binary.LittleEndian.Uint32(h[4:])
	if l > maxRecordBody {
		return 0, 0, 0, 0, fmt.Errorf("record body of %d bytes exceeds %d: %w", l, maxRecordBody, ErrCorrupt)
	}
	return typ, flags, int(l), binary.LittleEndian.Uint32(h[8:]), nil
}

// writeRecord appends one record, its body given in pieces.
func (w *blockWriter) writeRecord(typ, flags byte, body ...[]byte) error {
	h := encodeRecordHeader(typ, flags, body...)
	if err := w.write(h[:], true); err != nil {
		return err
	}
	for _, b := range body {
		if err := w.write(b, false); err != nil {
			return err
		}
	}
	return nil
}

// recordSize is what a record of body n costs in stream bytes.
func recordSize(n int) int { return recordHeaderLen + n }

// recordReader reads the records of one section at a time.
type recordReader struct {
	br      *blockReader
	hdr     blockHeader
	payload []byte
	pos     int
	started bool // a record started in the current block
	block   int64
	inSect  bool // a block of the current section has been read
}

func newRecordReader(br *blockReader) *recordReader { return &recordReader{br: br, block: -1} }

// load reads the next block of the section.
func (r *recordReader) load() error {
	h, p, err := r.br.read()
	if err != nil {
		if errors.Is(err, errEndOfSection) {
			r.inSect = false
		}
		return err
	}
	r.hdr, r.payload, r.pos, r.started, r.block, r.inSect = h, p, 0, false, int64(h.Number), true
	return nil
}

// fill copies the next len(dst) bytes of the stream; a filemark inside is
// a truncated record.
func (r *recordReader) fill(dst []byte, start int64) error {
	for len(dst) > 0 {
		if r.pos == len(r.payload) {
			if err := r.load(); err != nil {
				if errors.Is(err, errEndOfSection) {
					return r.br.fail(start, fmt.Errorf("record starting in block %d is cut short by a filemark: %w", start, ErrCorrupt))
				}
				return err
			}
			if r.hdr.First != noRecord && int(r.hdr.First) < len(dst) {
				return r.br.fail(r.block, fmt.Errorf("a record starts at %d inside the record from block %d: %w", r.hdr.First, start, ErrCorrupt))
			}
			continue
		}
		n := copy(dst, r.payload[r.pos:])
		r.pos += n
		dst = dst[n:]
	}
	return nil
}

// next returns the section's next record, or errEndOfSection after its
// last one (the reader then stands in the next tape file). The body is
// freshly allocated.
func (r *recordReader) next() (record, error) {
	for r.pos == len(r.payload) || !r.inSect {
		if err := r.load(); err != nil {
			return record{}, err
		}
	}
	if !r.started && (r.hdr.First == noRecord || int(r.hdr.First) != r.pos) {
		return record{}, r.br.fail(r.block, fmt.Errorf("block header puts the first record at %d, the stream at %d: %w", int32(r.hdr.First), r.pos, ErrCorrupt))
	}
	r.started = true
	start := r.block
	var h [recordHeaderLen]byte
	if err := r.fill(h[:], start); err != nil {
		return record{}, err
	}
	typ, flags, n, crc, err := decodeRecordHeader(h[:])
	if err != nil {
		return record{}, r.br.fail(start, err)
	}
	body := make([]byte, n)
	if err := r.fill(body, start); err != nil {
		return record{}, err
	}
	if got := crc32.Checksum(body, castagnoli); got != crc {
		return record{}, r.br.fail(start, fmt.Errorf("record %q body CRC32C mismatch: %w", typ, ErrCorrupt))
	}
	return record{Type: typ, Flags: flags, Body: body, Block: start}, nil
}

// expectEnd reads on until the section's filemark; a record there is an
// error.
func (r *recordReader) expectEnd() error {
	rec, err := r.next()
	if errors.Is(err, errEndOfSection) {
		return nil
	}
	if err != nil {
		return err
	}
	return r.br.fail(rec.Block, fmt.Errorf("unexpected %q record after the end of the section's content: %w", rec.Type, ErrCorrupt))
}
