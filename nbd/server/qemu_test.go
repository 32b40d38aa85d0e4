//go:build unix

package server

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lifeboat/disk"
	"lifeboat/internal/testenv"
	"lifeboat/nbd"
)

// TestConvert: qemu-img convert through our export equals the base, for
// a raw and a qcow2 base, through an overlay and read-only.
func TestConvert(t *testing.T) {
	rawPath, qcowPath, want := makeBase(t)
	for _, tc := range []struct {
		name, path string
		overlay    bool
	}{
		{"raw-overlay", rawPath, true},
		{"qcow2-overlay", qcowPath, true},
		{"qcow2-readonly", qcowPath, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := openImage(t, tc.path)
			exp := Export{Name: "export", Description: "test disk"}
			if tc.overlay {
				exp.Overlay = openOverlay(t, base, "")
			} else {
				exp.Image = base
			}
			s := serve(t, exp)
			out := filepath.Join(t.TempDir(), "out.raw")
			testenv.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", s.url("export"), out)
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			mustEqual(t, "qemu-img convert output", got, want)
			c := s.dial(t, "export")
			if inf := c.Info(); inf.ReadOnly == tc.overlay || !inf.Structured || inf.MinBlock != 1 || inf.PreferredBlock != 4096 || inf.MaxBlock != 32*mib || inf.Description != "test disk" {
				t.Errorf("export info %+v", inf)
			}
			mustEqual(t, "our client's read", readAll(t, c, c.Size()), want)
		})
	}
}

// TestQemuIOWrite: qemu-io writes through NBD, our client sees them, the
// base file is untouched.
func TestQemuIOWrite(t *testing.T) {
	_, qcowPath, want := makeBase(t)
	before := fileSum(t, qcowPath)
	base := openImage(t, qcowPath)
	ov := openOverlay(t, base, "")
	s := serve(t, Export{Name: "export", Overlay: ov})
	out := qemuIO(t, s.url("export"),
		"write -P 0x5a 1M 64k",
		"read -P 0x5a 1M 64k",
		"write -P 0x11 12345 1000", // unaligned: copy-on-write of a data block
		"write -P 0x22 6M 700",     // unaligned, in a hole of the base
		"read -P 0x11 12345 1000",
		"flush",
	)
	if strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	for _, w := range []struct {
		off, n int
		p      byte
	}{{1 * mib, 64 << 10, 0x5a}, {12345, 1000, 0x11}, {6 * mib, 700, 0x22}} {
		for i := range w.n {
			want[w.off+i] = w.p
		}
	}
	c := s.dial(t, "export")
	mustEqual(t, "export after writes", readAll(t, c, c.Size()), want)
	mustEqual(t, "overlay view", readAll(t, ov.Image(), ov.Size()), want)
	if after := fileSum(t, qcowPath); after != before {
		t.Fatal("base file changed")
	}
	if got := ov.Allocated(); got != 16*4096+2*4096 {
		t.Errorf("overlay holds %d bytes, want %d", got, 18*4096)
	}
}

// TestMapAndZeroes: WRITE_ZEROES and TRIM from qemu-io, then qemu-img map
// through NBD, our client's base:allocation and the overlay's own extents
// agree, and the bytes are what the commands mean.
func TestMapAndZeroes(t *testing.T) {
	rawPath, _, want := makeBase(t)
	base := openImage(t, rawPath)
	ov := openOverlay(t, base, "")
	s := serve(t, Export{Name: "export", Overlay: ov})
	qemuIO(t, s.url("export"),
		"write -P 0x5a 1M 64k", // data over base data
		"write -P 0x33 6M 64k", // data in a base hole
		"write -z 2M 256k",     // zeroes over base data
		"write -z -u 2600k 64k",
		"discard 8M 1M",            // trim over base data: reads zeros
		"write -z 5000 3000",       // partial blocks: copy-on-write
		"discard 100000 1000",      // inside one block: ignored
		"write -P 0x44 2M 4k",      // data again over a zero block
		"write -P 0x45 8200k 1000", // partial write into a trimmed block
	)
	set := func(off, n int, p byte) {
		for i := range n {
			want[off+i] = p
		}
	}
	set(1*mib, 64<<10, 0x5a)
	set(6*mib, 64<<10, 0x33)
	set(2*mib, 256<<10, 0)
	set(2600<<10, 64<<10, 0)
	set(8*mib, 1*mib, 0)
	set(5000, 3000, 0)
	set(2*mib, 4096, 0x44)
	set(8200<<10, 1000, 0x45)

	c := s.dial(t, "export")
	mustEqual(t, "export", readAll(t, c, c.Size()), want)

	ctx := context.Background()
	own, err := ov.Extents(ctx, 0, ov.Size())
	if err != nil {
		t.Fatal(err)
	}
	if err := disk.CheckExtents(own, 0, ov.Size()); err != nil {
		t.Fatal(err)
	}
	for _, e := range own {
		if e.Kind != disk.Data && !allZero(want[e.Offset:e.End()]) {
			t.Fatalf("extent %+v is %v but holds data", e, e.Kind)
		}
	}
	viaClient, err := c.Allocation(ctx, 0, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	viaQemu := qemuMap(t, s.url("export"))
	t.Logf("overlay: %s", fmtExtents(own))
	if fmtExtents(viaClient) != fmtExtents(own) {
		t.Errorf("our client's allocation differs:\n got %s\nwant %s", fmtExtents(viaClient), fmtExtents(own))
	}
	if fmtExtents(viaQemu) != fmtExtents(own) {
		t.Errorf("qemu-img map differs:\n got %s\nwant %s", fmtExtents(viaQemu), fmtExtents(own))
	}
	// Spot checks of what the overlay says.
	kindAt := func(off int64) disk.ExtentKind {
		for _, e := range own {
			if off >= e.Offset && off < e.End() {
				return e.Kind
			}
		}
		return 0
	}
	for _, k := range []struct {
		off  int64
		kind disk.ExtentKind
	}{
		{1 * mib, disk.Data}, {6 * mib, disk.Data}, {2*mib + 8192, disk.Zero}, {8 * mib, disk.Zero},
		{2 * mib, disk.Data}, {4 * mib, disk.Unallocated}, {0, disk.Data},
	} {
		if got := kindAt(k.off); got != k.kind {
			t.Errorf("offset %d is %v, want %v", k.off, got, k.kind)
		}
	}
}

// TestConcurrentClients: several goroutines read through our client (two
// connections, pipelined requests) while qemu-io writes elsewhere.
func TestConcurrentClients(t *testing.T) {
	_, qcowPath, want := makeBase(t)
	base := openImage(t, qcowPath)
	ov := openOverlay(t, base, "")
	s := serve(t, Export{Name: "export", Overlay: ov})
	half := int64(8 * mib)
	c1, c2 := s.dial(t, "export"), s.dial(t, "export")
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	stop := make(chan struct{})
	for i := range 6 {
		c := c1
		if i%2 == 1 {
			c = c2
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 1))
			for n := 0; ; n++ {
				select {
				case <-stop:
					if n > 0 {
						return
					}
				default:
				}
				off := r.Int64N(half - 1)
				l := min(r.Int64N(3*mib)+1, half-off)
				buf := make([]byte, l)
				if _, err := c.ReadAt(buf, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf, want[off:off+l]) {
					errs <- fmt.Errorf("read of %d at %d differs at %d", l, off, firstDiff(buf, want[off:]))
					return
				}
			}
		}()
	}
	var cmds []string
	for i := range 40 {
		off := half + int64(i)*150001
		cmds = append(cmds, fmt.Sprintf("write -P %d %d 70000", i+1, off))
		for k := range int64(70000) {
			want[off+k] = byte(i + 1)
		}
	}
	qemuIO(t, s.url("export"), cmds...)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	mustEqual(t, "export", readAll(t, c1, c1.Size()), want)
}

// TestRestart: writes followed by a flush survive a server that dies
// without closing the overlay; writes after the last flush to blocks the
// overlay did not hold read from the base again.
func TestRestart(t *testing.T) {
	rawPath, _, want := makeBase(t)
	base := openImage(t, rawPath)
	path := filepath.Join(t.TempDir(), "vda.overlay")
	ov, err := OpenOverlay(base, OverlayOptions{Path: path, BaseID: "point-1/vda"})
	if err != nil {
		t.Fatal(err)
	}
	s := serve(t, Export{Name: "vda", Overlay: ov})
	qemuIO(t, s.url("vda"), "write -P 0x5a 1M 64k", "write -P 0x5b 7M 3000", "discard 8M 64k", "flush")
	copy(want[1*mib:], bytes.Repeat([]byte{0x5a}, 64<<10))
	copy(want[7*mib:], bytes.Repeat([]byte{0x5b}, 3000))
	clear(want[8*mib : 8*mib+64<<10])
	// Not flushed: a new block, and a rewrite of one already held.
	if _, err := ov.WriteAt(bytes.Repeat([]byte{0x77}, 4096), 12*mib); err != nil {
		t.Fatal(err)
	}
	s.stop()
	crash(ov)

	ov2, err := OpenOverlay(base, OverlayOptions{Path: path, BaseID: "point-1/vda"})
	if err != nil {
		t.Fatal(err)
	}
	s2 := serve(t, Export{Name: "vda", Overlay: ov2})
	c := s2.dial(t, "vda")
	mustEqual(t, "after restart", readAll(t, c, c.Size()), want)
	c.Close()
	s2.stop()
	if err := ov2.Close(); err != nil {
		t.Fatal(err)
	}

	// The wrong base is refused, and so is a second user.
	if _, err := OpenOverlay(base, OverlayOptions{Path: path, BaseID: "point-2/vda"}); err == nil || !strings.Contains(err.Error(), "point-1/vda") {
		t.Fatalf("reopen over another base: %v", err)
	}
	ov3, err := OpenOverlay(base, OverlayOptions{Path: path, BaseID: "point-1/vda"})
	if err != nil {
		t.Fatal(err)
	}
	defer ov3.Close()
	if _, err := OpenOverlay(base, OverlayOptions{Path: path, BaseID: "point-1/vda"}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second open: %v", err)
	}
}

// crash drops an overlay the way a dying process would: no flush, no
// bitmap write.
func crash(o *Overlay) {
	o.pause.Lock()
	o.closed = true
	o.unlock()
	o.f.Close()
	o.pause.Unlock()
}

// TestTCPAndList: a TCP listener, qemu-img and our client over it, and
// qemu-nbd --list (NBD_OPT_LIST, INFO, LIST_META_CONTEXT).
func TestTCPAndList(t *testing.T) {
	rawPath, qcowPath, want := makeBase(t)
	ov := openOverlay(t, openImage(t, qcowPath), "")
	srv, err := New(
		Export{Name: "vda", Description: "recovered disk", Overlay: ov},
		Export{Name: "vdb", Image: openImage(t, rawPath), ReadOnly: true, MinBlockSize: 512},
	)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := startOn(t, srv, l, "")
	addr := l.Addr().String()
	c, err := nbd.DialURL(context.Background(), "nbd://"+addr+"/vda", nbd.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mustEqual(t, "over TCP", readAll(t, c, c.Size()), want)
	out := filepath.Join(t.TempDir(), "out.raw")
	testenv.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", "nbd://"+addr+"/vdb", out)
	got, _ := os.ReadFile(out)
	mustEqual(t, "qemu-img convert over TCP", got, want)

	list := testenv.Run(t, "qemu-nbd", "--list", "--bind=127.0.0.1", "--port="+addr[strings.LastIndex(addr, ":")+1:])
	for _, s := range []string{"exports available: 2", "export: 'vda'", "description: recovered disk", "export: 'vdb'", "min block: 512", "max block: 33554432", "base:allocation"} {
		if !strings.Contains(list, s) {
			t.Errorf("qemu-nbd --list lacks %q:\n%s", s, list)
		}
	}
	inf, err := nbd.Probe(context.Background(), "tcp", addr, "vdb", 10*time.Second)
	if err != nil || !inf.ReadOnly || inf.MinBlock != 512 || len(inf.MetaContexts) != 1 {
		t.Errorf("probe: %+v, %v", inf, err)
	}
	s.stop()
}

// TestServeCancel: cancelling Serve's context closes the listener and the
// connections, and Serve returns.
func TestServeCancel(t *testing.T) {
	_, qcowPath, _ := makeBase(t)
	s := serve(t, Export{Name: "vda", Overlay: openOverlay(t, openImage(t, qcowPath), "")})
	c := s.dial(t, "vda")
	if _, err := c.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s.stop()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Serve took %v to stop", d)
	}
	if _, err := c.ReadAt(make([]byte, 4096), 0); err == nil {
		t.Fatal("read after the server stopped succeeded")
	}
	if _, err := net.Dial("unix", s.sock); err == nil {
		t.Fatal("listener still accepts")
	}
}
