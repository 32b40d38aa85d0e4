//go:build unix

package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"lifeboat/disk"
	"lifeboat/internal/testenv"
)

// These tests run against a real qemu-nbd (Debian qemu-utils).

func readAll(t *testing.T, c *Client) []byte {
	t.Helper()
	got := make([]byte, c.Size())
	n, err := c.ReadAt(got, 0)
	if err != nil && err != io.EOF {
		t.Fatalf("read whole export: %v", err)
	}
	if n != len(got) {
		t.Fatalf("read whole export: %d of %d bytes", n, len(got))
	}
	return got
}

// checkReads compares whole and random reads, including unaligned ones and
// ones that straddle the end, with want.
func checkReads(t *testing.T, c *Client, want []byte, seed uint64) {
	t.Helper()
	size := int64(len(want))
	if c.Size() != size {
		t.Fatalf("export size %d, want %d", c.Size(), size)
	}
	if got := readAll(t, c); !bytes.Equal(got, want) {
		t.Fatalf("export differs from qemu-img convert output at byte %d", firstDiff(got, want))
	}
	r := rand.New(rand.NewPCG(seed, 7))
	for range 100 {
		off := r.Int64N(size)
		n := r.Int64N(3*mib) + 1
		if r.IntN(4) == 0 {
			n = r.Int64N(700) + 1
		}
		buf := make([]byte, n)
		m, err := c.ReadAt(buf, off)
		exp := min(n, size-off)
		if int64(m) != exp {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v; want %d", n, off, m, err, exp)
		}
		if exp < n && err != io.EOF {
			t.Fatalf("ReadAt past the end: err %v, want io.EOF", err)
		}
		if exp == n && err != nil {
			t.Fatalf("ReadAt(%d at %d): %v", n, off, err)
		}
		if !bytes.Equal(buf[:m], want[off:off+int64(m)]) {
			t.Fatalf("ReadAt(%d at %d) differs at byte %d", n, off, firstDiff(buf[:m], want[off:]))
		}
	}
	if n, err := c.ReadAt(make([]byte, 10), size); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt at the end = %d, %v; want 0, io.EOF", n, err)
	}
	if _, err := c.ReadAt(make([]byte, 10), -1); err == nil {
		t.Fatal("ReadAt at -1 succeeded")
	}
}

func TestReadMatchesConvert(t *testing.T) {
	img, want := makeImage(t)
	s := startNBD(t, "--format=qcow2", img)
	t.Run("default", func(t *testing.T) {
		c := s.dial(t, Options{})
		inf := c.Info()
		if !inf.Structured || !inf.ReadOnly || inf.MinBlock != 1 || inf.MaxBlock != 32*mib {
			t.Errorf("export info %+v", inf)
		}
		checkReads(t, c, want, 1)
	})
	t.Run("small-requests", func(t *testing.T) {
		// Many pieces per ReadAt, more than may be in flight at once.
		c := s.dial(t, Options{MaxRequest: 100000, MaxInFlight: 3})
		checkReads(t, c, want, 2)
	})
	t.Run("url", func(t *testing.T) {
		c, err := DialURL(context.Background(), "nbd+unix:///?socket="+s.sock, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := readAll(t, c); !bytes.Equal(got, want) {
			t.Fatal("export differs")
		}
	})
}

// TestAlignedServer exports the image through blkdebug with align=4096, so
// the server announces a minimum block size of 4096 and the client must
// widen unaligned reads to whole blocks.
func TestAlignedServer(t *testing.T) {
	img, want := makeImage(t)
	raw := filepath.Join(t.TempDir(), "img.raw")
	testenv.Run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, raw)
	s := startNBD(t, "--image-opts", "driver=blkdebug,align=4096,image.driver=file,image.filename="+raw)
	c := s.dial(t, Options{MaxRequest: 3*4096 + 100})
	if inf := c.Info(); inf.MinBlock != 4096 {
		t.Fatalf("min block %d, want 4096 (blkdebug align)", inf.MinBlock)
	}
	checkReads(t, c, want, 3)
	ext, err := c.Allocation(context.Background(), 1000, 5*mib)
	if err != nil {
		t.Fatal(err)
	}
	if err := disk.CheckExtents(ext, 1000, 5*mib); err != nil {
		t.Fatal(err)
	}
}

func TestTCP(t *testing.T) {
	img, want := makeImage(t)
	s := startNBDTCP(t, "--format=qcow2", "--export-name=disk0", "--description=test disk", img)
	c, err := DialURL(context.Background(), "nbd://"+s.addr+"/disk0", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if inf := c.Info(); inf.Name != "disk0" || inf.Description != "test disk" {
		t.Errorf("info %+v", inf)
	}
	checkReads(t, c, want, 4)
}

// TestAllocation checks base:allocation three ways: against the bytes
// (what is not Data reads as zeros), against qemu's own NBD client reading
// the same server (qemu-img map over nbd: must be identical), and against
// qemu-img map of the qcow2 file itself (data-ness must agree).
func TestAllocation(t *testing.T) {
	img, want := makeImage(t)
	s := startNBD(t, "--format=qcow2", img)
	c := s.dial(t, Options{})
	ctx := context.Background()
	size := c.Size()
	ext, err := c.Allocation(ctx, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	if err := disk.CheckExtents(ext, 0, size); err != nil {
		t.Fatalf("%v: %s", err, fmtExtents(ext))
	}
	kinds := map[disk.ExtentKind]int64{}
	for _, e := range ext {
		kinds[e.Kind] += e.Length
		if e.Kind != disk.Data && !allZero(want[e.Offset:e.End()]) {
			t.Fatalf("extent %+v is %v but holds data", e, e.Kind)
		}
	}
	if kinds[disk.Data] == 0 || kinds[disk.Unallocated] == 0 {
		t.Fatalf("expected data and unallocated ranges: %s", fmtExtents(ext))
	}
	t.Logf("allocation: %s", fmtExtents(ext))

	// qemu's NBD client on the same export.
	var viaNBD []disk.Extent
	for _, e := range qemuMap(t, "--image-opts", "driver=nbd,server.type=unix,server.path="+s.sock) {
		viaNBD = disk.AppendExtent(viaNBD, disk.Extent{Offset: e.Start, Length: e.Length, Kind: kindOf(e)})
	}
	if !slices.Equal(ext, viaNBD) {
		t.Errorf("allocation differs from qemu-img map over NBD:\n got %s\nwant %s", fmtExtents(ext), fmtExtents(viaNBD))
	}

	// The qcow2 file: a range is data there exactly when it is Data here.
	var direct []disk.Extent
	for _, e := range qemuMap(t, "-f", "qcow2", img) {
		k := disk.Unallocated
		if e.Data {
			k = disk.Data
		}
		direct = disk.AppendExtent(direct, disk.Extent{Offset: e.Start, Length: e.Length, Kind: k})
	}
	var dataOnly []disk.Extent
	for _, e := range ext {
		if e.Kind != disk.Data {
			e.Kind = disk.Unallocated
		}
		dataOnly = disk.AppendExtent(dataOnly, e)
	}
	if !slices.Equal(dataOnly, direct) {
		t.Errorf("data ranges differ from qemu-img map of the file:\n got %s\nwant %s", fmtExtents(dataOnly), fmtExtents(direct))
	}

	// Sub-ranges, unaligned: same kinds as the whole map, cut to the range.
	r := rand.New(rand.NewPCG(5, 5))
	for range 50 {
		off := r.Int64N(size)
		n := r.Int64N(size-off) + 1
		sub, err := c.Allocation(ctx, off, n)
		if err != nil {
			t.Fatalf("Allocation(%d, %d): %v", off, n, err)
		}
		var cut []disk.Extent
		for _, e := range ext {
			s, t := max(e.Offset, off), min(e.End(), off+n)
			if t > s {
				cut = disk.AppendExtent(cut, disk.Extent{Offset: s, Length: t - s, Kind: e.Kind})
			}
		}
		if !slices.Equal(sub, cut) {
			t.Fatalf("Allocation(%d, %d) = %s, want %s", off, n, fmtExtents(sub), fmtExtents(cut))
		}
	}
	if _, err := c.Allocation(ctx, size-10, 11); err == nil {
		t.Error("Allocation past the end succeeded")
	}
	if _, err := c.BlockStatus(ctx, 0, 10, "qemu:dirty-bitmap:none"); !errors.Is(err, ErrNoMetaContext) {
		t.Errorf("block status of a context not negotiated: %v", err)
	}
}

// TestImage runs the disk.Image adapter through the Extents contract.
func TestImage(t *testing.T) {
	img, want := makeImage(t)
	s := startNBD(t, "--format=qcow2", img)
	im, err := OpenImage(context.Background(), "unix://"+s.sock, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var di disk.Image = im
	if di.Format() != disk.Raw || di.Parent() != nil || di.Size() != int64(len(want)) {
		t.Fatalf("format %v parent %v size %d", di.Format(), di.Parent(), di.Size())
	}
	if inf := di.Info(); inf.Format != disk.Raw || inf.Size != int64(len(want)) || inf.Subformat != "nbd" {
		t.Errorf("info %+v", inf)
	}
	ctx := context.Background()
	res, err := disk.ResolvedExtents(ctx, di, 0, di.Size())
	if err != nil {
		t.Fatal(err)
	}
	if err := disk.CheckExtents(res, 0, di.Size()); err != nil {
		t.Fatal(err)
	}
	// Clamped like every other image.
	ext, err := di.Extents(ctx, di.Size()-100, 1000)
	if err != nil || disk.CheckExtents(ext, di.Size()-100, 100) != nil {
		t.Fatalf("extents at the end: %v %s", err, fmtExtents(ext))
	}
	got := make([]byte, len(want))
	if _, err := di.ReadAt(got, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("content differs")
	}
	if err := di.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := di.ReadAt(got[:10], 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
}

// TestDirtyBitmap proves Dirty returns exactly the ranges written after
// the bitmap was enabled, rounded out to its granularity.
//
// How the bitmap gets its bits: `qemu-img bitmap --add --enable` stores a
// persistent, enabled bitmap in the qcow2 file. qemu-io opens the image
// read-write through the block layer, which loads enabled persistent
// bitmaps, records every write in them, and stores them back on close. So
// writes made with qemu-io after --add --enable land in the bitmap (checked
// here against qemu's own reading of it, qemu-img map over nbd with
// x-dirty-bitmap), and qemu-nbd --bitmap=NAME exports it read-only as
// qemu:dirty-bitmap:NAME. No QMP or storage daemon is needed.
func TestDirtyBitmap(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img.qcow2")
	size := int64(16 * mib)
	testenv.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, fmt.Sprint(size))
	qemuIO(t, img, "write -P 0xaa 0 4M") // before any bitmap: not dirty
	testenv.Run(t, "qemu-img", "bitmap", "--add", "--enable", "-g", "65536", img, "b0")
	type w struct{ off, n int64 }
	first := []w{
		{2 * mib, 64 << 10},           // exactly one granule
		{5000000, 1000},               // inside one granule
		{7*mib - 100, 200},            // across a granule boundary: two
		{10 * mib, 300 << 10},         // several
		{10*mib + 320<<10, 10},        // the granule after the gap
		{size - 512, 512},             // the last granule
		{12 * mib, 64 << 10},          // zero write (-z) also dirties
		{12*mib + 64<<10, 64<<10 + 1}, // touching the previous: merged
	}
	var cmds []string
	for i, x := range first {
		if i == 6 {
			cmds = append(cmds, fmt.Sprintf("write -z %d %d", x.off, x.n))
			continue
		}
		cmds = append(cmds, fmt.Sprintf("write -P 0x%x %d %d", 0x10+i, x.off, x.n))
	}
	qemuIO(t, img, cmds...)
	// A second bitmap of 4 KiB granularity sees only what comes next.
	testenv.Run(t, "qemu-img", "bitmap", "--add", "--enable", "-g", "4096", img, "b1")
	second := []w{{3*mib + 100, 5000}, {14 * mib, 4096}}
	qemuIO(t, img, fmt.Sprintf("write -P 0x01 %d %d", second[0].off, second[0].n), fmt.Sprintf("write -P 0x02 %d %d", second[1].off, second[1].n))

	expect := func(ws []w, gran int64) []disk.Extent {
		var out []disk.Extent
		for _, x := range ws {
			s := x.off - x.off%gran
			e := min((x.off+x.n+gran-1)/gran*gran, size)
			out = append(out, disk.Extent{Offset: s, Length: e - s, Kind: disk.Data})
		}
		slices.SortFunc(out, func(a, b disk.Extent) int { return int(a.Offset - b.Offset) })
		var merged []disk.Extent
		for _, e := range out {
			if n := len(merged); n > 0 && merged[n-1].End() >= e.Offset {
				merged[n-1].Length = max(merged[n-1].End(), e.End()) - merged[n-1].Offset
				continue
			}
			merged = append(merged, e)
		}
		return merged
	}
	want0 := expect(append(slices.Clone(first), second...), 64<<10)
	want1 := expect(second, 4096)

	s := startNBD(t, "--format=qcow2", "--bitmap=b0", "--bitmap=b1", img)
	ctx := context.Background()
	inf, err := Probe(ctx, "unix", s.sock, "", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{BaseAllocation, DirtyBitmapContext("b0"), DirtyBitmapContext("b1")} {
		if !slices.Contains(inf.MetaContexts, m) {
			t.Errorf("Probe lists %q, missing %s", inf.MetaContexts, m)
		}
	}
	if inf.Size != size {
		t.Errorf("Probe size %d", inf.Size)
	}
	c := s.dial(t, Options{MetaContexts: []string{DirtyBitmapContext("b0"), DirtyBitmapContext("b1")}})
	got0, err := c.Dirty(ctx, "b0", 0, size)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got0, want0) {
		t.Errorf("b0 dirty:\n got %s\nwant %s", fmtExtents(got0), fmtExtents(want0))
	}
	got1, err := c.Dirty(ctx, "b1", 0, size)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got1, want1) {
		t.Errorf("b1 dirty:\n got %s\nwant %s", fmtExtents(got1), fmtExtents(want1))
	}
	// qemu reads the same bitmap the same way (x-dirty-bitmap reports
	// dirty ranges as data: false).
	var viaQemu []disk.Extent
	for _, e := range qemuMap(t, "--image-opts", "driver=nbd,server.type=unix,server.path="+s.sock+",x-dirty-bitmap="+DirtyBitmapContext("b0")) {
		if !e.Data {
			viaQemu = disk.AppendExtent(viaQemu, disk.Extent{Offset: e.Start, Length: e.Length, Kind: disk.Data})
		}
	}
	if !slices.Equal(viaQemu, want0) {
		t.Errorf("qemu's reading of b0 differs:\n got %s\nwant %s", fmtExtents(viaQemu), fmtExtents(want0))
	}
	// An unaligned window is cut exactly.
	sub, err := c.Dirty(ctx, "b0", 2*mib+100, 50000)
	if err != nil {
		t.Fatal(err)
	}
	if wantSub := []disk.Extent{{Offset: 2*mib + 100, Length: 50000, Kind: disk.Data}}; !slices.Equal(sub, wantSub) {
		t.Errorf("window: %s", fmtExtents(sub))
	}
	// Raw status: flags alternate, extents cover the range.
	st, err := c.BlockStatus(ctx, 0, size, DirtyBitmapContext("b1"))
	if err != nil {
		t.Fatal(err)
	}
	pos := int64(0)
	for i, e := range st {
		if e.Offset != pos || e.Length <= 0 || (i > 0 && st[i-1].Flags == e.Flags) {
			t.Fatalf("block status extent %d: %+v", i, e)
		}
		pos = e.End()
	}
	if pos != size {
		t.Fatalf("block status ends at %d", pos)
	}

	// A bitmap the server does not export: a clear error at Dial.
	_, err = Dial(ctx, "unix", s.sock, Options{MetaContexts: []string{DirtyBitmapContext("nope")}})
	if !errors.Is(err, ErrNoMetaContext) || !strings.Contains(err.Error(), "qemu:dirty-bitmap:nope") {
		t.Errorf("missing bitmap: %v", err)
	}
}

func TestUnknownExport(t *testing.T) {
	img, _ := makeImage(t)
	s := startNBD(t, "--format=qcow2", "--export-name=disk0", img)
	ctx := context.Background()
	_, err := Dial(ctx, "unix", s.sock, Options{Export: "nosuch"})
	if !errors.Is(err, ErrUnknownExport) || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Fatalf("dial unknown export: %v", err)
	}
	t.Logf("error: %v", err)
	if _, err := Probe(ctx, "unix", s.sock, "nosuch", 5*time.Second); !errors.Is(err, ErrUnknownExport) {
		t.Errorf("probe unknown export: %v", err)
	}
	c := s.dial(t, Options{Export: "disk0"})
	if c.Size() != testImageSize {
		t.Fatalf("size %d", c.Size())
	}
	// Nothing listens: the dial error names the socket.
	if _, err := Dial(ctx, "unix", s.sock+".none", Options{}); err == nil || !strings.Contains(err.Error(), ".none") {
		t.Errorf("dial missing socket: %v", err)
	}
}

func TestConcurrentReadAt(t *testing.T) {
	img, want := makeImage(t)
	s := startNBD(t, "--format=qcow2", img)
	c := s.dial(t, Options{MaxRequest: 256 << 10, MaxInFlight: 5})
	size := int64(len(want))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 99))
			for range 40 {
				off := r.Int64N(size)
				n := min(r.Int64N(2*mib)+1, size-off)
				buf := make([]byte, n)
				if m, err := c.ReadAt(buf, off); m != int(n) || err != nil && err != io.EOF {
					errs <- fmt.Errorf("ReadAt(%d at %d) = %d, %v", n, off, m, err)
					return
				}
				if !bytes.Equal(buf, want[off:off+n]) {
					errs <- fmt.Errorf("ReadAt(%d at %d) differs at %d", n, off, firstDiff(buf, want[off:]))
					return
				}
				if r.IntN(5) == 0 {
					if _, err := c.Allocation(context.Background(), off, n); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// bigImage is a 64 MiB qcow2 full of data, so a read loop takes a while.
func bigImage(t *testing.T) string {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(src, randomBytes(9, 64*mib), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "big.qcow2")
	testenv.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", src, img)
	return img
}

// TestServerDies kills qemu-nbd while goroutines read in a loop: every
// reader must get an error promptly, never hang, and the client must stay
// failed.
func TestServerDies(t *testing.T) {
	s := startNBD(t, "--format=qcow2", bigImage(t))
	c := s.dial(t, Options{MaxRequest: 1 << 20})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	started := make(chan struct{}, 4)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 8*mib)
			for i := 0; ; i++ {
				if _, err := c.ReadAt(buf, int64((i*4+g)%8)*8*mib); err != nil {
					errs <- err
					return
				}
				if i == 2 {
					started <- struct{}{}
				}
			}
		}()
	}
	for range 4 {
		<-started
	}
	s.cmd.Process.Kill()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("readers still running 20s after the server died")
	}
	close(errs)
	for err := range errs {
		var ce *ConnError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "at offset") {
			t.Errorf("reader error %T %v, want a *ConnError naming the request", err, err)
		}
	}
	if _, err := c.ReadAt(make([]byte, 10), 0); err == nil {
		t.Error("read after the server died succeeded")
	}
	if _, err := c.Allocation(context.Background(), 0, mib); err == nil {
		t.Error("block status after the server died succeeded")
	}
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v", d)
	}
}

// TestServerHangs stops qemu-nbd (SIGSTOP): with a Timeout, a read fails
// with a deadline error instead of waiting forever.
func TestServerHangs(t *testing.T) {
	s := startNBD(t, "--format=qcow2", bigImage(t))
	c := s.dial(t, Options{Timeout: 500 * time.Millisecond})
	buf := make([]byte, 16*mib)
	if _, err := c.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := c.ReadAt(buf, 16*mib)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read from a stopped server: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timeout took %v", d)
	}
	t.Logf("error: %v", err)
	// Dial times out too.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, "unix", s.sock, Options{}); err == nil {
		t.Error("dial to a stopped server succeeded")
	}
}

// TestServerError injects I/O errors into qemu with blkdebug.
//
// Reads: qemu-nbd 7.2 answers a failed sparse read by dropping the
// connection (it logs "Failed to send reply: reading from file failed"),
// so the read must fail with an error naming the request, never return
// stale bytes, and a new connection must work.
//
// Block status: a failing L2 table load makes qemu send an
// NBD_REPLY_TYPE_ERROR chunk; the client reports the server's EIO for the
// request and keeps the connection.
func TestServerError(t *testing.T) {
	img, want := makeImage(t)
	var host int64 = -1
	for _, e := range qemuMap(t, "-f", "qcow2", img) {
		if e.Data && e.Start <= 8*mib && 8*mib < e.Start+e.Length {
			host = e.Offset + 8*mib - e.Start
		}
	}
	if host < 0 {
		t.Fatal("no data cluster at 8 MiB")
	}
	t.Run("read", func(t *testing.T) {
		s := startNBD(t, "--image-opts", fmt.Sprintf("driver=qcow2,file.driver=blkdebug,file.image.driver=file,file.image.filename=%s,"+
			"file.inject-error.0.event=read_aio,file.inject-error.0.errno=5,file.inject-error.0.once=off,file.inject-error.0.sector=%d", img, host/512))
		c := s.dial(t, Options{})
		buf := make([]byte, 256<<10)
		n, err := c.ReadAt(buf, 8*mib-1000)
		if err == nil || n != 0 || !strings.Contains(err.Error(), fmt.Sprintf("at offset %d", 8*mib-1000)) {
			t.Fatalf("read of a failing cluster = %d, %v", n, err)
		}
		t.Logf("error: %v", err)
		c2 := s.dial(t, Options{})
		if _, err := c2.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, want[:len(buf)]) {
			t.Fatalf("read on a new connection: %v", err)
		}
	})
	t.Run("block-status", func(t *testing.T) {
		s := startNBD(t, "--image-opts", "driver=qcow2,file.driver=blkdebug,file.image.driver=file,file.image.filename="+img+
			",file.inject-error.0.event=l2_load,file.inject-error.0.errno=5,file.inject-error.0.once=off")
		c := s.dial(t, Options{})
		for i := range 2 {
			_, err := c.Allocation(context.Background(), 8*mib, mib)
			var se *Error
			if !errors.As(err, &se) || se.Errno != EIO || se.Op != "block status" || se.Offset != 8*mib {
				t.Fatalf("block status %d with failing metadata: %v", i, err)
			}
			t.Logf("error: %v", err)
		}
	})
}
