// Package formats recognises a disk image's format from its bytes and opens
// or creates it with the right package, resolving parents of differencing
// disks across formats (a qcow2 overlay may sit on a raw base).
package formats

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"lifeboat/disk"
	"lifeboat/disk/qcow2"
	"lifeboat/disk/raw"
	"lifeboat/disk/vhd"
	"lifeboat/disk/vhdx"
)

// Detect reads the signatures: qcow2 and VHDX at offset 0, VHD at 0
// (dynamic) or in the last 512 bytes (fixed, which has no header copy).
// Anything else is raw. Extensions are never trusted: a fixed VHD renamed
// .img is still a VHD, and reading it raw would include the footer.
func Detect(path string) (disk.Format, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("detect format: %w", err)
	}
	defer f.Close()
	return DetectReader(f, path)
}

// DetectReader is Detect on an open file.
func DetectReader(f *os.File, path string) (disk.Format, error) {
	head := make([]byte, 8)
	if _, err := f.ReadAt(head, 0); err != nil && err != io.EOF {
		return "", fmt.Errorf("detect format of %s: %w", path, err)
	}
	switch {
	case bytes.HasPrefix(head, []byte("QFI\xfb")):
		return disk.QCOW2, nil
	case bytes.HasPrefix(head, []byte("vhdxfile")):
		return disk.VHDX, nil
	case bytes.HasPrefix(head, []byte("conectix")):
		return disk.VHD, nil
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return "", fmt.Errorf("detect format of %s: %w", path, err)
	}
	if size >= 512 && size%512 == 0 {
		tail := make([]byte, 8)
		if _, err := f.ReadAt(tail, size-512); err == nil && string(tail) == "conectix" {
			return disk.VHD, nil
		}
	}
	return disk.Raw, nil
}

// Open detects and opens an image with its whole parent chain.
func Open(ctx context.Context, path string) (disk.Image, error) {
	img, _, err := OpenChain(ctx, path)
	return img, err
}

// OpenChain opens an image with its parent chain and also returns the
// file path of every layer, the image's own first: a backup needs to know
// which files a chain is made of.
func OpenChain(ctx context.Context, path string) (disk.Image, []string, error) {
	paths := []string{path}
	img, err := open(ctx, path, "", &paths)
	if err != nil {
		return nil, nil, err
	}
	return img, paths, nil
}

// OpenAs opens path as format, or detects the format when it is "".
func OpenAs(ctx context.Context, path string, format disk.Format) (disk.Image, error) {
	return open(ctx, path, format, nil)
}

func open(ctx context.Context, path string, format disk.Format, paths *[]string) (disk.Image, error) {
	if format == "" {
		var err error
		if format, err = Detect(path); err != nil {
			return nil, err
		}
	}
	parents := parentOpener(paths)
	var img disk.Image
	var err error
	// Each Open returns a concrete pointer; convert only on success so a
	// failed open never yields a non-nil interface holding nil.
	switch format {
	case disk.Raw:
		img, err = asImage(raw.Open(ctx, path, parents))
	case disk.QCOW2:
		img, err = asImage(qcow2.Open(ctx, path, parents))
	case disk.VHD:
		img, err = asImage(vhd.Open(ctx, path, parents))
	case disk.VHDX:
		img, err = asImage(vhdx.Open(ctx, path, parents))
	default:
		return nil, fmt.Errorf("open %s: unknown format %q", path, format)
	}
	if err != nil {
		return nil, err
	}
	return img, nil
}

func asImage[T disk.Image](img T, err error) (disk.Image, error) {
	if err != nil {
		return nil, err
	}
	return img, nil
}

func asWriter[T disk.Writer](w T, err error) (disk.Writer, error) {
	if err != nil {
		return nil, err
	}
	return w, nil
}

// parentOpener tries each candidate that exists, detecting its format,
// and records the path it opened.
func parentOpener(paths *[]string) disk.ParentOpener {
	return func(ctx context.Context, cands []string) (disk.Image, error) {
		for _, c := range cands {
			if fi, err := os.Stat(c); err == nil && !fi.IsDir() {
				if paths != nil {
					*paths = append(*paths, c)
				}
				return open(ctx, c, "", paths)
			}
		}
		return nil, fmt.Errorf("tried %s: %w", strings.Join(cands, ", "), disk.ErrParentNotFound)
	}
}

// Create starts a new image of the given format.
func Create(ctx context.Context, path string, format disk.Format, opts disk.CreateOptions) (disk.Writer, error) {
	switch format {
	case disk.Raw:
		return asWriter(raw.Create(ctx, path, opts))
	case disk.QCOW2:
		return asWriter(qcow2.Create(ctx, path, opts))
	case disk.VHD:
		return asWriter(vhd.Create(ctx, path, opts))
	case disk.VHDX:
		return asWriter(vhdx.Create(ctx, path, opts))
	}
	return nil, fmt.Errorf("create %s: unknown format %q", path, format)
}

// Ext is the conventional file extension of a format; differencing disks
// of VHD and VHDX get Hyper-V's snapshot extensions.
func Ext(f disk.Format, differencing bool) string {
	switch f {
	case disk.QCOW2:
		return ".qcow2"
	case disk.VHD:
		if differencing {
			return ".avhd"
		}
		return ".vhd"
	case disk.VHDX:
		if differencing {
			return ".avhdx"
		}
		return ".vhdx"
	}
	return ".raw"
}

// DiskExt reports whether a file name looks like a disk image, and whether
// like a differencing one.
func DiskExt(name string) (isDisk, differencing bool) {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".vhd", ".vhdx", ".qcow2", ".qcow", ".img", ".raw":
		return true, false
	case ".avhd", ".avhdx":
		return true, true
	}
	return false, false
}

// Rename gives name the extension of format, keeping it when the format is
// unchanged.
func Rename(name string, from, to disk.Format, differencing bool) string {
	if from == to {
		return name
	}
	return strings.TrimSuffix(name, filepath.Ext(name)) + Ext(to, differencing)
}
