package itemlevel

import (
	"fmt"
	"io"
	"io/fs"
	"reflect"
	"strings"
	"sync"

	xfslog "github.com/masahiro331/go-xfs-filesystem/log"
	"github.com/masahiro331/go-xfs-filesystem/xfs"
	"go.uber.org/zap"
)

// XFS through go-xfs-filesystem, which is addressed by path. Its reader
// keeps a seek position, so every call, file reads included, holds the
// filesystem's lock.

func init() {
	// The library logs at debug level to stderr by default.
	xfslog.SetLogger(zap.NewNop().Sugar())
}

type xfsFS struct {
	vol Volume
	mu  sync.Mutex
	x   *xfs.FileSystem
}

func openXFS(sr *io.SectionReader, vol Volume) (_ FS, err error) {
	defer guard(&err)
	x, err := xfs.NewFS(*sr, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	f := &xfsFS{vol: vol, x: x}
	if _, err := f.readDir(nil); err != nil {
		return nil, fmt.Errorf("root directory: %w", err)
	}
	return f, nil
}

func (f *xfsFS) Volume() Volume     { return f.vol }
func (f *xfsFS) Warnings() []string { return nil }
func (f *xfsFS) Close() error       { return nil }

func (f *xfsFS) fail(op, p string, err error) error {
	return &Error{Volume: f.vol.String(), Op: op, Path: strings.Trim(p, "/"), Err: err}
}

// readDir lists the directory named by parts (nil for the root).
func (f *xfsFS) readDir(parts []string) (out []Entry, err error) {
	defer guard(&err)
	des, err := f.x.ReadDir("/" + strings.Join(parts, "/"))
	if err != nil {
		return nil, err
	}
	out = make([]Entry, 0, len(des))
	for _, de := range des {
		info, err := de.Info()
		if err != nil {
			return nil, err
		}
		e := Entry{
			Name:    de.Name(),
			Size:    info.Size(),
			ModTime: info.ModTime().UTC(),
			Mode:    info.Mode(),
			IsDir:   info.IsDir(),
		}
		if e.IsDir {
			e.Size = 0
		}
		e.IsSymlink = e.Mode&fs.ModeSymlink != 0
		e.ID, e.LinkTarget = xfsInode(info)
		out = append(out, e)
	}
	return finishEntries(parts, sortEntries(out)), nil
}

// xfsInode reads the inode number and symlink target that the library
// keeps in unexported fields of its FileInfo (pinned version; anything
// unexpected gives 0 and "").
func xfsInode(info fs.FileInfo) (ino uint64, target string) {
	defer func() {
		if recover() != nil {
			ino, target = 0, ""
		}
	}()
	v := reflect.ValueOf(info)
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	in := v.FieldByName("inode")
	if in.Kind() != reflect.Pointer || in.IsNil() {
		return 0, ""
	}
	in = in.Elem()
	if f := in.FieldByName("inodeCore").FieldByName("Ino"); f.Kind() == reflect.Uint64 {
		ino = f.Uint()
	}
	if l := in.FieldByName("symlinkString"); l.Kind() == reflect.Pointer && !l.IsNil() {
		if n := l.Elem().FieldByName("Name"); n.Kind() == reflect.String {
			target = n.String()
		}
	}
	return ino, target
}

func (f *xfsFS) ReadDir(p string) ([]Entry, error) {
	parts, err := cleanPath(p)
	if err != nil {
		return nil, f.fail("readdir", p, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(parts) > 0 {
		e, err := f.stat(parts)
		if err != nil {
			return nil, f.fail("readdir", p, err)
		}
		if !e.IsDir {
			return nil, f.fail("readdir", p, ErrNotDir)
		}
	}
	es, err := f.readDir(parts)
	if err != nil {
		return nil, f.fail("readdir", p, err)
	}
	return es, nil
}

// stat finds parts in its parent's listing.
func (f *xfsFS) stat(parts []string) (Entry, error) {
	if len(parts) == 0 {
		return Entry{IsDir: true, Mode: fs.ModeDir | 0o755}, nil
	}
	es, err := f.readDir(parts[:len(parts)-1])
	if err != nil {
		return Entry{}, err
	}
	for _, e := range es {
		if e.Name == parts[len(parts)-1] {
			return e, nil
		}
	}
	return Entry{}, ErrNotExist
}

func (f *xfsFS) Stat(p string) (Entry, error) {
	parts, err := cleanPath(p)
	if err != nil {
		return Entry{}, f.fail("stat", p, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	e, err := f.stat(parts)
	if err != nil {
		return Entry{}, f.fail("stat", p, err)
	}
	return e, nil
}

func (f *xfsFS) Open(p string) (File, error) {
	parts, err := cleanPath(p)
	if err != nil {
		return nil, f.fail("open", p, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	e, err := f.stat(parts)
	if err != nil {
		return nil, f.fail("open", p, err)
	}
	if e.IsDir {
		return nil, f.fail("open", p, ErrIsDir)
	}
	if !e.IsRegular() {
		return nil, f.fail("open", p, ErrNotRegular)
	}
	r, err := f.open(strings.Join(parts, "/"))
	if err != nil {
		return nil, f.fail("open", p, err)
	}
	name := strings.Join(parts, "/")
	g := &guardedFile{r: r, size: e.Size, reopen: func() (fs.File, error) { return f.open(name) }}
	return &lockedFile{f: g, mu: &f.mu, size: e.Size, name: f.vol.String() + ": /" + e.Path}, nil
}

func (f *xfsFS) open(name string) (_ fs.File, err error) {
	defer guard(&err)
	return f.x.Open(name)
}

// guardedFile turns panics of a library file into errors. The library's
// files only read forwards: ReadAt uses a second handle, reopened when
// asked for an offset behind it.
type guardedFile struct {
	r      fs.File
	size   int64
	reopen func() (fs.File, error)
	ra     fs.File
	raPos  int64
}

func (g *guardedFile) ReadAt(p []byte, off int64) (n int, err error) {
	defer guard(&err)
	if g.ra == nil || off < g.raPos {
		if g.ra != nil {
			g.ra.Close()
		}
		if g.ra, err = g.reopen(); err != nil {
			g.ra = nil
			return 0, err
		}
		g.raPos = 0
	}
	if off > g.raPos {
		k, err := io.CopyN(io.Discard, g.ra, off-g.raPos)
		g.raPos += k
		if err != nil {
			return 0, err
		}
	}
	n, err = io.ReadFull(g.ra, p)
	g.raPos += int64(n)
	if err == io.ErrUnexpectedEOF {
		err = io.EOF
	}
	return n, err
}

func (g *guardedFile) Size() int64 { return g.size }

func (g *guardedFile) Read(p []byte) (n int, err error) {
	defer guard(&err)
	return g.r.Read(p)
}

func (g *guardedFile) Close() (err error) {
	defer guard(&err)
	if g.ra != nil {
		g.ra.Close()
	}
	return g.r.Close()
}
