// Package vhdx reads and writes Microsoft VHDX images as specified in
// MS-VHDX: fixed, dynamic and differencing (.avhdx) files.
//
// Lifeboat never writes to a source image, so a file whose header says its
// log is dirty (a Hyper-V host crashed or a VM is running) is replayed into
// an in-memory overlay instead of in place: every read after the header
// (region table, metadata, BAT, sector bitmaps and payload) goes through
// the overlay, giving the bytes a replaying implementation would see.
//
// Differencing images resolve their parent through a disk.ParentOpener and
// check its identity (the parent's DataWriteGuid against the child's
// parent_linkage). Sector bitmaps make allocation maps exact to the logical
// sector.
package vhdx

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"lifeboat/disk"
)

func errorf(path string, off int64, format string, args ...any) error {
	return disk.Errorf(path, off, format, args...)
}

// Probe reports whether header, the first bytes of a file, starts with the
// VHDX file type identifier.
func Probe(header []byte) bool {
	return len(header) >= len(fileIDSignature) && string(header[:len(fileIDSignature)]) == fileIDSignature
}

// Image is an opened VHDX file. It is safe for concurrent reads.
type Image struct {
	path   string
	src    *source
	closer io.Closer
	parent disk.Image

	size       int64
	blockSize  int64
	lss, pss   int64
	chunkRatio int64
	hasParent  bool
	fixed      bool
	bat        []uint64
	batOffset  int64

	hdr         header
	creator     string
	virtualID   GUID
	replayed    bool
	locatorType GUID
	locator     map[string]string
	candidates  []string
}

// options are internal switches for tests and fuzzing.
type options struct {
	// noReplay reads the file as if its log were clean, to prove that
	// replay changes what a dirty fixture reads as.
	noReplay bool
	// noParent skips opening the parent (Stat, fuzzing).
	noParent bool
	// trustParent skips the parent identity check (fuzzing with a stand-in
	// parent).
	trustParent bool
}

// Open opens the VHDX file at path read-only. A differencing image's
// parent is opened with parents, which gets the candidate paths built from
// the parent locator.
func Open(ctx context.Context, path string, parents disk.ParentOpener) (disk.Image, error) {
	img, err := openFile(ctx, path, parents, options{})
	if err != nil {
		return nil, err
	}
	return img, nil
}

func openFile(ctx context.Context, path string, parents disk.ParentOpener, opts options) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	img, err := openReaderAt(ctx, f, st.Size(), path, parents, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	img.closer = f
	return img, nil
}

// Details is what Stat reports about one VHDX file beyond disk.Info.
type Details struct {
	disk.Info
	Creator            string `json:"creator"`
	LogicalSectorSize  int64  `json:"logical_sector_size"`
	PhysicalSectorSize int64  `json:"physical_sector_size"`
	VirtualDiskID      string `json:"virtual_disk_id"`
	FileWriteGUID      string `json:"file_write_guid"`
	HeaderSequence     uint64 `json:"header_sequence"`
	// LogReplayed is set when the header's LogGuid was not zero and the log
	// was replayed in memory.
	LogReplayed bool `json:"log_replayed"`
	// LocatorType and Locator are the parent locator of a differencing
	// image: its type GUID and its key/value pairs as stored.
	LocatorType string            `json:"locator_type,omitempty"`
	Locator     map[string]string `json:"locator,omitempty"`
	// ParentCandidates are the paths a parent is looked for at, in order.
	ParentCandidates []string `json:"parent_candidates,omitempty"`
}

// Stat parses the VHDX file at path (replaying a dirty log in memory)
// without opening its parent.
func Stat(ctx context.Context, path string) (*Details, error) {
	img, err := openFile(ctx, path, nil, options{noParent: true})
	if err != nil {
		return nil, err
	}
	defer img.Close()
	return img.Details(), nil
}

// Details describes the file's headers and metadata.
func (img *Image) Details() *Details {
	d := &Details{
		Info:               img.Info(),
		Creator:            img.creator,
		LogicalSectorSize:  img.lss,
		PhysicalSectorSize: img.pss,
		VirtualDiskID:      img.virtualID.String(),
		FileWriteGUID:      img.hdr.FileWriteGUID.String(),
		HeaderSequence:     img.hdr.Seq,
		LogReplayed:        img.replayed,
	}
	if img.hasParent {
		d.LocatorType = img.locatorType.String()
		d.Locator = make(map[string]string, len(img.locator))
		for k, v := range img.locator {
			d.Locator[k] = v
		}
		d.ParentCandidates = append([]string(nil), img.candidates...)
	}
	return d
}

func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// openReaderAt parses a VHDX file held by r. It is the whole parser, so
// fuzzing can drive it from memory.
func openReaderAt(ctx context.Context, r io.ReaderAt, fileSize int64, path string, parents disk.ParentOpener, opts options) (*Image, error) {
	img := &Image{path: path}
	if fileSize < 1*mib {
		return nil, errorf(path, 0, "file is %d bytes, shorter than the 1 MiB VHDX header section", fileSize)
	}
	id := make([]byte, 8+512)
	if err := readFull(r, id, 0); err != nil {
		return nil, errorf(path, 0, "reading file identifier: %v", err)
	}
	if !Probe(id) {
		return nil, errorf(path, 0, "not a VHDX file: signature %q, want %q", id[:8], fileIDSignature)
	}
	img.creator = decodeUTF16(id[8:])

	h, hOff, err := currentHeader(r, path)
	if err != nil {
		return nil, err
	}
	img.hdr = h
	if h.Version != 1 {
		return nil, errorf(path, hOff, "unsupported VHDX version %d", h.Version)
	}
	img.src = &source{r: r, size: fileSize}
	if !h.LogGUID.IsZero() && !opts.noReplay {
		ov, err := replayLog(r, fileSize, h, hOff, path)
		if err != nil {
			return nil, err
		}
		img.src.ov = ov
		img.replayed = true
	}

	batRegion, metaRegion, err := img.readRegions()
	if err != nil {
		return nil, err
	}
	if err := img.readMetadata(metaRegion); err != nil {
		return nil, err
	}
	if err := img.readBAT(ctx, batRegion); err != nil {
		return nil, err
	}
	if img.hasParent && !opts.noParent {
		if err := img.openParent(ctx, parents, opts); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// currentHeader picks the header in use: the only valid one, or the valid
// one with the larger sequence number. Equal numbers are accepted only
// when the headers are identical (Disk2vhd writes them that way).
func currentHeader(r io.ReaderAt, path string) (header, int64, error) {
	b1 := make([]byte, headerSize)
	b2 := make([]byte, headerSize)
	e1 := readFull(r, b1, header1Offset)
	e2 := readFull(r, b2, header2Offset)
	h1, ok1 := parseHeader(b1)
	h2, ok2 := parseHeader(b2)
	ok1 = ok1 && e1 == nil
	ok2 = ok2 && e2 == nil
	switch {
	case ok1 && ok2:
		switch {
		case h1.Seq > h2.Seq:
			return h1, header1Offset, nil
		case h2.Seq > h1.Seq:
			return h2, header2Offset, nil
		case bytes.Equal(b1, b2):
			return h1, header1Offset, nil
		}
		return header{}, 0, errorf(path, header1Offset, "both headers are valid with sequence number %d but differ: no current header", h1.Seq)
	case ok1:
		return h1, header1Offset, nil
	case ok2:
		return h2, header2Offset, nil
	}
	return header{}, 0, errorf(path, header1Offset, "no valid header: both headers (at %d and %d) have a bad signature or CRC-32C", header1Offset, header2Offset)
}

// readRegions reads the region table, falling back to its second copy
// when the first is damaged, and returns the BAT and metadata regions.
func (img *Image) readRegions() (bat, meta regionEntry, err error) {
	var firstErr error
	for _, off := range []int64{region1Offset, region2Offset} {
		var entries []regionEntry
		entries, err = img.parseRegionTable(off)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		var haveBAT, haveMeta bool
		for _, e := range entries {
			switch e.GUID {
			case guidBATRegion:
				bat, haveBAT = e, true
			case guidMetaRegion:
				meta, haveMeta = e, true
			}
		}
		if !haveBAT {
			return bat, meta, errorf(img.path, off, "region table has no BAT region")
		}
		if !haveMeta {
			return bat, meta, errorf(img.path, off, "region table has no metadata region")
		}
		return bat, meta, nil
	}
	return bat, meta, firstErr
}

func (img *Image) parseRegionTable(off int64) ([]regionEntry, error) {
	b := make([]byte, regionSize)
	if err := readFull(img.src, b, off); err != nil {
		return nil, errorf(img.path, off, "reading region table: %v", err)
	}
	if string(b[0:4]) != regionSignature {
		return nil, errorf(img.path, off, "region table signature %q, want %q", b[0:4], regionSignature)
	}
	if got, want := binary.LittleEndian.Uint32(b[4:8]), crcWithZeroedField(b, 4); got != want {
		return nil, errorf(img.path, off, "region table CRC-32C is %#08x, computed %#08x", got, want)
	}
	n := binary.LittleEndian.Uint32(b[8:12])
	if n > maxRegionEntries {
		return nil, errorf(img.path, off+8, "region table has %d entries, more than %d", n, maxRegionEntries)
	}
	entries := make([]regionEntry, 0, n)
	seen := map[GUID]bool{}
	for i := range int64(n) {
		p := b[16+32*i : 48+32*i]
		var e regionEntry
		copy(e.GUID[:], p[0:16])
		e.Offset = binary.LittleEndian.Uint64(p[16:24])
		e.Length = binary.LittleEndian.Uint32(p[24:28])
		e.Required = binary.LittleEndian.Uint32(p[28:32])&1 != 0
		at := off + 16 + 32*i
		known := e.GUID == guidBATRegion || e.GUID == guidMetaRegion
		if seen[e.GUID] {
			return nil, errorf(img.path, at, "region %s listed twice", e.GUID)
		}
		seen[e.GUID] = true
		if !known {
			if e.Required {
				return nil, errorf(img.path, at, "unknown region %s is marked required", e.GUID)
			}
			continue
		}
		if e.Offset < 1*mib || e.Offset > uint64(img.src.Size()) || uint64(e.Length) > uint64(img.src.Size())-e.Offset {
			return nil, errorf(img.path, at, "region %s (offset %d, length %d) lies outside the %d-byte file", e.GUID, e.Offset, e.Length, img.src.Size())
		}
		entries = append(entries, e)
	}
	return entries, nil
}

// readMetadata parses the metadata table and the known items.
func (img *Image) readMetadata(region regionEntry) error {
	base := int64(region.Offset)
	if region.Length < metaTableSize {
		return errorf(img.path, base, "metadata region is %d bytes, smaller than its 64 KiB table", region.Length)
	}
	b := make([]byte, metaTableSize)
	if err := readFull(img.src, b, base); err != nil {
		return errorf(img.path, base, "reading metadata table: %v", err)
	}
	if string(b[0:8]) != metaSignature {
		return errorf(img.path, base, "metadata table signature %q, want %q", b[0:8], metaSignature)
	}
	n := int64(binary.LittleEndian.Uint16(b[10:12]))
	if n > maxMetaEntries {
		return errorf(img.path, base+10, "metadata table has %d entries, more than %d", n, maxMetaEntries)
	}
	items := map[GUID][]byte{}
	itemAt := map[GUID]int64{}
	for i := range n {
		p := b[32+32*i : 64+32*i]
		at := base + 32 + 32*i
		var e metaEntry
		copy(e.ID[:], p[0:16])
		e.Offset = binary.LittleEndian.Uint32(p[16:20])
		e.Length = binary.LittleEndian.Uint32(p[20:24])
		e.Flags = binary.LittleEndian.Uint32(p[24:28])
		if e.Flags&metaIsUser != 0 {
			// User metadata never affects how the disk reads.
			continue
		}
		switch e.ID {
		case guidFileParameters, guidVirtualSize, guidVirtualDiskID, guidLogicalSector, guidPhysicalSector, guidParentLocator:
		default:
			if e.Flags&metaIsRequired != 0 {
				return errorf(img.path, at, "unknown metadata item %s is marked required", e.ID)
			}
			continue
		}
		if _, dup := items[e.ID]; dup {
			return errorf(img.path, at, "metadata item %s listed twice", e.ID)
		}
		if e.Length > maxMetaItem {
			return errorf(img.path, at, "metadata item %s is %d bytes, more than 1 MiB", e.ID, e.Length)
		}
		if e.Length > 0 && (e.Offset < metaTableSize || uint64(e.Offset)+uint64(e.Length) > uint64(region.Length)) {
			return errorf(img.path, at, "metadata item %s (offset %d, length %d) lies outside the %d-byte metadata region", e.ID, e.Offset, e.Length, region.Length)
		}
		data := make([]byte, e.Length)
		if err := readFull(img.src, data, base+int64(e.Offset)); err != nil {
			return errorf(img.path, base+int64(e.Offset), "reading metadata item %s: %v", e.ID, err)
		}
		items[e.ID] = data
		itemAt[e.ID] = base + int64(e.Offset)
	}
	need := func(id GUID, name string, size int) ([]byte, error) {
		d, ok := items[id]
		if !ok {
			return nil, errorf(img.path, base, "required metadata item %s (%s) is missing", name, id)
		}
		if len(d) < size {
			return nil, errorf(img.path, itemAt[id], "metadata item %s is %d bytes, want at least %d", name, len(d), size)
		}
		return d, nil
	}
	fp, err := need(guidFileParameters, "File Parameters", 8)
	if err != nil {
		return err
	}
	vs, err := need(guidVirtualSize, "Virtual Disk Size", 8)
	if err != nil {
		return err
	}
	vid, err := need(guidVirtualDiskID, "Virtual Disk ID", 16)
	if err != nil {
		return err
	}
	ls, err := need(guidLogicalSector, "Logical Sector Size", 4)
	if err != nil {
		return err
	}
	ps, err := need(guidPhysicalSector, "Physical Sector Size", 4)
	if err != nil {
		return err
	}

	bs := int64(binary.LittleEndian.Uint32(fp[0:4]))
	flags := binary.LittleEndian.Uint32(fp[4:8])
	if bs < minBlockSize || bs > maxBlockSize || bs&(bs-1) != 0 {
		return errorf(img.path, itemAt[guidFileParameters], "block size %d is not a power of two between 1 MiB and 256 MiB", bs)
	}
	img.blockSize = bs
	img.hasParent = flags&fpHasParent != 0
	img.fixed = flags&fpLeaveBlocksAllocated != 0 && !img.hasParent
	img.lss = int64(binary.LittleEndian.Uint32(ls[0:4]))
	if img.lss != 512 && img.lss != 4096 {
		return errorf(img.path, itemAt[guidLogicalSector], "logical sector size %d, want 512 or 4096", img.lss)
	}
	img.pss = int64(binary.LittleEndian.Uint32(ps[0:4]))
	if img.pss != 512 && img.pss != 4096 {
		return errorf(img.path, itemAt[guidPhysicalSector], "physical sector size %d, want 512 or 4096", img.pss)
	}
	size := binary.LittleEndian.Uint64(vs[0:8])
	if size > maxDiskSize || size%uint64(img.lss) != 0 {
		return errorf(img.path, itemAt[guidVirtualSize], "virtual disk size %d is over 64 TiB or not a multiple of the %d-byte logical sector", size, img.lss)
	}
	img.size = int64(size)
	copy(img.virtualID[:], vid)
	img.chunkRatio = sectorsPerBitmap * img.lss / bs

	if img.hasParent {
		loc, ok := items[guidParentLocator]
		if !ok {
			return errorf(img.path, base, "differencing image has no Parent Locator metadata item")
		}
		if err := img.parseLocator(loc, itemAt[guidParentLocator]); err != nil {
			return err
		}
	}
	return nil
}

// parseLocator reads the parent locator's UTF-16 key/value pairs.
func (img *Image) parseLocator(b []byte, at int64) error {
	if len(b) < 20 {
		return errorf(img.path, at, "parent locator is %d bytes, shorter than its 20-byte header", len(b))
	}
	copy(img.locatorType[:], b[0:16])
	if img.locatorType != guidVHDXLocator {
		return errorf(img.path, at, "unsupported parent locator type %s", img.locatorType)
	}
	n := int(binary.LittleEndian.Uint16(b[18:20]))
	if 20+12*n > len(b) {
		return errorf(img.path, at, "parent locator claims %d entries but is only %d bytes", n, len(b))
	}
	img.locator = make(map[string]string, n)
	for i := range n {
		p := b[20+12*i:]
		ko := uint64(binary.LittleEndian.Uint32(p[0:4]))
		vo := uint64(binary.LittleEndian.Uint32(p[4:8]))
		kl := uint64(binary.LittleEndian.Uint16(p[8:10]))
		vl := uint64(binary.LittleEndian.Uint16(p[10:12]))
		if ko+kl > uint64(len(b)) || vo+vl > uint64(len(b)) || kl == 0 {
			return errorf(img.path, at+20+12*int64(i), "parent locator entry %d (key %d+%d, value %d+%d) lies outside the %d-byte item", i, ko, kl, vo, vl, len(b))
		}
		k := decodeUTF16(b[ko : ko+kl])
		if _, dup := img.locator[k]; dup {
			return errorf(img.path, at+20+12*int64(i), "parent locator key %q appears twice", k)
		}
		img.locator[k] = decodeUTF16(b[vo : vo+vl])
	}
	if img.locator["parent_linkage"] == "" {
		return errorf(img.path, at, "parent locator has no parent_linkage")
	}
	if _, err := ParseGUID(img.locator["parent_linkage"]); err != nil {
		return errorf(img.path, at, "parent locator: parent_linkage: %v", err)
	}
	img.candidates = parentCandidates(img.path, img.locator)
	if len(img.candidates) == 0 {
		return errorf(img.path, at, "parent locator has no relative_path, volume_path or absolute_win32_path")
	}
	return nil
}

// parentCandidates lists where the parent may be: the relative path
// against the child's folder first (what Hyper-V tries first too), then
// the Windows paths' base names in the child's folder, because a backup
// restored elsewhere keeps a chain together in one folder.
func parentCandidates(child string, loc map[string]string) []string {
	dir := filepath.Dir(child)
	var out []string
	add := func(p string) {
		for _, q := range out {
			if q == p {
				return
			}
		}
		out = append(out, p)
	}
	if rel := loc["relative_path"]; rel != "" {
		p := filepath.FromSlash(strings.ReplaceAll(rel, `\`, "/"))
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		add(p)
	}
	for _, k := range []string{"absolute_win32_path", "volume_path"} {
		if v := loc[k]; v != "" {
			if base := winBase(v); base != "" && base != "." && base != ".." {
				add(filepath.Join(dir, base))
			}
		}
	}
	return out
}

// winBase is the last element of a Windows or slash path.
func winBase(p string) string {
	if i := strings.LastIndexAny(p, `\/`); i >= 0 {
		return p[i+1:]
	}
	// A bare "C:name" keeps the drive prefix otherwise.
	if i := strings.IndexByte(p, ':'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// parentIDs returns the identities the locator accepts for the parent.
func (img *Image) parentIDs() []string {
	var ids []string
	for _, k := range []string{"parent_linkage", "parent_linkage2"} {
		if g, err := ParseGUID(img.locator[k]); err == nil && !g.IsZero() {
			ids = append(ids, g.String())
		}
	}
	return ids
}

func (img *Image) openParent(ctx context.Context, parents disk.ParentOpener, opts options) error {
	rel := img.locator["relative_path"]
	notFound := func(err error) error {
		return fmt.Errorf("%s: parent of differencing VHDX not found (relative_path \"%s\", absolute_win32_path \"%s\"; tried %s): %w",
			img.path, rel, img.locator["absolute_win32_path"], strings.Join(img.candidates, ", "), err)
	}
	if parents == nil {
		return notFound(disk.ErrParentNotFound)
	}
	p, err := parents(ctx, img.candidates)
	if err != nil {
		if errors.Is(err, disk.ErrParentNotFound) {
			return notFound(err)
		}
		return fmt.Errorf("%s: opening parent (relative_path \"%s\"): %w", img.path, rel, err)
	}
	if p == nil {
		return notFound(disk.ErrParentNotFound)
	}
	if !opts.trustParent {
		got := strings.ToLower(strings.Trim(p.Info().ID, "{}"))
		ok := false
		for _, want := range img.parentIDs() {
			ok = ok || got == want
		}
		if !ok {
			p.Close()
			return fmt.Errorf("%s: parent (relative_path \"%s\") has ID %q, child expects %s: %w",
				img.path, rel, got, strings.Join(img.parentIDs(), " or "), disk.ErrParentMismatch)
		}
	}
	if pi, ok := p.(*Image); ok && pi.lss != img.lss {
		p.Close()
		return fmt.Errorf("%s: parent has %d-byte logical sectors, child %d: %w", img.path, pi.lss, img.lss, disk.ErrParentMismatch)
	}
	img.parent = p
	return nil
}

// Format implements disk.Image.
func (img *Image) Format() disk.Format { return disk.VHDX }

// Size implements disk.Image.
func (img *Image) Size() int64 { return img.size }

// Parent implements disk.Image.
func (img *Image) Parent() disk.Image { return img.parent }

// Info implements disk.Image.
func (img *Image) Info() disk.Info {
	info := disk.Info{
		Format:      disk.VHDX,
		Size:        img.size,
		ID:          img.hdr.DataWriteGUID.String(),
		ClusterSize: img.blockSize,
		Subformat:   "dynamic",
	}
	switch {
	case img.hasParent:
		info.Subformat = "differencing"
		for _, k := range []string{"relative_path", "absolute_win32_path", "volume_path"} {
			if v := img.locator[k]; v != "" {
				info.ParentPath = v
				break
			}
		}
		if g, err := ParseGUID(img.locator["parent_linkage"]); err == nil {
			info.ParentID = g.String()
		}
	case img.fixed:
		info.Subformat = "fixed"
	}
	return info
}

// Close closes the file and the parent chain.
func (img *Image) Close() error {
	var err error
	if img.parent != nil {
		err = img.parent.Close()
		img.parent = nil
	}
	if img.closer != nil {
		if e := img.closer.Close(); err == nil {
			err = e
		}
		img.closer = nil
	}
	return err
}
