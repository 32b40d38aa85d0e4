package vhd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"lifeboat/disk"
	"lifeboat/internal/testenv"
)

// FuzzOpen parses arbitrary bytes as a VHD and exercises Size, Info,
// Extents and ReadAt: no panic, no huge allocation, and a valid allocation
// map whenever the open succeeds. Differencing inputs get win8.vhd as their
// parent, so mutated children that keep its ID reach the read-through code.
func FuzzOpen(f *testing.F) {
	win8, err := os.ReadFile(testenv.HyperV(f, "win8.vhd"))
	if err != nil {
		f.Fatal(err)
	}
	child, err := os.ReadFile(testenv.HyperV(f, "win8-child.vhd"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(win8)
	f.Add(child)
	for _, s := range writerSeeds(f) {
		f.Add(s)
	}
	parents := func(ctx context.Context, cands []string) (disk.Image, error) {
		return openReader(ctx, bytes.NewReader(win8), int64(len(win8)), "win8.vhd", nil)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		img, err := openReader(ctx, bytes.NewReader(data), int64(len(data)), "fuzz.vhd", parents)
		if err != nil {
			var fe *disk.FormatError
			if !errors.As(err, &fe) && !errors.Is(err, disk.ErrParentNotFound) && !errors.Is(err, disk.ErrParentMismatch) {
				t.Fatalf("error of unexpected kind: %v", err)
			}
			return
		}
		defer img.Close()
		size := img.Size()
		if size < 0 {
			t.Fatalf("negative size %d", size)
		}
		_ = img.Info()
		ext, err := img.Extents(ctx, 0, size)
		if err != nil {
			return
		}
		if err := disk.CheckExtents(ext, 0, size); err != nil {
			t.Fatalf("extents contract: %v", err)
		}
		buf := make([]byte, 4096)
		read := func(off int64) {
			n, err := img.ReadAt(buf, off)
			if err == nil && n != len(buf) {
				t.Fatalf("ReadAt(%d) = %d bytes without error", off, n)
			}
			if err == io.EOF && int64(n) != min(int64(len(buf)), max(size-off, 0)) {
				t.Fatalf("ReadAt(%d) = %d bytes with EOF, size %d", off, n, size)
			}
		}
		read(0)
		read(max(size-1000, 0))
		for i, e := range ext {
			if i == 16 {
				break
			}
			read(e.Offset)
		}
	})
}

// writerSeeds makes small images with our writer: dynamic with 4 KiB
// blocks, fixed, and a differencing child of win8.vhd.
func writerSeeds(f *testing.F) [][]byte {
	ctx := context.Background()
	dir := f.TempDir()
	one := bytes.Repeat([]byte{0xA5}, 4096)
	cases := []struct {
		name string
		opts disk.CreateOptions
		ws   [][2]int64
	}{
		{"dyn.vhd", disk.CreateOptions{Size: 64 << 10, ClusterSize: 4096}, [][2]int64{{0, 512}, {8192, 4096}, {60 << 10, 1024}}},
		{"fixed.vhd", disk.CreateOptions{Size: 16 << 10, Fixed: true}, [][2]int64{{4096, 1024}}},
		{"diff.vhd", disk.CreateOptions{Size: 64 << 10, ClusterSize: 4096, ParentPath: "win8.vhd", ParentID: win8ID},
			[][2]int64{{512, 1024}, {12288, 4096}}},
	}
	var out [][]byte
	for _, c := range cases {
		p := filepath.Join(dir, c.name)
		w, err := Create(ctx, p, c.opts)
		if err != nil {
			f.Fatal(err)
		}
		for _, x := range c.ws {
			if _, err := w.WriteAt(one[:x[1]], x[0]); err != nil {
				f.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			f.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}
