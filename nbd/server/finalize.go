package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"lifeboat/disk"
)

// FinalizeOptions tune Finalize.
type FinalizeOptions struct {
	// Copy tunes each pass's disk.Copy.
	Copy disk.CopyOptions
	// PauseBelow: once the blocks dirtied since the last pass amount to
	// at most this many bytes, the last pass runs with writes paused.
	// 0 means 64 MiB; negative means as soon as MaxPasses allows.
	PauseBelow int64
	// MaxPasses bounds the passes over dirtied blocks that run while
	// writes continue (after the first, full pass); when they are used
	// up, the last pass runs paused whatever is left. 0 means 8.
	MaxPasses int
	// WhilePaused, when set, runs after the last pass while writes are
	// still paused and dst equals the overlay: the moment to switch the
	// VM to the copy (or to stop serving the overlay). Its error is
	// Finalize's.
	WhilePaused func(ctx context.Context) error
}

// FinalizeStats describe a Finalize.
type FinalizeStats struct {
	// Passes counts every pass: the full copy, the passes over dirtied
	// blocks while writes went on, and the last, paused one.
	Passes int
	// Generation is the dirty-tracking generation at the end: it grows by
	// one each time the dirty set is taken for a pass.
	Generation uint64
	// Bytes is what all passes copied (data and zeros).
	Bytes int64
	// PausedBytes is what the last pass copied with writes paused.
	PausedBytes int64
	// Paused is how long writes were held.
	Paused time.Duration
}

// ErrFinalizing is returned when a Finalize is already running.
var ErrFinalizing = errors.New("overlay: finalize already running")

// Finalize copies the merged view into dst (a fresh image of the export's
// size that reads as zeros where it is not written, and that accepts
// rewrites: a raw file, or a qcow2/VHD/VHDX writer) while the overlay
// stays writable:
//
//  1. dirty tracking starts (generation 1), then the whole view is copied
//     (unallocated ranges are skipped);
//  2. while the blocks written since the last pass exceed
//     opts.PauseBelow and passes remain, the dirty set is taken (and
//     cleared, atomically per word; the generation grows) and those
//     blocks are copied again;
//  3. writes are paused (those in flight finish first; new ones, from
//     NBD or WriteAt, wait), the last dirty set is copied, and
//     opts.WhilePaused runs; then writes resume.
//
// A write marks its blocks dirty only after its data is in the overlay,
// so a pass that misses the mark has read the new data; one that sees it
// copies the block again in the next pass. When Finalize returns nil,
// dst held exactly the merged view at the moment writes were paused;
// writes after that are in the overlay only. dst is not closed or synced.
func (o *Overlay) Finalize(ctx context.Context, dst io.WriterAt, opts FinalizeOptions) (st FinalizeStats, err error) {
	if !o.finalizing.CompareAndSwap(false, true) {
		return st, ErrFinalizing
	}
	defer o.finalizing.Store(false)
	pauseBelow := opts.PauseBelow
	if pauseBelow == 0 {
		pauseBelow = 64 << 20
	}
	maxPasses := opts.MaxPasses
	if maxPasses <= 0 {
		maxPasses = 8
	}

	o.dirty.swap()
	o.gen.Add(1)
	o.tracking.Store(true)
	defer o.tracking.Store(false)

	full, err := o.Extents(ctx, 0, o.size)
	if err != nil {
		return st, err
	}
	if err := o.copyPass(ctx, dst, full, opts, &st); err != nil {
		return st, err
	}
	for pass := 0; pass < maxPasses && o.dirty.count()*BlockSize > pauseBelow; pass++ {
		if err := o.copyDirty(ctx, dst, opts, &st); err != nil {
			return st, err
		}
	}

	o.pause.Lock()
	start := time.Now()
	defer func() {
		st.Paused = time.Since(start)
		o.pause.Unlock()
	}()
	if o.closed {
		return st, ErrClosed
	}
	before := st.Bytes
	if err := o.copyDirty(ctx, dst, opts, &st); err != nil {
		return st, err
	}
	st.PausedBytes = st.Bytes - before
	if opts.WhilePaused != nil {
		if err := opts.WhilePaused(ctx); err != nil {
			return st, err
		}
	}
	return st, nil
}

// copyDirty takes the dirty set and copies those blocks.
func (o *Overlay) copyDirty(ctx context.Context, dst io.WriterAt, opts FinalizeOptions, st *FinalizeStats) error {
	words := o.dirty.swap()
	st.Generation = o.gen.Add(1)
	var ranges []disk.Extent
	err := runs(words, o.nblk, func(lo, hi int64) error {
		off := lo * BlockSize
		ext, err := o.Extents(ctx, off, min(hi*BlockSize, o.size)-off)
		if err != nil {
			return err
		}
		for _, e := range ext {
			// dst may hold older data here: never skip.
			if e.Kind == disk.Unallocated {
				e.Kind = disk.Zero
			}
			ranges = disk.AppendExtent(ranges, e)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return o.copyPass(ctx, dst, ranges, opts, st)
}

func (o *Overlay) copyPass(ctx context.Context, dst io.WriterAt, ranges []disk.Extent, opts FinalizeOptions, st *FinalizeStats) error {
	st.Passes++
	if err := disk.Copy(ctx, dst, o.Image(), ranges, opts.Copy); err != nil {
		return fmt.Errorf("finalize pass %d: %w", st.Passes, err)
	}
	for _, e := range ranges {
		if e.Kind != disk.Unallocated {
			st.Bytes += e.Length
		}
	}
	if st.Generation == 0 {
		st.Generation = o.gen.Load()
	}
	return nil
}
