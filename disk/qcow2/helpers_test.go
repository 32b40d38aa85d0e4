package qcow2

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"lifeboat/disk"
	"lifeboat/disk/raw"
	"lifeboat/internal/testenv"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

// opener opens parents as qcow2 or raw by their first bytes, like the
// format detection the program uses.
func opener() disk.ParentOpener {
	var op disk.ParentOpener
	op = func(ctx context.Context, cands []string) (disk.Image, error) {
		for _, c := range cands {
			f, err := os.Open(c)
			if err != nil {
				continue
			}
			head := make([]byte, 512)
			n, _ := io.ReadFull(f, head)
			f.Close()
			if Probe(head[:n]) {
				return Open(ctx, c, op)
			}
			return raw.Open(ctx, c, op)
		}
		return nil, disk.ErrParentNotFound
	}
	return op
}

// source makes guest content that exercises every path: random bytes,
// repeated bytes, compressible text, zero runs, and 512-byte mixtures.
func source(size int64, seed uint64) []byte {
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, 99))
	for off := int64(0); off < size; off += 32 * kib {
		chunk := b[off:min(off+32*kib, size)]
		switch r.IntN(6) {
		case 0: // zeros
		case 1:
			for i := range chunk {
				chunk[i] = byte(r.Uint32())
			}
		case 2:
			fill := byte(r.Uint32() | 1)
			for i := range chunk {
				chunk[i] = fill
			}
		case 3:
			for i := range chunk {
				chunk[i] = "lifeboat qcow2 test text "[i%25]
			}
		case 4:
			for s := 0; s+512 <= len(chunk); s += 512 {
				if r.IntN(3) == 0 {
					for i := s; i < s+512; i++ {
						chunk[i] = byte(r.Uint32())
					}
				}
			}
		case 5:
			for i := len(chunk) / 2; i < len(chunk); i++ {
				chunk[i] = byte(i)
			}
		}
	}
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sum(b)
}

// readAll reads img in odd-sized pieces so reads straddle clusters.
func readAll(t *testing.T, img disk.Image) []byte {
	t.Helper()
	out := make([]byte, img.Size())
	step := int64(mib + 3*512 + 7)
	for off := int64(0); off < img.Size(); off += step {
		end := min(off+step, img.Size())
		n, err := img.ReadAt(out[off:end], off)
		if int64(n) != end-off || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", end-off, off, n, err)
		}
	}
	return out
}

// qemuRawSum converts path to raw with qemu-img and hashes the result.
func qemuRawSum(t *testing.T, path string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "qemu.raw")
	testenv.Run(t, "qemu-img", "convert", "-O", "raw", path, out)
	return fileSum(t, out)
}

// qemuOwnExtents is qemu-img map's view of path's own layer.
func qemuOwnExtents(t *testing.T, path string) []disk.Extent {
	t.Helper()
	var m []struct {
		Start, Length int64
		Depth         int
		Present       bool
		Zero, Data    bool
	}
	if err := json.Unmarshal([]byte(testenv.Run(t, "qemu-img", "map", "--output=json", path)), &m); err != nil {
		t.Fatal(err)
	}
	var out []disk.Extent
	for _, e := range m {
		k := disk.Unallocated
		if e.Depth == 0 && e.Present {
			k = disk.Zero
			if e.Data {
				k = disk.Data
			}
		}
		out = disk.AppendExtent(out, disk.Extent{Offset: e.Start, Length: e.Length, Kind: k})
	}
	return out
}

// compareWithQemu checks that our reader and qemu agree on path's bytes
// and on its own allocation map, and returns the bytes.
func compareWithQemu(t *testing.T, path string) []byte {
	t.Helper()
	img, err := Open(context.Background(), path, opener())
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer img.Close()
	got := readAll(t, img)
	if g, w := sum(got), qemuRawSum(t, path); g != w {
		t.Fatalf("%s: our read sha256 %s, qemu-img convert %s", filepath.Base(path), g, w)
	}
	ext, err := img.Extents(context.Background(), 0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	if err := disk.CheckExtents(ext, 0, img.Size()); err != nil {
		t.Fatal(err)
	}
	want := qemuOwnExtents(t, path)
	if !equalExtents(ext, want) {
		t.Fatalf("%s: extents\n got %v\nwant %v (qemu-img map)", filepath.Base(path), ext, want)
	}
	return got
}

func equalExtents(a, b []disk.Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
