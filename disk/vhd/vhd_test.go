package vhd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/disk"
	"lifeboat/disk/disktest"
	"lifeboat/internal/testenv"
)

const mib = 1 << 20

var format = disktest.Format{
	Name:         disk.VHD,
	Ext:          ".vhd",
	Create:       Create,
	Open:         Open,
	Differencing: true,
	Fixed:        true,
	Granularity:  512,
}

func TestConformance(t *testing.T) { disktest.Run(t, format) }

// win8ID is the unique ID of win8.vhd, which win8-child.vhd records.
const win8ID = "adb71975-4b5b-0b40-b025-d06dab31b26f"

func TestFixtures(t *testing.T) {
	cases := []struct {
		name    string
		size    int64
		sub     string
		cluster int64
		id      string
	}{
		{"fixed.vhd", 10485760, "fixed", 0, "b895e418-3894-e744-9a88-9a420be4e5ca"},
		{"dynamic.vhd", 10485760, "dynamic", 2 * mib, ""},
		// Hyper-V sizes by current_size, Virtual PC by CHS geometry.
		{"hyperv2012r2-dynamic.vhd", 136365211648, "dynamic", 2 * mib, ""},
		{"virtualpc-dynamic.vhd", 136363130880, "dynamic", 2 * mib, ""},
		// Disk2vhd ("d2v\0") at maximum geometry: current_size.
		{"d2v-zerofilled.vhd", 263454720, "dynamic", 2 * mib, ""},
		{"win8.vhd", 41943040, "dynamic", 2 * mib, win8ID},
		{"win8.1-1GB.vhd", 1073741824, "dynamic", 2 * mib, ""},
	}
	ctx := context.Background()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := testenv.HyperV(t, c.name)
			img, err := Open(ctx, path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			in := img.Info()
			if img.Size() != c.size || in.Size != c.size {
				t.Errorf("size %d (info %d), want %d", img.Size(), in.Size, c.size)
			}
			if in.Subformat != c.sub || in.ClusterSize != c.cluster || in.Format != disk.VHD {
				t.Errorf("info %+v, want subformat %s cluster %d", in, c.sub, c.cluster)
			}
			if c.id != "" && in.ID != c.id {
				t.Errorf("ID %s, want %s", in.ID, c.id)
			}
			if w := img.(*Image).Warnings(); len(w) > 0 {
				t.Errorf("warnings on a good file: %q", w)
			}
			if got := qemuSize(t, path); got != c.size {
				t.Errorf("qemu-img says %d bytes, want %d", got, c.size)
			}
			ext, err := img.Extents(ctx, 0, img.Size())
			if err != nil {
				t.Fatal(err)
			}
			if err := disk.CheckExtents(ext, 0, img.Size()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestFixtureContent compares every byte we read with qemu's conversion.
func TestFixtureContent(t *testing.T) {
	testenv.Tool(t, "qemu-img")
	for _, name := range []string{"fixed.vhd", "dynamic.vhd"} {
		t.Run(name, func(t *testing.T) {
			path := testenv.HyperV(t, name)
			img, err := Open(context.Background(), path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			raw := filepath.Join(t.TempDir(), "out.raw")
			testenv.Run(t, "qemu-img", "convert", "-f", "vpc", "-O", "raw", path, raw)
			got, want := imageSHA(t, img), fileSHA(t, raw)
			if got != want {
				t.Fatalf("content sha256 %s, qemu-img convert gives %s", got, want)
			}
			if got == fileSHA(t, "/dev/null") {
				t.Fatal("test is vacuous: fixture reads empty")
			}
			checkExtentsMatchData(t, img)
		})
	}
	t.Run("d2v-zerofilled", func(t *testing.T) {
		img, err := Open(context.Background(), testenv.HyperV(t, "d2v-zerofilled.vhd"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		buf := make([]byte, 4*mib)
		for off := int64(0); off < img.Size(); off += int64(len(buf)) {
			n, err := img.ReadAt(buf, off)
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if !allZero(buf[:n]) {
				t.Fatalf("non-zero byte near %d", off)
			}
		}
	})
}

// checkExtentsMatchData checks that no byte outside Data extents is set.
func checkExtentsMatchData(t *testing.T, img disk.Image) {
	t.Helper()
	ext, err := img.Extents(context.Background(), 0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	if err := disk.CheckExtents(ext, 0, img.Size()); err != nil {
		t.Fatal(err)
	}
	var data int64
	for _, e := range ext {
		if e.Kind == disk.Data {
			data += e.Length
			continue
		}
		buf := make([]byte, e.Length)
		if _, err := img.ReadAt(buf, e.Offset); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !allZero(buf) {
			t.Fatalf("extent %+v holds data", e)
		}
	}
	if data == 0 {
		t.Errorf("no data extents")
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestWin8Child opens a Windows-made differencing disk through its locators.
func TestWin8Child(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	child := filepath.Join(dir, "win8-child.vhd")
	parent := filepath.Join(dir, "win8.vhd")
	copyFile(t, testenv.HyperV(t, "win8-child.vhd"), child)
	copyFile(t, testenv.HyperV(t, "win8.vhd"), parent)

	var tried []string
	opener := func(ctx context.Context, cands []string) (disk.Image, error) {
		tried = cands
		return disktest.Opener(format)(ctx, cands)
	}
	img, err := Open(ctx, child, opener)
	if err != nil {
		t.Fatal(err)
	}
	in := img.Info()
	want := disk.Info{Format: disk.VHD, Size: 41943040, ID: "41306552-577d-8f47-9771-6af2bac3499b",
		ParentPath: `.\win8.vhd`, ParentID: win8ID, ClusterSize: 2 * mib, Subformat: "differencing"}
	if in != want {
		t.Errorf("info\n %+v, want\n %+v", in, want)
	}
	if len(tried) == 0 || tried[0] != parent {
		t.Errorf("candidates %q: want the W2ru locator %s first", tried, parent)
	}
	p, ok := img.Parent().(*Image)
	if !ok || p.Path() != parent || p.Info().ID != win8ID {
		t.Fatalf("parent %v, want %s", img.Parent(), parent)
	}
	// The child holds no blocks: everything is the parent's.
	ext, err := img.Extents(ctx, 0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) != 1 || ext[0].Kind != disk.Unallocated {
		t.Errorf("child extents %+v, want one unallocated", ext)
	}
	got := imageSHA(t, img)
	img.Close()
	if lib := libvhdiSHA(t, child, parent); lib != got {
		t.Errorf("sha256 %s, libvhdi reads %s", got, lib)
	}

	// A missing parent.
	os.Remove(parent)
	_, err = Open(ctx, child, disktest.Opener(format))
	if !errors.Is(err, disk.ErrParentNotFound) || !strings.Contains(err.Error(), child) || !strings.Contains(err.Error(), `.\win8.vhd`) {
		t.Errorf("missing parent: %v", err)
	}
	_, err = Open(ctx, child, nil)
	if !errors.Is(err, disk.ErrParentNotFound) {
		t.Errorf("nil opener: %v", err)
	}
	// Another VHD under the parent's name.
	const impostor = "11111111-2222-3333-4444-555555555555"
	w, err := Create(ctx, parent, disk.CreateOptions{Size: 41943040, ID: impostor})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = Open(ctx, child, disktest.Opener(format))
	if !errors.Is(err, disk.ErrParentMismatch) {
		t.Fatalf("impostor parent: %v", err)
	}
	for _, s := range []string{win8ID, impostor, child, parent} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("mismatch error %q does not name %s", err, s)
		}
	}
}

// TestQemuReadsOurImages checks that qemu sees the exact size and bytes of
// images we write.
func TestQemuReadsOurImages(t *testing.T) {
	testenv.Tool(t, "qemu-img")
	cases := []struct {
		name  string
		opts  disk.CreateOptions
		write []int64 // offset, length pairs of random data
		// sizeOnly skips comparing content, for disks too big to convert.
		sizeOnly bool
	}{
		{"dynamic-odd", disk.CreateOptions{Size: 8*mib + 1536}, []int64{0, 4096, 8 * mib, 1536}, false},
		{"dynamic-512k", disk.CreateOptions{Size: 48 * mib, ClusterSize: 512 << 10}, []int64{512, 3 * mib, 20 * mib, 1024, 47*mib + 512, 512}, false},
		// Past 65535*16*63 sectors the geometry switches to 255 sectors per
		// track; the size must still be exact.
		{"dynamic-40G-odd", disk.CreateOptions{Size: 40<<30 + 7*512}, []int64{40 << 30, 2048}, true},
		{"fixed-odd", disk.CreateOptions{Size: 6*mib + 512, Fixed: true}, []int64{mib, mib, 6 * mib, 512}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "img.vhd")
			w, err := Create(context.Background(), path, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			r := rand.New(rand.NewPCG(7, 8))
			type piece struct{ off, n int64 }
			var ps []piece
			for i := 0; i < len(c.write); i += 2 {
				ps = append(ps, piece{c.write[i], c.write[i+1]})
			}
			ref := make(map[int64][]byte)
			for _, p := range ps {
				b := make([]byte, p.n)
				for i := range b {
					b[i] = byte(r.Uint32())
				}
				ref[p.off] = b
				if _, err := w.WriteAt(b, p.off); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}

			if got := qemuSize(t, path); got != c.opts.Size {
				t.Errorf("qemu-img virtual size %d, want %d", got, c.opts.Size)
			}
			if c.sizeOnly {
				img, err := Open(context.Background(), path, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer img.Close()
				for off, b := range ref {
					got := make([]byte, len(b))
					if _, err := img.ReadAt(got, off); err != nil && err != io.EOF || !bytes.Equal(got, b) || img.Size() != c.opts.Size {
						t.Errorf("read back at %d: %v (size %d)", off, err, img.Size())
					}
				}
				return
			}
			// Stream the reference: zeros except the written pieces.
			zero := make([]byte, mib)
			for pos := int64(0); pos < c.opts.Size; {
				if b, ok := ref[pos]; ok {
					h.Write(b)
					pos += int64(len(b))
					continue
				}
				next := c.opts.Size
				for off := range ref {
					if off > pos && off < next {
						next = off
					}
				}
				n := min(next-pos, int64(len(zero)))
				h.Write(zero[:n])
				pos += n
			}
			want := hex.EncodeToString(h.Sum(nil))
			raw := filepath.Join(t.TempDir(), "out.raw")
			testenv.Run(t, "qemu-img", "convert", "-f", "vpc", "-O", "raw", path, raw)
			if got := fileSHA(t, raw); got != want {
				t.Errorf("qemu-img convert sha256 %s, want %s", got, want)
			}
			img, err := Open(context.Background(), path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if got := imageSHA(t, img); got != want {
				t.Errorf("our read sha256 %s, want %s", got, want)
			}
		})
	}
}

// TestLibvhdiReadsOurChain reads a base/child/grandchild chain we wrote
// through libvhdi.
func TestLibvhdiReadsOurChain(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	size := int64(16 * mib)
	ref := make([]byte, size)
	r := rand.New(rand.NewPCG(3, 4))
	fill := func(off, n int64, zero bool) []byte {
		b := make([]byte, n)
		if !zero {
			for i := range b {
				b[i] = byte(r.Uint32())
			}
		}
		copy(ref[off:], b)
		return b
	}
	mk := func(name string, opts disk.CreateOptions, ws [][3]int64) string {
		path := filepath.Join(dir, name)
		opts.Size = size
		w, err := Create(ctx, path, opts)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range ws {
			if _, err := w.WriteAt(fill(x[0], x[1], x[2] == 0), x[0]); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return path
	}
	const baseID, childID, gcID = "0a0b0c0d-0e0f-1011-1213-141516171819", "1a0b0c0d-0e0f-1011-1213-141516171819", "2a0b0c0d-0e0f-1011-1213-141516171819"
	base := mk("base.vhd", disk.CreateOptions{ID: baseID}, [][3]int64{{0, 12 * mib, 1}})
	// libvhdi 20210425 (Debian's) reads a clear bitmap bit that follows a
	// set bit in the same byte as set (it shifts without masking), so every
	// write here ends on a 4 KiB boundary; starts are sector-granular.
	child := mk("child.vhd", disk.CreateOptions{ID: childID, ParentPath: "base.vhd", ParentID: baseID},
		[][3]int64{{2560, 1536, 1}, {4*mib + 2048, 2048, 0}, {13 * mib, 4096, 1}, {2*mib - 512, 4096 + 512, 1}})
	gc := mk("gc.vhd", disk.CreateOptions{ID: gcID, ParentPath: "child.vhd", ParentID: childID},
		[][3]int64{{3584, 512, 1}, {5*mib + 2560, 3 * 512, 1}})
	sum := sha256.Sum256(ref)
	want := hex.EncodeToString(sum[:])

	img, err := Open(ctx, gc, disktest.Opener(format))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if got := imageSHA(t, img); got != want {
		t.Fatalf("our sha256 %s, want %s", got, want)
	}
	if got := libvhdiSHA(t, gc, child, base); got != want {
		t.Fatalf("libvhdi reads sha256 %s, want %s", got, want)
	}
	py := pyvhdi(t)
	out, err := exec.Command(py, "-c", `
import pyvhdi, sys
f = pyvhdi.file(); f.open(sys.argv[1])
print(f.disk_type, f.media_size, f.identifier, f.parent_identifier, f.parent_filename)
`, child).CombinedOutput()
	if err != nil {
		t.Fatalf("pyvhdi: %v\n%s", err, out)
	}
	if got, w := strings.TrimSpace(string(out)), "4 16777216 "+childID+" "+baseID+" base.vhd"; got != w {
		t.Errorf("libvhdi sees %q, want %q", got, w)
	}
	// The child's own layer: exactly the sectors written to it.
	own, err := img.Parent().Extents(ctx, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	wantExt := []disk.Extent{
		ext(0, 2560, disk.Unallocated), ext(2560, 1536, disk.Data), ext(4096, 2*mib-512-4096, disk.Unallocated),
		ext(2*mib-512, 4096+512, disk.Data), ext(2*mib+4096, 2*mib-2048, disk.Unallocated),
		ext(4*mib+2048, 2048, disk.Data), ext(4*mib+4096, 9*mib-4096, disk.Unallocated),
		ext(13*mib, 4096, disk.Data), ext(13*mib+4096, 3*mib-4096, disk.Unallocated),
	}
	if !equalExtents(own, wantExt) {
		t.Errorf("child extents\n %v, want\n %v", own, wantExt)
	}
}

func ext(off, n int64, k disk.ExtentKind) disk.Extent {
	return disk.Extent{Offset: off, Length: n, Kind: k}
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

// TestWriterLayout checks allocation choices of the writer.
func TestWriterLayout(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "a.vhd")
	w, err := Create(ctx, path, disk.CreateOptions{Size: 8 * mib})
	if err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, 2*mib)
	one := bytes.Repeat([]byte{1}, 512)
	for _, x := range []struct {
		b   []byte
		off int64
	}{{zero, 0}, {zero[:4096], 2 * mib}, {one, 4*mib + 512}, {zero[:512], 4 * mib}} {
		if _, err := w.WriteAt(x.b, x.off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.WriteAt(one[:100], 0); err == nil {
		t.Error("unaligned write accepted")
	}
	if _, err := w.WriteAt(one, 8*mib); err == nil {
		t.Error("write past the end accepted")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err == nil {
		t.Error("second Close returned nil")
	}
	st, _ := os.Stat(path)
	// footer copy, header, BAT sector, one block (bitmap + 2 MiB), footer.
	if want := int64(512 + 1024 + 512 + 512 + 2*mib + 512); st.Size() != want {
		t.Errorf("file is %d bytes, want %d (zero writes must not allocate)", st.Size(), want)
	}
	img, err := Open(ctx, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	got, err := img.Extents(ctx, 0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	want := []disk.Extent{ext(0, 4*mib, disk.Unallocated), ext(4*mib, 2*mib, disk.Data), ext(6*mib, 2*mib, disk.Unallocated)}
	if !equalExtents(got, want) {
		t.Errorf("extents %v, want %v", got, want)
	}
	raw, _ := os.ReadFile(path)
	if string(raw[28:32]) != creatorApp || !bytes.Equal(raw[:512], raw[len(raw)-512:]) {
		t.Errorf("footer copy differs or creator is %q", raw[28:32])
	}
	if c, h, s := binary.BigEndian.Uint16(raw[56:]), raw[58], raw[59]; c != 240 || h != 4 || s != 17 {
		t.Errorf("geometry %d/%d/%d, want 240/4/17", c, h, s)
	}

	bad := []disk.CreateOptions{
		{Size: 0}, {Size: 1000}, {Size: 4 << 40}, {Size: mib, ClusterSize: 3000},
		{Size: mib, ID: "not-a-uuid"}, {Size: mib, ParentPath: "x.vhd"},
		{Size: mib, ParentPath: "x.vhd", ParentID: win8ID, Fixed: true}, {Size: mib, ParentID: win8ID},
	}
	for _, o := range bad {
		if w, err := Create(ctx, filepath.Join(dir, "bad.vhd"), o); err == nil {
			w.Close()
			t.Errorf("Create(%+v) succeeded", o)
		}
	}
}

// TestParentLoop: two differencing disks naming each other must fail, not
// recurse forever.
func TestParentLoop(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const idA, idB = "aaaaaaaa-0000-4000-8000-000000000000", "bbbbbbbb-0000-4000-8000-000000000000"
	for _, x := range [][3]string{{"a.vhd", idA, "b.vhd"}, {"b.vhd", idB, "a.vhd"}} {
		other := idB
		if x[1] == idB {
			other = idA
		}
		w, err := Create(ctx, filepath.Join(dir, x[0]), disk.CreateOptions{Size: mib, ID: x[1], ParentPath: x[2], ParentID: other})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	_, err := Open(ctx, filepath.Join(dir, "a.vhd"), disktest.Opener(format))
	if err == nil || !strings.Contains(err.Error(), "loops") {
		t.Fatalf("loop: err %v", err)
	}
}

// TestBadInput damages images and checks the errors name the file, the
// offset and the cause.
func TestBadInput(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.vhd")
	w, err := Create(ctx, good, disk.CreateOptions{Size: 8 * mib})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{7}, 3*mib)
	if _, err := w.WriteAt(data, 2*mib); err != nil { // blocks 1 and 2
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	orig, _ := os.ReadFile(good)
	n := int64(len(orig))
	fixedPath := filepath.Join(dir, "fixed.vhd")
	fw, err := Create(ctx, fixedPath, disk.CreateOptions{Size: mib, Fixed: true})
	if err != nil {
		t.Fatal(err)
	}
	fw.Close()
	fixed, _ := os.ReadFile(fixedPath)

	const batOff = 1536
	cases := []struct {
		name   string
		src    []byte
		mutate func(b []byte) []byte
		off    int64 // -1: opens with a warning
		msg    string
	}{
		{"end footer checksum, copy good", orig, func(b []byte) []byte { b[n-512+200] ^= 1; return b }, -1, "footer checksum"},
		{"both footers bad", orig, func(b []byte) []byte { b[n-512+200] ^= 1; b[200] ^= 1; return b }, n - 512, "footer checksum mismatch"},
		{"fixed footer checksum", fixed, func(b []byte) []byte { b[mib+100] ^= 1; return b }, mib, "footer checksum mismatch"},
		{"footer cookie", fixed, func(b []byte) []byte { b[mib] = 'C'; return b }, mib, "footer cookie"},
		{"header checksum", orig, func(b []byte) []byte { b[512+900] ^= 1; return b }, 512 + 36, "dynamic header checksum mismatch"},
		{"header cookie", orig, func(b []byte) []byte { b[512] = 'X'; return b }, 512, "dynamic header cookie"},
		{"BAT entry past EOF", orig, func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[batOff+4*3:], 0x00FFFFF0)
			return b
		}, batOff + 12, "BAT entry 3"},
		{"truncated", orig, func(b []byte) []byte { return b[:n-mib] }, batOff + 8, "BAT entry 2"},
		{"tiny", orig, func(b []byte) []byte { return b[:100] }, 0, "too small"},
		{"fixed truncated", fixed, func(b []byte) []byte { return b[mib/2:] }, mib / 2, "truncated"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, "bad.vhd")
			if err := os.WriteFile(p, c.mutate(bytes.Clone(c.src)), 0o644); err != nil {
				t.Fatal(err)
			}
			img, err := Open(ctx, p, nil)
			if c.off < 0 {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				defer img.Close()
				ws := img.(*Image).Warnings()
				if len(ws) != 1 || !strings.Contains(ws[0], c.msg) {
					t.Errorf("warnings %q, want one about %q", ws, c.msg)
				}
				buf := make([]byte, 3*mib)
				if _, err := img.ReadAt(buf, 2*mib); err != nil || !bytes.Equal(buf, data) {
					t.Errorf("read through the footer copy: %v", err)
				}
				return
			}
			var fe *disk.FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("err %v (%T), want *disk.FormatError", err, err)
			}
			if fe.Path != p || fe.Offset != c.off || !strings.Contains(fe.Msg, c.msg) {
				t.Errorf("err %q: want path %s, offset %d, message with %q", err, p, c.off, c.msg)
			}
		})
	}
}

func TestSizeRule(t *testing.T) {
	mk := func(creator string, c uint16, h, s uint8, cur uint64) footer {
		f := footer{curSize: cur, cylinders: c, heads: h, spt: s}
		copy(f.creatorApp[:], creator)
		return f
	}
	const cur = 136365211648
	const chs = 65278 * 16 * 255 * 512
	cases := []struct {
		f    footer
		want uint64
	}{
		{mk("win ", 65278, 16, 255, cur), cur},
		{mk("qem2", 65278, 16, 255, cur), cur},
		{mk("d2v ", 65278, 16, 255, cur), cur},
		{mk("d2v\x00", 65278, 16, 255, cur), cur},
		{mk("CTXS", 65278, 16, 255, cur), cur},
		{mk("tap\x00", 65278, 16, 255, cur), cur},
		{mk("tap ", 65278, 16, 255, cur), chs},
		{mk("vpc ", 65278, 16, 255, cur), chs},
		{mk("qemu", 65278, 16, 255, cur), chs},
		{mk("lfbt", 65535, 16, 255, 1<<40), 1 << 40},
		{mk("vpc ", 0, 0, 0, 1<<30), 1 << 30},
	}
	for _, c := range cases {
		if got := c.f.virtualSize(); got != c.want {
			t.Errorf("creator %q geometry %d/%d/%d: size %d, want %d", c.f.creatorApp, c.f.cylinders, c.f.heads, c.f.spt, got, c.want)
		}
	}
	geo := []struct {
		size    int64
		c       uint16
		h, s    uint8
		comment string
	}{
		{40 * mib, 963, 5, 17, "win8.vhd"},
		{10 * mib, 301, 4, 17, "dynamic.vhd"},
		{1 << 30, 2080, 16, 63, "win8.1-1GB.vhd"},
		{136365211648, 65278, 16, 255, "hyperv2012r2"},
		{2 << 40, 65535, 16, 255, "clamped"},
		{512, 0, 4, 17, "tiny"},
	}
	for _, g := range geo {
		if c, h, s := geometry(g.size); c != g.c || h != g.h || s != g.s {
			t.Errorf("%s: geometry(%d) = %d/%d/%d, want %d/%d/%d", g.comment, g.size, c, h, s, g.c, g.h, g.s)
		}
	}
}

func TestProbe(t *testing.T) {
	head := func(p string) []byte {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 4096)
		n, _ := f.Read(b)
		return b[:n]
	}
	probeFile := func(p string) bool {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		st, _ := f.Stat()
		return ProbeFile(f, st.Size())
	}
	fixed := testenv.HyperV(t, "fixed.vhd")
	win8 := testenv.HyperV(t, "win8.vhd")
	other := filepath.Join(t.TempDir(), "x.raw")
	os.WriteFile(other, bytes.Repeat([]byte("conectiy"), 1024), 0o644)
	if !Probe(head(win8)) || Probe(head(fixed)) || Probe(head(other)) {
		t.Error("Probe: want true for dynamic, false for a fixed VHD without copy and for other data")
	}
	if ProbeFile(bytes.NewReader(nil), 0) || !probeFile(fixed) || !probeFile(win8) || probeFile(other) {
		t.Error("ProbeFile: want true for fixed and dynamic, false for other data")
	}
}

func TestUUID(t *testing.T) {
	u, err := parseUUID("{ADB71975-4B5B-0B40-B025-D06DAB31B26F}")
	if err != nil || uuidString(u) != win8ID {
		t.Errorf("parse: %s %v", uuidString(u), err)
	}
	for _, s := range []string{"", "adb71975", "adb71975x4b5b-0b40-b025-d06dab31b26f", "zdb71975-4b5b-0b40-b025-d06dab31b26f"} {
		if _, err := parseUUID(s); err == nil {
			t.Errorf("parseUUID(%q) accepted", s)
		}
	}
}

func qemuSize(t *testing.T, path string) int64 {
	t.Helper()
	out := testenv.Run(t, "qemu-img", "info", "-f", "vpc", "--output=json", path)
	var v struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	return v.VirtualSize
}

func imageSHA(t *testing.T, img disk.Image) string {
	t.Helper()
	h := sha256.New()
	buf := make([]byte, 4*mib)
	for off := int64(0); off < img.Size(); off += int64(len(buf)) {
		n, err := img.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		h.Write(buf[:n])
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// pyvhdi finds a Python with Debian's python3-libvhdi bindings.
func pyvhdi(t *testing.T) string {
	t.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		p, err := exec.LookPath(py)
		if err == nil && exec.Command(p, "-c", "import pyvhdi").Run() == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("missing pyvhdi (Debian python3-libvhdi)")
	}
	t.Skip("missing pyvhdi (Debian python3-libvhdi)")
	return ""
}

// libvhdiSHA reads chain[0] through libvhdi, with chain[1:] as its
// ancestors, and returns the sha256 of its guest content.
func libvhdiSHA(t *testing.T, chain ...string) string {
	t.Helper()
	py := pyvhdi(t)
	script := `
import hashlib, pyvhdi, sys
files = []
for p in sys.argv[1:]:
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
for child, parent in zip(files, files[1:]):
    child.set_parent(parent)
top = files[0]
h = hashlib.sha256()
off, size = 0, top.media_size
while off < size:
    b = top.read_buffer_at_offset(min(1 << 22, size - off), off)
    if not b:
        raise SystemExit("short read at %d" % off)
    h.update(b)
    off += len(b)
print(h.hexdigest())
`
	out, err := exec.Command(py, append([]string{"-c", script}, chain...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("pyvhdi: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestCandidates checks the order in which parent paths are tried.
func TestCandidates(t *testing.T) {
	dir := t.TempDir()
	m := &Image{path: filepath.Join(dir, "child.vhd"), locators: []locator{
		{platW2ku, `C:\VMs\base.vhd`},
		{platMacX, decodeFileURL("file://localhost/srv/vm%20s/old.vhd")},
		{platW2ru, `..\shared\base.vhd`},
		{platWi2r, `.\child.vhd`}, // the child itself is never a candidate
	}}
	got := m.candidates(`D:\elsewhere\named.vhd`)
	want := []string{
		filepath.Join(filepath.Dir(dir), "shared", "base.vhd"),
		"/srv/vm s/old.vhd",
		filepath.Join(dir, "base.vhd"),
		filepath.Join(dir, "old.vhd"),
		filepath.Join(dir, "named.vhd"),
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("candidates\n %q, want\n %q", got, want)
	}
	if s := decodeLegacy([]byte("C:\\a.vhd\x00junk")); s != `C:\a.vhd` {
		t.Errorf("decodeLegacy 8-bit: %q", s)
	}
	if s := decodeLegacy(encodeUTF16(`C:\a.vhd`, binary.LittleEndian)); s != `C:\a.vhd` {
		t.Errorf("decodeLegacy UTF-16: %q", s)
	}
}
