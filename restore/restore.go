// Package restore writes a recovery point's files into a folder: the same
// names and formats, sparse, or converted (--format) and with differencing
// chains flattened (--merge-chain). Every file is written beside its final
// name, fsynced, and renamed into place, so a folder never holds a
// half-written file under a real name.
package restore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/repo"
)

// Options steer a restore.
type Options struct {
	// Format converts every disk; "" keeps each disk's own format.
	Format disk.Format
	// MergeChain flattens each differencing chain into one disk named
	// after its top layer (with the base's extension when converting).
	MergeChain bool
	// Overwrite allows replacing existing files in the target folder.
	Overwrite bool
	// Progress receives bytes written so far out of the total.
	Progress func(done, total int64)
}

// Result lists what was written, by point path → target path.
type Result struct {
	Files map[string]string `json:"files"`
	Bytes int64             `json:"bytes"`
}

// Plan decides target names and order; it touches nothing.
type Plan struct {
	Steps []Step
}

// Step restores one file of the point.
type Step struct {
	File   repo.File
	Target string // path relative to the target folder
	Format disk.Format
	// Merge writes the resolved chain content; Layer writes only this
	// layer on top of ParentTarget.
	Merge        bool
	ParentTarget string
}

// MakePlan checks the point and options and returns the steps in an order
// where every parent precedes its children.
func MakePlan(p *repo.Point, opts Options) (*Plan, error) {
	isParent := map[string]bool{}
	byPath := map[string]repo.File{}
	for _, f := range p.Files {
		if f.Parent != "" {
			isParent[f.Parent] = true
		}
		byPath[f.Path] = f
	}
	targets := map[string]string{}
	var steps []Step
	var visit func(f repo.File, depth int) error
	done := map[string]bool{}
	visit = func(f repo.File, depth int) error {
		if done[f.Path] {
			return nil
		}
		if depth > 64 {
			return fmt.Errorf("point %s: parent chain of %s is cyclic", p.ID, f.Path)
		}
		if _, err := repo.CleanPath(f.Path); err != nil {
			return err
		}
		st := Step{File: f, Target: filepath.FromSlash(f.Path)}
		if f.Disk != nil {
			st.Format = f.Disk.Format
			if opts.Format != "" {
				st.Format = opts.Format
			}
			if opts.MergeChain && f.Parent != "" {
				st.Merge = true
				st.Target = formats.Rename(st.Target, f.Disk.Format, st.Format, false)
				// A merged .avhd(x) becomes a plain disk of that format.
				if ext := filepath.Ext(st.Target); ext == ".avhd" || ext == ".avhdx" {
					st.Target = st.Target[:len(st.Target)-len(ext)] + formats.Ext(st.Format, false)
				}
			} else {
				if f.Parent != "" {
					if err := visit(byPath[f.Parent], depth+1); err != nil {
						return err
					}
					st.ParentTarget = targets[f.Parent]
				}
				st.Target = formats.Rename(st.Target, f.Disk.Format, st.Format, f.Parent != "")
			}
		}
		done[f.Path] = true
		targets[f.Path] = st.Target
		steps = append(steps, st)
		return nil
	}
	files := append([]repo.File(nil), p.Files...)
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for _, f := range files {
		if opts.MergeChain && isParent[f.Path] {
			continue // folded into its children
		}
		if err := visit(f, 0); err != nil {
			return nil, err
		}
	}
	seen := map[string]string{}
	for _, s := range steps {
		if other, ok := seen[s.Target]; ok {
			return nil, fmt.Errorf("point %s: %s and %s would both be restored as %s", p.ID, other, s.File.Path, s.Target)
		}
		seen[s.Target] = s.File.Path
	}
	return &Plan{Steps: steps}, nil
}

// Run restores point p into dir.
func Run(ctx context.Context, r *repo.Repository, p *repo.Point, dir string, opts Options) (*Result, error) {
	plan, err := MakePlan(p, opts)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if !opts.Overwrite {
		for _, s := range plan.Steps {
			if _, err := os.Lstat(filepath.Join(dir, s.Target)); err == nil {
				return nil, fmt.Errorf("restore: %s already exists (use --overwrite to replace)", filepath.Join(dir, s.Target))
			}
		}
	}
	var total int64
	for _, s := range plan.Steps {
		total += s.File.Size
		if s.File.Disk != nil {
			total += s.File.Disk.Size - s.File.Size
		}
	}
	res := &Result{Files: map[string]string{}}
	var base int64
	for _, s := range plan.Steps {
		n, err := restoreFile(ctx, r, p, dir, s, func(done int64) {
			if opts.Progress != nil {
				opts.Progress(base+done, total)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("restore %s from point %s: %w", s.File.Path, p.ID, err)
		}
		base += n
		res.Bytes += n
		res.Files[s.File.Path] = filepath.Join(dir, s.Target)
	}
	return res, nil
}

func restoreFile(ctx context.Context, r *repo.Repository, p *repo.Point, dir string, s Step, progress func(int64)) (int64, error) {
	final := filepath.Join(dir, s.Target)
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return 0, err
	}
	src, err := r.OpenFile(ctx, p, s.File.Path)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	tmp := filepath.Join(filepath.Dir(final), "."+filepath.Base(final)+".lifeboat-"+randHex())
	defer os.Remove(tmp)

	size := src.Size()
	format := disk.Raw
	opts := disk.CreateOptions{Size: size}
	var ranges []disk.Extent
	switch {
	case s.File.Disk == nil:
		ranges, err = src.Extents(ctx, 0, size)
	case s.Merge:
		format = s.Format
		ranges, err = disk.ResolvedExtents(ctx, src, 0, size)
	default:
		format = s.Format
		ranges, err = src.Extents(ctx, 0, size)
		if s.Format == s.File.Disk.Format {
			// Keep the identity so restored children still link to it.
			opts.ID = s.File.Disk.ID
			opts.Fixed = s.File.Disk.Subformat == "fixed" && s.ParentTarget == ""
		}
		if s.ParentTarget != "" {
			parentAbs := filepath.Join(dir, s.ParentTarget)
			parent, err := formats.Open(ctx, parentAbs)
			if err != nil {
				return 0, fmt.Errorf("open restored parent: %w", err)
			}
			defer parent.Close()
			rel, err := filepath.Rel(filepath.Dir(final), parentAbs)
			if err != nil {
				return 0, err
			}
			opts.ParentPath, opts.ParentID = rel, parent.Info().ID
			opts.ParentFormat, opts.Parent = parent.Format(), parent
		}
	}
	if err != nil {
		return 0, err
	}
	w, err := formats.Create(ctx, tmp, format, opts)
	if err != nil {
		return 0, err
	}
	return copyAndFinish(ctx, w, src, ranges, tmp, final, s, progress)
}

func copyAndFinish(ctx context.Context, w disk.Writer, src disk.Image, ranges []disk.Extent, tmp, final string, s Step, progress func(int64)) (int64, error) {
	if err := disk.Copy(ctx, w, src, ranges, disk.CopyOptions{Progress: progress}); err != nil {
		w.Close()
		return 0, err
	}
	if err := w.Close(); err != nil {
		return 0, err
	}
	if s.File.Mode != 0 {
		os.Chmod(tmp, os.FileMode(s.File.Mode).Perm())
	}
	if !s.File.ModTime.IsZero() && s.File.Disk == nil {
		os.Chtimes(tmp, s.File.ModTime, s.File.ModTime)
	}
	if err := os.Rename(tmp, final); err != nil {
		return 0, err
	}
	if err := syncDir(filepath.Dir(final)); err != nil {
		return 0, err
	}
	return src.Size(), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	d.Sync()
	return nil
}

func randHex() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// ToDevice writes one disk of a point onto a block device or into an image
// file: a host's bare-metal restore. A device gets every byte, zeros
// included, since it may hold anything; a new image file stays sparse.
// The target must be at least as large as the disk.
func ToDevice(ctx context.Context, r *repo.Repository, p *repo.Point, file, target string, progress func(done, total int64)) (int64, error) {
	var f *repo.File
	for i := range p.Files {
		if p.Files[i].Path == file {
			f = &p.Files[i]
		}
	}
	if f == nil || f.Disk == nil {
		return 0, fmt.Errorf("point %s has no disk %q", p.ID, file)
	}
	src, err := r.OpenFile(ctx, p, file)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	size := src.Size()
	device := false
	if fi, err := os.Stat(target); err == nil && fi.Mode()&os.ModeDevice != 0 {
		device = true
	}
	ranges := []disk.Extent{{Offset: 0, Length: size, Kind: disk.Data}}
	if !device {
		if ranges, err = disk.ResolvedExtents(ctx, src, 0, size); err != nil {
			return 0, err
		}
	}
	w, err := formats.Create(ctx, target, disk.Raw, disk.CreateOptions{Size: size})
	if err != nil {
		return 0, fmt.Errorf("restore %s to %s: %w", file, target, err)
	}
	opts := disk.CopyOptions{}
	if progress != nil {
		opts.Progress = func(done int64) { progress(done, size) }
	}
	if err := disk.Copy(ctx, w, src, ranges, opts); err != nil {
		w.Close()
		return 0, fmt.Errorf("restore %s to %s: %w", file, target, err)
	}
	if err := w.Close(); err != nil {
		return 0, err
	}
	return size, nil
}
