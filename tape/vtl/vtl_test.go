package vtl

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"lifeboat/tape"
)

func block(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func readExpect(t *testing.T, d *Drive, want []byte, wantErr error) {
	t.Helper()
	buf := make([]byte, 1<<16)
	n, err := d.ReadBlock(buf)
	if wantErr != nil {
		if !errors.Is(err, wantErr) {
			t.Fatalf("read: %v, want %v", err, wantErr)
		}
		return
	}
	if err != nil || !bytes.Equal(buf[:n], want) {
		t.Fatalf("read %d bytes, %v; want %d bytes", n, err, len(want))
	}
}

// The drive behaves as a tape: blocks and filemarks in order, spacing both
// ways, end of data, writes that cut what follows, early warning, end of
// media.
func TestDriveSemantics(t *testing.T) {
	p := filepath.Join(t.TempDir(), "T1.tape")
	if err := CreateCartridge(p, 100_000, 30_000); err != nil {
		t.Fatal(err)
	}
	d, err := OpenCartridge(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if st, _ := d.Status(); !st.BOT || !st.EOD {
		t.Fatalf("new cartridge status %+v", st)
	}
	readExpect(t, d, nil, tape.ErrEndOfData)
	for _, step := range []func() error{
		func() error { return d.WriteBlock(block(1000, 1)) },
		func() error { return d.WriteFilemarks(1) },
		func() error { return d.WriteBlock(block(2000, 2)) },
		func() error { return d.WriteBlock(block(3000, 3)) },
		func() error { return d.WriteFilemarks(2) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	d.Rewind()
	readExpect(t, d, block(1000, 1), nil)
	readExpect(t, d, nil, tape.ErrFilemark)
	readExpect(t, d, block(2000, 2), nil)
	readExpect(t, d, block(3000, 3), nil)
	readExpect(t, d, nil, tape.ErrFilemark)
	readExpect(t, d, nil, tape.ErrFilemark)
	readExpect(t, d, nil, tape.ErrEndOfData)

	d.Rewind()
	if err := d.SpaceFilemarks(1); err != nil {
		t.Fatal(err)
	}
	readExpect(t, d, block(2000, 2), nil)
	if err := d.SpaceFilemarks(-1); err != nil { // back before the first filemark
		t.Fatal(err)
	}
	readExpect(t, d, nil, tape.ErrFilemark)
	if err := d.SpaceFilemarks(5); !errors.Is(err, tape.ErrEndOfData) {
		t.Fatalf("spacing past the end: %v", err)
	}
	if err := d.SpaceFilemarks(-4); err == nil {
		t.Fatal("spacing back past the beginning succeeded")
	}

	// A write in the middle discards what follows.
	d.Rewind()
	d.SpaceFilemarks(1)
	if err := d.WriteBlock(block(500, 9)); err != nil {
		t.Fatal(err)
	}
	readExpect(t, d, nil, tape.ErrEndOfData)
	d.Rewind()
	d.SpaceFilemarks(1)
	readExpect(t, d, block(500, 9), nil)
	readExpect(t, d, nil, tape.ErrEndOfData)

	// Early warning from 70 000 bytes, end of media at 100 000.
	if d.EarlyWarning() {
		t.Fatal("early warning at the start")
	}
	for !d.EarlyWarning() {
		if err := d.WriteBlock(block(10_000, 4)); err != nil {
			t.Fatal(err)
		}
	}
	if d.pos < 70_000 {
		t.Fatalf("early warning at %d", d.pos)
	}
	var err2 error
	for err2 == nil {
		err2 = d.WriteBlock(block(10_000, 5))
	}
	if !errors.Is(err2, tape.ErrEndOfMedia) || d.pos > 100_000 {
		t.Fatalf("past capacity: %v at %d", err2, d.pos)
	}
	if fi, _ := os.Stat(p); fi.Size() > 100_000+cartHeader {
		t.Fatalf("cartridge file grew to %d", fi.Size())
	}
}

// A cartridge cut inside an entry, or with damaged framing, reads as an
// error, not as the end of data.
func TestDriveDamage(t *testing.T) {
	p := filepath.Join(t.TempDir(), "T2.tape")
	CreateCartridge(p, 1<<20, 0)
	d, _ := OpenCartridge(p)
	d.WriteBlock(block(4096, 1))
	d.WriteBlock(block(4096, 2))
	d.WriteFilemarks(1)
	d.Close()

	os.Truncate(p, cartHeader+4+4096+4+100)
	d, _ = OpenCartridge(p)
	readExpect(t, d, block(4096, 1), nil)
	readExpect(t, d, nil, tape.ErrTruncated)
	d.Close()

	f, _ := os.OpenFile(p, os.O_RDWR, 0)
	f.WriteAt([]byte{0xff, 0xff, 0xff, 0x7f}, cartHeader) // length of the first block
	f.Close()
	d, _ = OpenCartridge(p)
	readExpect(t, d, nil, tape.ErrCorrupt)
	d.Close()
}

func TestLibrary(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	lib, err := Create(dir, Options{Slots: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Create(dir, Options{}); err == nil {
		t.Fatal("created a library over another")
	}
	for _, b := range []string{"A00001", "A00002", "A00003"} {
		if err := lib.AddCartridge(b, 1<<20, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := lib.AddCartridge("A00004", 1<<20, 0); err == nil {
		t.Fatal("a fourth cartridge went into three slots")
	}
	if err := lib.AddCartridge("../x", 1<<20, 0); err == nil {
		t.Fatal("a bad barcode was accepted")
	}
	d, err := lib.Load(ctx, "A00002")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lib.Load(ctx, "A00003"); err == nil {
		t.Fatal("loaded two cartridges into one drive")
	}
	d.WriteBlock(block(4096, 1))
	inv, _ := lib.Inventory(ctx)
	if len(inv) != 3 || !inv[1].Loaded || inv[1].Blank || !inv[0].Blank || inv[1].Slot != 2 {
		t.Fatalf("inventory %+v", inv)
	}
	if err := lib.Unload(ctx, d); err != nil {
		t.Fatal(err)
	}
	lib2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	inv, _ = lib2.Inventory(ctx)
	if len(inv) != 3 || inv[1].Loaded || inv[1].Used != 4096+8 {
		t.Fatalf("reopened inventory %+v", inv)
	}
	if _, err := lib2.Load(ctx, "NOPE"); !errors.Is(err, tape.ErrNoCartridge) {
		t.Fatalf("load of a missing cartridge: %v", err)
	}
}
