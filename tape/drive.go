package tape

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Drive is a tape drive with a cartridge loaded. Positions are as on any
// tape: reads and writes move forward, a write discards everything after
// it, filemarks separate tape files.
type Drive interface {
	// ReadBlock reads the next block into p and returns its length. At a
	// filemark it returns ErrFilemark and is positioned after the mark;
	// past the last recorded block, ErrEndOfData. A block longer than p
	// is an error.
	ReadBlock(p []byte) (int, error)
	// WriteBlock writes p as one block. It returns ErrEndOfMedia when the
	// block did not fit: the cartridge is physically full.
	WriteBlock(p []byte) error
	// WriteFilemarks writes n filemarks (and flushes the drive's buffer).
	WriteFilemarks(n int) error
	// SpaceFilemarks moves over |n| filemarks: forward for n > 0, ending
	// after the last one; backward for n < 0, ending before the last one
	// (on its beginning-of-tape side). Reaching the end of data first is
	// ErrEndOfData.
	SpaceFilemarks(n int) error
	// Rewind goes back to the beginning of the tape.
	Rewind() error
	// EarlyWarning reports that the position is past the early-warning
	// point near the end of the cartridge: a writer should finish what it
	// must (a catalog) and go on with the next cartridge.
	EarlyWarning() bool
	// Status reports the drive's flags and position.
	Status() (Status, error)
	// Close releases the drive. It does not unload the cartridge.
	Close() error
}

// Status is what a drive reports about its position.
type Status struct {
	BOT            bool `json:"bot"`             // at the beginning of the tape
	EOD            bool `json:"eod"`             // at the end of recorded data
	EarlyWarning   bool `json:"early_warning"`   // past the early-warning point
	WriteProtected bool `json:"write_protected"` // the cartridge cannot be written
	// File and Block are the tape file number and the block within it,
	// -1 when the drive does not know.
	File  int64 `json:"file"`
	Block int64 `json:"block"`
}

// SpaceReporter is implemented by drives that know how much room is left
// (the virtual library). The writer then also ends a cartridge when the
// next record and the catalog would not fit, not only at early warning.
type SpaceReporter interface {
	// Remaining is the number of bytes of blocks and filemarks that can
	// still be written, counting the drive's own framing.
	Remaining() int64
}

// Library holds cartridges and moves them into a drive.
type Library interface {
	// Inventory lists the library's cartridges in slot order.
	Inventory(ctx context.Context) ([]Cartridge, error)
	// Load puts the cartridge with barcode into a drive and returns the
	// drive, rewound.
	Load(ctx context.Context, barcode string) (Drive, error)
	// Unload returns the drive's cartridge to its slot and releases the
	// drive.
	Unload(ctx context.Context, d Drive) error
}

// Cartridge is one cartridge of a library's inventory.
type Cartridge struct {
	Barcode string `json:"barcode"`
	// Slot is the home slot, -1 when the library has none.
	Slot int `json:"slot"`
	// Blank is set when the cartridge is known to hold nothing.
	Blank bool `json:"blank"`
	// Loaded is set while the cartridge is in a drive.
	Loaded bool `json:"loaded"`
	// Used and Capacity are in bytes, 0 when unknown.
	Used     int64 `json:"used"`
	Capacity int64 `json:"capacity"`
}

var (
	// ErrFilemark is returned by Drive.ReadBlock at a filemark.
	ErrFilemark = errors.New("filemark")
	// ErrEndOfData is returned when reading past the last recorded block.
	ErrEndOfData = errors.New("end of recorded data")
	// ErrEndOfMedia is returned when a write does not fit on the cartridge.
	ErrEndOfMedia = errors.New("end of media")
	// ErrCorrupt is wrapped by every failed check of tape content: a
	// damaged block, a bad record, a chunk that does not match its hash.
	ErrCorrupt = errors.New("tape content is damaged")
	// ErrTruncated is wrapped when a cartridge ends where more was due.
	ErrTruncated = errors.New("cartridge is truncated")
	// ErrNoCartridge is wrapped when a needed cartridge is not available.
	ErrNoCartridge = errors.New("no cartridge")
	// ErrPointExists is wrapped by RestoreToRepository when the
	// repository already lists the point.
	ErrPointExists = errors.New("point already in the repository")
)

// BlockError reports a problem at a place on a cartridge.
type BlockError struct {
	Barcode string
	// Block is the block number on the cartridge, -1 when unknown.
	Block int64
	// File is the tape file, -1 when unknown.
	File int
	Err  error
}

func (e *BlockError) Error() string {
	s := "cartridge " + e.Barcode
	if e.Block >= 0 {
		s += fmt.Sprintf(": block %d", e.Block)
	}
	if e.File >= 0 {
		s += fmt.Sprintf(" (tape file %d)", e.File)
	}
	return s + ": " + e.Err.Error()
}

func (e *BlockError) Unwrap() error { return e.Err }

// Manual is a Library of one drive whose cartridges an operator changes:
// for a single drive without a changer, such as a /dev/nst* device. It
// never knows a cartridge to be blank, so WritePoints needs
// WriteOptions.Cartridges with it (and still refuses cartridges that hold
// data unless Overwrite is set).
type Manual struct {
	// Drive is the drive; Manual never closes it.
	Drive Drive
	// Barcodes are the cartridges the operator has, in order of use.
	Barcodes []string
	// Change asks the operator to put the cartridge with barcode into the
	// drive and returns when it is there.
	Change func(ctx context.Context, barcode string) error

	mu     sync.Mutex
	loaded string
}

// Inventory lists Barcodes; nothing is known about their content.
func (m *Manual) Inventory(ctx context.Context) ([]Cartridge, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Cartridge, len(m.Barcodes))
	for i, b := range m.Barcodes {
		out[i] = Cartridge{Barcode: b, Slot: -1, Loaded: b == m.loaded}
	}
	return out, nil
}

// Load asks for the cartridge (unless it is in the drive) and rewinds.
func (m *Manual) Load(ctx context.Context, barcode string) (Drive, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.loaded != barcode {
		if m.Change == nil {
			return nil, fmt.Errorf("load %s: %w: the drive holds %q and nobody can change it", barcode, ErrNoCartridge, m.loaded)
		}
		if err := m.Change(ctx, barcode); err != nil {
			return nil, fmt.Errorf("load %s: %w", barcode, err)
		}
		m.loaded = barcode
	}
	if err := m.Drive.Rewind(); err != nil {
		return nil, fmt.Errorf("load %s: rewind: %w", barcode, err)
	}
	return manualDrive{m.Drive}, nil
}

// Unload rewinds; the operator takes the cartridge out when asked for the
// next one.
func (m *Manual) Unload(ctx context.Context, d Drive) error { return m.Drive.Rewind() }

// manualDrive keeps callers from closing the shared drive.
type manualDrive struct{ Drive }

func (manualDrive) Close() error { return nil }
