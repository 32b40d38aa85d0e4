package hyperv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"slices"
	"unicode/utf16"
	"unicode/utf8"
)

// The VMCX container ("HyperVStorage"), used by Hyper-V 2016 and later for
// .vmcx (configuration) and .vmrs (runtime state) files. Microsoft does not
// document it; this reader follows the structure worked out by
// fox-it/dissect.hypervisor (descriptor/hyperv.py) and checks every
// structure against its CRC-32 (IEEE), which this reader established on the
// test.vmcx/test.VMRS fixtures: each header, object-table entry, key-table
// header and key entry carries the CRC-32 of its own bytes with the
// checksum field zeroed. All integers are little-endian.
//
//	0x0000, 0x1000  storage header, two copies; the valid one with the
//	                higher sequence number is current:
//	                  u32 signature 0x01282014, u32 crc (of 0x2E bytes),
//	                  u16 sequence, u32 version (0x400), u64, u32 alignment,
//	                  u64 replay-log offset, u64 replay-log size,
//	                  u32 header size
//	0x2000          object table: u32 signature 0x01110001, u32 count, then
//	                count 18-byte entries: u8 type, u32 crc, u64 offset,
//	                u32 size, u8 allocated. Types: 1 object table, 2 key
//	                table, 3 file object (large values), 6 replay log.
//	key table       u16 signature 0x0002, u16 index, u16 sequence, u32 crc
//	                (of 10 bytes); then entries until one of size 0:
//	                  u16 type (low byte: 1 free, 3 int64, 4 uint64,
//	                  5 double, 6 UTF-16 string, 7 bytes, 8 bool, 9 node;
//	                  high byte flags: 0x01 value in a file object),
//	                  u32 entry size, u16 parent table index (0 = root),
//	                  u32 parent offset in that table, u32 crc, u32
//	                  insertion sequence, u8 data offset; then the key
//	                  name (UTF-8, NUL-terminated, data offset bytes) and
//	                  the value: strings and bytes as u32 length + data,
//	                  a file-object pointer as u32 size + u64 offset.
//	                The crc covers the 21-byte header, the name and the
//	                value (12 bytes for a node or pointer).
//	replay log      u32 signature 0x01110003, u32 crc (of 0x22 bytes),
//	                u32 number of pending entries, ...
//
// A key table index may occur in several copies; the one with the highest
// sequence number is current. A file whose replay log has pending entries
// holds changes not yet written to the tables; this reader does not replay
// them and reports ErrLogPending instead of returning stale values.

const (
	vmcxSignature        = 0x01282014
	vmcxObjectTableSig   = 0x01110001
	vmcxReplayLogSig     = 0x01110003
	vmcxKeyTableSig      = 0x0002
	vmcxHeaderSize       = 0x2E
	vmcxReplayHeaderSize = 0x22
	vmcxObjectTableAt    = 0x2000
	vmcxObjectEntrySize  = 18
	vmcxKeyTableHeader   = 10
	vmcxKeyEntryHeader   = 21
	vmcxVersion          = 0x400

	// maxObjectTables bounds chained object tables; real files have one.
	maxObjectTables = 64
)

// ErrLogPending is returned for a VMCX/VMRS file whose replay log holds
// changes that Hyper-V has not yet applied (the file was copied while
// Hyper-V was writing it). Copy it again, or take it from a checkpoint.
var ErrLogPending = errors.New("replay log has pending entries; the key tables may be stale")

// ErrUnsupported is returned for a VMCX container version other than 0x400.
var ErrUnsupported = errors.New("unsupported format version")

// IsVMCX reports whether data starts like a VMCX/VMRS container: the
// storage header signature in either header copy.
func IsVMCX(data []byte) bool {
	return len(data) >= 4 && binary.LittleEndian.Uint32(data) == vmcxSignature ||
		len(data) >= 0x1004 && binary.LittleEndian.Uint32(data[0x1000:]) == vmcxSignature
}

// VMCXInfo is what the container's headers say, for diagnostics.
type VMCXInfo struct {
	Version    uint32
	Sequence   uint16
	Alignment  uint32
	KeyTables  int
	KeyEntries int
}

type vmcxReader struct {
	name string
	data []byte
}

func (r *vmcxReader) fail(off int64, format string, a ...any) error {
	return &ParseError{File: r.name, Offset: off, Err: fmt.Errorf(format, a...)}
}

// span returns data[off:off+n] or nil when it is outside the file.
func (r *vmcxReader) span(off, n uint64) []byte {
	if off > uint64(len(r.data)) || n > uint64(len(r.data))-off {
		return nil
	}
	return r.data[off : off+n]
}

// crcOK checks the CRC-32 of b with the 4 bytes at ckAt taken as zero.
func crcOK(b []byte, ckAt int) bool {
	want := binary.LittleEndian.Uint32(b[ckAt:])
	h := crc32.NewIEEE()
	h.Write(b[:ckAt])
	h.Write([]byte{0, 0, 0, 0})
	h.Write(b[ckAt+4:])
	return h.Sum32() == want
}

type vmcxHeader struct {
	seq        uint16
	version    uint32
	alignment  uint32
	replayOff  uint64
	replaySize uint64
}

// ParseVMCX parses a Hyper-V 2016+ binary configuration (.vmcx) or runtime
// state (.vmrs) file into its key tree. name is used only in errors.
func ParseVMCX(name string, data []byte) (*Config, error) {
	c, _, err := parseVMCX(name, data)
	return c, err
}

// ParseVMCXInfo is ParseVMCX that also returns what the headers say.
func ParseVMCXInfo(name string, data []byte) (*Config, VMCXInfo, error) {
	return parseVMCX(name, data)
}

func parseVMCX(name string, data []byte) (*Config, VMCXInfo, error) {
	r := &vmcxReader{name: name, data: data}
	var info VMCXInfo

	// Headers: the valid copy with the higher sequence number.
	var hdr *vmcxHeader
	for _, at := range []uint64{0, 0x1000} {
		b := r.span(at, vmcxHeaderSize)
		if b == nil || binary.LittleEndian.Uint32(b) != vmcxSignature || !crcOK(b, 4) {
			continue
		}
		h := &vmcxHeader{
			seq:        binary.LittleEndian.Uint16(b[8:]),
			version:    binary.LittleEndian.Uint32(b[10:]),
			alignment:  binary.LittleEndian.Uint32(b[22:]),
			replayOff:  binary.LittleEndian.Uint64(b[26:]),
			replaySize: binary.LittleEndian.Uint64(b[34:]),
		}
		if hdr == nil || h.seq > hdr.seq {
			hdr = h
		}
	}
	if hdr == nil {
		if !IsVMCX(data) {
			return nil, info, r.fail(0, "no VMCX storage header signature: not a .vmcx/.vmrs file")
		}
		return nil, info, r.fail(0, "neither storage header has a valid checksum: file damaged")
	}
	info.Version, info.Sequence, info.Alignment = hdr.version, hdr.seq, hdr.alignment
	if hdr.version != vmcxVersion {
		return nil, info, r.fail(10, "version %#x: %w (only %#x is known)", hdr.version, ErrUnsupported, vmcxVersion)
	}

	// Replay log: refuse a file with unapplied changes.
	if b := r.span(hdr.replayOff, vmcxReplayHeaderSize); b == nil {
		return nil, info, r.fail(26, "replay log at %#x is outside the file", hdr.replayOff)
	} else if binary.LittleEndian.Uint32(b) != vmcxReplayLogSig || !crcOK(b, 4) {
		return nil, info, r.fail(int64(hdr.replayOff), "bad replay log header")
	} else if n := binary.LittleEndian.Uint32(b[8:]); n != 0 {
		return nil, info, r.fail(int64(hdr.replayOff), "%d entries: %w", n, ErrLogPending)
	}

	// Object tables, following chained ones.
	type object struct {
		typ       uint8
		off, size uint64
	}
	var objects []object
	pending := []uint64{vmcxObjectTableAt}
	seenTables := map[uint64]bool{}
	for len(pending) > 0 {
		at := pending[0]
		pending = pending[1:]
		if seenTables[at] {
			continue
		}
		if len(seenTables) >= maxObjectTables {
			return nil, info, r.fail(int64(at), "more than %d object tables", maxObjectTables)
		}
		seenTables[at] = true
		h := r.span(at, 8)
		if h == nil || binary.LittleEndian.Uint32(h) != vmcxObjectTableSig {
			return nil, info, r.fail(int64(at), "no object table signature")
		}
		count := uint64(binary.LittleEndian.Uint32(h[4:]))
		ents := r.span(at+8, count*vmcxObjectEntrySize)
		if ents == nil {
			return nil, info, r.fail(int64(at), "object table of %d entries runs past the end of the file", count)
		}
		for i := range count {
			e := ents[i*vmcxObjectEntrySize : (i+1)*vmcxObjectEntrySize]
			if !crcOK(e, 1) {
				return nil, info, r.fail(int64(at+8+i*vmcxObjectEntrySize), "object table entry %d: checksum mismatch", i)
			}
			if e[17] == 0 {
				continue
			}
			o := object{typ: e[0], off: binary.LittleEndian.Uint64(e[5:]), size: uint64(binary.LittleEndian.Uint32(e[13:]))}
			if o.typ == 1 {
				pending = append(pending, o.off)
			}
			objects = append(objects, o)
		}
	}

	// Key tables: the current copy of each index. File objects by offset.
	type keyTable struct {
		index, seq uint16
		off        uint64
		b          []byte
	}
	tables := map[uint16]*keyTable{}
	fileObjects := map[uint64]uint64{}
	for _, o := range objects {
		switch o.typ {
		case 2:
			b := r.span(o.off, o.size)
			if b == nil || len(b) < vmcxKeyTableHeader {
				return nil, info, r.fail(int64(o.off), "key table of %d bytes is outside the file", o.size)
			}
			if binary.LittleEndian.Uint16(b) != vmcxKeyTableSig || !crcOK(b[:vmcxKeyTableHeader], 6) {
				return nil, info, r.fail(int64(o.off), "bad key table header")
			}
			kt := &keyTable{index: binary.LittleEndian.Uint16(b[2:]), seq: binary.LittleEndian.Uint16(b[4:]), off: o.off, b: b}
			if kt.index == 0 {
				return nil, info, r.fail(int64(o.off), "key table index 0 (reserved for the root)")
			}
			if cur, ok := tables[kt.index]; !ok || kt.seq > cur.seq {
				tables[kt.index] = kt
			}
		case 3:
			if r.span(o.off, o.size) == nil {
				return nil, info, r.fail(int64(o.off), "file object of %d bytes is outside the file", o.size)
			}
			fileObjects[o.off] = o.size
		}
	}
	info.KeyTables = len(tables)

	// Entries, then links to parents.
	type entryKey struct {
		table uint16
		off   uint32
	}
	type entry struct {
		node      *Node
		parent    entryKey
		insertSeq uint32
		self      entryKey
	}
	var entries []*entry
	byKey := map[entryKey]*entry{}
	indexes := make([]uint16, 0, len(tables))
	for idx := range tables {
		indexes = append(indexes, idx)
	}
	slices.Sort(indexes)
	for _, idx := range indexes {
		kt := tables[idx]
		b := kt.b
		for p := uint64(vmcxKeyTableHeader); p+vmcxKeyEntryHeader <= uint64(len(b)); {
			h := b[p:]
			typ := binary.LittleEndian.Uint16(h)
			size := uint64(binary.LittleEndian.Uint32(h[2:]))
			if size == 0 {
				break
			}
			abs := int64(kt.off + p)
			if size < vmcxKeyEntryHeader || size > uint64(len(b))-p {
				return nil, info, r.fail(abs, "key entry size %d does not fit its table", size)
			}
			eb := b[p : p+size]
			p += size
			kind := typ & 0xFF
			if kind == 1 || kind == 2 { // free, or a type nobody has seen used
				continue
			}
			e, err := r.keyEntry(eb, abs, fileObjects)
			if err != nil {
				return nil, info, err
			}
			en := &entry{
				node:      e,
				parent:    entryKey{binary.LittleEndian.Uint16(h[6:]), binary.LittleEndian.Uint32(h[8:])},
				insertSeq: binary.LittleEndian.Uint32(h[16:]),
				self:      entryKey{idx, uint32(p - size)},
			}
			entries = append(entries, en)
			byKey[en.self] = en
		}
	}
	info.KeyEntries = len(entries)
	var roots []*Node
	for _, en := range entries {
		if en.parent.table == 0 {
			roots = append(roots, en.node)
			continue
		}
		parent, ok := byKey[en.parent]
		if !ok {
			return nil, info, r.fail(-1, "key %q (%s): parent entry table %d offset %#x does not exist", en.node.Name, en.node.Pos, en.parent.table, en.parent.off)
		}
		if parent.node.Kind != KindNode {
			return nil, info, r.fail(-1, "key %q (%s): parent %q holds a %s value, not keys", en.node.Name, en.node.Pos, parent.node.Name, parent.node.Kind)
		}
		parent.node.Children = append(parent.node.Children, en.node)
	}
	// Every entry has one parent, so what hangs below the roots is a tree;
	// entries in a parent cycle are unreachable and ignored. Bound depth.
	type level struct {
		n *Node
		d int
	}
	var queue []level
	for _, rt := range roots {
		queue = append(queue, level{rt, 1})
	}
	for len(queue) > 0 {
		l := queue[0]
		queue = queue[1:]
		if l.d > maxDepth {
			return nil, info, r.fail(-1, "keys nested deeper than %d (%s)", maxDepth, l.n.Pos)
		}
		for _, c := range l.n.Children {
			queue = append(queue, level{c, l.d + 1})
		}
	}
	var root *Node
	for _, rt := range roots {
		if rt.Name == "configuration" && rt.Kind == KindNode {
			root = rt
			break
		}
	}
	if root == nil {
		return nil, info, r.fail(-1, "no root key \"configuration\"")
	}
	return &Config{File: name, Format: FormatVMCX, Root: root}, info, nil
}

// keyEntry decodes one key entry (eb, header included) at file offset abs.
func (r *vmcxReader) keyEntry(eb []byte, abs int64, fileObjects map[uint64]uint64) (*Node, error) {
	typ := binary.LittleEndian.Uint16(eb)
	flags, kind := typ>>8, typ&0xFF
	dataOff := uint64(eb[20])
	if dataOff == 0 {
		return nil, r.fail(abs, "key entry without a name")
	}
	rest := eb[vmcxKeyEntryHeader:]
	if dataOff > uint64(len(rest)) {
		return nil, r.fail(abs, "key name runs past its entry")
	}
	nameBytes := rest[:dataOff]
	if nameBytes[dataOff-1] != 0 || !utf8.Valid(nameBytes[:dataOff-1]) {
		return nil, r.fail(abs, "key name is not NUL-terminated UTF-8")
	}
	n := &Node{Name: string(nameBytes[:dataOff-1]), Pos: fmt.Sprintf("offset %#x", abs)}
	val := rest[dataOff:]
	need := func(k uint64) ([]byte, error) {
		if uint64(len(val)) < k {
			return nil, r.fail(abs, "key %q: value of %d bytes runs past its entry", n.Name, k)
		}
		return val[:k], nil
	}
	var (
		valueSize uint64
		payload   []byte // string/bytes data
	)
	fromFile := flags&0x01 != 0
	switch kind {
	case 3, 4, 5:
		valueSize = 8
	case 8:
		valueSize = 4
	case 9:
		valueSize = 12
	case 6, 7:
		if fromFile {
			valueSize = 12
			break
		}
		l, err := need(4)
		if err != nil {
			return nil, err
		}
		valueSize = 4 + uint64(binary.LittleEndian.Uint32(l))
	default:
		return nil, r.fail(abs, "key %q: unknown value type %d", n.Name, kind)
	}
	v, err := need(valueSize)
	if err != nil {
		return nil, err
	}
	if !crcOK(eb[:vmcxKeyEntryHeader+dataOff+valueSize], 12) {
		return nil, r.fail(abs, "key %q: checksum mismatch", n.Name)
	}
	if kind == 6 || kind == 7 {
		if fromFile {
			size := uint64(binary.LittleEndian.Uint32(v))
			off := binary.LittleEndian.Uint64(v[4:])
			objSize, ok := fileObjects[off]
			if !ok || size > objSize {
				return nil, r.fail(abs, "key %q: value in file object at %#x (%d bytes) that the object table does not hold", n.Name, off, size)
			}
			payload = r.span(off, size)
		} else {
			payload = v[4:]
		}
	}
	switch kind {
	case 3:
		n.Kind, n.Int = KindInt, int64(binary.LittleEndian.Uint64(v))
	case 4:
		n.Kind, n.Uint = KindUint, binary.LittleEndian.Uint64(v)
	case 5:
		n.Kind, n.Double = KindDouble, math.Float64frombits(binary.LittleEndian.Uint64(v))
	case 8:
		n.Kind, n.Bool = KindBool, binary.LittleEndian.Uint32(v) != 0
	case 9:
		n.Kind = KindNode
	case 6:
		n.Kind = KindString
		if len(payload)%2 != 0 {
			n.Err = fmt.Errorf("UTF-16 string of odd length %d", len(payload))
			break
		}
		u := make([]uint16, len(payload)/2)
		for i := range u {
			u[i] = binary.LittleEndian.Uint16(payload[2*i:])
		}
		for len(u) > 0 && u[len(u)-1] == 0 { // a terminating NUL, if stored
			u = u[:len(u)-1]
		}
		n.Str = string(utf16.Decode(u))
	case 7:
		n.Kind, n.Bytes = KindBytes, slices.Clone(payload)
	}
	return n, nil
}
