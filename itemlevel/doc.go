// Package itemlevel browses and extracts files inside a disk image without
// restoring the disk and without a hypervisor. It reads any io.ReaderAt —
// a raw file, a qcow2/VHD/VHDX reader, or a repo.FileImage that fetches a
// recovery point's chunks on demand.
//
// OpenVolumes finds the volumes: GPT (primary header, or the backup when
// the primary is damaged; CRC-checked; 512 and 4096-byte sectors), MBR
// with extended and logical partitions, or a filesystem on the whole
// disk. Each volume's filesystem is named from its signature.
//
// OpenFS opens NTFS (www.velocidex.com/golang/go-ntfs), XFS
// (github.com/masahiro331/go-xfs-filesystem), and, with readers of this
// package, ext2/ext3/ext4 and FAT12/16/32. Panics inside the third-party
// parsers are turned into errors; the package's own readers check every
// on-disk number before using it, so that corrupt images give errors, not
// hangs or huge allocations (see the fuzz targets).
//
// Extract writes a file or a folder into a target folder through os.Root;
// WriteTar streams them as a tar archive. Neither ever writes outside its
// target: unsafe guest names and symlinks are skipped and reported.
package itemlevel
