// Package disk defines what Lifeboat needs from a virtual disk image, whatever
// its on-disk format: its virtual size, random reads of the guest-visible
// bytes, an allocation map of the image's own layer, and its parent when it is
// a differencing disk. Format packages (disk/raw, disk/qcow2, disk/vhd,
// disk/vhdx) implement Image and Writer; disk/formats detects and opens them;
// disk/chain merges differencing chains.
//
// Every reader is read-only towards its source: no format may write to the
// file it opens (a VHDX log is replayed in memory, never in place).
package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Format names an on-disk image format.
type Format string

const (
	Raw   Format = "raw"
	QCOW2 Format = "qcow2"
	VHD   Format = "vhd"
	VHDX  Format = "vhdx"
)

// Formats lists every format Lifeboat reads and writes, in a stable order.
var Formats = []Format{Raw, QCOW2, VHD, VHDX}

// ParseFormat validates a user-supplied format name.
func ParseFormat(s string) (Format, error) {
	for _, f := range Formats {
		if string(f) == s {
			return f, nil
		}
	}
	return "", fmt.Errorf("unknown disk format %q (want raw, qcow2, vhd or vhdx)", s)
}

// ExtentKind says how a byte range of one image layer is stored.
type ExtentKind uint8

const (
	// Data ranges are allocated in this layer and hold bytes (which may
	// still happen to be zero).
	Data ExtentKind = iota + 1
	// Zero ranges are defined by this layer to read as zeros, hiding any
	// parent data (qcow2 zero clusters, VHDX PAYLOAD_BLOCK_ZERO, an
	// allocated-but-zero region a writer chose not to store).
	Zero
	// Unallocated ranges are not defined by this layer: they read from the
	// parent, or as zeros when there is no parent.
	Unallocated
)

func (k ExtentKind) String() string {
	switch k {
	case Data:
		return "data"
	case Zero:
		return "zero"
	case Unallocated:
		return "unallocated"
	}
	return fmt.Sprintf("ExtentKind(%d)", k)
}

// Extent is a byte range of the virtual disk with one ExtentKind.
type Extent struct {
	Offset int64      `json:"offset"`
	Length int64      `json:"length"`
	Kind   ExtentKind `json:"kind"`
}

// End is the first offset past the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// Image is an opened disk image. ReadAt returns guest-visible bytes: for a
// differencing disk it reads through to the parent where this layer is
// unallocated. Reads past Size return io.EOF like any io.ReaderAt.
type Image interface {
	io.ReaderAt
	io.Closer
	// Format is the on-disk format of this layer.
	Format() Format
	// Size is the virtual size in bytes.
	Size() int64
	// Extents describes [off, off+length) of this layer only (not the
	// parent's), as sorted, adjacent, non-overlapping extents that cover
	// exactly the requested range. Neighbouring extents of the same kind
	// should be merged.
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
	// Parent is the opened parent image of a differencing disk, or nil.
	Parent() Image
	// Info describes the layer's identity and parent link.
	Info() Info
}

// Info is the identity of one image layer, as recorded in a recovery point
// so that a restored chain can be re-linked.
type Info struct {
	Format Format `json:"format"`
	Size   int64  `json:"size"`
	// ID is the layer's unique identifier where the format has one
	// (VHD unique ID, VHDX DataWriteGuid used for parent linkage), lower-case
	// canonical UUID text; empty otherwise.
	ID string `json:"id,omitempty"`
	// ParentPath is the parent locator as stored in the file (may be
	// relative, Windows-style, or absolute); empty when there is no parent.
	ParentPath string `json:"parent_path,omitempty"`
	// ParentID is the identity the child expects its parent to have.
	ParentID string `json:"parent_id,omitempty"`
	// ClusterSize is the allocation unit (block size) in bytes, 0 if none.
	ClusterSize int64 `json:"cluster_size,omitempty"`
	// Subformat is format specific detail: "fixed", "dynamic",
	// "differencing", "compressed" ...
	Subformat string `json:"subformat,omitempty"`
}

// ParentOpener opens the parent of a differencing disk. Format packages call
// it instead of importing each other, so a qcow2 overlay can sit on a raw
// base and so callers decide how paths are resolved. candidates are the
// paths to try in order (locators resolved against the child's folder).
type ParentOpener func(ctx context.Context, candidates []string) (Image, error)

// CreateOptions describe a new image.
type CreateOptions struct {
	Size int64
	// ClusterSize is the format's block size; 0 picks the format default.
	ClusterSize int64
	// ID sets the new layer's identity (see Info.ID); empty makes a new one.
	ID string
	// Parent makes a differencing image. ParentPath is what is stored in
	// the child's locator (relative to the child's folder is best);
	// ParentID is the parent's Info.ID, checked by readers.
	ParentPath string
	ParentID   string
	// ParentFormat is the parent's format (qcow2 records it).
	ParentFormat Format
	// Parent is the opened parent, for formats whose allocation unit is
	// coarser than a write: they fill the rest of a newly allocated unit
	// from it. Writers of finer-grained formats may ignore it.
	Parent Image
	// Fixed asks for a fully allocated image where the format has that
	// subformat (VHD/VHDX fixed). Writers otherwise produce sparse images.
	Fixed bool
}

// Writer builds a new image. Offsets and lengths passed to WriteAt are
// multiples of 512 bytes (raw images accept any). Bytes passed to WriteAt become part of this
// layer: in a differencing image even all-zero writes are recorded so that
// they hide the parent; in a base image a writer may leave all-zero ranges
// unallocated. Ranges never written read as zero (base) or from the parent
// (differencing). Close writes the final metadata; an image is not valid
// until Close returns nil.
type Writer interface {
	io.WriterAt
	// Close finalises metadata, fsyncs, and closes the file.
	Close() error
}

// ErrParentNotFound is wrapped by openers when no candidate parent exists.
var ErrParentNotFound = errors.New("parent not found")

// ErrParentMismatch is wrapped when a parent exists but its identity does
// not match what the child records.
var ErrParentMismatch = errors.New("parent identity does not match")

// FormatError reports malformed image content. It names the file, the byte
// offset in the file where the problem was found, and the cause.
type FormatError struct {
	Path   string
	Offset int64
	Msg    string
	Err    error
}

func (e *FormatError) Error() string {
	s := fmt.Sprintf("%s: at offset %d: %s", e.Path, e.Offset, e.Msg)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *FormatError) Unwrap() error { return e.Err }

// Errorf builds a *FormatError.
func Errorf(path string, off int64, format string, args ...any) error {
	return &FormatError{Path: path, Offset: off, Msg: fmt.Sprintf(format, args...)}
}
