package local

import (
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// directMin is the smallest object written with O_DIRECT: below it the
// page cache is cheaper than the extra system calls.
const directMin = 64 << 10

const directAlign = 4096

// alignedBufs hold block-aligned copies of objects for O_DIRECT writes
// (the envelope's bytes start wherever the allocator put them).
var alignedBufs = sync.Pool{New: func() any { return new([]byte) }}

// writeDirect writes data to a new file through O_DIRECT: the aligned
// prefix goes straight to the device, the tail through the page cache.
// Chunk objects are staged this way so that a backup neither copies them
// into the page cache nor is throttled behind other dirty data (a VM's own
// writes, an earlier backup's), and the batch's sync finds them written.
// It reports false when the file system refuses O_DIRECT; the caller then
// writes normally.
func writeDirect(path string, data []byte) (bool, error) {
	if len(data) < directMin {
		return false, nil
	}
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_DIRECT|unix.O_CLOEXEC, 0o600)
	if err == unix.EINVAL {
		return false, nil
	}
	if err != nil {
		return true, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	n := len(data) &^ (directAlign - 1)
	bp := alignedBufs.Get().(*[]byte)
	defer alignedBufs.Put(bp)
	if cap(*bp) < n+directAlign {
		*bp = make([]byte, n+directAlign)
	}
	buf := *bp
	if off := int(uintptr(unsafe.Pointer(unsafe.SliceData(buf))) % directAlign); off != 0 {
		buf = buf[directAlign-off:]
	}
	buf = buf[:n]
	copy(buf, data[:n])
	if _, err := f.Write(buf); err != nil {
		f.Close()
		if err == unix.EINVAL || isEINVAL(err) {
			os.Remove(path)
			return false, nil
		}
		return true, err
	}
	if n < len(data) {
		// O_DIRECT refuses the unaligned tail: clear it for this write.
		fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
		if err == nil {
			_, err = unix.FcntlInt(f.Fd(), unix.F_SETFL, fl&^unix.O_DIRECT)
		}
		if err == nil {
			_, err = f.Write(data[n:])
		}
		if err != nil {
			f.Close()
			return true, err
		}
	}
	return true, f.Close()
}

func isEINVAL(err error) bool {
	pe, ok := err.(*os.PathError)
	return ok && pe.Err == unix.EINVAL
}
