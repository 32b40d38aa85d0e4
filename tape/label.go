package tape

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"time"

	"lifeboat/repo"
)

// Label is the first record of every cartridge.
type Label struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	// ID is unique per cartridge written (a relabelled barcode gets a new
	// one): the server's catalog keys cartridges by it.
	ID       string    `json:"id"`
	Barcode  string    `json:"barcode"`
	Set      string    `json:"set"`
	Seq      int       `json:"seq"`
	Previous string    `json:"previous,omitempty"`
	BlockSz  int       `json:"block_size"`
	Time     time.Time `json:"time"`
	// Repository is the ID of the repository the points came from; Hash
	// and ChunkSize are its parameters.
	Repository string `json:"repository"`
	Hash       string `json:"hash"`
	ChunkSize  int    `json:"chunk_size"`
	// Encrypted says the source repository is encrypted; the chunks on
	// tape are plaintext regardless.
	Encrypted bool   `json:"encrypted"`
	Writer    string `json:"writer,omitempty"`
}

const (
	labelFormat   = "lifeboat-tape"
	catalogFormat = "lifeboat-tape-catalog"
)

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

func validBarcode(s string) bool {
	if s == "" || len(s) > 32 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidBarcode reports whether s can be a barcode: 1 to 32 of
// [A-Za-z0-9._-], not starting with '.' or '-'.
func ValidBarcode(s string) bool { return validBarcode(s) }

func (l *Label) validate() error {
	switch {
	case l.Format != labelFormat || l.Version != formatVersion:
		return fmt.Errorf("label is %q version %d, want %q version %d", l.Format, l.Version, labelFormat, formatVersion)
	case !isHex(l.ID, 32) || !isHex(l.Set, 32):
		return fmt.Errorf("label has a bad ID %q or set %q", l.ID, l.Set)
	case !validBarcode(l.Barcode):
		return fmt.Errorf("label has a bad barcode %q", l.Barcode)
	case l.Previous != "" && !validBarcode(l.Previous):
		return fmt.Errorf("label has a bad previous barcode %q", l.Previous)
	case l.Seq < 1 || l.Seq > 1<<20 || (l.Seq == 1) != (l.Previous == ""):
		return fmt.Errorf("label has sequence number %d with previous cartridge %q", l.Seq, l.Previous)
	case !validBlockSize(l.BlockSz):
		return fmt.Errorf("label has block size %d", l.BlockSz)
	}
	return nil
}

func (l *Label) setID() [16]byte {
	var s [16]byte
	hex.Decode(s[:], []byte(l.Set))
	return s
}

// parseLabel decodes and validates a label record's body.
func parseLabel(body []byte) (*Label, error) {
	var l Label
	if err := json.Unmarshal(body, &l); err != nil {
		return nil, fmt.Errorf("label: %v: %w", err, ErrCorrupt)
	}
	if err := l.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrCorrupt)
	}
	return &l, nil
}

// readLabel reads a cartridge's label section from the beginning of the
// tape and binds br to the cartridge's set, sequence number and block size.
// A blank cartridge returns an error wrapping ErrEndOfData.
func readLabel(br *blockReader) (*Label, error) {
	br.bs, br.bound = 0, false
	if err := br.rewind(); err != nil {
		return nil, err
	}
	rr := newRecordReader(br)
	rec, err := rr.next()
	if err != nil {
		if errors.Is(err, errEndOfSection) {
			return nil, br.fail(0, fmt.Errorf("tape starts with a filemark: not a Lifeboat cartridge: %w", ErrCorrupt))
		}
		return nil, err
	}
	h := rr.hdr
	if h.Kind != kindLabel || rec.Block != 0 || rec.Type != recLabel {
		return nil, br.fail(0, fmt.Errorf("tape starts with a %q record in a %q block: not a label: %w", rec.Type, h.Kind, ErrCorrupt))
	}
	l, err := parseLabel(rec.Body)
	if err != nil {
		return nil, br.fail(0, err)
	}
	if l.BlockSz != br.bs || l.setID() != h.Set || uint32(l.Seq) != h.Seq {
		return nil, br.fail(0, fmt.Errorf("label (set %s, cartridge %d, %d-byte blocks) disagrees with its block header: %w", l.Set, l.Seq, l.BlockSz, ErrCorrupt))
	}
	br.set, br.seq, br.bound = h.Set, h.Seq, true
	if br.barcode == "" {
		br.barcode = l.Barcode
	}
	if err := rr.expectEnd(); err != nil {
		return nil, err
	}
	return l, nil
}

// CartridgeCatalog is a cartridge's 'C' record: what it holds.
type CartridgeCatalog struct {
	Format       string    `json:"format"`
	Version      int       `json:"version"`
	Label        string    `json:"label"`
	Barcode      string    `json:"barcode"`
	Set          string    `json:"set"`
	Seq          int       `json:"seq"`
	BlockSize    int       `json:"block_size"`
	CatalogBlock int64     `json:"catalog_block"`
	Sections     []Section `json:"sections"`
	Next         *NextRef  `json:"next,omitempty"`
}

// NextRef names the cartridge a set continues on.
type NextRef struct {
	Seq     int    `json:"seq"`
	Barcode string `json:"barcode"`
}

// Section is one data section (tape file): a point or part of one.
type Section struct {
	File       int           `json:"file"`
	FirstBlock int64         `json:"first_block"`
	LastBlock  int64         `json:"last_block"`
	Point      string        `json:"point"`
	Name       string        `json:"name"`
	Kind       string        `json:"kind"`
	Time       time.Time     `json:"time"`
	Continued  bool          `json:"continued"`
	Continues  bool          `json:"continues"`
	Chunks     int64         `json:"chunks"`
	Bytes      int64         `json:"bytes"`
	Files      []SectionFile `json:"files"`
}

// SectionFile is the part of one file of a point within a section.
type SectionFile struct {
	Path       string `json:"path"`
	FirstBlock int64  `json:"first_block"`
	LastBlock  int64  `json:"last_block"`
	FirstSlot  int64  `json:"first_slot"`
	EndSlot    int64  `json:"end_slot"`
	Chunks     int64  `json:"chunks"`
	Bytes      int64  `json:"bytes"`
}

func (c *CartridgeCatalog) validate() error {
	if c.Format != catalogFormat || c.Version != formatVersion {
		return fmt.Errorf("catalog is %q version %d", c.Format, c.Version)
	}
	for i, s := range c.Sections {
		if s.File != i+1 || s.FirstBlock < 1 || s.LastBlock < s.FirstBlock || s.LastBlock >= c.CatalogBlock {
			return fmt.Errorf("catalog section %d (file %d, blocks %d-%d) is out of place", i, s.File, s.FirstBlock, s.LastBlock)
		}
		if i > 0 && s.FirstBlock <= c.Sections[i-1].LastBlock {
			return fmt.Errorf("catalog sections %d and %d overlap", i-1, i)
		}
		if !repo.ValidPointID(s.Point) {
			return fmt.Errorf("catalog section %d names point %q", i, s.Point)
		}
		if s.Continued && i != 0 || s.Continues && i != len(c.Sections)-1 {
			return fmt.Errorf("catalog section %d continues across a cartridge but is not at its edge", i)
		}
	}
	return nil
}

func parseCatalog(body []byte) (*CartridgeCatalog, error) {
	var c CartridgeCatalog
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, fmt.Errorf("catalog: %v: %w", err, ErrCorrupt)
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrCorrupt)
	}
	return &c, nil
}

// trailer is the 'T' record closing a cartridge.
type trailer struct {
	Seq          uint32
	Set          [16]byte
	CatalogBlock uint64
	Sections     uint32
	Continues    bool
	CatalogSum   [32]byte
}

const (
	trailerMagic = "LBTRAILR"
	trailerLen   = 80
)

func (t *trailer) marshal() []byte {
	b := make([]byte, 0, trailerLen)
	b = append(b, trailerMagic...)
	b = binary.LittleEndian.AppendUint32(b, formatVersion)
	b = binary.LittleEndian.AppendUint32(b, t.Seq)
	b = append(b, t.Set[:]...)
	b = binary.LittleEndian.AppendUint64(b, t.CatalogBlock)
	b = binary.LittleEndian.AppendUint32(b, t.Sections)
	var flags uint32
	if t.Continues {
		flags |= 1
	}
	b = binary.LittleEndian.AppendUint32(b, flags)
	return append(b, t.CatalogSum[:]...)
}

func parseTrailer(b []byte) (*trailer, error) {
	if len(b) != trailerLen || string(b[:8]) != trailerMagic {
		return nil, fmt.Errorf("trailer of %d bytes is malformed: %w", len(b), ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != formatVersion {
		return nil, fmt.Errorf("trailer version %d: %w", v, ErrCorrupt)
	}
	t := &trailer{Seq: binary.LittleEndian.Uint32(b[12:])}
	copy(t.Set[:], b[16:32])
	t.CatalogBlock = binary.LittleEndian.Uint64(b[32:])
	t.Sections = binary.LittleEndian.Uint32(b[40:])
	flags := binary.LittleEndian.Uint32(b[44:])
	if flags&^1 != 0 {
		return nil, fmt.Errorf("trailer flags %#x: %w", flags, ErrCorrupt)
	}
	t.Continues = flags&1 != 0
	copy(t.CatalogSum[:], b[48:80])
	return t, nil
}

// checkTrailer ties a trailer to the catalog it follows.
func checkTrailer(t *trailer, c *CartridgeCatalog, catBody []byte, l *Label) error {
	continues := len(c.Sections) > 0 && c.Sections[len(c.Sections)-1].Continues
	switch {
	case t.Seq != uint32(l.Seq) || t.Set != l.setID():
		return fmt.Errorf("trailer names set %x cartridge %d: %w", t.Set, t.Seq, ErrCorrupt)
	case t.CatalogBlock != uint64(c.CatalogBlock) || t.Sections != uint32(len(c.Sections)) || t.Continues != continues:
		return fmt.Errorf("trailer disagrees with the catalog: %w", ErrCorrupt)
	case sha256.Sum256(catBody) != t.CatalogSum:
		return fmt.Errorf("trailer's catalog checksum does not match: %w", ErrCorrupt)
	case c.Label != l.ID || c.Barcode != l.Barcode || c.Set != l.Set || c.Seq != l.Seq || c.BlockSize != l.BlockSz:
		return fmt.Errorf("catalog belongs to cartridge %s (label %s), not %s (label %s): %w", c.Barcode, c.Label, l.Barcode, l.ID, ErrCorrupt)
	case continues != (c.Next != nil):
		return fmt.Errorf("catalog's last section continues=%v but next cartridge is %v: %w", continues, c.Next, ErrCorrupt)
	}
	return nil
}

// fileHeader is the JSON of an 'F' record.
type fileHeader struct {
	Path      string `json:"path"`
	Index     string `json:"index"`
	Chunks    int64  `json:"chunks"`
	FirstSlot int64  `json:"first_slot"`
}

func marshalFileHeader(h fileHeader, x []byte) ([]byte, []byte) {
	j, _ := json.Marshal(h)
	pre := binary.LittleEndian.AppendUint32(nil, uint32(len(j)))
	return append(pre, j...), x
}

// parseFileHeader decodes an 'F' body: JSON and index.
func parseFileHeader(body []byte) (*fileHeader, *repo.Index, []byte, error) {
	if len(body) < 4 {
		return nil, nil, nil, fmt.Errorf("file header of %d bytes: %w", len(body), ErrCorrupt)
	}
	n := binary.LittleEndian.Uint32(body)
	if uint64(n) > uint64(len(body)-4) {
		return nil, nil, nil, fmt.Errorf("file header JSON of %d bytes overruns the record: %w", n, ErrCorrupt)
	}
	var h fileHeader
	if err := json.Unmarshal(body[4:4+n], &h); err != nil {
		return nil, nil, nil, fmt.Errorf("file header: %v: %w", err, ErrCorrupt)
	}
	if _, err := repo.CleanPath(h.Path); err != nil {
		return nil, nil, nil, fmt.Errorf("file header: %v: %w", err, ErrCorrupt)
	}
	if _, err := repo.ParseID(h.Index); err != nil {
		return nil, nil, nil, fmt.Errorf("file header: %v: %w", err, ErrCorrupt)
	}
	xb := body[4+n:]
	x, err := repo.UnmarshalIndex(xb)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("file %s: %v: %w", h.Path, err, ErrCorrupt)
	}
	stored := int64(0)
	for _, s := range x.Slots {
		if !s.Hole {
			stored++
		}
	}
	if h.Chunks != stored || h.FirstSlot < 0 || h.FirstSlot > int64(len(x.Slots)) {
		return nil, nil, nil, fmt.Errorf("file %s: header says %d chunks from slot %d, index has %d stored slots of %d: %w", h.Path, h.Chunks, h.FirstSlot, stored, len(x.Slots), ErrCorrupt)
	}
	return &h, x, xb, nil
}

// chunk is a decoded 'K' record.
type chunk struct {
	Slot  int64
	ID    repo.ID
	Sum   [32]byte
	Plain []byte
}

const chunkPrefix = 8 + 32 + 32

func chunkPrefixBytes(slot int64, id repo.ID, sum [32]byte) []byte {
	b := binary.LittleEndian.AppendUint64(make([]byte, 0, chunkPrefix), uint64(slot))
	b = append(b, id[:]...)
	return append(b, sum[:]...)
}

// parseChunk decodes a 'K' body and checks the plaintext's SHA-256.
func parseChunk(body []byte) (*chunk, error) {
	if len(body) < chunkPrefix+1 {
		return nil, fmt.Errorf("chunk record of %d bytes: %w", len(body), ErrCorrupt)
	}
	c := &chunk{Slot: int64(binary.LittleEndian.Uint64(body))}
	copy(c.ID[:], body[8:40])
	copy(c.Sum[:], body[40:72])
	c.Plain = body[72:]
	if c.Slot < 0 {
		return nil, fmt.Errorf("chunk for slot %d: %w", c.Slot, ErrCorrupt)
	}
	if sha256.Sum256(c.Plain) != c.Sum {
		return nil, fmt.Errorf("chunk %s for slot %d: plaintext does not match its SHA-256: %w", c.ID, c.Slot, ErrCorrupt)
	}
	return c, nil
}

// endOfPoint is the JSON of a 'Z' record.
type endOfPoint struct {
	Point  string `json:"point"`
	Files  int    `json:"files"`
	Chunks int64  `json:"chunks"`
	Bytes  int64  `json:"bytes"`
}

func parseEnd(body []byte) (*endOfPoint, error) {
	var e endOfPoint
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("end of point: %v: %w", err, ErrCorrupt)
	}
	if !repo.ValidPointID(e.Point) || e.Files < 0 || e.Chunks < 0 || e.Bytes < 0 {
		return nil, fmt.Errorf("end of point names %q with negative counts: %w", e.Point, ErrCorrupt)
	}
	return &e, nil
}

// shiftOf is log2 of a valid block size.
func shiftOf(bs int) uint8 { return uint8(bits.TrailingZeros(uint(bs))) }
