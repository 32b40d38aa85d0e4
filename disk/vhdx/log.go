package vhdx

import (
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
)

const (
	logSector = 4 * kib
	// maxReplayOffset bounds every file offset and length a log entry may
	// name: far beyond a 64 TiB disk's file, small enough that sums never
	// overflow an int64.
	maxReplayOffset = 1 << 50
)

// logEntry is one validated log entry.
type logEntry struct {
	pos     int64 // offset of the entry within the log
	length  int64
	tail    int64
	seq     uint64
	flushed int64
	last    int64
	descs   []logDesc
}

// logDesc is a zero or data descriptor with its data sector.
type logDesc struct {
	zero     bool
	fileOff  int64
	zeroLen  int64
	leading  uint64
	trailing uint32
	sector   []byte // the 4 KiB data sector as stored in the log
}

// page rebuilds the 4 KiB the descriptor writes: the log stores its first
// 8 and last 4 bytes in the descriptor so the data sector can carry its
// own signature and sequence number.
func (d *logDesc) page() []byte {
	p := make([]byte, logSector)
	binary.LittleEndian.PutUint64(p[0:8], d.leading)
	copy(p[8:logSector-4], d.sector[8:logSector-4])
	binary.LittleEndian.PutUint32(p[logSector-4:], d.trailing)
	return p
}

// ringBytes returns n bytes of the circular log starting at pos.
func ringBytes(log []byte, pos, n int64) []byte {
	l := int64(len(log))
	if pos+n <= l {
		return log[pos : pos+n]
	}
	b := make([]byte, n)
	k := copy(b, log[pos:])
	copy(b[k:], log[:n-int64(k)])
	return b
}

// parseEntry validates the entry at pos (4 KiB aligned) in log. Anything
// wrong makes it not an entry: torn or stale entries are expected in a
// log and are simply not part of the active sequence. Checksumming
// spends the entry's length from crcBudget.
func parseEntry(log []byte, pos int64, logGUID GUID, crcBudget *int64) (*logEntry, bool) {
	l := int64(len(log))
	h := log[pos : pos+logSector]
	if string(h[0:4]) != "loge" {
		return nil, false
	}
	e := &logEntry{
		pos:    pos,
		length: int64(binary.LittleEndian.Uint32(h[8:12])),
		tail:   int64(binary.LittleEndian.Uint32(h[12:16])),
		seq:    binary.LittleEndian.Uint64(h[16:24]),
	}
	count := int64(binary.LittleEndian.Uint32(h[24:28]))
	var g GUID
	copy(g[:], h[32:48])
	flushed := binary.LittleEndian.Uint64(h[48:56])
	last := binary.LittleEndian.Uint64(h[56:64])
	if e.length < logSector || e.length%logSector != 0 || e.length > l ||
		e.tail%logSector != 0 || e.tail >= l || e.seq == 0 || g != logGUID ||
		flushed > maxReplayOffset || last > maxReplayOffset {
		return nil, false
	}
	e.flushed, e.last = int64(flushed), int64(last)
	descSectors := (64 + 32*count + logSector - 1) / logSector
	if descSectors*logSector > e.length {
		return nil, false
	}
	if *crcBudget -= e.length; *crcBudget < 0 {
		return nil, false
	}
	b := ringBytes(log, pos, e.length)
	if binary.LittleEndian.Uint32(b[4:8]) != crcWithZeroedField(b, 4) {
		return nil, false
	}
	e.descs = make([]logDesc, 0, count)
	next := descSectors * logSector // where the next data sector is
	for i := range count {
		d := b[64+32*i : 96+32*i]
		if binary.LittleEndian.Uint64(d[24:32]) != e.seq {
			return nil, false
		}
		fileOff := binary.LittleEndian.Uint64(d[16:24])
		if fileOff%logSector != 0 || fileOff > maxReplayOffset {
			return nil, false
		}
		switch string(d[0:4]) {
		case "zero":
			n := binary.LittleEndian.Uint64(d[8:16])
			if n%logSector != 0 || n > maxReplayOffset {
				return nil, false
			}
			e.descs = append(e.descs, logDesc{zero: true, fileOff: int64(fileOff), zeroLen: int64(n)})
		case "desc":
			if next+logSector > e.length {
				return nil, false
			}
			s := b[next : next+logSector]
			next += logSector
			if string(s[0:4]) != "data" ||
				uint64(binary.LittleEndian.Uint32(s[4:8]))<<32|uint64(binary.LittleEndian.Uint32(s[logSector-4:])) != e.seq {
				return nil, false
			}
			e.descs = append(e.descs, logDesc{
				fileOff:  int64(fileOff),
				trailing: binary.LittleEndian.Uint32(d[4:8]),
				leading:  binary.LittleEndian.Uint64(d[8:16]),
				sector:   s,
			})
		default:
			return nil, false
		}
	}
	return e, true
}

// errLogTooComplex stops hostile logs whose overlapping entries would
// take quadratic time to check; real logs stay orders of magnitude below
// the budgets.
var errLogTooComplex = errors.New("log has too many overlapping entries to check")

// activeSequence finds the newest complete log sequence: a run of valid
// entries, each following the previous in the ring with a sequence number
// one higher, from the head entry's tail up to the head. Entries before
// the tail were already applied, so they are not part of it. It returns
// nil when there is no complete sequence.
func activeSequence(log []byte, logGUID GUID) ([]*logEntry, error) {
	l := int64(len(log))
	byPos := map[int64]*logEntry{}
	var heads []*logEntry
	// Checksumming costs the entry's length at every candidate position.
	crcBudget := 4*l + 16*mib
	for pos := int64(0); pos+logSector <= l; pos += logSector {
		e, ok := parseEntry(log, pos, logGUID, &crcBudget)
		if crcBudget < 0 {
			return nil, errLogTooComplex
		}
		if ok {
			byPos[pos] = e
			heads = append(heads, e)
		}
	}
	var best []*logEntry
	steps := 1 << 22
	for _, h := range heads {
		seq := walkSequence(byPos, h, l, &steps)
		if steps < 0 {
			return nil, errLogTooComplex
		}
		if seq != nil && (best == nil || h.seq > best[len(best)-1].seq) {
			best = seq
		}
	}
	return best, nil
}

func walkSequence(byPos map[int64]*logEntry, head *logEntry, l int64, steps *int) []*logEntry {
	var seq []*logEntry
	var total int64
	for cur := head.tail; *steps >= 0; *steps-- {
		e := byPos[cur]
		if e == nil || (len(seq) > 0 && e.seq != seq[len(seq)-1].seq+1) {
			return nil
		}
		seq = append(seq, e)
		// A sequence longer than the ring would be lapping itself.
		if total += e.length; total > l {
			return nil
		}
		if e == head {
			return seq
		}
		cur = (cur + e.length) % l
	}
	return nil
}

// span is a half-open byte range of the file.
type span struct{ start, end int64 }

// overlay is the file as it would be after log replay, kept in memory:
// 4 KiB pages of data and zeroed ranges that replace the file's bytes,
// and the file length after replay. It is never changed after it is
// built, so concurrent reads need no lock.
type overlay struct {
	offs  []int64 // sorted keys of pages
	pages map[int64][]byte
	zeros []span // sorted, disjoint, never overlapping a page
	size  int64
}

// apply lays the overlay over q, which holds the file's bytes at off.
func (o *overlay) apply(q []byte, off int64) {
	end := off + int64(len(q))
	i := sort.Search(len(o.zeros), func(i int) bool { return o.zeros[i].end > off })
	for ; i < len(o.zeros) && o.zeros[i].start < end; i++ {
		s := o.zeros[i]
		clear(q[max(s.start, off)-off : min(s.end, end)-off])
	}
	j := sort.Search(len(o.offs), func(i int) bool { return o.offs[i]+logSector > off })
	for ; j < len(o.offs) && o.offs[j] < end; j++ {
		k := o.offs[j]
		p := o.pages[k]
		lo, hi := max(k, off), min(k+logSector, end)
		copy(q[lo-off:hi-off], p[lo-k:hi-k])
	}
}

// replay applies an active sequence to a new overlay over a file of
// fileSize bytes. Later descriptors win where they overlap earlier ones;
// the result is computed by a sweep instead of applying the writes one by
// one, so a hostile log of many overlapping zero ranges stays O(n log n).
func replay(seq []*logEntry, fileSize int64) *overlay {
	type op struct {
		start, end int64
		page       []byte // nil for zeros
	}
	var ops []op
	for _, e := range seq {
		for i := range e.descs {
			d := &e.descs[i]
			if d.zero {
				if d.zeroLen > 0 {
					ops = append(ops, op{d.fileOff, d.fileOff + d.zeroLen, nil})
				}
			} else {
				ops = append(ops, op{d.fileOff, d.fileOff + logSector, d.page()})
			}
		}
	}
	o := &overlay{pages: map[int64][]byte{}, size: fileSize}
	type event struct {
		pos int64
		op  int
		end bool
	}
	events := make([]event, 0, 2*len(ops))
	for i, x := range ops {
		events = append(events, event{x.start, i, false}, event{x.end, i, true})
		o.size = max(o.size, x.end)
	}
	sort.Slice(events, func(i, j int) bool { return events[i].pos < events[j].pos })
	// active holds the ops covering the sweep position; the newest one
	// (highest index) decides the bytes there.
	active := &opHeap{}
	ended := make([]bool, len(ops))
	prev := int64(0)
	for i := 0; i < len(events); {
		pos := events[i].pos
		for active.Len() > 0 && ended[active.top()] {
			heap.Pop(active)
		}
		if active.Len() > 0 && pos > prev {
			if x := ops[active.top()]; x.page != nil {
				// Boundaries are 4 KiB aligned, so a data op's
				// segment is its whole page.
				o.pages[x.start] = x.page
			} else if n := len(o.zeros); n > 0 && o.zeros[n-1].end == prev {
				o.zeros[n-1].end = pos
			} else {
				o.zeros = append(o.zeros, span{prev, pos})
			}
		}
		for ; i < len(events) && events[i].pos == pos; i++ {
			if events[i].end {
				ended[events[i].op] = true
			} else {
				heap.Push(active, events[i].op)
			}
		}
		prev = pos
	}
	head := seq[len(seq)-1]
	// The spec extends the file to LastFileOffset; qemu rounds that up to
	// a whole MiB, which only matters for reads past the last structure.
	if last := (head.last + mib - 1) / mib * mib; last > o.size {
		o.size = last
	}
	for k := range o.pages {
		o.offs = append(o.offs, k)
	}
	slices.Sort(o.offs)
	return o
}

// opHeap is a max-heap of op indexes.
type opHeap []int

func (h opHeap) Len() int           { return len(h) }
func (h opHeap) Less(i, j int) bool { return h[i] > h[j] }
func (h opHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *opHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *opHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
func (h opHeap) top() int { return h[0] }

// replayLog validates the current header's log fields, finds the active
// sequence and replays it in memory.
func replayLog(r io.ReaderAt, fileSize int64, h header, hOff int64, path string) (*overlay, error) {
	if h.LogVersion != 0 {
		return nil, errorf(path, hOff, "log version %d is not supported (log must be replayed)", h.LogVersion)
	}
	ll, lo := int64(h.LogLength), h.LogOffset
	if ll < logSector || ll%logSector != 0 || lo%logSector != 0 || lo > uint64(fileSize) || uint64(ll) > uint64(fileSize)-lo {
		return nil, errorf(path, int64(min(lo, maxFileOffset)), "log region (offset %d, length %d) is invalid or past the end of the %d-byte file", lo, ll, fileSize)
	}
	buf := make([]byte, ll)
	if _, err := r.ReadAt(buf, int64(lo)); err != nil && !errors.Is(err, io.EOF) {
		return nil, errorf(path, int64(lo), "reading log: %v", err)
	}
	seq, err := activeSequence(buf, h.LogGUID)
	if err != nil {
		return nil, errorf(path, int64(lo), "%v", err)
	}
	if seq == nil {
		return nil, errorf(path, int64(lo), "log is dirty (LogGuid %s) but holds no complete valid log sequence", h.LogGUID)
	}
	head := seq[len(seq)-1]
	if head.flushed > fileSize {
		return nil, errorf(path, int64(lo)+head.pos, "file is %d bytes, shorter than the log's FlushedFileOffset %d: truncated", fileSize, head.flushed)
	}
	return replay(seq, fileSize), nil
}

// source is the file as readers see it: the real bytes with any replayed
// log laid over them, zero-extended to the replayed length.
type source struct {
	r    io.ReaderAt
	size int64 // real length of the file
	ov   *overlay
}

func (s *source) Size() int64 {
	if s.ov != nil {
		return s.ov.size
	}
	return s.size
}

// backedBytes is how many bytes the file and the replayed log really hold,
// as opposed to the zero-extension up to the log's LastFileOffset.
func (s *source) backedBytes() int64 {
	n := s.size
	if s.ov != nil {
		n += int64(len(s.ov.pages)) * logSector
	}
	return n
}

func (s *source) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	end := s.Size()
	if off >= end {
		return 0, io.EOF
	}
	q := p[:min(int64(len(p)), end-off)]
	m := int64(0)
	if off < s.size {
		m = min(int64(len(q)), s.size-off)
		if k, err := s.r.ReadAt(q[:m], off); int64(k) < m {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return k, err
		}
	}
	clear(q[m:])
	if s.ov != nil {
		s.ov.apply(q, off)
	}
	if len(q) < len(p) {
		return len(q), io.EOF
	}
	return len(q), nil
}
