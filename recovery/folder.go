package recovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"lifeboat/disk/formats"
	"lifeboat/hypervisor"
	"lifeboat/hypervisor/libvirt"
	"lifeboat/repo"
	"lifeboat/restore"
	"lifeboat/vmconfig"
)

const (
	// MethodRebuild creates a VM from a folder that method 3 wrote.
	MethodRebuild Method = "rebuild"
	// MethodMakeHA makes an existing VM highly available.
	MethodMakeHA Method = "make-ha"
)

// FolderFile is the name of the summary method 3 writes.
const FolderFile = "vm.json"

// FolderVM is vm.json: the VM summary (CPUs, memory, NICs with network,
// MAC and VLAN, disks in the order a rebuilt VM attaches them) plus what
// Lifeboat needs to rebuild the VM from the folder. It decodes as a
// vmconfig.VM too.
type FolderVM struct {
	vmconfig.VM
	Lifeboat FolderInfo `json:"lifeboat"`
}

// FolderInfo says where a folder's files came from and which is which.
type FolderInfo struct {
	Format     string    `json:"format"` // "lifeboat-vm-folder"
	Version    int       `json:"version"`
	Point      string    `json:"point"`
	PointTime  time.Time `json:"point_time"`
	SourceHost string    `json:"source_host,omitempty"`
	// Config is the captured configuration file, relative to the folder;
	// ConfigFormat its kind ("libvirt-domain-xml", "hyperv").
	Config       string `json:"config,omitempty"`
	ConfigFormat string `json:"config_format,omitempty"`
	// Disks are in DiskOrder, each with the folder's file that holds it.
	Disks []FolderDisk `json:"disks"`
	Notes []string     `json:"notes,omitempty"`
}

// FolderDisk is one disk of a folder.
type FolderDisk struct {
	Target string `json:"target,omitempty"`
	Bus    string `json:"bus,omitempty"`
	// File is relative to the folder, slash-separated.
	File   string `json:"file"`
	Format string `json:"format"`
	// SourcePath is the disk's path in the captured configuration.
	SourcePath string `json:"source_path,omitempty"`
}

// planFolder checks method 3: the folder can take the point's files
// (differencing chains merged, saved state left out) plus vm.json.
func (rc *Recovery) planFolder(ctx context.Context, p *Plan) error {
	req := p.req
	if err := rc.loadPoint(ctx, p); err != nil {
		return err
	}
	anc, err := checkDir(p, req.Dir, req.SharedVolumes)
	if err != nil {
		return err
	}
	p.Dir, p.VM, p.anc = req.Dir, p.Point.Name, anc
	p.MergeChains = req.Chain != "keep"
	var paths []string
	for _, f := range p.Point.Files {
		if f.Role == repo.RoleSavedState {
			p.note("saved state %s is not copied: a VM rebuilt from the folder boots cold", f.Path)
			continue
		}
		paths = append(paths, f.Path)
	}
	sub := subPoint(p.Point, paths)
	rp, err := restore.MakePlan(sub, restore.Options{MergeChain: p.MergeChains})
	if err != nil {
		return refuse(CodePointUnusable, "restore the point with `lifeboat restore`", "point %s: %v", p.Point.ID, err)
	}
	var targets []string
	targetOf := map[string]restore.Step{}
	var need int64
	chained := false
	for _, s := range rp.Steps {
		targets = append(targets, filepath.Join(p.Dir, s.Target))
		targetOf[s.File.Path] = s
		if s.File.Disk != nil {
			n, err := rc.allocated(ctx, p.Point, s.File.Path, s.Merge)
			if err != nil {
				return err
			}
			need += n
			chained = chained || s.Merge
			p.Disks = append(p.Disks, DiskStep{File: s.File.Path, Path: filepath.Join(p.Dir, s.Target), Format: s.Format, Merged: s.Merge, Bytes: n})
		} else {
			need += s.File.Size
		}
	}
	if chained {
		p.note("differencing chains are merged into one disk each, holding the newest data")
	}
	if err := checkFree(append(targets, filepath.Join(p.Dir, FolderFile))...); err != nil {
		return err
	}
	if err := checkSpace(p, anc, need); err != nil {
		return err
	}

	// vm.json: the summary, and which file holds which disk.
	fv := FolderVM{Lifeboat: FolderInfo{Format: "lifeboat-vm-folder", Version: 1, Point: p.Point.ID, PointTime: p.Point.Time, SourceHost: p.Point.Host}}
	var doc *domainDoc
	if cf, ok := configFile(p.Point); ok {
		raw, err := rc.readPointFile(ctx, p.Point, cf)
		if err != nil {
			return err
		}
		fv.Lifeboat.Config = filepath.ToSlash(targetOf[cf.Path].Target)
		if d, err := parseDomainXML(raw); err == nil {
			doc = d
			fv.Lifeboat.ConfigFormat = libvirt.ConfigFormat
			if p.summary == nil {
				if s, err := libvirt.ParseConfig(raw); err == nil {
					p.summary = &s
				}
			}
		}
	}
	if p.summary == nil {
		p.note("the point holds no VM configuration summary; %s lists only the files", FolderFile)
		fv.VM = vmconfig.VM{Name: p.Point.Name}
		for _, d := range p.Disks {
			fv.Lifeboat.Disks = append(fv.Lifeboat.Disks, FolderDisk{File: rel(p.Dir, d.Path), Format: string(d.Format)})
		}
	} else {
		fv.VM = *p.summary
		if fv.VM.Hypervisor == vmconfig.HyperV && fv.Lifeboat.ConfigFormat == "" {
			fv.Lifeboat.ConfigFormat = "hyperv"
		}
		fv.VM.Disks = p.summary.DiskOrder()
		byFile := map[string]DiskStep{}
		for _, d := range p.Disks {
			byFile[d.File] = d
		}
		var byTarget map[string]string // target → point file
		if doc != nil {
			if dfs, err := mapDisks(p.Point, doc); err == nil {
				byTarget = map[string]string{}
				for _, df := range dfs {
					byTarget[df.Target] = df.File.Path
				}
			}
		}
		for _, vd := range fv.VM.Disks {
			if vd.Kind != vmconfig.KindDisk || vd.Path == "" {
				continue
			}
			file := ""
			if byTarget != nil {
				file = byTarget[vd.Target]
			}
			if file == "" {
				file = fileByBase(p.Point, vd.Path)
			}
			st, ok := byFile[file]
			if !ok {
				fv.Lifeboat.Notes = append(fv.Lifeboat.Notes, fmt.Sprintf("disk %s (%s) is not in the point", firstOf(vd.Target, vd.Bus), vd.Path))
				continue
			}
			fv.Lifeboat.Disks = append(fv.Lifeboat.Disks, FolderDisk{Target: vd.Target, Bus: vd.Bus, File: rel(p.Dir, st.Path), Format: string(st.Format), SourcePath: vd.Path})
			p.check("disk "+firstOf(vd.Target, vd.Path), true, "%s ← %s", st.Path, st.File)
		}
	}
	data, err := json.MarshalIndent(fv, "", "  ")
	if err != nil {
		return err
	}
	p.config = append(data, '\n')
	p.files = paths
	p.note("the folder can be made a running VM again with `lifeboat vm rebuild %s --libvirt URI`", p.Dir)
	return nil
}

func rel(dir, p string) string {
	r, err := filepath.Rel(dir, p)
	if err != nil {
		return p
	}
	return filepath.ToSlash(r)
}

// fileByBase finds the top layer of the point whose base name matches a
// configuration's (possibly Windows) disk path.
func fileByBase(pt *repo.Point, p string) string {
	base := strings.ToLower(path.Base(strings.ReplaceAll(p, `\`, "/")))
	isParent := map[string]bool{}
	for _, f := range pt.Files {
		if f.Parent != "" {
			isParent[f.Parent] = true
		}
	}
	for _, f := range pt.Files {
		if f.Disk != nil && !isParent[f.Path] && strings.ToLower(path.Base(f.Path)) == base {
			return f.Path
		}
	}
	return ""
}

func (rc *Recovery) executeFolder(ctx context.Context, p *Plan) (*Result, error) {
	res := &Result{Method: MethodFolder, VM: p.VM, Files: map[string]string{}}
	written, err := rc.restoreInto(ctx, p, p.files, p.MergeChains, res)
	if err != nil {
		removeWritten(p, written)
		return nil, err
	}
	vmj := filepath.Join(p.Dir, FolderFile)
	if err := writeFileAtomic(vmj, p.config, 0o640); err != nil {
		return res, fmt.Errorf("recovery: write %s: %w", vmj, err)
	}
	finishFile(p.req, vmj)
	res.Files[FolderFile] = vmj
	return res, nil
}

// ---- rebuild ----------------------------------------------------------------

// ReadFolder reads a folder's vm.json.
func ReadFolder(dir string) (*FolderVM, error) {
	b, err := os.ReadFile(filepath.Join(dir, FolderFile))
	if err != nil {
		return nil, err
	}
	var fv FolderVM
	if err := json.Unmarshal(b, &fv); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, FolderFile), err)
	}
	return &fv, nil
}

// planRebuild checks that a folder (method 3's, or any folder with a
// libvirt definition and its disk files) can become a VM on the target.
func (rc *Recovery) planRebuild(ctx context.Context, p *Plan) error {
	req := p.req
	dir := req.Dir
	if dir == "" || !filepath.IsAbs(dir) {
		return refuse(CodeNotRebuildable, "give the folder's absolute path", "folder %q is not an absolute path", dir)
	}
	p.Dir = filepath.Clean(dir)
	fv, err := ReadFolder(p.Dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return refuse(CodeNotRebuildable, "", "%v", err)
	}
	cfgName := "config.xml"
	if fv != nil && fv.Lifeboat.Config != "" {
		cfgName = fv.Lifeboat.Config
	}
	if _, err := repo.CleanPath(cfgName); err != nil {
		return refuse(CodeNotRebuildable, "", "%s names configuration %q: %v", FolderFile, cfgName, err)
	}
	cfgPath := filepath.Join(p.Dir, filepath.FromSlash(cfgName))
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		return refuse(CodeNotRebuildable, "rebuild from a folder that `lifeboat recover --method folder` wrote", "folder %s has no configuration: %v", p.Dir, err)
	}
	doc, err := parseDomainXML(raw)
	if err != nil {
		return refuse(CodeConfigUnsupported, "create the VM by hand with the folder's disks", "%s is not libvirt domain XML: %v", cfgPath, err)
	}
	p.check("configuration", true, "%s: VM %s, UUID %s", cfgPath, doc.dom.Name, doc.dom.UUID)
	list, err := targetHost(ctx, p)
	if err != nil {
		return err
	}
	byTarget := map[string]string{}
	if fv != nil {
		for _, d := range fv.Lifeboat.Disks {
			if d.Target != "" {
				byTarget[d.Target] = d.File
			}
		}
	}
	for _, d := range doc.disks() {
		if !d.restorable() {
			if d.Source != "" {
				p.note("%s %s (%s) is not in the folder; the configuration keeps naming it", d.Device, d.Target, d.Source)
			}
			continue
		}
		file := byTarget[d.Target]
		if file == "" {
			file = findByBase(p.Dir, filepath.Base(d.Source))
		}
		if file == "" {
			return refuse(CodeNotRebuildable, "copy the disk into the folder", "folder %s holds no file for disk %s (%s)", p.Dir, d.Target, d.Source)
		}
		if _, err := repo.CleanPath(file); err != nil {
			return refuse(CodeNotRebuildable, "", "%s names disk file %q: %v", FolderFile, file, err)
		}
		abs := filepath.Join(p.Dir, filepath.FromSlash(file))
		f, err := formats.Detect(abs)
		if err != nil {
			return refuse(CodeNotRebuildable, "copy the disk into the folder again", "disk %s: %v", d.Target, err)
		}
		img, err := formats.Open(ctx, abs)
		if err != nil {
			return refuse(CodeNotRebuildable, "copy the disk into the folder again", "disk %s (%s) does not open: %v", d.Target, abs, err)
		}
		img.Close()
		doc.setDiskFile(d.Index, abs, f)
		p.Disks = append(p.Disks, DiskStep{Target: d.Target, File: file, Path: abs, Format: f, Source: abs})
		p.check("disk "+d.Target, true, "%s (%s)", abs, f)
	}
	if len(p.Disks) == 0 {
		return refuse(CodeNotRebuildable, "", "the configuration in %s names no disk the folder holds", p.Dir)
	}
	name, uuid, macs, err := identity(p, doc, list, p.Host)
	if err != nil {
		return err
	}
	p.VM, p.UUID, p.NewIdentity, p.MACs = name, uuid, req.NewIdentity, macs
	if err := rc.checkHA(ctx, p, name); err != nil {
		return err
	}
	if p.HA {
		hc := filepath.Join(p.Dir, name+".xml")
		if err := checkFree(hc); err != nil {
			return err
		}
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
	if !req.NewIdentity && len(doc.macs()) > 0 {
		p.note("the VM keeps its MACs: %s", strings.Join(doc.macs(), ", "))
	}
	p.note("%s becomes the VM's location: its definition names the files there, so they must not be moved afterwards", p.Dir)
	return nil
}

// findByBase finds a file of that name in the folder or its disks/.
func findByBase(dir, base string) string {
	for _, c := range []string{base, "disks/" + base} {
		if fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(c))); err == nil && fi.Mode().IsRegular() {
			return c
		}
	}
	return ""
}

func (rc *Recovery) executeRebuild(ctx context.Context, p *Plan) (*Result, error) {
	drv := p.req.Driver
	res := &Result{Method: MethodRebuild, VM: p.VM, UUID: p.UUID, Host: p.Host, Files: map[string]string{}}
	for _, d := range p.Disks {
		res.Files[d.File] = d.Path
	}
	rc.logf("defining %s on %s", p.VM, p.Host)
	name, err := drv.Define(ctx, p.config)
	if err != nil {
		return nil, fmt.Errorf("recovery: define %s on %s: %w", p.VM, p.Host, err)
	}
	res.VM = name
	if err := drv.Start(ctx, name); err != nil {
		return res, fmt.Errorf("recovery: VM %s is defined on %s but does not start: %w", name, p.Host, err)
	}
	res.Running = true
	if p.HA {
		hc := filepath.Join(p.Dir, name+".xml")
		if err := writeFileAtomic(hc, p.config, 0o640); err != nil {
			return res, err
		}
		if err := rc.HA.AddVirtualDomain(ctx, p.haSpec(hc)); err != nil {
			return res, fmt.Errorf("recovery: VM %s runs, but registering it with the HA manager failed: %w", name, err)
		}
		res.HA = true
		rc.waitHA(ctx, p, res)
	}
	return res, nil
}

// ---- make-ha ----------------------------------------------------------------

// planMakeHA checks that an existing VM can be made highly available: an
// HA manager is configured, the VM exists, the resource does not, and the
// definition can be written where every node reads it.
func (rc *Recovery) planMakeHA(ctx context.Context, p *Plan) error {
	req := p.req
	if rc.HA == nil {
		return refuse(CodeNoHAManager, "configure the cluster's HA manager (Pacemaker) first", "no HA manager is configured")
	}
	if _, err := targetHost(ctx, p); err != nil {
		return err
	}
	drv := req.Driver
	cfg, err := drv.Config(ctx, req.VM)
	if errors.Is(err, hypervisor.ErrNotFound) {
		return refuse(CodeVMNotFound, "check the name with `virsh list --all`", "host %s has no VM named %s", p.Host, req.VM)
	}
	if err != nil {
		return err
	}
	p.VM, p.UUID = req.VM, cfg.Summary.ID
	p.check("VM", true, "VM %s (UUID %s) exists on %s", p.VM, p.UUID, p.Host)
	res := haResource(req, req.VM)
	ok, err := rc.HA.Exists(ctx, res)
	if err != nil {
		return fmt.Errorf("recovery: ask the HA manager about %s: %w", res, err)
	}
	if ok {
		return refuse(CodeHAResourceExists, "the VM is highly available already", "the cluster already has a resource named %s", res)
	}
	p.HA, p.HAResource = true, res
	cfgPath := req.ConfigPath
	if cfgPath == "" {
		info, err := findVM(ctx, drv, req.VM)
		if err != nil {
			return err
		}
		for _, f := range info.Files {
			if f.Target != "" {
				cfgPath = filepath.Join(filepath.Dir(f.Path), req.VM+".xml")
				break
			}
		}
		if cfgPath == "" {
			return refuse(CodeTargetPath, "give --config PATH on storage every node reads", "VM %s has no disk file beside which its definition could be kept", req.VM)
		}
	}
	if !filepath.IsAbs(cfgPath) {
		return refuse(CodeTargetPath, "give an absolute path", "%q is not an absolute path", cfgPath)
	}
	if err := checkFree(cfgPath); err != nil {
		return err
	}
	p.Dir = filepath.Dir(cfgPath)
	p.cfgName = cfgPath
	p.config = cfg.Raw
	p.check("HA", true, "the definition goes to %s; resource %s", cfgPath, res)
	return nil
}

func (rc *Recovery) executeMakeHA(ctx context.Context, p *Plan) (*Result, error) {
	res := &Result{Method: MethodMakeHA, VM: p.VM, UUID: p.UUID, Host: p.Host, Files: map[string]string{}}
	if err := writeFileAtomic(p.cfgName, p.config, 0o640); err != nil {
		return nil, err
	}
	res.Files["config"] = p.cfgName
	if err := rc.HA.AddVirtualDomain(ctx, p.haSpec(p.cfgName)); err != nil {
		return res, err
	}
	res.HA = true
	rc.waitHA(ctx, p, res)
	st, err := vmState(ctx, p.req.Driver, p.VM)
	res.Running = err == nil && isUp(st)
	return res, nil
}
