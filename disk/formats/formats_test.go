package formats

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"lifeboat/disk"
	"lifeboat/internal/testenv"
)

// Detection goes by signature, never by name: a fixed VHD renamed .img is
// a VHD, a qcow2 named .raw is qcow2.
func TestDetect(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, qemuFmt, opts string
		want                disk.Format
	}{
		{"a.img", "vpc", "subformat=fixed,force_size=on", disk.VHD},
		{"b.raw", "qcow2", "", disk.QCOW2},
		{"c.bin", "vhdx", "", disk.VHDX},
		{"d.vhd", "vpc", "subformat=dynamic", disk.VHD},
		{"e.vhdx", "raw", "", disk.Raw},
	}
	for _, c := range cases {
		p := filepath.Join(dir, c.name)
		args := []string{"create", "-q", "-f", c.qemuFmt}
		if c.opts != "" {
			args = append(args, "-o", c.opts)
		}
		testenv.Run(t, "qemu-img", append(args, p, "8M")...)
		got, err := Detect(p)
		if err != nil || got != c.want {
			t.Errorf("Detect(%s) = %q, %v; want %q", c.name, got, err, c.want)
		}
	}
	if _, err := Detect(filepath.Join(dir, "missing")); err == nil {
		t.Error("Detect of a missing file succeeded")
	}
}

// A chain may mix formats; OpenChain names every layer's file.
func TestOpenChainAcrossFormats(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	os.WriteFile(base, make([]byte, 4<<20), 0o644)
	testenv.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", filepath.Join(dir, "top.qcow2"))
	img, chain, err := OpenChain(ctx, filepath.Join(dir, "top.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if len(chain) != 2 || chain[1] != base || img.Parent() == nil || img.Parent().Format() != disk.Raw {
		t.Fatalf("chain %v, parent %v", chain, img.Parent())
	}
	os.Remove(base)
	if _, err := Open(ctx, filepath.Join(dir, "top.qcow2")); !errors.Is(err, disk.ErrParentNotFound) {
		t.Fatalf("missing base: %v", err)
	}
}

func TestRenameAndExt(t *testing.T) {
	for _, c := range []struct {
		name     string
		from, to disk.Format
		diff     bool
		want     string
	}{
		{"a.vhdx", disk.VHDX, disk.VHDX, false, "a.vhdx"},
		{"a.vhdx", disk.VHDX, disk.QCOW2, false, "a.qcow2"},
		{"a_1.avhdx", disk.VHDX, disk.VHD, true, "a_1.avhd"},
		{"a.qcow2", disk.QCOW2, disk.Raw, false, "a.raw"},
	} {
		if got := Rename(c.name, c.from, c.to, c.diff); got != c.want {
			t.Errorf("Rename(%s, %s→%s) = %s, want %s", c.name, c.from, c.to, got, c.want)
		}
	}
}
