package raw

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"lifeboat/disk"
)

// Aligned writes go through O_DIRECT, unaligned ones (a tail, an odd
// buffer) through the page cache, and both land: the file equals what was
// written, holes stay holes, and a zero rewrite of direct-written data
// punches it out again.
func TestDirectWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.raw")
	const size = 8<<20 + 1000
	w, err := Create(context.Background(), path, disk.CreateOptions{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	if w.direct == nil {
		t.Skip("this file system refuses O_DIRECT")
	}
	want := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	fill := func(off, n int64) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		copy(want[off:], b)
		return b
	}
	for _, c := range []struct {
		name   string
		off, n int64
		shift  int // misaligns the buffer
	}{
		{"aligned 1 MiB", 1 << 20, 1 << 20, 0},
		{"aligned 4 KiB", 4 << 20, 4096, 0},
		{"unaligned offset", 5<<20 + 100, 5000, 0},
		{"unaligned buffer", 6 << 20, 64 << 10, 1},
		{"tail", 8 << 20, 1000, 0},
	} {
		b := fill(c.off, c.n)
		if c.shift > 0 {
			nb := make([]byte, c.n+int64(c.shift))
			copy(nb[c.shift:], b)
			b = nb[c.shift:]
		}
		if n, err := w.WriteAt(b, c.off); err != nil || n != len(b) {
			t.Fatalf("%s: %d %v", c.name, n, err)
		}
	}
	// Zeros over the first direct write: a hole again.
	zero := make([]byte, 1<<20)
	copy(want[1<<20:], zero)
	if _, err := w.WriteAt(zero, 1<<20); err != nil {
		t.Fatal(err)
	}
	if w.noDirect {
		t.Error("a direct write was refused on a file system that took O_DIRECT")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("file differs from what was written")
	}
	if a := allocated(t, path); a > 512<<10 {
		t.Errorf("%d bytes allocated: holes were filled", a)
	}
}
