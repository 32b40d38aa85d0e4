// Package qcow2 reads and writes QEMU copy-on-write images (qcow2).
//
// The reader handles versions 2 and 3, cluster sizes from 512 bytes to
// 2 MiB, zlib (raw deflate) and zstd compressed clusters, zero clusters,
// extended L2 entries (subclusters) and backing files, which are opened
// through the caller's disk.ParentOpener so a qcow2 overlay can sit on any
// format. Encrypted images and images with an external data file are
// refused: their guest bytes are not in this file. Refcounts are not needed
// to read and are never looked at, so a dirty image (lazy refcounts) reads
// fine.
//
// The writer produces version 3 images with 16-bit refcounts that
// qemu-img check reports clean.
package qcow2

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"

	"lifeboat/disk"
)

const (
	magic = 0x514649fb // "QFI\xfb"

	v2HeaderLen = 72
	v3HeaderLen = 104 // without the optional compression_type byte

	minClusterBits = 9
	maxClusterBits = 21

	// qemu refuses L1 tables above 32 MiB; so do we, which also bounds
	// what a hostile header can make us allocate.
	maxL1Bytes = 32 << 20
	// Virtual sizes past 2^61 do not fit qemu's offset arithmetic.
	maxVirtualSize = 1 << 61
	// Deeper chains than this are almost surely a loop through the opener.
	maxChainDepth = 64

	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureNames  = 0x6803f857
	extDataFile      = 0x44415441

	incDirty       = 1 << 0
	incCorrupt     = 1 << 1
	incDataFile    = 1 << 2
	incCompression = 1 << 3
	incExtendedL2  = 1 << 4
	incKnown       = incDirty | incCorrupt | incDataFile | incCompression | incExtendedL2

	compressionZlib = 0
	compressionZstd = 1

	// Offsets in L1 and standard L2 entries live in bits 9..55.
	offsetMask     = 0x00fffffffffffe00
	flagCopied     = 1 << 63
	flagCompressed = 1 << 62
	flagZero       = 1 << 0

	subclusters = 32 // per cluster with extended L2 entries
)

// Probe reports whether header starts a qcow2 image of a version we read.
func Probe(header []byte) bool {
	if len(header) < 8 || binary.BigEndian.Uint32(header) != magic {
		return false
	}
	v := binary.BigEndian.Uint32(header[4:])
	return v == 2 || v == 3
}

// header holds the fields of the qcow2 header the reader uses.
type header struct {
	version         uint32
	backingOffset   uint64
	backingSize     uint32
	clusterBits     uint32
	size            uint64
	cryptMethod     uint32
	l1Size          uint32
	l1Offset        uint64
	incompatible    uint64
	headerLen       uint32
	compressionType uint8
	backingFormat   string
	backingFile     string
	featureNames    map[uint]string // incompatible feature bit -> name
}

// Image is an opened qcow2 image.
type Image struct {
	path     string
	r        io.ReaderAt
	closer   io.Closer
	fileSize int64

	h         header
	size      int64
	cs        int64 // cluster size
	extended  bool
	l2Entries int64 // entries per L2 table
	l1        []uint64
	parent    disk.Image

	mu      sync.Mutex
	l2cache map[uint64][]uint64
	l2bytes int64
	// One decompressed cluster is kept because reads smaller than a
	// cluster would otherwise inflate it again for every call.
	lastComp    uint64
	lastCluster []byte
	zstd        *zstd.Decoder
}

var _ disk.Image = (*Image)(nil)

type chainKey struct{}

// Open opens path read-only. A backing file is opened with parents, given
// the backing name as is when absolute, else resolved against the folder of
// path.
func Open(ctx context.Context, path string, parents disk.ParentOpener) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	// Seeking finds the size of block devices too (an image on LVM).
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: find size: %w", path, err)
	}
	img, err := open(ctx, path, f, size, parents)
	if err != nil {
		f.Close()
		return nil, err
	}
	img.closer = f
	return img, nil
}

// open parses an image from r, which holds size bytes; path only names it
// in errors and anchors relative backing names.
func open(ctx context.Context, path string, r io.ReaderAt, size int64, parents disk.ParentOpener) (*Image, error) {
	img := &Image{path: path, r: r, fileSize: size, l2cache: map[uint64][]uint64{}}
	if err := img.readHeader(); err != nil {
		return nil, err
	}
	if err := img.readL1(); err != nil {
		return nil, err
	}
	if img.h.backingFile != "" {
		if err := img.openParent(ctx, parents); err != nil {
			return nil, err
		}
	}
	return img, nil
}

func (img *Image) errorf(off int64, format string, args ...any) error {
	return disk.Errorf(img.path, off, format, args...)
}

// readFull reads exactly len(p) bytes at off, naming what it reads on
// failure.
func (img *Image) readFull(p []byte, off int64, what string) error {
	if off < 0 || off > img.fileSize || int64(len(p)) > img.fileSize-off {
		return img.errorf(off, "%s (%d bytes) is past the end of the file (size %d)", what, len(p), img.fileSize)
	}
	n, err := img.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return &disk.FormatError{Path: img.path, Offset: off, Msg: "read " + what, Err: err}
}

func (img *Image) readHeader() error {
	h := &img.h
	if img.fileSize < v2HeaderLen {
		return img.errorf(0, "file of %d bytes is too short for a qcow2 header", img.fileSize)
	}
	// The header, its extensions and the backing name all live in the
	// first cluster, whose size the fixed part of the header gives.
	buf := make([]byte, v2HeaderLen)
	if err := img.readFull(buf, 0, "header"); err != nil {
		return err
	}
	if cb := binary.BigEndian.Uint32(buf[20:]); binary.BigEndian.Uint32(buf) == magic && cb >= minClusterBits && cb <= maxClusterBits {
		buf = make([]byte, min(img.fileSize, 1<<cb))
		if err := img.readFull(buf, 0, "header cluster"); err != nil {
			return err
		}
	}
	be := binary.BigEndian
	if m := be.Uint32(buf); m != magic {
		return img.errorf(0, "bad magic %#08x, want %#08x (QFI\\xfb)", m, magic)
	}
	h.version = be.Uint32(buf[4:])
	if h.version != 2 && h.version != 3 {
		return img.errorf(4, "unsupported qcow2 version %d", h.version)
	}
	h.backingOffset = be.Uint64(buf[8:])
	h.backingSize = be.Uint32(buf[16:])
	h.clusterBits = be.Uint32(buf[20:])
	h.size = be.Uint64(buf[24:])
	h.cryptMethod = be.Uint32(buf[32:])
	h.l1Size = be.Uint32(buf[36:])
	h.l1Offset = be.Uint64(buf[40:])
	h.headerLen = v2HeaderLen
	if h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits {
		return img.errorf(20, "cluster_bits %d outside %d..%d", h.clusterBits, minClusterBits, maxClusterBits)
	}
	img.cs = 1 << h.clusterBits
	if h.version == 3 {
		if len(buf) < v3HeaderLen {
			return img.errorf(0, "file of %d bytes is too short for a qcow2 v3 header", img.fileSize)
		}
		h.incompatible = be.Uint64(buf[72:])
		h.headerLen = be.Uint32(buf[100:])
		if h.headerLen < v3HeaderLen || h.headerLen%8 != 0 || int64(h.headerLen) > int64(len(buf)) {
			return img.errorf(100, "header_length %d invalid (cluster size %d, file size %d)", h.headerLen, img.cs, img.fileSize)
		}
		if h.headerLen > v3HeaderLen {
			h.compressionType = buf[104]
		}
	}
	if err := img.readExtensions(buf); err != nil {
		return err
	}
	if unknown := h.incompatible &^ incKnown; unknown != 0 {
		var names []string
		for bit := range uint(64) {
			if unknown&(1<<bit) != 0 {
				name := h.featureNames[bit]
				if name == "" {
					name = "unknown"
				}
				names = append(names, fmt.Sprintf("bit %d (%s)", bit, name))
			}
		}
		return img.errorf(72, "unsupported incompatible features: %s", strings.Join(names, ", "))
	}
	if h.incompatible&incDataFile != 0 {
		return img.errorf(72, "image keeps its data in an external data file, which is not supported")
	}
	if h.cryptMethod != 0 {
		method := map[uint32]string{1: "AES", 2: "LUKS"}[h.cryptMethod]
		if method == "" {
			method = "unknown"
		}
		return img.errorf(32, "encrypted image (crypt_method %d, %s) is not supported", h.cryptMethod, method)
	}
	switch {
	case h.incompatible&incCompression == 0 && h.compressionType != compressionZlib:
		return img.errorf(104, "compression_type %d set without the compression type feature bit", h.compressionType)
	case h.compressionType != compressionZlib && h.compressionType != compressionZstd:
		return img.errorf(104, "unknown compression_type %d", h.compressionType)
	case h.incompatible&incCompression != 0 && h.headerLen <= v3HeaderLen:
		return img.errorf(100, "compression type feature bit set but header_length %d has no compression_type field", h.headerLen)
	}
	if h.incompatible&incExtendedL2 != 0 {
		// Each of the 32 subclusters must be at least 512 bytes.
		if h.clusterBits < 14 {
			return img.errorf(20, "extended L2 entries need clusters of at least 16 KiB, have %d", img.cs)
		}
		img.extended = true
	}
	if h.size > maxVirtualSize {
		return img.errorf(24, "virtual size %d is too large", h.size)
	}
	img.size = int64(h.size)
	if h.backingOffset != 0 {
		if h.backingSize == 0 || h.backingSize > 1023 {
			return img.errorf(16, "backing file name length %d outside 1..1023", h.backingSize)
		}
		if h.backingOffset >= uint64(len(buf)) || uint64(h.backingSize) > uint64(len(buf))-h.backingOffset {
			return img.errorf(8, "backing file name at offset %d (%d bytes) is outside the header cluster", h.backingOffset, h.backingSize)
		}
		h.backingFile = string(buf[h.backingOffset : h.backingOffset+uint64(h.backingSize)])
	}
	return nil
}

// readExtensions parses the header extensions after the fixed header, up
// to the end of the first cluster or the backing file name.
func (img *Image) readExtensions(buf []byte) error {
	h := &img.h
	end := uint64(len(buf))
	if h.backingOffset != 0 && h.backingOffset < end {
		end = h.backingOffset
	}
	be := binary.BigEndian
	for pos := uint64(h.headerLen); ; {
		if pos+8 > end {
			return nil // no room left for extensions, like qemu reads it
		}
		typ := be.Uint32(buf[pos:])
		n := uint64(be.Uint32(buf[pos+4:]))
		data := pos + 8
		if n > end-data {
			return img.errorf(int64(pos), "header extension %#x of %d bytes runs past the header cluster", typ, n)
		}
		body := buf[data : data+n]
		switch typ {
		case extEnd:
			return nil
		case extBackingFormat:
			h.backingFormat = string(bytes.TrimRight(body, "\x00"))
		case extDataFile:
			return img.errorf(int64(pos), "image names an external data file %q, which is not supported", body)
		case extFeatureNames:
			h.featureNames = map[uint]string{}
			for e := body; len(e) >= 48; e = e[48:] {
				if e[0] == 0 { // incompatible
					h.featureNames[uint(e[1])] = string(bytes.TrimRight(e[2:48], "\x00"))
				}
			}
		}
		pos = data + (n+7)&^7
	}
}

func (img *Image) readL1() error {
	h := &img.h
	// Each L2 table maps l2Entries clusters.
	img.l2Entries = img.cs / 8
	if img.extended {
		img.l2Entries = img.cs / 16
	}
	span := img.cs * img.l2Entries
	need := (img.size + span - 1) / span
	if int64(h.l1Size) < need {
		return img.errorf(36, "L1 table has %d entries, virtual size %d needs %d", h.l1Size, img.size, need)
	}
	if int64(h.l1Size)*8 > maxL1Bytes {
		return img.errorf(36, "L1 table of %d entries is too large", h.l1Size)
	}
	if need == 0 {
		return nil
	}
	if h.l1Offset%uint64(img.cs) != 0 {
		return img.errorf(40, "L1 table offset %#x is not cluster aligned", h.l1Offset)
	}
	// Only the entries covering the virtual size are ever used.
	n := need
	if h.l1Offset > uint64(img.fileSize) || n*8 > img.fileSize-int64(h.l1Offset) {
		return img.errorf(40, "L1 table at offset %d (%d entries) is past the end of the file (size %d)", h.l1Offset, n, img.fileSize)
	}
	raw := make([]byte, n*8)
	if err := img.readFull(raw, int64(h.l1Offset), "L1 table"); err != nil {
		return err
	}
	img.l1 = make([]uint64, n)
	for i := range img.l1 {
		img.l1[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	return nil
}

// candidates lists where to look for the backing file.
func (img *Image) candidates() []string {
	name := img.h.backingFile
	if filepath.IsAbs(name) {
		return []string{name}
	}
	return []string{filepath.Join(filepath.Dir(img.path), name)}
}

func (img *Image) openParent(ctx context.Context, parents disk.ParentOpener) error {
	name := img.h.backingFile
	cands := img.candidates()
	if parents == nil {
		return fmt.Errorf("%s: backing file %q (tried %s): %w", img.path, name, strings.Join(cands, ", "), disk.ErrParentNotFound)
	}
	// Track the chain in the context so a loop of backing files fails
	// instead of recursing until file descriptors run out.
	self, _ := filepath.Abs(img.path)
	chain, _ := ctx.Value(chainKey{}).([]string)
	if slices.Contains(chain, self) || len(chain) >= maxChainDepth {
		return fmt.Errorf("%s: backing chain loops or is deeper than %d images", img.path, maxChainDepth)
	}
	ctx = context.WithValue(ctx, chainKey{}, append(slices.Clip(chain), self))
	p, err := parents(ctx, cands)
	if err != nil {
		if errors.Is(err, disk.ErrParentNotFound) {
			return fmt.Errorf("%s: backing file %q (tried %s): %w", img.path, name, strings.Join(cands, ", "), err)
		}
		return fmt.Errorf("%s: open backing file %q: %w", img.path, name, err)
	}
	if p == nil {
		return fmt.Errorf("%s: backing file %q (tried %s): %w", img.path, name, strings.Join(cands, ", "), disk.ErrParentNotFound)
	}
	// qcow2 records no parent identity, only its format: a parent that
	// opened as another format would read differently than in qemu.
	if bf := img.h.backingFormat; bf != "" && string(p.Format()) != bf {
		p.Close()
		return fmt.Errorf("%s: backing file %q is recorded as %s but opened as %s: %w", img.path, name, bf, p.Format(), disk.ErrParentMismatch)
	}
	img.parent = p
	return nil
}

func (img *Image) Format() disk.Format { return disk.QCOW2 }
func (img *Image) Size() int64         { return img.size }
func (img *Image) Parent() disk.Image  { return img.parent }

func (img *Image) Info() disk.Info {
	sub := fmt.Sprintf("v%d", img.h.version)
	return disk.Info{
		Format:      disk.QCOW2,
		Size:        img.size,
		ParentPath:  img.h.backingFile,
		ClusterSize: img.cs,
		Subformat:   sub,
	}
}

// Close closes the image and its backing chain.
func (img *Image) Close() error {
	var err error
	if img.parent != nil {
		err = img.parent.Close()
		img.parent = nil
	}
	img.mu.Lock()
	if img.zstd != nil {
		img.zstd.Close()
		img.zstd = nil
	}
	img.mu.Unlock()
	if img.closer != nil {
		if cerr := img.closer.Close(); err == nil {
			err = cerr
		}
		img.closer = nil
	}
	return err
}
