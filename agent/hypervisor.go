package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"lifeboat/api"
	"lifeboat/backup"
	"lifeboat/catalog"
	"lifeboat/hypervisor"
	"lifeboat/repo"
)

// Hypervisor is the Driver of a host whose VMs a hypervisor runs
// (libvirt: NewLibvirt). Its inventory is every VM the hypervisor knows,
// with the hypervisor's own ID, its state (a VM that is migrating in or
// out is "migrating"), its disks first and then its other files. A backup
// runs backup.RunVM through the hypervisor: online (a checkpoint and a
// pull-mode export; incremental from the previous point's checkpoint when
// the chain holds), and offline through a managed save only when the
// online backup is not possible and the group allows it. The point
// records which (its consistency, and a note for the fallback).
type Hypervisor struct {
	// Kind is the driver's name ("libvirt").
	Kind string
	// Connect opens a connection to the hypervisor. It is called at
	// first use and again when the connection has died (a connection
	// with a method Alive() bool says so), so the agent reaches a
	// daemon that restarted. A connection that also has
	// a method Migrations(ctx) (map[string]string, error), giving the
	// IDs of the VMs that are migrating now and what shows it, lets
	// the driver tell a moving VM.
	Connect func(ctx context.Context) (hypervisor.Driver, error)
	// CannotOnline says that an online backup failed because the VM
	// cannot be backed up online (not because of a passing fault): only
	// then is the offline fallback tried.
	CannotOnline func(error) bool
	Log          *slog.Logger

	mu sync.Mutex
	hv hypervisor.Driver
}

// migrationLister is what a connection may add to hypervisor.Driver.
type migrationLister interface {
	Migrations(ctx context.Context) (map[string]string, error)
}

// aliver says whether a connection still works.
type aliver interface{ Alive() bool }

// Name is Kind.
func (h *Hypervisor) Name() string {
	if h.Kind == "" {
		return "hypervisor"
	}
	return h.Kind
}

func (h *Hypervisor) log() *slog.Logger {
	if h.Log == nil {
		return slog.Default()
	}
	return h.Log
}

// conn returns the open connection, connecting when there is none or the
// last one died.
func (h *Hypervisor) conn(ctx context.Context) (hypervisor.Driver, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.hv != nil {
		if a, ok := h.hv.(aliver); !ok || a.Alive() {
			return h.hv, nil
		}
		h.log().Warn("hypervisor connection lost; reconnecting", "driver", h.Name())
		h.hv.Close()
		h.hv = nil
	}
	if h.Connect == nil {
		return nil, fmt.Errorf("%s: no way to connect", h.Name())
	}
	hv, err := h.Connect(ctx)
	if err != nil {
		return nil, err
	}
	h.hv = hv
	return hv, nil
}

// Conn is the hypervisor connection (shared; the caller does not close
// it), for recovery methods that define and start VMs on this host.
func (h *Hypervisor) Conn(ctx context.Context) (hypervisor.Driver, error) { return h.conn(ctx) }

// Close closes the connection.
func (h *Hypervisor) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.hv == nil {
		return nil
	}
	err := h.hv.Close()
	h.hv = nil
	return err
}

func migrations(ctx context.Context, hv hypervisor.Driver) (map[string]string, error) {
	if m, ok := hv.(migrationLister); ok {
		return m.Migrations(ctx)
	}
	return nil, nil
}

// Inventory lists the hypervisor's VMs.
func (h *Hypervisor) Inventory(ctx context.Context) ([]VM, error) {
	hv, err := h.conn(ctx)
	if err != nil {
		return nil, err
	}
	// A failed call leaves the connection to conn's liveness check: a
	// backup may be using it.
	list, err := hv.List(ctx)
	if err != nil {
		return nil, err
	}
	moving, err := migrations(ctx, hv)
	if err != nil {
		return nil, fmt.Errorf("%s: migrating VMs: %w", h.Name(), err)
	}
	out := make([]VM, 0, len(list))
	for _, v := range list {
		if err := api.CheckVMName(v.Name); err != nil {
			h.log().Warn("VM not reported: its name is not one Lifeboat can store", "vm", v.Name, "err", err)
			continue
		}
		vm := VM{UUID: strings.ToLower(v.ID), Name: v.Name, State: vmState(v.State)}
		for _, f := range v.Files {
			if f.Role == hypervisor.RoleDisk || f.Role == hypervisor.RoleDifferencingDisk {
				if vm.Path == "" {
					vm.Path = f.Path // the VM's first disk stands for it
				}
				vm.Files = append(vm.Files, f.Path)
			}
		}
		for _, f := range v.Files {
			if f.Role != hypervisor.RoleDisk && f.Role != hypervisor.RoleDifferencingDisk {
				vm.Files = append(vm.Files, f.Path)
			}
		}
		if _, ok := moving[strings.ToLower(v.ID)]; ok {
			vm.State = catalog.VMMigrating
		}
		out = append(out, vm)
	}
	return out, nil
}

func vmState(s hypervisor.State) string {
	switch s {
	case hypervisor.Running:
		return catalog.VMRunning
	case hypervisor.Paused:
		return catalog.VMPaused
	case hypervisor.ShutOff, hypervisor.Crashed:
		return catalog.VMOff
	case hypervisor.Saved:
		return catalog.VMSaved
	}
	return catalog.VMUnknown
}

// where checks that the host still holds vm (the same VM: same ID) and
// that it is not moving: ErrNotHere or ErrMigrating when it is not so.
func (h *Hypervisor) where(ctx context.Context, hv hypervisor.Driver, vm VM) error {
	cfg, err := hv.Config(ctx, vm.Name)
	if errors.Is(err, hypervisor.ErrNotFound) {
		return fmt.Errorf("%s: no VM %s here: %w", h.Name(), vm.Name, ErrNotHere)
	}
	if err != nil {
		return err
	}
	id := strings.ToLower(cfg.Summary.ID)
	if vm.UUID != "" && id != "" && id != strings.ToLower(vm.UUID) {
		return fmt.Errorf("%s: the VM named %s here is another one (ID %s, not %s): %w", h.Name(), vm.Name, id, vm.UUID, ErrNotHere)
	}
	moving, err := migrations(ctx, hv)
	if err != nil {
		return err
	}
	if why, ok := moving[id]; ok {
		return fmt.Errorf("%s: VM %s: %s: %w", h.Name(), vm.Name, why, ErrMigrating)
	}
	return nil
}

// Prepare checks that the VM is here and still; the backup itself runs in
// Prepared.Run.
func (h *Hypervisor) Prepare(ctx context.Context, vm VM, opts PrepareOptions) (*Prepared, error) {
	hv, err := h.conn(ctx)
	if err != nil {
		return nil, err
	}
	if err := h.where(ctx, hv, vm); err != nil {
		return nil, err
	}
	return &Prepared{
		Run: func(ctx context.Context, r *repo.Repository, bo backup.Options) (*repo.Point, error) {
			return h.run(ctx, hv, r, vm, opts, bo)
		},
		Release: func(context.Context, bool) error { return nil },
	}, nil
}

// run backs the VM up online, and offline when online is not possible
// and allowed.
func (h *Hypervisor) run(ctx context.Context, hv hypervisor.Driver, r *repo.Repository, vm VM, opts PrepareOptions, bo backup.Options) (*repo.Point, error) {
	vo := backup.VMOptions{Options: bo}
	pt, err := backup.RunVM(ctx, r, hv, vm.Name, vo)
	if err == nil || ctx.Err() != nil {
		return pt, err
	}
	// The VM may have left, or begun to move, while the backup began.
	if werr := h.where(ctx, hv, vm); errors.Is(werr, ErrNotHere) || errors.Is(werr, ErrMigrating) {
		return nil, fmt.Errorf("%w (the backup failed: %v)", werr, err)
	}
	online := vm.State == catalog.VMRunning || vm.State == catalog.VMPaused
	if !online || h.CannotOnline == nil || !h.CannotOnline(err) {
		return nil, err
	}
	if !opts.OfflineFallback {
		return nil, fmt.Errorf("%w; its group does not allow an offline backup", err)
	}
	h.log().Warn("online backup not possible; falling back to an offline backup", "vm", vm.Name, "err", err)
	vo.Offline = true
	vo.Notes = append(append([]string(nil), vo.Notes...),
		fmt.Sprintf("online backup not possible (%v): backed up offline through a saved state, as the group allows", err))
	return backup.RunVM(ctx, r, hv, vm.Name, vo)
}
