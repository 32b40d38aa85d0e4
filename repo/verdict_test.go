package repo

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestVerdicts: verdicts round-trip, sort oldest first, are sealed (no
// plaintext on disk when encrypted, a checksum when not), cannot be moved
// to another key, and bad point IDs are refused.
func TestVerdicts(t *testing.T) {
	ctx := context.Background()
	const pt = "20261125T150000Z-0123abcd"
	secret := []byte(`{"verdict":"did-not-boot","serial_log":"Kernel panic - secret guest output"}`)
	for _, tc := range []struct {
		name string
		opts InitOptions
	}{
		{"plain", InitOptions{Hash: HashBLAKE3}},
		{"encrypted", InitOptions{Hash: HashBLAKE3, Password: "pw"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, dir := newRepo(t, tc.opts)
			t0 := time.Date(2026, 11, 25, 15, 0, 0, 0, time.UTC)
			k2, err := r.SaveVerdict(ctx, pt, t0.Add(time.Minute), []byte(`{"n":2}`))
			if err != nil {
				t.Fatal(err)
			}
			k1, err := r.SaveVerdict(ctx, pt, t0, secret)
			if err != nil {
				t.Fatal(err)
			}
			keys, err := r.VerdictKeys(ctx, pt)
			if err != nil || len(keys) != 2 || keys[0] != k1 || keys[1] != k2 {
				t.Fatalf("keys %v %v, want [%s %s]", keys, err, k1, k2)
			}
			got, err := r.LoadVerdict(ctx, k1)
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("load: %q %v", got, err)
			}
			raw, err := os.ReadFile(filepath.Join(dir, k1))
			if err != nil {
				t.Fatal(err)
			}
			if tc.opts.Password != "" && bytes.Contains(raw, []byte("secret guest output")) {
				t.Error("an encrypted repository stores the serial log in plaintext")
			}
			// Moved to another key (or corrupted), it no longer opens.
			other := verdictPrefix(pt) + "20261125T000000Z-11111111"
			if err := r.Backend().Put(ctx, other, raw); err != nil {
				t.Fatal(err)
			}
			if tc.opts.Password != "" {
				if _, err := r.LoadVerdict(ctx, other); !errors.Is(err, ErrCorrupt) {
					t.Errorf("a verdict moved to another key opened: %v", err)
				}
			}
			raw[len(raw)-1] ^= 1
			bad := verdictPrefix(pt) + "20261125T000000Z-00000000"
			r.Backend().Put(ctx, bad, raw)
			if _, err := r.LoadVerdict(ctx, bad); !errors.Is(err, ErrCorrupt) {
				t.Errorf("a corrupted verdict opened: %v", err)
			}
		})
	}
	r, _ := newRepo(t, InitOptions{})
	if _, err := r.SaveVerdict(ctx, "../x", time.Now(), []byte("{}")); err == nil {
		t.Error("a bad point ID was accepted")
	}
	if _, err := r.LoadVerdict(ctx, "points/"+pt); err == nil {
		t.Error("LoadVerdict read a manifest key")
	}
}
