package recovery

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"lifeboat/hypervisor"
	"lifeboat/repo"
	"lifeboat/restore"
)

// identity decides the name and UUID a VM gets on a target host: the
// point's (or the requested name), or with newIdentity a fresh UUID, fresh
// MACs and a name with a suffix; a clash without newIdentity is refused.
func identity(p *Plan, doc *domainDoc, list []hypervisor.VMInfo, host string) (name, uuid string, macs map[string]string, err error) {
	req := p.req
	name, uuid = doc.dom.Name, doc.dom.UUID
	if req.Name != "" {
		name = req.Name
	}
	taken := map[string]bool{}
	clash := ""
	for _, v := range list {
		taken[v.Name] = true
		switch {
		case v.Name == name:
			clash = fmt.Sprintf("a VM named %s (UUID %s)", v.Name, v.ID)
		case uuid != "" && strings.EqualFold(v.ID, uuid) && clash == "":
			clash = fmt.Sprintf("VM %s with the same UUID %s", v.Name, v.ID)
		}
	}
	if !req.NewIdentity {
		if clash != "" {
			return "", "", nil, refuse(CodeIdentityClash, "give --new-identity for a copy with a new name, UUID and MACs, or recover the original in place (method 1)",
				"host %s already has %s", host, clash)
		}
		p.check("identity", true, "no VM named %s or with UUID %s on %s", name, uuid, host)
		return name, uuid, nil, nil
	}
	if req.Name == "" {
		name += "-restored"
	}
	for i, base := 2, name; taken[name]; i++ {
		name = fmt.Sprintf("%s-%d", base, i)
	}
	uuid = newUUID()
	macs = map[string]string{}
	used := map[string]bool{}
	for _, m := range doc.macs() {
		used[m] = true
	}
	for _, m := range doc.macs() {
		macs[m] = newMAC(used)
	}
	var pairs []string
	for _, old := range sortedKeys(macs) {
		pairs = append(pairs, old+" → "+macs[old])
	}
	p.check("identity", true, "new identity: name %s, UUID %s", name, uuid)
	p.note("the VM gets a new identity: name %s, UUID %s, MACs %s", name, uuid, firstOf(strings.Join(pairs, ", "), "(no NICs)"))
	return name, uuid, macs, nil
}

// checkHA refuses --ha without an HA manager or with a resource that
// exists already.
func (rc *Recovery) checkHA(ctx context.Context, p *Plan, vm string) error {
	if !p.req.HA {
		p.note("the VM comes back without HA; add it with --ha, or later with `lifeboat vm make-ha %s`", vm)
		return nil
	}
	if rc.HA == nil {
		return refuse(CodeNoHAManager, "configure the cluster's HA manager (Pacemaker), or recover without --ha",
			"HA was asked for, but no HA manager is configured")
	}
	res := haResource(p.req, vm)
	ok, err := rc.HA.Exists(ctx, res)
	if err != nil {
		return fmt.Errorf("recovery: ask the HA manager about %s: %w", res, err)
	}
	if ok {
		return refuse(CodeHAResourceExists, "remove the stale resource from the cluster or give --ha-resource NAME",
			"the cluster already has a resource named %s", res)
	}
	p.HA, p.HAResource = true, res
	p.check("HA", true, "the VM will be registered with the HA manager as %s", res)
	return nil
}

// targetHost checks that the target answers and lists its VMs.
func targetHost(ctx context.Context, p *Plan) ([]hypervisor.VMInfo, error) {
	drv := p.req.Driver
	if drv == nil {
		return nil, errors.New("recovery: this method needs the target host")
	}
	p.URI = uriOf(drv)
	host, err := drv.Host(ctx)
	if err != nil {
		return nil, HostUnreachable(firstOf(p.URI, drv.Name()), err)
	}
	list, err := drv.List(ctx)
	if err != nil {
		return nil, HostUnreachable(firstOf(p.URI, host), err)
	}
	p.Host = firstOf(p.req.TargetHost, host)
	p.check("target host", true, "%s answers (%s, %d VMs)", p.Host, firstOf(p.URI, drv.Name()), len(list))
	return list, nil
}

// planVM checks method 2: the target host answers, the folder can become
// the VM's final location, the identity is free (or new), and decides
// about saved state, differencing chains and HA.
func (rc *Recovery) planVM(ctx context.Context, p *Plan) error {
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
	name, uuid, macs, err := identity(p, doc, list, p.Host)
	if err != nil {
		return err
	}
	p.VM, p.UUID, p.NewIdentity, p.MACs = name, uuid, req.NewIdentity, macs
	dfs, err := mapDisks(p.Point, doc)
	if err != nil {
		return err
	}
	same := p.Point.Host != "" && strings.EqualFold(p.Point.Host, p.Host)

	// Saved state resumes only where it was saved, with the same devices.
	var state *repo.File
	for i, f := range p.Point.Files {
		if f.Role == repo.RoleSavedState {
			state = &p.Point.Files[i]
			break
		}
	}
	if state != nil {
		_, canResume := req.Driver.(StateRestorer)
		switch {
		case req.DiscardSavedState:
			p.note("saved state %s dropped (--discard-saved-state): the VM boots cold", state.Path)
		case !same:
			p.note("saved state %s dropped: the target host %s differs from the source host %s; the VM boots cold", state.Path, p.Host, firstOf(p.Point.Host, "(unknown)"))
		case req.NewIdentity:
			p.note("saved state %s dropped: a VM with new MACs cannot resume the saved memory; the VM boots cold", state.Path)
		case !canResume:
			p.note("saved state %s dropped: the %s driver cannot resume from a file; the VM boots cold", state.Path, req.Driver.Name())
		default:
			p.KeepSavedState, p.state = true, state.Path
			p.note("the VM resumes from the point's saved state (%s) on its own host %s", state.Path, p.Host)
		}
	}

	// Differencing chains: kept on the source host, merged elsewhere.
	merge := !same
	switch req.Chain {
	case "":
	case "keep":
		merge = false
	case "merge":
		merge = true
	default:
		return fmt.Errorf("recovery: chain %q: want keep or merge", req.Chain)
	}
	p.MergeChains = merge
	chained := false
	var paths []string
	for _, df := range dfs {
		paths = append(paths, df.File.Path)
		chained = chained || hasChain(df.File)
	}
	if chained {
		if merge {
			p.note("differencing chains are merged into one disk each (%s)", map[bool]string{true: "--merge-chain", false: "the target host differs from the source host"}[req.Chain == "merge"])
		} else {
			p.note("differencing chains are kept as they are (%s)", map[bool]string{true: "--keep-chain", false: "the target is the source host"}[req.Chain == "keep"])
		}
	}
	if p.KeepSavedState {
		paths = append(paths, p.state)
	}
	p.files = paths
	rp, err := restore.MakePlan(subPoint(p.Point, paths), restore.Options{MergeChain: merge})
	if err != nil {
		return refuse(CodePointUnusable, "recover its files with method 3", "point %s: %v", p.Point.ID, err)
	}
	step := map[string]restore.Step{}
	var targets []string
	for _, s := range rp.Steps {
		step[s.File.Path] = s
		targets = append(targets, filepath.Join(p.Dir, s.Target))
	}
	if err := checkFree(append(targets, filepath.Join(p.Dir, "config.xml"))...); err != nil {
		return err
	}
	var need int64
	for _, df := range dfs {
		s := step[df.File.Path]
		t := filepath.Join(p.Dir, s.Target)
		n, err := rc.allocated(ctx, p.Point, df.File.Path, merge)
		if err != nil {
			return err
		}
		need += n
		doc.setDiskFile(df.Index, t, s.Format)
		p.Disks = append(p.Disks, DiskStep{Target: df.Target, File: df.File.Path, Path: t, Format: s.Format, Merged: s.Merge, Bytes: n, Source: t})
		p.check("disk "+df.Target, true, "%s ← %s (%s, about %s)", t, df.File.Path, s.Format, human(n))
	}
	if p.KeepSavedState {
		need += state.Size
	}
	if err := checkSpace(p, anc, need); err != nil {
		return err
	}
	if err := rc.checkHA(ctx, p, name); err != nil {
		return err
	}
	for _, d := range doc.disks() {
		if !d.restorable() && d.Source != "" {
			p.note("%s %s (%s) is not part of the point; the configuration keeps naming it", d.Device, d.Target, d.Source)
		}
	}
	doc.forgetRuntime()
	if !same || req.NewIdentity {
		for _, n := range doc.relocateChardevFiles(p.Dir) {
			p.note("%s", n)
		}
	}
	if req.NewIdentity {
		doc.newIdentity(name, uuid, macs)
	} else {
		doc.dom.Name = name
	}
	if p.config, err = doc.marshal(); err != nil {
		return err
	}
	p.note("%s becomes the VM's final location: its definition names the files there, so they must not be moved afterwards", p.Dir)
	return nil
}

// executeVM restores the disks into the folder, defines the VM with its
// disks pointing there, starts it (resuming a kept saved state) and
// registers it with the HA manager when asked.
func (rc *Recovery) executeVM(ctx context.Context, p *Plan) (*Result, error) {
	drv := p.req.Driver
	res := &Result{Method: MethodVM, VM: p.VM, UUID: p.UUID, Host: p.Host, Files: map[string]string{}}
	written, err := rc.restoreInto(ctx, p, p.files, p.MergeChains, res)
	cleanup := func() { removeWritten(p, written) }
	if err != nil {
		cleanup()
		return nil, err
	}
	if err := finishDir(p); err != nil {
		cleanup()
		return nil, fmt.Errorf("recovery: set mode and owner of %s: %w", p.Dir, err)
	}
	cfgPath := filepath.Join(p.Dir, "config.xml")
	if err := writeFileAtomic(cfgPath, p.config, 0o640); err != nil {
		cleanup()
		return nil, fmt.Errorf("recovery: write %s: %w", cfgPath, err)
	}
	written = append(written, cfgPath)
	finishFile(p.req, cfgPath)
	rc.logf("defining %s on %s", p.VM, p.Host)
	name, err := drv.Define(ctx, p.config)
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("recovery: define %s on %s: %w (the restored files were removed)", p.VM, p.Host, err)
	}
	res.VM = name
	started := false
	if p.KeepSavedState {
		statePath := res.Files[p.state]
		rc.logf("resuming %s from its saved state", name)
		if err := drv.(StateRestorer).RestoreFrom(ctx, statePath, p.config); err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("resuming from the saved state failed (%v); the VM boots cold", err))
		} else {
			started = true
			res.Notes = append(res.Notes, "the VM resumed from its saved state")
		}
		os.Remove(statePath)
		delete(res.Files, p.state)
	}
	if !started {
		rc.logf("starting %s", name)
		if err := drv.Start(ctx, name); err != nil {
			return res, fmt.Errorf("recovery: VM %s is defined on %s but does not start: %w", name, p.Host, err)
		}
	}
	res.Running = true
	if p.HA {
		rc.logf("registering %s with the HA manager as %s", name, p.HAResource)
		err := rc.HA.AddVirtualDomain(ctx, p.haSpec(cfgPath))
		if err != nil {
			return res, fmt.Errorf("recovery: VM %s runs, but registering it with the HA manager failed: %w (retry with `lifeboat vm make-ha %s`)", name, err, name)
		}
		res.HA = true
		rc.waitHA(ctx, p, res)
	}
	return res, nil
}

// restoreInto restores the given point files (with their parent layers)
// into the plan's folder and applies the mode and owner; it returns every
// file written, also on error, so the caller can remove them.
func (rc *Recovery) restoreInto(ctx context.Context, p *Plan, paths []string, merge bool, res *Result) ([]string, error) {
	sub := subPoint(p.Point, paths)
	rp, err := restore.MakePlan(sub, restore.Options{MergeChain: merge})
	if err != nil {
		return nil, err
	}
	var planned []string
	for _, s := range rp.Steps {
		planned = append(planned, filepath.Join(p.Dir, s.Target))
	}
	rc.logf("restoring %d file(s) into %s", len(planned), p.Dir)
	rr, err := restore.Run(ctx, rc.Repo, sub, p.Dir, restore.Options{MergeChain: merge, Progress: rc.Progress})
	if err != nil {
		var written []string
		for _, q := range planned {
			if _, serr := os.Lstat(q); serr == nil {
				written = append(written, q)
			}
		}
		return written, err
	}
	var written []string
	for src, dst := range rr.Files {
		written = append(written, dst)
		res.Files[src] = dst
		if err := finishFile(p.req, dst); err != nil {
			return written, fmt.Errorf("recovery: set mode and owner of %s: %w", dst, err)
		}
	}
	res.Bytes += rr.Bytes
	return written, nil
}

// waitHA waits until the HA manager reports the new resource started,
// when it can say so; a failure becomes a note (the VM runs either way).
func (rc *Recovery) waitHA(ctx context.Context, p *Plan, res *Result) {
	w, ok := rc.HA.(haWaiter)
	if !ok {
		return
	}
	if err := w.WaitStarted(ctx, p.HAResource, 2*time.Minute); err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("the cluster does not report resource %s started: %v", p.HAResource, err))
	}
}
