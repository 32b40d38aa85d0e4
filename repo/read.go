package repo

import (
	"context"
	"fmt"
	"golang.org/x/sync/errgroup"
	"io"
	"sync"

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
	loaded := make([][]byte, last-first+1)
	if last > first {
		// A read spanning several chunks (a restore's 4 MiB pieces) loads
		// them at once: their reads from storage overlap, which is what a
		// cold repository or a remote backend waits on.
		var g errgroup.Group
		for s := first; s <= last; s++ {
			if !m.x.Slots[s].Hole {
				g.Go(func() (err error) { loaded[s-first], err = m.slot(s); return err })
			}
		}
		if err := g.Wait(); err != nil {
			return err
		}
	}
	for len(dst) > 0 {
		s := off / cs
		in := off - s*cs
		k := min(int64(len(dst)), cs-in)
		if m.x.Slots[s].Hole {
			clear(dst[:k])
		} else {
			data := loaded[s-first]
			if data == nil {
				var err error
				if data, err = m.slot(s); err != nil {
					return err
				}
			}
			if in+k > int64(len(data)) {
				return fmt.Errorf("slot %d: chunk %s holds %d bytes, need %d: %w", s, m.x.Slots[s].ID, len(data), in+k, ErrCorrupt)
			}
			copy(dst[:k], data[in:in+k])
		}
		dst = dst[k:]
		off += k
	}
	return nil
}

func (m *FileImage) slot(s int64) ([]byte, error) {
	m.mu.Lock()
	if d, ok := m.cache[s]; ok {
		m.mu.Unlock()
		return d, nil
	}
	m.mu.Unlock()
	d, err := m.r.LoadChunk(m.ctx, m.x.Slots[s].ID)
	if err != nil {
		return nil, fmt.Errorf("offset %d: %w", s*m.x.ChunkSize, err)
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
