package itemlevel

import (
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"
	"unicode/utf16"

	ntfs "www.velocidex.com/golang/go-ntfs/parser"
)

// NTFS through go-ntfs. The library is built for forensics and also lists
// index entries of unused index blocks; an entry is believed only when the
// MFT record it names is in use, has the sequence number the entry
// expects, and carries a $FILE_NAME with this name in this directory.

const (
	ntfsAttrStandardInfo = 0x10
	ntfsAttrFileName     = 0x30
	ntfsAttrData         = 0x80
	ntfsAttrReparse      = 0xC0

	ntfsReadOnly  = 0x1
	ntfsSystem    = 0x4
	ntfsReparse   = 0x400
	ntfsEncrypted = 0x4000

	ntfsFirstUserRecord = 16 // records 0-15 are the metadata files
)

type ntfsFS struct {
	ctx *ntfs.NTFSContext
}

type ntfsRef struct {
	mft       *ntfs.MFT_ENTRY
	encrypted bool
}

func openNTFS(sr *io.SectionReader, vol Volume) (_ FS, err error) {
	defer guard(&err)
	pr, err := ntfs.NewPagedReader(sr, 4096, 1024)
	if err != nil {
		return nil, err
	}
	ctx, err := ntfs.GetNTFSContext(pr, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	n := &ntfsFS{ctx: ctx}
	if _, err := n.root(); err != nil {
		return nil, err
	}
	return &treeFS{vol: vol, drv: n, foldCase: true}, nil
}

func (n *ntfsFS) root() (_ node, err error) {
	defer guard(&err)
	m, err := n.ctx.GetMFT(5)
	if err != nil {
		return node{}, fmt.Errorf("%w: root directory record: %v", ErrCorrupt, err)
	}
	if m.Flags().Value&2 == 0 {
		return node{}, fmt.Errorf("%w: MFT record 5 is not a directory", ErrCorrupt)
	}
	return node{Entry: Entry{IsDir: true, Mode: fs.ModeDir | 0o755, ID: 5}, ref: ntfsRef{mft: m}}, nil
}

func (n *ntfsFS) list(dir node) (out []node, err error) {
	defer guard(&err)
	m := dir.ref.(ntfsRef).mft
	type key struct {
		ref  uint64
		name string
	}
	seen := map[key]bool{}
	for _, rec := range m.Dir(n.ctx) {
		fn := rec.File()
		if fn.NameType().Value == 2 { // DOS 8.3 alias
			continue
		}
		ref := rec.MftReference()
		if ref < ntfsFirstUserRecord {
			continue
		}
		name := fn.Name()
		k := key{ref, name}
		if seen[k] {
			continue
		}
		seen[k] = true
		child, err := n.ctx.GetMFT(int64(ref))
		if err != nil {
			continue // a stale entry naming an unreadable record
		}
		if child.Flags().Value&1 == 0 || child.Sequence_value() != rec.Seq_num() {
			continue // deleted or reused since the entry was written
		}
		e, ok := n.describe(child, dir.ID, name)
		if !ok {
			continue
		}
		e.Entry.ID = ref
		out = append(out, e)
	}
	return out, nil
}

// describe builds the node of MFT record child listed as name in directory
// parent; ok is false when the record does not carry that name there.
func (n *ntfsFS) describe(child *ntfs.MFT_ENTRY, parent uint64, name string) (node, bool) {
	var (
		named   bool
		attrs   uint64
		mtime   time.Time
		size    int64
		reparse bool
		target  string
	)
	for _, a := range child.EnumerateAttributes(n.ctx) {
		switch a.Type().Value {
		case ntfsAttrStandardInfo:
			si := n.ctx.Profile.STANDARD_INFORMATION(a.Data(n.ctx), 0)
			mtime = si.File_altered_time().Time
			attrs = si.Flags().Value
		case ntfsAttrFileName:
			f := n.ctx.Profile.FILE_NAME(a.Data(n.ctx), 0)
			if f.MftReference() == parent && f.Name() == name {
				named = true
			}
		case ntfsAttrData:
			if a.Name() == "" && (a.IsResident() || a.Runlist_vcn_start() == 0) {
				size = a.DataSize()
			}
		case ntfsAttrReparse:
			reparse = true
			if sz := a.DataSize(); sz > 0 && sz <= 16<<10 {
				b := make([]byte, sz)
				m, _ := a.Data(n.ctx).ReadAt(b, 0)
				target = reparseTarget(b[:m])
			}
		}
	}
	if !named {
		return node{}, false
	}
	e := Entry{Name: name, ModTime: mtime.UTC(), Mode: 0o644, Size: size}
	if attrs&ntfsReadOnly != 0 {
		e.Mode = 0o444
	}
	if child.Flags().Value&2 != 0 {
		e.IsDir = true
		e.Mode = fs.ModeDir | 0o755
		e.Size = 0
	}
	if reparse || attrs&ntfsReparse != 0 {
		// Junctions, symlinks, deduplicated and cloud files: their
		// bytes are not in this record's $DATA.
		e.IsSymlink = true
		e.Mode |= fs.ModeSymlink
		e.LinkTarget = target
	} else if attrs&ntfsSystem != 0 && !e.IsDir && size >= 10 && size <= 4096 {
		// ntfs-3g (Linux) stores symlinks as Interix system files.
		if t, ok := n.interixLink(child, size); ok {
			e.IsSymlink = true
			e.Mode |= fs.ModeSymlink
			e.LinkTarget = t
		}
	}
	if size < 0 {
		e.Size = 0
	}
	return node{Entry: e, ref: ntfsRef{mft: child, encrypted: attrs&ntfsEncrypted != 0}}, true
}

func (n *ntfsFS) open(nd node) (_ File, err error) {
	defer guard(&err)
	ref := nd.ref.(ntfsRef)
	if ref.encrypted {
		return nil, fmt.Errorf("%w: file is EFS-encrypted", ErrUnsupported)
	}
	if nd.Size == 0 {
		return &readerAtFile{r: bytesReaderAt(nil), size: 0}, nil
	}
	rr, err := ntfs.OpenStream(n.ctx, ref.mft, ntfsAttrData, ntfs.WILDCARD_STREAM_ID, "")
	if err != nil {
		return nil, fmt.Errorf("%w: $DATA: %v", ErrCorrupt, err)
	}
	return &readerAtFile{r: guardedReaderAt{rr}, size: nd.Size}, nil
}

// interixLink reads the target of an Interix symlink ("IntxLNK\x01" and
// the UTF-16 target).
func (n *ntfsFS) interixLink(m *ntfs.MFT_ENTRY, size int64) (string, bool) {
	rr, err := ntfs.OpenStream(n.ctx, m, ntfsAttrData, ntfs.WILDCARD_STREAM_ID, "")
	if err != nil {
		return "", false
	}
	b := make([]byte, size)
	k, _ := rr.ReadAt(b, 0)
	b = b[:k]
	if len(b) < 8 || string(b[:8]) != "IntxLNK\x01" {
		return "", false
	}
	return utf16le(b[8:]), true
}

func utf16le(b []byte) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return string(utf16.Decode(u))
}

// reparseTarget decodes the print name of a symlink or junction reparse
// point, or returns "".
func reparseTarget(b []byte) string {
	if len(b) < 8 {
		return ""
	}
	le := binary.LittleEndian
	tag := le.Uint32(b)
	var buf []byte
	switch tag {
	case 0xA000000C: // symlink: 4 name fields and flags
		if len(b) < 20 {
			return ""
		}
		buf = b[20:]
	case 0xA0000003: // junction (mount point)
		if len(b) < 16 {
			return ""
		}
		buf = b[16:]
	default:
		return ""
	}
	off, n := int(le.Uint16(b[12:])), int(le.Uint16(b[14:]))
	if off+n > len(buf) {
		return ""
	}
	return strings.ReplaceAll(utf16le(buf[off:off+n]), "\\", "/")
}

// guardedReaderAt turns panics of a library reader into errors.
type guardedReaderAt struct{ r io.ReaderAt }

func (g guardedReaderAt) ReadAt(p []byte, off int64) (n int, err error) {
	defer guard(&err)
	return g.r.ReadAt(p, off)
}
