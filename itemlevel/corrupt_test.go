package itemlevel

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"lifeboat/internal/testenv"
)

func patchAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestFATLoops makes a file's and a folder's cluster chains loop: reading
// them fails with ErrCorrupt instead of hanging or returning wrong bytes.
func TestFATLoops(t *testing.T) {
	dir := t.TempDir()
	tr := sampleTree(false)
	img := buildFAT(t, dir, tr, 16*1024, "-F", "16", "-s", "4")
	fsys := openWhole(t, img)
	big, err := fsys.Stat("big.bin")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := fsys.Stat("Docs")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(img)
	fatStart := int64(binary.LittleEndian.Uint16(b[14:])) * 512
	// big.bin: cluster first+3 links back to first+1.
	c := big.ID
	patchAt(t, img, fatStart+2*int64(c+3), []byte{byte(c + 1), byte((c + 1) >> 8)})
	// Docs: its only cluster links to itself.
	d := docs.ID
	patchAt(t, img, fatStart+2*int64(d), []byte{byte(d), byte(d >> 8)})

	fsys = openWhole(t, img)
	f, err := fsys.Open("big.bin")
	if err == nil {
		_, err = io.ReadAll(f)
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Errorf("looping file: %v, want ErrCorrupt", err)
	}
	if _, err := fsys.ReadDir("Docs"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("looping folder: %v, want ErrCorrupt", err)
	}
	// The rest of the volume still reads.
	if got := readAllFS(t, fsys, "hello.txt"); string(got) != string(tr.files["hello.txt"]) {
		t.Errorf("hello.txt = %q", got)
	}
}

// TestExtExtentLoop makes an extent tree node point at itself.
func TestExtExtentLoop(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	for i := 0; i < 60; i++ {
		os.WriteFile(filepath.Join(src, "f"+strconv.Itoa(i)), pseudoRandom(4*kib, uint64(i)), 0o644)
	}
	img := filepath.Join(dir, "ext.img")
	sparseFile(t, img, 8*mib)
	testenv.Run(t, "mke2fs", "-q", "-F", "-t", "ext4", "-b", "1024", "-d", src, img)
	host := filepath.Join(dir, "frag.host")
	os.WriteFile(host, pseudoRandom(200*kib, 1), 0o644)
	cmds := ""
	for i := 0; i < 60; i += 2 {
		cmds += "rm /f" + strconv.Itoa(i) + "\n"
	}
	cmds += "write " + host + " frag.bin\n"
	cf := filepath.Join(dir, "cmds")
	os.WriteFile(cf, []byte(cmds), 0o644)
	testenv.Run(t, "debugfs", "-w", "-f", cf, img)
	ex := testenv.Run(t, "debugfs", "-R", "ex /frag.bin", img)
	m := regexp.MustCompile(`(?m)^\s*0/\s*1\s+1/\s*1\s+\d+\s+-\s+\d+\s+(\d+)`).FindStringSubmatch(ex)
	if m == nil {
		t.Fatalf("no index node in:\n%s", ex)
	}
	leaf, _ := strconv.ParseInt(m[1], 10, 64)
	if got := readAllFS(t, openWhole(t, img), "frag.bin"); len(got) != 200*kib {
		t.Fatalf("frag.bin reads %d bytes before the damage", len(got))
	}
	// The leaf becomes an index node (depth 1) whose entry points to itself.
	node := make([]byte, 24)
	binary.LittleEndian.PutUint16(node[0:], 0xF30A)
	binary.LittleEndian.PutUint16(node[2:], 1)
	binary.LittleEndian.PutUint16(node[4:], 84)
	binary.LittleEndian.PutUint16(node[6:], 1)
	binary.LittleEndian.PutUint32(node[16:], uint32(leaf))
	patchAt(t, img, leaf*1024, node)
	fsys := openWhole(t, img)
	if _, err := fsys.Open("frag.bin"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("extent loop: %v, want ErrCorrupt", err)
	}
	if got := readAllFS(t, fsys, "f1"); len(got) != 4*kib {
		t.Errorf("f1 reads %d bytes", len(got))
	}
}
