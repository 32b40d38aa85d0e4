package backup

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"lifeboat/disk"
	"lifeboat/disk/raw"
	"lifeboat/itemlevel"
	"lifeboat/repo"
)

// DefaultHostConfig lists what a hypervisor host's own configuration is
// made of: the hypervisor's, the cluster stack's and the host's identity.
// Paths that do not exist are skipped.
func DefaultHostConfig() []string {
	return []string{
		"/etc/libvirt", "/etc/corosync", "/etc/pacemaker", "/etc/hostname",
		"/etc/hosts", "/etc/fstab", "/etc/network", "/etc/lifeboat",
	}
}

// HostOptions say what a host bare-metal backup holds.
type HostOptions struct {
	// Disks are the system disks: block devices or image files, read
	// whole as raw (sparse-aware for files).
	Disks []string
	// Config are files and folders of the host's configuration.
	Config []string
}

// ScanHost builds a source of kind "host": each system disk as
// disks/<name> (raw), its partition table as partition-table/<name>.json
// (decoded, for operators and rebuild tooling; the table's bytes are in
// the disk itself), and every configuration file under host-config/ with
// its absolute path.
func ScanHost(ctx context.Context, opts HostOptions) (*Source, error) {
	if len(opts.Disks) == 0 {
		return nil, fmt.Errorf("host backup: no system disk given")
	}
	src := &Source{Kind: "host"}
	seen := map[string]bool{}
	for _, d := range opts.Disks {
		img, err := raw.Open(ctx, d, nil)
		if err != nil {
			return nil, fmt.Errorf("host backup: disk %s: %w", d, err)
		}
		name := filepath.Base(d)
		if seen[name] {
			img.Close()
			return nil, fmt.Errorf("host backup: two disks named %s", name)
		}
		seen[name] = true
		info := img.Info()
		f := File{Abs: d, Path: "disks/" + name, Role: repo.RoleDisk, Size: img.Size(), Disk: &info}
		if fi, err := os.Stat(d); err == nil && fi.Mode().IsRegular() {
			f.ModTime, f.Mode = fi.ModTime(), fi.Mode().Perm()
		}
		src.Files = append(src.Files, f)
		vols, err := itemlevel.OpenVolumes(ctx, img, img.Size())
		img.Close()
		if err != nil {
			return nil, fmt.Errorf("host backup: disk %s: partition table: %w", d, err)
		}
		table, _ := json.MarshalIndent(vols, "", "  ")
		src.Files = append(src.Files, File{Path: "partition-table/" + name + ".json", Role: repo.RolePartitions,
			Size: int64(len(table)), Mode: 0o644, Image: memImage(table)})
	}
	for _, root := range opts.Config {
		if _, err := os.Lstat(root); err != nil {
			continue
		}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // unreadable corners of /etc are reported by absence
			}
			if !d.Type().IsRegular() {
				return nil
			}
			abs, err := filepath.Abs(p)
			if err != nil {
				return err
			}
			rel := "host-config/" + strings.TrimPrefix(filepath.ToSlash(abs), "/")
			if _, err := repo.CleanPath(rel); err != nil || seen[rel] {
				return nil
			}
			seen[rel] = true
			f, err := fileOf(abs, rel)
			if err != nil {
				return nil
			}
			f.Role = repo.RoleConfig
			src.Files = append(src.Files, f)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("host backup: config %s: %w", root, err)
		}
	}
	return src, nil
}

var _ disk.Image = memImage(nil)
