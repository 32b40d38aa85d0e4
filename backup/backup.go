package backup

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/disk/raw"
	"lifeboat/repo"
)

// Options steer one backup.
type Options struct {
	Name string
	// Host is the source host; the local host name by default.
	Host string
	// Consistency of the source as read ("file" for plain files).
	Consistency string
	// FullRead ignores the previous point: every file is read and hashed
	// (only new chunks are still stored).
	FullRead bool
	// Changed maps a file's Path to the ranges changed since the previous
	// point (a driver's dirty bitmap or RCT, or an operator's change list).
	Changed map[string][]disk.Extent
	Config  json.RawMessage
	Notes   []string
	// checkpoint is the hypervisor checkpoint the point's incremental
	// successor starts from (set by RunVM).
	checkpoint string
	// Now is the clock; time.Now by default.
	Now func() time.Time
	// Progress receives bytes processed out of the total.
	Progress func(done, total int64)
}

// Run backs src up into r and returns the saved point.
func Run(ctx context.Context, r *repo.Repository, src *Source, opts Options) (*repo.Point, error) {
	if opts.Name == "" {
		return nil, fmt.Errorf("backup: a name is required")
	}
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	lock, err := r.Lock(ctx, false, "backup "+opts.Name)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", opts.Name, err)
	}
	defer lock.Unlock(context.WithoutCancel(ctx))

	host := opts.Host
	if host == "" {
		host, _ = os.Hostname()
	}
	cons := opts.Consistency
	if cons == "" {
		cons = "file"
	}
	prev, err := previous(ctx, r, opts.Name, src.Kind)
	if err != nil {
		return nil, err
	}
	start := now()
	if opts.Config == nil && src.VM != nil {
		if opts.Config, err = json.Marshal(src.VM); err != nil {
			return nil, err
		}
	}
	pt := &repo.Point{
		Version: 1, ID: repo.NewPointID(start), Name: opts.Name, Kind: src.Kind,
		Time: start.UTC(), Host: host, Consistency: cons, Config: opts.Config, Notes: opts.Notes,
	}
	if prev != nil {
		pt.Previous = prev.ID
	}
	pt.Checkpoint = opts.checkpoint
	var total int64
	for _, f := range src.Files {
		if f.Disk != nil {
			total += f.Disk.Size
		} else {
			total += f.Size
		}
	}
	var base atomic.Int64
	for _, f := range src.Files {
		pf, err := backupFile(ctx, r, f, prev, opts, func(done int64) {
			if opts.Progress != nil {
				opts.Progress(base.Load()+done, total)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("backup %s: %s: %w", opts.Name, cmp.Or(f.Abs, f.Path), err)
		}
		if f.Disk != nil {
			base.Add(f.Disk.Size)
		} else {
			base.Add(f.Size)
		}
		pt.Files = append(pt.Files, *pf)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := r.SavePoint(ctx, pt); err != nil {
		return nil, err
	}
	return pt, nil
}

func previous(ctx context.Context, r *repo.Repository, name, kind string) (*repo.Point, error) {
	pts, _, err := r.Points(ctx) // a point that does not load is verify's business
	if err != nil {
		return nil, err
	}
	for i := len(pts) - 1; i >= 0; i-- {
		if pts[i].Name == name && pts[i].Kind == kind {
			return pts[i], nil
		}
	}
	return nil, nil
}

func backupFile(ctx context.Context, r *repo.Repository, f File, prev *repo.Point, opts Options, progress func(int64)) (*repo.File, error) {
	out := &repo.File{Path: f.Path, Role: f.Role, Size: f.Size, ModTime: f.ModTime.UTC(), Mode: uint32(f.Mode), Disk: f.Disk, Parent: f.Parent}
	var pf *repo.File
	if prev != nil && !opts.FullRead {
		for i := range prev.Files {
			if prev.Files[i].Path == f.Path && prev.Files[i].Format() == out.Format() {
				pf = &prev.Files[i]
			}
		}
	}
	_, hasChanges := opts.Changed[f.Path]
	// An untouched file (same size, mtime and disk identity) is the
	// previous point's file: reuse its index without reading a byte.
	if f.Image == nil && pf != nil && !hasChanges && pf.Size == f.Size && pf.ModTime.Equal(f.ModTime.UTC()) && sameDisk(pf.Disk, f.Disk) {
		out.Index = pf.Index
		out.Stats = repo.Stats{BytesReused: f.Size}
		progress(f.Size)
		return out, nil
	}
	img := f.Image
	if img == nil {
		var err error
		if f.Disk != nil {
			img, err = formats.OpenAs(ctx, f.Abs, f.Disk.Format)
		} else {
			img, err = raw.Open(ctx, f.Abs, nil)
		}
		if err != nil {
			return nil, err
		}
		defer img.Close()
	}
	wo := repo.WriteOptions{Layer: f.Parent != "", Progress: progress}
	if pf != nil && hasChanges {
		id, err := repo.ParseID(pf.Index)
		if err != nil {
			return nil, err
		}
		if wo.Previous, err = r.LoadIndex(ctx, id); err != nil {
			return nil, fmt.Errorf("previous point %s: %w", prev.ID, err)
		}
		wo.Changed, wo.ChangedKnown = opts.Changed[f.Path], true
	}
	id, _, st, err := r.WriteImage(ctx, img, wo)
	if err != nil {
		return nil, err
	}
	out.Index = id.String()
	out.Stats = st
	return out, nil
}

func sameDisk(a, b *disk.Info) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Format == b.Format && a.Size == b.Size && a.ID == b.ID && a.ParentID == b.ParentID
}
