package itemlevel

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"
)

// ExtractOptions tune Extract.
type ExtractOptions struct {
	// Overwrite replaces files that already exist in the target folder
	// (by writing a temporary file and renaming it over the old one, so a
	// symlink planted there is replaced, never followed). Without it an
	// existing file is an error. Existing folders are always merged into.
	Overwrite bool
	// ContinueOnError records files that cannot be read or written in
	// ExtractResult.Failed and goes on with the rest.
	ContinueOnError bool
}

// Skipped is an entry left out of an extraction or archive.
type Skipped struct {
	// Path is the entry's path in the guest filesystem. For an unsafe
	// name it is the parent's path, a slash and the raw name.
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// ExtractResult counts what Extract or WriteTar wrote.
type ExtractResult struct {
	Files int   `json:"files"`
	Dirs  int   `json:"dirs"`
	Bytes int64 `json:"bytes"`
	// Skipped lists entries left out on purpose: symbolic links and
	// reparse points, devices, pipes and sockets, unsafe names, cycles.
	Skipped []Skipped `json:"skipped,omitempty"`
	// Failed lists files that could not be read or written when
	// ContinueOnError is set.
	Failed []Skipped `json:"failed,omitempty"`
}

// Extract copies srcPath (a file, or a folder with everything below it)
// from fsys into targetDir, which is created if needed: a file or folder
// named like srcPath's last component is made in targetDir; the volume
// root's contents go directly into targetDir.
//
// Nothing is ever written outside targetDir: all writes go through an
// os.Root opened on it, new files are created exclusively (O_EXCL, which
// never follows a symlink), guest names containing "/", "\", NUL, or equal
// to "." or ".." are skipped and reported, and guest symlinks are skipped
// and reported, never created.
func Extract(ctx context.Context, fsys FS, srcPath, targetDir string, opts ExtractOptions) (ExtractResult, error) {
	var res ExtractResult
	parts, err := cleanPath(srcPath)
	if err != nil {
		return res, &Error{Volume: fsys.Volume().String(), Op: "extract", Path: srcPath, Err: err}
	}
	st, err := fsys.Stat(srcPath)
	if err != nil {
		return res, err
	}
	if err := os.MkdirAll(targetDir, 0o755); err != nil {
		return res, fmt.Errorf("extract: %w", err)
	}
	abs, err := filepath.Abs(targetDir)
	if err != nil {
		return res, fmt.Errorf("extract: %w", err)
	}
	root, err := os.OpenRoot(abs)
	if err != nil {
		return res, fmt.Errorf("extract: %w", err)
	}
	defer root.Close()
	x := &extractor{ctx: ctx, fsys: fsys, root: root, target: abs, opts: opts, res: &res, ancestors: map[uint64]bool{}, buf: make([]byte, copyBuf)}
	if len(parts) == 0 {
		err = x.contents(st, "", 0)
	} else {
		if st.Invalid = invalidName(st.Name); st.Invalid != "" {
			return res, &Error{Volume: fsys.Volume().String(), Op: "extract", Path: srcPath, Err: fmt.Errorf("%w: %s", ErrInvalidPath, st.Invalid)}
		}
		err = x.entry(st, st.Name, 0)
	}
	return res, err
}

type extractor struct {
	ctx       context.Context
	fsys      FS
	root      *os.Root
	target    string
	opts      ExtractOptions
	res       *ExtractResult
	ancestors map[uint64]bool
	buf       []byte
}

// copyBuf is the size of the buffer files are copied through.
const copyBuf = 1 << 20

func (x *extractor) skip(p, reason string) {
	x.res.Skipped = append(x.res.Skipped, Skipped{Path: "/" + strings.TrimPrefix(p, "/"), Reason: reason})
}

// skipReason says why an entry is not extracted, or "".
func skipReason(e Entry) string {
	switch {
	case e.Invalid != "":
		return "unsafe name: " + e.Invalid
	case e.IsSymlink && e.LinkTarget != "":
		return "symbolic link to " + e.LinkTarget
	case e.IsSymlink:
		return "symbolic link or reparse point"
	case e.IsDir || e.IsRegular():
		return ""
	case e.Mode&fs.ModeDevice != 0:
		return "device file"
	case e.Mode&fs.ModeNamedPipe != 0:
		return "named pipe"
	case e.Mode&fs.ModeSocket != 0:
		return "socket"
	}
	return "not a regular file"
}

// entryPath is the guest path to report for e listed in directory dir.
func entryPath(dir string, e Entry) string {
	if e.Path != "" {
		return e.Path
	}
	return strings.TrimSuffix(dir, "/") + "/" + e.Name
}

// safeDest checks a destination relative to the target root: local, made
// of valid names, and (belt and braces) inside the target once joined.
func (x *extractor) safeDest(dest string) error {
	for _, c := range strings.Split(dest, "/") {
		if r := invalidName(c); r != "" {
			return fmt.Errorf("%w: %s", ErrInvalidPath, r)
		}
	}
	rel, err := filepath.Rel(x.target, filepath.Join(x.target, filepath.FromSlash(dest)))
	if err != nil || !filepath.IsLocal(rel) {
		return fmt.Errorf("%w: %q leaves the target folder", ErrInvalidPath, dest)
	}
	return nil
}

func (x *extractor) entry(e Entry, dest string, depth int) error {
	if err := x.ctx.Err(); err != nil {
		return err
	}
	if r := skipReason(e); r != "" {
		x.skip(e.Path, r)
		return nil
	}
	if err := x.safeDest(dest); err != nil {
		return x.fail(e, err)
	}
	if e.IsDir {
		if err := x.mkdir(dest); err != nil {
			return x.fail(e, err)
		}
		x.res.Dirs++
		if err := x.contents(e, dest, depth); err != nil {
			return err
		}
		x.chtimes(dest, e.ModTime)
		return nil
	}
	err := x.writeFile(e, dest)
	if err != nil && x.opts.ContinueOnError && x.ctx.Err() == nil {
		x.res.Failed = append(x.res.Failed, Skipped{Path: "/" + e.Path, Reason: err.Error()})
		return nil
	}
	return x.fail(e, err)
}

// fail names the volume and guest path in an error about the host side.
func (x *extractor) fail(e Entry, err error) error {
	var fe *Error
	if err == nil || errors.As(err, &fe) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &Error{Volume: x.fsys.Volume().String(), Op: "extract", Path: e.Path, Err: err}
}

// contents extracts the entries of directory e into dest ("" is the root).
func (x *extractor) contents(e Entry, dest string, depth int) error {
	switch {
	case e.ID != 0 && x.ancestors[e.ID]:
		x.skip(e.Path, ErrCycle.Error())
		return nil
	case depth > MaxDepth:
		x.skip(e.Path, ErrTooDeep.Error())
		return nil
	}
	kids, err := x.fsys.ReadDir(e.Path)
	if err != nil {
		if x.opts.ContinueOnError && x.ctx.Err() == nil {
			x.res.Failed = append(x.res.Failed, Skipped{Path: "/" + e.Path, Reason: err.Error()})
			return nil
		}
		return err
	}
	if e.ID != 0 {
		x.ancestors[e.ID] = true
		defer delete(x.ancestors, e.ID)
	}
	for _, k := range kids {
		if k.Invalid != "" {
			x.skip(entryPath(e.Path, k), "unsafe name: "+k.Invalid)
			continue
		}
		d := k.Name
		if dest != "" {
			d = dest + "/" + k.Name
		}
		if err := x.entry(k, d, depth+1); err != nil {
			return err
		}
	}
	return nil
}

func (x *extractor) mkdir(dest string) error {
	err := x.root.Mkdir(dest, 0o755)
	if err == nil {
		return nil
	}
	if errors.Is(err, fs.ErrExist) {
		if fi, lerr := x.root.Lstat(dest); lerr == nil && fi.IsDir() {
			return nil
		}
		return fmt.Errorf("%s exists in the target folder and is not a folder", dest)
	}
	return err
}

func (x *extractor) chtimes(dest string, t time.Time) {
	if !t.IsZero() {
		_ = x.root.Chtimes(dest, t, t)
	}
}

func (x *extractor) writeFile(e Entry, dest string) (err error) {
	src, err := x.fsys.Open(e.Path)
	if err != nil {
		return err
	}
	defer src.Close()

	perm := fs.FileMode(0o644)
	if e.Mode&0o111 != 0 {
		perm = 0o755
	}
	name := dest
	if x.opts.Overwrite {
		if _, err := x.root.Lstat(dest); err == nil {
			name = tempName(dest)
		}
	}
	// O_EXCL: fails on any existing name, symlinks included, and never
	// follows one.
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s already exists in the target folder", dest)
		}
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			x.root.Remove(name)
		}
	}()
	n, err := copyCtx(x.ctx, f, src, x.buf)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if name != dest {
		if err := x.root.Rename(name, dest); err != nil {
			x.root.Remove(name)
			return fmt.Errorf("replace %s: %w", dest, err)
		}
	}
	x.chtimes(dest, e.ModTime)
	x.res.Files++
	x.res.Bytes += n
	return nil
}

func tempName(dest string) string {
	dir, base := "", dest
	if i := strings.LastIndexByte(dest, '/'); i >= 0 {
		dir, base = dest[:i+1], dest[i+1:]
	}
	if len(base) > 200 {
		base = base[:200]
	}
	return fmt.Sprintf("%s.%s.lifeboat-%d.tmp", dir, base, time.Now().UnixNano())
}

// copyCtx copies src to w through buf, checking ctx between blocks.
func copyCtx(ctx context.Context, w io.Writer, src io.Reader, buf []byte) (int64, error) {
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return total, err
			}
			total += int64(n)
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// WriteTar writes the given paths (files or folders, recursively) of fsys
// as a tar stream to w, for a download. Each path appears under its last
// component (the root's contents at the top level). Names in the archive
// are relative, slash-separated and made only of safe names; symlinks,
// special files and unsafe names are left out and reported. A read error
// ends the stream with an error: the archive is then incomplete.
func WriteTar(ctx context.Context, fsys FS, paths []string, w io.Writer) (ExtractResult, error) {
	var res ExtractResult
	t := &tarWriter{ctx: ctx, fsys: fsys, tw: tar.NewWriter(w), res: &res, seen: map[string]bool{}, ancestors: map[uint64]bool{}, buf: make([]byte, copyBuf)}
	for _, p := range paths {
		parts, err := cleanPath(p)
		if err != nil {
			return res, &Error{Volume: fsys.Volume().String(), Op: "tar", Path: p, Err: err}
		}
		st, err := fsys.Stat(p)
		if err != nil {
			return res, err
		}
		if len(parts) == 0 {
			err = t.contents(st, "", 0)
		} else {
			st.Invalid = invalidName(st.Name)
			err = t.entry(st, st.Name, 0)
		}
		if err != nil {
			return res, err
		}
	}
	return res, t.tw.Close()
}

type tarWriter struct {
	ctx       context.Context
	fsys      FS
	tw        *tar.Writer
	res       *ExtractResult
	seen      map[string]bool
	ancestors map[uint64]bool
	buf       []byte
}

func (t *tarWriter) skip(p, reason string) {
	t.res.Skipped = append(t.res.Skipped, Skipped{Path: "/" + strings.TrimPrefix(p, "/"), Reason: reason})
}

func (t *tarWriter) entry(e Entry, name string, depth int) error {
	if err := t.ctx.Err(); err != nil {
		return err
	}
	if r := skipReason(e); r != "" {
		t.skip(e.Path, r)
		return nil
	}
	for _, c := range strings.Split(name, "/") {
		if r := invalidName(c); r != "" {
			t.skip(e.Path, "unsafe name: "+r)
			return nil
		}
	}
	if t.seen[name] {
		t.skip(e.Path, "duplicate name in the archive")
		return nil
	}
	t.seen[name] = true
	mtime := e.ModTime.Truncate(time.Second)
	if mtime.IsZero() {
		mtime = time.Unix(0, 0)
	}
	h := &tar.Header{Name: name, ModTime: mtime, Mode: 0o644}
	if !utf8.ValidString(name) {
		// PAX records must be UTF-8; GNU long names take any bytes.
		h.Format = tar.FormatGNU
	}
	if e.IsDir {
		h.Typeflag, h.Name, h.Mode = tar.TypeDir, name+"/", 0o755
		if err := t.tw.WriteHeader(h); err != nil {
			return err
		}
		t.res.Dirs++
		return t.contents(e, name, depth)
	}
	if e.Mode&0o111 != 0 {
		h.Mode = 0o755
	}
	src, err := t.fsys.Open(e.Path)
	if err != nil {
		return err
	}
	defer src.Close()
	h.Typeflag, h.Size = tar.TypeReg, src.Size()
	if err := t.tw.WriteHeader(h); err != nil {
		return err
	}
	n, err := copyCtx(t.ctx, t.tw, src, t.buf)
	if err != nil {
		return err
	}
	t.res.Files++
	t.res.Bytes += n
	return nil
}

func (t *tarWriter) contents(e Entry, name string, depth int) error {
	switch {
	case e.ID != 0 && t.ancestors[e.ID]:
		t.skip(e.Path, ErrCycle.Error())
		return nil
	case depth > MaxDepth:
		t.skip(e.Path, ErrTooDeep.Error())
		return nil
	}
	kids, err := t.fsys.ReadDir(e.Path)
	if err != nil {
		return err
	}
	if e.ID != 0 {
		t.ancestors[e.ID] = true
		defer delete(t.ancestors, e.ID)
	}
	for _, k := range kids {
		if k.Invalid != "" {
			t.skip(entryPath(e.Path, k), "unsafe name: "+k.Invalid)
			continue
		}
		n := k.Name
		if name != "" {
			n = name + "/" + k.Name
		}
		if err := t.entry(k, n, depth+1); err != nil {
			return err
		}
	}
	return nil
}
