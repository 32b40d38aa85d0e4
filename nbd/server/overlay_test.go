package server

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"lifeboat/disk"
)

// memBase is 1 MiB + 100 bytes: data, a hole, and a short last block.
func memBase() *memImage {
	memBaseOnce.Do(func() {
		b := make([]byte, mib+100)
		copy(b, randomBytes(7, 300<<10))
		copy(b[700<<10:], randomBytes(8, len(b)-700<<10))
		memBaseBytes = b
	})
	return &memImage{bytes.Clone(memBaseBytes)}
}

var (
	memBaseOnce  sync.Once
	memBaseBytes []byte
)

// TestOverlayModel runs random writes, zeroes and trims against a model,
// checking reads and extents after each.
func TestOverlayModel(t *testing.T) {
	base := memBase()
	model := bytes.Clone(base.b)
	ov := openOverlay(t, base, filepath.Join(t.TempDir(), "ov"))
	size := int64(len(model))
	r := rand.New(rand.NewPCG(3, 4))
	ctx := context.Background()
	for i := range 400 {
		n := r.Int64N(20000) + 1
		if r.IntN(5) == 0 {
			n = r.Int64N(3*BlockSize) + 1
		}
		off := r.Int64N(size - n + 1)
		if r.IntN(4) == 0 { // reach the end
			off = size - n
		}
		switch r.IntN(4) {
		case 0:
			if err := ov.WriteZeroes(off, n); err != nil {
				t.Fatal(err)
			}
			clear(model[off : off+n])
		case 1:
			if err := ov.Trim(off, n); err != nil {
				t.Fatal(err)
			}
			// Whole blocks (the short last one counts) read as zeros.
			for b := off / BlockSize; b*BlockSize < off+n; b++ {
				bs, be := b*BlockSize, min((b+1)*BlockSize, size)
				if bs >= off && be <= off+n {
					clear(model[bs:be])
				}
			}
		default:
			p := randomBytes(uint64(i), int(n))
			if _, err := ov.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], p)
		}
		if i%20 == 0 || i == 399 {
			mustEqual(t, fmt.Sprintf("view after op %d", i), readAll(t, ov.Image(), size), model)
			ext, err := ov.Extents(ctx, 0, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := disk.CheckExtents(ext, 0, size); err != nil {
				t.Fatal(err)
			}
			for _, e := range ext {
				if e.Kind != disk.Data && !allZero(model[e.Offset:e.End()]) {
					t.Fatalf("op %d: extent %+v holds data", i, e)
				}
			}
		}
	}
	if st, _ := os.Stat(ov.Path()); st.Size() != size {
		t.Fatalf("overlay file is %d bytes, want %d", st.Size(), size)
	}
	if !bytes.Equal(base.b, memBase().b) {
		t.Fatal("base changed")
	}
	// Reopen after Close: everything is there.
	if err := ov.Close(); err != nil {
		t.Fatal(err)
	}
	ov2 := openOverlay(t, base, ov.Path())
	mustEqual(t, "view after reopen", readAll(t, ov2.Image(), size), model)
	// Out of range.
	if _, err := ov2.WriteAt([]byte{1}, size); err == nil {
		t.Fatal("write past the end succeeded")
	}
	if err := ov2.WriteZeroes(-1, 2); err == nil {
		t.Fatal("zeroes at -1 succeeded")
	}
}

// TestOverlaySameBlock: many goroutines write disjoint bytes of the same
// blocks at once, all of them copy-on-write from the base: none may be
// lost.
func TestOverlaySameBlock(t *testing.T) {
	base := memBase()
	ov := openOverlay(t, base, "")
	model := bytes.Clone(base.b)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for blk := int64(0); blk < 64; blk++ {
				off := blk*BlockSize + int64(g)*256 + 7
				n := int64(200)
				if g == 15 && blk%8 == 0 { // straddle into the next block
					n = 400
				}
				p := bytes.Repeat([]byte{byte(g + 1)}, int(n))
				if _, err := ov.WriteAt(p, off); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for g := range 16 {
		for blk := int64(0); blk < 64; blk++ {
			off := blk*BlockSize + int64(g)*256 + 7
			n := int64(200)
			if g == 15 && blk%8 == 0 {
				n = 400
			}
			copy(model[off:off+n], bytes.Repeat([]byte{byte(g + 1)}, int(n)))
		}
	}
	wg.Wait()
	// g 15's straddling writes overlap g 0's in the next block: order
	// between them is not defined, so compare only the rest.
	got := readAll(t, ov.Image(), ov.Size())
	for blk := int64(1); blk < 65; blk += 8 {
		lo, hi := blk*BlockSize, blk*BlockSize+7+200
		copy(got[lo:hi], model[lo:hi])
	}
	mustEqual(t, "view", got, model)
}

// TestBitmapFile: the bitmap round-trips, and damage is refused.
func TestBitmapFile(t *testing.T) {
	base := memBase()
	dir := t.TempDir()
	path := filepath.Join(dir, "ov")
	ov, err := OpenOverlay(base, OverlayOptions{Path: path, BaseID: "b"})
	if err != nil {
		t.Fatal(err)
	}
	ov.WriteZeroes(0, 3*BlockSize)
	ov.WriteAt([]byte("hello"), 5000)
	ov.WriteAt([]byte("world"), 3*BlockSize+10)
	ov.Trim(mib, 100)
	if err := ov.Close(); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(path + ".bitmap")
	if err != nil {
		t.Fatal(err)
	}
	alloc, zero, err := decodeBitmap(good, int64(len(base.b)), "b")
	if err != nil {
		t.Fatal(err)
	}
	if alloc[0] != 0b1111 || zero[0] != 0b0101 || alloc[len(alloc)-1] != 1<<(256%64) || zero[len(zero)-1] != alloc[len(alloc)-1] {
		t.Fatalf("alloc %b zero %b", alloc, zero)
	}
	for i := range good {
		bad := bytes.Clone(good)
		bad[i] ^= 0x40
		if _, _, err := decodeBitmap(bad, int64(len(base.b)), "b"); err == nil {
			t.Fatalf("flipped byte %d accepted", i)
		}
	}
	for n := range len(good) {
		if _, _, err := decodeBitmap(good[:n], int64(len(base.b)), "b"); err == nil {
			t.Fatalf("truncation to %d accepted", n)
		}
	}
	// A data file without its bitmap is refused.
	os.Remove(path + ".bitmap")
	if _, err := OpenOverlay(base, OverlayOptions{Path: path, BaseID: "b"}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("open without bitmap: %v", err)
	}
	// A bitmap without a data file (creation cut short) is fine when
	// empty.
	os.WriteFile(path+"2.bitmap", encodeBitmap(int64(len(base.b)), "b", make([]uint64, 5), make([]uint64, 5)), 0o600)
	ov2, err := OpenOverlay(base, OverlayOptions{Path: path + "2", BaseID: "b"})
	if err != nil {
		t.Fatal(err)
	}
	ov2.Close()
}
