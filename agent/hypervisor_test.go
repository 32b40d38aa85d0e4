package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	golibvirt "github.com/digitalocean/go-libvirt"

	"lifeboat/backup"
	"lifeboat/catalog"
	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/hypervisor"
	"lifeboat/repo"
	"lifeboat/repo/storage/local"
)

// fakeHV is a hypervisor.Driver over raw files, with migrations and
// online failures on demand.
type fakeHV struct {
	vms       map[string]*fakeVM
	moving    map[string]string
	onlineErr error
	backups   []hypervisor.BackupOptions
	closed    bool
	dead      bool
	connects  int
}

func (f *fakeHV) Alive() bool { return !f.dead }

type fakeVM struct {
	id    string
	state hypervisor.State
	disk  string
}

func (f *fakeHV) Name() string                                   { return "fake" }
func (f *fakeHV) Host(context.Context) (string, error)           { return "fakehost", nil }
func (f *fakeHV) Define(context.Context, []byte) (string, error) { return "", errors.ErrUnsupported }
func (f *fakeHV) Start(context.Context, string) error            { return errors.ErrUnsupported }
func (f *fakeHV) Shutdown(context.Context, string) error         { return errors.ErrUnsupported }
func (f *fakeHV) Destroy(context.Context, string) error          { return errors.ErrUnsupported }
func (f *fakeHV) Undefine(context.Context, string) error         { return errors.ErrUnsupported }
func (f *fakeHV) ManagedSave(context.Context, string) error      { return errors.ErrUnsupported }
func (f *fakeHV) Restore(context.Context, string) error          { return errors.ErrUnsupported }
func (f *fakeHV) Close() error                                   { f.closed = true; return nil }

func (f *fakeHV) Migrations(context.Context) (map[string]string, error) { return f.moving, nil }

func (f *fakeHV) List(ctx context.Context) ([]hypervisor.VMInfo, error) {
	var out []hypervisor.VMInfo
	for name, v := range f.vms {
		out = append(out, hypervisor.VMInfo{Name: name, ID: v.id, State: v.state, Files: []hypervisor.File{
			{Path: "/etc/fake/" + name + ".xml", Role: hypervisor.RoleConfig},
			{Path: v.disk, Role: hypervisor.RoleDisk, Format: disk.Raw, Target: "vda"},
		}})
	}
	return out, nil
}

func (f *fakeHV) Config(ctx context.Context, vm string) (*hypervisor.Config, error) {
	v, ok := f.vms[vm]
	if !ok {
		return nil, hypervisor.ErrNotFound
	}
	c := &hypervisor.Config{Format: "fake", Raw: []byte("<domain/>")}
	c.Summary.Name, c.Summary.ID = vm, strings.ToUpper(v.id)
	return c, nil
}

func (f *fakeHV) Backup(ctx context.Context, vm string, opts hypervisor.BackupOptions) (hypervisor.BackupSession, error) {
	f.backups = append(f.backups, opts)
	v, ok := f.vms[vm]
	if !ok {
		return nil, hypervisor.ErrNotFound
	}
	online := v.state == hypervisor.Running && !opts.Offline
	if online && f.onlineErr != nil {
		return nil, f.onlineErr
	}
	img, err := formats.OpenAs(ctx, v.disk, disk.Raw)
	if err != nil {
		return nil, err
	}
	cfg, _ := f.Config(ctx, vm)
	s := &fakeSession{cfg: cfg, disks: []hypervisor.BackupDisk{{Target: "vda", Path: v.disk, Format: disk.Raw, Image: img}}, consistency: hypervisor.Offline}
	if online {
		s.consistency, s.checkpoint = hypervisor.Crash, "cp-"+vm
	}
	return s, nil
}

type fakeSession struct {
	cfg         *hypervisor.Config
	disks       []hypervisor.BackupDisk
	consistency string
	checkpoint  string
}

func (s *fakeSession) Consistency() string              { return s.consistency }
func (s *fakeSession) Config() *hypervisor.Config       { return s.cfg }
func (s *fakeSession) Disks() []hypervisor.BackupDisk   { return s.disks }
func (s *fakeSession) Files() []hypervisor.File         { return nil }
func (s *fakeSession) Checkpoint() string               { return s.checkpoint }
func (s *fakeSession) Incremental() bool                { return false }
func (s *fakeSession) Fallback() string                 { return "" }
func (s *fakeSession) Notes() []string                  { return nil }
func (s *fakeSession) Commit(ctx context.Context) error { return s.End(ctx) }
func (s *fakeSession) End(context.Context) error {
	for _, d := range s.disks {
		d.Image.Close()
	}
	s.disks = nil
	return nil
}

func newFake(t *testing.T) (*fakeHV, *Hypervisor, *repo.Repository) {
	t.Helper()
	dir := t.TempDir()
	mk := func(name string) string {
		p := filepath.Join(dir, name+".raw")
		if err := os.WriteFile(p, []byte(strings.Repeat(name, 50000)), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	f := &fakeHV{vms: map[string]*fakeVM{
		"web":      {id: "11111111-2222-3333-4444-555555555555", state: hypervisor.Running, disk: mk("web")},
		"db":       {id: "66666666-2222-3333-4444-555555555555", state: hypervisor.ShutOff, disk: mk("db")},
		"bad/name": {id: "77777777-2222-3333-4444-555555555555", state: hypervisor.Running, disk: mk("bad")},
	}, moving: map[string]string{}}
	h := &Hypervisor{Kind: "fake", CannotOnline: libvirtCannotOnline,
		Connect: func(context.Context) (hypervisor.Driver, error) {
			f.connects++
			f.dead, f.closed = false, false
			return f, nil
		}}
	b, err := local.Open(filepath.Join(dir, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Init(context.Background(), b, repo.InitOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	return f, h, r
}

func find(t *testing.T, vms []VM, name string) VM {
	t.Helper()
	for _, v := range vms {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no VM %s in %+v", name, vms)
	return VM{}
}

func TestHypervisorInventory(t *testing.T) {
	ctx := context.Background()
	f, h, _ := newFake(t)
	f.moving["11111111-2222-3333-4444-555555555555"] = "an outgoing migration job runs"
	vms, err := h.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 2 {
		t.Fatalf("%d VMs, want 2 (a name Lifeboat cannot store is left out): %+v", len(vms), vms)
	}
	web, db := find(t, vms, "web"), find(t, vms, "db")
	if web.State != catalog.VMMigrating || db.State != catalog.VMOff {
		t.Errorf("states %s, %s; want migrating, off", web.State, db.State)
	}
	// A daemon that restarted is reached again.
	f.dead = true
	if _, err := h.Inventory(ctx); err != nil || f.connects != 2 || f.closed {
		t.Errorf("after the connection died: %v, %d connects (want 2)", err, f.connects)
	}
	if db.UUID != "66666666-2222-3333-4444-555555555555" || db.Path != f.vms["db"].disk ||
		len(db.Files) != 2 || db.Files[0] != f.vms["db"].disk || db.Files[1] != "/etc/fake/db.xml" {
		t.Errorf("db: %+v", db)
	}
}

func TestHypervisorPrepareWhere(t *testing.T) {
	ctx := context.Background()
	f, h, _ := newFake(t)
	vms, _ := h.Inventory(ctx)
	web := find(t, vms, "web")
	if _, err := h.Prepare(ctx, web, PrepareOptions{}); err != nil {
		t.Fatal(err)
	}
	f.moving[web.UUID] = "paused for a migration"
	if _, err := h.Prepare(ctx, web, PrepareOptions{}); !errors.Is(err, ErrMigrating) {
		t.Errorf("migrating VM: %v, want ErrMigrating", err)
	}
	delete(f.moving, web.UUID)
	other := web
	other.UUID = "99999999-2222-3333-4444-555555555555"
	if _, err := h.Prepare(ctx, other, PrepareOptions{}); !errors.Is(err, ErrNotHere) {
		t.Errorf("same name, other VM: %v, want ErrNotHere", err)
	}
	delete(f.vms, "web")
	if _, err := h.Prepare(ctx, web, PrepareOptions{}); !errors.Is(err, ErrNotHere) {
		t.Errorf("VM gone: %v, want ErrNotHere", err)
	}
}

func TestHypervisorOfflineFallback(t *testing.T) {
	ctx := context.Background()
	f, h, r := newFake(t)
	vms, _ := h.Inventory(ctx)
	web := find(t, vms, "web")
	run := func(opts PrepareOptions) (*repo.Point, error) {
		prep, err := h.Prepare(ctx, web, opts)
		if err != nil {
			t.Fatal(err)
		}
		return prep.Run(ctx, r, backup.Options{Name: "web", Host: "n1"})
	}

	pt, err := run(PrepareOptions{OfflineFallback: true})
	if err != nil || pt.Consistency != hypervisor.Crash {
		t.Fatalf("online: %v, %+v", err, pt)
	}

	// Cannot be backed up online: offline when the group allows it.
	f.onlineErr = golibvirt.Error{Code: uint32(golibvirt.ErrOperationUnsupported), Message: "Operation not supported: backup of this disk"}
	if _, err := run(PrepareOptions{}); err == nil || !strings.Contains(err.Error(), "does not allow an offline backup") {
		t.Errorf("without fallback: %v", err)
	}
	f.backups = nil
	pt, err = run(PrepareOptions{OfflineFallback: true})
	if err != nil {
		t.Fatal(err)
	}
	if pt.Consistency != hypervisor.Offline || len(f.backups) != 2 || !f.backups[1].Offline ||
		!strings.Contains(strings.Join(pt.Notes, "\n"), "online backup not possible") {
		t.Errorf("fallback: consistency %s, backups %+v, notes %q", pt.Consistency, f.backups, pt.Notes)
	}

	// A passing fault is not a reason to stop the VM.
	f.onlineErr = errors.New("nbd: connection reset")
	f.backups = nil
	if _, err := run(PrepareOptions{OfflineFallback: true}); err == nil || len(f.backups) != 1 {
		t.Errorf("passing fault: %v after %d attempts, want a failure after 1", err, len(f.backups))
	}

	// The VM began to move while the backup began: deferred, not failed.
	f.onlineErr = errors.New("cannot acquire state change lock")
	prep, err := h.Prepare(ctx, web, PrepareOptions{OfflineFallback: true})
	if err != nil {
		t.Fatal(err)
	}
	f.moving[web.UUID] = "an outgoing migration job runs"
	if _, err := prep.Run(ctx, r, backup.Options{Name: "web"}); !errors.Is(err, ErrMigrating) {
		t.Errorf("moving during the backup: %v, want ErrMigrating", err)
	}
}
