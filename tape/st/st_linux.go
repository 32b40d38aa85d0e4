//go:build linux

package st

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"lifeboat/tape"
)

// struct mtop and struct mtget of <linux/mtio.h>; C long is Go int on
// every Linux port.
type mtop struct {
	Op    int16
	Count int32
}

type mtget struct {
	Type   int
	Resid  int
	Dsreg  int
	Gstat  int
	Erreg  int
	Fileno int32
	Blkno  int32
}

// Operations of MTIOCTOP.
const (
	mtFSF    = 1
	mtBSF    = 2
	mtWEOF   = 5
	mtREW    = 6
	mtOFFL   = 7
	mtSETBLK = 20
)

// Bits of mt_gstat.
const (
	gmtEOF    = 0x80000000
	gmtBOT    = 0x40000000
	gmtEOT    = 0x20000000 // past early warning (or physical end)
	gmtEOD    = 0x08000000
	gmtWrProt = 0x04000000
	gmtOnline = 0x01000000
	gmtDrOpen = 0x00040000
)

// _IOW('m', 1, struct mtop) and _IOR('m', 2, struct mtget).
const (
	mtiocTop = uintptr(iocWrite)<<iocDirShift | unsafe.Sizeof(mtop{})<<iocSizeShift | uintptr('m')<<8 | 1
	mtiocGet = uintptr(iocRead)<<iocDirShift | unsafe.Sizeof(mtget{})<<iocSizeShift | uintptr('m')<<8 | 2
)

// Options steer Open.
type Options struct {
	// BlockSize > 0 puts the drive in fixed-block mode with that size
	// (each read and write moves whole blocks of it); 0 uses variable-block
	// mode, where each write is one block of its length and a read returns
	// one block. Lifeboat's format works in either; variable mode reads a
	// cartridge without knowing its block size first.
	BlockSize int
	// ReadOnly opens the device for reading (a write-protected cartridge).
	ReadOnly bool
}

// Drive is an opened /dev/nst* device with a cartridge loaded. It is not
// safe for concurrent use.
type Drive struct {
	fd    int
	path  string
	fixed int
	ew    bool
}

var _ tape.Drive = (*Drive)(nil)

// Open opens a no-rewind tape device, sets the block mode and checks that
// a cartridge is loaded.
func Open(path string, opts Options) (*Drive, error) {
	if base := filepath.Base(path); strings.HasPrefix(base, "st") {
		return nil, fmt.Errorf("st: %s rewinds on every close; use the no-rewind device %s", path, filepath.Join(filepath.Dir(path), "n"+base))
	}
	if opts.BlockSize < 0 || opts.BlockSize > 1<<24 {
		return nil, fmt.Errorf("st: block size %d out of range", opts.BlockSize)
	}
	flags := unix.O_RDWR | unix.O_CLOEXEC
	if opts.ReadOnly {
		flags = unix.O_RDONLY | unix.O_CLOEXEC
	}
	var fd int
	var err error
	for {
		fd, err = unix.Open(path, flags, 0)
		if err != unix.EINTR {
			break
		}
	}
	switch {
	case err == unix.ENOMEDIUM:
		return nil, fmt.Errorf("st: %s: no cartridge in the drive: %w", path, tape.ErrNoCartridge)
	case err == unix.EBUSY:
		return nil, fmt.Errorf("st: %s is in use by another process: %w", path, err)
	case (err == unix.EROFS || err == unix.EACCES) && !opts.ReadOnly:
		return nil, fmt.Errorf("st: %s: cannot open for writing (write-protected cartridge, or permissions): %w", path, err)
	case err != nil:
		return nil, fmt.Errorf("st: open %s: %w", path, err)
	}
	d := &Drive{fd: fd, path: path, fixed: opts.BlockSize}
	if err := d.op(mtSETBLK, opts.BlockSize); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("st: %s: set block size %d (is it a tape drive?): %w", path, opts.BlockSize, err)
	}
	g, err := d.get()
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("st: %s: status: %w", path, err)
	}
	if uint32(g.Gstat)&gmtOnline == 0 || uint32(g.Gstat)&gmtDrOpen != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("st: %s: drive is not ready (no cartridge?): %w", path, tape.ErrNoCartridge)
	}
	return d, nil
}

func (d *Drive) errf(what string, err error) error {
	return fmt.Errorf("st: %s: %s: %w", d.path, what, err)
}

// op runs one MTIOCTOP operation.
func (d *Drive) op(op int16, count int) error {
	if d.fd < 0 {
		return errors.New("st: drive is closed")
	}
	m := mtop{Op: op, Count: int32(count)}
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), mtiocTop, uintptr(unsafe.Pointer(&m)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}

// get runs MTIOCGET.
func (d *Drive) get() (mtget, error) {
	var g mtget
	if d.fd < 0 {
		return g, errors.New("st: drive is closed")
	}
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), mtiocGet, uintptr(unsafe.Pointer(&g)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return g, e
		}
		return g, nil
	}
}

// Status reports the drive's flags and position.
func (d *Drive) Status() (tape.Status, error) {
	g, err := d.get()
	if err != nil {
		return tape.Status{}, d.errf("status", err)
	}
	s := uint32(g.Gstat)
	return tape.Status{BOT: s&gmtBOT != 0, EOD: s&gmtEOD != 0, EarlyWarning: d.ew || s&gmtEOT != 0,
		WriteProtected: s&gmtWrProt != 0, File: int64(g.Fileno), Block: int64(g.Blkno)}, nil
}

// ReadBlock reads one block (in fixed mode, one block of the fixed size).
func (d *Drive) ReadBlock(p []byte) (int, error) {
	if d.fd < 0 {
		return 0, errors.New("st: drive is closed")
	}
	buf := p
	if d.fixed > 0 {
		if len(p) < d.fixed {
			return 0, fmt.Errorf("st: %s: buffer of %d bytes for %d-byte blocks", d.path, len(p), d.fixed)
		}
		buf = p[:d.fixed]
	}
	for {
		n, err := unix.Read(d.fd, buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == nil && n > 0:
			return n, nil
		case err == nil:
			// Zero bytes: a filemark, or the end of recorded data.
			if s, serr := d.Status(); serr == nil && s.EOD {
				return 0, tape.ErrEndOfData
			}
			return 0, tape.ErrFilemark
		case err == unix.ENOMEM:
			return 0, d.errf("read", fmt.Errorf("the block is larger than %d bytes: %w", len(buf), err))
		case err == unix.ENOSPC:
			return 0, d.errf("read", fmt.Errorf("physical end of the cartridge: %w", tape.ErrEndOfData))
		case err == unix.EIO:
			// A blank check (reading where nothing was written) is the end
			// of data; anything else is a medium or drive error.
			if s, serr := d.Status(); serr == nil && s.EOD {
				return 0, tape.ErrEndOfData
			}
			return 0, d.errf("read", err)
		default:
			return 0, d.errf("read", err)
		}
	}
}

// WriteBlock writes p as one block (in fixed mode, len(p) must be a
// multiple of the block size). The first ENOSPC marks early warning and the
// write is tried again, as st(4) allows; a second is the end of media.
func (d *Drive) WriteBlock(p []byte) error {
	if d.fd < 0 {
		return errors.New("st: drive is closed")
	}
	if len(p) == 0 || (d.fixed > 0 && len(p)%d.fixed != 0) {
		return fmt.Errorf("st: %s: cannot write %d bytes in %d-byte blocks", d.path, len(p), d.fixed)
	}
	retried := false
	for {
		n, err := unix.Write(d.fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.ENOSPC:
			d.ew = true
			if retried {
				return tape.ErrEndOfMedia
			}
			retried = true
			continue
		case err == unix.EROFS || err == unix.EACCES:
			return d.errf("write", fmt.Errorf("the cartridge is write-protected: %w", err))
		case err != nil:
			return d.errf("write", err)
		case n != len(p):
			return d.errf("write", fmt.Errorf("only %d of %d bytes written: the block on tape is incomplete", n, len(p)))
		}
		return nil
	}
}

// WriteFilemarks writes n filemarks, which also flushes the drive's buffer.
func (d *Drive) WriteFilemarks(n int) error {
	if n <= 0 {
		return nil
	}
	err := d.op(mtWEOF, n)
	if err == unix.ENOSPC {
		d.ew = true
		err = d.op(mtWEOF, n)
		if err == unix.ENOSPC {
			return tape.ErrEndOfMedia
		}
	}
	if err != nil {
		return d.errf(fmt.Sprintf("write %d filemarks", n), err)
	}
	return nil
}

// SpaceFilemarks moves over filemarks: forward after the n-th, backward
// before it.
func (d *Drive) SpaceFilemarks(n int) error {
	var err error
	switch {
	case n > 0:
		err = d.op(mtFSF, n)
	case n < 0:
		err = d.op(mtBSF, -n)
	default:
		return nil
	}
	if err == nil {
		return nil
	}
	if s, serr := d.Status(); serr == nil {
		switch {
		case s.EOD && n > 0:
			return d.errf(fmt.Sprintf("space %d filemarks", n), tape.ErrEndOfData)
		case s.BOT && n < 0:
			return d.errf(fmt.Sprintf("space %d filemarks", n), fmt.Errorf("beginning of tape reached: %w", err))
		}
	}
	return d.errf(fmt.Sprintf("space %d filemarks", n), err)
}

// Rewind goes to the beginning of the tape.
func (d *Drive) Rewind() error {
	if err := d.op(mtREW, 1); err != nil {
		return d.errf("rewind", err)
	}
	d.ew = false
	return nil
}

// EarlyWarning reports a position past the early-warning point, from a
// write's ENOSPC or the drive's status.
func (d *Drive) EarlyWarning() bool {
	if d.ew {
		return true
	}
	s, err := d.Status()
	return err == nil && s.EarlyWarning
}

// Eject rewinds and unloads the cartridge (MTOFFL).
func (d *Drive) Eject() error {
	if err := d.op(mtOFFL, 1); err != nil {
		return d.errf("unload", err)
	}
	d.ew = false
	return nil
}

// Close closes the device; the cartridge stays where it is.
func (d *Drive) Close() error {
	if d.fd < 0 {
		return nil
	}
	err := unix.Close(d.fd)
	d.fd = -1
	if err != nil {
		return d.errf("close", err)
	}
	return nil
}
