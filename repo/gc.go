package repo

import (
	"context"
	"fmt"
	"strings"
	"time"

	"lifeboat/repo/storage"
)

// GCResult counts what gc did.
type GCResult struct {
	LiveChunks     int   `json:"live_chunks"`
	DeletedChunks  int   `json:"deleted_chunks"`
	DeletedIndexes int   `json:"deleted_indexes"`
	DeletedBytes   int64 `json:"deleted_bytes"`
	// Young objects were unreferenced but inside the grace period.
	Young int `json:"kept_young"`
}

// GC marks every index and chunk that a point references and sweeps the
// rest that are older than grace. It holds the exclusive lock, so no backup
// runs meanwhile; the grace period additionally protects objects written by
// a backup whose lock went stale, and by clocks that disagree a little.
// Any point that fails to load aborts gc: its references are unknown.
func (r *Repository) GC(ctx context.Context, grace time.Duration) (GCResult, error) {
	var res GCResult
	lock, err := r.Lock(ctx, true, "gc")
	if err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	defer lock.Unlock(context.WithoutCancel(ctx))

	pts, errs, err := r.Points(ctx)
	if err != nil {
		return res, err
	}
	for id, e := range errs {
		return res, fmt.Errorf("gc: point %s does not load, so its data cannot be told from garbage: %w", id, e)
	}
	liveIdx := map[ID]bool{}
	live := map[ID]bool{}
	for _, p := range pts {
		for _, f := range p.Files {
			id, _ := ParseID(f.Index)
			if liveIdx[id] {
				continue
			}
			x, err := r.LoadIndex(ctx, id)
			if err != nil {
				return res, fmt.Errorf("gc: point %s: %w", p.ID, err)
			}
			liveIdx[id] = true
			for _, s := range x.Slots {
				if !s.Hole {
					live[s.ID] = true
				}
			}
		}
	}
	res.LiveChunks = len(live)
	cutoff := time.Now().Add(-grace)
	sweep := func(prefix string, isLive map[ID]bool, count *int) error {
		var dead []storage.ObjectInfo
		err := r.b.List(ctx, prefix, func(o storage.ObjectInfo) error {
			id, err := ParseID(o.Key[strings.LastIndexByte(o.Key, '/')+1:])
			if err != nil || isLive[id] {
				return nil
			}
			if o.ModTime.After(cutoff) {
				res.Young++
				return nil
			}
			dead = append(dead, o)
			return nil
		})
		if err != nil {
			return err
		}
		for _, o := range dead {
			if err := r.b.Delete(ctx, o.Key); err != nil {
				return err
			}
			*count++
			res.DeletedBytes += o.Size
		}
		return nil
	}
	// Indexes first: a crash between the two sweeps leaves only chunks
	// that nothing names, which the next gc removes.
	if err := sweep("indexes/", liveIdx, &res.DeletedIndexes); err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	if err := sweep("chunks/", live, &res.DeletedChunks); err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	return res, nil
}
