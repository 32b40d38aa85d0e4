package qcow2

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/disk"
	"lifeboat/internal/testenv"
)

// Images qemu-img converts from one source must read back bit for bit.
func TestReadQemuImages(t *testing.T) {
	testenv.Tool(t, "qemu-img")
	dir := t.TempDir()
	const size = 9*mib + 3*512 // a partial last cluster for every size
	src := source(size, 1)
	srcPath := filepath.Join(dir, "src.raw")
	writeFile(t, srcPath, src)
	cases := []struct {
		name    string
		args    []string
		sub     string
		cluster int64
	}{
		{"v2", []string{"-o", "compat=0.10"}, "v2", 64 * kib},
		{"v3-4k", []string{"-o", "cluster_size=4096"}, "v3", 4 * kib},
		{"v3-64k", nil, "v3", 64 * kib},
		{"v3-2m", []string{"-o", "cluster_size=2M"}, "v3", 2 * mib},
		{"v3-512", []string{"-o", "cluster_size=512"}, "v3", 512},
		{"zlib", []string{"-c"}, "v3", 64 * kib},
		{"zlib-v2-4k", []string{"-c", "-o", "compat=0.10,cluster_size=4096"}, "v2", 4 * kib},
		{"zstd", []string{"-c", "-o", "compression_type=zstd"}, "v3", 64 * kib},
		{"zstd-2m", []string{"-c", "-o", "compression_type=zstd,cluster_size=2M"}, "v3", 2 * mib},
		{"extended-l2", []string{"-o", "extended_l2=on"}, "v3", 64 * kib},
		{"extended-l2-zstd", []string{"-c", "-o", "extended_l2=on,compression_type=zstd,cluster_size=128k"}, "v3", 128 * kib},
		{"prealloc-metadata", []string{"-o", "preallocation=metadata"}, "v3", 64 * kib},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.name+".qcow2")
			args := append([]string{"convert", "-f", "raw", "-O", "qcow2"}, c.args...)
			testenv.Run(t, "qemu-img", append(args, srcPath, path)...)
			got := compareWithQemu(t, path)
			if sum(got) != sum(src) {
				t.Fatalf("content differs from the source at %d", firstDiff(got, src))
			}
			img, err := Open(context.Background(), path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if in := img.Info(); in.Subformat != c.sub || in.ClusterSize != c.cluster || in.Size != size || in.ParentPath != "" {
				t.Errorf("info %+v, want subformat %s cluster %d size %d", in, c.sub, c.cluster, size)
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// qemuIO runs qemu-io commands against path.
func qemuIO(t *testing.T, path, format string, cmds ...string) {
	t.Helper()
	args := []string{"-f", format}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := testenv.Run(t, "qemu-io", append(args, path)...)
	if strings.Contains(out, "error") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io %v: %s", cmds, out)
	}
}

// A 3-deep chain made by qemu: every layer reads like qemu reads it, zero
// clusters hide the base, and a larger overlay reads zeros past a smaller
// base.
func TestReadQemuChain(t *testing.T) {
	testenv.Tool(t, "qemu-img")
	testenv.Tool(t, "qemu-io")
	cases := []struct {
		name       string
		baseFormat string
		overlayOpt string
		absolute   bool // top refers to mid by absolute path
	}{
		{"raw-base", "raw", "", false},
		{"qcow2-base", "qcow2", "", true},
		{"v2-overlays", "qcow2", "compat=0.10", false},
		{"extended-l2", "qcow2", "extended_l2=on", false},
		{"zstd-4k", "qcow2", "compression_type=zstd,cluster_size=4k", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			base := filepath.Join(dir, "base."+c.baseFormat)
			testenv.Run(t, "qemu-img", "create", "-q", "-f", c.baseFormat, base, "8M")
			qemuIO(t, base, c.baseFormat, "write -P 0x11 0 6M", "write -P 0x12 7M 512k")
			mid := filepath.Join(dir, "mid.qcow2")
			opts := "backing_file=base." + c.baseFormat + ",backing_fmt=" + c.baseFormat
			if c.overlayOpt != "" {
				opts += "," + c.overlayOpt
			}
			testenv.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, mid, "10M")
			writes := []string{
				"write -P 0x21 1M 64k",
				"write -z 2M 1M", // zero clusters hiding the base
				"write -P 0x22 100k 3k",
				"write -P 0x23 9M 64k", // past the base's end
				"write -z 3M 4k",
				"write -P 0x25 6146k 2k", // one odd subcluster
				"write -z 6150k 2k",
			}
			if !strings.Contains(c.overlayOpt, "compat=0.10") {
				writes = append(writes, "write -c -P 0x24 4M 128k")
			}
			qemuIO(t, mid, "qcow2", writes...)
			top := filepath.Join(dir, "top.qcow2")
			backing := "mid.qcow2"
			if c.absolute {
				backing = mid
			}
			opts = "backing_file=" + backing + ",backing_fmt=qcow2"
			if c.overlayOpt != "" {
				opts += "," + c.overlayOpt
			}
			testenv.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, top, "10M")
			qemuIO(t, top, "qcow2", "write -P 0x31 2112k 4k", "write -z 0 128k", "write -P 0x32 5M 1M", "write -z 7M 64k", "write -P 0x33 8198k 2k", "write -z 6148k 2k")
			compareWithQemu(t, mid)
			got := compareWithQemu(t, top)
			img, err := Open(context.Background(), top, opener())
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if img.Parent() == nil || img.Parent().Parent() == nil {
				t.Fatal("chain is not 3 deep")
			}
			if pp := img.Info().ParentPath; pp != backing {
				t.Errorf("ParentPath %q, want %q", pp, backing)
			}
			// Spot checks that do not depend on qemu being right.
			for _, x := range []struct {
				off  int64
				want byte
			}{{0, 0}, {200 * kib, 0x11}, {1 * mib, 0x21}, {2*mib + 4*kib, 0}, {2112 * kib, 0x31}, {5 * mib, 0x32}, {7 * mib, 0}, {7*mib + 64*kib, 0x12}, {8*mib + 1, 0}, {9 * mib, 0x23}} {
				if got[x.off] != x.want {
					t.Errorf("byte at %d is %#x, want %#x", x.off, got[x.off], x.want)
				}
			}
		})
	}
}

// Images our writer makes must pass qemu-img check, have the exact size,
// and convert to the bytes we wrote.
func TestWriterQemu(t *testing.T) {
	testenv.Tool(t, "qemu-img")
	cases := []struct {
		name    string
		size    int64
		cluster int64
	}{
		{"4k", 5*mib + 512, 4 * kib},
		{"64k", 20 * mib, 0},
		{"2m", 9*mib + 3*512, 2 * mib},
		{"tiny", 512, 64 * kib},
		{"empty", 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "w.qcow2")
			w, err := Create(ctx, path, disk.CreateOptions{Size: c.size, ClusterSize: c.cluster})
			if err != nil {
				t.Fatal(err)
			}
			ref := make([]byte, c.size)
			src := source(c.size, 7)
			ws := [][2]int64{ // offset, length; all 512-aligned
				{0, c.size}, // everything, zeros included
				{512, 1024}, // overwrite inside allocated clusters
				{c.size / 3 / 512 * 512, min(c.size/4, 3*mib) / 512 * 512},
			}
			for i, x := range ws {
				if x[0]+x[1] > c.size {
					continue
				}
				p := src[x[0] : x[0]+x[1]]
				if i == 2 {
					p = make([]byte, x[1]) // zero overwrite of data
				}
				if _, err := w.WriteAt(p, x[0]); err != nil {
					t.Fatal(err)
				}
				copy(ref[x[0]:], p)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			out := testenv.Run(t, "qemu-img", "check", path)
			if !strings.Contains(out, "No errors were found") {
				t.Fatalf("qemu-img check: %s", out)
			}
			var info struct {
				VirtualSize int64 `json:"virtual-size"`
				ClusterSize int64 `json:"cluster-size"`
			}
			if err := json.Unmarshal([]byte(testenv.Run(t, "qemu-img", "info", "--output=json", path)), &info); err != nil {
				t.Fatal(err)
			}
			wantCluster := c.cluster
			if wantCluster == 0 {
				wantCluster = defaultClusterSize
			}
			if info.VirtualSize != c.size || info.ClusterSize != wantCluster {
				t.Fatalf("qemu-img info: %+v, want size %d", info, c.size)
			}
			if g, w := qemuRawSum(t, path), sum(ref); g != w {
				t.Fatalf("qemu reads sha256 %s, we wrote %s", g, w)
			}
			if got := compareWithQemu(t, path); sum(got) != sum(ref) {
				t.Fatal("our reader differs from what we wrote")
			}
		})
	}
}

// An overlay we write on a qemu-made base must read right in qemu, with
// partial clusters filled from the base and zeros hiding it.
func TestWriterOverlayOnQemuBase(t *testing.T) {
	testenv.Tool(t, "qemu-img")
	testenv.Tool(t, "qemu-io")
	cases := []struct {
		name, baseFormat string
		cluster          int64
	}{
		{"qcow2-base", "qcow2", 0},
		{"raw-base", "raw", 0},
		{"qcow2-base-4k", "qcow2", 4 * kib},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			base := filepath.Join(dir, "base."+c.baseFormat)
			testenv.Run(t, "qemu-img", "create", "-q", "-f", c.baseFormat, base, "6M")
			qemuIO(t, base, c.baseFormat, "write -P 0x41 0 5M", "write -P 0x42 5M 512k")
			const size = 8 * mib
			ref := make([]byte, size)
			parent, err := opener()(ctx, []string{base})
			if err != nil {
				t.Fatal(err)
			}
			defer parent.Close()
			if _, err := parent.ReadAt(ref[:parent.Size()], 0); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "over.qcow2")
			w, err := Create(ctx, path, disk.CreateOptions{
				Size: size, ClusterSize: c.cluster, ParentPath: filepath.Base(base),
				ParentFormat: disk.Format(c.baseFormat), Parent: parent,
			})
			if err != nil {
				t.Fatal(err)
			}
			fill := func(n int64, b byte) []byte {
				p := make([]byte, n)
				for i := range p {
					p[i] = b
				}
				return p
			}
			ws := []struct {
				off int64
				p   []byte
			}{
				{0, fill(128*kib, 0x51)},           // whole clusters
				{mib + 512, fill(1024, 0x52)},      // partial: rest from the base
				{2 * mib, make([]byte, 256*kib)},   // whole zero clusters
				{3*mib + 4096, make([]byte, 4096)}, // partial zeros
				{3*mib + 4096, fill(512, 0x53)},    // then data into them
				{5*mib + 256*kib, fill(512*kib, 0x54)},
				{7 * mib, fill(4096, 0x55)}, // past the base's end
				{4 * mib, make([]byte, 64*kib)},
				{4 * mib, fill(512, 0x56)}, // data into a zero cluster
			}
			for _, x := range ws {
				if _, err := w.WriteAt(x.p, x.off); err != nil {
					t.Fatal(err)
				}
				copy(ref[x.off:], x.p)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			out := testenv.Run(t, "qemu-img", "check", path)
			if !strings.Contains(out, "No errors were found") {
				t.Fatalf("qemu-img check: %s", out)
			}
			if g, w := qemuRawSum(t, path), sum(ref); g != w {
				t.Fatalf("qemu reads sha256 %s, want %s", g, w)
			}
			if got := compareWithQemu(t, path); sum(got) != sum(ref) {
				t.Fatalf("our reader differs at %d", firstDiff(got, ref))
			}
			// qemu can write on top of our overlay and still read it.
			top := filepath.Join(dir, "top.qcow2")
			testenv.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "backing_file=over.qcow2,backing_fmt=qcow2", top, fmt.Sprint(size))
			qemuIO(t, top, "qcow2", "write -P 0x61 64k 4k")
			compareWithQemu(t, top)
		})
	}
}

// A partial write in an overlay without its parent cannot be completed.
func TestWriterPartialWithoutParent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "o.qcow2")
	w, err := Create(context.Background(), path, disk.CreateOptions{Size: mib, ParentPath: "base.raw", ParentFormat: disk.Raw})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cases := []struct {
		name    string
		off     int64
		n       int
		wantErr bool
	}{
		{"whole", 0, 64 * kib, false},
		{"partial", 128 * kib, 512, true},
	}
	for _, c := range cases {
		p := make([]byte, c.n)
		p[0] = 1
		_, err := w.WriteAt(p, c.off)
		if (err != nil) != c.wantErr {
			t.Errorf("%s: err %v, want error %v", c.name, err, c.wantErr)
		}
	}
	os.Remove(path)
}

// ReadAt may be called from several goroutines: the L2 cache and the
// decompressed-cluster cache must not mix up their results.
func TestConcurrentReads(t *testing.T) {
	testenv.Tool(t, "qemu-img")
	dir := t.TempDir()
	src := source(6*mib, 3)
	srcPath := filepath.Join(dir, "src.raw")
	writeFile(t, srcPath, src)
	cases := []struct {
		name string
		args []string
	}{
		{"zlib-4k", []string{"-c", "-o", "cluster_size=4k"}},
		{"zstd", []string{"-c", "-o", "compression_type=zstd"}},
		{"plain-512", []string{"-o", "cluster_size=512"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.name+".qcow2")
			args := append([]string{"convert", "-f", "raw", "-O", "qcow2"}, c.args...)
			testenv.Run(t, "qemu-img", append(args, srcPath, path)...)
			img, err := Open(context.Background(), path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			errs := make(chan error, 4)
			for g := range 4 {
				go func() {
					buf := make([]byte, 70*kib)
					for i := range 300 {
						off := int64((g*7919 + i*104729) % (6*mib - 70*kib))
						if _, err := img.ReadAt(buf, off); err != nil {
							errs <- err
							return
						}
						if sum(buf) != sum(src[off:off+70*kib]) {
							errs <- fmt.Errorf("read at %d differs", off)
							return
						}
					}
					errs <- nil
				}()
			}
			for range 4 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
