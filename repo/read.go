package repo

import (
	"context"
	"fmt"
	"golang.org/x/sync/errgroup"
	"io"
	"sync"
	"sync/atomic"

	"lifeboat/disk"
)

// FileImage presents one stored file of a point as a disk.Image: restore
// copies from it, chain merges resolve through it, and item-level recovery
// reads filesystems out of it on demand without materialising the disk.
type FileImage struct {
	r      *Repository
	ctx    context.Context
	x      *Index
	info   disk.Info
	parent disk.Image

	mu    sync.Mutex
	cache map[int64][]byte // slot → plaintext, a few recent ones
	order []int64
	// ahead is set while a copy announced its ranges. Other readers of
	// the same FileImage (none today) would share its fetched objects.
	ahead atomic.Pointer[readahead]
}

// cacheSlots bounds the decoded chunks a FileImage holds.
const cacheSlots = 6

// OpenFile opens a point's file by path, with its parent chain.
func (r *Repository) OpenFile(ctx context.Context, p *Point, path string) (*FileImage, error) {
	return r.openFile(ctx, p, path, 0)
}

func (r *Repository) openFile(ctx context.Context, p *Point, path string, depth int) (*FileImage, error) {
	if depth > 64 {
		return nil, fmt.Errorf("point %s: parent chain of %s is too deep or cyclic", p.ID, path)
	}
	var f *File
	for i := range p.Files {
		if p.Files[i].Path == path {
			f = &p.Files[i]
		}
	}
	if f == nil {
		return nil, fmt.Errorf("point %s has no file %q", p.ID, path)
	}
	id, err := ParseID(f.Index)
	if err != nil {
		return nil, err
	}
	x, err := r.LoadIndex(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("point %s file %s: %w", p.ID, path, err)
	}
	img := &FileImage{r: r, ctx: ctx, x: x, cache: map[int64][]byte{}}
	if f.Disk != nil {
		img.info = *f.Disk
	} else {
		img.info = disk.Info{Format: disk.Raw, Size: x.Size}
	}
	if f.Parent != "" {
		parent, err := r.openFile(ctx, p, f.Parent, depth+1)
		if err != nil {
			return nil, err
		}
		img.parent = parent
	}
	return img, nil
}

// Index is the file's stored index.
func (m *FileImage) Index() *Index { return m.x }

func (m *FileImage) Format() disk.Format { return m.info.Format }
func (m *FileImage) Size() int64         { return m.x.Size }
func (m *FileImage) Info() disk.Info     { return m.info }
func (m *FileImage) Parent() disk.Image {
	if m.parent == nil {
		return nil
	}
	return m.parent
}

func (m *FileImage) Close() error {
	if m.parent != nil {
		return m.parent.Close()
	}
	return nil
}

// Extents returns the stored layer map, or for base layers Data for
// stored slots and Unallocated for holes.
func (m *FileImage) Extents(ctx context.Context, off, length int64) ([]disk.Extent, error) {
	return m.x.ExtentsOf(off, length), nil
}

// ReadAt reads guest-visible bytes, through the parent where this layer
// leaves ranges unallocated.
func (m *FileImage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= m.x.Size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), m.x.Size-off))
	if m.x.Extents != nil {
		ext := m.x.ExtentsOf(off, int64(n))
		for _, e := range ext {
			dst := p[e.Offset-off : e.End()-off]
			switch e.Kind {
			case disk.Data:
				if err := m.readSlots(dst, e.Offset); err != nil {
					return 0, err
				}
			case disk.Zero:
				clear(dst)
			case disk.Unallocated:
				if err := m.readParent(dst, e.Offset); err != nil {
					return 0, err
				}
			}
		}
	} else if err := m.readSlots(p[:n], off); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *FileImage) readParent(dst []byte, off int64) error {
	clear(dst)
	if m.parent == nil || off >= m.parent.Size() {
		return nil
	}
	k := min(int64(len(dst)), m.parent.Size()-off)
	if _, err := m.parent.ReadAt(dst[:k], off); err != nil && err != io.EOF {
		return err
	}
	return nil
}

func (m *FileImage) readSlots(dst []byte, off int64) error {
	cs := m.x.ChunkSize
	first, last := off/cs, (off+int64(len(dst))-1)/cs
	if last > first {
		// A read spanning several chunks (a restore's 4 MiB pieces) loads
		// them at once: their reads from storage overlap, which is what a
		// cold repository or a remote backend waits on.
		var g errgroup.Group
		for s := first; s <= last; s++ {
			lo, hi := max(off, s*cs), min(off+int64(len(dst)), (s+1)*cs)
			g.Go(func() error { return m.readSlot(dst[lo-off:hi-off], s, lo-s*cs) })
		}
		return g.Wait()
	}
	return m.readSlot(dst, first, off-first*cs)
}

// readSlot fills dst from slot s, starting at byte in of the chunk.
func (m *FileImage) readSlot(dst []byte, s, in int64) error {
	if m.x.Slots[s].Hole {
		clear(dst)
		return nil
	}
	k := int64(len(dst))
	if in == 0 && k == m.x.ChunkSize && m.ahead.Load() != nil {
		// A whole chunk read during a copy: decode straight into dst,
		// bypassing the cache (a copy reads each chunk once).
		plain, err := m.load(s, dst[:0:k])
		if err != nil {
			return err
		}
		if int64(len(plain)) != k {
			return fmt.Errorf("slot %d: chunk %s holds %d bytes, want %d: %w", s, m.x.Slots[s].ID, len(plain), k, ErrCorrupt)
		}
		if &plain[0] != &dst[0] {
			copy(dst, plain) // stored uncompressed
		}
		return nil
	}
	data, err := m.slot(s)
	if err != nil {
		return err
	}
	if in+k > int64(len(data)) {
		return fmt.Errorf("slot %d: chunk %s holds %d bytes, need %d: %w", s, m.x.Slots[s].ID, len(data), in+k, ErrCorrupt)
	}
	copy(dst, data[in:in+k])
	return nil
}

func (m *FileImage) slot(s int64) ([]byte, error) {
	m.mu.Lock()
	if d, ok := m.cache[s]; ok {
		m.mu.Unlock()
		return d, nil
	}
	m.mu.Unlock()
	d, err := m.load(s, nil)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	if _, ok := m.cache[s]; !ok {
		m.cache[s] = d
		m.order = append(m.order, s)
		if len(m.order) > cacheSlots {
			delete(m.cache, m.order[0])
			m.order = m.order[1:]
		}
	}
	m.mu.Unlock()
	return d, nil
}

// load fetches (from the readahead when a copy runs one) and decodes slot
// s's chunk, into dst's storage when it has room.
func (m *FileImage) load(s int64, dst []byte) ([]byte, error) {
	id := m.x.Slots[s].ID
	var obj []byte
	var err error
	if a := m.ahead.Load(); a != nil {
		obj, err = a.take(m.ctx, s, id)
	} else {
		obj, err = m.r.fetchChunk(m.ctx, id)
	}
	if err == nil {
		obj, err = m.r.decodeChunk(id, obj, dst)
	}
	if err != nil {
		return nil, fmt.Errorf("offset %d: %w", s*m.x.ChunkSize, err)
	}
	return obj, nil
}

// Readahead tuning: how many stored objects may wait fetched but not yet
// consumed, and how many fetches run at once. 32 objects of at most a
// chunk each bound the memory; 16 fetches keep a cold disk's queue full.
const (
	aheadWindow = 32
	aheadFetch  = 16
)

// Readahead implements disk.Readaheader: a copy announces the ranges it is
// about to read, in order, and the stored objects behind them are fetched
// ahead of it by a few goroutines of their own. Reading then no longer
// waits for the copy's writes, so storage stays busy: on a cold disk a
// restore otherwise alternates between reading and writing. Only this
// layer's own slots are fetched ahead; parents read as before. stop ends
// the fetching and must be called before the copy's context ends.
func (m *FileImage) Readahead(ctx context.Context, ranges []disk.Extent) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	a := &readahead{r: m.r, pending: map[int64]*fetch{}, window: make(chan struct{}, aheadWindow)}
	m.ahead.Store(a)
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.run(ctx, m.x, ranges)
	}()
	return func() {
		cancel()
		<-done
		m.ahead.Store(nil)
	}
}

type readahead struct {
	r      *Repository
	window chan struct{} // a token per fetched, unconsumed object

	mu      sync.Mutex
	pending map[int64]*fetch // slot → its fetch, until taken
	claimed map[int64]bool   // slots not reached yet that a reader fetched itself
	next    int64            // the fetcher has passed every slot before this
}

type fetch struct {
	done chan struct{}
	obj  []byte
	err  error
}

func (a *readahead) run(ctx context.Context, x *Index, ranges []disk.Extent) {
	cs := x.ChunkSize
	sem := make(chan struct{}, aheadFetch)
	var wg sync.WaitGroup
	defer wg.Wait()
	last := int64(-1)
	for _, e := range ranges {
		if e.Kind != disk.Data {
			continue
		}
		for s := max(e.Offset/cs, last+1); s*cs < e.End() && s < int64(len(x.Slots)); s++ {
			last = s
			if x.Slots[s].Hole {
				continue
			}
			select {
			case a.window <- struct{}{}:
			case <-ctx.Done():
				return
			}
			a.mu.Lock()
			a.next = s + 1
			if a.claimed[s] {
				delete(a.claimed, s)
				a.mu.Unlock()
				<-a.window
				continue
			}
			f := &fetch{done: make(chan struct{})}
			a.pending[s] = f
			a.mu.Unlock()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				f.err = ctx.Err()
				close(f.done)
				return
			}
			wg.Add(1)
			go func(id ID) {
				defer wg.Done()
				f.obj, f.err = a.r.fetchChunk(ctx, id)
				close(f.done)
				<-sem
			}(x.Slots[s].ID)
		}
	}
}

// take returns slot s's stored object: the one fetched ahead, or, when the
// reader is ahead of the fetching (or reads a slot twice), its own fetch.
func (a *readahead) take(ctx context.Context, s int64, id ID) ([]byte, error) {
	a.mu.Lock()
	f, ok := a.pending[s]
	if ok {
		delete(a.pending, s)
	} else if s >= a.next {
		if a.claimed == nil {
			a.claimed = map[int64]bool{}
		}
		a.claimed[s] = true
	}
	a.mu.Unlock()
	if !ok {
		return a.r.fetchChunk(ctx, id)
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	<-a.window
	return f.obj, f.err
}
