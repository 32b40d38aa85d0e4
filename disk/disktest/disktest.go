// Package disktest is the conformance suite every disk format runs: images a
// format writes must read back byte for byte, allocation maps must obey the
// Image.Extents contract and agree with the bytes, differencing layers must
// resolve through their parent, and truncated files must fail with an error,
// never a panic.
package disktest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"lifeboat/disk"
)

// Format is what a format package hands the suite.
type Format struct {
	Name disk.Format
	// Ext is the file name extension, with the dot.
	Ext string
	// Create starts a new image at path.
	Create func(ctx context.Context, path string, opts disk.CreateOptions) (disk.Writer, error)
	// Open opens an image; parents is used for differencing images.
	Open func(ctx context.Context, path string, parents disk.ParentOpener) (disk.Image, error)
	// Differencing is set when the format supports parent links.
	Differencing bool
	// Fixed is set when CreateOptions.Fixed is meaningful.
	Fixed bool
	// Granularity is the smallest unit the format tracks allocation in
	// when writing a differencing layer (512 for VHD/VHDX sector bitmaps,
	// the cluster size for qcow2). The suite aligns child writes to it.
	Granularity int64
}

const mib = 1 << 20

// write is one WriteAt the suite performs, with a fill pattern.
type write struct {
	off, n int64
	seed   uint64 // 0 means all zero bytes
}

func pattern(seed uint64, n int64) []byte {
	b := make([]byte, n)
	if seed == 0 {
		return b
	}
	r := rand.New(rand.NewPCG(seed, seed*7+1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// build writes ws into a new image and mirrors them into ref.
func build(t *testing.T, f Format, path string, opts disk.CreateOptions, ws []write, ref []byte) {
	t.Helper()
	w, err := f.Create(context.Background(), path, opts)
	if err != nil {
		t.Fatalf("create %s: %v", path, err)
	}
	for _, x := range ws {
		p := pattern(x.seed, x.n)
		if _, err := w.WriteAt(p, x.off); err != nil {
			t.Fatalf("write %d bytes at %d: %v", x.n, x.off, err)
		}
		copy(ref[x.off:], p)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("close %s: %v", path, err)
	}
}

// Opener returns a ParentOpener that opens candidates with f.Open,
// recursively.
func Opener(f Format) disk.ParentOpener {
	var op disk.ParentOpener
	op = func(ctx context.Context, cands []string) (disk.Image, error) {
		for _, c := range cands {
			if _, err := os.Stat(c); err == nil {
				return f.Open(ctx, c, op)
			}
		}
		return nil, disk.ErrParentNotFound
	}
	return op
}

// Run runs the whole suite.
func Run(t *testing.T, f Format) {
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, f) })
	t.Run("Truncated", func(t *testing.T) { testTruncated(t, f) })
	if f.Fixed {
		t.Run("Fixed", func(t *testing.T) { testFixed(t, f) })
	}
	if f.Differencing {
		t.Run("Differencing", func(t *testing.T) { testDifferencing(t, f) })
	}
}

func testRoundTrip(t *testing.T, f Format) {
	cases := []struct {
		name string
		size int64
		ws   []write
	}{
		{"empty", 8 * mib, nil},
		{"odd-size", 8*mib + 3*512, []write{{8 * mib, 3 * 512, 9}}},
		{"scattered", 48 * mib, []write{
			{0, 4096, 1},
			{512, 512, 2}, // overwrite inside an allocated block
			{3*mib + 512, 64 * 1024, 3},
			{10 * mib, 5 * mib, 4},   // spans blocks of any size up to 4 MiB
			{20 * mib, 2 * mib, 0},   // zeros: may stay unallocated
			{47*mib + 1024, 1024, 5}, // near the end
			{10*mib + 4096, 4096, 0}, // zero overwrite of data
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "img"+f.Ext)
			ref := make([]byte, c.size)
			build(t, f, path, disk.CreateOptions{Size: c.size}, c.ws, ref)
			img, err := f.Open(context.Background(), path, Opener(f))
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer img.Close()
			check(t, img, ref, f.Name)
		})
	}
}

func testFixed(t *testing.T, f Format) {
	size := int64(6 * mib)
	path := filepath.Join(t.TempDir(), "fixed"+f.Ext)
	ref := make([]byte, size)
	build(t, f, path, disk.CreateOptions{Size: size, Fixed: true}, []write{{mib, mib, 11}}, ref)
	img, err := f.Open(context.Background(), path, Opener(f))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer img.Close()
	check(t, img, ref, f.Name)
	if sub := img.Info().Subformat; sub != "fixed" {
		t.Errorf("subformat %q, want fixed", sub)
	}
}

// check compares every byte and the allocation map against ref.
func check(t *testing.T, img disk.Image, ref []byte, format disk.Format) {
	t.Helper()
	ctx := context.Background()
	size := int64(len(ref))
	if img.Size() != size {
		t.Fatalf("size %d, want %d", img.Size(), size)
	}
	if img.Format() != format {
		t.Errorf("format %q, want %q", img.Format(), format)
	}
	got := make([]byte, size)
	if n, err := img.ReadAt(got, 0); n != len(got) || (err != nil && err != io.EOF) {
		t.Fatalf("read all: n=%d err=%v", n, err)
	}
	if !bytes.Equal(got, ref) {
		t.Fatalf("content differs at byte %d", firstDiff(got, ref))
	}
	// Random unaligned reads, including ones that straddle the end.
	r := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		off := r.Int64N(size)
		n := r.Int64N(3*mib) + 1
		buf := make([]byte, n)
		m, err := img.ReadAt(buf, off)
		want := min(n, size-off)
		if int64(m) != want {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, want %d (err %v)", n, off, m, want, err)
		}
		if want < n && err != io.EOF {
			t.Fatalf("short ReadAt at end returned err %v, want io.EOF", err)
		}
		if want == n && err != nil && err != io.EOF {
			t.Fatalf("ReadAt(%d at %d): %v", n, off, err)
		}
		if !bytes.Equal(buf[:m], ref[off:off+int64(m)]) {
			t.Fatalf("ReadAt(%d at %d) differs", n, off)
		}
	}
	if _, err := img.ReadAt(make([]byte, 1), size); err != io.EOF {
		t.Fatalf("ReadAt at size: err %v, want io.EOF", err)
	}
	// Allocation map: whole range, and random sub-ranges.
	ext, err := img.Extents(ctx, 0, size)
	if err != nil {
		t.Fatalf("extents: %v", err)
	}
	if err := disk.CheckExtents(ext, 0, size); err != nil {
		t.Fatalf("extents contract: %v", err)
	}
	for _, e := range ext {
		if e.Kind == disk.Data {
			continue
		}
		// Zero and unallocated ranges of a base image read as zero.
		if img.Parent() == nil && !allZero(ref[e.Offset:e.End()]) {
			t.Fatalf("extent %+v is %v but holds data", e, e.Kind)
		}
	}
	for range 50 {
		off := r.Int64N(size)
		n := r.Int64N(size-off) + 1
		sub, err := img.Extents(ctx, off, n)
		if err != nil {
			t.Fatalf("extents(%d,%d): %v", off, n, err)
		}
		if err := disk.CheckExtents(sub, off, n); err != nil {
			t.Fatalf("extents(%d,%d) contract: %v", off, n, err)
		}
	}
}

func testDifferencing(t *testing.T, f Format) {
	ctx := context.Background()
	dir := t.TempDir()
	size := int64(16 * mib)
	g := max(f.Granularity, 512)
	ref := make([]byte, size)
	basePath := filepath.Join(dir, "base"+f.Ext)
	build(t, f, basePath, disk.CreateOptions{Size: size}, []write{{0, 12 * mib, 21}}, ref)
	base, err := f.Open(ctx, basePath, nil)
	if err != nil {
		t.Fatalf("open base: %v", err)
	}
	baseInfo := base.Info()
	childPath := filepath.Join(dir, "child"+f.Ext)
	cw := []write{
		{g, g, 22},
		{4 * mib, 2 * g, 0}, // zeros must hide the parent's data
		{13 * mib, g, 23},   // beyond the parent's data
	}
	build(t, f, childPath, disk.CreateOptions{
		Size: size, ParentPath: "base" + f.Ext, ParentID: baseInfo.ID,
		ParentFormat: f.Name, Parent: base,
	}, cw, ref)
	base.Close()
	// A grandchild on top, written and read through a 3-deep chain.
	gcPath := filepath.Join(dir, "grandchild"+f.Ext)
	child, err := f.Open(ctx, childPath, Opener(f))
	if err != nil {
		t.Fatalf("open child: %v", err)
	}
	build(t, f, gcPath, disk.CreateOptions{
		Size: size, ParentPath: "child" + f.Ext, ParentID: child.Info().ID,
		ParentFormat: f.Name, Parent: child,
	}, []write{{2 * g, g, 24}}, ref)
	child.Close()

	img, err := f.Open(ctx, gcPath, Opener(f))
	if err != nil {
		t.Fatalf("open grandchild: %v", err)
	}
	defer img.Close()
	if img.Parent() == nil || img.Parent().Parent() == nil {
		t.Fatalf("grandchild did not open a 3-deep chain")
	}
	if img.Info().ParentPath == "" {
		t.Errorf("grandchild Info has no ParentPath")
	}
	check(t, img, ref, f.Name)
	// The child's own layer holds only what was written to it.
	own, err := img.Parent().Extents(ctx, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	var defined int64
	for _, e := range own {
		if e.Kind != disk.Unallocated {
			defined += e.Length
		}
	}
	if defined < 4*g || defined > 4*max(g, 2*mib) {
		t.Errorf("child layer defines %d bytes; wrote %d", defined, 4*g)
	}
	res, err := disk.ResolvedExtents(ctx, img, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	if err := disk.CheckExtents(res, 0, size); err != nil {
		t.Fatalf("resolved extents: %v", err)
	}
	for _, e := range res {
		if e.Kind != disk.Data && !allZero(ref[e.Offset:e.End()]) {
			t.Fatalf("resolved extent %+v holds data", e)
		}
	}

	// Missing parent: a clear error wrapping ErrParentNotFound.
	os.Remove(basePath)
	_, err = f.Open(ctx, gcPath, Opener(f))
	if !errors.Is(err, disk.ErrParentNotFound) {
		t.Fatalf("open with missing base: err %v, want ErrParentNotFound", err)
	}
	// Wrong parent identity: a different image put in the parent's place.
	if baseInfo.ID != "" {
		build(t, f, basePath, disk.CreateOptions{Size: size}, nil, make([]byte, size))
		_, err = f.Open(ctx, gcPath, Opener(f))
		if !errors.Is(err, disk.ErrParentMismatch) {
			t.Fatalf("open with impostor base: err %v, want ErrParentMismatch", err)
		}
	}
}

// testTruncated cuts a valid image at many lengths: every open either fails
// with an error or yields an image whose reads fail or succeed, never a
// panic.
func testTruncated(t *testing.T, f Format) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "full"+f.Ext)
	size := int64(8 * mib)
	build(t, f, path, disk.CreateOptions{Size: size}, []write{{0, mib, 31}, {5 * mib, mib, 32}}, make([]byte, size))
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cuts := []int64{0, 1, 511, 512, 4096, 65536, 1 << 20, int64(len(data)) / 2, int64(len(data)) - 512, int64(len(data)) - 1}
	for _, cut := range cuts {
		if cut < 0 || cut >= int64(len(data)) {
			continue
		}
		p := filepath.Join(dir, "cut"+f.Ext)
		if err := os.WriteFile(p, data[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		img, err := f.Open(ctx, p, nil)
		if err != nil {
			if cut == 0 && err.Error() == "" {
				t.Errorf("cut %d: empty error", cut)
			}
			continue
		}
		buf := make([]byte, mib)
		for off := int64(0); off < img.Size(); off += mib {
			if _, err := img.ReadAt(buf, off); err != nil && err != io.EOF {
				break
			}
		}
		img.Extents(ctx, 0, img.Size())
		img.Close()
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return len(a)
}
