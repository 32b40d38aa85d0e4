// Package local stores repository objects as files in a folder. Each Put
// writes a temporary file, fsyncs it, and hard-links it into place, so an
// object appears whole or not at all and an existing object is never
// replaced; the folder is fsynced so the name survives a crash.
package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"lifeboat/repo/storage"
)

// Backend is a folder-backed storage.Backend.
type Backend struct {
	root string

	mu          sync.Mutex
	staged      []stagedObject
	stagedBytes int64
}

// stagedObject is written to a temp file but not yet durable or linked.
type stagedObject struct {
	tmp, final string
}

// A batch is flushed when it grows this large, bounding what a crash
// throws away and how much dirty page cache one flush must write.
const (
	flushObjects = 256
	flushBytes   = 512 << 20
)

const tmpDir = "tmp"

// Open uses dir as the root of the object store, creating it if needed.
func Open(dir string) (*Backend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("local storage %s: %w", dir, err)
	}
	if err := os.MkdirAll(filepath.Join(abs, tmpDir), 0o700); err != nil {
		return nil, fmt.Errorf("local storage %s: %w", abs, err)
	}
	return &Backend{root: abs}, nil
}

func (b *Backend) Location() string { return b.root }

func (b *Backend) path(key string) (string, error) {
	if err := storage.CheckKey(key); err != nil {
		return "", err
	}
	if key == tmpDir || strings.HasPrefix(key, tmpDir+"/") {
		return "", fmt.Errorf("invalid object key %q: %s/ is reserved", key, tmpDir)
	}
	return filepath.Join(b.root, filepath.FromSlash(key)), nil
}

func (b *Backend) Put(ctx context.Context, key string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	final, err := b.path(key)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(final); err == nil {
		return nil
	}
	tmp := b.tempName()
	if err := writeSync(tmp, data); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s: %w", key, err)
	}
	defer os.Remove(tmp)
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	// Link, unlike rename, fails instead of replacing an existing object.
	if err := os.Link(tmp, final); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
		return fmt.Errorf("put %s: %w", key, err)
	}
	return syncDir(dir)
}

// Stage writes the object to a temp file without fsync; Flush then makes
// the whole batch durable with one filesystem sync and links it into
// place. An object is never visible before it is durable.
func (b *Backend) Stage(ctx context.Context, key string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	final, err := b.path(key)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(final); err == nil {
		return nil
	}
	tmp := b.tempName()
	done, err := writeDirect(tmp, data)
	if !done {
		err = writeFile(tmp, data, false)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("stage %s: %w", key, err)
	}
	b.mu.Lock()
	b.staged = append(b.staged, stagedObject{tmp: tmp, final: final})
	b.stagedBytes += int64(len(data))
	full := len(b.staged) >= flushObjects || b.stagedBytes >= flushBytes
	b.mu.Unlock()
	if full {
		return b.Flush(ctx)
	}
	return nil
}

// Flush syncs the staged temp files, links them into place and syncs
// their folders.
func (b *Backend) Flush(ctx context.Context) error {
	b.mu.Lock()
	batch := b.staged
	b.staged, b.stagedBytes = nil, 0
	b.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	defer func() {
		for _, o := range batch {
			os.Remove(o.tmp)
		}
	}()
	if err := syncFiles(b.root, batch); err != nil {
		return fmt.Errorf("flush %d objects in %s: %w", len(batch), b.root, err)
	}
	dirs := map[string]bool{}
	for _, o := range batch {
		dir := filepath.Dir(o.final)
		if !dirs[dir] {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			dirs[dir] = true
		}
		if err := os.Link(o.tmp, o.final); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("flush %s: %w", o.final, err)
		}
	}
	for dir := range dirs {
		if err := syncDir(dir); err != nil {
			return err
		}
	}
	return nil
}

func (b *Backend) tempName() string {
	var rnd [8]byte
	rand.Read(rnd[:])
	return filepath.Join(b.root, tmpDir, hex.EncodeToString(rnd[:]))
}

func writeSync(path string, data []byte) error { return writeFile(path, data, true) }

func writeFile(path string, data []byte, sync bool) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if sync {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, errors.ErrUnsupported) {
		// Some platforms cannot fsync a directory; the link is still made.
		var pe *fs.PathError
		if !errors.As(err, &pe) {
			return err
		}
	}
	return nil
}

func (b *Backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := b.path(key)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("get %s in %s: %w", key, b.root, storage.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return data, nil
}

func (b *Backend) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	p, err := b.path(key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s in %s: %w", key, b.root, storage.ErrNotFound)
	}
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, err)
	}
	return storage.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	// Walk only the deepest folder the prefix names completely.
	start := b.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = filepath.Join(b.root, filepath.FromSlash(prefix[:i]))
	}
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(b.root, p)
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			if key == tmpDir {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted while listing
			}
			return err
		}
		return fn(storage.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
	})
	if err != nil {
		return fmt.Errorf("list %s in %s: %w", prefix, b.root, err)
	}
	return nil
}

func (b *Backend) Delete(ctx context.Context, key string) error {
	p, err := b.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}
