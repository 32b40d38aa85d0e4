package recovery

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/hypervisor"
)

const adviceMethod2 = "recover it as a VM on a host instead (method 2), choosing its original host"

func haResource(req Request, vm string) string {
	if req.HAResource != "" {
		return req.HAResource
	}
	return vm
}

// planOriginal checks method 1: the VM still exists on its host with the
// point's UUID, its HA resource exists where a cluster manages it, every
// disk of the point is still a file of the VM whose folder can take a
// second copy.
func (rc *Recovery) planOriginal(ctx context.Context, p *Plan) error {
	req := p.req
	if req.Driver == nil {
		return errors.New("recovery: method original needs the VM's host")
	}
	if err := rc.loadPoint(ctx, p); err != nil {
		return err
	}
	doc, err := rc.loadDomain(ctx, p)
	if err != nil {
		return err
	}
	drv := req.Driver
	p.VM, p.UUID, p.URI = doc.dom.Name, doc.dom.UUID, uriOf(drv)
	host, err := drv.Host(ctx)
	if err != nil {
		return HostUnreachable(firstOf(p.URI, drv.Name()), err)
	}
	// The host as operators and points know it: an agent's node name
	// when one runs the recovery, else the hypervisor's host name.
	host = firstOf(req.TargetHost, host)
	p.Host = host
	cur, err := drv.Config(ctx, p.VM)
	if errors.Is(err, hypervisor.ErrNotFound) {
		return refuse(CodeOriginalGone, adviceMethod2, "VM %s (UUID %s) no longer exists on host %s", p.VM, p.UUID, host)
	}
	if err != nil {
		return err
	}
	if !strings.EqualFold(cur.Summary.ID, p.UUID) {
		return refuse(CodeOriginalGone, adviceMethod2, "host %s has a VM named %s, but it is another VM (UUID %s; the point's is %s)", host, p.VM, cur.Summary.ID, p.UUID)
	}
	p.check("original VM", true, "VM %s (UUID %s) exists on host %s", p.VM, p.UUID, host)
	if rc.HA != nil {
		res := haResource(req, p.VM)
		ok, err := rc.HA.Exists(ctx, res)
		if err != nil {
			return fmt.Errorf("recovery: ask the HA manager about %s: %w", res, err)
		}
		if !ok {
			return refuse(CodeOriginalGone, adviceMethod2, "the VM's cluster resource no longer exists")
		}
		p.HA, p.HAResource = true, res
		p.check("HA resource", true, "cluster resource %s exists; the VM keeps its HA role", res)
		if hl, ok := rc.HA.(haLister); ok {
			list, err := hl.Resources(ctx)
			if err != nil {
				return fmt.Errorf("recovery: list the cluster's resources: %w", err)
			}
			for _, r := range list {
				if r.ID == res && r.Config != "" {
					if err := writable(r.Config, false); err != nil {
						return refuse(CodeTargetPath, "run the recovery on a cluster node that can write it", "the cluster's definition of the VM, %s, is not writable here: %v", r.Config, err)
					}
					p.haConfig = r.Config
					p.note("the cluster's definition file %s is rewritten from the point", r.Config)
				}
			}
		}
		if _, ok := rc.HA.(HAUnmanager); !ok {
			p.note("the HA manager cannot be told to leave %s alone while it is restored: if it restarts the VM meanwhile, the recovery fails and the old VM stays", res)
		}
	} else {
		p.check("HA resource", true, "no HA manager is configured; nothing to keep")
	}
	info, err := findVM(ctx, drv, p.VM)
	if err != nil {
		return err
	}
	p.WasState = info.State
	curDoc, err := parseDomainXML(cur.Raw)
	if err != nil {
		return fmt.Errorf("recovery: VM %s: current definition: %w", p.VM, err)
	}
	curByTarget := map[string]domDisk{}
	for _, d := range curDoc.disks() {
		curByTarget[d.Target] = d
	}
	local := map[string]string{}
	for _, f := range info.Files {
		if f.Target != "" {
			local[f.Target] = f.Path
		}
	}
	dfs, err := mapDisks(p.Point, doc)
	if err != nil {
		return err
	}
	inPoint := map[string]bool{}
	need := map[uint64]int64{} // device → bytes
	dirOf := map[uint64]string{}
	for _, df := range dfs {
		inPoint[df.Target] = true
		c, ok := curByTarget[df.Target]
		if !ok {
			return refuse(CodeDiskLayout, adviceMethod2, "VM %s has no disk %s any more; the point holds it (%s)", p.VM, df.Target, df.File.Path)
		}
		if c.Type != "file" {
			return refuse(CodeDiskLayout, adviceMethod2, "disk %s of VM %s is a %s source (%s), not a file; method 1 writes each disk beside its file", df.Target, p.VM, firstOf(c.Type, "unknown"), c.Source)
		}
		lp := firstOf(local[df.Target], c.Source)
		fi, err := os.Stat(lp)
		if err != nil {
			return refuse(CodeDiskLayout, adviceMethod2, "disk %s of VM %s: %v", df.Target, p.VM, err)
		}
		if !fi.Mode().IsRegular() {
			return refuse(CodeDiskLayout, adviceMethod2, "disk %s of VM %s (%s) is not a regular file", df.Target, p.VM, lp)
		}
		format, err := formats.Detect(lp)
		if err != nil {
			format = c.Format
		}
		dir := filepath.Dir(lp)
		if err := writable(dir, true); err != nil {
			return refuse(CodeTargetPath, "run the recovery as a user that may write there", "the folder of disk %s, %s, is not writable: %v", df.Target, dir, err)
		}
		bytes, err := rc.allocated(ctx, p.Point, df.File.Path, true)
		if err != nil {
			return err
		}
		dev := fileDevice(fi)
		need[dev] += bytes
		dirOf[dev] = dir
		p.Disks = append(p.Disks, DiskStep{
			Target: df.Target, File: df.File.Path, Path: lp, Format: format, Merged: hasChain(df.File), Bytes: bytes, Source: c.Source,
			Temp: filepath.Join(dir, "."+filepath.Base(lp)+".lifeboat-"+randHex(6)),
		})
		doc.setDiskFile(df.Index, c.Source, format)
		p.check("disk "+df.Target, true, "%s ← %s (%s, about %s)", lp, df.File.Path, format, human(bytes))
	}
	for dev, n := range need {
		if err := checkSpace(p, dirOf[dev], n); err != nil {
			return err
		}
	}
	for _, c := range curDoc.disks() {
		if c.restorable() && !inPoint[c.Target] {
			p.note("disk %s (%s) is not in the point: its file is kept, but the point's configuration, which is restored, does not attach it", c.Target, c.Source)
		}
	}
	if p.config, err = doc.marshal(); err != nil {
		return err
	}
	p.oldRaw = cur.Raw
	switch {
	case isUp(p.WasState):
		p.note("VM %s is %s: it will be shut down (powered off after %s) and started again afterwards", p.VM, p.WasState, rc.graceful())
	case p.WasState == hypervisor.Saved:
		p.note("VM %s has a saved state that belongs to the disks being replaced: it is discarded and the VM stays shut off (it boots cold when started)", p.VM)
	default:
		p.note("VM %s is %s and stays so", p.VM, p.WasState)
	}
	for _, f := range p.Point.Files {
		if f.Role == hypervisorRoleSavedState {
			p.note("the point's saved state (%s) is not restored in place: the VM boots cold from the restored disks", f.Path)
			break
		}
	}
	p.note("each disk is written beside the current file and swapped in only when all are written: an interrupted recovery leaves the VM as it was")
	p.note("the VM's definition is restored from the point (same UUID); its snapshot and checkpoint records are dropped, so the next backup reads in full")
	return nil
}

const hypervisorRoleSavedState = hypervisor.RoleSavedState

func (rc *Recovery) graceful() time.Duration {
	if rc.GracefulTimeout > 0 {
		return rc.GracefulTimeout
	}
	return 60 * time.Second
}

func firstOf(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// executeOriginal stops the VM, writes every disk beside its file, swaps
// them in, restores the definition and restarts the VM if it ran.
func (rc *Recovery) executeOriginal(ctx context.Context, p *Plan) (*Result, error) {
	drv := p.req.Driver
	res := &Result{Method: MethodOriginal, VM: p.VM, UUID: p.UUID, Host: p.Host, Files: map[string]string{}}
	if um, ok := rc.HA.(HAUnmanager); ok && p.HA {
		if err := um.SetManaged(ctx, p.HAResource, false); err != nil {
			return nil, fmt.Errorf("recovery: stop the cluster from managing %s: %w", p.HAResource, err)
		}
		defer um.SetManaged(context.WithoutCancel(ctx), p.HAResource, true)
	}
	st, err := vmState(ctx, drv, p.VM)
	if err != nil {
		return nil, err
	}
	restart := isUp(st)
	if isUp(st) {
		if err := rc.stopVM(ctx, drv, p.VM); err != nil {
			return nil, err
		}
	}
	// An error before the swap leaves the old VM: start it again.
	undo := func(err error) (*Result, error) {
		for _, s := range p.Disks {
			os.Remove(s.Temp)
		}
		if restart {
			if serr := drv.Start(context.WithoutCancel(ctx), p.VM); serr != nil {
				return nil, fmt.Errorf("%w (the VM is unchanged, but starting it again failed: %v)", err, serr)
			}
		}
		return nil, fmt.Errorf("%w (the VM is unchanged)", err)
	}
	var total, done int64
	for _, s := range p.Disks {
		total += s.Bytes
	}
	for _, s := range p.Disks {
		rc.logf("writing disk %s beside %s", s.Target, s.Path)
		n, err := rc.writeBeside(ctx, p, s, func(d int64) {
			if rc.Progress != nil {
				rc.Progress(done+d, total)
			}
		})
		if err != nil {
			return undo(fmt.Errorf("recovery: disk %s: %w", s.Target, err))
		}
		done += n
		res.Bytes += n
	}
	// Every disk is written. Someone (an HA manager) may have started the
	// VM meanwhile: then nothing is swapped.
	if now, err := vmState(ctx, drv, p.VM); err == nil && isUp(now) {
		for _, s := range p.Disks {
			os.Remove(s.Temp)
		}
		return nil, fmt.Errorf("recovery: VM %s was started again while its disks were written (by the HA manager?); nothing was changed", p.VM)
	}
	// Swap them in.
	for i, s := range p.Disks {
		if err := os.Rename(s.Temp, s.Path); err != nil {
			if i == 0 {
				return undo(fmt.Errorf("recovery: swap in disk %s: %w", s.Target, err))
			}
			return nil, fmt.Errorf("recovery: swap in disk %s: %w (disks before it were swapped; run the recovery again)", s.Target, err)
		}
		syncDir(filepath.Dir(s.Path))
		res.Files[s.File] = s.Path
	}
	// The definition: undefining drops the saved state, snapshot and
	// checkpoint records that describe the old disks.
	rc.logf("restoring the definition of %s", p.VM)
	if err := drv.Undefine(ctx, p.VM); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
		return res, fmt.Errorf("recovery: the disks are restored, but undefining the old definition failed: %w", err)
	}
	if p.haConfig != "" {
		if err := writeFileAtomic(p.haConfig, p.config, 0o640); err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("the cluster's definition file %s could not be rewritten: %v", p.haConfig, err))
		}
	}
	if _, err := drv.Define(ctx, p.config); err != nil {
		if _, rerr := drv.Define(context.WithoutCancel(ctx), p.oldRaw); rerr != nil {
			return res, fmt.Errorf("recovery: the disks are restored, but defining the point's configuration failed (%v) and so did the old one: %w", err, rerr)
		}
		res.Notes = append(res.Notes, fmt.Sprintf("the point's configuration could not be defined (%v); the VM keeps its previous definition", err))
	}
	if p.HA && rc.HA != nil {
		ok, err := rc.HA.Exists(ctx, p.HAResource)
		if err != nil || !ok {
			res.Notes = append(res.Notes, fmt.Sprintf("the cluster resource %s is not visible after the recovery (%v)", p.HAResource, err))
		} else {
			res.HA = true
		}
	}
	if restart {
		rc.logf("starting %s", p.VM)
		if err := drv.Start(ctx, p.VM); err != nil {
			return res, fmt.Errorf("recovery: the VM is restored but does not start: %w", err)
		}
		res.Running = true
	}
	return res, nil
}

// stopVM asks the guest to shut down, powers it off after the graceful
// timeout and waits until it is off. A transient VM (as an HA manager
// runs them) vanishes when it stops, which counts as stopped.
func (rc *Recovery) stopVM(ctx context.Context, drv hypervisor.Driver, vm string) error {
	down := func(s hypervisor.State) bool { return !isUp(s) }
	gone := func(err error) bool { return errors.Is(err, hypervisor.ErrNotFound) }
	rc.logf("shutting down %s", vm)
	if err := drv.Shutdown(ctx, vm); err != nil {
		rc.logf("shutdown of %s: %v", vm, err)
	}
	st, err := waitState(ctx, drv, vm, down, rc.graceful())
	if gone(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !isUp(st) {
		return nil
	}
	rc.logf("%s did not shut down within %s: powering it off", vm, rc.graceful())
	if err := drv.Destroy(ctx, vm); err != nil && !gone(err) {
		return err
	}
	st, err = waitState(ctx, drv, vm, down, 60*time.Second)
	if gone(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if isUp(st) {
		return fmt.Errorf("recovery: VM %s is still %s after power-off", vm, st)
	}
	return nil
}

// writeBeside writes the point's disk, resolved through its chain, into
// the temp file beside the current one, in the current file's format,
// owner and mode.
func (rc *Recovery) writeBeside(ctx context.Context, p *Plan, s DiskStep, progress func(int64)) (int64, error) {
	src, err := rc.Repo.OpenFile(ctx, p.Point, s.File)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	size := src.Size()
	ranges, err := disk.ResolvedExtents(ctx, src, 0, size)
	if err != nil {
		return 0, err
	}
	w, err := formats.Create(ctx, s.Temp, s.Format, disk.CreateOptions{Size: size})
	if err != nil {
		return 0, err
	}
	if err := disk.Copy(ctx, w, src, ranges, disk.CopyOptions{Progress: progress}); err != nil {
		w.Close()
		return 0, err
	}
	if err := w.Close(); err != nil {
		return 0, err
	}
	if fi, err := os.Stat(s.Path); err == nil {
		os.Chmod(s.Temp, fi.Mode().Perm())
		copyOwner(s.Temp, fi)
	}
	return size, nil
}
