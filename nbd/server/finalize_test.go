//go:build unix

package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/internal/testenv"
)

// qemuWriter is an interactive qemu-io writing random patterns through
// NBD, one command at a time, keeping a model of the export: model holds
// every write qemu-io has acknowledged.
type qemuWriter struct {
	t     *testing.T
	mu    sync.Mutex
	model []byte
	acked int
	stop  chan struct{}
	done  chan error
}

func startWriter(t *testing.T, url string, model []byte, seed uint64) *qemuWriter {
	cmd := exec.Command(testenv.Tool(t, "qemu-io"), "-f", "raw", url)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &qemuWriter{t: t, model: model, stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		err := w.loop(stdin, bufio.NewScanner(stdout), seed)
		stdin.Close()
		io.Copy(io.Discard, stdout)
		if werr := cmd.Wait(); err == nil && werr != nil {
			err = fmt.Errorf("qemu-io: %v", werr)
		}
		w.done <- err
	}()
	return w
}

func (w *qemuWriter) loop(stdin io.Writer, out *bufio.Scanner, seed uint64) error {
	r := rand.New(rand.NewPCG(seed, 5))
	size := int64(len(w.model))
	for i := 0; ; i++ {
		select {
		case <-w.stop:
			return nil
		default:
		}
		n := r.Int64N(128<<10) + 1
		off := r.Int64N(size - n)
		var cmd, want string
		var apply func()
		switch r.IntN(8) {
		case 0: // zeroes, whole blocks
			off, n = off&^4095, (n+4095)&^4095
			cmd, want = fmt.Sprintf("write -z %d %d", off, n), "wrote"
			apply = func() { clear(w.model[off : off+n]) }
		case 1: // trim, whole blocks: they read as zeros
			off, n = off&^4095, (n+4095)&^4095
			cmd, want = fmt.Sprintf("discard %d %d", off, n), "discard"
			apply = func() { clear(w.model[off : off+n]) }
		default:
			p := byte(i%250 + 1)
			cmd, want = fmt.Sprintf("write -P %d %d %d", p, off, n), "wrote"
			apply = func() {
				for k := range n {
					w.model[off+k] = p
				}
			}
		}
		if _, err := fmt.Fprintln(stdin, cmd); err != nil {
			return err
		}
		for {
			if !out.Scan() {
				return fmt.Errorf("qemu-io ended during %q: %v", cmd, out.Err())
			}
			line := strings.TrimPrefix(out.Text(), "qemu-io> ")
			if strings.HasPrefix(line, want) {
				break
			}
			if strings.Contains(line, "failed") || strings.Contains(line, "rror") {
				return fmt.Errorf("%s: %s", cmd, line)
			}
		}
		w.mu.Lock()
		apply()
		w.acked++
		w.mu.Unlock()
	}
}

func (w *qemuWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked
}

func (w *qemuWriter) finish() {
	close(w.stop)
	if err := <-w.done; err != nil {
		w.t.Fatal(err)
	}
}

// waitWrites waits until the writer has had n more writes acknowledged.
func (w *qemuWriter) waitWrites(n int) {
	start := w.count()
	deadline := time.Now().Add(30 * time.Second)
	for w.count() < start+n {
		if time.Now().After(deadline) {
			w.t.Fatalf("writer stuck at %d writes", w.count())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFinalize copies the merged disk into a real image while qemu-io keeps
// writing through NBD: at the pause the copy equals the overlay; after the
// writer stops, the overlay equals base+writes, and finalizing again
// brings the copy up to date.
func TestFinalize(t *testing.T) {
	_, qcowPath, want := makeBase(t)
	base := openImage(t, qcowPath)
	ov := openOverlay(t, base, filepath.Join(t.TempDir(), "vda.overlay"))
	s := serve(t, Export{Name: "vda", Overlay: ov})
	w := startWriter(t, s.url("vda"), want, 1)
	w.waitWrites(20)

	ctx := context.Background()
	dstPath := filepath.Join(t.TempDir(), "final.raw")
	dst, err := formats.Create(ctx, dstPath, disk.Raw, disk.CreateOptions{Size: ov.Size()})
	if err != nil {
		t.Fatal(err)
	}
	startWrites := w.count()
	var pausedWrites int
	st, err := ov.Finalize(ctx, dst, FinalizeOptions{
		// Slow passes, so that writes land during each.
		Copy:       disk.CopyOptions{Piece: 256 << 10, Readers: 2, Progress: func(int64) { time.Sleep(3 * time.Millisecond) }},
		PauseBelow: -1,
		MaxPasses:  3,
		WhilePaused: func(ctx context.Context) error {
			pausedWrites = w.count()
			view := readAll(t, ov.Image(), ov.Size())
			got, err := os.ReadFile(dstPath)
			if err != nil {
				return err
			}
			if sum(got) != sum(view) {
				return fmt.Errorf("copy differs from the overlay at byte %d", firstDiff(got, view))
			}
			// A write now waits for the pause to end.
			time.Sleep(50 * time.Millisecond)
			if n := w.count(); n > pausedWrites+1 {
				return fmt.Errorf("%d writes completed during the pause", n-pausedWrites)
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("finalize: %+v; writes during it: %d", st, pausedWrites-startWrites)
	if pausedWrites-startWrites < 10 {
		t.Errorf("only %d writes ran during finalize", pausedWrites-startWrites)
	}
	if st.Passes != 5 || st.Generation < 5 || st.Paused > 5*time.Second {
		t.Errorf("stats %+v", st)
	}
	w.waitWrites(10)
	w.finish()

	// The overlay is base + every acknowledged write, through the
	// overlay and through NBD.
	view := readAll(t, ov.Image(), ov.Size())
	mustEqual(t, "overlay after writes", view, w.model)
	c := s.dial(t, "vda")
	mustEqual(t, "export after writes", readAll(t, c, c.Size()), w.model)

	// Finalize again, writes stopped: the copy catches up exactly.
	st, err = ov.Finalize(ctx, dst, FinalizeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	if st.Passes != 2 || st.PausedBytes != 0 {
		t.Errorf("second finalize %+v", st)
	}
	if got := fileSum(t, dstPath); got != sum(w.model) {
		t.Fatalf("final image sha256 %s, want %s (base+writes)", got, sum(w.model))
	}
}
