package repo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"lifeboat/disk"
	"lifeboat/disk/raw"
	"lifeboat/repo/storage"
	"lifeboat/repo/storage/local"
)

const mib = 1 << 20

func newRepo(t *testing.T, opts InitOptions) (*Repository, string) {
	t.Helper()
	dir := t.TempDir()
	b, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if opts.ChunkSize == 0 {
		opts.ChunkSize = 1 * mib
	}
	if opts.Password != "" {
		opts.ScryptN = 1 << 10
	}
	r, err := Init(context.Background(), b, opts)
	if err != nil {
		t.Fatal(err)
	}
	return r, dir
}

// rawImage writes a sparse raw file with the given regions filled by seeds.
func rawImage(t *testing.T, size int64, regions map[int64][]byte) (disk.Image, []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	ref := make([]byte, size)
	// Later offsets win where regions overlap, whatever the map order.
	for _, off := range slices.Sorted(maps.Keys(regions)) {
		data := regions[off]
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
		copy(ref[off:], data)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	img, err := raw.Open(context.Background(), p, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img, ref
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func savePoint(t *testing.T, r *Repository, name string, id ID, size int64, at time.Time) *Point {
	t.Helper()
	p := &Point{Version: 1, ID: NewPointID(at), Name: name, Kind: "image", Time: at, Consistency: "file",
		Files: []File{{Path: "disk.raw", Role: RoleDisk, Size: size, Index: id.String(), Disk: &disk.Info{Format: disk.Raw, Size: size}}}}
	if err := r.SavePoint(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWriteAndRead(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name string
		opts InitOptions
	}{
		{"blake3", InitOptions{Hash: HashBLAKE3}},
		{"sha256", InitOptions{Hash: HashSHA256}},
		{"blake3-encrypted", InitOptions{Hash: HashBLAKE3, Password: "pw"}},
		{"sha256-encrypted", InitOptions{Hash: HashSHA256, Password: "pw"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, dir := newRepo(t, c.opts)
			text := bytes.Repeat([]byte("lifeboat keeps VMs afloat. "), 80000)
			img, ref := rawImage(t, 9*mib+512, map[int64][]byte{
				0:         randBytes(1, mib+100),
				3 * mib:   text[:2*mib],
				7 * mib:   make([]byte, mib), // zeros written: a hole in the index
				9 * mib:   randBytes(2, 512),
				5*mib + 7: []byte("x"),
			})
			id, x, st, err := r.WriteImage(ctx, img, WriteOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if st.NewChunks == 0 || st.Holes < 3 {
				t.Errorf("stats %+v: want new chunks and at least 3 holes", st)
			}
			if len(x.Slots) != 10 {
				t.Fatalf("%d slots, want 10", len(x.Slots))
			}
			p := savePoint(t, r, "img", id, img.Size(), time.Now())
			// Reopen from storage, as another process would.
			b, _ := local.Open(dir)
			r2, err := Open(ctx, b, c.opts.Password)
			if err != nil {
				t.Fatal(err)
			}
			fi, err := r2.OpenFile(ctx, p, "disk.raw")
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, fi.Size())
			if _, err := fi.ReadAt(got, 0); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if !bytes.Equal(got, ref) {
				t.Fatal("content differs")
			}
			// Compression: the text chunks are stored much smaller.
			if c.opts.Password == "" {
				var stored int64
				b.List(ctx, "chunks/", func(o storage.ObjectInfo) error { stored += o.Size; return nil })
				if stored > 3*mib {
					t.Errorf("stored %d bytes for ~2 MiB random + 2 MiB text", stored)
				}
			}
			// Encrypted objects do not show plaintext.
			if c.opts.Password != "" {
				b.List(ctx, "", func(o storage.ObjectInfo) error {
					data, _ := b.Get(ctx, o.Key)
					if bytes.Contains(data, []byte("lifeboat keeps")) || bytes.Contains(data, []byte(`"disk.raw"`)) {
						t.Errorf("%s holds plaintext", o.Key)
					}
					return nil
				})
			}
		})
	}
}

func TestPasswords(t *testing.T) {
	ctx := context.Background()
	_, dir := newRepo(t, InitOptions{Password: "right"})
	b, _ := local.Open(dir)
	if _, err := Open(ctx, b, "wrong"); !errors.Is(err, ErrPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := Open(ctx, b, ""); !errors.Is(err, ErrNeedPassword) {
		t.Fatalf("no password: %v", err)
	}
	if _, err := Open(ctx, b, "right"); err != nil {
		t.Fatal(err)
	}
	if _, err := Init(ctx, b, InitOptions{}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second init: %v", err)
	}
	empty, _ := local.Open(t.TempDir())
	if _, err := Open(ctx, empty, ""); err == nil || !strings.Contains(err.Error(), "not a Lifeboat repository") {
		t.Fatalf("open empty: %v", err)
	}
}

// An incremental with a known change map reads only the changed slots and
// still yields the full new content.
func TestIncrementalChangeMap(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t, InitOptions{})
	base := randBytes(3, 8*mib)
	img, _ := rawImage(t, 8*mib, map[int64][]byte{0: base})
	_, x1, _, err := r.WriteImage(ctx, img, WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	patch := randBytes(4, 4096)
	img2, ref2 := rawImage(t, 8*mib, map[int64][]byte{0: base, 5*mib + 100: patch})
	changed := []disk.Extent{{Offset: 5*mib + 100, Length: 4096, Kind: disk.Data}}
	id2, _, st, err := r.WriteImage(ctx, img2, WriteOptions{Previous: x1, Changed: changed, ChangedKnown: true})
	if err != nil {
		t.Fatal(err)
	}
	// Only the changed 4 KiB are read from the source; the rest of their
	// chunk comes from the previous point's chunk.
	if st.BytesRead != 4096 || st.BytesReused != 7*mib || st.NewChunks != 1 {
		t.Fatalf("stats %+v: want 4 KiB read, 7 MiB reused, 1 new chunk", st)
	}
	p := savePoint(t, r, "img", id2, 8*mib, time.Now())
	fi, err := r.OpenFile(ctx, p, "disk.raw")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8*mib)
	fi.ReadAt(got, 0)
	if !bytes.Equal(got, ref2) {
		t.Fatal("incremental content differs")
	}
	// Without a change map, everything is read but nothing new is stored
	// except the changed chunk.
	_, _, st, err = r.WriteImage(ctx, img2, WriteOptions{Previous: x1})
	if err != nil {
		t.Fatal(err)
	}
	if st.BytesRead != 8*mib || st.NewChunks != 0 {
		t.Fatalf("full re-read stats %+v: want 8 MiB read, 0 new chunks", st)
	}
}

// Flipping a byte in a stored chunk makes verify fail and name exactly the
// points that use it, and reads of those points fail loudly.
func TestVerifyNamesAffectedPoints(t *testing.T) {
	ctx := context.Background()
	r, dir := newRepo(t, InitOptions{})
	shared := randBytes(5, mib)
	imgA, _ := rawImage(t, 2*mib, map[int64][]byte{0: shared, mib: randBytes(6, mib)})
	imgB, _ := rawImage(t, 2*mib, map[int64][]byte{0: shared, mib: randBytes(7, mib)})
	imgC, _ := rawImage(t, mib, map[int64][]byte{0: randBytes(8, mib)})
	var pts []*Point
	for i, img := range []disk.Image{imgA, imgB, imgC} {
		id, _, _, err := r.WriteImage(ctx, img, WriteOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pts = append(pts, savePoint(t, r, "p", id, img.Size(), time.Now().Add(time.Duration(i)*time.Second)))
	}
	rep, err := r.Verify(ctx, nil)
	if err != nil || !rep.OK || rep.Chunks != 4 {
		t.Fatalf("clean verify: %+v %v", rep, err)
	}
	sharedKey := flipChunkByte(t, r, dir, shared)
	rep, err = r.Verify(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{pts[0].ID, pts[1].ID}
	if rep.OK || len(rep.Problems) != 1 || strings.Join(rep.Affected, ",") != strings.Join(want, ",") {
		t.Fatalf("verify after corruption: %+v, want affected %v", rep, want)
	}
	fi, err := r.OpenFile(ctx, pts[0], "disk.raw")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fi.ReadAt(make([]byte, mib), 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of corrupt chunk: %v, want ErrCorrupt", err)
	}
	// A missing chunk is named too.
	os.Remove(sharedKey)
	rep, _ = r.Verify(ctx, nil)
	if rep.OK || !strings.Contains(rep.Problems[0].Error, "missing") {
		t.Fatalf("verify after removal: %+v", rep)
	}
}

// flipChunkByte corrupts the stored object of the chunk holding plain and
// returns its path.
func flipChunkByte(t *testing.T, r *Repository, dir string, plain []byte) string {
	t.Helper()
	key := filepath.Join(dir, filepath.FromSlash(chunkKey(r.codec.sum(plain))))
	data, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	os.Chmod(key, 0o600)
	if err := os.WriteFile(key, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return key
}

func TestPrunePlan(t *testing.T) {
	base := time.Date(2026, 11, 1, 12, 0, 0, 0, time.Local)
	var pts []*Point
	// Two points a day for 10 days.
	for d := range 10 {
		for h := range 2 {
			at := base.AddDate(0, 0, d).Add(time.Duration(h) * 6 * time.Hour)
			pts = append(pts, &Point{ID: NewPointID(at), Name: "vm", Kind: "vm", Time: at})
		}
	}
	pts = append(pts, &Point{ID: NewPointID(base), Name: "other", Kind: "vm", Time: base})
	for _, c := range []struct {
		name string
		p    Policy
		keep int
	}{
		{"last3", Policy{Last: 3}, 3 + 1},
		{"daily4", Policy{Daily: 4}, 4 + 1},
		{"last1+daily3", Policy{Last: 1, Daily: 3}, 3 + 1},
		{"weekly2", Policy{Weekly: 2}, 2 + 1},
		{"monthly5", Policy{Monthly: 5}, 1 + 1},
		{"hourly100", Policy{Hourly: 100}, 20 + 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := c.p.Plan(pts)
			if len(res.Keep) != c.keep || len(res.Keep)+len(res.Remove) != len(pts) {
				t.Fatalf("keep %d remove %d, want keep %d", len(res.Keep), len(res.Remove), c.keep)
			}
			// The newest point of every name is always kept.
			newest := pts[len(pts)-2].ID
			found := false
			for _, k := range res.Keep {
				found = found || k == newest
			}
			if !found {
				t.Fatal("newest point pruned")
			}
		})
	}
}

func TestPruneAndGC(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t, InitOptions{})
	var pts []*Point
	for i := range 3 {
		img, _ := rawImage(t, mib, map[int64][]byte{0: randBytes(uint64(10+i), mib)})
		id, _, _, err := r.WriteImage(ctx, img, WriteOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pts = append(pts, savePoint(t, r, "vm", id, mib, time.Now().Add(time.Duration(i)*time.Hour)))
	}
	res, err := r.Prune(ctx, Policy{Last: 1}, false)
	if err != nil || len(res.Remove) != 2 {
		t.Fatalf("prune: %+v %v", res, err)
	}
	g, err := r.GC(ctx, time.Hour)
	if err != nil || g.DeletedChunks != 0 || g.Young != 4 {
		t.Fatalf("gc inside grace: %+v %v (want 2 chunks + 2 indexes kept young)", g, err)
	}
	g, err = r.GC(ctx, 0)
	if err != nil || g.DeletedChunks != 2 || g.DeletedIndexes != 2 || g.LiveChunks != 1 {
		t.Fatalf("gc: %+v %v", g, err)
	}
	rep, err := r.Verify(ctx, nil)
	if err != nil || !rep.OK || rep.Points != 1 {
		t.Fatalf("verify after gc: %+v %v", rep, err)
	}
	if _, err := r.Prune(ctx, Policy{}, false); err == nil {
		t.Fatal("empty policy accepted")
	}
}

func TestLocks(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t, InitOptions{})
	s1, err := r.Lock(ctx, false, "backup a")
	if err != nil {
		t.Fatal(err)
	}
	s2, err := r.Lock(ctx, false, "backup b")
	if err != nil {
		t.Fatalf("second shared lock: %v", err)
	}
	if _, err := r.GC(ctx, 0); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "backup a") {
		t.Fatalf("gc during backups: %v", err)
	}
	s1.Unlock(ctx)
	s2.Unlock(ctx)
	x, err := r.Lock(ctx, true, "gc")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Lock(ctx, false, "backup c"); !errors.Is(err, ErrLocked) {
		t.Fatalf("backup during gc: %v", err)
	}
	x.Unlock(ctx)
}

func TestCleanPath(t *testing.T) {
	for _, c := range []struct {
		in string
		ok bool
	}{
		{"disk.vhdx", true},
		{"Virtual Machines/a.xml", true},
		{"../etc/passwd", false},
		{"a/../../b", false},
		{"/abs", false},
		{"a\\b", false},
		{"", false},
		{".", false},
		{"a//b", false},
	} {
		if _, err := CleanPath(c.in); (err == nil) != c.ok {
			t.Errorf("CleanPath(%q) err=%v, want ok=%v", c.in, err, c.ok)
		}
	}
}

func TestIndexRoundTrip(t *testing.T) {
	x := &Index{Size: 3*mib + 5, ChunkSize: mib,
		Extents: []disk.Extent{{Offset: 0, Length: mib, Kind: disk.Data}, {Offset: mib, Length: 2 * mib, Kind: disk.Unallocated}, {Offset: 3 * mib, Length: 5, Kind: disk.Zero}},
		Slots:   []Slot{{ID: ID{1}}, {Hole: true}, {Hole: true}, {ID: ID{2}}}}
	b, _ := x.MarshalBinary()
	y, err := UnmarshalIndex(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := y.MarshalBinary()
	if !bytes.Equal(b, b2) {
		t.Fatal("round trip differs")
	}
	for cut := range len(b) {
		if _, err := UnmarshalIndex(b[:cut]); err == nil {
			t.Fatalf("truncated index (%d bytes) accepted", cut)
		}
	}
}
