package vhdx

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"lifeboat/disk"
	"lifeboat/disk/disktest"
)

var suite = disktest.Format{
	Name:         disk.VHDX,
	Ext:          ".vhdx",
	Create:       Create,
	Open:         Open,
	Differencing: true,
	Fixed:        true,
	Granularity:  512,
}

func TestConformance(t *testing.T) { disktest.Run(t, suite) }

func TestGUIDText(t *testing.T) {
	cases := []struct {
		text string
		raw  string // as stored in the file
	}{
		// The BAT region GUID as MS-VHDX prints it and as files store it.
		{"2dc27766-f623-4200-9d64-115e9bfd4a08", "6677c22d23f600429d64115e9bfd4a08"},
		{"b04aefb7-d19e-4a81-b789-25b8e9445913", "b7ef4ab09ed1814ab78925b8e9445913"},
	}
	for _, c := range cases {
		g, err := ParseGUID("{" + c.text + "}")
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(g[:]); got != c.raw {
			t.Errorf("ParseGUID(%s) bytes %s, want %s", c.text, got, c.raw)
		}
		if g.String() != c.text {
			t.Errorf("String() = %s, want %s", g, c.text)
		}
	}
	for _, bad := range []string{"", "{}", "2dc27766-f623-4200-9d64-115e9bfd4a0", "2dc27766xf623-4200-9d64-115e9bfd4a08", "zzc27766-f623-4200-9d64-115e9bfd4a08"} {
		if _, err := ParseGUID(bad); err == nil {
			t.Errorf("ParseGUID(%q) accepted", bad)
		}
	}
}

func TestProbe(t *testing.T) {
	for _, c := range []struct {
		b    []byte
		want bool
	}{
		{[]byte("vhdxfile\x00\x00"), true},
		{[]byte("vhdxfil"), false},
		{[]byte("conectix"), false},
		{nil, false},
	} {
		if got := Probe(c.b); got != c.want {
			t.Errorf("Probe(%q) = %v", c.b, got)
		}
	}
}

// writeImage makes an image with the writes given and returns the
// expected guest bytes (nil for images over 256 MiB).
func writeImage(t *testing.T, path string, opts disk.CreateOptions, writes map[int64][]byte) []byte {
	t.Helper()
	w, err := Create(context.Background(), path, opts)
	if err != nil {
		t.Fatal(err)
	}
	// Big stand-in parents need no reference copy.
	var ref []byte
	if opts.Size <= 256*mib {
		ref = make([]byte, opts.Size)
	}
	// In offset order, so that block placement is deterministic.
	for _, off := range slices.Sorted(maps.Keys(writes)) {
		b := writes[off]
		if _, err := w.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		if ref != nil {
			copy(ref[off:], b)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return ref
}

func fill(n int, v byte) []byte { return bytes.Repeat([]byte{v}, n) }

// hashImage streams the guest bytes through SHA-256 in 4 MiB pieces,
// hashing zeros without reading where this layer and its parents define
// no data.
func hashImage(t *testing.T, img disk.Image) string {
	t.Helper()
	ctx := context.Background()
	h := sha256.New()
	buf := make([]byte, 4<<20)
	zero := make([]byte, 4<<20)
	ext, err := disk.ResolvedExtents(ctx, img, 0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ext {
		for off := e.Offset; off < e.End(); {
			n := min(int64(len(buf)), e.End()-off)
			if e.Kind != disk.Data {
				h.Write(zero[:n])
			} else {
				if _, err := img.ReadAt(buf[:n], off); err != nil && err != io.EOF {
					t.Fatalf("read %d at %d: %v", n, off, err)
				}
				h.Write(buf[:n])
			}
			off += n
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// hashFile hashes a (sparse) file, hashing zeros for its holes instead of
// reading them: qemu's 10 GiB output is almost all hole.
func hashFile(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	const seekData, seekHole = 3, 4 // Linux lseek whence values
	size := st.Size()
	h := sha256.New()
	buf := make([]byte, 4<<20)
	zero := make([]byte, 4<<20)
	hashRange := func(off, end int64, read bool) {
		for off < end {
			n := min(int64(len(buf)), end-off)
			if !read {
				h.Write(zero[:n])
			} else {
				if _, err := f.ReadAt(buf[:n], off); err != nil && err != io.EOF {
					t.Fatal(err)
				}
				h.Write(buf[:n])
			}
			off += n
		}
	}
	for pos := int64(0); pos < size; {
		data, err := f.Seek(pos, seekData)
		if err != nil { // ENXIO: only a hole is left
			data = size
		}
		hashRange(pos, data, false)
		if data >= size {
			break
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil {
			hole = size
		}
		hashRange(data, hole, true)
		pos = hole
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestWriterStates(t *testing.T) {
	// Which BAT states the writer chooses decides how small images stay
	// and whether zeros hide a parent, so check them directly.
	dir := t.TempDir()
	const bs = 1 << 20
	base := filepath.Join(dir, "base.vhdx")
	writeImage(t, base, disk.CreateOptions{Size: 8 * bs, ClusterSize: bs}, map[int64][]byte{
		0:      fill(bs, 0),  // zero block: stays unallocated
		bs:     fill(512, 1), // allocated
		3 * bs: fill(bs, 7),  // whole block
	})
	child := filepath.Join(dir, "child.vhdx")
	writeImage(t, child, disk.CreateOptions{Size: 8 * bs, ClusterSize: bs, ParentPath: "base.vhdx", ParentID: "0f0e0d0c-0b0a-0908-0706-050403020100"}, map[int64][]byte{
		0:           fill(bs, 0),   // whole zero block: allocated, a hole
		bs:          fill(1024, 0), // partial zeros: recorded sectors
		2 * bs:      fill(bs, 3),   // whole block of data: FULLY_PRESENT
		4*bs + 4096: fill(512, 5),  // partial data: PARTIALLY_PRESENT
		5 * bs:      fill(bs/2, 6), // completed by the next write
		5*bs + bs/2: fill(bs/2, 0),
	})
	want := map[string][]uint64{
		base:  {payloadNotPresent, payloadFullyPresent, payloadNotPresent, payloadFullyPresent, 0, 0, 0, 0},
		child: {payloadFullyPresent, payloadPartiallyPresent, payloadFullyPresent, payloadNotPresent, payloadPartiallyPresent, payloadFullyPresent, 0, 0},
	}
	for path, states := range want {
		img, err := openFile(context.Background(), path, nil, options{noParent: true})
		if err != nil {
			t.Fatal(err)
		}
		for b, st := range states {
			if got := img.bat[payloadIndex(int64(b), img.chunkRatio)] & 7; got != st {
				t.Errorf("%s block %d state %d, want %d", filepath.Base(path), b, got, st)
			}
		}
		img.Close()
	}
	img, err := openFile(context.Background(), child, nil, options{noParent: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	ext, err := img.Extents(context.Background(), 0, 8*bs)
	if err != nil {
		t.Fatal(err)
	}
	wantExt := []disk.Extent{
		{Offset: 0, Length: bs + 1024, Kind: disk.Data},
		{Offset: bs + 1024, Length: bs - 1024, Kind: disk.Unallocated},
		{Offset: 2 * bs, Length: bs, Kind: disk.Data},
		{Offset: 3 * bs, Length: bs + 4096, Kind: disk.Unallocated},
		{Offset: 4*bs + 4096, Length: 512, Kind: disk.Data},
		{Offset: 4*bs + 4608, Length: bs - 4608, Kind: disk.Unallocated},
		{Offset: 5 * bs, Length: bs, Kind: disk.Data},
		{Offset: 6 * bs, Length: 2 * bs, Kind: disk.Unallocated},
	}
	if len(ext) != len(wantExt) {
		t.Fatalf("extents %v\nwant %v", ext, wantExt)
	}
	for i := range ext {
		if ext[i] != wantExt[i] {
			t.Fatalf("extent %d = %v, want %v (all %v)", i, ext[i], wantExt[i], ext)
		}
	}
	if st, _ := os.Stat(base); st.Size() != 3*mib+mib+2*bs {
		t.Errorf("base file is %d bytes, want %d (metadata + 2 blocks)", st.Size(), 3*mib+mib+2*bs)
	}
}

func TestCreateOptionsRejected(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		opts disk.CreateOptions
	}{
		{"zero size", disk.CreateOptions{Size: 0}},
		{"odd size", disk.CreateOptions{Size: 1000}},
		{"huge", disk.CreateOptions{Size: 65 << 40}},
		{"block 3 MiB", disk.CreateOptions{Size: mib, ClusterSize: 3 * mib}},
		{"block 512 KiB", disk.CreateOptions{Size: mib, ClusterSize: 512 * kib}},
		{"bad id", disk.CreateOptions{Size: mib, ID: "nope"}},
		{"no parent id", disk.CreateOptions{Size: mib, ParentPath: "p.vhdx"}},
		{"fixed child", disk.CreateOptions{Size: mib, ParentPath: "p.vhdx", ParentID: "0f0e0d0c-0b0a-0908-0706-050403020100", Fixed: true}},
	} {
		if _, err := Create(context.Background(), filepath.Join(dir, "x.vhdx"), c.opts); err == nil {
			t.Errorf("%s: Create accepted %+v", c.name, c.opts)
		}
	}
	w, err := Create(context.Background(), filepath.Join(dir, "y.vhdx"), disk.CreateOptions{Size: mib})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ off, n int64 }{{1, 512}, {0, 100}, {mib, 512}, {-512, 512}} {
		if _, err := w.WriteAt(make([]byte, c.n), c.off); err == nil {
			t.Errorf("WriteAt(%d bytes at %d) accepted", c.n, c.off)
		}
	}
	w.Close()
}

func TestIDRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id.vhdx")
	const id = "4a49d245-db0a-4634-9818-9f93db5ba6c1"
	writeImage(t, path, disk.CreateOptions{Size: 4 * mib, ID: "{4A49D245-DB0A-4634-9818-9F93DB5BA6C1}"}, nil)
	img, err := Open(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if got := img.Info().ID; got != id {
		t.Errorf("ID %q, want %q", got, id)
	}
	d := img.(*Image).Details()
	if d.VirtualDiskID == id || d.VirtualDiskID == "" {
		t.Errorf("Virtual Disk ID %q should be a fresh GUID", d.VirtualDiskID)
	}
	if d.Creator != creatorName || d.LogicalSectorSize != 512 || d.PhysicalSectorSize != 4096 || d.LogReplayed {
		t.Errorf("details %+v", d)
	}
}

// TestConcurrent writes and reads from many goroutines at once (run with
// -race): backups read an image in parallel, and restores write in
// parallel.
func TestConcurrent(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const size = 32 * mib
	for _, diff := range []bool{false, true} {
		path := filepath.Join(dir, fmt.Sprintf("c%v.vhdx", diff))
		opts := disk.CreateOptions{Size: size, ClusterSize: mib}
		if diff {
			opts.ParentPath, opts.ParentID = "p.vhdx", "0f0e0d0c-0b0a-0908-0706-050403020100"
		}
		w, err := Create(ctx, path, opts)
		if err != nil {
			t.Fatal(err)
		}
		ref := make([]byte, size)
		var wg sync.WaitGroup
		for g := range 8 {
			// Each goroutine owns every 8th 64 KiB piece, so pieces of
			// one block come from different goroutines.
			wg.Go(func() {
				for off := int64(g) * 64 * kib; off < size; off += 8 * 64 * kib {
					if (off/(64*kib))%3 == 0 {
						continue // leave holes
					}
					p := pattern(byte(off>>16), 64*kib)
					copy(ref[off:], p)
					if _, err := w.WriteAt(p, off); err != nil {
						t.Error(err)
					}
				}
			})
		}
		wg.Wait()
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		img, err := openFile(ctx, path, nil, options{noParent: true})
		if err != nil {
			t.Fatal(err)
		}
		for g := range 4 {
			wg.Go(func() {
				buf := make([]byte, 3*mib+512)
				for off := int64(g) * 512; off+int64(len(buf)) <= size; off += 5 * mib {
					if _, err := img.ReadAt(buf, off); err != nil {
						t.Error(err)
						return
					}
					if diff {
						continue // holes read from the (absent) parent
					}
					if !bytes.Equal(buf, ref[off:off+int64(len(buf))]) {
						t.Errorf("read at %d differs", off)
					}
				}
			})
		}
		wg.Wait()
		own, err := img.Extents(ctx, 0, size)
		if err != nil {
			t.Fatal(err)
		}
		var defined int64
		for _, e := range own {
			if e.Kind == disk.Data {
				defined += e.Length
			}
		}
		if want := int64(size / 3 * 2); diff && (defined < want-128*kib || defined > want+128*kib) {
			t.Errorf("differencing layer defines %d bytes, wrote about %d", defined, want)
		}
		img.Close()
	}
}
