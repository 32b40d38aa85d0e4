// Package storage defines the object store a repository lives in. It is
// shaped for object storage (S3 and friends): an object is written once,
// whole, and never renamed, appended to or modified; it can only be read,
// listed and, by garbage collection, deleted. Implementations live in
// sub-packages and all run the storagetest conformance suite.
package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrNotFound is wrapped when an object does not exist.
var ErrNotFound = errors.New("object not found")

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Backend is a flat key space of immutable objects. Keys are
// slash-separated relative paths of [a-zA-Z0-9._-] segments.
type Backend interface {
	// Put stores data under key once. When the key already exists Put
	// leaves it untouched and returns nil: content-addressed writers race
	// harmlessly, and callers that need exclusivity use unique keys. The
	// object is durable when Put returns; readers never see a partial one.
	Put(ctx context.Context, key string, data []byte) error
	// Stage is Put for the many objects of a backup: the object becomes
	// visible and durable no later than the next Flush returns, so a
	// backend can make a whole batch durable at once. Backends without
	// such a saving implement it as Put. Callers Flush before they write
	// anything that names a staged object.
	Stage(ctx context.Context, key string, data []byte) error
	// Flush makes every staged object visible and durable.
	Flush(ctx context.Context) error
	// Get returns the whole object, or an error wrapping ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, error)
	// Stat describes an object, or returns an error wrapping ErrNotFound.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List calls fn for every object whose key starts with prefix, in no
	// particular order. An error from fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Delete removes an object; deleting a missing object is not an error.
	Delete(ctx context.Context, key string) error
	// Location describes the backend for messages ("/srv/repo", "s3://b/p").
	Location() string
}

// CheckKey rejects keys that could escape a folder or are not portable.
func CheckKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") {
		return fmt.Errorf("invalid object key %q", key)
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("invalid object key %q", key)
		}
		for _, c := range seg {
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
			if !ok {
				return fmt.Errorf("invalid object key %q: character %q", key, c)
			}
		}
	}
	return nil
}
