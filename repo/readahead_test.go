package repo

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"lifeboat/disk"
)

// TestCopyWithReadahead copies stored images through disk.Copy, which
// announces its ranges so chunk objects are fetched ahead: every slot kind
// (hole, compressed, stored plain, a chunk used twice, a short last chunk)
// must come out right whatever the piece size, and a corrupt chunk or a
// cancelled copy must end the copy with an error, not a hang.
func TestCopyWithReadahead(t *testing.T) {
	ctx := context.Background()
	text := bytes.Repeat([]byte("readahead keeps the disk busy. "), 70000)
	twice := randBytes(11, mib)
	for _, c := range []struct {
		name    string
		piece   int64
		corrupt bool
		cancel  bool
		reverse bool // read the slots last to first: the reader is ahead of the fetching
	}{
		{name: "whole chunks", piece: 4 * mib},
		{name: "chunk pieces", piece: mib},
		{name: "unaligned pieces", piece: mib + mib/2},
		{name: "reader ahead", reverse: true},
		{name: "corrupt chunk", piece: 4 * mib, corrupt: true},
		{name: "cancelled", piece: mib, cancel: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, dir := newRepo(t, InitOptions{})
			img, ref := rawImage(t, 40*mib+512, map[int64][]byte{
				0:        randBytes(1, 3*mib),
				4 * mib:  text[:2*mib],
				9 * mib:  twice,
				12 * mib: twice,
				20 * mib: randBytes(2, 12*mib),
				40 * mib: randBytes(3, 512),
			})
			id, _, _, err := r.WriteImage(ctx, img, WriteOptions{})
			if err != nil {
				t.Fatal(err)
			}
			p := savePoint(t, r, "img", id, img.Size(), time.Now())
			if c.corrupt {
				flipChunkByte(t, r, dir, randBytes(2, 12*mib)[5*mib:6*mib])
			}
			fi, err := r.OpenFile(ctx, p, "disk.raw")
			if err != nil {
				t.Fatal(err)
			}
			ranges, err := fi.Extents(ctx, 0, fi.Size())
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, fi.Size())
			if c.reverse {
				stop := fi.Readahead(ctx, ranges)
				for off := (fi.Size() - 1) / mib * mib; off >= 0; off -= mib {
					n := min(mib, fi.Size()-off)
					if _, err := fi.ReadAt(got[off:off+n], off); err != nil {
						t.Fatalf("read at %d: %v", off, err)
					}
				}
				stop()
			} else {
				out := &memWriter{b: got}
				cctx, cancel := context.WithCancel(ctx)
				defer cancel()
				opts := disk.CopyOptions{Piece: c.piece}
				if c.cancel {
					opts.Progress = func(done int64) {
						if done >= 8*mib {
							cancel()
						}
					}
				}
				errc := make(chan error, 1)
				go func() { errc <- disk.Copy(cctx, out, fi, ranges, opts) }()
				select {
				case err = <-errc:
				case <-time.After(30 * time.Second):
					t.Fatal("copy hangs")
				}
				switch {
				case c.corrupt:
					if !errors.Is(err, ErrCorrupt) {
						t.Fatalf("copy with a corrupt chunk: %v, want ErrCorrupt", err)
					}
					return
				case c.cancel:
					if !errors.Is(err, context.Canceled) {
						t.Fatalf("cancelled copy: %v", err)
					}
					return
				case err != nil:
					t.Fatal(err)
				}
			}
			if !bytes.Equal(got, ref) {
				for i := range got {
					if got[i] != ref[i] {
						t.Fatalf("content differs first at offset %d", i)
					}
				}
			}
			if fi.ahead.Load() != nil {
				t.Error("readahead still set after the copy")
			}
		})
	}
}

type memWriter struct{ b []byte }

func (w *memWriter) WriteAt(p []byte, off int64) (int, error) { return copy(w.b[off:], p), nil }
