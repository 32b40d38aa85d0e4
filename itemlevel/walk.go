package itemlevel

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
)

// MaxDepth is how deep Walk, Find, Extract and WriteTar descend below
// their starting directory.
const MaxDepth = 256

// Errors passed to a WalkFunc for directories Walk does not enter.
var (
	ErrCycle   = errors.New("directory contains one of its ancestors")
	ErrTooDeep = fmt.Errorf("directory nesting deeper than %d", MaxDepth)
)

// WalkFunc is called by Walk for every entry. err is non-nil when the
// entry is a directory that could not be listed or will not be entered
// (ErrCycle, ErrTooDeep). Returning fs.SkipDir skips a directory's
// contents (or the rest of the current directory, for a file); fs.SkipAll
// stops the walk; any other error stops it and is returned.
type WalkFunc func(e Entry, err error) error

// Walk visits root and everything below it depth-first, in name order.
// Symbolic links and entries with invalid names are visited but never
// entered.
func Walk(ctx context.Context, fsys FS, root string, fn WalkFunc) error {
	e, err := fsys.Stat(root)
	if err != nil {
		return err
	}
	err = walk(ctx, fsys, e, 0, map[uint64]bool{}, fn)
	if err == fs.SkipDir || err == fs.SkipAll {
		return nil
	}
	return err
}

func walk(ctx context.Context, fsys FS, e Entry, depth int, ancestors map[uint64]bool, fn WalkFunc) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !e.IsDir || e.IsSymlink || e.Invalid != "" {
		return fn(e, nil)
	}
	switch {
	case e.ID != 0 && ancestors[e.ID]:
		return fn(e, ErrCycle)
	case depth > MaxDepth:
		return fn(e, ErrTooDeep)
	}
	if err := fn(e, nil); err != nil {
		if err == fs.SkipDir {
			return nil
		}
		return err
	}
	kids, err := fsys.ReadDir(e.Path)
	if err != nil {
		if err := fn(e, err); err != nil && err != fs.SkipDir {
			return err
		}
		return nil
	}
	if e.ID != 0 {
		ancestors[e.ID] = true
		defer delete(ancestors, e.ID)
	}
	for _, k := range kids {
		if err := walk(ctx, fsys, k, depth+1, ancestors, fn); err != nil {
			if err == fs.SkipDir {
				return nil
			}
			return err
		}
	}
	return nil
}

// FindOptions tune Find.
type FindOptions struct {
	// CaseInsensitive matches names regardless of case.
	CaseInsensitive bool
	// MaxResults stops the search after that many matches (0: no limit).
	MaxResults int
	// Dirs includes directories among the matches; files always are.
	Dirs bool
}

// Find returns the entries below root whose name matches pattern, a
// path.Match glob applied to the base name ("*.docx", "report-202?.*").
// Directories that cannot be read are skipped: the matches found are
// returned together with an error naming them.
func Find(ctx context.Context, fsys FS, root, pattern string, opts FindOptions) ([]Entry, error) {
	if opts.CaseInsensitive {
		pattern = strings.ToLower(pattern)
	}
	if _, err := path.Match(pattern, ""); err != nil {
		return nil, fmt.Errorf("find %q: %w", pattern, err)
	}
	var (
		out  []Entry
		errs []error
	)
	err := Walk(ctx, fsys, root, func(e Entry, err error) error {
		if err != nil {
			if len(errs) < 20 {
				errs = append(errs, err)
			}
			return nil
		}
		if e.Invalid != "" || e.Path == "" || (e.IsDir && !opts.Dirs) {
			return nil
		}
		name := e.Name
		if opts.CaseInsensitive {
			name = strings.ToLower(name)
		}
		if ok, _ := path.Match(pattern, name); ok {
			out = append(out, e)
			if opts.MaxResults > 0 && len(out) >= opts.MaxResults {
				return fs.SkipAll
			}
		}
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	return out, errors.Join(errs...)
}
