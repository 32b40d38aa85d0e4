//go:build unix

package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"lifeboat/disk"
	"lifeboat/internal/testenv"
)

// lockedBuffer collects a child's stderr.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// qemuNBD is a qemu-nbd process the test started.
type qemuNBD struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	sock   string // unix socket, or "" when serving TCP
	addr   string // host:port when serving TCP
	exited chan struct{}
}

// startNBD runs qemu-nbd read-only on a unix socket in a short temporary
// folder (socket paths are limited to 108 bytes), waits until it accepts
// connections, and kills it when the test ends. args name the image and
// any extra options (--bitmap, --export-name ...).
func startNBD(t *testing.T, args ...string) *qemuNBD {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbdt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	s := launch(t, append([]string{"--persistent", "--shared=8", "--read-only", "--socket=" + sock}, args...))
	s.sock = sock
	s.waitReady(t, "unix", sock)
	return s
}

// startNBDTCP is startNBD on 127.0.0.1 and a free port.
func startNBDTCP(t *testing.T, args ...string) *qemuNBD {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := launch(t, append([]string{"--persistent", "--shared=8", "--read-only", "--bind=127.0.0.1", fmt.Sprintf("--port=%d", port)}, args...))
	s.addr = fmt.Sprintf("127.0.0.1:%d", port)
	s.waitReady(t, "tcp", s.addr)
	return s
}

func launch(t *testing.T, args []string) *qemuNBD {
	t.Helper()
	s := &qemuNBD{stderr: &lockedBuffer{}, exited: make(chan struct{})}
	s.cmd = exec.Command(testenv.Tool(t, "qemu-nbd"), args...)
	s.cmd.Stderr = s.stderr
	s.cmd.Stdout = s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("qemu-nbd: %v", err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		s.cmd.Process.Signal(syscall.SIGCONT)
		s.cmd.Process.Kill()
		<-s.exited
	})
	return s
}

func (s *qemuNBD) waitReady(t *testing.T, network, addr string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-s.exited:
			t.Fatalf("qemu-nbd exited: %s", s.stderr)
		default:
		}
		if c, err := net.Dial(network, addr); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-nbd did not listen on %s within 15s: %s", addr, s.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dial connects to the server's unix socket; the client closes with the test.
func (s *qemuNBD) dial(t *testing.T, opts Options) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix", s.sock, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", s.sock, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func qemuIO(t *testing.T, img string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	testenv.Run(t, "qemu-io", append(args, img)...)
}

// testImageSize is not a multiple of the 64 KiB cluster: the export ends
// in a partial cluster.
const testImageSize = 20*mib + 3*512

// makeImage builds a qcow2 image with every kind of content qemu
// distinguishes and returns its path and guest-visible bytes (qemu-img
// convert -O raw of it):
//   - random data written from a raw file (so misplaced bytes show),
//     with all-zero gaps that convert leaves unallocated;
//   - zero clusters (write -z), and data written over part of them;
//   - a compressed cluster;
//   - unaligned writes, and data in the final partial cluster.
func makeImage(t *testing.T) (string, []byte) {
	t.Helper()
	dir := t.TempDir()
	raw := make([]byte, testImageSize)
	copy(raw[0:], randomBytes(1, 1*mib))
	copy(raw[1*mib+512:], randomBytes(2, 4096+100))
	copy(raw[8*mib:], randomBytes(3, 3*mib))
	copy(raw[12*mib+12345:], randomBytes(4, 70000))
	src := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(src, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "img.qcow2")
	testenv.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=65536", src, img)
	qemuIO(t, img,
		"write -z 3M 2M",                                         // zero clusters
		"write -P 0x33 4M 64k",                                   // data inside them
		fmt.Sprintf("write -z %d 128k", 8*mib+64<<10),            // zero clusters punched into data
		"write -c -P 0x5a 16M 64k",                               // a compressed cluster
		fmt.Sprintf("write -P 0x77 %d 300", 17*mib+100),          // unaligned, inside an unallocated cluster
		fmt.Sprintf("write -P 0x55 %d 1000", testImageSize-1000), // the final partial cluster
	)
	ref := filepath.Join(dir, "ref.raw")
	testenv.Run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, ref)
	want, err := os.ReadFile(ref)
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != testImageSize {
		t.Fatalf("reference is %d bytes, want %d", len(want), testImageSize)
	}
	return img, want
}

// mapEntry is one entry of qemu-img map --output=json.
type mapEntry struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Data   bool  `json:"data"`
	Zero   bool  `json:"zero"`
	Offset int64 `json:"offset"`
}

func qemuMap(t *testing.T, args ...string) []mapEntry {
	t.Helper()
	out := testenv.Run(t, "qemu-img", append([]string{"map", "--output=json"}, args...)...)
	var m []mapEntry
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("qemu-img map output: %v\n%s", err, out)
	}
	return m
}

// kindOf maps a qemu-img map entry the way base:allocation flags map:
// data false = NBD_STATE_HOLE, zero true = NBD_STATE_ZERO.
func kindOf(e mapEntry) disk.ExtentKind {
	var f uint32
	if !e.Data {
		f |= StateHole
	}
	if e.Zero {
		f |= StateZero
	}
	return AllocationKind(f)
}
