package repo

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"time"

	"lifeboat/disk"
)

// Point is a recovery point's manifest, stored as points/<ID> (JSON inside
// an envelope of type 'M'). Writing it is the last step of a backup: a point
// is listed only when every index and chunk it names is already durable.
type Point struct {
	Version int    `json:"version"`
	ID      string `json:"id"`
	// Name is the protected object: a VM's name, or an image's name.
	Name string `json:"name"`
	// Kind is "vm", "image" or "host".
	Kind string    `json:"kind"`
	Time time.Time `json:"time"`
	Host string    `json:"host,omitempty"`
	// Consistency: "application" (guest quiesced), "crash" (live, not
	// quiesced), "offline" (saved state or shut off) or "file" (a plain
	// image file read as it was).
	Consistency string `json:"consistency"`
	// Previous is the point whose indexes an incremental reused.
	Previous string `json:"previous,omitempty"`
	// Checkpoint names the hypervisor checkpoint taken with this point:
	// the next backup of the VM is incremental from it.
	Checkpoint string `json:"checkpoint,omitempty"`
	Files      []File `json:"files"`
	// Config is the parsed VM configuration summary captured at backup.
	Config json.RawMessage `json:"config,omitempty"`
	// Notes carries what the backup decided, for operators ("fell back to
	// a full read: checkpoint chain broken").
	Notes []string `json:"notes,omitempty"`
}

// File roles.
const (
	RoleConfig       = "config"
	RoleDisk         = "disk"
	RoleDifferencing = "differencing-disk"
	RoleSavedState   = "saved-state"
	RolePartitions   = "partition-table"
	RoleOther        = "other"
)

// File is one file of a point.
type File struct {
	// Path is slash-separated and relative to the point's root folder.
	Path string `json:"path"`
	Role string `json:"role"`
	// Size is the file's size on the source.
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime,omitzero"`
	Mode    uint32    `json:"mode,omitempty"`
	// Index names the index of the file's content: the virtual disk for
	// disks, the bytes for other files.
	Index string `json:"index"`
	// Disk is set for disk images.
	Disk *disk.Info `json:"disk,omitempty"`
	// Parent is the Path of this disk's parent within the point.
	Parent string `json:"parent,omitempty"`
	Stats  Stats  `json:"stats"`
}

// Format is the disk format, or "" for plain files.
func (f *File) Format() disk.Format {
	if f.Disk == nil {
		return ""
	}
	return f.Disk.Format
}

// Stats counts what backing up one file did.
type Stats struct {
	// BytesRead from the source; BytesReused were taken from the previous
	// point's index without reading.
	BytesRead   int64 `json:"bytes_read"`
	BytesReused int64 `json:"bytes_reused"`
	// NewChunks were stored; NewBytes is their stored (compressed) size.
	Chunks    int64 `json:"chunks"`
	NewChunks int64 `json:"new_chunks"`
	NewBytes  int64 `json:"new_bytes"`
	Holes     int64 `json:"holes"`
}

// Add sums stats.
func (s *Stats) Add(o Stats) {
	s.BytesRead += o.BytesRead
	s.BytesReused += o.BytesReused
	s.Chunks += o.Chunks
	s.NewChunks += o.NewChunks
	s.NewBytes += o.NewBytes
	s.Holes += o.Holes
}

// CleanPath validates a point-relative path: a restore writes files under
// its target folder and must never be steered outside it.
func CleanPath(p string) (string, error) {
	if p == "" || strings.HasPrefix(p, "/") || strings.Contains(p, "\\") || strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("unsafe path %q in point", p)
	}
	c := path.Clean(p)
	if c != p || c == "." || c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("unsafe path %q in point", p)
	}
	return c, nil
}

// validate checks a decoded manifest before anything trusts it.
func (p *Point) validate() error {
	if p.Version != 1 {
		return fmt.Errorf("point %s: version %d not supported", p.ID, p.Version)
	}
	seen := map[string]bool{}
	for _, f := range p.Files {
		if _, err := CleanPath(f.Path); err != nil {
			return fmt.Errorf("point %s: %w", p.ID, err)
		}
		if seen[f.Path] {
			return fmt.Errorf("point %s: file %q listed twice", p.ID, f.Path)
		}
		seen[f.Path] = true
		if _, err := ParseID(f.Index); err != nil {
			return fmt.Errorf("point %s: file %q: %w", p.ID, f.Path, err)
		}
	}
	for _, f := range p.Files {
		if f.Parent != "" && !seen[f.Parent] {
			return fmt.Errorf("point %s: file %q names parent %q, which the point lacks", p.ID, f.Path, f.Parent)
		}
	}
	return nil
}

// NewPointID makes a sortable, unique point ID: UTC time then randomness.
func NewPointID(t time.Time) string {
	return t.UTC().Format("20060102T150405Z") + "-" + randomHex(4)
}

// ValidPointID reports whether s has the shape NewPointID makes.
func ValidPointID(s string) bool {
	if len(s) != 16+1+8 || s[16] != '-' {
		return false
	}
	for _, c := range s[17:] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	_, err := time.Parse("20060102T150405Z", s[:16])
	return err == nil
}

// TopDisks lists the point's disks that are no other disk's parent: the
// disks a VM sees (a differencing chain counts once, by its newest file).
func (p *Point) TopDisks() []string {
	parents := map[string]bool{}
	for _, f := range p.Files {
		if f.Parent != "" {
			parents[f.Parent] = true
		}
	}
	var tops []string
	for _, f := range p.Files {
		if f.Disk != nil && !parents[f.Path] {
			tops = append(tops, f.Path)
		}
	}
	return tops
}
