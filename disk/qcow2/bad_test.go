package qcow2

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/disk"
	"lifeboat/internal/testenv"
)

// goodImage writes a small valid image with our writer and returns its
// bytes and guest content.
func goodImage(t *testing.T, opts disk.CreateOptions) ([]byte, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "good.qcow2")
	if opts.Size == 0 {
		opts.Size = mib
	}
	w, err := Create(context.Background(), path, opts)
	if err != nil {
		t.Fatal(err)
	}
	ref := make([]byte, opts.Size)
	for _, x := range []struct {
		off int64
		n   int
		b   byte
	}{{0, 64 * kib, 0xab}, {512 * kib, 4 * kib, 0xcd}} {
		p := bytes.Repeat([]byte{x.b}, x.n)
		if _, err := w.WriteAt(p, x.off); err != nil {
			t.Fatal(err)
		}
		copy(ref[x.off:], p)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b, ref
}

func TestBadInput(t *testing.T) {
	be := binary.BigEndian
	l1Off := func(b []byte) int64 { return int64(be.Uint64(b[40:])) }
	l2Off := func(b []byte) int64 { return int64(be.Uint64(b[l1Off(b):]) & offsetMask) }
	cases := []struct {
		name   string
		mutate func(b []byte) []byte
		// wantOpen is a substring of the Open error, wantRead of the
		// first failing Extents or ReadAt; both empty means success.
		wantOpen, wantRead string
		wantOffset         func(b []byte) int64 // FormatError offset, when set
	}{
		{"bad-magic", func(b []byte) []byte { b[0] = 'X'; return b }, "bad magic", "", func([]byte) int64 { return 0 }},
		{"version-4", func(b []byte) []byte { be.PutUint32(b[4:], 4); return b }, "unsupported qcow2 version 4", "", func([]byte) int64 { return 4 }},
		{"empty", func(b []byte) []byte { return b[:0] }, "too short", "", nil},
		{"truncated-header", func(b []byte) []byte { return b[:50] }, "too short", "", nil},
		{"truncated-v3-header", func(b []byte) []byte { return b[:90] }, "too short for a qcow2 v3 header", "", nil},
		{"cluster-bits", func(b []byte) []byte { be.PutUint32(b[20:], 30); return b }, "cluster_bits 30", "", func([]byte) int64 { return 20 }},
		{"l1-past-eof", func(b []byte) []byte { be.PutUint64(b[40:], 1<<40); return b }, "L1 table at offset 1099511627776", "", func([]byte) int64 { return 40 }},
		{"l1-unaligned", func(b []byte) []byte { be.PutUint64(b[40:], uint64(l1Off(b))+8); return b }, "L1 table offset", "", nil},
		{"l1-too-small", func(b []byte) []byte { be.PutUint32(b[36:], 0); return b }, "L1 table has 0 entries", "", nil},
		{"size-too-large", func(b []byte) []byte { be.PutUint64(b[24:], 1<<62); return b }, "virtual size", "", nil},
		{"truncated-before-l1", func(b []byte) []byte { return b[:l1Off(b)] }, "L1 table at offset", "", nil},
		{"l2-past-eof", func(b []byte) []byte { be.PutUint64(b[l1Off(b):], 1<<40|flagCopied); return b }, "", "L2 table at offset 1099511627776 (L1 entry 0) is past the end", l1Off},
		{"l2-unaligned", func(b []byte) []byte { be.PutUint64(b[l1Off(b):], uint64(l2Off(b)+512)); return b }, "", "L2 table offset", l1Off},
		{"truncated-in-l2", func(b []byte) []byte {
			// Move the L1 table's first entry to a table cut off by EOF.
			be.PutUint64(b[l1Off(b):], uint64(len(b)))
			return append(b, make([]byte, 4096)...)
		}, "", "past the end of the file", nil},
		{"data-past-eof", func(b []byte) []byte { be.PutUint64(b[l2Off(b):], 1<<40|flagCopied); return b }, "", "past the end of the file", l2Off},
		{"data-unaligned", func(b []byte) []byte { be.PutUint64(b[l2Off(b):], 65536+512); return b }, "", "not cluster aligned", l2Off},
		{"zero-flag-in-v2", func(b []byte) []byte {
			be.PutUint32(b[4:], 2)
			be.PutUint64(b[l2Off(b):], flagZero)
			return b
		}, "", "zero cluster flag", l2Off},
		{"compressed-past-eof", func(b []byte) []byte { be.PutUint64(b[l2Off(b):], flagCompressed|1<<40); return b }, "", "compressed cluster", l2Off},
		{"unknown-incompatible", func(b []byte) []byte { b[79] |= 1 << 5; return b }, "unsupported incompatible features: bit 5", "", func([]byte) int64 { return 72 }},
		{"external-data-file", func(b []byte) []byte { b[79] |= incDataFile; return b }, "external data file", "", nil},
		{"encrypted-aes", func(b []byte) []byte { be.PutUint32(b[32:], 1); return b }, "encrypted image (crypt_method 1, AES)", "", func([]byte) int64 { return 32 }},
		{"encrypted-luks", func(b []byte) []byte { be.PutUint32(b[32:], 2); return b }, "crypt_method 2, LUKS", "", nil},
		{"unknown-compression", func(b []byte) []byte { b[79] |= incCompression; b[104] = 7; return b }, "unknown compression_type 7", "", nil},
		{"compression-without-bit", func(b []byte) []byte { b[104] = 1; return b }, "without the compression type feature bit", "", nil},
		{"header-length", func(b []byte) []byte { be.PutUint32(b[100:], 99); return b }, "header_length 99", "", nil},
		{"backing-name-too-long", func(b []byte) []byte { be.PutUint64(b[8:], 200); be.PutUint32(b[16:], 5000); return b }, "backing file name length", "", nil},
		{"extension-overrun", func(b []byte) []byte { be.PutUint32(b[112:], 0x1234); be.PutUint32(b[116:], 1<<30); return b }, "runs past the header cluster", "", nil},
		{"extended-l2-small-cluster", func(b []byte) []byte { b[79] |= incExtendedL2; be.PutUint32(b[20:], 12); return b }, "extended L2", "", nil},
		// qemu sets the dirty bit while lazy refcounts are out of date;
		// the mapping is still right, so reading works.
		{"dirty", func(b []byte) []byte { b[79] |= incDirty; return b }, "", "", nil},
		{"corrupt-bit", func(b []byte) []byte { b[79] |= incCorrupt; return b }, "", "", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			good, ref := goodImage(t, disk.CreateOptions{})
			orig := bytes.Clone(good)
			b := c.mutate(good)
			path := filepath.Join(t.TempDir(), "bad.qcow2")
			writeFile(t, path, b)
			img, err := Open(context.Background(), path, nil)
			checkErr := func(err error, want string) {
				t.Helper()
				if err == nil {
					t.Fatalf("no error, want %q", want)
				}
				if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
					t.Fatalf("error %q, want it to name %s and contain %q", err, path, want)
				}
				var fe *disk.FormatError
				if !errors.As(err, &fe) {
					t.Fatalf("error %v is not a *disk.FormatError", err)
				}
				if c.wantOffset != nil && fe.Offset != c.wantOffset(orig) {
					t.Fatalf("error offset %d, want %d", fe.Offset, c.wantOffset(orig))
				}
			}
			if c.wantOpen != "" {
				if err == nil {
					img.Close()
				}
				checkErr(err, c.wantOpen)
				return
			}
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer img.Close()
			_, err = img.Extents(context.Background(), 0, img.Size())
			if err == nil {
				got := make([]byte, img.Size())
				_, err = img.ReadAt(got, 0)
				if err == nil && c.wantRead == "" && !bytes.Equal(got, ref) {
					t.Fatal("content differs")
				}
			}
			if c.wantRead == "" {
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				return
			}
			checkErr(err, c.wantRead)
		})
	}
}

// Damaged compressed data fails the read with the cluster's offset.
func TestBadCompressedData(t *testing.T) {
	testenv.Tool(t, "qemu-img")
	for _, ct := range []string{"zlib", "zstd"} {
		t.Run(ct, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "c.qcow2")
			testenv.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type="+ct, path, "1M")
			qemuIO(t, path, "qcow2", "write -c -P 0x33 0 64k")
			img, err := Open(context.Background(), path, nil)
			if err != nil {
				t.Fatal(err)
			}
			var host int64
			img.walk(context.Background(), 0, 512, func(s seg) error {
				if s.kind != segCompressed {
					t.Fatalf("cluster 0 is not compressed: %+v", s)
				}
				host = s.host
				return nil
			})
			img.Close()
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for i := host; i < host+16; i++ {
				b[i] ^= 0x5a
			}
			writeFile(t, path, b)
			img, err = Open(context.Background(), path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			_, err = img.ReadAt(make([]byte, 512), 0)
			var fe *disk.FormatError
			if !errors.As(err, &fe) || fe.Offset != host || !strings.Contains(err.Error(), "decompress") {
				t.Fatalf("err %v, want decompress error at %d", err, host)
			}
		})
	}
}

// Backing file problems: missing, of the wrong format, or a loop.
func TestBackingErrors(t *testing.T) {
	cases := []struct {
		name    string
		setup   func(t *testing.T, dir string) // makes over.qcow2
		opener  disk.ParentOpener
		wantIs  error
		wantMsg string
	}{
		{"missing", func(t *testing.T, dir string) {
			writeOverlay(t, dir, "over.qcow2", "base.qcow2", disk.QCOW2)
		}, opener(), disk.ErrParentNotFound, "base.qcow2"},
		{"nil-opener", func(t *testing.T, dir string) {
			writeOverlay(t, dir, "over.qcow2", "base.qcow2", disk.QCOW2)
		}, nil, disk.ErrParentNotFound, "base.qcow2"},
		{"format-mismatch", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "base.qcow2"), make([]byte, mib))
			writeOverlay(t, dir, "over.qcow2", "base.qcow2", disk.QCOW2)
		}, opener(), disk.ErrParentMismatch, "recorded as qcow2 but opened as raw"},
		{"self-loop", func(t *testing.T, dir string) {
			writeOverlay(t, dir, "over.qcow2", "over.qcow2", disk.QCOW2)
		}, opener(), nil, "loops"},
		{"two-loop", func(t *testing.T, dir string) {
			writeOverlay(t, dir, "over.qcow2", "b.qcow2", disk.QCOW2)
			writeOverlay(t, dir, "b.qcow2", "over.qcow2", disk.QCOW2)
		}, opener(), nil, "loops"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.setup(t, dir)
			path := filepath.Join(dir, "over.qcow2")
			img, err := Open(context.Background(), path, c.opener)
			if err == nil {
				img.Close()
				t.Fatal("open succeeded")
			}
			if c.wantIs != nil && !errors.Is(err, c.wantIs) {
				t.Fatalf("err %v, want %v", err, c.wantIs)
			}
			if !strings.Contains(err.Error(), c.wantMsg) || !strings.Contains(err.Error(), path) {
				t.Fatalf("err %q, want it to name %s and contain %q", err, path, c.wantMsg)
			}
		})
	}
}

// writeOverlay writes an empty overlay naming backing.
func writeOverlay(t *testing.T, dir, name, backing string, f disk.Format) {
	t.Helper()
	w, err := Create(context.Background(), filepath.Join(dir, name), disk.CreateOptions{Size: mib, ParentPath: backing, ParentFormat: f})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestProbe(t *testing.T) {
	good, _ := goodImage(t, disk.CreateOptions{})
	cases := []struct {
		name string
		head []byte
		want bool
	}{
		{"ours", good[:4096], true},
		{"v2", append([]byte("QFI\xfb\x00\x00\x00\x02"), make([]byte, 100)...), true},
		{"v4", []byte("QFI\xfb\x00\x00\x00\x04"), false},
		{"short", []byte("QFI"), false},
		{"zeros", make([]byte, 512), false},
		{"vhdx", []byte("vhdxfile"), false},
	}
	for _, c := range cases {
		if got := Probe(c.head); got != c.want {
			t.Errorf("%s: Probe = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestCreateOptions(t *testing.T) {
	cases := []struct {
		name string
		opts disk.CreateOptions
		ok   bool
	}{
		{"default", disk.CreateOptions{Size: mib}, true},
		{"4k", disk.CreateOptions{Size: mib, ClusterSize: 4096}, true},
		{"2m", disk.CreateOptions{Size: mib, ClusterSize: 2 * mib}, true},
		{"2k-cluster", disk.CreateOptions{Size: mib, ClusterSize: 2048}, false},
		{"4m-cluster", disk.CreateOptions{Size: mib, ClusterSize: 4 * mib}, false},
		{"odd-cluster", disk.CreateOptions{Size: mib, ClusterSize: 96 * kib}, false},
		{"odd-size", disk.CreateOptions{Size: mib + 1}, false},
		{"negative", disk.CreateOptions{Size: -512}, false},
		{"huge-for-4k", disk.CreateOptions{Size: 1 << 50, ClusterSize: 4096}, false},
		{"huge-64k", disk.CreateOptions{Size: 1 << 50}, true},
		{"long-backing", disk.CreateOptions{Size: mib, ParentPath: strings.Repeat("x", 1024)}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.qcow2")
			w, err := Create(context.Background(), path, c.opts)
			if (err == nil) != c.ok {
				t.Fatalf("err %v, want ok=%v", err, c.ok)
			}
			if err != nil {
				return
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			img, err := Open(context.Background(), path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			want := c.opts.ClusterSize
			if want == 0 {
				want = defaultClusterSize
			}
			if img.Size() != c.opts.Size || img.Info().ClusterSize != want {
				t.Fatalf("size %d cluster %d", img.Size(), img.Info().ClusterSize)
			}
		})
	}
}
