package raw

import (
	"bytes"
	"context"
	"path/filepath"
	"runtime"
	"testing"

	"lifeboat/disk"
	"lifeboat/disk/disktest"
)

func format() disktest.Format {
	return disktest.Format{
		Name: disk.Raw,
		Ext:  ".img",
		Create: func(ctx context.Context, path string, opts disk.CreateOptions) (disk.Writer, error) {
			return Create(ctx, path, opts)
		},
		Open: func(ctx context.Context, path string, parents disk.ParentOpener) (disk.Image, error) {
			return Open(ctx, path, parents)
		},
	}
}

func TestConformance(t *testing.T) { disktest.Run(t, format()) }

func TestSparseWrites(t *testing.T) {
	const mib = 1 << 20
	type w struct {
		off, n int64
		b      byte
	}
	cases := []struct {
		name     string
		size     int64
		writes   []w
		maxAlloc int64 // upper bound of stored bytes
		// data lists the [off, end) ranges Extents must report as Data
		// (rounded to 4 KiB filesystem blocks).
		data [][2]int64
	}{
		{"empty", 16 * mib, nil, 0, nil},
		{"zeros-only", 16 * mib, []w{{0, 8 * mib, 0}, {9 * mib, 4096, 0}}, 0, nil},
		{"two-regions", 16 * mib, []w{{mib, mib, 1}, {5 * mib, 4096, 2}}, mib + 64*1024,
			[][2]int64{{mib, 2 * mib}, {5 * mib, 5*mib + 4096}}},
		{"zero-overwrite", 16 * mib, []w{{0, 2 * mib, 3}, {0, mib, 0}}, mib + 64*1024,
			[][2]int64{{mib, 2 * mib}}},
		{"odd-offsets", 3*mib + 7, []w{{3, 10, 4}, {3 * mib, 7, 5}}, 64 * 1024,
			[][2]int64{{0, 4096}, {3 * mib, 3*mib + 7}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "x.img")
			wr, err := Create(ctx, path, disk.CreateOptions{Size: c.size})
			if err != nil {
				t.Fatal(err)
			}
			ref := make([]byte, c.size)
			for _, x := range c.writes {
				p := bytes.Repeat([]byte{x.b}, int(x.n))
				if _, err := wr.WriteAt(p, x.off); err != nil {
					t.Fatal(err)
				}
				copy(ref[x.off:], p)
			}
			if _, err := wr.WriteAt(make([]byte, 512), c.size); err == nil {
				t.Errorf("write past the end succeeded")
			}
			if err := wr.Close(); err != nil {
				t.Fatal(err)
			}
			if a := allocated(t, path); a > c.maxAlloc {
				t.Errorf("file stores %d bytes, want <= %d", a, c.maxAlloc)
			}
			img, err := Open(ctx, path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if img.Size() != c.size {
				t.Fatalf("size %d, want %d", img.Size(), c.size)
			}
			got := make([]byte, c.size)
			if _, err := img.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, ref) {
				t.Fatal("content differs")
			}
			ext, err := img.Extents(ctx, 0, c.size)
			if err != nil {
				t.Fatal(err)
			}
			if err := disk.CheckExtents(ext, 0, c.size); err != nil {
				t.Fatal(err)
			}
			if runtime.GOOS != "linux" {
				return
			}
			var data [][2]int64
			for _, e := range ext {
				if e.Kind == disk.Data {
					data = append(data, [2]int64{e.Offset, e.End()})
				}
			}
			if len(data) != len(c.data) {
				t.Fatalf("data extents %v, want %v", data, c.data)
			}
			for i := range data {
				if data[i] != c.data[i] {
					t.Fatalf("data extents %v, want %v", data, c.data)
				}
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, path string
	}{
		{"missing", filepath.Join(dir, "nope.img")},
		{"directory", dir},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img, err := Open(context.Background(), c.path, nil)
			if err == nil {
				img.Close()
				t.Fatal("open succeeded")
			}
		})
	}
}

// A character device stands in for a block device: its size is what
// seeking to the end says, not what Stat says.
func TestDeviceSize(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("linux only")
	}
	img, err := Open(context.Background(), "/dev/null", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Size() != 0 || img.Info().Subformat != "device" {
		t.Fatalf("size %d subformat %q", img.Size(), img.Info().Subformat)
	}
}
