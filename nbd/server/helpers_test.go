package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/internal/testenv"
	"lifeboat/nbd"
)

const mib = 1 << 20

// testSize is not a multiple of 4 KiB: the export ends in a short block.
const testSize = 16*mib + 3*512

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 99))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func sum(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// makeBase writes a raw image with data, holes and a short last block,
// and a qcow2 copy of it (with zero clusters over part of the data, done
// the same way in the raw one). It returns both paths and the bytes.
func makeBase(t *testing.T) (rawPath, qcowPath string, want []byte) {
	t.Helper()
	dir := t.TempDir()
	want = make([]byte, testSize)
	copy(want[0:], randomBytes(1, 3*mib))
	copy(want[5*mib+512:], randomBytes(2, 70000))
	copy(want[8*mib:], randomBytes(3, 4*mib))
	copy(want[testSize-3000:], randomBytes(4, 3000))
	rawPath = filepath.Join(dir, "base.raw")
	f, err := os.Create(rawPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(testSize); err != nil {
		t.Fatal(err)
	}
	// Write only non-zero 64 KiB pieces so the file has holes.
	for off := 0; off < testSize; off += 64 << 10 {
		p := want[off:min(off+64<<10, testSize)]
		if !allZero(p) {
			if _, err := f.WriteAt(p, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
	}
	f.Close()
	qcowPath = filepath.Join(dir, "base.qcow2")
	testenv.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", rawPath, qcowPath)
	// Zero clusters in the qcow2 over data, mirrored in want and raw.
	testenv.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -z 9M 512k", qcowPath)
	testenv.Run(t, "qemu-io", "-f", "raw", "-c", "write -z 9M 512k", rawPath)
	clear(want[9*mib : 9*mib+512<<10])
	return rawPath, qcowPath, want
}

func openImage(t *testing.T, path string) disk.Image {
	t.Helper()
	img, err := formats.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

func openOverlay(t *testing.T, base disk.Image, path string) *Overlay {
	t.Helper()
	o, err := OpenOverlay(base, OverlayOptions{Path: path, Dir: t.TempDir(), BaseID: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// running is a server on a unix socket.
type running struct {
	sock   string
	srv    *Server
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func shortTempDir(t *testing.T) string {
	t.Helper()
	// Unix socket paths are limited to ~107 bytes; t.TempDir can be long.
	d, err := os.MkdirTemp("", "nbdsrv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func serve(t *testing.T, exports ...Export) *running {
	t.Helper()
	srv, err := New(exports...)
	if err != nil {
		t.Fatal(err)
	}
	var logMu sync.Mutex
	srv.Logf = func(format string, args ...any) {
		logMu.Lock()
		defer logMu.Unlock()
		t.Logf(format, args...)
	}
	sock := filepath.Join(shortTempDir(t), "s.sock")
	l, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	return startOn(t, srv, l, sock)
}

func startOn(t *testing.T, srv *Server, l net.Listener, sock string) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{sock: sock, srv: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- srv.Serve(ctx, l) }()
	t.Cleanup(r.stop)
	return r
}

// stop cancels Serve and waits for it to return.
func (r *running) stop() {
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				panic(fmt.Sprintf("Serve: %v", err))
			}
		case <-time.After(10 * time.Second):
			panic("Serve did not return after cancel")
		}
	})
}

func (r *running) url(export string) string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, r.sock)
}

func (r *running) dial(t *testing.T, export string) *nbd.Client {
	t.Helper()
	c, err := nbd.Dial(context.Background(), "unix", r.sock, nbd.Options{Export: export, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readAll(t *testing.T, r io.ReaderAt, size int64) []byte {
	t.Helper()
	b := make([]byte, size)
	n, err := r.ReadAt(b, 0)
	if int64(n) != size || (err != nil && err != io.EOF) {
		t.Fatalf("read whole export: %d of %d bytes: %v", n, size, err)
	}
	return b
}

func mustEqual(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs at byte %d", what, firstDiff(got, want))
	}
}

// mapEntry is one entry of qemu-img map --output=json.
type mapEntry struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Data   bool  `json:"data"`
	Zero   bool  `json:"zero"`
}

// qemuMap maps an NBD export with qemu's own NBD client, in extent kinds
// the way base:allocation flags map (data false = hole, zero = zero).
func qemuMap(t *testing.T, url string) []disk.Extent {
	t.Helper()
	out := testenv.Run(t, "qemu-img", "map", "--output=json", "-f", "raw", url)
	var m []mapEntry
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("qemu-img map output: %v\n%s", err, out)
	}
	var ext []disk.Extent
	for _, e := range m {
		var f uint32
		if !e.Data {
			f |= nbd.StateHole
		}
		if e.Zero {
			f |= nbd.StateZero
		}
		ext = disk.AppendExtent(ext, disk.Extent{Offset: e.Start, Length: e.Length, Kind: nbd.AllocationKind(f)})
	}
	return ext
}

func fmtExtents(l []disk.Extent) string {
	var b bytes.Buffer
	for _, e := range l {
		fmt.Fprintf(&b, "[%d+%d %v] ", e.Offset, e.Length, e.Kind)
	}
	return b.String()
}

func qemuIO(t *testing.T, url string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	return testenv.Run(t, "qemu-io", append(args, url)...)
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sum(b)
}
