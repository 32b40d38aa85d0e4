package local

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"lifeboat/repo/storage"
	"lifeboat/repo/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		b, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

// A crashed Put leaves only a temp file, which List must not show.
func TestTempFilesInvisible(t *testing.T) {
	dir := t.TempDir()
	b, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tmp", "half"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := 0
	b.List(t.Context(), "", func(storage.ObjectInfo) error { n++; return nil })
	if n != 0 {
		t.Fatalf("listed %d objects, want 0", n)
	}
	if err := b.Put(t.Context(), "tmp/x", nil); err == nil {
		t.Fatal("put into tmp/ accepted")
	}
}

// Staged objects of every size class come back byte for byte: small ones
// through the page cache, large ones through O_DIRECT with an aligned
// prefix and an unaligned tail, from buffers at any address.
func TestStageSizes(t *testing.T) {
	b, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(3, 4))
	want := map[string][]byte{}
	for i, n := range []int{0, 1, 4095, 64 << 10, 64<<10 + 1, 1 << 20, 1<<20 + 4097, 3<<20 + 17} {
		raw := make([]byte, n+1)
		for j := range raw {
			raw[j] = byte(rng.Uint32())
		}
		data := raw[i%2:][:n] // odd addresses too
		key := fmt.Sprintf("chunks/%02x/%064x", i, i)
		if err := b.Stage(ctx, key, data); err != nil {
			t.Fatalf("stage %d bytes: %v", n, err)
		}
		want[key] = append([]byte(nil), data...)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for key, data := range want {
		got, err := b.Get(ctx, key)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: %d bytes back (%v), want %d", key, len(got), err, len(data))
		}
	}
}
