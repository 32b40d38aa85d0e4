package backup

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"lifeboat/disk"
	"lifeboat/hypervisor"
	"lifeboat/repo"
)

// VMOptions steer a backup of a VM through its hypervisor.
type VMOptions struct {
	Options
	// Offline backs the VM up through a saved state even when it runs.
	Offline bool
	// NoQuiesce skips freezing the guest's filesystems.
	NoQuiesce bool
}

// RunVM backs up a VM where it runs: the driver presents each disk as it
// was at the snapshot moment (online) or the stopped VM's files (offline),
// with the blocks changed since the previous point's checkpoint when the
// chain holds. The checkpoint is committed only after the point is saved,
// so a failed job never leaves a checkpoint that a later incremental
// would trust.
func RunVM(ctx context.Context, r *repo.Repository, drv hypervisor.Driver, vm string, opts VMOptions) (*repo.Point, error) {
	if opts.Name == "" {
		opts.Name = vm
	}
	prev, err := previous(ctx, r, opts.Name, "vm")
	if err != nil {
		return nil, err
	}
	bo := hypervisor.BackupOptions{Quiesce: !opts.NoQuiesce, Offline: opts.Offline}
	if prev != nil && prev.Checkpoint != "" && !opts.FullRead {
		bo.Incremental, bo.Since = true, prev.Checkpoint
	}
	sess, err := drv.Backup(ctx, vm, bo)
	if err != nil {
		return nil, fmt.Errorf("backup VM %s on %s: %w", vm, drv.Name(), err)
	}
	defer sess.End(context.WithoutCancel(ctx))

	src := &Source{Kind: "vm"}
	cfg := sess.Config()
	if cfg != nil {
		src.VM = &cfg.Summary
		if len(cfg.Raw) > 0 {
			src.Files = append(src.Files, File{Path: "config.xml", Role: repo.RoleConfig, Size: int64(len(cfg.Raw)), Mode: 0o644,
				Image: memImage(cfg.Raw)})
		}
	}
	if opts.Changed == nil {
		opts.Changed = map[string][]disk.Extent{}
	}
	used := map[string]bool{}
	for _, d := range sess.Disks() {
		// Online, a disk is read flattened at the snapshot moment: one
		// file per disk, named after its image, in its own format.
		name := filepath.Base(d.Path)
		if used[name] {
			name = d.Target + "-" + name
		}
		used[name] = true
		info := d.Image.Info()
		info.Format, info.ParentPath, info.ParentID = d.Format, "", ""
		if info.Format == "" {
			info.Format = disk.Raw
		}
		info.Size = d.Image.Size()
		src.Files = append(src.Files, File{Path: "disks/" + name, Role: repo.RoleDisk, Size: d.Image.Size(), Disk: &info, Image: d.Image})
		if d.ChangedKnown {
			opts.Changed["disks/"+name] = d.Changed
		}
	}
	for _, f := range sess.Files() {
		fi, err := os.Stat(f.Path)
		if err != nil {
			return nil, fmt.Errorf("backup VM %s: %w", vm, err)
		}
		src.Files = append(src.Files, File{Abs: f.Path, Path: "state/" + filepath.Base(f.Path), Role: f.Role, Size: fi.Size(), Mode: fi.Mode().Perm(), ModTime: fi.ModTime()})
	}
	opts.Consistency = sess.Consistency()
	opts.Notes = append(opts.Notes, sess.Notes()...)
	if fb := sess.Fallback(); fb != "" {
		opts.Notes = append(opts.Notes, "fell back to a full read: "+fb)
	}
	opts.checkpoint = sess.Checkpoint()
	if src.VM != nil && opts.Config == nil {
		if opts.Config, err = json.Marshal(src.VM); err != nil {
			return nil, err
		}
	}
	pt, err := Run(ctx, r, src, opts.Options)
	if err != nil {
		return nil, err
	}
	if err := sess.Commit(ctx); err != nil {
		// The point is whole; only the next incremental loses its base.
		pt.Notes = append(pt.Notes, "checkpoint not committed: "+err.Error())
	}
	return pt, nil
}

// memImage is a small in-memory file (a captured configuration).
type memImage []byte

func (m memImage) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m)) {
		return 0, io.EOF
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (m memImage) Close() error        { return nil }
func (m memImage) Format() disk.Format { return disk.Raw }
func (m memImage) Size() int64         { return int64(len(m)) }
func (m memImage) Parent() disk.Image  { return nil }
func (m memImage) Info() disk.Info     { return disk.Info{Format: disk.Raw, Size: int64(len(m))} }
func (m memImage) Extents(_ context.Context, off, n int64) ([]disk.Extent, error) {
	off, n = disk.ClampRange(off, n, int64(len(m)))
	if n == 0 {
		return nil, nil
	}
	return []disk.Extent{{Offset: off, Length: n, Kind: disk.Data}}, nil
}
