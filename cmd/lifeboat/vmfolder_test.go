package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/internal/testenv"
	"lifeboat/vmconfig"
)

// writeLayer creates a disk with the formats package and fills ranges.
func writeLayer(t *testing.T, path string, f disk.Format, opts disk.CreateOptions, writes map[int64][]byte) {
	t.Helper()
	w, err := formats.Create(context.Background(), path, f, opts)
	if err != nil {
		t.Fatal(err)
	}
	for off, b := range writes {
		if _, err := w.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, path string) []byte {
	t.Helper()
	img, err := formats.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return b
}

func rnd(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// A Hyper-V-layout VM folder: config XML, saved state, a VHDX with a
// two-deep AVHDX snapshot chain, and a VHD with an AVHD. Backed up whole,
// restored with names, formats and chains intact, and flattened with
// --merge-chain without losing snapshot data.
func TestHyperVFolder(t *testing.T) {
	dir := t.TempDir()
	vm := filepath.Join(dir, "vm1")
	guid := "0AA394FA-7C4A-4070-BA32-773D43B28A68"
	os.MkdirAll(filepath.Join(vm, "Virtual Machines", guid), 0o755)
	os.MkdirAll(filepath.Join(vm, "Virtual Hard Disks"), 0o755)
	xml, err := os.ReadFile(testenv.HyperV(t, "vm.XML"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(vm, "Virtual Machines", guid+".xml"), xml, 0o644)
	os.WriteFile(filepath.Join(vm, "Virtual Machines", guid, guid+".vsv"), rnd(1, 20000), 0o644)
	os.WriteFile(filepath.Join(vm, "Virtual Machines", guid, guid+".bin"), append(rnd(2, 1<<20), make([]byte, 3<<20)...), 0o644)

	const size = 32 << 20
	vhd := filepath.Join(vm, "Virtual Hard Disks")
	ids := map[string]string{}
	mk := func(name, parent string, f disk.Format, writes map[int64][]byte) {
		opts := disk.CreateOptions{Size: size}
		if parent != "" {
			p, err := formats.Open(context.Background(), filepath.Join(vhd, parent))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			opts.ParentPath, opts.ParentID, opts.ParentFormat, opts.Parent = parent, p.Info().ID, f, p
		}
		writeLayer(t, filepath.Join(vhd, name), f, opts, writes)
		img, err := formats.Open(context.Background(), filepath.Join(vhd, name))
		if err != nil {
			t.Fatal(err)
		}
		ids[name] = img.Info().ID
		img.Close()
	}
	mk("os.vhdx", "", disk.VHDX, map[int64][]byte{0: rnd(3, 4<<20), 20 << 20: rnd(4, 1<<20)})
	mk("os_A.avhdx", "os.vhdx", disk.VHDX, map[int64][]byte{512: rnd(5, 4096), 20 << 20: make([]byte, 64<<10)})
	mk("os_B.avhdx", "os_A.avhdx", disk.VHDX, map[int64][]byte{8 << 20: rnd(6, 3<<20+512)})
	mk("data.vhd", "", disk.VHD, map[int64][]byte{1 << 20: rnd(7, 2<<20)})
	mk("disk.vhd", "", disk.VHD, map[int64][]byte{0: rnd(9, 1<<20)}) // the disk vm.XML attaches
	mk("data_X.avhd", "data.vhd", disk.VHD, map[int64][]byte{1<<20 + 1024: rnd(8, 1024)})
	want := map[string][]byte{
		"os_B.avhdx":  readAll(t, filepath.Join(vhd, "os_B.avhdx")),
		"data_X.avhd": readAll(t, filepath.Join(vhd, "data_X.avhd")),
	}
	if bytes.Equal(want["os_B.avhdx"], readAll(t, filepath.Join(vhd, "os.vhdx"))) {
		t.Fatal("snapshot layers changed nothing; the test would prove nothing")
	}

	repoDir := filepath.Join(dir, "repo")
	lb(t, repoDir, false, "repo", "init")
	lb(t, repoDir, false, "backup", "--name", "2012R2", vm)
	pts := points(t, repoDir)
	roles := map[string]string{}
	for _, f := range pts[0].Files {
		roles[f.Path] = f.Role
	}
	for path, role := range map[string]string{
		"Virtual Machines/" + guid + ".xml":              "config",
		"Virtual Machines/" + guid + "/" + guid + ".vsv": "saved-state",
		"Virtual Machines/" + guid + "/" + guid + ".bin": "saved-state",
		"Virtual Hard Disks/os.vhdx":                     "disk",
		"Virtual Hard Disks/os_A.avhdx":                  "differencing-disk",
		"Virtual Hard Disks/os_B.avhdx":                  "differencing-disk",
		"Virtual Hard Disks/data.vhd":                    "disk",
		"Virtual Hard Disks/data_X.avhd":                 "differencing-disk",
		"Virtual Hard Disks/disk.vhd":                    "disk",
	} {
		if roles[path] != role {
			t.Errorf("%s has role %q, want %q (all: %v)", path, roles[path], role, roles)
		}
	}

	// The parsed configuration travels with the point.
	var cfg vmconfig.VM
	if err := json.Unmarshal(pts[0].Config, &cfg); err != nil {
		t.Fatalf("point config: %v (%s)", err, pts[0].Config)
	}
	if cfg.Name != "2012R2" || cfg.CPUs != 1 || cfg.MemoryMiB != 1024 || len(cfg.NICs) != 1 ||
		cfg.NICs[0].MAC != "00:15:5d:01:07:dc" || len(cfg.Disks) == 0 || !strings.HasSuffix(cfg.Disks[0].Path, `hyperv\disk.vhd`) {
		t.Errorf("parsed config does not match vm.XML: %+v", cfg)
	}

	// Same names, same formats, chain intact and re-linked by identity.
	out := filepath.Join(dir, "restored")
	lb(t, repoDir, false, "restore", "--point", pts[0].ID, "--to", out)
	for name, b := range want {
		if !bytes.Equal(readAll(t, filepath.Join(out, "Virtual Hard Disks", name)), b) {
			t.Errorf("restored chain %s differs", name)
		}
	}
	for name, id := range ids {
		img, err := formats.Open(context.Background(), filepath.Join(out, "Virtual Hard Disks", name))
		if err != nil {
			t.Fatal(err)
		}
		if img.Info().ID != id {
			t.Errorf("%s restored with identity %s, want %s", name, img.Info().ID, id)
		}
		img.Close()
	}
	for _, f := range []string{"Virtual Machines/" + guid + ".xml", "Virtual Machines/" + guid + "/" + guid + ".bin"} {
		if fileHash(t, filepath.Join(out, f)) != fileHash(t, filepath.Join(vm, f)) {
			t.Errorf("%s differs", f)
		}
	}
	// Flattened: one disk per chain, named after the top layer, no data lost.
	flat := filepath.Join(dir, "flat")
	lb(t, repoDir, false, "restore", "--point", pts[0].ID, "--to", flat, "--merge-chain")
	for name, target := range map[string]string{"os_B.avhdx": "os_B.vhdx", "data_X.avhd": "data_X.vhd"} {
		p := filepath.Join(flat, "Virtual Hard Disks", target)
		if !bytes.Equal(readAll(t, p), want[name]) {
			t.Errorf("merged %s differs from the chain", target)
		}
		img, _ := formats.Open(context.Background(), p)
		if img.Parent() != nil {
			t.Errorf("merged %s still has a parent", target)
		}
		img.Close()
	}
	if _, err := os.Stat(filepath.Join(flat, "Virtual Hard Disks", "os.vhdx")); err == nil {
		t.Error("merge-chain also wrote the base layer")
	}
	// Converted, chain kept: qcow2 overlays that qemu reads identically.
	conv := filepath.Join(dir, "qcow2")
	lb(t, repoDir, false, "restore", "--point", pts[0].ID, "--to", conv, "--format", "qcow2")
	top := filepath.Join(conv, "Virtual Hard Disks", "os_B.qcow2")
	raw := filepath.Join(dir, "top.raw")
	testenv.Run(t, "qemu-img", "convert", "-O", "raw", top, raw)
	got, _ := os.ReadFile(raw)
	if !bytes.Equal(got, want["os_B.avhdx"]) {
		t.Error("qcow2 chain converted from the AVHDX chain reads differently in qemu")
	}

	// An incremental of the unchanged folder reads nothing.
	res := lb(t, repoDir, false, "backup", "--name", "2012R2", "--json", vm)
	if !bytes.Contains([]byte(res), []byte(`"bytes_read":0`)) {
		t.Errorf("unchanged folder was read again: %s", res)
	}

	// A disk the configuration attaches that is missing fails the backup,
	// naming it.
	os.Rename(filepath.Join(vhd, "disk.vhd"), filepath.Join(dir, "away.vhd"))
	if msg := lb(t, repoDir, true, "backup", "--name", "2012R2", vm); !strings.Contains(msg, `hyperv\disk.vhd`) || !strings.Contains(msg, "missing") {
		t.Errorf("missing disk: %s", msg)
	}
	os.Rename(filepath.Join(dir, "away.vhd"), filepath.Join(vhd, "disk.vhd"))

	// A configuration that does not parse fails the backup, naming it.
	os.WriteFile(filepath.Join(vm, "Virtual Machines", guid+".xml"), xml[:len(xml)/2], 0o644)
	msg := lb(t, repoDir, true, "backup", "--name", "2012R2", vm)
	if !strings.Contains(msg, guid+".xml") {
		t.Errorf("broken config: %s", msg)
	}
	if n := len(points(t, repoDir)); n != 2 {
		t.Errorf("%d points after a failed backup, want 2", n)
	}
}
