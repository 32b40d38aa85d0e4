package local

import (
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
