// Package server is an NBD server for instant recovery: it serves a
// recovery point's disk (any disk.Image, such as a repo.FileImage that
// reads chunks on demand) to QEMU as a writable disk, with every write
// kept in a local overlay, so a VM boots straight from the backup; later
// Finalize copies the merged disk to real storage while the VM runs.
//
//	base, _ := repository.OpenFile(ctx, point, "vda.qcow2")
//	ov, _ := server.OpenOverlay(base, server.OverlayOptions{Path: "/var/lib/lifeboat/ir/vda.overlay", BaseID: point.ID + "/vda"})
//	srv, _ := server.New(server.Export{Name: "vda", Overlay: ov})
//	l, _ := server.ListenUnix("/run/lifeboat/vda.sock")
//	go srv.Serve(ctx, l) // qemu: -drive file=nbd+unix:///vda?socket=/run/lifeboat/vda.sock,format=raw
//	...
//	st, err := ov.Finalize(ctx, dst, server.FinalizeOptions{WhilePaused: switchVM})
//
// # Protocol
//
// Fixed newstyle negotiation (NBD_FLAG_NO_ZEROES offered) with
// NBD_OPT_GO and NBD_OPT_INFO (export size and flags, name, description,
// block sizes: minimum 1 or 512, preferred 4096, maximum 32 MiB),
// NBD_OPT_EXPORT_NAME, NBD_OPT_LIST, NBD_OPT_ABORT,
// NBD_OPT_STRUCTURED_REPLY and NBD_OPT_LIST/SET_META_CONTEXT with the one
// context base:allocation. No TLS, no extended headers.
//
// Commands: READ (with structured replies, zero blocks go as
// OFFSET_HOLE chunks unless NBD_CMD_FLAG_DF), WRITE, WRITE_ZEROES
// (NO_HOLE and FAST_ZERO accepted: zeroing is always fast), TRIM, FLUSH,
// FUA on any command, BLOCK_STATUS for base:allocation (overlay data
// blocks are allocated, zeroed or trimmed blocks read as zeros without
// being holes, the rest is the base chain's own allocation; one reply
// covers at most 1 GiB), DISC. Each connection reads requests in one
// goroutine and runs them on a pool of workers (Server.Workers), so
// requests overlap and replies come in completion order; request buffers
// in flight are capped at 64 MiB per connection. A READ or WRITE larger
// than 32 MiB gets EOVERFLOW (a write's payload is read and dropped),
// ranges outside the export EINVAL (ENOSPC for writes), writes to a
// read-only export EPERM, unknown commands and flags EINVAL. Exports
// announce NBD_FLAG_CAN_MULTI_CONN: all connections share one overlay and
// a FLUSH covers every connection's completed writes.
//
// # Overlay and crash semantics
//
// The overlay is a sparse file of the export's size plus two bitmaps with
// one bit per 4 KiB block: allocated (the overlay defines the block) and
// zero (it reads as zeros; its file space is punched out). A block first
// written partially is copied from the base first (copy-on-write), so an
// allocated data block is always complete in the file. Writers of the
// same block are serialised by striped locks; readers never wait.
//
// Writes go to the file with plain pwrite (the page cache is the volatile
// write cache NBD allows). NBD_CMD_FLUSH, a FUA request and Close take a
// snapshot of the bitmaps, fsync the data file, then replace the bitmap
// file (PATH.bitmap) atomically: write PATH.bitmap.tmp, fsync, rename,
// fsync the folder. The snapshot is taken before the fsync, so every
// block it calls allocated holds data that the fsync made durable.
//
// So after a FLUSH (or a FUA write) has been answered, every write
// answered before the FLUSH arrived is durable, data and bitmap, and a
// server restarted on the same overlay (OpenOverlay with the same path)
// serves it. After a crash (of the server or the host) the overlay is what
// the last completed flush recorded: blocks first written since then read
// from the base again (their bytes in the file are ignored, and
// overwritten whole when the block is next written), and blocks already
// allocated may hold any mix of old and new data for writes since that
// flush — what a disk with a volatile write cache promises. A bitmap file
// is never half-written: it is either the old or the new one, and a
// corrupt one (CRC-32C) is refused, as is a data file without its bitmap
// or an overlay made for another base (size or BaseID). An flock keeps a
// second process off an overlay in use.
//
// # Finalize
//
// Overlay.Image is the merged view as a disk.Image, and Overlay.Finalize
// copies it into a real image with disk.Copy while the VM keeps writing:
// writes mark their blocks in a dirty bitmap (after the data is in
// place); a first pass copies everything, further passes copy the blocks
// dirtied meanwhile (each takes and clears the dirty set, bumping a
// generation counter), and once the dirty set is small (or after
// MaxPasses) the last pass runs with writes paused — writes in flight
// finish, new ones wait, typically for milliseconds — so that dst then
// equals the overlay exactly; WhilePaused runs at that moment to switch
// the VM over.
package server
