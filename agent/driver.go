package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"lifeboat/backup"
	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/repo"
)

// Driver is the seam between the agent and a host's hypervisor: list the
// VMs the host holds, and make one ready to read for a backup. The folder
// driver below serves VM folders and image files under configured paths;
// a libvirt or Hyper-V driver plugs in with the same calls (online
// backups through the hypervisor's backup API, change maps from dirty
// bitmaps or RCT, saved state as the offline fallback).
type Driver interface {
	// Name is the driver's name ("folders", "libvirt").
	Name() string
	// Inventory lists the VMs the host holds now.
	Inventory(ctx context.Context) ([]VM, error)
	// Prepare makes vm ready to back up. It returns ErrNotHere when the
	// host no longer holds the VM and ErrMigrating when it is moving: the
	// job is then deferred and follows the VM, never failed.
	Prepare(ctx context.Context, vm VM, opts PrepareOptions) (*Prepared, error)
}

// VM is one VM as a driver sees it.
type VM struct {
	// UUID is the hypervisor's ID. Left empty, the agent derives a stable
	// one from the shared volume and the name (so a VM folder moved to
	// another node of the cluster keeps its identity), or from the node
	// and the path.
	UUID string
	Name string
	// Path is the VM's folder, or its image for an image VM.
	Path  string
	State string // catalog.VMRunning, VMOff, …
	// Files are the VM's files (absolute), disks first.
	Files []string
}

// PrepareOptions steer Prepare.
type PrepareOptions struct {
	FullRead bool
	// OfflineFallback allows an offline backup (a managed save: the VM
	// stops for a moment) when an online one is not possible.
	OfflineFallback bool
}

// Prepared is a VM ready to read.
type Prepared struct {
	// Run, when set, writes the point itself: a driver that backs VMs
	// up through the hypervisor (online, with checkpoints) runs
	// backup.RunVM there, and Source, Consistency, Changed and Notes are
	// unused. It may return ErrNotHere or ErrMigrating (wrapped) when
	// the VM left or began to move after Prepare.
	Run func(ctx context.Context, r *repo.Repository, opts backup.Options) (*repo.Point, error)

	Source      *backup.Source
	Consistency string
	// Changed maps a file's point path to the ranges changed since the
	// previous point, when the driver knows them.
	Changed map[string][]disk.Extent
	Notes   []string
	// Release ends what Prepare began (a hypervisor backup job, a
	// checkpoint); ok says whether the backup succeeded.
	Release func(ctx context.Context, ok bool) error
}

// Errors Prepare returns for a VM that is elsewhere.
var (
	ErrNotHere   = errors.New("the VM is not on this host")
	ErrMigrating = errors.New("the VM is migrating")
)

// Folders is the driver for hosts without a hypervisor driver: every
// subfolder of a configured folder is a VM folder (its files as they
// are: Hyper-V layouts, disk chains), and every disk image directly in
// one is an image VM with its parent chain. Hidden entries are skipped.
// Files are read as they are on disk ("file" consistency): the VMs must
// be off, or the files a copy.
type Folders struct {
	Dirs []string
}

// Name is "folders".
func (f *Folders) Name() string { return "folders" }

// Inventory scans the folders.
func (f *Folders) Inventory(ctx context.Context) ([]VM, error) {
	var out []VM
	names := map[string]string{}
	for _, dir := range f.Dirs {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, err
		}
		ents, err := os.ReadDir(abs)
		if err != nil {
			return nil, fmt.Errorf("VM folder %s: %w", abs, err)
		}
		// Images that are another image's parent belong to that VM.
		parents := map[string]bool{}
		var images []VM
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			p := filepath.Join(abs, e.Name())
			switch {
			case e.IsDir():
				files, err := folderFiles(p)
				if err != nil {
					return nil, err
				}
				out = append(out, VM{Name: e.Name(), Path: p, State: "off", Files: files})
			case e.Type().IsRegular():
				if isDisk, _ := formats.DiskExt(e.Name()); !isDisk {
					continue
				}
				img, chain, err := formats.OpenChain(ctx, p)
				if err != nil {
					// A half-copied image is not a VM yet; the next scan sees it.
					continue
				}
				img.Close()
				for _, c := range chain[1:] {
					parents[filepath.Clean(c)] = true
				}
				name := strings.TrimSuffix(e.Name(), filepath.Ext(e.Name()))
				images = append(images, VM{Name: name, Path: p, State: "off", Files: chain})
			}
		}
		for _, v := range images {
			if !parents[v.Path] {
				out = append(out, v)
			}
		}
	}
	for _, v := range out {
		if other, ok := names[v.Name]; ok {
			return nil, fmt.Errorf("two VMs are named %q: %s and %s", v.Name, other, v.Path)
		}
		names[v.Name] = v.Path
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func folderFiles(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	return files, err
}

// Prepare scans the VM's folder or image.
func (f *Folders) Prepare(ctx context.Context, vm VM, opts PrepareOptions) (*Prepared, error) {
	if _, err := os.Stat(vm.Path); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", vm.Path, ErrNotHere)
	}
	src, err := backup.Scan(ctx, vm.Path)
	if err != nil {
		return nil, err
	}
	return &Prepared{Source: src, Consistency: "file", Release: func(context.Context, bool) error { return nil }}, nil
}
