package itemlevel

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf16"

	"golang.org/x/sys/unix"

	"lifeboat/internal/testenv"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

// tree is guest content: files by slash path, and folders.
type tree struct {
	files    map[string][]byte
	dirs     []string
	symlinks map[string]string // path → target
	exec     map[string]bool
}

func pseudoRandom(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32()) | 1 // no zero bytes, so no trailing zeros
	}
	return b
}

// sampleTree is the content put into every filesystem. withUnix adds a
// symlink and an executable for filesystems that have them.
func sampleTree(withUnix bool) tree {
	tr := tree{
		files: map[string][]byte{
			"hello.txt":                           []byte("hello world\n"),
			"big.bin":                             pseudoRandom(5*mib+123, 1),
			"Photo.JPG":                           pseudoRandom(70*kib, 2),
			"café.txt":                            []byte("unicode name\n"),
			"Docs/report.TXT":                     []byte(strings.Repeat("quarterly numbers\n", 500)),
			"Docs/empty.txt":                      nil,
			"Docs/Sub/deep.txt":                   []byte("deep\n"),
			"Docs/Sub/medium.dat":                 pseudoRandom(300*kib+7, 3),
			"Docs/Long file name with spaces.txt": []byte("spaces\n"),
		},
		dirs:     []string{"Docs", "Docs/Sub", "EmptyDir"},
		symlinks: map[string]string{},
		exec:     map[string]bool{},
	}
	if withUnix {
		tr.symlinks["link-to-hello"] = "hello.txt"
		tr.symlinks["Docs/escape"] = "../../../../etc/passwd"
		tr.files["run.sh"] = []byte("#!/bin/sh\necho hi\n")
		tr.exec["run.sh"] = true
	}
	return tr
}

// without returns a copy of the tree without names containing spaces (for
// XFS protofiles, which separate tokens by spaces).
func (tr tree) without(pred func(string) bool) tree {
	out := tree{files: map[string][]byte{}, dirs: nil, symlinks: map[string]string{}, exec: map[string]bool{}}
	for p, b := range tr.files {
		if !pred(p) {
			out.files[p] = b
		}
	}
	for _, d := range tr.dirs {
		if !pred(d) {
			out.dirs = append(out.dirs, d)
		}
	}
	for p, l := range tr.symlinks {
		if !pred(p) {
			out.symlinks[p] = l
		}
	}
	for p := range tr.exec {
		if !pred(p) {
			out.exec[p] = true
		}
	}
	return out
}

// write materialises the tree in dir.
func (tr tree) write(t testing.TB, dir string) {
	t.Helper()
	for _, d := range tr.dirs {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p, b := range tr.files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := fs.FileMode(0o644)
		if tr.exec[p] {
			mode = 0o755
		}
		if err := os.WriteFile(full, b, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(full, mode); err != nil {
			t.Fatal(err)
		}
	}
	for p, l := range tr.symlinks {
		if err := os.Symlink(l, filepath.Join(dir, p)); err != nil {
			t.Fatal(err)
		}
	}
}

// names lists the entries of folder d (the root is "").
func (tr tree) names(d string) []string {
	var out []string
	add := func(p string) {
		dir, base := "", p
		if i := strings.LastIndexByte(p, '/'); i >= 0 {
			dir, base = p[:i], p[i+1:]
		}
		if dir == d {
			out = append(out, base)
		}
	}
	for p := range tr.files {
		add(p)
	}
	for _, p := range tr.dirs {
		add(p)
	}
	for p := range tr.symlinks {
		add(p)
	}
	sort.Strings(out)
	return out
}

// sub returns the regular files below folder d, with paths relative to
// d's parent (as Extract writes them) or to d itself when keepName is
// false.
func (tr tree) sub(d string, keepName bool) map[string][]byte {
	out := map[string][]byte{}
	for p, b := range tr.files {
		if d == "" || strings.HasPrefix(p, d+"/") {
			rel := p
			if d != "" {
				rel = strings.TrimPrefix(p, d+"/")
				if keepName {
					rel = filepath.Base(d) + "/" + rel
				}
			}
			out[rel] = b
		}
	}
	return out
}

// readTree reads every regular file below dir on the host, failing on
// anything that is not a regular file or folder.
func readTree(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return fmt.Errorf("extracted a symlink: %s", p)
		}
		if d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameFiles(t testing.TB, what string, got, want map[string][]byte) {
	t.Helper()
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			t.Errorf("%s: missing %s", what, p)
			continue
		}
		if !bytes.Equal(g, w) {
			t.Errorf("%s: %s: %d bytes differ from the %d put in", what, p, len(g), len(w))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: unexpected %s", what, p)
		}
	}
}

// ---- building disks ----

// part is a partition to lay out on a test disk.
type part struct {
	start, size int64 // bytes
	mbrType     byte
	gptType     string // canonical GUID text
	name        string
	image       string // file whose bytes fill the partition
	logical     bool   // MBR: inside the extended partition
}

// copyInto writes the file src into f at off, leaving zero blocks as holes.
func copyInto(t testing.TB, f *os.File, off int64, src string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	buf := make([]byte, 64*kib)
	zero := make([]byte, len(buf))
	for pos := int64(0); ; pos += int64(len(buf)) {
		n, err := io.ReadFull(in, buf)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			if _, err := f.WriteAt(buf[:n], off+pos); err != nil {
				t.Fatal(err)
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func mbrEntryBytes(b []byte, boot, typ byte, start, count uint32) {
	b[0] = boot
	b[4] = typ
	binary.LittleEndian.PutUint32(b[8:], start)
	binary.LittleEndian.PutUint32(b[12:], count)
}

// makeMBRDisk writes a raw disk with an MBR. Logical partitions go in one
// extended partition (slot 4) with an EBR one sector before each.
func makeMBRDisk(t testing.TB, path string, size int64, parts []part) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	mbr := make([]byte, 512)
	mbr[510], mbr[511] = 0x55, 0xAA
	slot := 0
	var logical []part
	for _, p := range parts {
		if p.logical {
			logical = append(logical, p)
			continue
		}
		mbrEntryBytes(mbr[446+16*slot:], 0, p.mbrType, uint32(p.start/512), uint32(p.size/512))
		slot++
	}
	if len(logical) > 0 {
		extStart := logical[0].start/512 - 1
		last := logical[len(logical)-1]
		extEnd := (last.start + last.size) / 512
		mbrEntryBytes(mbr[446+16*3:], 0, 0x0F, uint32(extStart), uint32(extEnd-extStart))
		for i, p := range logical {
			ebr := make([]byte, 512)
			ebr[510], ebr[511] = 0x55, 0xAA
			ebrLBA := p.start/512 - 1
			mbrEntryBytes(ebr[446:], 0, p.mbrType, 1, uint32(p.size/512))
			if i+1 < len(logical) {
				next := logical[i+1]
				nextEBR := next.start/512 - 1
				mbrEntryBytes(ebr[446+16:], 0, 0x05, uint32(nextEBR-extStart), uint32((next.start+next.size)/512-nextEBR))
			}
			if _, err := f.WriteAt(ebr, ebrLBA*512); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := f.WriteAt(mbr, 0); err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if p.image != "" {
			copyInto(t, f, p.start, p.image)
		}
	}
}

func guidBytes(s string) []byte {
	s = strings.ReplaceAll(s, "-", "")
	var raw [16]byte
	for i := range raw {
		fmt.Sscanf(s[2*i:2*i+2], "%02X", &raw[i])
	}
	b := make([]byte, 16)
	// first three fields little-endian
	b[0], b[1], b[2], b[3] = raw[3], raw[2], raw[1], raw[0]
	b[4], b[5] = raw[5], raw[4]
	b[6], b[7] = raw[7], raw[6]
	copy(b[8:], raw[8:])
	return b
}

// makeGPTDisk writes a raw disk with a protective MBR, primary and backup
// GPT (512-byte sectors, 128 entries).
func makeGPTDisk(t testing.TB, path string, size int64, parts []part) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, b := range gptStructures(size, parts) {
		if _, err := f.WriteAt(b.data, b.off); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range parts {
		if p.image != "" {
			copyInto(t, f, p.start, p.image)
		}
	}
}

type blob struct {
	off  int64
	data []byte
}

// gptStructures returns the protective MBR, primary header and entries,
// and backup entries and header of a GPT disk of size bytes.
func gptStructures(size int64, parts []part) []blob {
	const ss = 512
	last := size/ss - 1
	mbr := make([]byte, 512)
	mbr[510], mbr[511] = 0x55, 0xAA
	n := uint32(last)
	if last > 0xFFFFFFFF {
		n = 0xFFFFFFFF
	}
	mbrEntryBytes(mbr[446:], 0, 0xEE, 1, n)
	entries := make([]byte, 128*128)
	for i, p := range parts {
		e := entries[128*i:]
		copy(e[0:], guidBytes(p.gptType))
		copy(e[16:], guidBytes(fmt.Sprintf("11111111-2222-3333-4444-%012X", i+1)))
		binary.LittleEndian.PutUint64(e[32:], uint64(p.start/ss))
		binary.LittleEndian.PutUint64(e[40:], uint64((p.start+p.size)/ss-1))
		for k, r := range p.name {
			binary.LittleEndian.PutUint16(e[56+2*k:], uint16(r))
		}
	}
	header := func(my, alt, entriesLBA int64) []byte {
		h := make([]byte, ss)
		copy(h, "EFI PART")
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], 92)
		binary.LittleEndian.PutUint64(h[24:], uint64(my))
		binary.LittleEndian.PutUint64(h[32:], uint64(alt))
		binary.LittleEndian.PutUint64(h[40:], 34)
		binary.LittleEndian.PutUint64(h[48:], uint64(last-33))
		copy(h[56:], guidBytes("AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"))
		binary.LittleEndian.PutUint64(h[72:], uint64(entriesLBA))
		binary.LittleEndian.PutUint32(h[80:], 128)
		binary.LittleEndian.PutUint32(h[84:], 128)
		binary.LittleEndian.PutUint32(h[88:], crc32.ChecksumIEEE(entries))
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
		return h
	}
	return []blob{
		{0, mbr},
		{ss, header(1, last, 2)},
		{2 * ss, entries},
		{(last - 32) * ss, entries},
		{last * ss, header(last, 1, last-32)},
	}
}

// ---- building filesystems ----

func sparseFile(t testing.TB, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// buildExt makes an ext filesystem image from the tree with mke2fs -d.
func buildExt(t testing.TB, dir string, tr tree, size int64, args ...string) string {
	t.Helper()
	src := filepath.Join(dir, "ext-src")
	tr.write(t, src)
	img := filepath.Join(dir, "ext.img")
	sparseFile(t, img, size)
	a := append([]string{"-q", "-F"}, args...)
	a = append(a, "-d", src, img)
	testenv.Run(t, "mke2fs", a...)
	return img
}

// buildFAT makes a FAT image with mkfs.fat and fills it with mcopy.
func buildFAT(t testing.TB, dir string, tr tree, sizeKiB int, args ...string) string {
	t.Helper()
	src := filepath.Join(dir, "fat-src")
	tr.write(t, src)
	img := filepath.Join(dir, "fat.img")
	a := append([]string{"-C"}, args...)
	a = append(a, img, fmt.Sprint(sizeKiB))
	testenv.Run(t, "mkfs.fat", a...)
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	cp := []string{"-s", "-m", "-i", img}
	for _, e := range ents {
		cp = append(cp, filepath.Join(src, e.Name()))
	}
	cp = append(cp, "::/")
	testenv.Run(t, "mcopy", cp...)
	return img
}

// buildXFS makes an XFS image with mkfs.xfs -p protofile.
func buildXFS(t testing.TB, dir string, tr tree, size int64) string {
	t.Helper()
	src := filepath.Join(dir, "xfs-src")
	tr.write(t, src)
	var proto strings.Builder
	proto.WriteString("lifeboat\n0 0\nd--755 0 0\n")
	var walkDir func(host string, depth int)
	walkDir = func(host string, depth int) {
		ents, err := os.ReadDir(host)
		if err != nil {
			t.Fatal(err)
		}
		ind := strings.Repeat(" ", depth)
		for _, e := range ents {
			p := filepath.Join(host, e.Name())
			info, err := os.Lstat(p)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case info.Mode()&fs.ModeSymlink != 0:
				l, _ := os.Readlink(p)
				fmt.Fprintf(&proto, "%s%s l--777 0 0 %s\n", ind, e.Name(), l)
			case info.IsDir():
				fmt.Fprintf(&proto, "%s%s d--755 0 0\n", ind, e.Name())
				walkDir(p, depth+1)
				fmt.Fprintf(&proto, "%s$\n", ind)
			default:
				fmt.Fprintf(&proto, "%s%s ---%03o 0 0 %s\n", ind, e.Name(), info.Mode().Perm(), p)
			}
		}
	}
	walkDir(src, 1)
	proto.WriteString("$\n")
	pf := filepath.Join(dir, "xfs.proto")
	if err := os.WriteFile(pf, []byte(proto.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "xfs.img")
	sparseFile(t, img, size)
	testenv.Run(t, "mkfs.xfs", "-q", "-f", "-L", "lbxfs", "-p", pf, img)
	return img
}

// buildNTFS makes an NTFS image with mkntfs and fills it through an
// ntfs-3g FUSE mount; where FUSE does not work it copies the root's files
// with ntfscp and returns flat=true.
func buildNTFS(t testing.TB, dir string, tr tree, size int64, startSector int64) (img string, flat bool) {
	t.Helper()
	img = filepath.Join(dir, "ntfs.img")
	sparseFile(t, img, size)
	testenv.Run(t, "mkntfs", "-F", "-Q", "-q", "-L", "lbntfs", "-p", fmt.Sprint(startSector), "-H", "255", "-S", "63", img)
	mnt := filepath.Join(dir, "ntfs-mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	ntfs3g := testenv.Tool(t, "ntfs-3g")
	if out, err := exec.Command(ntfs3g, img, mnt).CombinedOutput(); err == nil {
		func() {
			defer unmount(t, mnt)
			tr.write(t, mnt)
			// A Windows-style symlink: a reparse point set through
			// ntfs-3g's extended attribute.
			for p, target := range tr.symlinks {
				if !strings.HasPrefix(p, "win-") {
					continue
				}
				full := filepath.Join(mnt, p)
				os.Remove(full)
				if err := os.WriteFile(full, nil, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := unix.Setxattr(full, "system.ntfs_reparse_data", symlinkReparse(target), 0); err != nil {
					t.Fatalf("set reparse point on %s: %v", p, err)
				}
			}
		}()
		return img, false
	} else {
		t.Logf("ntfs-3g mount failed (%v: %s); NTFS gets root files only", err, out)
	}
	src := filepath.Join(dir, "ntfs-src")
	tr.write(t, src)
	for p := range tr.files {
		if strings.Contains(p, "/") {
			continue
		}
		testenv.Run(t, "ntfscp", "-f", img, filepath.Join(src, p), p)
	}
	return img, true
}

// symlinkReparse is the reparse data of a relative Windows symlink.
func symlinkReparse(target string) []byte {
	u := utf16.Encode([]rune(strings.ReplaceAll(target, "/", "\\")))
	name := make([]byte, 2*len(u))
	for i, c := range u {
		binary.LittleEndian.PutUint16(name[2*i:], c)
	}
	b := make([]byte, 20, 20+2*len(name))
	binary.LittleEndian.PutUint32(b[0:], 0xA000000C)
	binary.LittleEndian.PutUint16(b[4:], uint16(12+2*len(name)))
	binary.LittleEndian.PutUint16(b[8:], 0)                  // substitute name offset
	binary.LittleEndian.PutUint16(b[10:], uint16(len(name))) // substitute name length
	binary.LittleEndian.PutUint16(b[12:], uint16(len(name))) // print name offset
	binary.LittleEndian.PutUint16(b[14:], uint16(len(name))) // print name length
	binary.LittleEndian.PutUint32(b[16:], 1)                 // relative
	b = append(b, name...)
	return append(b, name...)
}

func unmount(t testing.TB, mnt string) {
	t.Helper()
	var last []byte
	for i := 0; i < 50; i++ {
		out, err := exec.Command("fusermount", "-u", mnt).CombinedOutput()
		if err != nil {
			out2, err2 := exec.Command("umount", mnt).CombinedOutput()
			if err2 == nil {
				return
			}
			last = append(out, out2...)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		return
	}
	t.Fatalf("unmount %s: %s", mnt, last)
}

// flatten keeps the root's files only.
func (tr tree) flatten() tree {
	return tr.without(func(p string) bool { return strings.Contains(p, "/") })
}

// ---- checks shared by every filesystem ----

type fsCase struct {
	name  string
	fsys  FS
	tree  tree
	fold  bool     // names match case-insensitively (NTFS, FAT)
	extra []string // root names made by the mkfs tool (lost+found)
}

func checkFS(t *testing.T, c fsCase) {
	ctx := context.Background()
	fsys, tr := c.fsys, c.tree
	t.Run(c.name, func(t *testing.T) {
		// Listings.
		for _, d := range append([]string{""}, tr.dirs...) {
			es, err := fsys.ReadDir(d)
			if err != nil {
				t.Fatalf("ReadDir(%q): %v", d, err)
			}
			var got []string
			for _, e := range es {
				got = append(got, e.Name)
				if e.Invalid != "" {
					t.Errorf("%q listed as invalid: %s", e.Name, e.Invalid)
				}
				want := e.Name
				if d != "" {
					want = d + "/" + e.Name
				}
				if e.Path != want {
					t.Errorf("entry path %q, want %q", e.Path, want)
				}
				if e.IsDir && e.ID == 0 {
					t.Errorf("directory %q has no ID (Walk cannot break cycles)", e.Path)
				}
			}
			want := tr.names(d)
			if d == "" && len(c.extra) > 0 {
				want = append(want, c.extra...)
				sort.Strings(want)
			}
			if strings.Join(got, "|") != strings.Join(want, "|") {
				t.Errorf("ReadDir(%q) = %q, want %q", d, got, want)
			}
		}
		// Every file reads back byte for byte; sizes and kinds agree.
		for p, want := range tr.files {
			e, err := fsys.Stat(p)
			if err != nil {
				t.Fatalf("Stat(%q): %v", p, err)
			}
			if e.IsDir || e.Size != int64(len(want)) || !e.IsRegular() {
				t.Errorf("Stat(%q) = dir %v size %d regular %v, want a file of %d", p, e.IsDir, e.Size, e.IsRegular(), len(want))
			}
			if tr.exec[p] && e.Mode&0o100 == 0 {
				t.Errorf("%s: mode %v lost the exec bit", p, e.Mode)
			}
			if e.ModTime.IsZero() || e.ModTime.Before(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)) {
				t.Errorf("%s: mtime %v", p, e.ModTime)
			}
			f, err := fsys.Open(p)
			if err != nil {
				t.Fatalf("Open(%q): %v", p, err)
			}
			got, err := io.ReadAll(f)
			f.Close()
			if err != nil {
				t.Fatalf("read %q: %v", p, err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s: read %d bytes that differ from the %d put in", p, len(got), len(want))
			}
		}
		// Concurrent use: every file read at once, with listings.
		var wg sync.WaitGroup
		errs := make(chan error, 2*len(tr.files))
		for p, want := range tr.files {
			wg.Add(2)
			go func() {
				defer wg.Done()
				f, err := fsys.Open(p)
				if err != nil {
					errs <- err
					return
				}
				defer f.Close()
				got, err := io.ReadAll(f)
				if err == nil && !bytes.Equal(got, want) {
					err = fmt.Errorf("%s: concurrent read differs", p)
				}
				if err != nil {
					errs <- err
				}
			}()
			go func() {
				defer wg.Done()
				if _, err := fsys.ReadDir("Docs/Sub"); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}

		// Random access into the big file, forwards and backwards.
		if f, err := fsys.Open("big.bin"); err != nil {
			t.Fatal(err)
		} else {
			want := tr.files["big.bin"]
			for _, off := range []int64{0, 4095, mib + 17, 3 * mib, 100, int64(len(want)) - 10, 5} {
				buf := make([]byte, 70000)
				n, err := f.ReadAt(buf, off)
				end := min(off+int64(len(buf)), int64(len(want)))
				if int64(n) != end-off || !bytes.Equal(buf[:n], want[off:end]) || (end < off+int64(len(buf)) && err != io.EOF) || (end == off+int64(len(buf)) && err != nil) {
					t.Errorf("ReadAt(%d) = %d, %v; want %d bytes", off, n, err, end-off)
				}
			}
			if n, err := f.ReadAt(make([]byte, 10), int64(len(want))); n != 0 || err != io.EOF {
				t.Errorf("ReadAt(size) = %d, %v", n, err)
			}
			f.Close()
		}
		for p, target := range tr.symlinks {
			e, err := fsys.Stat(p)
			if err != nil {
				t.Fatalf("Stat(%q): %v", p, err)
			}
			if !e.IsSymlink {
				t.Errorf("%s: not reported as a symlink: %+v", p, e)
			}
			if e.LinkTarget != target {
				t.Errorf("%s: link target %q, want %q", p, e.LinkTarget, target)
			}
			if _, err := fsys.Open(p); !errors.Is(err, ErrNotRegular) {
				t.Errorf("Open(symlink %s) = %v, want ErrNotRegular", p, err)
			}
		}
		if _, err := fsys.Open("Docs"); !errors.Is(err, ErrIsDir) {
			t.Errorf("Open(Docs) = %v, want ErrIsDir", err)
		}
		if _, err := fsys.Stat("nope/x"); !errors.Is(err, ErrNotExist) || !strings.Contains(err.Error(), fsys.Volume().String()+": stat /nope/x: ") {
			t.Errorf("Stat(nope/x) = %v, want ErrNotExist naming the volume and path", err)
		}
		if _, err := fsys.Stat("Docs/../hello.txt"); !errors.Is(err, ErrInvalidPath) {
			t.Errorf("Stat with .. = %v, want ErrInvalidPath", err)
		}
		if e, err := fsys.Stat("/Docs/Sub/"); err != nil || !e.IsDir {
			t.Errorf("Stat(/Docs/Sub/) = %+v, %v", e, err)
		}
		if c.fold {
			if e, err := fsys.Stat("docs/REPORT.txt"); err != nil || e.Name != "report.TXT" || e.Path != "Docs/report.TXT" {
				t.Errorf("case-insensitive Stat = %+v, %v", e, err)
			}
		}
		// Find.
		found, err := Find(ctx, fsys, "", "report.txt", FindOptions{CaseInsensitive: true})
		if err != nil || len(found) != 1 || found[0].Path != "Docs/report.TXT" {
			t.Errorf("Find(report.txt, case-insensitive) = %+v, %v", found, err)
		}
		found, err = Find(ctx, fsys, "", "report.txt", FindOptions{})
		if err != nil || len(found) != 0 {
			t.Errorf("Find(report.txt, case-sensitive) = %+v, %v", found, err)
		}
		found, err = Find(ctx, fsys, "/", "*.txt", FindOptions{})
		var wantTxt []string
		for p := range tr.files {
			if strings.HasSuffix(p, ".txt") {
				wantTxt = append(wantTxt, p)
			}
		}
		var gotTxt []string
		for _, e := range found {
			gotTxt = append(gotTxt, e.Path)
		}
		sort.Strings(wantTxt)
		sort.Strings(gotTxt)
		if err != nil || strings.Join(gotTxt, "|") != strings.Join(wantTxt, "|") {
			t.Errorf("Find(*.txt) = %q, %v; want %q", gotTxt, err, wantTxt)
		}
		found, _ = Find(ctx, fsys, "", "*", FindOptions{MaxResults: 2})
		if len(found) != 2 {
			t.Errorf("Find with MaxResults 2 found %d", len(found))
		}
		found, _ = Find(ctx, fsys, "", "sub", FindOptions{CaseInsensitive: true, Dirs: true})
		if len(found) != 1 || found[0].Path != "Docs/Sub" || !found[0].IsDir {
			t.Errorf("Find(sub, dirs) = %+v", found)
		}

		// Extract one file.
		dst := t.TempDir()
		res, err := Extract(ctx, fsys, "Docs/report.TXT", dst, ExtractOptions{})
		if err != nil {
			t.Fatalf("Extract(file): %v", err)
		}
		sameFiles(t, "extract file", readTree(t, dst), map[string][]byte{"report.TXT": tr.files["Docs/report.TXT"]})
		if res.Files != 1 || res.Bytes != int64(len(tr.files["Docs/report.TXT"])) {
			t.Errorf("Extract(file) result %+v", res)
		}
		if fi, err := os.Stat(filepath.Join(dst, "report.TXT")); err == nil {
			st, _ := fsys.Stat("Docs/report.TXT")
			if !fi.ModTime().Equal(st.ModTime) {
				t.Errorf("extracted mtime %v, guest mtime %v", fi.ModTime(), st.ModTime)
			}
		}
		// A second extraction into the same folder refuses to overwrite,
		// and replaces with Overwrite.
		if _, err := Extract(ctx, fsys, "Docs/report.TXT", dst, ExtractOptions{}); err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Errorf("second Extract without Overwrite: %v", err)
		}
		if _, err := Extract(ctx, fsys, "Docs/report.TXT", dst, ExtractOptions{Overwrite: true}); err != nil {
			t.Errorf("Extract with Overwrite: %v", err)
		}
		sameFiles(t, "extract file twice", readTree(t, dst), map[string][]byte{"report.TXT": tr.files["Docs/report.TXT"]})

		// Extract a folder.
		dst = t.TempDir()
		res, err = Extract(ctx, fsys, "/Docs", dst, ExtractOptions{})
		if err != nil {
			t.Fatalf("Extract(folder): %v", err)
		}
		sameFiles(t, "extract folder", readTree(t, dst), tr.sub("Docs", true))
		wantSkipped := 0
		for p := range tr.symlinks {
			if strings.HasPrefix(p, "Docs/") {
				wantSkipped++
			}
		}
		if len(res.Skipped) != wantSkipped {
			t.Errorf("Extract(folder) skipped %+v, want %d symlinks", res.Skipped, wantSkipped)
		}

		// Extract everything.
		dst = t.TempDir()
		res, err = Extract(ctx, fsys, "", dst, ExtractOptions{})
		if err != nil {
			t.Fatalf("Extract(root): %v", err)
		}
		sameFiles(t, "extract root", readTree(t, dst), tr.files)
		if fi, err := os.Stat(filepath.Join(dst, "EmptyDir")); err != nil || !fi.IsDir() {
			t.Errorf("EmptyDir not extracted: %v", err)
		}
		if res.Files != len(tr.files) || len(res.Skipped) != len(tr.symlinks) {
			t.Errorf("Extract(root) = %d files, skipped %+v; want %d files, %d skipped", res.Files, res.Skipped, len(tr.files), len(tr.symlinks))
		}
		for p := range tr.exec {
			if fi, err := os.Stat(filepath.Join(dst, p)); err != nil || fi.Mode()&0o100 == 0 {
				t.Errorf("%s: exec bit not kept on extraction", p)
			}
		}

		// Tar of a folder and a file.
		var buf bytes.Buffer
		res, err = WriteTar(ctx, fsys, []string{"Docs", "hello.txt", "Docs/Sub"}, &buf)
		if err != nil {
			t.Fatalf("WriteTar: %v", err)
		}
		want := tr.sub("Docs", true)
		want["hello.txt"] = tr.files["hello.txt"]
		for p, b := range tr.sub("Docs/Sub", true) {
			want[p] = b
		}
		sameFiles(t, "tar", readTar(t, buf.Bytes()), want)
	})
}

// readTar reads a tar stream's regular files, checking that every name is
// relative and free of "..".
func readTar(t testing.TB, b []byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if !filepath.IsLocal(h.Name) || strings.Contains(h.Name, "\\") {
			t.Errorf("tar name %q is not local", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
		case tar.TypeReg:
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			out[h.Name] = data
		default:
			t.Errorf("tar entry %q of type %c", h.Name, h.Typeflag)
		}
	}
}
