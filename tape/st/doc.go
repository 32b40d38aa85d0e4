// Package st drives a Linux SCSI tape drive through the st driver's
// no-rewind device (/dev/nst*) with the mt ioctls: MTIOCTOP (MTWEOF, MTREW,
// MTFSF, MTBSF, MTSETBLK, MTOFFL) and MTIOCGET for status (beginning of
// tape, end of data, early warning, write protection). It builds on Linux
// only; elsewhere the package is empty.
//
// End of media follows st(4): when the drive passes the early-warning
// point, a write still completes and the next one fails with ENOSPC; the
// driver lets a write after that proceed, so a writer can finish a
// trailer. Drive treats the first ENOSPC as early warning and retries the
// write once; a second ENOSPC for the same block is tape.ErrEndOfMedia.
package st
