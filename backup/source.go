// Package backup turns a source (a disk image with its parent chain, a VM
// folder, a host's system disks) into a recovery point: it classifies the
// source's files by role, stores each through the repository's chunking
// pipeline, reuses what the previous point of the same name already holds,
// and writes the manifest last.
package backup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/hypervisor/hyperv"
	"lifeboat/repo"
	"lifeboat/vmconfig"
)

// File is one file of a source.
type File struct {
	Abs  string // where it is read from
	Path string // slash-separated, relative to the point's root
	Role string
	Size int64
	Mode fs.FileMode
	// ModTime decides, with Size and the disk's identity, whether the
	// previous point's copy can be reused unread.
	ModTime time.Time
	// Disk is set for disk images; Parent is the Path of the parent layer.
	Disk   *disk.Info
	Parent string
	// Image, when set, is read instead of Abs: a hypervisor's view of a
	// disk at the snapshot moment, or captured bytes. The caller owns it.
	Image disk.Image
}

// Source is what one backup reads.
type Source struct {
	Root  string
	Kind  string // "image" or "vm"
	Files []File
	// VM is the parsed configuration of a VM folder, when it has one.
	VM *vmconfig.VM
}

// Scan classifies path: a regular file is an image (with any parent
// chain it has); a folder is a VM folder.
func Scan(ctx context.Context, path string) (*Source, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("scan source: %w", err)
	}
	if fi.IsDir() {
		return scanFolder(ctx, path)
	}
	return scanImage(ctx, path)
}

func scanImage(ctx context.Context, path string) (*Source, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	img, chain, err := formats.OpenChain(ctx, abs)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", path, err)
	}
	defer img.Close()
	src := &Source{Root: filepath.Dir(abs), Kind: "image"}
	seen := map[string]string{}
	layer := disk.Image(img)
	for i, p := range chain {
		if layer == nil {
			return nil, fmt.Errorf("scan %s: chain bookkeeping lost layer %d", path, i)
		}
		name := filepath.Base(p)
		if other, ok := seen[name]; ok {
			return nil, fmt.Errorf("scan %s: two layers share the name %s (%s and %s)", path, name, other, p)
		}
		seen[name] = p
		f, err := fileOf(p, name)
		if err != nil {
			return nil, err
		}
		info := layer.Info()
		f.Disk = &info
		f.Role = repo.RoleDisk
		if i+1 < len(chain) {
			f.Role = repo.RoleDifferencing
			f.Parent = filepath.Base(chain[i+1])
		}
		src.Files = append(src.Files, f)
		layer = layer.Parent()
	}
	return src, nil
}

func fileOf(abs, rel string) (File, error) {
	fi, err := os.Stat(abs)
	if err != nil {
		return File{}, fmt.Errorf("scan: %w", err)
	}
	return File{Abs: abs, Path: filepath.ToSlash(rel), Size: fi.Size(), Mode: fi.Mode().Perm(), ModTime: fi.ModTime()}, nil
}

// Role classifies a file of a VM folder by Hyper-V's and libvirt's layout.
func Role(rel string) string {
	lower := strings.ToLower(filepath.ToSlash(rel))
	ext := filepath.Ext(lower)
	switch ext {
	case ".vmcx", ".vmrs":
		if ext == ".vmrs" {
			return repo.RoleSavedState
		}
		return repo.RoleConfig
	case ".vsv", ".bin", ".vmgs", ".sav":
		return repo.RoleSavedState
	case ".xml":
		return repo.RoleConfig
	}
	if isDisk, diff := formats.DiskExt(lower); isDisk {
		if diff {
			return repo.RoleDifferencing
		}
		return repo.RoleDisk
	}
	return repo.RoleOther
}

func scanFolder(ctx context.Context, root string) (*Source, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	src := &Source{Root: abs, Kind: "vm"}
	err = filepath.WalkDir(abs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("scan %s: %w", p, err)
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("scan %s: not a regular file (%s); a VM folder holds only files", p, d.Type())
		}
		rel, _ := filepath.Rel(abs, p)
		f, err := fileOf(p, rel)
		if err != nil {
			return err
		}
		f.Role = Role(rel)
		src.Files = append(src.Files, f)
		return nil
	})
	if err != nil {
		return nil, err
	}
	byAbs := map[string]int{}
	for i, f := range src.Files {
		byAbs[f.Abs] = i
	}
	for i := range src.Files {
		f := &src.Files[i]
		if f.Role != repo.RoleDisk && f.Role != repo.RoleDifferencing {
			continue
		}
		img, chain, err := formats.OpenChain(ctx, f.Abs)
		if err != nil {
			return nil, fmt.Errorf("scan VM folder %s: disk %s: %w", abs, f.Path, err)
		}
		info := img.Info()
		img.Close()
		f.Disk = &info
		if len(chain) > 1 {
			j, ok := byAbs[filepath.Clean(chain[1])]
			if !ok {
				return nil, fmt.Errorf("scan VM folder %s: disk %s has its parent %s outside the folder; a point must hold the whole chain", abs, f.Path, chain[1])
			}
			f.Parent = src.Files[j].Path
			f.Role = repo.RoleDifferencing
		} else if f.Role == repo.RoleDifferencing {
			f.Role = repo.RoleDisk
		}
	}
	sort.Slice(src.Files, func(i, j int) bool { return src.Files[i].Path < src.Files[j].Path })
	// A Hyper-V layout's configuration must parse: a point whose VM
	// cannot be rebuilt is worse than a failed backup that says why.
	if l, err := hyperv.OpenLayout(abs); err == nil {
		vm, _, err := l.VM()
		if err != nil {
			return nil, fmt.Errorf("scan VM folder %s: configuration %s: %w", abs, l.Config, err)
		}
		// Every disk the configuration attaches must be in the folder: a
		// point without one of them could never be booted.
		for _, d := range vm.Disks {
			if d.Kind != "disk" || d.Path == "" {
				continue
			}
			if _, err := l.Resolve(d.Path); err != nil {
				return nil, fmt.Errorf("scan VM folder %s: configuration %s attaches disk %s, which is missing from the folder: %w", abs, l.Config, d.Path, err)
			}
		}
		src.VM = &vm
	} else if !errors.Is(err, hyperv.ErrNotFound) {
		return nil, fmt.Errorf("scan VM folder %s: %w", abs, err)
	} else {
		// No configuration parsed; one that Hyper-V's layout says is
		// there but does not parse must be named, not skipped.
		for _, f := range src.Files {
			dir := strings.ToLower(filepath.ToSlash(filepath.Dir(f.Path)))
			if f.Role == repo.RoleConfig && dir == "virtual machines" {
				if _, err := hyperv.ReadFile(f.Abs); err != nil {
					return nil, fmt.Errorf("scan VM folder %s: configuration %s does not parse: %w", abs, f.Path, err)
				}
			}
		}
	}
	return src, nil
}
