package qcow2

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"lifeboat/disk"
)

// fuzzSeeds returns small images: qemu-made ones when qemu-img and qemu-io
// are installed, and always ones our writer makes.
func fuzzSeeds(f testing.TB) [][]byte {
	dir := f.TempDir()
	var seeds [][]byte
	add := func(path string) {
		b, err := os.ReadFile(path)
		if err == nil && len(b) < mib {
			seeds = append(seeds, b)
		}
	}
	for i, opts := range []disk.CreateOptions{
		{Size: 64 * kib, ClusterSize: 4 * kib},
		{Size: 64 * kib, ClusterSize: 4 * kib, ParentPath: "base.qcow2", ParentFormat: disk.QCOW2},
	} {
		path := filepath.Join(dir, "ours"+string(rune('a'+i))+".qcow2")
		w, err := Create(context.Background(), path, opts)
		if err != nil {
			f.Fatal(err)
		}
		w.WriteAt(bytes.Repeat([]byte{0x5a}, 8*kib), 4*kib)
		w.WriteAt(make([]byte, 4*kib), 32*kib)
		if err := w.Close(); err != nil {
			f.Fatal(err)
		}
		add(path)
	}
	seeds = append(seeds, extendedSeed())
	qimg, err1 := exec.LookPath("qemu-img")
	qio, err2 := exec.LookPath("qemu-io")
	if err1 != nil || err2 != nil {
		return seeds
	}
	os.WriteFile(filepath.Join(dir, "base.raw"), bytes.Repeat([]byte{0x77}, 512*kib), 0o644)
	for i, o := range []string{
		"compat=0.10,cluster_size=512",
		"cluster_size=512",
		"cluster_size=512,compression_type=zstd",
		"cluster_size=512,backing_file=base.raw,backing_fmt=raw",
	} {
		path := filepath.Join(dir, "q"+string(rune('a'+i))+".qcow2")
		if exec.Command(qimg, "create", "-q", "-f", "qcow2", "-o", o, path, "128k").Run() != nil {
			continue
		}
		exec.Command(qio, "-f", "qcow2", "-c", "write -P 0x11 0 6k", "-c", "write -z 8k 8k",
			"-c", "write -c -P 0x22 32k 16k", "-c", "write -P 0x33 66k 1k", path).Run()
		add(path)
	}
	return seeds
}

// FuzzOpen parses arbitrary bytes as an image: open, map and read a few
// clusters must fail cleanly or succeed, never panic or allocate wildly.
func FuzzOpen(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) { fuzzBody(t, data) })
}

// fuzzBody is one FuzzOpen run.
func fuzzBody(t testing.TB, data []byte) {
	ctx := context.Background()
	img, err := open(ctx, "fuzz.qcow2", bytes.NewReader(data), int64(len(data)), nil)
	if err != nil {
		return
	}
	defer img.Close()
	_ = img.Info()
	// A hostile L1 table can point every entry at one L2 table, so
	// mapping the whole size could take long; a few hundred clusters
	// cover every path.
	span := min(img.Size(), 256*img.cs)
	ext, err := img.Extents(ctx, 0, span)
	if err == nil {
		if err := disk.CheckExtents(ext, 0, span); err != nil {
			t.Fatalf("extents contract: %v", err)
		}
	}
	// Small reads that straddle cluster boundaries reach every path
	// without clearing megabytes per run.
	buf := make([]byte, 4*kib)
	for _, off := range []int64{0, img.cs - 512, 3*img.cs - 2*kib, img.Size() - 512} {
		if off < 0 || off >= img.Size() {
			continue
		}
		n, err := img.ReadAt(buf, off)
		if err == nil && int64(n) != min(int64(len(buf)), img.Size()-off) {
			t.Fatalf("ReadAt at %d returned %d bytes and no error", off, n)
		}
	}
}

// extendedSeed builds a minimal image with extended L2 entries by hand:
// qemu's smallest such image (16 KiB clusters) is too big for the fuzzer to
// minimise its offspring quickly. Layout: header, L1, L2, then a data
// cluster cut short by the end of the file.
func extendedSeed() []byte {
	const cs = 16 * kib
	b := make([]byte, 3*cs+2*kib)
	be := binary.BigEndian
	be.PutUint32(b[0:], magic)
	be.PutUint32(b[4:], 3)
	be.PutUint32(b[20:], 14)
	be.PutUint64(b[24:], 4*cs)
	be.PutUint32(b[36:], 1)
	be.PutUint64(b[40:], cs)
	be.PutUint64(b[72:], incExtendedL2)
	be.PutUint32(b[96:], refcountOrder)
	be.PutUint32(b[100:], writeHeaderLen)
	be.PutUint64(b[cs:], 2*cs|flagCopied)
	l2 := b[2*cs:]
	be.PutUint64(l2[0:], 3*cs|flagCopied)
	be.PutUint64(l2[8:], 1<<32|0b110)     // subclusters 1, 2 data; 0 zero
	be.PutUint64(l2[24:], 0xffffffff<<32) // cluster 1 all zero
	be.PutUint64(l2[32:], 3*cs|flagCopied)
	be.PutUint64(l2[40:], 1<<31) // last subcluster, past EOF
	for i := range 2 * kib {
		b[3*cs+i] = byte(i)
	}
	return b
}

// The hand-built extended L2 seed must mean what it says, or the fuzzer
// starts from an image that fails early.
func TestExtendedSeed(t *testing.T) {
	b := extendedSeed()
	img, err := open(context.Background(), "seed.qcow2", bytes.NewReader(b), int64(len(b)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	ext, err := img.Extents(context.Background(), 0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	const cs = 16 * kib
	want := []disk.Extent{
		{Offset: 0, Length: 512, Kind: disk.Zero},
		{Offset: 512, Length: 1024, Kind: disk.Data},
		{Offset: 1536, Length: cs - 1536, Kind: disk.Unallocated},
		{Offset: cs, Length: cs, Kind: disk.Zero},
		{Offset: 2 * cs, Length: cs - 512, Kind: disk.Unallocated},
		{Offset: 3*cs - 512, Length: 512, Kind: disk.Data},
		{Offset: 3 * cs, Length: cs, Kind: disk.Unallocated},
	}
	if !equalExtents(ext, want) {
		t.Fatalf("extents %v, want %v", ext, want)
	}
	got := make([]byte, img.Size())
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	ref := make([]byte, img.Size())
	copy(ref[512:1536], b[3*cs+512:])
	if !bytes.Equal(got, ref) {
		t.Fatalf("content differs at %d", firstDiff(got, ref))
	}
}
