package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/internal/testenv"
	"lifeboat/lab"
)

// The CLI tests run the real binary, as operators and scripts do.
var lifeboatBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lifeboat-cli")
	if err != nil {
		panic(err)
	}
	lifeboatBin = filepath.Join(dir, "lifeboat")
	out, err := exec.Command("go", "build", "-o", lifeboatBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build lifeboat: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	if err := lab.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stop lab: %v\n", err)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// lb runs the binary and returns stdout; it fails the test on a non-zero
// exit unless wantFail.
func lb(t *testing.T, repoDir string, wantFail bool, args ...string) string {
	t.Helper()
	cmd := exec.Command(lifeboatBin, args...)
	cmd.Env = append(os.Environ(), "LIFEBOAT_REPO="+repoDir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if wantFail {
		if err == nil {
			t.Fatalf("lifeboat %s succeeded, want failure\n%s", strings.Join(args, " "), stdout.String())
		}
		return stderr.String()
	}
	if err != nil {
		t.Fatalf("lifeboat %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

type pointOut struct {
	ID     string          `json:"id"`
	Name   string          `json:"name"`
	Config json.RawMessage `json:"config"`
	Files  []struct {
		Path   string `json:"path"`
		Role   string `json:"role"`
		Format string `json:"format"`
		Size   int64  `json:"size"`
	} `json:"files"`
}

func points(t *testing.T, repoDir string) []pointOut {
	t.Helper()
	var pts []pointOut
	if err := json.Unmarshal([]byte(lb(t, repoDir, false, "points", "--json")), &pts); err != nil {
		t.Fatal(err)
	}
	return pts
}

func lastPoint(t *testing.T, repoDir string) string {
	t.Helper()
	pts := points(t, repoDir)
	if len(pts) == 0 {
		t.Fatal("no points")
	}
	return pts[len(pts)-1].ID
}

// rawContentHash is the SHA-256 of qemu-img's raw conversion of an image:
// the independent judge of what a guest sees.
func rawContentHash(t *testing.T, path, format string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "content.raw")
	args := []string{"convert"}
	if format != "" {
		args = append(args, "-f", format)
	}
	testenv.Run(t, "qemu-img", append(args, "-O", "raw", path, out)...)
	return fileHash(t, out)
}

func fileHash(t *testing.T, path string) string {
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

// makeContentImage builds a raw disk with a real ext4 filesystem of mixed
// files (text, random, a binary) in its first part, then random data
// further on, leaving holes.
func makeContentImage(t *testing.T, dir string, size int64) string {
	t.Helper()
	src := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "motd"), bytes.Repeat([]byte("welcome aboard the lifeboat\n"), 5000), 0o644)
	r := rand.New(rand.NewPCG(42, 42))
	rnd := make([]byte, 3<<20)
	for i := range rnd {
		rnd[i] = byte(r.Uint32())
	}
	os.WriteFile(filepath.Join(src, "random.bin"), rnd, 0o644)
	if self, err := os.ReadFile(lifeboatBin); err == nil {
		os.WriteFile(filepath.Join(src, "lifeboat"), self[:min(len(self), 4<<20)], 0o755)
	}
	img := filepath.Join(dir, "content.raw")
	testenv.Run(t, "mke2fs", "-q", "-F", "-t", "ext4", "-d", src, img, fmt.Sprintf("%dk", size/2/1024))
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(rnd[:1<<20], size-3<<20)
	f.Truncate(size)
	f.Close()
	return img
}

// Outcome 1: every format qemu-img creates restores with raw content
// equal to qemu-img's own conversion of the source.
func TestRoundTripQemuFormats(t *testing.T) {
	dir := t.TempDir()
	const size = 64 << 20
	content := makeContentImage(t, dir, size)
	repoDir := filepath.Join(dir, "repo")
	lb(t, repoDir, false, "repo", "init")
	qemuImg := func(args ...string) { testenv.Run(t, "qemu-img", args...) }
	qemuIO := func(img string, cmds ...string) {
		args := []string{}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		testenv.Run(t, "qemu-io", append(args, img)...)
	}
	cases := []struct {
		name   string
		format string // for qemu-img -f
		make   func(d string) string
	}{
		{"raw-sparse", "raw", func(d string) string {
			p := filepath.Join(d, "disk.raw")
			qemuImg("convert", "-O", "raw", "-S", "4k", content, p)
			return p
		}},
		{"qcow2-v2", "qcow2", func(d string) string {
			p := filepath.Join(d, "disk.qcow2")
			qemuImg("convert", "-O", "qcow2", "-o", "compat=0.10", content, p)
			return p
		}},
		{"qcow2-v3", "qcow2", func(d string) string {
			p := filepath.Join(d, "disk.qcow2")
			qemuImg("convert", "-O", "qcow2", "-o", "compat=1.1,cluster_size=65536", content, p)
			return p
		}},
		{"qcow2-zlib", "qcow2", func(d string) string {
			p := filepath.Join(d, "disk.qcow2")
			qemuImg("convert", "-c", "-O", "qcow2", content, p)
			return p
		}},
		{"qcow2-zstd", "qcow2", func(d string) string {
			p := filepath.Join(d, "disk.qcow2")
			qemuImg("convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", content, p)
			return p
		}},
		{"qcow2-chain3", "qcow2", func(d string) string {
			base := filepath.Join(d, "base.qcow2")
			qemuImg("convert", "-O", "qcow2", content, base)
			mid := filepath.Join(d, "mid.qcow2")
			qemuImg("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid)
			qemuIO(mid, "write -P 0x5a 1M 2M", "write -z 40M 1M")
			top := filepath.Join(d, "top.qcow2")
			qemuImg("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top)
			qemuIO(top, "write -P 0x6b 2M 64k", "write -P 0x7c 63M 512k")
			return top
		}},
		{"vhd-fixed", "vpc", func(d string) string {
			p := filepath.Join(d, "disk.vhd")
			qemuImg("convert", "-O", "vpc", "-o", "subformat=fixed,force_size=on", content, p)
			return p
		}},
		{"vhd-dynamic", "vpc", func(d string) string {
			p := filepath.Join(d, "disk.vhd")
			qemuImg("convert", "-O", "vpc", "-o", "subformat=dynamic,force_size=on", content, p)
			return p
		}},
		{"vhdx-fixed", "vhdx", func(d string) string {
			p := filepath.Join(d, "disk.vhdx")
			qemuImg("convert", "-O", "vhdx", "-o", "subformat=fixed", content, p)
			return p
		}},
		{"vhdx-dynamic", "vhdx", func(d string) string {
			p := filepath.Join(d, "disk.vhdx")
			qemuImg("convert", "-O", "vhdx", "-o", "subformat=dynamic,block_size=1M", content, p)
			return p
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := filepath.Join(dir, c.name)
			os.MkdirAll(d, 0o755)
			src := c.make(d)
			want := rawContentHash(t, src, c.format)
			lb(t, repoDir, false, "backup", "--name", c.name, src)
			id := lastPoint(t, repoDir)
			out := filepath.Join(d, "restored")
			lb(t, repoDir, false, "restore", "--point", id, "--to", out)
			got := rawContentHash(t, filepath.Join(out, filepath.Base(src)), c.format)
			if got != want {
				t.Fatalf("restored %s content %s, source %s", c.name, got, want)
			}
			flat := filepath.Join(d, "flat")
			lb(t, repoDir, false, "restore", "--point", id, "--to", flat, "--format", "raw", "--merge-chain")
			name := strings.TrimSuffix(filepath.Base(src), filepath.Ext(src)) + ".raw"
			if got := fileHash(t, filepath.Join(flat, name)); got != want {
				t.Fatalf("flattened raw %s differs from source", name)
			}
		})
	}
	out := lb(t, repoDir, false, "verify")
	if !strings.HasPrefix(out, "ok:") {
		t.Fatalf("verify: %s", out)
	}
}

// Outcome 4 through the CLI: a flipped byte in a stored chunk makes verify
// exit non-zero naming the affected point, and restoring it fails loudly.
func TestCorruptionDetected(t *testing.T) {
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	lb(t, repoDir, false, "repo", "init", "--chunk-size", "1048576")
	r := rand.New(rand.NewPCG(9, 9))
	mk := func(name string, n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		return p
	}
	lb(t, repoDir, false, "backup", "--name", "a", mk("a.raw", 1<<20))
	idA := lastPoint(t, repoDir)
	lb(t, repoDir, false, "backup", "--name", "b", mk("b.raw", 1<<20))
	idB := lastPoint(t, repoDir)
	// Find a's chunk: the one not in b's set, via the point listing order.
	var chunks []string
	filepath.Walk(filepath.Join(repoDir, "chunks"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			chunks = append(chunks, p)
		}
		return nil
	})
	if len(chunks) != 2 {
		t.Fatalf("%d chunks stored, want 2", len(chunks))
	}
	for _, c := range chunks {
		data, _ := os.ReadFile(c)
		data[100] ^= 0xff
		os.WriteFile(c, data, 0o600)
		stderr := lb(t, repoDir, true, "verify")
		var rep struct {
			OK       bool     `json:"ok"`
			Affected []string `json:"affected_points"`
		}
		cmd := exec.Command(lifeboatBin, "verify", "--json", "--repo", repoDir)
		out, err := cmd.Output()
		if err == nil {
			t.Fatal("verify --json exited 0 with a corrupt chunk")
		}
		json.Unmarshal(out, &rep)
		if rep.OK || len(rep.Affected) != 1 || (rep.Affected[0] != idA && rep.Affected[0] != idB) {
			t.Fatalf("verify report %+v; stderr %s", rep, stderr)
		}
		msg := lb(t, repoDir, true, "restore", "--point", rep.Affected[0], "--to", filepath.Join(dir, "out-"+rep.Affected[0]))
		if !strings.Contains(msg, "corrupt") {
			t.Fatalf("restore of a corrupt point: %s", msg)
		}
		data[100] ^= 0xff
		os.WriteFile(c, data, 0o600)
	}
	if out := lb(t, repoDir, false, "verify"); !strings.HasPrefix(out, "ok:") {
		t.Fatalf("verify after repair: %s", out)
	}
}

// The CLI contract: points --json shape, LIFEBOAT_REPO, clear usage errors.
func TestCLIContract(t *testing.T) {
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	lb(t, repoDir, false, "repo", "init")
	p := filepath.Join(dir, "img.raw")
	os.WriteFile(p, bytes.Repeat([]byte{1}, 5000), 0o644)
	lb(t, repoDir, false, "backup", "--name", "x", p)
	pts := points(t, repoDir)
	if len(pts) != 1 || pts[0].Name != "x" || len(pts[0].Files) != 1 || pts[0].Files[0].Path != "img.raw" ||
		pts[0].Files[0].Role != "disk" || pts[0].Files[0].Format != "raw" || pts[0].Files[0].Size != 5000 {
		t.Fatalf("points --json: %+v", pts)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"backup", p}, "--name is required"},
		{[]string{"backup", "--name", "y", filepath.Join(dir, "missing.vhdx")}, "missing.vhdx"},
		{[]string{"restore", "--point", "nope", "--to", dir}, "not a point ID"},
		{[]string{"restore", "--point", pts[0].ID, "--to", dir, "--format", "vmdk"}, "unknown disk format"},
		{[]string{"prune"}, "--keep-"},
		{[]string{"frobnicate"}, "unknown command"},
	} {
		if msg := lb(t, repoDir, true, c.args...); !strings.Contains(msg, c.want) {
			t.Errorf("lifeboat %v: %q does not say %q", c.args, msg, c.want)
		}
	}
	// Restoring onto existing files is refused unless asked.
	out := filepath.Join(dir, "out")
	lb(t, repoDir, false, "restore", "--point", pts[0].ID, "--to", out)
	if msg := lb(t, repoDir, true, "restore", "--point", pts[0].ID, "--to", out); !strings.Contains(msg, "already exists") {
		t.Errorf("second restore: %s", msg)
	}
	lb(t, repoDir, false, "restore", "--point", pts[0].ID, "--to", out, "--overwrite")
	// Encrypted repositories need the password.
	enc := filepath.Join(dir, "enc")
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	lb(t, enc, false, "repo", "init", "--encrypt", "--password-file", pw)
	lb(t, enc, false, "backup", "--name", "x", "--password-file", pw, p)
	if msg := lb(t, enc, true, "points"); !strings.Contains(msg, "encrypted") {
		t.Errorf("points without password: %s", msg)
	}
	os.WriteFile(pw, []byte("wrong"), 0o600)
	if msg := lb(t, enc, true, "points", "--password-file", pw); !strings.Contains(msg, "wrong password") {
		t.Errorf("points with wrong password: %s", msg)
	}
}

// Item-level recovery through the CLI: a file and a folder come out of an
// ext4 filesystem inside a qcow2 point, read on demand from the repository.
func TestItemsCLI(t *testing.T) {
	dir := t.TempDir()
	content := makeContentImage(t, dir, 64<<20)
	img := filepath.Join(dir, "vm.qcow2")
	testenv.Run(t, "qemu-img", "convert", "-O", "qcow2", content, img)
	repoDir := filepath.Join(dir, "repo")
	lb(t, repoDir, false, "repo", "init")
	lb(t, repoDir, false, "backup", "--name", "vm", img)
	id := lastPoint(t, repoDir)
	if out := lb(t, repoDir, false, "items", "ls", "--point", id); !strings.Contains(out, "ext4") {
		t.Fatalf("items ls: %s", out)
	}
	if out := lb(t, repoDir, false, "items", "ls", "--point", id, "etc"); !strings.Contains(out, "motd") {
		t.Fatalf("items ls etc: %s", out)
	}
	if out := lb(t, repoDir, false, "items", "find", "--point", id, "*.BIN"); !strings.Contains(out, "random.bin") {
		t.Fatalf("items find: %s", out)
	}
	out := filepath.Join(dir, "out")
	lb(t, repoDir, false, "items", "extract", "--point", id, "--to", out, "etc")
	lb(t, repoDir, false, "items", "extract", "--point", id, "--to", out, "random.bin")
	for _, f := range []string{"etc/motd", "random.bin"} {
		if fileHash(t, filepath.Join(out, f)) != fileHash(t, filepath.Join(dir, "tree", f)) {
			t.Errorf("%s extracted differently", f)
		}
	}
}

// Tape through the CLI: a point spans two cartridges, and a scan plus
// restore with nothing but the library brings it back bit-identical.
func TestTapeCLI(t *testing.T) {
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	lb(t, repoDir, false, "repo", "init")
	r := rand.New(rand.NewPCG(5, 5))
	data := make([]byte, 12<<20)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	img := filepath.Join(dir, "vm.raw")
	os.WriteFile(img, data, 0o644)
	lb(t, repoDir, false, "backup", "--name", "vm", img)
	id := lastPoint(t, repoDir)
	lib := filepath.Join(dir, "lib")
	lb(t, repoDir, false, "tape", "library-create", "--library", lib)
	lb(t, repoDir, false, "tape", "add", "--library", lib, "--barcode", "LB0001L8", "--capacity", "8388608")
	lb(t, repoDir, false, "tape", "add", "--library", lib, "--barcode", "LB0002L8", "--capacity", "8388608")
	lb(t, repoDir, false, "tape", "write", "--library", lib, "--point", id)
	// No repository, no catalog: only the tapes.
	out := lb(t, "", false, "tape", "scan", "--library", lib, "--verify")
	if !strings.Contains(out, id) || !strings.Contains(out, "LB0001L8") || !strings.Contains(out, "LB0002L8") {
		t.Fatalf("tape scan: %s", out)
	}
	lb(t, "", false, "tape", "restore", "--library", lib, "--point", id, "--to", filepath.Join(dir, "out"))
	if fileHash(t, filepath.Join(dir, "out", "vm.raw")) != fileHash(t, img) {
		t.Fatal("restored from tape differs")
	}
	// A damaged block is reported, not skipped.
	cart := filepath.Join(lib, "LB0002L8.tape")
	if b, err := os.ReadFile(cart); err == nil {
		b[len(b)/3] ^= 0xff
		os.WriteFile(cart, b, 0o644)
		if msg := lb(t, "", true, "tape", "restore", "--library", lib, "--point", id, "--to", filepath.Join(dir, "out2")); !strings.Contains(msg, "LB0002L8") {
			t.Errorf("damaged tape: %s", msg)
		}
	} else {
		t.Fatalf("cartridge file: %v", err)
	}
}
