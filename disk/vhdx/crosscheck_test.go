package vhdx

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"lifeboat/disk"
	"lifeboat/disk/disktest"
	"lifeboat/internal/testenv"
)

// pattern is deterministic non-repeating data, so that misplaced sectors
// show up.
func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// TestWriterQemu checks images this package writes with qemu-img: exact
// size and block size, a clean check, and identical converted bytes.
func TestWriterQemu(t *testing.T) {
	testenv.Tool(t, "qemu-img")
	cases := []struct {
		name string
		opts disk.CreateOptions
	}{
		{"dynamic-default", disk.CreateOptions{Size: 64 * mib}},
		{"dynamic-1M-odd", disk.CreateOptions{Size: 37*mib + 3*512, ClusterSize: 1 * mib}},
		{"dynamic-32M", disk.CreateOptions{Size: 100 * mib, ClusterSize: 32 * mib}},
		{"fixed", disk.CreateOptions{Size: 20*mib + 512, Fixed: true}},
		{"empty", disk.CreateOptions{Size: 16 * mib}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "w.vhdx")
			writes := map[int64][]byte{}
			if c.name != "empty" {
				writes[0] = pattern(1, 4096)
				writes[3*mib+512] = pattern(2, 3*mib)
				writes[c.opts.Size-1024] = pattern(3, 1024)
				writes[10*mib] = make([]byte, mib) // zeros: stay sparse
			}
			ref := writeImage(t, path, c.opts, writes)

			var info struct {
				VirtualSize int64  `json:"virtual-size"`
				ClusterSize int64  `json:"cluster-size"`
				Format      string `json:"format"`
			}
			out := testenv.Run(t, "qemu-img", "info", "--output=json", "-f", "vhdx", path)
			if err := json.Unmarshal([]byte(out), &info); err != nil {
				t.Fatal(err)
			}
			block := c.opts.ClusterSize
			if block == 0 {
				block = DefaultBlockSize
			}
			if info.VirtualSize != c.opts.Size || info.ClusterSize != block || info.Format != "vhdx" {
				t.Errorf("qemu-img info: %s", out)
			}
			if out := testenv.Run(t, "qemu-img", "check", "-f", "vhdx", path); !strings.Contains(out, "No errors") {
				t.Errorf("qemu-img check: %s", out)
			}
			raw := filepath.Join(t.TempDir(), "w.raw")
			testenv.Run(t, "qemu-img", "convert", "-f", "vhdx", "-O", "raw", path, raw)
			got, err := os.ReadFile(raw)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, ref) {
				t.Fatalf("qemu reads different bytes (first difference at %d)", firstDiff(got, ref))
			}
		})
	}
}

// TestReadQemuMade reads images qemu-img wrote, in every block size and
// subformat it offers, against the raw file they came from.
func TestReadQemuMade(t *testing.T) {
	testenv.Tool(t, "qemu-img")
	dir := t.TempDir()
	size := 40*mib + 512
	ref := make([]byte, size)
	copy(ref[512:], pattern(4, 2*mib))
	copy(ref[17*mib:], pattern(5, 5*mib+1024))
	copy(ref[size-4096:], pattern(6, 4096))
	raw := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(raw, ref, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, o := range []string{"subformat=dynamic", "subformat=dynamic,block_size=1M", "subformat=dynamic,block_size=64M", "subformat=fixed", "subformat=dynamic,log_size=4M"} {
		t.Run(o, func(t *testing.T) {
			path := filepath.Join(dir, "q.vhdx")
			testenv.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", o, raw, path)
			img, err := Open(context.Background(), path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if img.Size() != int64(size) {
				t.Fatalf("size %d, want %d", img.Size(), size)
			}
			got := readAt(t, img, 0, int64(size))
			if !bytes.Equal(got, ref) {
				t.Fatalf("content differs at %d", firstDiff(got, ref))
			}
			ext, err := img.Extents(context.Background(), 0, img.Size())
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ext {
				if e.Kind != disk.Data && !allZero(ref[e.Offset:e.End()]) {
					t.Errorf("extent %v holds data", e)
				}
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

// vhdiScript reads a chain with libvhdi: argv[1] is the chain, top first,
// comma-separated; argv[2] optional "off:len,..." ranges (default: all).
const vhdiScript = `
import sys, hashlib, pyvhdi
files = []
for p in sys.argv[1].split(","):
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
for i in range(len(files) - 2, -1, -1):
    files[i].set_parent(files[i + 1])
top = files[0]
size = top.get_media_size()
ranges = [(0, size)]
if len(sys.argv) > 2 and sys.argv[2]:
    ranges = [tuple(int(x) for x in r.split(":")) for r in sys.argv[2].split(",")]
h = hashlib.sha256()
for off, n in ranges:
    while n > 0:
        k = min(n, 4 << 20)
        b = top.read_buffer_at_offset(k, off)
        if len(b) != k:
            raise SystemExit("short read at %d" % off)
        h.update(b)
        off += k
        n -= k
print(size, top.get_identifier(), top.get_parent_identifier(), h.hexdigest())
`

// pythonVHDI finds a Python that can import pyvhdi (python3-libvhdi).
func pythonVHDI(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(p, "-c", "import pyvhdi").Run() == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("missing python3-libvhdi (import pyvhdi)")
	}
	t.Skip("missing python3-libvhdi (import pyvhdi)")
	return ""
}

type vhdiResult struct {
	size         int64
	id, parentID string
	sha256       string
}

func runVHDI(t *testing.T, chain []string, ranges string) vhdiResult {
	t.Helper()
	py := pythonVHDI(t)
	out, err := exec.Command(py, "-c", vhdiScript, strings.Join(chain, ","), ranges).CombinedOutput()
	if err != nil {
		t.Fatalf("libvhdi: %v\n%s", err, out)
	}
	f := strings.Fields(string(out))
	if len(f) != 4 {
		t.Fatalf("libvhdi output %q", out)
	}
	size, _ := strconv.ParseInt(f[0], 10, 64)
	return vhdiResult{size, f[1], f[2], f[3]}
}

// TestDifferencingLibvhdi reads a base/child/grandchild chain this package
// wrote with libvhdi, an independent reader of VHDX sector bitmaps.
func TestDifferencingLibvhdi(t *testing.T) {
	pythonVHDI(t)
	ctx := context.Background()
	dir := t.TempDir()
	if d := os.Getenv("VHDX_KEEP"); d != "" {
		dir = d
	}
	const size = 24*mib + 4096
	basePath := filepath.Join(dir, "base.vhdx")
	ref := writeImage(t, basePath, disk.CreateOptions{Size: size}, map[int64][]byte{
		0:        pattern(10, 12*mib),
		20 * mib: pattern(11, mib),
	})
	base, err := Open(ctx, basePath, nil)
	if err != nil {
		t.Fatal(err)
	}
	baseID := base.Info().ID
	base.Close()
	childPath := filepath.Join(dir, "child.vhdx")
	childWrites := map[int64][]byte{
		512:          pattern(12, 512),
		4*mib + 1024: make([]byte, 8192),  // zeros hiding the parent
		6 * mib:      make([]byte, 2*mib), // a whole zero block
		8 * mib:      pattern(13, 2*mib),  // a whole data block
		15*mib - 512: pattern(14, mib+1024),
		size - 512:   pattern(15, 512),
	}
	writeImage(t, childPath, disk.CreateOptions{Size: size, ParentPath: "base.vhdx", ParentID: baseID}, childWrites)
	for off, b := range childWrites {
		copy(ref[off:], b)
	}
	child, err := Open(ctx, childPath, disktest.Opener(suite))
	if err != nil {
		t.Fatal(err)
	}
	childID := child.Info().ID
	child.Close()
	gcPath := filepath.Join(dir, "sub", "grandchild.vhdx")
	os.Mkdir(filepath.Dir(gcPath), 0o755)
	gcWrites := map[int64][]byte{
		1024:    pattern(16, 1536),
		7 * mib: pattern(17, 4096),
	}
	writeImage(t, gcPath, disk.CreateOptions{Size: size, ParentPath: "../child.vhdx", ParentID: childID}, gcWrites)
	for off, b := range gcWrites {
		copy(ref[off:], b)
	}
	sum := sha256.Sum256(ref)
	want := hex.EncodeToString(sum[:])

	img, err := Open(ctx, gcPath, disktest.Opener(suite))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if got := hashImage(t, img); got != want {
		t.Fatalf("our chain reads sha256 %s, want %s", got, want)
	}
	if p := img.Info().ParentPath; p != `..\child.vhdx` {
		t.Errorf("ParentPath %q", p)
	}
	res := runVHDI(t, []string{gcPath, childPath, basePath}, "")
	if res.size != size || res.sha256 != want {
		t.Fatalf("libvhdi reads size %d sha256 %s, want %d %s", res.size, res.sha256, int64(size), want)
	}
	if res.id != img.Info().ID || res.parentID != childID {
		t.Errorf("libvhdi identifiers %s/%s, ours %s/%s", res.id, res.parentID, img.Info().ID, childID)
	}
	out := testenv.Run(t, "vhdiinfo", childPath)
	if !regexp.MustCompile(`Disk type\s*: Differential`).MatchString(out) ||
		!regexp.MustCompile(`Parent identifier\s*: `+baseID).MatchString(out) {
		t.Errorf("vhdiinfo:\n%s", out)
	}
}

// TestDifferencingFixtureLibvhdi reads Hyper-V's checkpoint over a
// stand-in parent with both libvhdi and this package: real Hyper-V sector
// bitmaps decide which sectors come from the parent.
func TestDifferencingFixtureLibvhdi(t *testing.T) {
	pythonVHDI(t)
	ctx := context.Background()
	src := privateCopy(t, testenv.HyperV(t, "differencing.avhdx"))
	parentPath := filepath.Join(filepath.Dir(src), "Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx")
	own0, err := openFile(ctx, src, nil, options{noParent: true})
	if err != nil {
		t.Fatal(err)
	}
	linkage := own0.Info().ParentID
	own, err := own0.Extents(ctx, 0, own0.Size())
	own0.Close()
	if err != nil {
		t.Fatal(err)
	}
	// The parent has data in every block where the child has some, so
	// every sector-bitmap decision shows in the bytes.
	blocks := map[int64]bool{}
	var childBytes int64
	for _, e := range own {
		if e.Kind == disk.Unallocated {
			continue
		}
		childBytes += e.Length
		for b := e.Offset / (2 * mib); b*2*mib < e.End(); b++ {
			blocks[b] = true
		}
	}
	writes := map[int64][]byte{}
	var ranges []string
	parentOnly := sha256.New()
	for b := range blocks {
		writes[b*2*mib] = pattern(byte(b), 2*mib)
	}
	writeImage(t, parentPath, disk.CreateOptions{Size: 8 << 30, ID: linkage}, writes)

	img, err := Open(ctx, src, disktest.Opener(suite))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	h := sha256.New()
	for b := range blocks {
		ranges = append(ranges, fmt.Sprintf("%d:%d", b*2*mib, 2*mib))
		h.Write(readAt(t, img, b*2*mib, 2*mib))
		parentOnly.Write(writes[b*2*mib])
	}
	got := hex.EncodeToString(h.Sum(nil))
	if got == hex.EncodeToString(parentOnly.Sum(nil)) {
		t.Fatal("the child's data does not show: test proves nothing")
	}
	res := runVHDI(t, []string{src, parentPath}, strings.Join(ranges, ","))
	if res.sha256 != got {
		t.Fatalf("libvhdi reads the %d blocks holding child data as %s, we read %s", len(ranges), res.sha256, got)
	}
	t.Logf("%d blocks holding %d bytes of child data agree with libvhdi", len(blocks), childBytes)
}

// privateCopy links or copies a fixture into a folder of its own, so
// that a test can put a parent beside it.
func privateCopy(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.Link(src, dst); err != nil {
		return copyFile(t, src)
	}
	return dst
}
