package itemlevel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"sort"
	"strings"
	"sync"
	"time"
)

// FS is a read-only view of one filesystem inside a disk image.
//
// Paths are slash-separated and relative to the volume root; a leading "/"
// is allowed and "", "." and "/" name the root. A path may not contain ".."
// or "." components. On NTFS and FAT a component that matches no name
// exactly is matched case-insensitively, like Windows does.
//
// An FS is safe for use by several goroutines; calls into the filesystem
// are serialised.
type FS interface {
	// Volume is the volume this filesystem was opened from.
	Volume() Volume
	// ReadDir lists a directory, sorted by name, without "." and "..".
	ReadDir(p string) ([]Entry, error)
	// Stat describes one path without following a final symlink.
	Stat(p string) (Entry, error)
	// Open opens a regular file for reading.
	Open(p string) (File, error)
	// Warnings says what the reader could not take into account, such as
	// an ext4 journal that needs recovery.
	Warnings() []string
	// Close releases the filesystem (not the image).
	Close() error
}

// File is an open regular file of an FS. Read and ReadAt are independent
// (ReadAt does not move Read's position). On XFS, ReadAt is fast when
// offsets grow and re-reads from the start when they go back.
type File interface {
	io.Reader
	io.ReaderAt
	io.Closer
	// Size is the file's length in bytes; Read returns exactly that many.
	Size() int64
}

// Entry describes one name in a directory.
type Entry struct {
	Name string `json:"name"`
	// Path is the entry's path in the filesystem (no leading slash). It is
	// empty when Invalid is set: such a name cannot be addressed.
	Path    string      `json:"path"`
	IsDir   bool        `json:"is_dir,omitempty"`
	Size    int64       `json:"size"`
	ModTime time.Time   `json:"mtime"`
	Mode    fs.FileMode `json:"mode"`
	// IsSymlink is set for symbolic links (and NTFS reparse points:
	// junctions, symlinks, deduplicated or cloud placeholder files).
	IsSymlink  bool   `json:"is_symlink,omitempty"`
	LinkTarget string `json:"link_target,omitempty"`
	// ID is the inode number (ext4, XFS), MFT record number (NTFS) or
	// first cluster (FAT); 0 when unknown. Walk uses it to break cycles.
	ID uint64 `json:"id,omitempty"`
	// Invalid says why the name is unsafe to use as a file name on the
	// host ("contains a slash" ...). Such entries are listed so that the
	// user sees them, and are never extracted.
	Invalid string `json:"invalid,omitempty"`
}

// IsRegular reports whether the entry is a plain file that Open can read.
func (e Entry) IsRegular() bool {
	return !e.IsDir && !e.IsSymlink && e.Mode.Type()&^fs.ModeDir == 0
}

// Error is what FS methods return: it names the volume, the operation, the
// path and the cause.
type Error struct {
	Volume string
	Op     string
	Path   string
	Err    error
}

func (e *Error) Error() string {
	p := e.Path
	if p == "" {
		p = "/"
	} else if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return fmt.Sprintf("%s: %s %s: %v", e.Volume, e.Op, p, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Errors wrapped by Error.
var (
	ErrNotExist    = fs.ErrNotExist
	ErrNotDir      = errors.New("not a directory")
	ErrIsDir       = errors.New("is a directory")
	ErrNotRegular  = errors.New("not a regular file")
	ErrInvalidPath = errors.New("invalid path")
	ErrUnsupported = errors.New("unsupported")
	ErrCorrupt     = errors.New("corrupt filesystem")
)

// OpenFS opens the filesystem of a volume found by OpenVolumes. r is the
// whole disk image. The image must stay open while the FS is used.
func OpenFS(ctx context.Context, r io.ReaderAt, vol Volume) (FS, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sr := io.NewSectionReader(r, vol.Start, vol.Length)
	var (
		f   FS
		err error
	)
	switch vol.FS {
	case FSNTFS:
		f, err = openNTFS(sr, vol)
	case FSExt4:
		f, err = openExt(sr, vol)
	case FSFAT:
		f, err = openFAT(sr, vol)
	case FSXFS:
		f, err = openXFS(sr, vol)
	default:
		err = fmt.Errorf("%w: filesystem %q", ErrUnsupported, vol.FS)
	}
	if err != nil {
		return nil, &Error{Volume: vol.String(), Op: "open filesystem", Err: err}
	}
	return f, nil
}

// cleanPath turns a user path into its components. It rejects ".." and
// "." components, empty components inside the path, and NUL bytes.
func cleanPath(p string) ([]string, error) {
	p = strings.Trim(p, "/")
	if p == "" || p == "." {
		return nil, nil
	}
	parts := strings.Split(p, "/")
	for _, c := range parts {
		if c == "" || c == "." || c == ".." || strings.IndexByte(c, 0) >= 0 {
			return nil, ErrInvalidPath
		}
	}
	return parts, nil
}

// invalidName says why name cannot be used as a host file name, or "".
func invalidName(name string) string {
	switch {
	case name == "":
		return "empty name"
	case name == "." || name == "..":
		return "name is " + name
	case strings.IndexByte(name, 0) >= 0:
		return "name contains a NUL byte"
	case strings.Contains(name, "/"):
		return "name contains a slash"
	case strings.Contains(name, "\\"):
		return "name contains a backslash"
	case len(name) > 255:
		return "name is longer than 255 bytes"
	}
	return ""
}

func sortEntries(es []Entry) []Entry {
	sort.SliceStable(es, func(a, b int) bool { return es[a].Name < es[b].Name })
	return es
}

// finishEntries fills Path and Invalid of a listing of dir.
func finishEntries(dir []string, es []Entry) []Entry {
	prefix := strings.Join(dir, "/")
	for i := range es {
		es[i].Invalid = invalidName(es[i].Name)
		if es[i].Invalid != "" {
			es[i].Path = ""
			continue
		}
		if prefix == "" {
			es[i].Path = es[i].Name
		} else {
			es[i].Path = prefix + "/" + es[i].Name
		}
	}
	return es
}

// ---- a path layer over filesystems addressed by node ----

// node is an entry plus whatever the driver needs to reach it again.
type node struct {
	Entry
	ref any
}

// driver is a filesystem reader addressed by nodes rather than paths.
// treeFS calls it with its lock held.
type driver interface {
	root() (node, error)
	list(dir node) ([]node, error)
	open(n node) (File, error)
}

// treeFS implements FS over a driver: it resolves paths component by
// component and serialises access.
type treeFS struct {
	vol      Volume
	drv      driver
	foldCase bool // match names case-insensitively when no exact match
	warnings []string

	mu     sync.Mutex
	closed bool
	// dirs caches resolved directories by path, so that a walk does not
	// list every ancestor again for each directory it enters.
	dirs map[string]node
}

// maxCachedDirs bounds treeFS.dirs; the cache is dropped when full.
const maxCachedDirs = 16384

func (t *treeFS) remember(p string, n node) {
	if !n.IsDir || n.Invalid != "" {
		return
	}
	if t.dirs == nil || len(t.dirs) >= maxCachedDirs {
		t.dirs = map[string]node{}
	}
	t.dirs[p] = n
}

func (t *treeFS) Volume() Volume { return t.vol }

func (t *treeFS) Warnings() []string { return append([]string(nil), t.warnings...) }

func (t *treeFS) Close() error {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	return nil
}

func (t *treeFS) fail(op, p string, err error) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{Volume: t.vol.String(), Op: op, Path: strings.Trim(p, "/"), Err: err}
}

// resolve walks to the node named by parts. Symlinks are never followed.
func (t *treeFS) resolve(parts []string) (node, error) {
	if t.closed {
		return node{}, fs.ErrClosed
	}
	start := 0
	var n node
	for i := len(parts); i > 0; i-- {
		if c, ok := t.dirs[strings.Join(parts[:i], "/")]; ok {
			n, start = c, i
			break
		}
	}
	// actual holds the names as the filesystem spells them, which differ
	// from parts when a name matched case-insensitively.
	actual := append([]string(nil), parts[:start]...)
	if start > 0 {
		actual = strings.Split(n.Path, "/")
	}
	if start == 0 {
		var err error
		if n, err = t.drv.root(); err != nil {
			return node{}, err
		}
	}
	for i := start; i < len(parts); i++ {
		c := parts[i]
		if !n.IsDir {
			return node{}, fmt.Errorf("%s: %w", strings.Join(parts[:i], "/"), ErrNotDir)
		}
		kids, err := t.drv.list(n)
		if err != nil {
			return node{}, err
		}
		found := -1
		for k := range kids {
			if kids[k].Name == c {
				found = k
				break
			}
		}
		if found < 0 && t.foldCase {
			for k := range kids {
				if strings.EqualFold(kids[k].Name, c) {
					found = k
					break
				}
			}
		}
		if found < 0 {
			return node{}, ErrNotExist
		}
		n = kids[found]
		actual = append(actual, n.Name)
		n.Path = strings.Join(actual, "/")
		n.Invalid = invalidName(n.Name)
		t.remember(n.Path, n)
	}
	return n, nil
}

func (t *treeFS) ReadDir(p string) ([]Entry, error) {
	parts, err := cleanPath(p)
	if err != nil {
		return nil, t.fail("readdir", p, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n, err := t.resolve(parts)
	if err != nil {
		return nil, t.fail("readdir", p, err)
	}
	if !n.IsDir {
		return nil, t.fail("readdir", p, ErrNotDir)
	}
	kids, err := t.drv.list(n)
	if err != nil {
		return nil, t.fail("readdir", p, err)
	}
	sort.SliceStable(kids, func(a, b int) bool { return kids[a].Name < kids[b].Name })
	es := make([]Entry, len(kids))
	for i := range kids {
		es[i] = kids[i].Entry
	}
	es = finishEntries(parts, es)
	for i := range kids {
		if kids[i].IsDir && es[i].Path != "" {
			k := kids[i]
			k.Entry = es[i]
			t.remember(k.Path, k)
		}
	}
	return es, nil
}

func (t *treeFS) Stat(p string) (Entry, error) {
	parts, err := cleanPath(p)
	if err != nil {
		return Entry{}, t.fail("stat", p, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n, err := t.resolve(parts)
	if err != nil {
		return Entry{}, t.fail("stat", p, err)
	}
	return n.Entry, nil
}

func (t *treeFS) Open(p string) (File, error) {
	parts, err := cleanPath(p)
	if err != nil {
		return nil, t.fail("open", p, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n, err := t.resolve(parts)
	if err != nil {
		return nil, t.fail("open", p, err)
	}
	if n.IsDir {
		return nil, t.fail("open", p, ErrIsDir)
	}
	if !n.IsRegular() {
		return nil, t.fail("open", p, ErrNotRegular)
	}
	f, err := t.drv.open(n)
	if err != nil {
		return nil, t.fail("open", p, err)
	}
	return &lockedFile{f: f, mu: &t.mu, size: n.Size, name: t.vol.String() + ": /" + n.Path}, nil
}

// lockedFile serialises reads with the rest of its filesystem and checks
// that the driver delivers exactly Size bytes.
type lockedFile struct {
	f    File
	mu   *sync.Mutex
	size int64
	read int64
	name string
}

func (l *lockedFile) Size() int64 { return l.size }

func (l *lockedFile) Read(p []byte) (int, error) {
	if l.read >= l.size {
		return 0, io.EOF
	}
	if int64(len(p)) > l.size-l.read {
		p = p[:l.size-l.read]
	}
	l.mu.Lock()
	n, err := l.f.Read(p)
	l.mu.Unlock()
	l.read += int64(n)
	if err == io.EOF && l.read < l.size {
		err = fmt.Errorf("%s: read: file ends at byte %d of %d: %w", l.name, l.read, l.size, io.ErrUnexpectedEOF)
	} else if err != nil && err != io.EOF {
		err = fmt.Errorf("%s: read at byte %d: %w", l.name, l.read, err)
	}
	return n, err
}

func (l *lockedFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: read at negative offset %d", l.name, off)
	}
	if off >= l.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > l.size-off {
		p = p[:l.size-off]
	}
	l.mu.Lock()
	n, err := l.f.ReadAt(p, off)
	l.mu.Unlock()
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err == nil && n < want {
		err = io.EOF
	} else if err != nil && err != io.EOF {
		err = fmt.Errorf("%s: read at byte %d: %w", l.name, off+int64(n), err)
	}
	return n, err
}

func (l *lockedFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

// readerAtFile reads a file through an io.ReaderAt that maps its bytes.
type readerAtFile struct {
	r    io.ReaderAt
	off  int64
	size int64
}

func (f *readerAtFile) Size() int64  { return f.size }
func (f *readerAtFile) Close() error { return nil }
func (f *readerAtFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > f.size-off {
		p = p[:f.size-off]
	}
	n, err := f.r.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err == nil && n < want {
		err = io.EOF
	}
	return n, err
}

func (f *readerAtFile) Read(p []byte) (int, error) {
	if f.off >= f.size {
		return 0, io.EOF
	}
	if int64(len(p)) > f.size-f.off {
		p = p[:f.size-f.off]
	}
	n, err := f.r.ReadAt(p, f.off)
	f.off += int64(n)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	return n, err
}

// guard turns a panic in third-party parsing code into an error. Deferred
// as `defer guard(&err)` around every call into such a library.
func guard(err *error) {
	if p := recover(); p != nil {
		*err = fmt.Errorf("%w: parser panic: %v", ErrCorrupt, p)
	}
}
