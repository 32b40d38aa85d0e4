// Package repo is Lifeboat's repository: deduplicated, compressed,
// optionally encrypted storage of recovery points on a write-once object
// store. Its layers, bottom up: storage (objects), envelope (compression,
// encryption, checksums), chunks (content-addressed pieces of files),
// indexes (a file as chunk slots), points (manifests naming indexes).
// The repository is self-describing: config plus the objects are enough for
// a new server to adopt it. docs/ARCHITECTURE.md gives the byte layout.
package repo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"lifeboat/repo/storage"
)

// Repository is an opened repository. It is safe for concurrent use.
type Repository struct {
	b     storage.Backend
	cfg   Config
	codec *codec

	mu    sync.Mutex
	known map[ID]struct{} // chunks seen stored during this process
}

func newRepository(b storage.Backend, cfg Config, k *keys) (*Repository, error) {
	c, err := newCodec(k, cfg.Hash)
	if err != nil {
		return nil, err
	}
	return &Repository{b: b, cfg: cfg, codec: c, known: map[ID]struct{}{}}, nil
}

// Config returns the repository's configuration.
func (r *Repository) Config() Config { return r.cfg }

// Backend returns the storage the repository lives in.
func (r *Repository) Backend() storage.Backend { return r.b }

// ChunkSize is the slot size of every index.
func (r *Repository) ChunkSize() int64 { return int64(r.cfg.ChunkSize) }

func chunkKey(id ID) string {
	s := id.String()
	return "chunks/" + s[:2] + "/" + s
}

func indexKey(id ID) string {
	s := id.String()
	return "indexes/" + s[:2] + "/" + s
}

func pointKey(id string) string { return "points/" + id }

// haveChunk reports whether a chunk is stored, from memory first.
func (r *Repository) haveChunk(ctx context.Context, id ID) (bool, error) {
	r.mu.Lock()
	_, ok := r.known[id]
	r.mu.Unlock()
	if ok {
		return true, nil
	}
	if _, err := r.b.Stat(ctx, chunkKey(id)); err == nil {
		r.remember(id)
		return true, nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		return false, err
	}
	return false, nil
}

func (r *Repository) remember(id ID) {
	r.mu.Lock()
	r.known[id] = struct{}{}
	r.mu.Unlock()
}

// LoadChunk fetches, decodes and re-hashes a chunk. A chunk whose content
// does not match its ID is an error wrapping ErrCorrupt: a restore fails
// loudly rather than write wrong bytes.
func (r *Repository) LoadChunk(ctx context.Context, id ID) ([]byte, error) {
	obj, err := r.fetchChunk(ctx, id)
	if err != nil {
		return nil, err
	}
	return r.decodeChunk(id, obj, nil)
}

// fetchChunk reads a chunk's stored object without decoding it: readahead
// keeps storage busy with these while decoding runs elsewhere.
func (r *Repository) fetchChunk(ctx context.Context, id ID) ([]byte, error) {
	obj, err := r.b.Get(ctx, chunkKey(id))
	if err != nil {
		return nil, fmt.Errorf("load chunk %s: %w", id, err)
	}
	return obj, nil
}

// decodeChunk opens a fetched chunk object and re-hashes its content,
// decompressing into dst's storage when it is large enough (a restore's
// piece buffer: no copy afterwards).
func (r *Repository) decodeChunk(id ID, obj, dst []byte) ([]byte, error) {
	key := chunkKey(id)
	plain, err := r.codec.openTo(dst, typeChunk, key, obj)
	if err != nil {
		return nil, fmt.Errorf("load chunk: %w", err)
	}
	if got := r.codec.sum(plain); got != id {
		return nil, fmt.Errorf("load chunk %s: content hashes to %s: %w", id, got, ErrCorrupt)
	}
	return plain, nil
}

// SaveIndex stores an index under the hash of its encoding, so identical
// indexes (an unchanged file backed up again) are stored once.
func (r *Repository) SaveIndex(ctx context.Context, x *Index) (ID, error) {
	plain, err := x.MarshalBinary()
	if err != nil {
		return ID{}, err
	}
	// The chunks the index names must be durable before it is.
	if err := r.b.Flush(ctx); err != nil {
		return ID{}, fmt.Errorf("save index: %w", err)
	}
	id := r.codec.sum(plain)
	key := indexKey(id)
	obj, err := r.codec.seal(typeIndex, key, plain, true)
	if err != nil {
		return ID{}, err
	}
	if err := r.b.Put(ctx, key, obj); err != nil {
		return ID{}, fmt.Errorf("save index: %w", err)
	}
	return id, nil
}

// LoadIndex fetches and validates an index.
func (r *Repository) LoadIndex(ctx context.Context, id ID) (*Index, error) {
	key := indexKey(id)
	obj, err := r.b.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("load index %s: %w", id, err)
	}
	plain, err := r.codec.open(typeIndex, key, obj)
	if err != nil {
		return nil, fmt.Errorf("load index: %w", err)
	}
	if got := r.codec.sum(plain); got != id {
		return nil, fmt.Errorf("load index %s: content hashes to %s: %w", id, got, ErrCorrupt)
	}
	x, err := UnmarshalIndex(plain)
	if err != nil {
		return nil, fmt.Errorf("load index %s: %w", id, err)
	}
	return x, nil
}

// SavePoint writes a manifest. Call it only after every index it names is
// saved: from this moment the point is listed.
func (r *Repository) SavePoint(ctx context.Context, p *Point) error {
	if p.Version == 0 {
		p.Version = 1
	}
	if err := p.validate(); err != nil {
		return err
	}
	plain, err := json.Marshal(p)
	if err != nil {
		return err
	}
	key := pointKey(p.ID)
	obj, err := r.codec.seal(typeManifest, key, plain, true)
	if err != nil {
		return err
	}
	if err := r.b.Put(ctx, key, obj); err != nil {
		return fmt.Errorf("save point %s: %w", p.ID, err)
	}
	return nil
}

// LoadPoint reads one manifest.
func (r *Repository) LoadPoint(ctx context.Context, id string) (*Point, error) {
	if !ValidPointID(id) {
		return nil, fmt.Errorf("load point: %q is not a point ID", id)
	}
	key := pointKey(id)
	obj, err := r.b.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("load point %s: %w", id, err)
	}
	plain, err := r.codec.open(typeManifest, key, obj)
	if err != nil {
		return nil, fmt.Errorf("load point: %w", err)
	}
	return DecodePoint(id, plain)
}

// DecodePoint parses and validates a manifest's plaintext.
func DecodePoint(id string, plain []byte) (*Point, error) {
	if !ValidPointID(id) {
		return nil, fmt.Errorf("load point: %q is not a point ID: %w", id, ErrCorrupt)
	}
	var p Point
	if err := json.Unmarshal(plain, &p); err != nil {
		return nil, fmt.Errorf("load point %s: %v: %w", id, err, ErrCorrupt)
	}
	if p.ID != id {
		return nil, fmt.Errorf("load point %s: manifest names itself %q: %w", id, p.ID, ErrCorrupt)
	}
	if err := p.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrCorrupt)
	}
	return &p, nil
}

// PointIDs lists the IDs of all points, oldest first.
func (r *Repository) PointIDs(ctx context.Context) ([]string, error) {
	var ids []string
	err := r.b.List(ctx, "points/", func(o storage.ObjectInfo) error {
		id := strings.TrimPrefix(o.Key, "points/")
		if ValidPointID(id) {
			ids = append(ids, id)
		}
		return nil
	})
	sort.Strings(ids)
	return ids, err
}

// Points loads every manifest, oldest first. A manifest that fails to load
// is returned in errs by ID; the rest still load.
func (r *Repository) Points(ctx context.Context) ([]*Point, map[string]error, error) {
	ids, err := r.PointIDs(ctx)
	if err != nil {
		return nil, nil, err
	}
	var pts []*Point
	errs := map[string]error{}
	for _, id := range ids {
		p, err := r.LoadPoint(ctx, id)
		if err != nil {
			errs[id] = err
			continue
		}
		pts = append(pts, p)
	}
	sort.SliceStable(pts, func(i, j int) bool { return pts[i].Time.Before(pts[j].Time) })
	return pts, errs, nil
}

// DeletePoint removes a manifest. Its chunks stay until gc.
func (r *Repository) DeletePoint(ctx context.Context, id string) error {
	if !ValidPointID(id) {
		return fmt.Errorf("delete point: %q is not a point ID", id)
	}
	return r.b.Delete(ctx, pointKey(id))
}
