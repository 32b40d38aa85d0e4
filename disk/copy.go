package disk

import (
	"context"
	"fmt"
	"io"
	"runtime"

	"golang.org/x/sync/errgroup"
)

// CopyOptions tune Copy.
type CopyOptions struct {
	// Piece is the unit read at once; 4 MiB by default.
	Piece int64
	// Readers run concurrently; the writer stays single-threaded because
	// format writers keep block tables that are not goroutine-safe.
	Readers  int
	Progress func(done int64)
}

// ConcurrentWriter is implemented by writers whose WriteAt may be called
// from several goroutines at once for disjoint ranges (raw files): Copy
// then lets every reader write its own pieces.
type ConcurrentWriter interface {
	ConcurrentWrites() bool
}

// Readaheader is implemented by sources that can fetch ahead of a copy
// that announces its ranges (a repository file): reading then overlaps
// writing instead of alternating with it. stop is called when the copy
// ends, before its context does.
type Readaheader interface {
	Readahead(ctx context.Context, ranges []Extent) (stop func())
}

// Copy writes the given ranges of src into dst at the same offsets: Data
// ranges with src's bytes, Zero ranges with zeros (so a differencing layer
// hides its parent there), Unallocated ranges not at all.
func Copy(ctx context.Context, dst io.WriterAt, src io.ReaderAt, ranges []Extent, opts CopyOptions) error {
	piece := opts.Piece
	if piece <= 0 {
		piece = 4 << 20
	}
	direct := false
	if cw, ok := dst.(ConcurrentWriter); ok {
		direct = cw.ConcurrentWrites()
	}
	readers := opts.Readers
	if readers <= 0 {
		readers = runtime.GOMAXPROCS(0)
		if direct {
			// Each worker then also waits for its own write (with
			// O_DIRECT, for the device): twice as many keep the CPU busy
			// while writes are in flight.
			readers *= 2
		}
	}
	type job struct {
		off  int64
		n    int64
		zero bool
		buf  []byte
		done chan error
	}
	free := make(chan []byte, readers+2)
	for range cap(free) {
		free <- make([]byte, piece)
	}
	queue := make(chan *job, readers+2) // in write order
	work := make(chan *job, readers+2)
	g, gctx := errgroup.WithContext(ctx)
	if ra, ok := src.(Readaheader); ok {
		stop := ra.Readahead(gctx, ranges)
		defer stop()
	}
	g.Go(func() error {
		defer close(queue)
		defer close(work)
		for _, e := range ranges {
			if e.Kind == Unallocated {
				continue
			}
			for off := e.Offset; off < e.End(); off += piece {
				j := &job{off: off, n: min(piece, e.End()-off), zero: e.Kind == Zero, done: make(chan error, 1)}
				select {
				case j.buf = <-free:
				case <-gctx.Done():
					return gctx.Err()
				}
				select {
				case queue <- j:
				case <-gctx.Done():
					return gctx.Err()
				}
				select {
				case work <- j:
				case <-gctx.Done():
					return gctx.Err()
				}
			}
		}
		return nil
	})
	for range readers {
		g.Go(func() error {
			for j := range work {
				b := j.buf[:j.n]
				var err error
				if j.zero {
					clear(b)
				} else {
					var n int
					n, err = src.ReadAt(b, j.off)
					if int64(n) == j.n {
						err = nil
					} else if err == nil || err == io.EOF {
						err = fmt.Errorf("short read: %d of %d bytes", n, j.n)
					}
					if err != nil {
						err = fmt.Errorf("read %d bytes at offset %d: %w", j.n, j.off, err)
					}
				}
				if err == nil && direct {
					if _, werr := dst.WriteAt(b, j.off); werr != nil {
						err = fmt.Errorf("write %d bytes at offset %d: %w", j.n, j.off, werr)
					}
				}
				j.done <- err
			}
			return nil
		})
	}
	g.Go(func() error {
		var done int64
		for j := range queue {
			var err error
			select {
			case err = <-j.done:
			case <-gctx.Done():
				return gctx.Err()
			}
			if err != nil {
				return err
			}
			if !direct {
				if _, err := dst.WriteAt(j.buf[:j.n], j.off); err != nil {
					return fmt.Errorf("write %d bytes at offset %d: %w", j.n, j.off, err)
				}
			}
			free <- j.buf
			done += j.n
			if opts.Progress != nil {
				opts.Progress(done)
			}
		}
		return nil
	})
	return g.Wait()
}
