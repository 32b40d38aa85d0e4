package repo

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"lifeboat/disk"
)

// WriteOptions steer how one file is stored.
type WriteOptions struct {
	// Layer stores the image's own allocation map, for differencing disks:
	// only ranges this layer defines are read, and a restore can rebuild
	// the layer on top of its parent. Otherwise the guest-visible content
	// is stored.
	Layer bool
	// Previous is the same file's index in an earlier point.
	Previous *Index
	// Changed lists the ranges that may differ from Previous (a dirty
	// bitmap, RCT, a differencing layer's allocation). When ChangedKnown
	// is set, slots outside Changed are taken from Previous without being
	// read; otherwise every allocated range is read and hashed, and only
	// new chunks are stored.
	Changed      []disk.Extent
	ChangedKnown bool
	// Workers hashing and compressing; 0 means GOMAXPROCS.
	Workers int
	// Progress, if set, is called with bytes of the file processed so far.
	Progress func(done int64)
}

// window is how much of the allocation map is held at once: it keeps the
// extent list of a fragmented 2 TiB image from filling memory.
const windowSlots = 256

// uploaders is how many objects may be in flight to storage at once.
const uploaders = 6

type slotJob struct {
	slot int64
	buf  *[]byte
	n    int
}

// WriteImage chunks img into the repository and returns its saved index.
func (r *Repository) WriteImage(ctx context.Context, img disk.Image, opts WriteOptions) (ID, *Index, Stats, error) {
	size := img.Size()
	cs := r.ChunkSize()
	nslots := SlotCount(size, cs)
	x := &Index{Size: size, ChunkSize: cs, Slots: make([]Slot, nslots)}
	var st Stats
	prev := opts.Previous
	reuse := opts.ChangedKnown && prev != nil && prev.Size == size && prev.ChunkSize == cs
	if reuse && opts.Layer != (prev.Extents != nil) && size > 0 {
		reuse = false
	}
	// changed holds, per slot, the ranges that may differ from prev (nil:
	// unchanged). A changed slot reads only those ranges from the source
	// and patches them into the previous chunk, so scattered small guest
	// writes cost what they wrote, not a chunk each.
	var changed [][]disk.Extent
	if reuse {
		changed = make([][]disk.Extent, nslots)
		for _, e := range opts.Changed {
			lo, n := disk.ClampRange(e.Offset, e.Length, size)
			for s := lo / cs; n > 0 && s <= (lo+n-1)/cs; s++ {
				a, b := max(lo, s*cs), min(lo+n, (s+1)*cs)
				changed[s] = disk.AppendExtent(changed[s], disk.Extent{Offset: a, Length: b - a, Kind: disk.Data})
			}
		}
		for s := range changed {
			if len(changed[s]) > 1 {
				changed[s] = mergeRanges(changed[s])
			}
		}
	}

	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	free := make(chan *[]byte, workers+2)
	for range cap(free) {
		b := make([]byte, cs)
		free <- &b
	}
	jobs := make(chan slotJob, workers)
	var done atomic.Int64
	var mu sync.Mutex // guards st fields the workers update
	g, gctx := errgroup.WithContext(ctx)

	// Uploads run apart from hashing so that storage latency (an fsync per
	// object locally, a round trip on S3) overlaps with CPU work.
	type upload struct {
		slot int64
		id   ID
		obj  *[]byte
	}
	uploads := make(chan upload, uploaders)
	var objPool sync.Pool
	var hashers sync.WaitGroup
	for range workers {
		hashers.Add(1)
		g.Go(func() error {
			defer hashers.Done()
			for j := range jobs {
				data := (*j.buf)[:j.n]
				if isZero(data) {
					x.Slots[j.slot] = Slot{Hole: true}
					mu.Lock()
					st.Holes++
					mu.Unlock()
				} else {
					id := r.codec.sum(data)
					x.Slots[j.slot] = Slot{ID: id}
					have, err := r.haveChunk(gctx, id)
					if err != nil {
						return fmt.Errorf("look up chunk of slot %d (offset %d): %w", j.slot, j.slot*cs, err)
					}
					mu.Lock()
					st.Chunks++
					mu.Unlock()
					if !have {
						ob, _ := objPool.Get().(*[]byte)
						if ob == nil {
							ob = new([]byte)
						}
						obj, err := r.codec.sealTo(*ob, typeChunk, chunkKey(id), data, true)
						if err != nil {
							return err
						}
						*ob = obj
						select {
						case uploads <- upload{slot: j.slot, id: id, obj: ob}:
						case <-gctx.Done():
							return gctx.Err()
						}
					}
				}
				free <- j.buf
				if opts.Progress != nil {
					opts.Progress(done.Add(int64(j.n)))
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		hashers.Wait()
		close(uploads)
		return nil
	})
	for range uploaders {
		g.Go(func() error {
			for u := range uploads {
				if err := r.b.Stage(gctx, chunkKey(u.id), *u.obj); err != nil {
					return fmt.Errorf("store chunk of slot %d (offset %d): %w", u.slot, u.slot*cs, err)
				}
				r.remember(u.id)
				mu.Lock()
				st.NewChunks++
				st.NewBytes += int64(len(*u.obj))
				mu.Unlock()
				objPool.Put(u.obj)
			}
			return nil
		})
	}

	g.Go(func() error {
		defer close(jobs)
		for w := int64(0); w < nslots; w += windowSlots {
			wOff := w * cs
			wLen := min(windowSlots*cs, size-wOff)
			var ext []disk.Extent
			var err error
			if opts.Layer {
				ext, err = img.Extents(gctx, wOff, wLen)
			} else {
				ext, err = disk.ResolvedExtents(gctx, img, wOff, wLen)
			}
			if err != nil {
				return fmt.Errorf("allocation map at offset %d: %w", wOff, err)
			}
			if err := disk.CheckExtents(ext, wOff, wLen); err != nil {
				return fmt.Errorf("allocation map at offset %d: %w", wOff, err)
			}
			if opts.Layer {
				for _, e := range ext {
					x.Extents = disk.AppendExtent(x.Extents, e)
				}
			}
			ei := 0
			for s := w; s < min(w+windowSlots, nslots); s++ {
				sOff := s * cs
				sLen := min(cs, size-sOff)
				for ei < len(ext) && ext[ei].End() <= sOff {
					ei++
				}
				hasData := false
				for k := ei; k < len(ext) && ext[k].Offset < sOff+sLen; k++ {
					if ext[k].Kind == disk.Data {
						hasData = true
						break
					}
				}
				if !hasData {
					x.Slots[s] = Slot{Hole: true}
					mu.Lock()
					st.Holes++
					mu.Unlock()
					if opts.Progress != nil {
						opts.Progress(done.Add(sLen))
					}
					continue
				}
				if reuse && changed[s] == nil {
					x.Slots[s] = prev.Slots[s]
					mu.Lock()
					st.BytesReused += sLen
					if !prev.Slots[s].Hole {
						st.Chunks++
					}
					mu.Unlock()
					if opts.Progress != nil {
						opts.Progress(done.Add(sLen))
					}
					continue
				}
				var buf *[]byte
				select {
				case buf = <-free:
				case <-gctx.Done():
					return gctx.Err()
				}
				b := (*buf)[:sLen]
				// Read only what this layer holds as data; the rest of the
				// slot stays zero so the chunk is the layer's own bytes.
				window := []disk.Extent{{Offset: sOff, Length: sLen, Kind: disk.Data}}
				if reuse && !covers(changed[s], sOff, sLen) && r.loadInto(gctx, b, prev.Slots[s]) {
					window = changed[s]
					for _, w := range window {
						clear(b[w.Offset-sOff : w.End()-sOff])
					}
				} else {
					clear(b)
				}
				var read int64
				for _, w := range window {
					for k := ei; k < len(ext) && ext[k].Offset < w.End(); k++ {
						e := ext[k]
						if e.Kind != disk.Data {
							continue
						}
						lo, hi := max(e.Offset, w.Offset), min(e.End(), w.End())
						if lo >= hi {
							continue
						}
						if _, err := img.ReadAt(b[lo-sOff:hi-sOff], lo); err != nil {
							return fmt.Errorf("read %d bytes at offset %d: %w", hi-lo, lo, err)
						}
						read += hi - lo
					}
				}
				mu.Lock()
				st.BytesRead += read
				mu.Unlock()
				select {
				case jobs <- slotJob{slot: s, buf: buf, n: int(sLen)}:
				case <-gctx.Done():
					return gctx.Err()
				}
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return ID{}, nil, st, err
	}
	if opts.Layer && len(x.Extents) == 0 && size > 0 {
		x.Extents = []disk.Extent{{Offset: 0, Length: size, Kind: disk.Unallocated}}
	}
	id, err := r.SaveIndex(ctx, x)
	if err != nil {
		return ID{}, nil, st, err
	}
	return id, x, st, nil
}

// loadInto fills b with a previous slot's content: zeros for a hole, the
// chunk's bytes otherwise. It reports false when the chunk cannot be used
// (missing, corrupt, another size): the caller then reads the whole slot.
func (r *Repository) loadInto(ctx context.Context, b []byte, prev Slot) bool {
	if prev.Hole {
		clear(b)
		return true
	}
	data, err := r.LoadChunk(ctx, prev.ID)
	if err != nil || len(data) != len(b) {
		return false
	}
	copy(b, data)
	return true
}

// covers reports whether sorted, merged ranges cover [off, off+n).
func covers(ranges []disk.Extent, off, n int64) bool {
	return len(ranges) == 1 && ranges[0].Offset <= off && ranges[0].End() >= off+n
}

// mergeRanges sorts ranges and merges overlapping or touching ones.
func mergeRanges(in []disk.Extent) []disk.Extent {
	slices.SortFunc(in, func(a, b disk.Extent) int { return cmp.Compare(a.Offset, b.Offset) })
	out := in[:1]
	for _, e := range in[1:] {
		last := &out[len(out)-1]
		if e.Offset <= last.End() {
			last.Length = max(last.End(), e.End()) - last.Offset
			continue
		}
		out = append(out, e)
	}
	return out
}

var zeroPage [64 << 10]byte

// isZero uses memequal against a zero page: vectorised, unlike a byte loop.
func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroPage))
		if !bytes.Equal(b[:n], zeroPage[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
