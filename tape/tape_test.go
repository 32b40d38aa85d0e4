package tape_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/backup"
	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/repo"
	"lifeboat/repo/storage/local"
	"lifeboat/restore"
	"lifeboat/tape"
	"lifeboat/tape/vtl"
)

const mib = 1 << 20

func newRepo(t *testing.T, chunkSize int) *repo.Repository {
	t.Helper()
	b, err := local.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Init(context.Background(), b, repo.InitOptions{ChunkSize: chunkSize})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

// writeSource writes a raw disk of 40 MiB: random ranges, written zeros,
// a sparse hole, a random tail that does not fill its last chunk.
func writeSource(t *testing.T, path string) [32]byte {
	t.Helper()
	const size = 40*mib + 12345
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	parts := []struct {
		off  int64
		data []byte
	}{
		{0, randBytes(1, 13*mib+777)},
		{14 * mib, make([]byte, 4*mib)}, // written zeros
		// 18-21 MiB: a sparse hole
		{21 * mib, randBytes(2, 12*mib)},
		{33*mib + 4096, randBytes(3, 3*mib)},
		{size - 700*1024, randBytes(4, 700*1024)},
	}
	for _, p := range parts {
		if _, err := f.WriteAt(p.data, p.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return fileSum(t, path)
}

func fileSum(t *testing.T, path string) [32]byte {
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
	var s [32]byte
	h.Sum(s[:0])
	return s
}

func backupPath(t *testing.T, r *repo.Repository, path, name string) *repo.Point {
	t.Helper()
	ctx := context.Background()
	src, err := backup.Scan(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := backup.Run(ctx, r, src, backup.Options{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newLibrary(t *testing.T, dir string, n int, capacity int64) *vtl.Library {
	t.Helper()
	lib, err := vtl.Create(dir, vtl.Options{Slots: n + 2})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := lib.AddCartridge(fmt.Sprintf("LB%04dL8", i+1), capacity, 0); err != nil {
			t.Fatal(err)
		}
	}
	return lib
}

// fixture is a point of ~40 MiB written to a library where it spans two
// cartridges.
type fixture struct {
	src     string
	sum     [32]byte
	r       *repo.Repository
	point   *repo.Point
	libDir  string
	written *tape.Result
}

func makeFixture(t *testing.T, chunkSize, blockSize int) *fixture {
	t.Helper()
	dir := t.TempDir()
	fx := &fixture{src: filepath.Join(dir, "disk.raw"), libDir: filepath.Join(dir, "library")}
	fx.sum = writeSource(t, fx.src)
	fx.r = newRepo(t, chunkSize)
	fx.point = backupPath(t, fx.r, fx.src, "db1")
	lib := newLibrary(t, fx.libDir, 4, 25*mib)
	res, err := tape.WritePoints(context.Background(), fx.r, []*repo.Point{fx.point}, lib, tape.WriteOptions{BlockSize: blockSize})
	if err != nil {
		t.Fatal(err)
	}
	fx.written = res
	return fx
}

// copyDir copies a library so a test can damage its own copy.
func copyDir(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

func openLib(t *testing.T, dir string) *vtl.Library {
	t.Helper()
	lib, err := vtl.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return lib
}

// The outcome: a point written to a virtual library spanning two
// cartridges is read back bit-identically by a scan plus a restore with no
// catalog and no repository, and after an import into an empty
// repository by restore.Run from it.
func TestSpanningRoundTrip(t *testing.T) {
	for _, c := range []struct {
		name             string
		chunk, blockSize int
	}{
		{"4MiB-chunks-256KiB-blocks", 4 * mib, 256 << 10},
		{"64KiB-chunks-16KiB-blocks", 64 << 10, 16 << 10},
		{"1MiB-chunks-4KiB-blocks", mib, 4 << 10},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			fx := makeFixture(t, c.chunk, c.blockSize)
			if n := len(fx.written.Cartridges); n != 2 {
				t.Fatalf("wrote %d cartridges, want 2", n)
			}
			if len(fx.written.Copies) != 1 || !fx.written.Copies[0].Complete || len(fx.written.Copies[0].Parts) != 2 {
				t.Fatalf("copies %+v", fx.written.Copies)
			}

			// A fresh process: the library from its folder, nothing else.
			lib := openLib(t, fx.libDir)
			cat, err := tape.Scan(ctx, lib, tape.ScanOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cp, err := cat.Find(fx.point.ID, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(cp.Parts) != 2 || cp.Parts[0].Barcode != "LB0001L8" || cp.Parts[1].Barcode != "LB0002L8" || !cp.Parts[0].Continues || !cp.Parts[1].Continued {
				t.Fatalf("parts %+v", cp.Parts)
			}
			if got := cat.Cartridges[0].Catalog.Next; got == nil || got.Barcode != "LB0002L8" || got.Seq != 2 {
				t.Fatalf("first cartridge's catalog names next %+v", got)
			}
			if cat.Cartridges[2].Blank != true {
				t.Fatalf("third cartridge %+v, want blank", cat.Cartridges[2])
			}
			vcat, err := tape.Scan(ctx, lib, tape.ScanOptions{Verify: true})
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			if !vcat.Cartridges[0].Verified || !vcat.Cartridges[1].Verified {
				t.Fatal("verify did not verify")
			}

			out := filepath.Join(t.TempDir(), "out")
			res, err := tape.RestoreToFolder(ctx, lib, fx.point.ID, out, tape.RestoreOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got := fileSum(t, res.Files["disk.raw"]); got != fx.sum {
				t.Fatal("restored file differs from the source")
			}
			if ents, _ := os.ReadDir(out); len(ents) != 1 {
				t.Fatalf("restore folder holds %d entries, want the one file (staging left behind?)", len(ents))
			}

			// Into an empty repository, then restore.Run from it.
			r2 := newRepo(t, c.chunk)
			var read int64
			p2, err := tape.RestoreToRepository(ctx, lib, fx.point.ID, r2, tape.RestoreOptions{Catalog: cat, Read: func(n int64) { read = n }})
			if err != nil {
				t.Fatal(err)
			}
			if read != cp.Bytes {
				t.Fatalf("read %d chunk bytes off tape, the catalog says %d", read, cp.Bytes)
			}
			ids, err := r2.PointIDs(ctx)
			if err != nil || len(ids) != 1 || ids[0] != fx.point.ID {
				t.Fatalf("repository lists %v, %v", ids, err)
			}
			loaded, err := r2.LoadPoint(ctx, fx.point.ID)
			if err != nil {
				t.Fatal(err)
			}
			if loaded.Files[0].Index != p2.Files[0].Index || loaded.Name != "db1" {
				t.Fatalf("loaded point %+v", loaded)
			}
			out2 := filepath.Join(t.TempDir(), "out2")
			res2, err := restore.Run(ctx, r2, loaded, out2, restore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := fileSum(t, res2.Files["disk.raw"]); got != fx.sum {
				t.Fatal("file restored from the imported point differs from the source")
			}
			if _, err := tape.RestoreToRepository(ctx, lib, fx.point.ID, r2, tape.RestoreOptions{Catalog: cat}); !errors.Is(err, tape.ErrPointExists) {
				t.Fatalf("second import: %v, want ErrPointExists", err)
			}
			// Back into the repository it came from: the same index.
			if err := fx.r.DeletePoint(ctx, fx.point.ID); err != nil {
				t.Fatal(err)
			}
			p3, err := tape.RestoreToRepository(ctx, lib, fx.point.ID, fx.r, tape.RestoreOptions{Catalog: cat})
			if err != nil {
				t.Fatal(err)
			}
			if p3.Files[0].Index != fx.point.Files[0].Index {
				t.Fatalf("re-imported index %s, originally %s", p3.Files[0].Index, fx.point.Files[0].Index)
			}
		})
	}
}

// blockOffset finds the file offset of block number n's bytes in a
// virtual cartridge.
func blockOffset(t *testing.T, path string, n int) int64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	off, k := int64(32), 0
	for off+4 <= int64(len(data)) {
		l := int64(binary.LittleEndian.Uint32(data[off:]))
		if l == 0 {
			off += 4
			continue
		}
		if k == n {
			return off + 4
		}
		k++
		off += 8 + l
	}
	t.Fatalf("%s has no block %d", path, n)
	return 0
}

func flip(t *testing.T, path string, off int64, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] ^= 0x5a
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// A damaged block is reported with its cartridge and block number by a
// verifying scan and by every restore; never skipped.
func TestDamagedBlock(t *testing.T) {
	ctx := context.Background()
	fx := makeFixture(t, 4*mib, 256<<10)
	cases := []struct {
		name    string
		barcode string
		block   int
		// quickOK: a scan that reads only labels and catalogs succeeds.
		quickOK   bool
		restoreOK bool
	}{
		{"data block on the first cartridge", "LB0001L8", 10, true, false},
		{"data block on the second cartridge", "LB0002L8", 5, true, false},
		{"label", "LB0001L8", 0, false, false},
		// A damaged catalog is rebuilt from the data; the point still
		// restores.
		{"catalog", "LB0002L8", -1, true, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyDir(t, fx.libDir)
			lib := openLib(t, dir)
			block := c.block
			if block < 0 {
				for _, ci := range fx.written.Cartridges {
					if ci.Barcode == c.barcode {
						block = int(ci.Catalog.CatalogBlock)
					}
				}
			}
			flip(t, lib.Path(c.barcode), blockOffset(t, lib.Path(c.barcode), block)+2000, 16)
			where := fmt.Sprintf("cartridge %s: block %d", c.barcode, block)

			cat, err := tape.Scan(ctx, lib, tape.ScanOptions{})
			if c.quickOK != (err == nil) {
				t.Fatalf("scan: %v", err)
			}
			if err != nil && (!strings.Contains(err.Error(), where) || !errors.Is(err, tape.ErrCorrupt)) {
				t.Fatalf("scan error %q does not name %q", err, where)
			}
			if c.block < 0 {
				ci := cat.Cartridges[1]
				if !ci.Rebuilt || !strings.Contains(ci.Problem, where) {
					t.Fatalf("damaged catalog: %+v", ci)
				}
			}
			_, err = tape.Scan(ctx, lib, tape.ScanOptions{Verify: true})
			if err == nil || !strings.Contains(err.Error(), where) || !errors.Is(err, tape.ErrCorrupt) {
				t.Fatalf("verify: %v, want an error naming %q", err, where)
			}

			out := filepath.Join(t.TempDir(), "out")
			res, err := tape.RestoreToFolder(ctx, lib, fx.point.ID, out, tape.RestoreOptions{})
			if c.restoreOK {
				if err != nil {
					t.Fatal(err)
				}
				if fileSum(t, res.Files["disk.raw"]) != fx.sum {
					t.Fatal("restored file differs")
				}
				return
			}
			if err == nil {
				t.Fatal("restore from a damaged tape succeeded")
			}
			if c.quickOK && !strings.Contains(err.Error(), where) {
				t.Fatalf("restore error %q does not name %q", err, where)
			}
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Fatalf("a failed restore left %d entries in the target", len(ents))
			}
			r2 := newRepo(t, 4*mib)
			if _, err := tape.RestoreToRepository(ctx, lib, fx.point.ID, r2, tape.RestoreOptions{}); err == nil {
				t.Fatal("import from a damaged tape succeeded")
			}
			if ids, _ := r2.PointIDs(ctx); len(ids) != 0 {
				t.Fatalf("a failed import listed %v", ids)
			}
		})
	}
}

// A cartridge cut short is reported, and what it held is not restored.
func TestTruncatedCartridge(t *testing.T) {
	ctx := context.Background()
	fx := makeFixture(t, 4*mib, 256<<10)
	for _, c := range []struct {
		name    string
		barcode string
		keep    float64 // fraction of the file kept
	}{
		{"first cartridge mid-data", "LB0001L8", 0.6},
		{"second cartridge before its catalog", "LB0002L8", 0.9},
		{"first cartridge inside a block header", "LB0001L8", -1},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := copyDir(t, fx.libDir)
			lib := openLib(t, dir)
			p := lib.Path(c.barcode)
			fi, _ := os.Stat(p)
			size := int64(float64(fi.Size()) * c.keep)
			if c.keep < 0 {
				size = blockOffset(t, p, 20) - 2 // inside block 20's length field
			}
			if err := os.Truncate(p, size); err != nil {
				t.Fatal(err)
			}
			cat, err := tape.Scan(ctx, lib, tape.ScanOptions{})
			if err == nil || !errors.Is(err, tape.ErrTruncated) || !strings.Contains(err.Error(), "cartridge "+c.barcode) {
				t.Fatalf("scan: %v, want a truncation of %s", err, c.barcode)
			}
			if _, err := cat.Find(fx.point.ID, ""); err == nil {
				t.Fatal("the point's copy is complete on a truncated set")
			}
			out := filepath.Join(t.TempDir(), "out")
			if _, err := tape.RestoreToFolder(ctx, lib, fx.point.ID, out, tape.RestoreOptions{}); err == nil {
				t.Fatal("restore from a truncated set succeeded")
			}
			// With the catalog from when it was written, the restore reads
			// on and hits the cut.
			_, err = tape.RestoreToFolder(ctx, lib, fx.point.ID, out, tape.RestoreOptions{Catalog: &fx.written.Catalog})
			if err == nil || !strings.Contains(err.Error(), "cartridge "+c.barcode) {
				t.Fatalf("restore with the old catalog: %v", err)
			}
		})
	}
}

// Cartridges holding data are not overwritten unless asked; several points
// and a VM folder with a differencing chain go in one set.
func TestSetOfPointsAndOverwrite(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r := newRepo(t, 256<<10)

	vm := filepath.Join(dir, "vm")
	os.MkdirAll(vm, 0o755)
	os.WriteFile(filepath.Join(vm, "vm.xml"), []byte("<domain><name>vm</name></domain>"), 0o644)
	base := filepath.Join(vm, "base.qcow2")
	const size = 6 * mib
	baseData := map[int64][]byte{0: randBytes(10, mib), 3 * mib: randBytes(11, 512<<10)}
	writeLayer(t, base, disk.QCOW2, disk.CreateOptions{Size: size}, baseData)
	bimg, err := formats.Open(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(vm, "top.qcow2")
	writeLayer(t, top, disk.QCOW2, disk.CreateOptions{Size: size, ParentPath: "base.qcow2", ParentFormat: disk.QCOW2, Parent: bimg},
		map[int64][]byte{512 << 10: randBytes(12, 256<<10), 5 * mib: randBytes(13, 64<<10)})
	bimg.Close()
	want := readAll(t, top)

	p1 := backupPath(t, r, vm, "vm")
	raw := filepath.Join(dir, "disk.raw")
	os.WriteFile(raw, randBytes(20, 600<<10+5), 0o644)
	p2 := backupPath(t, r, raw, "img")

	libDir := filepath.Join(dir, "lib")
	lib := newLibrary(t, libDir, 4, 2*mib)
	res, err := tape.WritePoints(ctx, r, []*repo.Point{p1, p2}, lib, tape.WriteOptions{BlockSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Copies) != 2 || !res.Copies[0].Complete || !res.Copies[1].Complete || len(res.Cartridges) < 2 {
		t.Fatalf("result %+v", res)
	}

	out := filepath.Join(dir, "out")
	rres, err := tape.RestoreToFolder(ctx, openLib(t, libDir), p1.ID, out, tape.RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, rres.Files["top.qcow2"]); !bytes.Equal(got, want) {
		t.Fatal("restored chain's content differs")
	}
	if got, _ := os.ReadFile(rres.Files["vm.xml"]); string(got) != "<domain><name>vm</name></domain>" {
		t.Fatalf("config file restored as %q", got)
	}
	// Merged into one disk on the way out.
	out2 := filepath.Join(dir, "out2")
	mres, err := tape.RestoreToFolder(ctx, openLib(t, libDir), p1.ID, out2, tape.RestoreOptions{Options: restore.Options{MergeChain: true, Format: disk.Raw}})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(mres.Files["top.qcow2"]); !bytes.Equal(got, want) {
		t.Fatal("merged restore differs")
	}
	// A restore into a folder that already holds the files is refused
	// before the tape is read further.
	if _, err := tape.RestoreToFolder(ctx, openLib(t, libDir), p1.ID, out, tape.RestoreOptions{}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("restore over existing files: %v", err)
	}

	// Writing again: the used cartridges are not offered (not blank), and
	// naming them is refused without Overwrite.
	lib2 := openLib(t, libDir)
	if _, err := tape.WritePoints(ctx, r, []*repo.Point{p2}, lib2, tape.WriteOptions{Cartridges: []string{"LB0001L8"}}); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("overwrite without asking: %v", err)
	}
	res2, err := tape.WritePoints(ctx, r, []*repo.Point{p2}, lib2, tape.WriteOptions{Cartridges: []string{"LB0001L8"}, Overwrite: true})
	if err != nil {
		t.Fatal(err)
	}
	cat, err := tape.Scan(ctx, lib2, tape.ScanOptions{})
	// LB0002L8 now continues a set whose first cartridge was overwritten.
	if err != nil {
		t.Fatal(err)
	}
	cp, err := cat.Find(p2.ID, "")
	if err != nil || cp.Set != res2.Set {
		t.Fatalf("find %v in the new set %s: %+v", err, res2.Set, cp)
	}
	if _, err := cat.Find(p1.ID, ""); err == nil {
		t.Fatal("a point whose first cartridge was overwritten is still complete")
	}
}

func writeLayer(t *testing.T, path string, f disk.Format, opts disk.CreateOptions, writes map[int64][]byte) {
	t.Helper()
	w, err := formats.Create(context.Background(), path, f, opts)
	if err != nil {
		t.Fatal(err)
	}
	for off, b := range writes {
		if _, err := w.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, path string) []byte {
	t.Helper()
	img, err := formats.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return b
}

// The package doc and FORMAT.md are the same text.
func TestFormatDocMatches(t *testing.T) {
	md, err := os.ReadFile("FORMAT.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, line := range strings.Split(string(src), "\n") {
		if !strings.HasPrefix(line, "//") {
			break
		}
		line = strings.TrimPrefix(line, "//")
		line = strings.TrimPrefix(line, " ")
		b.WriteString(line + "\n")
	}
	if b.String() != string(md) {
		t.Fatal("doc.go's package comment and FORMAT.md differ; regenerate doc.go from FORMAT.md (// + line, gofmt)")
	}
}

// A point of many small files over small cartridges breaks both between
// files and inside them; every file comes back.
func TestManyFilesAcrossCartridges(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	vm := filepath.Join(dir, "vm")
	os.MkdirAll(filepath.Join(vm, "sub"), 0o755)
	sums := map[string][32]byte{}
	for i := range 24 {
		name := fmt.Sprintf("f%02d.dat", i)
		if i%3 == 0 {
			name = "sub/" + name
		}
		size := 40<<10 + i*17<<10 // 40 KiB to ~430 KiB: one to seven chunks
		data := randBytes(uint64(100+i), size)
		if i%4 == 1 {
			clear(data[:min(len(data), 64<<10)]) // a hole
		}
		p := filepath.Join(vm, filepath.FromSlash(name))
		os.WriteFile(p, data, 0o644)
		sums[name] = sha256.Sum256(data)
	}
	r := newRepo(t, 64<<10)
	pt := backupPath(t, r, vm, "many")
	libDir := filepath.Join(dir, "lib")
	lib := newLibrary(t, libDir, 12, 1*mib)
	res, err := tape.WritePoints(ctx, r, []*repo.Point{pt}, lib, tape.WriteOptions{BlockSize: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	var between, inside int
	for _, c := range res.Cartridges {
		for _, s := range c.Catalog.Sections {
			if !s.Continued || len(s.Files) == 0 {
				continue
			}
			if s.Files[0].FirstSlot == 0 {
				between++
			} else {
				inside++
			}
		}
	}
	if len(res.Cartridges) < 3 || between == 0 || inside == 0 {
		t.Fatalf("%d cartridges, %d breaks between files, %d inside: the test does not cover both", len(res.Cartridges), between, inside)
	}
	out := filepath.Join(dir, "out")
	rres, err := tape.RestoreToFolder(ctx, openLib(t, libDir), pt.ID, out, tape.RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range sums {
		if got := fileSum(t, rres.Files[name]); got != want {
			t.Fatalf("%s restored differently", name)
		}
	}
	if _, err := tape.Scan(ctx, openLib(t, libDir), tape.ScanOptions{Verify: true}); err != nil {
		t.Fatal(err)
	}
}

// swapDrive is one drive whose cartridge an "operator" changes.
type swapDrive struct{ tape.Drive }

// The Manual library drives a single drive through an operator callback,
// as with a /dev/nst* device.
func TestManualLibrary(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.raw")
	os.WriteFile(src, randBytes(5, 3*mib), 0o644)
	r := newRepo(t, 256<<10)
	pt := backupPath(t, r, src, "img")
	for _, b := range []string{"M1", "M2", "M3"} {
		if err := vtl.CreateCartridge(filepath.Join(dir, b), 2*mib, 0); err != nil {
			t.Fatal(err)
		}
	}
	sd := &swapDrive{}
	var asked []string
	change := func(ctx context.Context, barcode string) error {
		asked = append(asked, barcode)
		if sd.Drive != nil {
			sd.Drive.Close()
		}
		d, err := vtl.OpenCartridge(filepath.Join(dir, barcode))
		sd.Drive = d
		return err
	}
	lib := &tape.Manual{Drive: sd, Barcodes: []string{"M1", "M2", "M3"}, Change: change}
	if _, err := tape.WritePoints(ctx, r, []*repo.Point{pt}, lib, tape.WriteOptions{BlockSize: 64 << 10}); err == nil {
		t.Fatal("a manual library offered cartridges of unknown content as blank")
	}
	res, err := tape.WritePoints(ctx, r, []*repo.Point{pt}, lib, tape.WriteOptions{BlockSize: 64 << 10, Cartridges: []string{"M1", "M2", "M3"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Cartridges) != 2 || strings.Join(asked, ",") != "M1,M2" {
		t.Fatalf("%d cartridges, operator asked for %v", len(res.Cartridges), asked)
	}
	out := filepath.Join(dir, "out")
	rres, err := tape.RestoreToFolder(ctx, lib, pt.ID, out, tape.RestoreOptions{Catalog: &res.Catalog})
	if err != nil {
		t.Fatal(err)
	}
	if fileSum(t, rres.Files["disk.raw"]) != fileSum(t, src) {
		t.Fatal("restored file differs")
	}
}
