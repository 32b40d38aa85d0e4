// Package storagetest is the conformance suite every storage.Backend runs.
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"

	"lifeboat/repo/storage"
)

// Run exercises a fresh, empty backend made by newBackend.
func Run(t *testing.T, newBackend func(t *testing.T) storage.Backend) {
	ctx := context.Background()
	t.Run("PutGetStat", func(t *testing.T) {
		b := newBackend(t)
		for _, c := range []struct {
			key  string
			data []byte
		}{
			{"config", []byte("{}")},
			{"chunks/ab/abcdef", bytes.Repeat([]byte{7}, 1<<20)},
			{"points/p1.json", nil},
		} {
			if err := b.Put(ctx, c.key, c.data); err != nil {
				t.Fatalf("put %s: %v", c.key, err)
			}
			got, err := b.Get(ctx, c.key)
			if err != nil || !bytes.Equal(got, c.data) {
				t.Fatalf("get %s: %d bytes, err %v", c.key, len(got), err)
			}
			info, err := b.Stat(ctx, c.key)
			if err != nil || info.Size != int64(len(c.data)) || info.Key != c.key {
				t.Fatalf("stat %s: %+v %v", c.key, info, err)
			}
		}
	})
	t.Run("StageFlush", func(t *testing.T) {
		b := newBackend(t)
		for i := range 300 { // past any batch threshold
			if err := b.Stage(ctx, fmt.Sprintf("chunks/%02x/s%d", i%7, i), []byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		n := 0
		b.List(ctx, "chunks/", func(storage.ObjectInfo) error { n++; return nil })
		if n != 300 {
			t.Fatalf("%d objects visible after Flush, want 300", n)
		}
		if got, err := b.Get(ctx, "chunks/05/s299"); err != nil || len(got) != 1 || got[0] != byte(299%256) {
			t.Fatalf("staged object: %v %v", got, err)
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatalf("empty flush: %v", err)
		}
	})
	t.Run("NotFound", func(t *testing.T) {
		b := newBackend(t)
		if _, err := b.Get(ctx, "points/none"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("get missing: %v", err)
		}
		if _, err := b.Stat(ctx, "points/none"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("stat missing: %v", err)
		}
		if err := b.Delete(ctx, "points/none"); err != nil {
			t.Fatalf("delete missing: %v", err)
		}
	})
	t.Run("WriteOnce", func(t *testing.T) {
		b := newBackend(t)
		if err := b.Put(ctx, "k/a", []byte("first")); err != nil {
			t.Fatal(err)
		}
		if err := b.Put(ctx, "k/a", []byte("second")); err != nil {
			t.Fatalf("second put: %v", err)
		}
		if got, _ := b.Get(ctx, "k/a"); string(got) != "first" {
			t.Fatalf("object was replaced: %q", got)
		}
	})
	t.Run("BadKeys", func(t *testing.T) {
		b := newBackend(t)
		for _, k := range []string{"", "/abs", "a/../b", "a//b", "dir/", "sp ace", ".."} {
			if err := b.Put(ctx, k, nil); err == nil {
				t.Errorf("put %q accepted", k)
			}
		}
	})
	t.Run("ListDelete", func(t *testing.T) {
		b := newBackend(t)
		keys := []string{"chunks/00/001", "chunks/00/002", "chunks/ff/ff1", "points/a.json", "pointsx"}
		for _, k := range keys {
			if err := b.Put(ctx, k, []byte(k)); err != nil {
				t.Fatal(err)
			}
		}
		list := func(prefix string) []string {
			var got []string
			if err := b.List(ctx, prefix, func(o storage.ObjectInfo) error {
				got = append(got, o.Key)
				return nil
			}); err != nil {
				t.Fatalf("list %q: %v", prefix, err)
			}
			sort.Strings(got)
			return got
		}
		for _, c := range []struct {
			prefix string
			want   string
		}{
			{"chunks/", "[chunks/00/001 chunks/00/002 chunks/ff/ff1]"},
			{"chunks/00/", "[chunks/00/001 chunks/00/002]"},
			{"points/", "[points/a.json]"},
			{"points", "[points/a.json pointsx]"},
			{"nothing/", "[]"},
		} {
			if got := fmt.Sprint(list(c.prefix)); got != c.want {
				t.Errorf("list %q = %s, want %s", c.prefix, got, c.want)
			}
		}
		if err := b.Delete(ctx, "chunks/00/001"); err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(list("chunks/00/")); got != "[chunks/00/002]" {
			t.Errorf("after delete: %s", got)
		}
		stop := errors.New("stop")
		if err := b.List(ctx, "", func(storage.ObjectInfo) error { return stop }); !errors.Is(err, stop) {
			t.Errorf("list did not return the callback's error: %v", err)
		}
	})
	t.Run("ConcurrentPut", func(t *testing.T) {
		b := newBackend(t)
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- b.Put(ctx, "chunks/aa/same", []byte("same content"))
				errs <- b.Put(ctx, fmt.Sprintf("chunks/aa/k%d", i), []byte{byte(i)})
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got, _ := b.Get(ctx, "chunks/aa/same"); string(got) != "same content" {
			t.Fatalf("got %q", got)
		}
	})
}
