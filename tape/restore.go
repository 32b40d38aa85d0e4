package tape

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"lifeboat/repo"
	"lifeboat/repo/storage"
	"lifeboat/repo/storage/local"
	"lifeboat/restore"
)

// RestoreOptions steer the restores from tape.
type RestoreOptions struct {
	// Options are restore.Run's, for RestoreToFolder.
	restore.Options
	// Catalog says where the point is (from Scan, WritePoints or the
	// server). When nil the library is scanned.
	Catalog *Catalog
	// Set picks the copy in that set; "" picks the most recently written
	// complete copy.
	Set string
	// TempDir holds RestoreToFolder's staging repository; the target
	// folder when "". It needs room for the point's stored data.
	TempDir string
	// Read receives the chunk bytes read off tape so far.
	Read func(done int64)
}

// locate finds the copy of a point to read.
func locate(ctx context.Context, lib Library, pointID string, opts RestoreOptions) (*PointCopy, error) {
	if !repo.ValidPointID(pointID) {
		return nil, fmt.Errorf("%q is not a point ID", pointID)
	}
	cat := opts.Catalog
	var scanErr error
	if cat == nil {
		cat, scanErr = Scan(ctx, lib, ScanOptions{})
		if cat == nil {
			return nil, scanErr
		}
	}
	cp, err := cat.Find(pointID, opts.Set)
	if err != nil {
		return nil, errors.Join(err, scanErr)
	}
	return cp, nil
}

// RestoreToFolder writes a point from tape into dir with the same names
// and formats as restore.Run (which it ends with): the point is first
// imported from tape into a temporary repository under TempDir, checking
// every block, record and chunk, then restored from there. Needs no
// repository and no server; the library is scanned unless
// opts.Catalog says where the point is.
func RestoreToFolder(ctx context.Context, lib Library, pointID, dir string, opts RestoreOptions) (*restore.Result, error) {
	cp, err := locate(ctx, lib, pointID, opts)
	if err != nil {
		return nil, fmt.Errorf("tape restore: %w", err)
	}
	pr, err := openPointReader(ctx, lib, cp)
	if err != nil {
		return nil, fmt.Errorf("tape restore: %w", err)
	}
	defer pr.close()
	p := pr.point
	// Preflight before staging anything: names, formats, clashes.
	plan, err := restore.MakePlan(p, opts.Options)
	if err != nil {
		return nil, fmt.Errorf("tape restore: %w", err)
	}
	if !opts.Overwrite {
		for _, s := range plan.Steps {
			if _, err := os.Lstat(filepath.Join(dir, s.Target)); err == nil {
				return nil, fmt.Errorf("tape restore: %s already exists (use overwrite to replace)", filepath.Join(dir, s.Target))
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("tape restore: %w", err)
	}
	parent := opts.TempDir
	if parent == "" {
		parent = dir
	}
	staging, err := os.MkdirTemp(parent, ".lifeboat-tape-")
	if err != nil {
		return nil, fmt.Errorf("tape restore: staging: %w", err)
	}
	defer os.RemoveAll(staging)
	b, err := local.Open(staging)
	if err != nil {
		return nil, fmt.Errorf("tape restore: staging: %w", err)
	}
	cs := pr.label.ChunkSize
	if cs < 64<<10 || cs > 64<<20 || cs&(cs-1) != 0 {
		cs = repo.DefaultChunkSize
	}
	tmp, err := repo.Init(ctx, b, repo.InitOptions{ChunkSize: cs})
	if err != nil {
		return nil, fmt.Errorf("tape restore: staging: %w", err)
	}
	np, err := importPoint(ctx, pr, tmp, opts.Read)
	if err != nil {
		return nil, fmt.Errorf("tape restore of point %s: %w", pointID, err)
	}
	pr.close() // free the drive before the disk work
	res, err := restore.Run(ctx, tmp, np, dir, opts.Options)
	if err != nil {
		return nil, fmt.Errorf("tape restore: %w", err)
	}
	return res, nil
}

// RestoreToRepository brings a point back from tape into r, so that it is
// listed again: its files are stored through r's chunking pipeline (chunks
// r already has are not stored twice) and the manifest is written last,
// with the index IDs r computed. A point r already lists is refused with
// ErrPointExists. It holds a shared lock on r.
func RestoreToRepository(ctx context.Context, lib Library, pointID string, r *repo.Repository, opts RestoreOptions) (*repo.Point, error) {
	if _, err := r.LoadPoint(ctx, pointID); err == nil {
		return nil, fmt.Errorf("tape import: point %s: %w", pointID, ErrPointExists)
	} else if !errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("tape import: %w", err)
	}
	cp, err := locate(ctx, lib, pointID, opts)
	if err != nil {
		return nil, fmt.Errorf("tape import: %w", err)
	}
	lock, err := r.Lock(ctx, false, "tape import "+pointID)
	if err != nil {
		return nil, fmt.Errorf("tape import: %w", err)
	}
	defer lock.Unlock(context.WithoutCancel(ctx))
	pr, err := openPointReader(ctx, lib, cp)
	if err != nil {
		return nil, fmt.Errorf("tape import: %w", err)
	}
	defer pr.close()
	np, err := importPoint(ctx, pr, r, opts.Read)
	if err != nil {
		return nil, fmt.Errorf("tape import of point %s: %w", pointID, err)
	}
	if err := r.SavePoint(ctx, np); err != nil {
		return nil, fmt.Errorf("tape import: %w", err)
	}
	return np, nil
}

// importPoint stores every file of the point pr reads into dst and returns
// the manifest with dst's index IDs. It does not save the manifest.
func importPoint(ctx context.Context, pr *pointReader, dst *repo.Repository, read func(int64)) (*repo.Point, error) {
	p := pr.point
	np := *p
	np.Files = append([]repo.File(nil), p.Files...)
	same := dst.Config().ID == pr.label.Repository
	var done int64
	for i := range np.Files {
		f := &np.Files[i]
		h, x, err := pr.nextFile()
		if err == io.EOF {
			return nil, fmt.Errorf("the tape ends the point after %d of its %d files: %w", i, len(np.Files), ErrCorrupt)
		}
		if err != nil {
			return nil, err
		}
		img := newTapeImage(pr, x, f)
		if read != nil {
			img.read = func(n int64) { done += n; read(done) }
		}
		id, _, _, err := dst.WriteImage(ctx, img, repo.WriteOptions{Layer: x.Extents != nil})
		if err != nil {
			return nil, fmt.Errorf("file %s: %w", f.Path, err)
		}
		if s := pr.fc.nextStored(); s >= 0 {
			return nil, fmt.Errorf("file %s: the chunk for slot %d was not taken off the tape", f.Path, s)
		}
		// In the repository it came from, the same bytes give the same
		// index: a last end-to-end check.
		if same && id.String() != h.Index {
			return nil, fmt.Errorf("file %s: stored again as index %s, the tape says %s: %w", f.Path, id, h.Index, ErrCorrupt)
		}
		f.Index = id.String()
	}
	if _, _, err := pr.nextFile(); err != io.EOF {
		if err == nil {
			err = fmt.Errorf("the tape holds more files than the manifest lists: %w", ErrCorrupt)
		}
		return nil, err
	}
	return &np, nil
}
