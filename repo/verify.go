package repo

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"lifeboat/repo/storage"
)

// VerifyReport says what verify found. OK is true only when every point
// loads and every chunk they name is present and hashes to its ID.
type VerifyReport struct {
	OK           bool      `json:"ok"`
	Points       int       `json:"points"`
	Indexes      int       `json:"indexes"`
	Chunks       int       `json:"chunks"`
	BytesChecked int64     `json:"bytes_checked"`
	Problems     []Problem `json:"problems,omitempty"`
	Affected     []string  `json:"affected_points,omitempty"`
	Unreferenced int       `json:"unreferenced_chunks"`
}

// Problem is one bad object and the points it breaks.
type Problem struct {
	Object string   `json:"object"`
	Error  string   `json:"error"`
	Points []string `json:"points"`
}

// Verify re-reads and re-hashes every index and every referenced chunk,
// naming for each bad object exactly which points depend on it.
func (r *Repository) Verify(ctx context.Context, progress func(done, total int)) (*VerifyReport, error) {
	rep := &VerifyReport{}
	var probs []Problem
	ids, err := r.PointIDs(ctx)
	if err != nil {
		return nil, err
	}
	rep.Points = len(ids)
	users := map[ID][]string{} // chunk → points
	idxUsers := map[ID][]string{}
	idxOf := map[ID]*Index{}
	for _, pid := range ids {
		p, err := r.LoadPoint(ctx, pid)
		if err != nil {
			probs = append(probs, Problem{Object: pointKey(pid), Error: err.Error(), Points: []string{pid}})
			continue
		}
		for _, f := range p.Files {
			id, _ := ParseID(f.Index)
			idxUsers[id] = append(idxUsers[id], pid)
		}
	}
	for id, pts := range idxUsers {
		x, err := r.LoadIndex(ctx, id)
		if err != nil {
			probs = append(probs, Problem{Object: indexKey(id), Error: err.Error(), Points: dedupe(pts)})
			continue
		}
		idxOf[id] = x
		for _, s := range x.Slots {
			if !s.Hole {
				users[s.ID] = append(users[s.ID], pts...)
			}
		}
	}
	rep.Indexes = len(idxOf)

	stored := map[ID]bool{}
	err = r.b.List(ctx, "chunks/", func(o storage.ObjectInfo) error {
		k := o.Key[strings.LastIndexByte(o.Key, '/')+1:]
		if id, err := ParseID(k); err == nil && chunkKey(id) == o.Key {
			stored[id] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for id := range stored {
		if _, ok := users[id]; !ok {
			rep.Unreferenced++
		}
	}
	var todo []ID
	for id := range users {
		if !stored[id] {
			probs = append(probs, Problem{Object: chunkKey(id), Error: "missing", Points: dedupe(users[id])})
			continue
		}
		todo = append(todo, id)
	}
	sort.Slice(todo, func(i, j int) bool { return todo[i].String() < todo[j].String() })
	rep.Chunks = len(todo)

	var mu sync.Mutex
	next := make(chan ID)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(next)
		for _, id := range todo {
			select {
			case next <- id:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	done := 0
	for range runtime.GOMAXPROCS(0) {
		g.Go(func() error {
			for id := range next {
				data, err := r.LoadChunk(gctx, id)
				mu.Lock()
				if err != nil {
					if ctx.Err() != nil {
						mu.Unlock()
						return ctx.Err()
					}
					probs = append(probs, Problem{Object: chunkKey(id), Error: err.Error(), Points: dedupe(users[id])})
				}
				rep.BytesChecked += int64(len(data))
				done++
				if progress != nil {
					progress(done, len(todo))
				}
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	sort.Slice(probs, func(i, j int) bool { return probs[i].Object < probs[j].Object })
	aff := map[string]bool{}
	for _, p := range probs {
		for _, pt := range p.Points {
			aff[pt] = true
		}
	}
	for pt := range aff {
		rep.Affected = append(rep.Affected, pt)
	}
	sort.Strings(rep.Affected)
	rep.Problems = probs
	rep.OK = len(probs) == 0
	return rep, nil
}

func dedupe(s []string) []string {
	sort.Strings(s)
	out := s[:0:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// ErrVerify is returned by callers that turn a failed report into an error.
var ErrVerify = errors.New("verify found problems")

// Summary is a one-line description of a report.
func (v *VerifyReport) Summary() string {
	if v.OK {
		return fmt.Sprintf("ok: %d points, %d indexes, %d chunks (%d bytes) verified", v.Points, v.Indexes, v.Chunks, v.BytesChecked)
	}
	return fmt.Sprintf("%d problems; affected points: %s", len(v.Problems), strings.Join(v.Affected, ", "))
}
