// Package hypervisortest is the conformance suite every hypervisor driver
// runs: listing, configuration round trips, the VM lifecycle used by
// recovery, and backups whose content is checked byte for byte against
// what the guest had at the snapshot moment.
//
// The suite keeps a model of each throwaway VM's disk (its base image plus
// every write the guest made), so "the guest's content at the snapshot
// moment" is known exactly without ever reading a running VM's file.
package hypervisortest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/hypervisor"
)

// Harness adapts a driver to the suite.
type Harness struct {
	Driver hypervisor.Driver
	// NewVM returns the raw configuration of a new throwaway VM called
	// name, not yet defined, whose only disk (target Target) starts as a
	// copy of the image at base. It registers its own cleanup (the suite
	// also undefines the VM).
	NewVM func(t *testing.T, name string) (raw []byte, base string)
	// Target is the disk target NewVM's VMs have ("vda").
	Target string
	// GuestWrite makes a running guest write length bytes of pattern at
	// off on the disk target, synchronously. Nil when the driver cannot
	// run VMs.
	GuestWrite func(ctx context.Context, vm, target string, off, length int64, pattern byte) error
	// CanRun says the driver starts and stops VMs; Online that it backs up
	// running VMs; ManagedSave that it saves and restores them.
	CanRun, Online, ManagedSave bool
	// Prefix names the suite's throwaway VMs (default "lbtest").
	Prefix string
}

// model is what a disk holds, as the guest sees it.
type model struct {
	data []byte
}

func (m *model) write(off, length int64, pattern byte) {
	for i := off; i < off+length; i++ {
		m.data[i] = pattern
	}
}

func loadModel(t *testing.T, path string) *model {
	t.Helper()
	img, err := formats.Open(context.Background(), path)
	if err != nil {
		t.Fatalf("open base image: %v", err)
	}
	defer img.Close()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil && err != io.EOF {
		t.Fatalf("read base image: %v", err)
	}
	return &model{data: b}
}

// Run runs the whole suite.
func Run(t *testing.T, h Harness) {
	if h.Prefix == "" {
		h.Prefix = "lbtest"
	}
	if h.Target == "" {
		h.Target = "vda"
	}
	ctx := context.Background()
	d := h.Driver

	t.Run("ListAndConfig", func(t *testing.T) {
		name := fmt.Sprintf("%s-cfg-%d", h.Prefix, time.Now().UnixNano()%1e6)
		raw, _ := h.NewVM(t, name)
		defineVM(t, h, raw, name)
		info := findVM(t, d, name)
		if info.ID == "" {
			t.Errorf("List: VM %s has no ID", name)
		}
		if info.State != hypervisor.ShutOff {
			t.Errorf("List: new VM is %q, want %q", info.State, hypervisor.ShutOff)
		}
		var disks []hypervisor.File
		for _, f := range info.Files {
			if f.Role == hypervisor.RoleDisk || f.Role == hypervisor.RoleDifferencingDisk {
				disks = append(disks, f)
			}
		}
		if len(disks) != 1 {
			t.Fatalf("List: want 1 disk file, got %+v", info.Files)
		}
		if disks[0].Target != h.Target || disks[0].Format == "" || disks[0].Path == "" || disks[0].Volume.Mount == "" {
			t.Errorf("List: disk file %+v lacks target, format, path or volume", disks[0])
		}

		cfg, err := d.Config(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		s := cfg.Summary
		if s.Name != name || s.ID != info.ID || s.CPUs < 1 || s.MemoryMiB <= 0 || len(s.Disks) == 0 || len(cfg.Raw) == 0 {
			t.Fatalf("Config summary incomplete: %+v", s)
		}
		if err := s.Validate(); err != nil {
			t.Errorf("Config summary does not validate: %v", err)
		}
		if s.Disks[0].Path == "" || s.Disks[0].Format == "" {
			t.Errorf("Config: disk without path or format: %+v", s.Disks[0])
		}
		// Round trip: undefine, define the raw config again.
		if err := d.Undefine(ctx, name); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Config(ctx, name); !errors.Is(err, hypervisor.ErrNotFound) {
			t.Fatalf("Config of an undefined VM: %v, want ErrNotFound", err)
		}
		got, err := d.Define(ctx, cfg.Raw)
		if err != nil {
			t.Fatalf("Define(Config.Raw): %v", err)
		}
		if got != name {
			t.Errorf("Define returned %q, want %q", got, name)
		}
		cfg2, err := d.Config(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprintf("%+v", cfg2.Summary) != fmt.Sprintf("%+v", s) {
			t.Errorf("config round trip changed the summary:\n before %+v\n after  %+v", s, cfg2.Summary)
		}
	})

	if !h.CanRun {
		return
	}

	t.Run("Lifecycle", func(t *testing.T) {
		name := fmt.Sprintf("%s-life-%d", h.Prefix, time.Now().UnixNano()%1e6)
		raw, _ := h.NewVM(t, name)
		defineVM(t, h, raw, name)
		if err := d.Start(ctx, name); err != nil {
			t.Fatal(err)
		}
		waitState(t, d, name, hypervisor.Running)
		if err := d.Start(ctx, name); err == nil {
			t.Error("Start of a running VM succeeded")
		}
		if err := d.Destroy(ctx, name); err != nil {
			t.Fatal(err)
		}
		waitState(t, d, name, hypervisor.ShutOff)
		if err := d.Undefine(ctx, name); err != nil {
			t.Fatal(err)
		}
		vms, err := d.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vms {
			if v.Name == name {
				t.Fatalf("undefined VM %s still listed", name)
			}
		}
		if err := d.Start(ctx, name); !errors.Is(err, hypervisor.ErrNotFound) {
			t.Errorf("Start of an undefined VM: %v, want ErrNotFound", err)
		}
	})

	if !h.Online {
		return
	}

	// One running VM for the backup tests, in order: full, incremental,
	// broken chain, offline.
	name := fmt.Sprintf("%s-bk-%d", h.Prefix, time.Now().UnixNano()%1e6)
	raw, base := h.NewVM(t, name)
	defineVM(t, h, raw, name)
	m := loadModel(t, base)
	if err := d.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	waitState(t, d, name, hypervisor.Running)
	write := func(t *testing.T, off, length int64, p byte) {
		t.Helper()
		if err := h.GuestWrite(ctx, name, h.Target, off, length, p); err != nil {
			t.Fatalf("guest write: %v", err)
		}
		m.write(off, length, p)
	}
	var checkpoint string
	ok := t.Run("FullOnline", func(t *testing.T) {
		write(t, 8<<20, 2<<20, 0x22)
		write(t, 0, 4096, 0x5a)
		write(t, int64(len(m.data))-64<<10, 64<<10, 0x7e)
		s, err := d.Backup(ctx, name, hypervisor.BackupOptions{Quiesce: true})
		if err != nil {
			t.Fatal(err)
		}
		defer s.End(ctx)
		if c := s.Consistency(); c != hypervisor.Crash && c != hypervisor.Application {
			t.Errorf("online consistency %q", c)
		}
		if s.Consistency() == hypervisor.Crash && len(s.Notes()) == 0 {
			t.Error("crash-consistent backup with Quiesce set and no note saying why")
		}
		t.Logf("consistency %s, notes %q", s.Consistency(), s.Notes())
		if s.Checkpoint() == "" {
			t.Error("online backup created no checkpoint")
		}
		if s.Incremental() || s.Fallback() != "" {
			t.Errorf("full backup: Incremental %v, Fallback %q", s.Incremental(), s.Fallback())
		}
		if s.Config() == nil || s.Config().Summary.Name != name {
			t.Errorf("session config %+v", s.Config())
		}
		snapshot := bytes.Clone(m.data)
		// The guest writes on while the backup is read: the backup must
		// still show the snapshot moment.
		write(t, 8<<20, 2<<20, 0x33)
		bd := oneDisk(t, s, h.Target)
		checkExtents(t, bd.Image)
		compareAll(t, bd.Image, snapshot)
		if err := s.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		checkpoint = s.Checkpoint()
	})
	if !ok {
		return
	}

	ok = t.Run("Incremental", func(t *testing.T) {
		// 5% of the disk in scattered 64 KiB writes (plus the 2 MiB the
		// previous test wrote after its snapshot).
		size := int64(len(m.data))
		written := int64(2 << 20)
		rng := rand.New(rand.NewPCG(1, 2))
		used := map[int64]bool{}
		var writes [][2]int64
		for written < 2<<20+size/20 {
			off := rng.Int64N(size/(64<<10)) * (64 << 10)
			if used[off] || (off >= 8<<20 && off < 10<<20) {
				continue
			}
			used[off] = true
			write(t, off, 64<<10, byte(0x80+len(writes)%64))
			writes = append(writes, [2]int64{off, 64 << 10})
			written += 64 << 10
		}
		writes = append(writes, [2]int64{8 << 20, 2 << 20})
		start := time.Now()
		s, err := d.Backup(ctx, name, hypervisor.BackupOptions{Incremental: true, Since: checkpoint})
		if err != nil {
			t.Fatal(err)
		}
		defer s.End(ctx)
		if !s.Incremental() || s.Fallback() != "" {
			t.Fatalf("incremental backup: Incremental %v, Fallback %q", s.Incremental(), s.Fallback())
		}
		snapshot := bytes.Clone(m.data)
		bd := oneDisk(t, s, h.Target)
		if !bd.ChangedKnown {
			t.Fatal("incremental disk without a change list")
		}
		if err := disk.CheckExtents(coverage(bd.Changed, size), 0, size); err != nil {
			t.Fatalf("changed extents: %v", err)
		}
		for _, w := range writes {
			if !covered(bd.Changed, w[0], w[1]) {
				t.Errorf("write at %d (+%d) not in the changed extents", w[0], w[1])
			}
		}
		var read int64
		buf := make([]byte, 4<<20)
		for _, e := range bd.Changed {
			for off := e.Offset; off < e.End(); off += int64(len(buf)) {
				n := min(int64(len(buf)), e.End()-off)
				if _, err := bd.Image.ReadAt(buf[:n], off); err != nil {
					t.Fatalf("read changed extent at %d: %v", off, err)
				}
				if !bytes.Equal(buf[:n], snapshot[off:off+n]) {
					t.Fatalf("changed range at %d differs from the guest's content", off)
				}
				read += n
			}
		}
		elapsed := time.Since(start)
		t.Logf("incremental: %d writes, %d bytes written, %d bytes read (%.2fx), %d extents, %v",
			len(writes), written, read, float64(read)/float64(written), len(bd.Changed), elapsed.Round(time.Millisecond))
		if read > 2*written {
			t.Errorf("incremental read %d bytes for %d written (> 2x)", read, written)
		}
		compareAll(t, bd.Image, snapshot)
		if err := s.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		checkpoint = s.Checkpoint()
	})
	if !ok {
		return
	}

	t.Run("BrokenChainFallsBack", func(t *testing.T) {
		write(t, 20<<20, 1<<20, 0x44)
		s, err := d.Backup(ctx, name, hypervisor.BackupOptions{Incremental: true, Since: "no-such-checkpoint"})
		if err != nil {
			t.Fatal(err)
		}
		defer s.End(ctx)
		if s.Incremental() || s.Fallback() == "" {
			t.Fatalf("broken chain: Incremental %v, Fallback %q; want a full read with a reason", s.Incremental(), s.Fallback())
		}
		t.Logf("fell back: %s", s.Fallback())
		compareAll(t, oneDisk(t, s, h.Target).Image, m.data)
		// Not committed: End drops the checkpoint it made; the chain
		// from the last committed checkpoint still works.
		if err := s.End(ctx); err != nil {
			t.Fatal(err)
		}
		s2, err := d.Backup(ctx, name, hypervisor.BackupOptions{Incremental: true, Since: checkpoint})
		if err != nil {
			t.Fatal(err)
		}
		defer s2.End(ctx)
		if !s2.Incremental() {
			t.Fatalf("chain after an abandoned backup: fallback %q", s2.Fallback())
		}
		bd := oneDisk(t, s2, h.Target)
		if !covered(bd.Changed, 20<<20, 1<<20) {
			t.Error("write since the committed checkpoint not in the changed extents")
		}
		compareAll(t, bd.Image, m.data)
		if err := s2.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	})

	if !h.ManagedSave {
		return
	}
	t.Run("OfflineManagedSave", func(t *testing.T) {
		write(t, 30<<20, 1<<20, 0x55)
		s, err := d.Backup(ctx, name, hypervisor.BackupOptions{Offline: true})
		if err != nil {
			t.Fatal(err)
		}
		defer s.End(ctx)
		if s.Consistency() != hypervisor.Offline {
			t.Errorf("consistency %q, want offline", s.Consistency())
		}
		waitState(t, d, name, hypervisor.Saved)
		var saved []hypervisor.File
		for _, f := range s.Files() {
			if f.Role == hypervisor.RoleSavedState {
				saved = append(saved, f)
			}
		}
		if len(saved) != 1 {
			t.Fatalf("want one saved-state file, got %+v", s.Files())
		}
		if st, err := osStat(saved[0].Path); err != nil || st <= 0 {
			t.Fatalf("saved state %s: size %d, %v", saved[0].Path, st, err)
		}
		compareAll(t, oneDisk(t, s, h.Target).Image, m.data)
		if err := s.End(ctx); err != nil {
			t.Fatal(err)
		}
		waitState(t, d, name, hypervisor.Running)
		// The guest goes on where it was.
		write(t, 31<<20, 64<<10, 0x56)
	})

	t.Run("OfflineStopped", func(t *testing.T) {
		if err := d.Destroy(ctx, name); err != nil {
			t.Fatal(err)
		}
		waitState(t, d, name, hypervisor.ShutOff)
		s, err := d.Backup(ctx, name, hypervisor.BackupOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.End(ctx)
		if s.Consistency() != hypervisor.Offline || len(s.Files()) != 0 {
			t.Errorf("stopped VM: consistency %q, files %+v", s.Consistency(), s.Files())
		}
		compareAll(t, oneDisk(t, s, h.Target).Image, m.data)
		if err := s.End(ctx); err != nil {
			t.Fatal(err)
		}
		waitState(t, d, name, hypervisor.ShutOff)
	})
}

func defineVM(t *testing.T, h Harness, raw []byte, name string) {
	t.Helper()
	ctx := context.Background()
	got, err := h.Driver.Define(ctx, raw)
	if err != nil {
		t.Fatalf("Define: %v", err)
	}
	if got != name {
		t.Fatalf("Define returned %q, want %q", got, name)
	}
	t.Cleanup(func() {
		h.Driver.Destroy(ctx, name)
		h.Driver.Undefine(ctx, name)
	})
}

func findVM(t *testing.T, d hypervisor.Driver, name string) hypervisor.VMInfo {
	t.Helper()
	vms, err := d.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vms {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("List does not show VM %s", name)
	return hypervisor.VMInfo{}
}

func waitState(t *testing.T, d hypervisor.Driver, name string, want hypervisor.State) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		v := findVM(t, d, name)
		if v.State == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM %s is %q, want %q", name, v.State, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func oneDisk(t *testing.T, s hypervisor.BackupSession, target string) hypervisor.BackupDisk {
	t.Helper()
	for _, bd := range s.Disks() {
		if bd.Target == target {
			if bd.Image == nil || bd.Path == "" || bd.Format == "" {
				t.Fatalf("backup disk %+v incomplete", bd)
			}
			return bd
		}
	}
	t.Fatalf("backup has no disk %s: %+v", target, s.Disks())
	return hypervisor.BackupDisk{}
}

func checkExtents(t *testing.T, img disk.Image) {
	t.Helper()
	ext, err := img.Extents(context.Background(), 0, img.Size())
	if err != nil {
		t.Fatalf("Extents: %v", err)
	}
	if err := disk.CheckExtents(ext, 0, img.Size()); err != nil {
		t.Fatalf("Extents: %v", err)
	}
}

// compareAll reads the whole image and compares it with want.
func compareAll(t *testing.T, img disk.Image, want []byte) {
	t.Helper()
	if img.Size() != int64(len(want)) {
		t.Fatalf("image size %d, want %d", img.Size(), len(want))
	}
	buf := make([]byte, 4<<20)
	for off := int64(0); off < img.Size(); off += int64(len(buf)) {
		n := min(int64(len(buf)), img.Size()-off)
		if _, err := img.ReadAt(buf[:n], off); err != nil && !(err == io.EOF && off+n == img.Size()) {
			t.Fatalf("read at %d: %v", off, err)
		}
		if !bytes.Equal(buf[:n], want[off:off+n]) {
			i := 0
			for i < int(n) && buf[i] == want[off+int64(i)] {
				i++
			}
			t.Fatalf("content differs at byte %d: got %#x, want %#x", off+int64(i), buf[i], want[off+int64(i)])
		}
	}
}

func covered(ext []disk.Extent, off, length int64) bool {
	for _, e := range ext {
		if off >= e.Offset && off < e.End() {
			if off+length <= e.End() {
				return true
			}
			length -= e.End() - off
			off = e.End()
		}
	}
	return length <= 0
}

// coverage fills the gaps of a sorted extent list so that CheckExtents
// can verify order and overlap.
func coverage(ext []disk.Extent, size int64) []disk.Extent {
	var out []disk.Extent
	pos := int64(0)
	for _, e := range ext {
		if e.Offset > pos {
			out = append(out, disk.Extent{Offset: pos, Length: e.Offset - pos, Kind: disk.Unallocated})
		}
		out = append(out, e)
		pos = e.End()
	}
	if pos < size {
		out = append(out, disk.Extent{Offset: pos, Length: size - pos, Kind: disk.Unallocated})
	}
	return out
}

func osStat(p string) (int64, error) {
	st, err := os.Stat(p)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}
