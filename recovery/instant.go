package recovery

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"libvirt.org/go/libvirtxml"

	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/hypervisor"
	"lifeboat/nbd/server"
	"lifeboat/repo"
)

// MethodInstant boots the VM straight from the repository: its disks are
// served over NBD (a unix socket in the target folder) from the point,
// with every guest write kept in a persistent local overlay in that
// folder, and a domain whose disks name the NBD exports is defined and
// started on the target host. The process that called StartInstant keeps
// serving until Instant.Finalize copies the merged disks (point + overlay)
// into qcow2 files in the folder and switches the VM to them, or until
// Instant.Close.
//
// Design ("after" finalize): Finalize shuts the guest down (gracefully,
// then by power-off after Recovery.GracefulTimeout), copies each disk with
// server.Overlay.Finalize into DIR/<target>.qcow2, redefines the domain
// (same name and UUID) with file disks, starts it again, and then stops
// the NBD server, closes the overlays (removing them) and releases the
// repository. From then on the VM depends on neither the repository nor
// the server. A live switch (blockcopy pivot) is not done: QEMU would
// copy the whole disk through NBD again, and libvirt has no way to adopt
// a copy made outside QEMU while the guest runs.
//
// The folder holds: nbd.sock (the NBD server; exports are named after
// the disks' target devices), <target>.overlay (+ .bitmap), config.xml
// (the definition in use), and after Finalize <target>.qcow2. Re-running
// an instant recovery into the same folder reopens the overlays, so
// guest writes survive a restart of the serving process.
const MethodInstant Method = "instant"

// InstantSocket is the NBD socket's name in the target folder.
const InstantSocket = "nbd.sock"

// maxSocketPath is what a unix socket address holds (sun_path less NUL).
const maxSocketPath = 107

// InstantDisk is one disk served by an instant recovery.
type InstantDisk struct {
	Target  string `json:"target"`
	File    string `json:"file"`
	Export  string `json:"export"`
	Overlay string `json:"overlay"`
	// Final is where Finalize writes the disk (qcow2).
	Final string `json:"final"`
	Size  int64  `json:"size"`

	index int
	base  *repo.FileImage
	ov    *server.Overlay
}

// InstantInfo describes a running instant recovery.
type InstantInfo struct {
	VM        string        `json:"vm"`
	UUID      string        `json:"uuid,omitempty"`
	Host      string        `json:"host,omitempty"`
	Dir       string        `json:"dir"`
	Socket    string        `json:"socket"`
	Config    string        `json:"config"`
	Disks     []InstantDisk `json:"disks"`
	Running   bool          `json:"running"`
	Finalized bool          `json:"finalized,omitempty"`
}

// Instant is an instant recovery being served.
type Instant struct {
	rc   *Recovery
	p    *Plan
	doc  *domainDoc
	drv  hypervisor.Driver
	info InstantInfo

	lock   *repo.Lock
	cancel context.CancelFunc
	served chan error

	mu     sync.Mutex
	closed bool
}

// planInstant checks an instant recovery: point with a libvirt
// configuration and its disks, the target host and identity, the folder
// (where the socket, overlays and final disks go).
func (rc *Recovery) planInstant(ctx context.Context, p *Plan) error {
	req := p.req
	if err := rc.loadPoint(ctx, p); err != nil {
		return err
	}
	doc, err := rc.loadDomain(ctx, p)
	if err != nil {
		return err
	}
	list, err := targetHost(ctx, p)
	if err != nil {
		return err
	}
	anc, err := checkDir(p, req.Dir, req.SharedVolumes)
	if err != nil {
		return err
	}
	p.Dir, p.anc = req.Dir, anc
	sock := filepath.Join(p.Dir, InstantSocket)
	if len(sock) > maxSocketPath {
		return refuse(CodeTargetPath, "choose a shorter folder path", "the NBD socket %s is longer than a unix socket address allows (%d bytes)", sock, maxSocketPath)
	}
	name, uuid, macs, err := identity(p, doc, list, p.Host)
	if err != nil {
		return err
	}
	p.VM, p.UUID, p.NewIdentity, p.MACs = name, uuid, req.NewIdentity, macs
	dfs, err := mapDisks(p.Point, doc)
	if err != nil {
		return err
	}
	if len(dfs) == 0 {
		return refuse(CodePointUnusable, "choose a point of a VM with disks", "point %s: the configuration names no disk to serve", p.Point.ID)
	}
	var finals []string
	var need int64
	for _, df := range dfs {
		exp := df.Target
		if exp == "" {
			exp = fmt.Sprintf("disk%d", df.Index)
		}
		ov := filepath.Join(p.Dir, exp+".overlay")
		final := filepath.Join(p.Dir, exp+".qcow2")
		finals = append(finals, final)
		n, err := rc.allocated(ctx, p.Point, df.File.Path, true)
		if err != nil {
			return err
		}
		need += n
		doc.setDiskNBD(df.Index, exp, sock)
		p.Disks = append(p.Disks, DiskStep{Target: df.Target, File: df.File.Path, Path: ov, Format: disk.Raw, Merged: hasChain(df.File), Bytes: n,
			Source: "nbd+unix:///" + exp + "?socket=" + sock, index: df.Index})
		p.check("disk "+df.Target, true, "served over NBD as %s from %s, writes to %s", exp, df.File.Path, ov)
		if _, err := os.Lstat(ov); err == nil {
			p.note("overlay %s exists: it is reopened, keeping the guest writes it holds", ov)
		}
	}
	if err := checkFree(finals...); err != nil {
		return err
	}
	if err := checkSpace(p, anc, need); err != nil {
		return err
	}
	if req.HA {
		return refuse(CodeNoHAManager, "make the VM highly available after --finalize with `lifeboat vm make-ha`", "an instantly recovered VM depends on this process and cannot be an HA resource")
	}
	doc.forgetRuntime()
	if req.NewIdentity {
		doc.newIdentity(name, uuid, macs)
	} else {
		doc.dom.Name = name
	}
	if p.config, err = doc.marshal(); err != nil {
		return err
	}
	p.note("the VM runs from the repository through this process: keep it running until `lifeboat recover --finalize --to %s` has copied the disks into %s", p.Dir, p.Dir)
	return nil
}

// setDiskNBD points disk i at an NBD export on a unix socket, raw.
func (d *domainDoc) setDiskNBD(i int, export, sock string) {
	dd := &d.dom.Devices.Disks[i]
	dd.Source = &libvirtxml.DomainDiskSource{Network: &libvirtxml.DomainDiskSourceNetwork{
		Protocol: "nbd", Name: export,
		Hosts: []libvirtxml.DomainDiskSourceHost{{Transport: "unix", Socket: sock}},
	}}
	dd.BackingStore = nil
	if dd.Driver == nil {
		dd.Driver = &libvirtxml.DomainDiskDriver{Name: "qemu"}
	}
	dd.Driver.Type = "raw"
}

// StartInstant carries out an instant-recovery plan: it opens the point's
// disks and their overlays, serves them on the folder's socket, defines
// the domain and starts it. The returned Instant serves until Finalize or
// Close; ctx only bounds the start.
func (rc *Recovery) StartInstant(ctx context.Context, p *Plan) (in *Instant, err error) {
	if p == nil || p.Method != MethodInstant || p.config == nil {
		return nil, errors.New("recovery: StartInstant needs an instant plan that passed its preflight")
	}
	doc, err := parseDomainXML(p.config)
	if err != nil {
		return nil, err
	}
	in = &Instant{rc: rc, p: p, doc: doc, drv: p.req.Driver, served: make(chan error, 1)}
	in.info = InstantInfo{VM: p.VM, UUID: p.UUID, Host: p.Host, Dir: p.Dir,
		Socket: filepath.Join(p.Dir, InstantSocket), Config: filepath.Join(p.Dir, "config.xml")}
	lock, err := rc.Repo.Lock(ctx, false, "instant recovery "+p.PointID)
	if err != nil {
		return nil, err
	}
	in.lock = lock
	defer func() {
		if err != nil {
			in.stopServing()
		}
	}()
	if err := os.MkdirAll(p.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("recovery: %w", err)
	}
	var exports []server.Export
	for _, s := range p.Disks {
		d := InstantDisk{Target: s.Target, File: s.File, Overlay: s.Path, index: s.index}
		d.Export = filepath.Base(s.Path[:len(s.Path)-len(".overlay")])
		d.Final = filepath.Join(p.Dir, d.Export+".qcow2")
		// The FileImage lives as long as the serving: not bound to ctx.
		if d.base, err = rc.Repo.OpenFile(context.WithoutCancel(ctx), p.Point, s.File); err != nil {
			return nil, err
		}
		in.info.Disks = append(in.info.Disks, d)
		dd := &in.info.Disks[len(in.info.Disks)-1]
		if dd.ov, err = server.OpenOverlay(dd.base, server.OverlayOptions{Path: s.Path, BaseID: p.PointID + "/" + s.File}); err != nil {
			return nil, fmt.Errorf("recovery: %w", err)
		}
		dd.Size = dd.ov.Size()
		exports = append(exports, server.Export{Name: d.Export, Description: p.VM + " " + s.Target, Overlay: dd.ov})
	}
	srv, err := server.New(exports...)
	if err != nil {
		return nil, err
	}
	srv.Logf = func(format string, args ...any) { rc.logf(format, args...) }
	l, err := server.ListenUnix(in.info.Socket)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	in.cancel = cancel
	go func() { in.served <- srv.Serve(sctx, l) }()
	rc.logf("serving %d disk(s) of point %s on %s", len(exports), p.PointID, in.info.Socket)

	if err := writeFileAtomic(in.info.Config, p.config, 0o640); err != nil {
		return nil, fmt.Errorf("recovery: write %s: %w", in.info.Config, err)
	}
	rc.logf("defining %s on %s", p.VM, p.Host)
	name, err := in.drv.Define(ctx, p.config)
	if err != nil {
		return nil, fmt.Errorf("recovery: define %s on %s: %w", p.VM, p.Host, err)
	}
	in.info.VM = name
	rc.logf("starting %s", name)
	if err := in.drv.Start(ctx, name); err != nil {
		in.drv.Undefine(context.WithoutCancel(ctx), name)
		return nil, fmt.Errorf("recovery: VM %s does not start from the NBD exports: %w (it was undefined again)", name, err)
	}
	in.info.Running = true
	return in, nil
}

// Info describes the recovery: VM, socket, overlays.
func (in *Instant) Info() InstantInfo {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := in.info
	out.Disks = append([]InstantDisk(nil), in.info.Disks...)
	return out
}

// FinalizeResult says what Finalize did.
type FinalizeResult struct {
	VM      string            `json:"vm"`
	Files   map[string]string `json:"files"` // target → qcow2 file
	Bytes   int64             `json:"bytes"`
	Running bool              `json:"running"`
	Seconds float64           `json:"seconds"`
}

// Finalize makes the VM independent of the repository: it stops the
// guest, copies every disk's merged view (point + overlay) into a qcow2
// file in the folder, redefines the domain with those files, starts it
// again, then stops serving and removes the overlays. On an error before
// the redefinition, the VM is started again from NBD and serving goes on.
func (in *Instant) Finalize(ctx context.Context) (*FinalizeResult, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return nil, errors.New("recovery: the instant recovery is closed")
	}
	start := time.Now()
	rc, vm := in.rc, in.info.VM
	res := &FinalizeResult{VM: vm, Files: map[string]string{}}
	if err := rc.stopVM(ctx, in.drv, vm); err != nil {
		return nil, err
	}
	var written []string
	restart := func(err error) error {
		for _, f := range written {
			os.Remove(f)
		}
		if serr := in.drv.Start(context.WithoutCancel(ctx), vm); serr != nil {
			return fmt.Errorf("%w (and restarting %s from NBD failed: %v)", err, vm, serr)
		}
		return fmt.Errorf("%w (%s runs from NBD again)", err, vm)
	}
	for i := range in.info.Disks {
		d := &in.info.Disks[i]
		rc.logf("copying %s into %s", d.Target, d.Final)
		w, err := formats.Create(ctx, d.Final, disk.QCOW2, disk.CreateOptions{Size: d.Size})
		if err != nil {
			return nil, restart(fmt.Errorf("recovery: %w", err))
		}
		written = append(written, d.Final)
		st, err := d.ov.Finalize(ctx, w, server.FinalizeOptions{Copy: disk.CopyOptions{}})
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, restart(fmt.Errorf("recovery: finalize %s: %w", d.Target, err))
		}
		if err := finishFile(in.p.req, d.Final); err != nil {
			return nil, restart(fmt.Errorf("recovery: %w", err))
		}
		res.Bytes += st.Bytes
		res.Files[d.Target] = d.Final
		in.doc.setDiskFile(d.index, d.Final, disk.QCOW2)
	}
	cfg, err := in.doc.marshal()
	if err != nil {
		return nil, restart(err)
	}
	rc.logf("redefining %s with its local disks", vm)
	if _, err := in.drv.Define(ctx, cfg); err != nil {
		return nil, restart(fmt.Errorf("recovery: redefine %s: %w", vm, err))
	}
	if err := writeFileAtomic(in.info.Config, cfg, 0o640); err != nil {
		rc.logf("write %s: %v", in.info.Config, err)
	}
	// The VM no longer names the socket: stop serving whatever happens.
	in.stopServing()
	for i := range in.info.Disks {
		os.Remove(in.info.Disks[i].Overlay)
		os.Remove(in.info.Disks[i].Overlay + ".bitmap")
	}
	in.info.Finalized = true
	in.info.Running = false
	rc.logf("starting %s", vm)
	if err := in.drv.Start(ctx, vm); err != nil {
		return res, fmt.Errorf("recovery: %s is defined with its local disks but does not start: %w", vm, err)
	}
	in.info.Running = true
	res.Running = true
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// Close stops serving without finalizing: the VM is powered off first
// (its disks would vanish under it); its definition and the overlays stay,
// so a new instant recovery into the same folder (after undefining the
// VM, or with another name) resumes with the guest's writes.
func (in *Instant) Close() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return nil
	}
	if !in.info.Finalized && in.info.Running {
		ctx := context.Background()
		if err := in.drv.Destroy(ctx, in.info.VM); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
			in.rc.logf("power off %s: %v", in.info.VM, err)
		}
		in.info.Running = false
	}
	in.stopServing()
	return nil
}

// stopServing stops the server and releases overlays, images and the
// repository lock; under mu.
func (in *Instant) stopServing() {
	if in.closed {
		return
	}
	in.closed = true
	if in.cancel != nil {
		in.cancel()
		<-in.served
	}
	in.release()
}

func (in *Instant) release() {
	for i := range in.info.Disks {
		d := &in.info.Disks[i]
		if d.ov != nil {
			d.ov.Close()
		}
		if d.base != nil {
			d.base.Close()
		}
	}
	os.Remove(in.info.Socket)
	if in.lock != nil {
		in.lock.Unlock(context.Background())
		in.lock = nil
	}
}
