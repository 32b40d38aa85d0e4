package itemlevel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// zeroExtended is a disk of size bytes whose first len(b) bytes are b and
// the rest zeros, so that small fuzz inputs stand for larger images.
type zeroExtended struct {
	b    []byte
	size int64
}

func (z zeroExtended) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= z.size {
		return 0, io.EOF
	}
	n := 0
	if off < int64(len(z.b)) {
		n = copy(p, z.b[off:])
	}
	for n < len(p) && off+int64(n) < z.size {
		k := min(int64(len(p)-n), z.size-off-int64(n))
		clear(p[n : n+int(k)])
		n += int(k)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func checkVolumes(t *testing.T, vols []Volume, size int64) {
	for _, v := range vols {
		if v.Start < 0 || v.Length <= 0 || v.Start+v.Length > size {
			t.Fatalf("volume outside the disk of %d bytes: %+v", size, v)
		}
	}
}

func FuzzOpenVolumes(f *testing.F) {
	// An MBR with an extended partition and two logical ones.
	d := make([]byte, 64*kib)
	d[510], d[511] = 0x55, 0xAA
	mbrEntryBytes(d[446:], 0x80, 0x83, 8, 16)
	mbrEntryBytes(d[462:], 0, 0x0F, 32, 64)
	ebr := d[32*512:]
	ebr[510], ebr[511] = 0x55, 0xAA
	mbrEntryBytes(ebr[446:], 0, 0x07, 1, 8)
	mbrEntryBytes(ebr[462:], 0, 0x05, 16, 16)
	ebr = d[48*512:]
	ebr[510], ebr[511] = 0x55, 0xAA
	mbrEntryBytes(ebr[446:], 0, 0x0C, 1, 8)
	f.Add(d)
	// GPT with two partitions, primary and backup.
	f.Add([]byte(gptDiskBytes(96*kib, []part{
		{start: 40 * 512, size: 40 * 512, gptType: gptBasicData, name: "a"},
		{start: 80 * 512, size: 50 * 512, gptType: gptLinuxFS, name: "b"},
	})))
	// A FAT boot sector on the whole disk.
	fat := make([]byte, 8*kib)
	copy(fat, []byte{0xEB, 0x3C, 0x90, 'm', 'k', 'f', 's', '.', 'f', 'a', 't', 0, 2, 4, 1, 0, 2, 0, 2, 0x10, 0, 0xF8, 1, 0})
	fat[510], fat[511] = 0x55, 0xAA
	f.Add(fat)
	f.Fuzz(func(t *testing.T, data []byte) {
		size := int64(len(data))
		vols, err := OpenVolumes(context.Background(), bytes.NewReader(data), size)
		if err != nil {
			return
		}
		checkVolumes(t, vols, size)
	})
}

// fuzzHang is how long one input may take: longer is reported as a
// crash, so that the fuzzer keeps the input.
const fuzzHang = 10 * time.Second

// fuzzDiskSize is the size fuzz inputs of FuzzOpenFS are zero-extended to.
const fuzzDiskSize = 16 * mib

// fsSeeds builds small filesystem images with the outside tools, each cut
// to the shortest prefix that still lists and reads everything. Seeds
// whose tool is missing are left out: the fuzz target still runs.
func fsSeeds(f *testing.F) [][]byte {
	dir := f.TempDir()
	tr := tree{
		files: map[string][]byte{
			"a.txt":     []byte("hello\n"),
			"d/b.bin":   pseudoRandom(9000, 5),
			"d/e/c.txt": []byte("c\n"),
		},
		dirs:     []string{"d", "d/e"},
		symlinks: map[string]string{},
		exec:     map[string]bool{},
	}
	src := filepath.Join(dir, "src")
	tr.write(f, src)
	run := func(env []string, name string, args ...string) bool {
		p, err := exec.LookPath(name)
		if err != nil {
			f.Logf("seed skipped: %s missing", name)
			return false
		}
		cmd := exec.Command(p, args...)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			f.Logf("seed skipped: %s: %v\n%s", name, err, out)
			return false
		}
		return true
	}
	var seeds [][]byte
	add := func(img string) {
		b, err := os.ReadFile(img)
		if err != nil {
			f.Fatal(err)
		}
		// Shortest prefix (in 64 KiB steps) that still reads the tree.
		for n := 64 * kib; ; n += 64 * kib {
			if n >= len(b) {
				n = len(b)
			}
			ok := seedWorks(b[:n], tr)
			if ok || n == len(b) {
				s := bytes.TrimRight(b[:n], "\x00")
				fsName, _ := detectFS(zeroExtended{s, fuzzDiskSize}, 0, fuzzDiskSize)
				f.Logf("seed %s: %s, %d bytes, reads its files: %v", filepath.Base(img), fsName, len(s), ok)
				seeds = append(seeds, s)
				return
			}
		}
	}
	mk := func(name string, size int64) string {
		p := filepath.Join(dir, name)
		sparseFile(f, p, size)
		return p
	}
	if img := mk("ext4.img", 512*kib); run(nil, "mke2fs", "-q", "-F", "-t", "ext4", "-b", "1024", "-O", "^has_journal", "-d", src, img) {
		add(img)
	}
	if img := mk("ext2.img", 256*kib); run(nil, "mke2fs", "-q", "-F", "-t", "ext2", "-b", "1024", "-d", src, img) {
		add(img)
	}
	if img := filepath.Join(dir, "fat.img"); run(nil, "mkfs.fat", "-C", img, "160") &&
		run(nil, "mcopy", "-s", "-i", img, filepath.Join(src, "a.txt"), filepath.Join(src, "d"), "::/") {
		add(img)
	}
	// go-ntfs wants more sectors than bytes per cluster.
	if img := mk("ntfs.img", 2*mib); run(nil, "mkntfs", "-F", "-Q", "-q", "-c", "512", img) {
		for _, p := range []string{"a.txt"} {
			run(nil, "ntfscp", "-f", img, filepath.Join(src, p), p)
		}
		add(img)
	}
	// mkfs.xfs refuses filesystems under 300 MiB unless it believes it
	// runs under the XFS test suite.
	// runs under the XFS test suite. The log goes to another file so
	// that the image's used bytes are all at its start.
	proto := fmt.Sprintf("x\n0 0\nd--755 0 0\na.txt ---644 0 0 %[1]s/a.txt\nd d--755 0 0\nb.bin ---644 0 0 %[1]s/d/b.bin\ne d--755 0 0\nc.txt ---644 0 0 %[1]s/d/e/c.txt\n$\n$\n$\n", src)
	pf := filepath.Join(dir, "xfs.proto")
	os.WriteFile(pf, []byte(proto), 0o644)
	logImg := mk("xfs.log", 8*mib)
	if img := mk("xfs.img", fuzzDiskSize); run([]string{"TEST_DIR=1", "TEST_DEV=1", "QA_CHECK_FS=1"}, "mkfs.xfs", "-q", "-f", "-d", "agcount=1", "-l", "logdev="+logImg, "-p", pf, img) {
		add(img)
	}
	return seeds
}

// seedWorks reports whether a prefix of an image still opens and reads
// every file of the root.
func seedWorks(b []byte, tr tree) bool {
	r := zeroExtended{b, fuzzDiskSize}
	vols, err := OpenVolumes(context.Background(), r, fuzzDiskSize)
	if err != nil || len(vols) != 1 {
		return false
	}
	fsys, err := OpenFS(context.Background(), r, vols[0])
	if err != nil {
		return false
	}
	es, err := fsys.ReadDir("")
	if err != nil {
		return false
	}
	for _, e := range es {
		if e.IsRegular() && e.Path != "" {
			f, err := fsys.Open(e.Path)
			if err != nil {
				return false
			}
			got, err := io.ReadAll(f)
			if err != nil || (tr.files[e.Path] != nil && !bytes.Equal(got, tr.files[e.Path])) {
				return false
			}
		}
	}
	return true
}

func FuzzOpenFS(f *testing.F) {
	for _, s := range fsSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(fuzzOne)
}

// fuzzOne opens every volume of data and walks and reads a little of each
// filesystem.
func fuzzOne(t *testing.T, data []byte) {
	if len(data) > fuzzDiskSize {
		return
	}
	ctx := context.Background()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-done:
		case <-time.After(fuzzHang):
			panic(fmt.Sprintf("input took longer than %v", fuzzHang))
		}
	}()
	r := zeroExtended{data, fuzzDiskSize}
	vols, err := OpenVolumes(ctx, r, fuzzDiskSize)
	if err != nil {
		return
	}
	checkVolumes(t, vols, fuzzDiskSize)
	for i, v := range vols {
		if i >= 4 {
			break
		}
		fsys, err := OpenFS(ctx, r, v)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("OpenFS error is not an *Error: %v", err)
			}
			continue
		}
		n := 0
		Walk(ctx, fsys, "", func(e Entry, err error) error {
			if n++; n > 64 {
				return fs.SkipAll
			}
			if (e.Invalid != "") != (e.Path == "" && e.Name != "") && e.Path != "" {
				t.Fatalf("entry %q: invalid %q but path %q", e.Name, e.Invalid, e.Path)
			}
			if err != nil || !e.IsRegular() || e.Path == "" {
				return nil
			}
			if _, perr := cleanPath(e.Path); perr != nil {
				t.Fatalf("entry path %q is not a clean path", e.Path)
			}
			fl, err := fsys.Open(e.Path)
			if err != nil {
				return nil
			}
			_, _ = io.CopyN(io.Discard, fl, 1<<20)
			fl.Close()
			return nil
		})
		fsys.Close()
	}
}
