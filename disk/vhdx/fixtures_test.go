package vhdx

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/disk"
	"lifeboat/internal/testenv"
)

// copyFile copies src to a new file in a temp folder, so that qemu-img's
// repair never touches the shared fixture.
func copyFile(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// qemuRaw converts a copy of src to raw with qemu-img and returns the raw
// file's path. With repair, the copy's log is replayed first by
// `qemu-img check -r all`, which must report the fix.
func qemuRaw(t *testing.T, src string, repair bool) string {
	t.Helper()
	qemu := testenv.Tool(t, "qemu-img")
	cp := copyFile(t, src)
	if repair {
		out, err := exec.Command(qemu, "check", "-r", "all", "-f", "vhdx", "--output=json", cp).Output()
		var exit *exec.ExitError
		if err != nil && (!errors.As(err, &exit) || exit.ExitCode() > 3) {
			t.Fatalf("qemu-img check -r all: %v\n%s", err, out)
		}
		var res struct {
			Fixed  int `json:"corruptions-fixed"`
			Errors int `json:"check-errors"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("qemu-img check output %q: %v", out, err)
		}
		// qemu counts the replayed log as the one corruption it fixed.
		if res.Fixed < 1 || res.Errors != 0 {
			t.Fatalf("qemu-img check -r all did not report replaying the log: %s", out)
		}
	}
	raw := filepath.Join(t.TempDir(), "out.raw")
	testenv.Run(t, "qemu-img", "convert", "-f", "vhdx", "-O", "raw", cp, raw)
	return raw
}

func openFixture(t *testing.T, name string) (string, *Image) {
	t.Helper()
	path := testenv.HyperV(t, name)
	img, err := Open(context.Background(), path, nil)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	t.Cleanup(func() { img.Close() })
	return path, img.(*Image)
}

func readAt(t *testing.T, img disk.Image, off, n int64) []byte {
	t.Helper()
	b := make([]byte, n)
	if k, err := img.ReadAt(b, off); int64(k) != n || (err != nil && err != io.EOF) {
		t.Fatalf("ReadAt(%d at %d) = %d, %v", n, off, k, err)
	}
	return b
}

// TestFixturesMatchQemu compares every byte of each fixture with what
// qemu-img converts it to (after qemu replays the log of dirty ones).
func TestFixturesMatchQemu(t *testing.T) {
	cases := []struct {
		name      string
		dirty     bool
		size      int64
		block     int64
		subformat string
		seq       uint64 // current header's sequence number
	}{
		{"fixed.vhdx", false, 10 * mib, 2 * mib, "fixed", 7},
		{"dynamic.vhdx", false, 10 * mib, 32 * mib, "dynamic", 15},
		{"iotest-dynamic-1G.vhdx", false, 1 << 30, 32 * mib, "dynamic", 15},
		{"test-disk2vhd.vhdx", false, 256 * mib, 2 * mib, "dynamic", 1},
		{"vhdx-log-replay.vhdx", true, 1 << 30, 32 * mib, "dynamic", 9},
		{"iotest-dirtylog-10G-4M.vhdx", true, 10 << 30, 1 * mib, "dynamic", 932638741},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path, img := openFixture(t, c.name)
			info := img.Info()
			if info.Size != c.size || info.ClusterSize != c.block || info.Subformat != c.subformat || info.Format != disk.VHDX {
				t.Errorf("info %+v, want size %d block %d %s", info, c.size, c.block, c.subformat)
			}
			d := img.Details()
			if d.LogReplayed != c.dirty || d.HeaderSequence != c.seq {
				t.Errorf("replayed=%v header seq %d, want %v and %d", d.LogReplayed, d.HeaderSequence, c.dirty, c.seq)
			}
			got := hashImage(t, img)
			want := hashFile(t, qemuRaw(t, path, c.dirty))
			if got != want {
				t.Fatalf("content sha256 %s, qemu-img gives %s", got, want)
			}
		})
	}
}

// TestFixtureFacts checks the content facts SOURCES.md records, which do
// not depend on qemu.
func TestFixtureFacts(t *testing.T) {
	t.Run("iotest-dynamic-1G", func(t *testing.T) {
		_, img := openFixture(t, "iotest-dynamic-1G.vhdx")
		for _, r := range []struct {
			off, n int64
			v      byte
		}{{0, 33 * mib, 0xa5}, {33 * mib, 33 * mib, 0x96}, {66 * mib, 64 * mib, 0}, {1<<30 - mib, mib, 0}} {
			if b := readAt(t, img, r.off, r.n); !bytes.Equal(b, fill(int(r.n), r.v)) {
				t.Errorf("[%d, %d) is not all %#x", r.off, r.off+r.n, r.v)
			}
		}
	})
	t.Run("test-disk2vhd", func(t *testing.T) {
		// Both headers carry sequence number 1 and are identical.
		path := testenv.HyperV(t, "test-disk2vhd.vhdx")
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		h1, ok1 := parseHeader(raw[header1Offset:])
		h2, ok2 := parseHeader(raw[header2Offset:])
		if !ok1 || !ok2 || h1.Seq != 1 || h2.Seq != 1 {
			t.Fatalf("headers %v/%v seq %d/%d", ok1, ok2, h1.Seq, h2.Seq)
		}
		img, err := Open(context.Background(), path, nil)
		if err != nil {
			t.Fatal(err)
		}
		img.Close()
	})
	t.Run("vhdx-log-replay", func(t *testing.T) {
		_, img := openFixture(t, "vhdx-log-replay.vhdx")
		cr := img.chunkRatio
		if e := img.bat[payloadIndex(0, cr)]; e&7 != payloadFullyPresent || entryOffset(e) != 4*mib {
			t.Errorf("BAT entry 0 = %#x, want FULLY_PRESENT at 4 MiB", e)
		}
		for _, b := range []int64{3, 9, 31} {
			if st := img.bat[payloadIndex(b, cr)] & 7; st != payloadZero {
				t.Errorf("block %d state %d, want ZERO", b, st)
			}
		}
		mbr := readAt(t, img, 0, 512)
		if mbr[510] != 0x55 || mbr[511] != 0xaa {
			t.Fatalf("sector 0 has no MBR signature: % x", mbr[510:])
		}
		var sizes []int64
		for i := range 4 {
			p := mbr[446+16*i:]
			if typ := p[4]; typ != 0 {
				if typ != 0x83 {
					t.Errorf("partition %d type %#x, want 0x83", i, typ)
				}
				sizes = append(sizes, int64(binary.LittleEndian.Uint32(p[12:16]))*512)
			}
		}
		if len(sizes) != 2 || sizes[0] != 100*mib || sizes[1] != 200*mib {
			t.Errorf("partition sizes %v, want 100 MiB and 200 MiB", sizes)
		}

		// Without replay the BAT still says NOT_PRESENT: the guest would
		// see zeros and no partition table.
		stale, err := openFile(context.Background(), img.path, nil, options{noReplay: true})
		if err != nil {
			t.Fatal(err)
		}
		defer stale.Close()
		if st := stale.bat[0] & 7; st != payloadNotPresent {
			t.Errorf("unreplayed BAT entry 0 state %d, want NOT_PRESENT", st)
		}
		if b := readAt(t, stale, 0, 512); !allZero(b) {
			t.Errorf("unreplayed sector 0 is not zero")
		}
	})
	t.Run("iotest-dirtylog", func(t *testing.T) {
		_, img := openFixture(t, "iotest-dirtylog-10G-4M.vhdx")
		if b := readAt(t, img, 0, 18*mib); !bytes.Equal(b, fill(18*mib, 0xa5)) {
			t.Errorf("bytes [0, 18 MiB) are not all 0xa5")
		}
		if b := readAt(t, img, 18*mib, mib); !allZero(b) {
			t.Errorf("bytes after 18 MiB are not zero")
		}
		stale, err := openFile(context.Background(), img.path, nil, options{noReplay: true})
		if err != nil {
			t.Fatal(err)
		}
		defer stale.Close()
		if b := readAt(t, stale, 0, 18*mib); bytes.Equal(b, fill(18*mib, 0xa5)) {
			t.Errorf("unreplayed image already reads 0xa5: replay proves nothing")
		}
	})
}

// TestFixtureLogSequences pins down which log entries form the active
// sequence, as SOURCES.md records them.
func TestFixtureLogSequences(t *testing.T) {
	cases := []struct {
		name      string
		positions []int64
		seqLow    uint64 // head sequence number modulo 1000
	}{
		{"vhdx-log-replay.vhdx", []int64{20480, 28672}, 391},
		{"iotest-dirtylog-10G-4M.vhdx", []int64{49152}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := testenv.HyperV(t, c.name)
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			h, ok := parseHeader(raw[header1Offset:])
			if h2, ok2 := parseHeader(raw[header2Offset:]); ok2 && (!ok || h2.Seq > h.Seq) {
				h = h2
			}
			log := raw[h.LogOffset : h.LogOffset+uint64(h.LogLength)]
			seq, err := activeSequence(log, h.LogGUID)
			if err != nil {
				t.Fatal(err)
			}
			var pos []int64
			for _, e := range seq {
				pos = append(pos, e.pos)
			}
			if !equalInts(pos, c.positions) {
				t.Fatalf("active sequence at %v, want %v", pos, c.positions)
			}
			if c.seqLow != 0 && seq[len(seq)-1].seq%1000 != c.seqLow {
				t.Errorf("head sequence %d", seq[len(seq)-1].seq)
			}
			head := seq[len(seq)-1]
			if head.flushed != int64(len(raw)) || head.last != int64(len(raw)) {
				t.Errorf("head Flushed/LastFileOffset %d/%d, want the file size %d", head.flushed, head.last, len(raw))
			}
		})
	}
}

func equalInts(a, b []int64) bool {
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

// TestDifferencingFixture opens Hyper-V's checkpoint without its parent,
// then with a stand-in parent carrying the recorded identity.
func TestDifferencingFixture(t *testing.T) {
	ctx := context.Background()
	const rel = `.\Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx`
	const parentName = "Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx"
	const linkage = "ff34003b-11ed-4cf8-a166-b2be05e20b80"
	child := privateCopy(t, testenv.HyperV(t, "differencing.avhdx"))
	dir := filepath.Dir(child)

	opener := func(ctx context.Context, cands []string) (disk.Image, error) {
		for _, c := range cands {
			if _, err := os.Stat(c); err == nil {
				return Open(ctx, c, nil)
			}
		}
		return nil, disk.ErrParentNotFound
	}
	for _, parents := range []disk.ParentOpener{nil, opener} {
		_, err := Open(ctx, child, parents)
		if !errors.Is(err, disk.ErrParentNotFound) {
			t.Fatalf("open without parent: %v, want ErrParentNotFound", err)
		}
		if !strings.Contains(err.Error(), rel) || !strings.Contains(err.Error(), filepath.Join(dir, parentName)) {
			t.Errorf("error does not name the locator path and candidate: %v", err)
		}
	}

	d, err := Stat(ctx, child)
	if err != nil {
		t.Fatal(err)
	}
	wantLoc := map[string]string{
		"parent_linkage":      "{" + linkage + "}",
		"parent_linkage2":     "{00000000-0000-0000-0000-000000000000}",
		"relative_path":       rel,
		"absolute_win32_path": `C:\Users\Public\Documents\Hyper-V\Virtual hard disks\` + parentName,
		"volume_path":         `\\?\Volume{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9}\Users\Public\Documents\Hyper-V\Virtual hard disks\` + parentName,
	}
	if len(d.Locator) != len(wantLoc) {
		t.Errorf("locator %v", d.Locator)
	}
	for k, v := range wantLoc {
		if d.Locator[k] != v {
			t.Errorf("locator %s = %q, want %q", k, d.Locator[k], v)
		}
	}
	if d.LocatorType != "b04aefb7-d19e-4a81-b789-25b8e9445913" {
		t.Errorf("locator type %s", d.LocatorType)
	}
	if d.Info.ParentPath != rel || d.Info.ParentID != linkage || d.Info.Subformat != "differencing" ||
		d.Info.ID != "b298d413-f67e-412a-9a72-c7c7fc9b6cb5" || d.Info.Size != 8<<30 || d.Info.ClusterSize != 2*mib {
		t.Errorf("info %+v", d.Info)
	}
	if len(d.ParentCandidates) != 1 || d.ParentCandidates[0] != filepath.Join(dir, parentName) {
		t.Errorf("candidates %q", d.ParentCandidates)
	}
	if d.LogReplayed {
		t.Errorf("clean differencing file (LogGuid zero, stale entries) was replayed")
	}

	// A stand-in parent with the wrong identity is refused...
	parent := filepath.Join(dir, parentName)
	writeImage(t, parent, disk.CreateOptions{Size: 8 << 30}, nil)
	if _, err := Open(ctx, child, opener); !errors.Is(err, disk.ErrParentMismatch) {
		t.Fatalf("open with impostor parent: %v, want ErrParentMismatch", err)
	}
	// ...and one with the recorded DataWriteGuid is read through where the
	// child's sector bitmaps leave sectors to it.
	writeImage(t, parent, disk.CreateOptions{Size: 8 << 30, ID: linkage}, map[int64][]byte{
		0:         fill(4*mib, 0x11),
		512 * mib: fill(4*mib, 0x22),
	})
	img, err := Open(ctx, child, opener)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	own, err := img.Extents(ctx, 0, 4*mib)
	if err != nil {
		t.Fatal(err)
	}
	got := readAt(t, img, 0, 4*mib)
	for _, e := range own {
		b := got[e.Offset:e.End()]
		if e.Kind == disk.Unallocated && !bytes.Equal(b, fill(len(b), 0x11)) {
			t.Errorf("unallocated %v does not read the parent", e)
		}
		if e.Kind == disk.Data && bytes.Equal(b, fill(len(b), 0x11)) {
			t.Errorf("data %v reads the parent's bytes", e)
		}
	}
}
