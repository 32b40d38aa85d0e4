package hyperv

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"lifeboat/vmconfig"
)

// Layout is a Hyper-V VM folder as Hyper-V lays it out (and as an export
// or a copy of a Cluster Shared Volume folder keeps it):
//
//	<root>/Virtual Machines/<GUID>.xml        2008 R2 – 2012 R2 configuration
//	<root>/Virtual Machines/<GUID>/<GUID>.vsv  saved device state
//	<root>/Virtual Machines/<GUID>/<GUID>.bin  saved memory
//	<root>/Virtual Machines/<GUID>.vmcx        2016+ configuration
//	<root>/Virtual Machines/<GUID>.vmrs        2016+ runtime (saved) state
//	<root>/Virtual Machines/<GUID>.vmgs        2016+ guest state (UEFI, vTPM)
//	<root>/Snapshots/<SGUID>.xml|.vmcx         one configuration per snapshot,
//	<root>/Snapshots/<SGUID>/…, <SGUID>.vmrs   with its own saved state
//	<root>/Virtual Hard Disks/*.vhd(x), *.avhd(x)
//
// File and folder names are matched case-insensitively, as Windows does.
// A folder that holds the configuration directly (no "Virtual Machines"
// level) is accepted too.
type Layout struct {
	Root string
	// Config is the VM configuration, relative to Root with slashes.
	Config string
	// Files are all regular files under Root, relative with slashes,
	// sorted.
	Files []string
}

// ErrNotFound is returned when a folder holds no VM configuration, or a
// configuration path matches no file of the folder.
var ErrNotFound = errors.New("not found")

func isGUIDName(base string) bool {
	return vmconfig.IsUUID(strings.TrimSuffix(base, path.Ext(base)))
}

// OpenLayout scans root and finds the VM configuration: the single .vmcx,
// or failing that the single .xml that parses as a configuration, in
// "Virtual Machines" (else in root itself). Several candidates are an
// error, because a backup must not guess which VM it protects.
func OpenLayout(root string) (*Layout, error) {
	l := &Layout{Root: root}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			l.Files = append(l.Files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hyperv: scan %s: %w", root, err)
	}
	slices.Sort(l.Files)
	for _, dir := range []string{"virtual machines", ""} {
		var vmcx, xml []string
		for _, f := range l.Files {
			if !strings.EqualFold(path.Dir(f), dir) && !(dir == "" && path.Dir(f) == ".") {
				continue
			}
			switch strings.ToLower(path.Ext(f)) {
			case ".vmcx":
				vmcx = append(vmcx, f)
			case ".xml":
				if c, err := ReadFile(filepath.Join(root, filepath.FromSlash(f))); err == nil && c.Format == FormatXML {
					xml = append(xml, f)
				}
			}
		}
		cands := vmcx
		if len(cands) == 0 {
			cands = xml
		}
		switch len(cands) {
		case 0:
			continue
		case 1:
			l.Config = cands[0]
			return l, nil
		default:
			return nil, fmt.Errorf("hyperv: %s holds %d VM configurations (%s): one folder per VM", root, len(cands), strings.Join(cands, ", "))
		}
	}
	return nil, fmt.Errorf("hyperv: %s: no VM configuration (Virtual Machines/*.vmcx or *.xml): %w", root, ErrNotFound)
}

// abs returns a relative layout path as an OS path.
func (l *Layout) abs(rel string) string { return filepath.Join(l.Root, filepath.FromSlash(rel)) }

// stateFiles returns the saved-state files that belong to the
// configuration cfg (relative): "<base>/*.vsv|*.bin" and "<base>.vmrs".
func (l *Layout) stateFiles(cfg string) []string {
	base := strings.TrimSuffix(cfg, path.Ext(cfg))
	var out []string
	for _, f := range l.Files {
		ext := strings.ToLower(path.Ext(f))
		switch {
		case (ext == ".vsv" || ext == ".bin") && strings.EqualFold(path.Dir(f), base):
			out = append(out, f)
		case ext == ".vmrs" && strings.EqualFold(strings.TrimSuffix(f, path.Ext(f)), base):
			out = append(out, f)
		}
	}
	return out
}

// SavedState returns the VM's saved-state files (.vsv, .bin, .vmrs).
func (l *Layout) SavedState() []string { return l.stateFiles(l.Config) }

// SnapshotConfigs returns the snapshot configurations under "Snapshots".
func (l *Layout) SnapshotConfigs() []string {
	var out []string
	for _, f := range l.Files {
		ext := strings.ToLower(path.Ext(f))
		if (ext == ".xml" || ext == ".vmcx") && strings.EqualFold(path.Dir(f), "snapshots") && isGUIDName(path.Base(f)) {
			out = append(out, f)
		}
	}
	return out
}

// Resolve maps a path as the configuration names it (a Windows path such
// as C:\ClusterStorage\Volume1\vm1\Virtual Hard Disks\disk.vhdx, or a UNC
// path) to the file of the folder that matches the most trailing path
// components, compared case-insensitively. At least the file name must
// match; two files that match equally well are an error rather than a
// guess.
func (l *Layout) Resolve(configPath string) (string, error) {
	want := splitAnyPath(configPath)
	if len(want) == 0 {
		return "", fmt.Errorf("hyperv: empty path: %w", ErrNotFound)
	}
	best, bestN, tie := "", 0, false
	for _, f := range l.Files {
		have := strings.Split(f, "/")
		n := 0
		for n < len(have) && n < len(want) && strings.EqualFold(have[len(have)-1-n], want[len(want)-1-n]) {
			n++
		}
		switch {
		case n > bestN:
			best, bestN, tie = f, n, false
		case n == bestN && n > 0:
			tie = true
		}
	}
	if bestN == 0 {
		return "", fmt.Errorf("hyperv: %s: no file of %s has that name: %w", configPath, l.Root, ErrNotFound)
	}
	if tie {
		return "", fmt.Errorf("hyperv: %s: several files of %s match it equally well", configPath, l.Root)
	}
	return best, nil
}

// splitAnyPath splits a Windows or slash path into its components,
// dropping a drive letter, a UNC server/share or \\?\ prefix, and empty or
// "." components.
func splitAnyPath(p string) []string {
	p = strings.ReplaceAll(p, `\`, "/")
	p = strings.TrimPrefix(p, "//?/")
	if strings.HasPrefix(p, "//") { // UNC: //server/share/...
		parts := strings.SplitN(strings.TrimPrefix(p, "//"), "/", 3)
		if len(parts) == 3 {
			p = parts[2]
		} else {
			p = ""
		}
	}
	if len(p) >= 2 && p[1] == ':' {
		p = p[2:]
	}
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// VM parses the configuration and completes the summary from the folder:
// saved-state files, and the snapshots found under "Snapshots" (name and
// time from each snapshot's configuration, files from the layout).
// Snapshot parent links are not filled: where Hyper-V records them in its
// configuration is not confirmed by any available sample, and a wrong tree
// is worse than none (the differencing-disk chain still orders the disks).
func (l *Layout) VM() (vmconfig.VM, *Config, error) {
	cfg, err := ReadFile(l.abs(l.Config))
	if err != nil {
		return vmconfig.VM{}, nil, err
	}
	vm, err := cfg.VM()
	if err != nil {
		return vm, cfg, err
	}
	vm.SavedState = l.SavedState()

	byID := map[string]int{}
	for i, s := range vm.Snapshots {
		byID[strings.ToLower(s.ID)] = i
	}
	for _, sc := range l.SnapshotConfigs() {
		id := strings.TrimSuffix(path.Base(sc), path.Ext(sc))
		snap := vmconfig.Snapshot{ID: id}
		if c, err := ReadFile(l.abs(sc)); err != nil {
			vm.Notes = append(vm.Notes, fmt.Sprintf("snapshot configuration %s unreadable: %v", sc, err))
		} else {
			snap.Name, _ = stringAt(c.Root, "properties/name")
			snap.Time = c.CreationTime()
		}
		snap.Files = append([]string{sc}, l.stateFiles(sc)...)
		if i, ok := byID[strings.ToLower(id)]; ok {
			snap.ID = vm.Snapshots[i].ID
			vm.Snapshots[i] = snap
		} else {
			byID[strings.ToLower(id)] = len(vm.Snapshots)
			vm.Snapshots = append(vm.Snapshots, snap)
		}
	}
	for _, s := range vm.Snapshots {
		if len(s.Files) == 0 {
			vm.Notes = append(vm.Notes, fmt.Sprintf("snapshot %s is listed in the configuration but its files are not in the folder", s.ID))
		}
	}
	slices.SortStableFunc(vm.Snapshots, func(a, b vmconfig.Snapshot) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	if err := vm.Validate(); err != nil {
		return vm, cfg, err
	}
	return vm, cfg, nil
}
