// Package vtl is a virtual tape library in a folder, for tests and small
// sites: slots holding cartridges, each cartridge a file named after its
// barcode, with a capacity and an early-warning point, loaded into drives
// that behave like tape drives (blocks, filemarks, end of data, early
// warning, end of media).
//
// Layout of the folder:
//
//	library.json      {"format": "lifeboat-vtl", "version": 1, "drives": 1,
//	                   "slots": [{"slot": 1, "barcode": "LB0001L8"}, …]}
//	<barcode>.tape    a cartridge
//
// A cartridge file starts with a 32-byte header: magic "LBVTAPE1", u64
// capacity, u64 early-warning position, u64 zero (little-endian); the tape
// follows as entries:
//
//	block      u32 n (1 ≤ n ≤ 8 MiB) | n bytes | u32 n
//	filemark   u32 0
//
// The end of the file is the end of recorded data. Positions count bytes
// after the header: a write that would end past the capacity fails with
// tape.ErrEndOfMedia and writes nothing; from the early-warning position
// on, EarlyWarning is set. Writing at a position discards everything after
// it, as on tape. The trailing length of a block lets a drive space
// backwards.
//
// Drives exist only in the process that opened the library: library.json
// records which cartridge is in which slot, and a cartridge is back in its
// slot when it is unloaded (or the process ends). One process at a time
// should use a library.
package vtl

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"lifeboat/tape"
)

const (
	configName   = "library.json"
	configFormat = "lifeboat-vtl"
	cartExt      = ".tape"
	cartMagic    = "LBVTAPE1"
	cartHeader   = 32
	maxBlock     = 8 << 20
)

// Options describe a new library.
type Options struct {
	// Slots is the number of slots; 8 when 0.
	Slots int
	// Drives is the number of drives; 1 when 0.
	Drives int
}

type config struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	Drives  int    `json:"drives"`
	Slots   []slot `json:"slots"`
}

type slot struct {
	Slot    int    `json:"slot"`
	Barcode string `json:"barcode,omitempty"`
}

// Library is an opened virtual tape library. It is safe for concurrent use.
type Library struct {
	dir string

	mu     sync.Mutex
	cfg    config
	drives []*Drive // loaded drives; nil entries are free
}

// Create makes a new, empty library in dir (created if needed).
func Create(dir string, opts Options) (*Library, error) {
	if opts.Slots == 0 {
		opts.Slots = 8
	}
	if opts.Drives == 0 {
		opts.Drives = 1
	}
	if opts.Slots < 1 || opts.Slots > 10000 || opts.Drives < 1 || opts.Drives > 64 {
		return nil, fmt.Errorf("vtl: %d slots and %d drives: want 1-10000 slots and 1-64 drives", opts.Slots, opts.Drives)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("vtl: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, configName)); err == nil {
		return nil, fmt.Errorf("vtl: %s already holds a library", dir)
	}
	l := &Library{dir: dir, cfg: config{Format: configFormat, Version: 1, Drives: opts.Drives}}
	for i := range opts.Slots {
		l.cfg.Slots = append(l.cfg.Slots, slot{Slot: i + 1})
	}
	l.drives = make([]*Drive, opts.Drives)
	if err := l.save(); err != nil {
		return nil, err
	}
	return l, nil
}

// Open opens the library in dir.
func Open(dir string) (*Library, error) {
	data, err := os.ReadFile(filepath.Join(dir, configName))
	if err != nil {
		return nil, fmt.Errorf("vtl: open library: %w", err)
	}
	var cfg config
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("vtl: %s: %w", filepath.Join(dir, configName), err)
	}
	if cfg.Format != configFormat || cfg.Version != 1 || cfg.Drives < 1 || cfg.Drives > 64 {
		return nil, fmt.Errorf("vtl: %s is not a version 1 library", filepath.Join(dir, configName))
	}
	seen := map[string]bool{}
	for _, s := range cfg.Slots {
		if s.Barcode == "" {
			continue
		}
		if !tape.ValidBarcode(s.Barcode) || seen[s.Barcode] {
			return nil, fmt.Errorf("vtl: %s: bad or repeated barcode %q", filepath.Join(dir, configName), s.Barcode)
		}
		seen[s.Barcode] = true
	}
	return &Library{dir: dir, cfg: cfg, drives: make([]*Drive, cfg.Drives)}, nil
}

func (l *Library) save() error {
	data, err := json.MarshalIndent(l.cfg, "", "  ")
	if err != nil {
		return err
	}
	p := filepath.Join(l.dir, configName)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("vtl: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("vtl: %w", err)
	}
	return nil
}

// Path is the file of the cartridge with barcode.
func (l *Library) Path(barcode string) string { return filepath.Join(l.dir, barcode+cartExt) }

// AddCartridge makes a blank cartridge of the given capacity in the first
// free slot. earlyWarning is how many bytes before the end early warning
// starts; capacity/10 when 0.
func (l *Library) AddCartridge(barcode string, capacity, earlyWarning int64) error {
	if !tape.ValidBarcode(barcode) {
		return fmt.Errorf("vtl: %q is not a barcode", barcode)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	free := -1
	for i, s := range l.cfg.Slots {
		if s.Barcode == barcode {
			return fmt.Errorf("vtl: cartridge %s is already in slot %d", barcode, s.Slot)
		}
		if s.Barcode == "" && free < 0 {
			free = i
		}
	}
	if free < 0 {
		return fmt.Errorf("vtl: no free slot for %s", barcode)
	}
	if err := CreateCartridge(l.Path(barcode), capacity, earlyWarning); err != nil {
		return err
	}
	l.cfg.Slots[free].Barcode = barcode
	return l.save()
}

// CreateCartridge writes a blank cartridge file.
func CreateCartridge(path string, capacity, earlyWarning int64) error {
	if earlyWarning == 0 {
		earlyWarning = capacity / 10
	}
	if capacity < 64<<10 || earlyWarning < 0 || earlyWarning >= capacity {
		return fmt.Errorf("vtl: capacity %d with early warning %d bytes before its end is not usable", capacity, earlyWarning)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("vtl: %w", err)
	}
	var h [cartHeader]byte
	copy(h[:], cartMagic)
	binary.LittleEndian.PutUint64(h[8:], uint64(capacity))
	binary.LittleEndian.PutUint64(h[16:], uint64(capacity-earlyWarning))
	if _, err := f.Write(h[:]); err != nil {
		f.Close()
		return fmt.Errorf("vtl: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("vtl: %w", err)
	}
	return f.Close()
}

// Inventory lists the cartridges by slot.
func (l *Library) Inventory(ctx context.Context) ([]tape.Cartridge, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []tape.Cartridge
	for _, s := range l.cfg.Slots {
		if s.Barcode == "" {
			continue
		}
		c := tape.Cartridge{Barcode: s.Barcode, Slot: s.Slot}
		for _, d := range l.drives {
			if d != nil && d.barcode == s.Barcode {
				c.Loaded = true
			}
		}
		capac, _, size, err := statCartridge(l.Path(s.Barcode))
		if err != nil {
			return nil, err
		}
		c.Capacity, c.Used, c.Blank = capac, size, size == 0
		out = append(out, c)
	}
	return out, nil
}

func statCartridge(path string) (capacity, ew, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("vtl: %w", err)
	}
	defer f.Close()
	capacity, ew, err = readHeader(f, path)
	if err != nil {
		return 0, 0, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("vtl: %w", err)
	}
	return capacity, ew, fi.Size() - cartHeader, nil
}

func readHeader(f *os.File, path string) (capacity, ew int64, err error) {
	var h [cartHeader]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return 0, 0, fmt.Errorf("vtl: %s: cartridge header: %w", path, err)
	}
	capacity = int64(binary.LittleEndian.Uint64(h[8:]))
	ew = int64(binary.LittleEndian.Uint64(h[16:]))
	if string(h[:8]) != cartMagic || capacity <= 0 || ew < 0 || ew > capacity || binary.LittleEndian.Uint64(h[24:]) != 0 {
		return 0, 0, fmt.Errorf("vtl: %s is not a virtual cartridge", path)
	}
	return capacity, ew, nil
}

// Load puts a cartridge into a free drive, rewound.
func (l *Library) Load(ctx context.Context, barcode string) (tape.Drive, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	found := false
	for _, s := range l.cfg.Slots {
		found = found || s.Barcode == barcode
	}
	if !found {
		return nil, fmt.Errorf("vtl: no cartridge %s in the library: %w", barcode, tape.ErrNoCartridge)
	}
	free := -1
	for i, d := range l.drives {
		if d != nil && d.barcode == barcode {
			return nil, fmt.Errorf("vtl: cartridge %s is already in drive %d", barcode, i)
		}
		if d == nil && free < 0 {
			free = i
		}
	}
	if free < 0 {
		return nil, fmt.Errorf("vtl: all %d drives are loaded", len(l.drives))
	}
	d, err := OpenCartridge(l.Path(barcode))
	if err != nil {
		return nil, err
	}
	d.barcode, d.lib, d.index = barcode, l, free
	l.drives[free] = d
	return d, nil
}

// Unload closes the drive and puts its cartridge back in its slot.
func (l *Library) Unload(ctx context.Context, td tape.Drive) error {
	d, ok := td.(*Drive)
	if !ok || d.lib != l {
		return errors.New("vtl: unload: not a drive of this library")
	}
	l.mu.Lock()
	if d.index >= 0 && d.index < len(l.drives) && l.drives[d.index] == d {
		l.drives[d.index] = nil
	}
	l.mu.Unlock()
	return d.Close()
}

// Drive is a virtual drive with a cartridge file loaded.
type Drive struct {
	f        *os.File
	path     string
	barcode  string
	capacity int64
	ew       int64
	pos      int64 // position, bytes after the header
	end      int64 // end of recorded data
	scratch  []byte

	lib   *Library
	index int
}

// OpenCartridge opens a cartridge file in a drive of its own, rewound.
func OpenCartridge(path string) (*Drive, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("vtl: %w", err)
	}
	capacity, ew, err := readHeader(f, path)
	if err != nil {
		f.Close()
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vtl: %w", err)
	}
	return &Drive{f: f, path: path, barcode: filepath.Base(path), capacity: capacity, ew: ew,
		end: fi.Size() - cartHeader, index: -1}, nil
}

func (d *Drive) errf(format string, args ...any) error {
	return fmt.Errorf("vtl: cartridge %s at byte %d: %s", d.barcode, d.pos, fmt.Sprintf(format, args...))
}

func (d *Drive) u32(at int64) (uint32, error) {
	var b [4]byte
	if _, err := d.f.ReadAt(b[:], cartHeader+at); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

// entry reads the entry at pos: 0 for a filemark, else a block's length.
// It reports a cartridge cut inside an entry as tape.ErrTruncated.
func (d *Drive) entry(at int64) (uint32, error) {
	if at+4 > d.end {
		return 0, fmt.Errorf("%w: %w", d.errf("the cartridge ends inside an entry header"), tape.ErrTruncated)
	}
	n, err := d.u32(at)
	if err != nil {
		return 0, d.errf("%v", err)
	}
	if n > maxBlock {
		return 0, fmt.Errorf("%w: %w", d.errf("entry length %d is not a block (damaged framing)", n), tape.ErrCorrupt)
	}
	if n > 0 && at+8+int64(n) > d.end {
		return 0, fmt.Errorf("%w: %w", d.errf("the cartridge ends inside a block of %d bytes", n), tape.ErrTruncated)
	}
	return n, nil
}

// ReadBlock reads the next block.
func (d *Drive) ReadBlock(p []byte) (int, error) {
	if d.pos >= d.end {
		return 0, tape.ErrEndOfData
	}
	n, err := d.entry(d.pos)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		d.pos += 4
		return 0, tape.ErrFilemark
	}
	if int(n) > len(p) {
		return 0, d.errf("block of %d bytes does not fit a %d-byte buffer", n, len(p))
	}
	if _, err := d.f.ReadAt(p[:n], cartHeader+d.pos+4); err != nil {
		return 0, d.errf("%v", err)
	}
	t, err := d.u32(d.pos + 4 + int64(n))
	if err != nil {
		return 0, d.errf("%v", err)
	}
	if t != n {
		return 0, fmt.Errorf("%w: %w", d.errf("block framing says %d bytes at its start and %d at its end", n, t), tape.ErrCorrupt)
	}
	d.pos += 8 + int64(n)
	return int(n), nil
}

// cut discards recorded data from the position on, as a tape write does.
func (d *Drive) cut() error {
	if d.end > d.pos {
		if err := d.f.Truncate(cartHeader + d.pos); err != nil {
			return d.errf("%v", err)
		}
		d.end = d.pos
	}
	return nil
}

// WriteBlock writes one block.
func (d *Drive) WriteBlock(p []byte) error {
	if len(p) == 0 || len(p) > maxBlock {
		return d.errf("cannot write a block of %d bytes", len(p))
	}
	need := 8 + int64(len(p))
	if d.pos+need > d.capacity {
		return tape.ErrEndOfMedia
	}
	if err := d.cut(); err != nil {
		return err
	}
	if cap(d.scratch) < int(need) {
		d.scratch = make([]byte, need)
	}
	b := d.scratch[:need]
	binary.LittleEndian.PutUint32(b, uint32(len(p)))
	copy(b[4:], p)
	binary.LittleEndian.PutUint32(b[4+len(p):], uint32(len(p)))
	if _, err := d.f.WriteAt(b, cartHeader+d.pos); err != nil {
		return d.errf("%v", err)
	}
	d.pos += need
	d.end = d.pos
	return nil
}

// WriteFilemarks writes n filemarks and syncs the cartridge file.
func (d *Drive) WriteFilemarks(n int) error {
	if n < 0 {
		return d.errf("cannot write %d filemarks", n)
	}
	need := 4 * int64(n)
	if d.pos+need > d.capacity {
		return tape.ErrEndOfMedia
	}
	if err := d.cut(); err != nil {
		return err
	}
	if _, err := d.f.WriteAt(make([]byte, need), cartHeader+d.pos); err != nil {
		return d.errf("%v", err)
	}
	d.pos += need
	d.end = d.pos
	if err := d.f.Sync(); err != nil {
		return d.errf("sync: %v", err)
	}
	return nil
}

// SpaceFilemarks moves over filemarks: forward ends after the n-th, backward
// before it.
func (d *Drive) SpaceFilemarks(n int) error {
	for ; n > 0; n-- {
		for {
			if d.pos >= d.end {
				return tape.ErrEndOfData
			}
			l, err := d.entry(d.pos)
			if err != nil {
				return err
			}
			if l == 0 {
				d.pos += 4
				break
			}
			d.pos += 8 + int64(l)
		}
	}
	for ; n < 0; n++ {
		for {
			if d.pos == 0 {
				return d.errf("beginning of tape reached spacing backwards")
			}
			if d.pos < 4 {
				return fmt.Errorf("%w: %w", d.errf("position inside an entry"), tape.ErrCorrupt)
			}
			l, err := d.u32(d.pos - 4)
			if err != nil {
				return d.errf("%v", err)
			}
			if l == 0 {
				d.pos -= 4
				break
			}
			if l > maxBlock || d.pos < 8+int64(l) {
				return fmt.Errorf("%w: %w", d.errf("damaged framing spacing backwards"), tape.ErrCorrupt)
			}
			d.pos -= 8 + int64(l)
		}
	}
	return nil
}

// Rewind goes to the beginning of the tape.
func (d *Drive) Rewind() error {
	d.pos = 0
	return nil
}

// EarlyWarning reports a position past the early-warning point.
func (d *Drive) EarlyWarning() bool { return d.pos >= d.ew }

// Remaining is the room left for entries.
func (d *Drive) Remaining() int64 { return d.capacity - d.pos }

// Status reports the position.
func (d *Drive) Status() (tape.Status, error) {
	return tape.Status{BOT: d.pos == 0, EOD: d.pos >= d.end, EarlyWarning: d.EarlyWarning(), File: -1, Block: -1}, nil
}

// Close closes the cartridge file. Drives from a library are closed by
// Unload.
func (d *Drive) Close() error {
	if d.f == nil {
		return nil
	}
	err := d.f.Close()
	d.f = nil
	if err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return nil
}

var _ tape.SpaceReporter = (*Drive)(nil)
var _ tape.Library = (*Library)(nil)
var _ io.Closer = (*Drive)(nil)
