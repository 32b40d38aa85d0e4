package itemlevel

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/disk/qcow2"
	"lifeboat/internal/testenv"
)

const (
	gptBasicData = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
	gptLinuxFS   = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
)

var lostFound = []string{"lost+found"}

func openFile(t *testing.T, path string) (*os.File, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return f, fi.Size()
}

func mustOpenFS(t *testing.T, r interface {
	ReadAt([]byte, int64) (int, error)
}, v Volume) FS {
	t.Helper()
	fsys, err := OpenFS(context.Background(), r, v)
	if err != nil {
		t.Fatalf("OpenFS(%s): %v", v, err)
	}
	t.Cleanup(func() { fsys.Close() })
	return fsys
}

// mbrDisk builds a disk with an MBR: NTFS as primary 1, ext4 as logical 5.
func mbrDisk(t *testing.T, dir string) (path string, ntfsTree, extTree tree) {
	ntfsDir, extDir := filepath.Join(dir, "n"), filepath.Join(dir, "e")
	os.Mkdir(ntfsDir, 0o755)
	os.Mkdir(extDir, 0o755)
	const (
		ntfsStart = 1 * mib
		ntfsSize  = 40 * mib
		extStart  = ntfsStart + ntfsSize + 1*mib
		extSize   = 48 * mib
	)
	ntfsTree = sampleTree(true)
	ntfsTree.symlinks["win-link"] = "Docs/report.TXT"
	ntfsImg, flat := buildNTFS(t, ntfsDir, ntfsTree, ntfsSize, ntfsStart/512)
	if flat {
		ntfsTree = ntfsTree.flatten()
		ntfsTree.symlinks = map[string]string{}
	}
	// ntfs-3g stores symlinks as reparse points; their targets are not
	// decoded, and exec bits do not exist.
	ntfsTree.exec = map[string]bool{}
	extTree = sampleTree(true)
	extImg := buildExt(t, extDir, extTree, extSize, "-t", "ext4", "-L", "lbext")
	path = filepath.Join(dir, "mbr.raw")
	makeMBRDisk(t, path, extStart+extSize+1*mib, []part{
		{start: ntfsStart, size: ntfsSize, mbrType: 0x07, image: ntfsImg},
		{start: extStart, size: extSize, mbrType: 0x83, image: extImg, logical: true},
	})
	return path, ntfsTree, extTree
}

func TestMBRDiskNTFSAndExt4(t *testing.T) {
	dir := t.TempDir()
	path, ntfsTree, extTree := mbrDisk(t, dir)
	f, size := openFile(t, path)
	vols, err := OpenVolumes(context.Background(), f, size)
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 2 {
		t.Fatalf("volumes %+v", vols)
	}
	n, e := vols[0], vols[1]
	if n.Index != 1 || n.Scheme != SchemeMBR || n.FS != FSNTFS || n.Type != "0x07" || n.Start != mib || n.Length != 40*mib {
		t.Errorf("NTFS volume %+v", n)
	}
	if e.Index != 5 || e.FS != FSExt4 || e.Type != "0x83" || e.Label != "lbext" || e.Start != 42*mib || e.Length != 48*mib {
		t.Errorf("ext4 volume %+v", e)
	}
	checkFS(t, fsCase{name: "ntfs", fsys: mustOpenFS(t, f, n), tree: ntfsTree, fold: true})
	checkFS(t, fsCase{name: "ext4", fsys: mustOpenFS(t, f, e), tree: extTree, extra: lostFound})
}

func gptDisk(t *testing.T, dir string) (path string, fatTree, xfsTree tree) {
	fatDir, xfsDir := filepath.Join(dir, "f"), filepath.Join(dir, "x")
	os.Mkdir(fatDir, 0o755)
	os.Mkdir(xfsDir, 0o755)
	const (
		fatStart = 1 * mib
		fatSize  = 64 * mib
		xfsStart = fatStart + fatSize
		xfsSize  = 300 * mib
	)
	fatTree = sampleTree(false)
	fatImg := buildFAT(t, fatDir, fatTree, fatSize/kib, "-F", "32", "-n", "LBFAT")
	// Protofile tokens are separated by spaces.
	xfsTree = sampleTree(true).without(func(p string) bool { return strings.Contains(p, " ") })
	xfsImg := buildXFS(t, xfsDir, xfsTree, xfsSize)
	path = filepath.Join(dir, "gpt.raw")
	makeGPTDisk(t, path, xfsStart+xfsSize+1*mib, []part{
		{start: fatStart, size: fatSize, gptType: gptBasicData, name: "data", image: fatImg},
		{start: xfsStart, size: xfsSize, gptType: gptLinuxFS, name: "linux", image: xfsImg},
	})
	return path, fatTree, xfsTree
}

func TestGPTDiskFATAndXFS(t *testing.T) {
	dir := t.TempDir()
	path, fatTree, xfsTree := gptDisk(t, dir)
	f, size := openFile(t, path)
	vols, err := OpenVolumes(context.Background(), f, size)
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 2 {
		t.Fatalf("volumes %+v", vols)
	}
	a, x := vols[0], vols[1]
	if a.Index != 1 || a.Scheme != SchemeGPT || a.FS != FSFAT || a.Type != gptBasicData || a.TypeName != "Microsoft basic data" || a.Name != "data" || a.Label != "LBFAT" || a.Start != mib || a.Length != 64*mib {
		t.Errorf("FAT volume %+v", a)
	}
	if x.Index != 2 || x.FS != FSXFS || x.Type != gptLinuxFS || x.Label != "lbxfs" || x.GUID != "11111111-2222-3333-4444-000000000002" {
		t.Errorf("XFS volume %+v", x)
	}
	checkFS(t, fsCase{name: "fat32", fsys: mustOpenFS(t, f, a), tree: fatTree, fold: true})
	checkFS(t, fsCase{name: "xfs", fsys: mustOpenFS(t, f, x), tree: xfsTree})
}

// TestQcow2 reads both test disks through lifeboat's qcow2 reader, a
// disk.Image that is not a plain file.
func TestQcow2(t *testing.T) {
	dir := t.TempDir()
	mbrPath, ntfsTree, extTree := mbrDisk(t, filepath.Join(dir))
	gdir := filepath.Join(dir, "g")
	os.Mkdir(gdir, 0o755)
	gptPath, fatTree, xfsTree := gptDisk(t, gdir)
	ctx := context.Background()
	trees := map[string]tree{FSNTFS: ntfsTree, FSExt4: extTree, FSFAT: fatTree, FSXFS: xfsTree}
	for _, p := range []string{mbrPath, gptPath} {
		q := p + ".qcow2"
		testenv.Run(t, "qemu-img", "convert", "-O", "qcow2", p, q)
		img, err := qcow2.Open(ctx, q, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		vols, err := OpenVolumes(ctx, img, img.Size())
		if err != nil {
			t.Fatal(err)
		}
		if len(vols) != 2 {
			t.Fatalf("%s: volumes %+v", q, vols)
		}
		for _, v := range vols {
			var extra []string
			if v.FS == FSExt4 {
				extra = lostFound
			}
			checkFS(t, fsCase{name: "qcow2-" + v.FS, fsys: mustOpenFS(t, img, v), tree: trees[v.FS], fold: v.FS == FSNTFS || v.FS == FSFAT, extra: extra})
		}
	}
}

// TestWholeDiskFilesystems opens filesystems written to a disk without a
// partition table, in the variants not covered above: ext2 (indirect
// block maps, 1 KiB blocks), ext3, ext4 with 4 KiB blocks and inline data,
// FAT12 and FAT16.
func TestWholeDiskFilesystems(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name  string
		fs    string
		build func(dir string, tr tree) string
		fold  bool
		unix  bool
	}{
		{"ext2", FSExt4, func(dir string, tr tree) string {
			return buildExt(t, dir, tr, 32*mib, "-t", "ext2", "-b", "1024")
		}, false, true},
		{"ext3", FSExt4, func(dir string, tr tree) string {
			return buildExt(t, dir, tr, 32*mib, "-t", "ext3", "-b", "2048")
		}, false, true},
		{"ext4-inline-64bit", FSExt4, func(dir string, tr tree) string {
			return buildExt(t, dir, tr, 64*mib, "-t", "ext4", "-b", "4096", "-O", "inline_data,64bit,^resize_inode", "-E", "num_backup_sb=0", "-I", "512")
		}, false, true},
		{"fat12", FSFAT, func(dir string, tr tree) string {
			return buildFAT(t, dir, tr, 8*1024, "-F", "12")
		}, true, false},
		{"fat16", FSFAT, func(dir string, tr tree) string {
			return buildFAT(t, dir, tr, 32*1024, "-F", "16")
		}, true, false},
	}
	for _, c := range cases {
		dir := t.TempDir()
		tr := sampleTree(c.unix)
		img := c.build(dir, tr)
		f, size := openFile(t, img)
		vols, err := OpenVolumes(ctx, f, size)
		if err != nil {
			t.Fatal(err)
		}
		if len(vols) != 1 || vols[0].Index != 0 || vols[0].Scheme != SchemeNone || vols[0].FS != c.fs || vols[0].Length != size {
			t.Fatalf("%s: volumes %+v", c.name, vols)
		}
		var extra []string
		if c.fs == FSExt4 {
			extra = lostFound
		}
		checkFS(t, fsCase{name: c.name, fsys: mustOpenFS(t, f, vols[0]), tree: tr, fold: c.fold, extra: extra})
	}
}
