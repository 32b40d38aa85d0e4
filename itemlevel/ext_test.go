package itemlevel

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/internal/testenv"
)

func readAllFS(t *testing.T, fsys FS, p string) []byte {
	t.Helper()
	f, err := fsys.Open(p)
	if err != nil {
		t.Fatalf("Open(%s): %v", p, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	if int64(len(b)) != f.Size() {
		t.Fatalf("%s: read %d bytes, Size %d", p, len(b), f.Size())
	}
	return b
}

func openWhole(t *testing.T, img string) FS {
	t.Helper()
	f, size := openFile(t, img)
	vols, err := OpenVolumes(context.Background(), f, size)
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 1 {
		t.Fatalf("volumes %+v", vols)
	}
	return mustOpenFS(t, f, vols[0])
}

// TestExt4FragmentedUnwrittenSparse covers extent trees of depth 1 (a file
// written into a fragmented filesystem), unwritten extents whose blocks
// hold stale data (they must read as zeros), sparse files, and a
// directory of many blocks.
func TestExt4FragmentedUnwrittenSparse(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "many"), 0o755)
	for i := 0; i < 200; i++ {
		os.WriteFile(filepath.Join(src, fmt.Sprintf("f%03d", i)), pseudoRandom(8*kib, uint64(100+i)), 0o644)
	}
	os.WriteFile(filepath.Join(src, "filler"), pseudoRandom(mib, 7), 0o644)
	names := map[string]bool{}
	for i := 0; i < 300; i++ {
		n := fmt.Sprintf("entry-with-a-longish-name-%04d.txt", i)
		names[n] = true
		os.WriteFile(filepath.Join(src, "many", n), []byte(n), 0o644)
	}
	// A sparse file: 1 MiB of data, a 3 MiB hole, 4 KiB of data.
	sparse := make([]byte, 4*mib+4*kib)
	copy(sparse, pseudoRandom(mib, 8))
	copy(sparse[4*mib:], pseudoRandom(4*kib, 9))
	sf, _ := os.Create(filepath.Join(src, "sparse.bin"))
	sf.WriteAt(sparse[:mib], 0)
	sf.WriteAt(sparse[4*mib:], 4*mib)
	sf.Close()

	img := filepath.Join(dir, "ext.img")
	sparseFile(t, img, 24*mib)
	testenv.Run(t, "mke2fs", "-q", "-F", "-t", "ext4", "-b", "1024", "-d", src, img)

	frag := pseudoRandom(600*kib, 10)
	host := filepath.Join(dir, "frag.host")
	os.WriteFile(host, frag, 0o644)
	var cmds strings.Builder
	for i := 0; i < 200; i += 2 {
		fmt.Fprintf(&cmds, "rm /f%03d\n", i)
	}
	fmt.Fprintf(&cmds, "rm /filler\nwrite %s frag.bin\nwrite /dev/null pre.bin\nfallocate /pre.bin 0 299\nsif /pre.bin size 307200\n", host)
	cf := filepath.Join(dir, "cmds")
	os.WriteFile(cf, []byte(cmds.String()), 0o644)
	testenv.Run(t, "debugfs", "-w", "-f", cf, img)
	// Check the layout the test relies on.
	ex := testenv.Run(t, "debugfs", "-R", "ex /frag.bin", img)
	if !strings.Contains(ex, " 0/ 1 ") {
		t.Fatalf("frag.bin has no index level:\n%s", ex)
	}
	if st := testenv.Run(t, "debugfs", "-R", "stat /pre.bin", img); !strings.Contains(st, "[u]") {
		t.Fatalf("pre.bin has no unwritten extents:\n%s", st)
	}

	fsys := openWhole(t, img)
	if got := readAllFS(t, fsys, "frag.bin"); !bytes.Equal(got, frag) {
		t.Error("frag.bin differs")
	}
	if got := readAllFS(t, fsys, "pre.bin"); !bytes.Equal(got, make([]byte, 307200)) {
		t.Error("pre.bin (unwritten extents over stale data) does not read as zeros")
	}
	if got := readAllFS(t, fsys, "sparse.bin"); !bytes.Equal(got, sparse) {
		t.Error("sparse.bin differs")
	}
	for i := 1; i < 200; i += 2 {
		p := fmt.Sprintf("f%03d", i)
		if got := readAllFS(t, fsys, p); !bytes.Equal(got, pseudoRandom(8*kib, uint64(100+i))) {
			t.Errorf("%s differs", p)
		}
	}
	es, err := fsys.ReadDir("many")
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != len(names) {
		t.Errorf("many/ lists %d entries, want %d", len(es), len(names))
	}
	for _, e := range es {
		if !names[e.Name] || e.Size != int64(len(e.Name)) {
			t.Errorf("many/ entry %+v", e)
		}
	}
	found, err := Find(context.Background(), fsys, "", "ENTRY-*-0299.TXT", FindOptions{CaseInsensitive: true})
	if err != nil || len(found) != 1 || found[0].Path != "many/entry-with-a-longish-name-0299.txt" {
		t.Errorf("Find = %+v, %v", found, err)
	}
}

// TestExt4MetaBG reads inodes whose group descriptors live in a meta_bg
// group (past the first meta group).
func TestExt4MetaBG(t *testing.T) {
	dir := t.TempDir()
	tr := sampleTree(true)
	for i := 0; i < 400; i++ {
		tr.files[fmt.Sprintf("many/d%03d/f", i)] = []byte(fmt.Sprint(i))
		tr.dirs = append(tr.dirs, "many", fmt.Sprintf("many/d%03d", i))
	}
	// 1 KiB blocks and 64-byte descriptors: 16 groups per meta group;
	// 16 inodes per group puts the files' inodes in groups far above 16.
	img := buildExt(t, dir, tr, 512*mib, "-t", "ext4", "-b", "1024", "-O", "meta_bg,64bit,^resize_inode", "-N", "1024", "-I", "256")
	if out := testenv.Run(t, "dumpe2fs", "-h", img); !strings.Contains(out, "meta_bg") {
		t.Fatalf("no meta_bg:\n%s", out)
	}
	fsys := openWhole(t, img)
	var maxIno uint64
	err := Walk(context.Background(), fsys, "", func(e Entry, err error) error {
		if err != nil {
			return err
		}
		maxIno = max(maxIno, e.ID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if maxIno < 16*16+50 {
		t.Fatalf("highest inode %d is not past the first meta groups", maxIno)
	}
	for p, want := range tr.files {
		if got := readAllFS(t, fsys, p); !bytes.Equal(got, want) {
			t.Errorf("%s differs", p)
		}
	}
}
