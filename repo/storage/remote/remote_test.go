package remote_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/backup"
	"lifeboat/repo"
	"lifeboat/repo/storage"
	"lifeboat/repo/storage/local"
	"lifeboat/repo/storage/remote"
	"lifeboat/repo/storage/storagetest"
	"lifeboat/restore"
)

const prefix = "/api/v1/agent/repo"

// serve runs the handler over a local folder behind real TLS.
func serve(t *testing.T, dir string, pol remote.Policy) (*remote.Backend, *httptest.Server) {
	t.Helper()
	lb, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	h := remote.NewHandler(remote.HandlerOptions{
		Prefix: prefix, Backend: lb, Policy: pol,
		Stager: func() (storage.Backend, error) { return local.Open(dir) },
	})
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	return remote.New(remote.Options{Base: srv.URL + prefix, HTTP: srv.Client(), BatchObjects: 64}), srv
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		b, _ := serve(t, t.TempDir(), remote.Policy{})
		return b
	})
}

func TestAgentPolicy(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, srv := serve(t, dir, remote.AgentPolicy())
	if err := b.Put(ctx, "config", []byte("{}")); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("put config: %v", err)
	}
	if err := b.Put(ctx, "points/x", []byte("m")); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "points/x"); err == nil {
		t.Fatal("delete of a manifest allowed")
	}
	if err := b.Put(ctx, "locks/l1", []byte("l")); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "locks/l1"); err != nil {
		t.Fatal(err)
	}
	if err := b.List(ctx, "chunks/", func(storage.ObjectInfo) error { return nil }); err == nil {
		t.Fatal("listing chunks allowed")
	}
	// Traversal and junk never reach the folder.
	for _, p := range []string{"/objects/..%2f..%2fetc%2fpasswd", "/objects/chunks/../../x", "/objects/a%00b"} {
		req, _ := http.NewRequest(http.MethodPut, srv.URL+prefix+p, strings.NewReader("x"))
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 300 || resp.StatusCode >= 500 {
			t.Errorf("PUT %s: %d", p, resp.StatusCode)
		}
	}
	// A malformed batch is refused and leaves nothing behind.
	resp, err := srv.Client().Post(srv.URL+prefix+"/batch", "application/octet-stream", bytes.NewReader([]byte{0, 200, 'a'}))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("truncated batch: %d", resp.StatusCode)
	}
	if _, err := os.Stat(filepath.Join(dir, "config")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("config written")
	}
}

// A backup through the remote backend stores only what the repository
// lacks: backing the same image up again sends no chunk, and a restore
// through it gives the same bytes.
func TestBackupSendsOnlyMissing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	lb, _ := local.Open(dir)
	if _, err := repo.Init(ctx, lb, repo.InitOptions{ChunkSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "disk.raw")
	data := make([]byte, 3<<20)
	rand.Read(data[:2<<20])
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(full bool) (*repo.Point, *remote.Backend) {
		b, _ := serve(t, dir, remote.AgentPolicy())
		r, err := repo.Open(ctx, b, "")
		if err != nil {
			t.Fatal(err)
		}
		src, err := backup.Scan(ctx, img)
		if err != nil {
			t.Fatal(err)
		}
		pt, err := backup.Run(ctx, r, src, backup.Options{Name: "disk", FullRead: full})
		if err != nil {
			t.Fatal(err)
		}
		return pt, b
	}
	p1, b1 := run(false)
	_, queries, objs, _ := b1.Counters()
	if objs < 32 || queries == 0 {
		t.Fatalf("first backup sent %d objects with %d missing queries", objs, queries)
	}
	p2, b2 := run(true) // full read: every chunk is hashed and asked about
	calls, queries, objs, _ := b2.Counters()
	var st repo.Stats
	for _, f := range p2.Files {
		st.Add(f.Stats)
	}
	if objs != 0 || st.NewChunks != 0 {
		t.Fatalf("second backup sent %d objects (%d new chunks), want 0", objs, st.NewChunks)
	}
	t.Logf("second backup: %d chunk stats answered by %d missing queries", calls, queries)

	b3, _ := serve(t, dir, remote.AgentPolicy())
	r, err := repo.Open(ctx, b3, "")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if _, err := restore.Run(ctx, r, p1, out, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(out, "disk.raw"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("restored image differs (%v)", err)
	}
}
