//go:build linux

package raw

import (
	"context"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"lifeboat/disk"
)

// holes walks [off, off+length) with SEEK_DATA/SEEK_HOLE. The answers are
// in filesystem blocks, so a partly written block counts as data.
func holes(ctx context.Context, f *os.File, path string, off, length int64) ([]disk.Extent, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	end := off + length
	all := []disk.Extent{{Offset: off, Length: length, Kind: disk.Data}}
	var out []disk.Extent
	pos := off
	for pos < end {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		data, err := seek(rc, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = end // no data past pos
		} else if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			return all, nil
		} else if err != nil {
			return nil, fmt.Errorf("%s: SEEK_DATA at %d: %w", path, pos, err)
		}
		data = min(max(data, pos), end)
		out = disk.AppendExtent(out, disk.Extent{Offset: pos, Length: data - pos, Kind: disk.Unallocated})
		if data >= end {
			break
		}
		hole, err := seek(rc, data, unix.SEEK_HOLE)
		if errors.Is(err, unix.ENXIO) {
			hole = end
		} else if err != nil {
			return nil, fmt.Errorf("%s: SEEK_HOLE at %d: %w", path, data, err)
		}
		// A file that changed under us could answer at or before data;
		// step past it rather than loop.
		hole = min(max(hole, data+1), end)
		out = disk.AppendExtent(out, disk.Extent{Offset: data, Length: hole - data, Kind: disk.Data})
		pos = hole
	}
	return out, nil
}

func seek(rc interface{ Control(func(uintptr)) error }, off int64, whence int) (int64, error) {
	var ret int64
	var serr error
	if err := rc.Control(func(fd uintptr) { ret, serr = unix.Seek(int(fd), off, whence) }); err != nil {
		return 0, err
	}
	return ret, serr
}

// punchHole deallocates [off, off+n) so rewritten zeros become a hole again.
func punchHole(f *os.File, off, n int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		ferr = unix.Fallocate(int(fd), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	}); err != nil {
		return err
	}
	return ferr
}

// startWriteback asks the kernel to begin writing a range to disk now, so
// the fsync at Close finds little left and a restore's disk writes overlap
// its decompression instead of following it.
func startWriteback(f *os.File, off, n int64) {
	unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// directAlign is the alignment O_DIRECT asks of offsets, lengths and
// buffer addresses: the largest logical block size in common use.
const directAlign = 4096

// openDirect opens path for O_DIRECT writes, or returns nil where the file
// system refuses them.
func openDirect(path string) *os.File {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	return f
}

// directAligned says whether a write can go through O_DIRECT. Large Go
// allocations start on page boundaries, so restore's buffers qualify; a
// buffer that does not simply takes the page cache.
func directAligned(p []byte, off int64) bool {
	return off%directAlign == 0 && len(p)%directAlign == 0 && len(p) > 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(p)))%directAlign == 0
}

// directRefused tells a refused direct write (alignment the device wants
// larger, a file system that accepts O_DIRECT at open but not at write)
// from a real write error.
func directRefused(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)
}
