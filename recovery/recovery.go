// Package recovery brings a VM back from a recovery point by one of three
// methods, each checked in full before any data is touched:
//
//   - MethodOriginal overwrites the VM in place on its host (it must still
//     exist there, and its HA resource where a cluster manages it);
//   - MethodVM creates the VM on any host, in a folder that becomes its
//     final location (new identity on request, saved state and differencing
//     chains handled by where it lands);
//   - MethodFolder copies the point's disks (chains merged), the captured
//     configuration and a vm.json summary into a folder, from which
//     Rebuild later creates a runnable VM.
//
// Every method is two calls. Recovery.Plan only reads: the repository, the
// hypervisor, the HA manager and the target file system; it never creates,
// changes or locks anything. It returns the plan, or a refusal as a
// *PreflightError with a stable code (LB-32579, LB-32613, …), a message
// that names the cause and advice. Recovery.Execute then carries the plan
// out. A refusal therefore always means that nothing changed anywhere.
package recovery

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"lifeboat/cluster"
	"lifeboat/disk"
	"lifeboat/hypervisor"
	"lifeboat/repo"
	"lifeboat/vmconfig"
)

// Method names a recovery method.
type Method string

const (
	// MethodOriginal overwrites the original VM in place.
	MethodOriginal Method = "original"
	// MethodVM recovers the point as a VM on any host.
	MethodVM Method = "vm"
	// MethodFolder copies the point's files into a folder.
	MethodFolder Method = "folder"
)

// ParseMethod accepts a method's name.
func ParseMethod(s string) (Method, error) {
	switch m := Method(s); m {
	case MethodOriginal, MethodVM, MethodFolder, MethodInstant:
		return m, nil
	}
	return "", fmt.Errorf("unknown recovery method %q (original, vm, folder or instant)", s)
}

// Error codes of refusals. They are stable: scripts and the API match
// them. The two DPM numbers keep their meaning.
const (
	// CodeOriginalGone: the VM (or its cluster HA resource) no longer
	// exists where the point says it ran; method 1 is impossible.
	CodeOriginalGone = "LB-32579"
	// CodeSharedVolumeRoot: the target is the root of a cluster shared
	// volume.
	CodeSharedVolumeRoot = "LB-32613"
	// CodePointUnusable: the point is missing or does not hold what the
	// method needs (a VM configuration, the disks it names).
	CodePointUnusable = "LB-40001"
	// CodeHostUnreachable: the target host does not answer.
	CodeHostUnreachable = "LB-40002"
	// CodeIdentityClash: the target host has a VM of that name or UUID.
	CodeIdentityClash = "LB-40003"
	// CodeNoHAManager: HA was asked for but no HA manager is configured.
	CodeNoHAManager = "LB-40004"
	// CodeTargetPath: the target folder cannot take the files (not
	// absolute, not a folder, files already there, not writable).
	CodeTargetPath = "LB-40005"
	// CodeDiskLayout: the original VM's disks no longer match the point.
	CodeDiskLayout = "LB-40006"
	// CodeNoSpace: the target file system lacks the space the restored
	// files need.
	CodeNoSpace = "LB-40007"
	// CodeConfigUnsupported: the configuration is not one this method
	// can define on the target (not libvirt domain XML).
	CodeConfigUnsupported = "LB-40008"
	// CodeNotRebuildable: a folder lacks what Rebuild needs.
	CodeNotRebuildable = "LB-40009"
	// CodeHAResourceExists: the HA manager already has that resource.
	CodeHAResourceExists = "LB-40010"
	// CodeVMNotFound: the VM a command names does not exist.
	CodeVMNotFound = "LB-40011"
	// CodeTapePlaintext: a copy to tape of an encrypted repository's point
	// was not allowed to hold the data in plaintext.
	CodeTapePlaintext = "LB-40012"
	// CodeVMBusy: an in-place recovery (method 1) was asked while a backup
	// of the same VM, or another in-place recovery of it, runs: it would
	// overwrite the disks that job reads or writes.
	CodeVMBusy = "LB-40013"
)

// PreflightError is a refusal: the request cannot be carried out, and
// nothing was changed.
type PreflightError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Advice  string `json:"advice,omitempty"`
}

func (e *PreflightError) Error() string {
	if e.Advice == "" {
		return e.Code + ": " + e.Message
	}
	return e.Code + ": " + e.Message + "; " + e.Advice
}

func refuse(code, advice, format string, args ...any) *PreflightError {
	return &PreflightError{Code: code, Message: fmt.Sprintf(format, args...), Advice: advice}
}

// AsPreflight returns the refusal inside err, if it is one.
func AsPreflight(err error) (*PreflightError, bool) {
	var pe *PreflightError
	ok := errors.As(err, &pe)
	return pe, ok
}

// HostUnreachable is the refusal for a target host that cannot be reached
// (a driver that does not open, an agent that is not enrolled).
func HostUnreachable(host string, err error) *PreflightError {
	return refuse(CodeHostUnreachable, "check that the host runs an enrolled agent (here: that the libvirt URI answers) and try again",
		"target host %s cannot be reached: %v", host, err)
}

// HA is what recovery needs from a cluster's HA manager (Pacemaker): a
// subset of cluster.HAManager, so any of those will do.
type HA interface {
	// Exists reports whether the cluster has a resource of that ID.
	Exists(ctx context.Context, id string) (bool, error)
	// AddVirtualDomain makes a libvirt domain a cluster resource.
	AddVirtualDomain(ctx context.Context, spec cluster.VirtualDomainSpec) error
}

var _ HA = cluster.HAManager(nil)

// HAUnmanager is optional: an HA manager that can stop watching a resource
// while method 1 stops and rewrites the VM (so the cluster does not
// restart it half-restored), and watch it again afterwards.
type HAUnmanager interface {
	SetManaged(ctx context.Context, id string, managed bool) error
}

// haLister and haWaiter are parts of cluster.HAManager that recovery uses
// when the manager has them: the resource's definition file, and waiting
// for a resource to run.
type haLister interface {
	Resources(ctx context.Context) ([]cluster.Resource, error)
}

type haWaiter interface {
	WaitStarted(ctx context.Context, id string, timeout time.Duration) error
}

// StateRestorer is optional for drivers: start a defined VM from a saved
// memory state held in a file (libvirt: virDomainRestoreFlags), with a
// configuration whose disk paths may differ from the saved one's.
type StateRestorer interface {
	RestoreFrom(ctx context.Context, statePath string, config []byte) error
}

// haSpec is the resource that makes vm highly available, its definition
// kept in config.
func (p *Plan) haSpec(config string) cluster.VirtualDomainSpec {
	spec := p.req.HAOptions
	spec.ID = p.HAResource
	if spec.ConfigPath == "" {
		spec.ConfigPath = config
	}
	if spec.HypervisorURI == "" && len(spec.NodeHypervisors) == 0 {
		spec.HypervisorURI = p.URI
	}
	return spec
}

// uriOf returns a driver's URI when it has one.
func uriOf(d hypervisor.Driver) string {
	if u, ok := d.(interface{ URI() string }); ok {
		return u.URI()
	}
	return ""
}

// Recovery runs recoveries from one repository.
type Recovery struct {
	Repo *repo.Repository
	// HA is the cluster's HA manager; nil when none is configured.
	HA HA
	// Progress receives bytes written out of the total while disks are
	// written.
	Progress func(done, total int64)
	// Log receives a line for each step Execute takes.
	Log func(msg string)
	// GracefulTimeout is how long method 1 waits for a guest to shut down
	// before powering it off; 0 means 60 s.
	GracefulTimeout time.Duration
}

func (rc *Recovery) logf(format string, args ...any) {
	if rc.Log != nil {
		rc.Log(fmt.Sprintf(format, args...))
	}
}

// Request asks for one recovery.
type Request struct {
	Method Method `json:"method"`
	// Point is the recovery point's ID.
	Point string `json:"point"`
	// Driver is the host: the VM's own host for MethodOriginal, the
	// target host for MethodVM; unused by MethodFolder.
	Driver hypervisor.Driver `json:"-"`
	// TargetHost names the target host as points record hosts (an
	// agent's name); "" asks the driver. MethodVM compares it with the
	// point's host to decide about saved state and chains.
	TargetHost string `json:"target_host,omitempty"`
	// Dir is the target folder (MethodVM, MethodFolder), as this process
	// and the target host see it.
	Dir string `json:"dir,omitempty"`
	// SharedVolumes are the roots of cluster shared volumes (from the
	// catalog); mount points of cluster file systems count too.
	SharedVolumes []string `json:"shared_volumes,omitempty"`

	// NewIdentity gives the recovered VM a new UUID, new MACs and a
	// name with a suffix (MethodVM).
	NewIdentity bool `json:"new_identity,omitempty"`
	// Name overrides the recovered VM's name (MethodVM, MethodRebuild).
	Name string `json:"name,omitempty"`
	// VM is the existing VM MethodMakeHA makes highly available, and
	// ConfigPath where its definition is kept for the HA manager ("":
	// beside its first disk).
	VM         string `json:"vm,omitempty"`
	ConfigPath string `json:"config_path,omitempty"`
	// HA registers the recovered VM with the HA manager (MethodVM).
	HA bool `json:"ha,omitempty"`
	// HAResource names the VM's HA resource; "" means the VM's name.
	HAResource string `json:"ha_resource,omitempty"`
	// HAOptions is the template of the resource recovery adds (node
	// constraints, migration settings, ForceStop for guests that ignore
	// ACPI); ID, ConfigPath and HypervisorURI are filled in when empty.
	HAOptions cluster.VirtualDomainSpec `json:"-"`
	// DiscardSavedState boots the VM cold even on its own host.
	DiscardSavedState bool `json:"discard_saved_state,omitempty"`
	// Chain is "" (merge differencing chains unless the target is the
	// source host), "keep" or "merge".
	Chain string `json:"chain,omitempty"`
	// FileMode is the mode of restored files; 0 means 0660 (the target
	// host's hypervisor user reaches them through their group, as on a
	// shared volume).
	FileMode os.FileMode `json:"file_mode,omitempty"`
	// With ChownFiles, UID and GID own restored files; without, they
	// keep what the file system gives (a setgid folder's group).
	UID, GID   int  `json:"-"`
	ChownFiles bool `json:"-"`
}

// Check is one preflight check and what it found.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// DiskStep is one disk a plan writes.
type DiskStep struct {
	// Target is the disk's name in the VM ("vda"), "" if unknown.
	Target string `json:"target,omitempty"`
	// File is the point's file.
	File string `json:"file"`
	// Path is where it is written (this process's view); Temp the
	// temporary name beside it (MethodOriginal).
	Path   string      `json:"path"`
	Temp   string      `json:"-"`
	Format disk.Format `json:"format"`
	// Merged says a differencing chain is flattened into this file.
	Merged bool  `json:"merged,omitempty"`
	Bytes  int64 `json:"bytes"`
	// Source is the disk's path as the VM's configuration names it on
	// the target host.
	Source string `json:"source,omitempty"`

	index int // the disk's place in the definition (MethodInstant)
}

// Plan is a checked request: what Execute will do.
type Plan struct {
	Method Method      `json:"method"`
	Point  *repo.Point `json:"-"`
	// PointID, VM and UUID name the point and the VM as it comes back.
	PointID string `json:"point"`
	VM      string `json:"vm"`
	UUID    string `json:"uuid,omitempty"`
	// Host is the target host's name; URI its hypervisor URI.
	Host string `json:"host,omitempty"`
	URI  string `json:"uri,omitempty"`
	Dir  string `json:"dir,omitempty"`

	Checks []Check `json:"checks"`
	// Notes are what the operator must know (saved state dropped, the
	// folder is final, the VM will be stopped).
	Notes []string   `json:"notes,omitempty"`
	Disks []DiskStep `json:"disks,omitempty"`

	// Decisions.
	WasState       hypervisor.State  `json:"state,omitempty"`
	KeepSavedState bool              `json:"keep_saved_state,omitempty"`
	MergeChains    bool              `json:"merge_chains,omitempty"`
	NewIdentity    bool              `json:"new_identity,omitempty"`
	MACs           map[string]string `json:"macs,omitempty"` // old → new
	HA             bool              `json:"ha,omitempty"`
	HAResource     string            `json:"ha_resource,omitempty"`

	req      Request
	config   []byte   // the configuration Execute defines (or copies)
	files    []string // point files a folder copy restores
	state    string   // the point's saved-state file, when kept
	oldRaw   []byte   // method 1: the VM's current definition (rollback)
	haConfig string   // method 1: the HA manager's definition file of the VM
	anc      string   // the target folder's nearest ancestor that existed
	summary  *vmconfig.VM
	cfgName  string // the point's configuration file
}

func (p *Plan) check(name string, ok bool, format string, args ...any) {
	p.Checks = append(p.Checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

func (p *Plan) note(format string, args ...any) {
	p.Notes = append(p.Notes, fmt.Sprintf(format, args...))
}

// Result says what Execute did.
type Result struct {
	Method Method `json:"method"`
	VM     string `json:"vm,omitempty"`
	UUID   string `json:"uuid,omitempty"`
	Host   string `json:"host,omitempty"`
	// Files maps point files to the files written.
	Files   map[string]string `json:"files"`
	Bytes   int64             `json:"bytes"`
	Running bool              `json:"running"`
	HA      bool              `json:"ha,omitempty"`
	Notes   []string          `json:"notes,omitempty"`
	Seconds float64           `json:"seconds"`
}

// Plan checks a request without changing anything. On a refusal it
// returns the plan so far (its checks) and a *PreflightError.
func (rc *Recovery) Plan(ctx context.Context, req Request) (*Plan, error) {
	p := &Plan{Method: req.Method, PointID: req.Point, req: req}
	var err error
	switch req.Method {
	case MethodOriginal:
		err = rc.planOriginal(ctx, p)
	case MethodVM:
		err = rc.planVM(ctx, p)
	case MethodFolder:
		err = rc.planFolder(ctx, p)
	case MethodRebuild:
		err = rc.planRebuild(ctx, p)
	case MethodMakeHA:
		err = rc.planMakeHA(ctx, p)
	case MethodInstant:
		err = rc.planInstant(ctx, p)
	default:
		return nil, fmt.Errorf("recovery: unknown method %q", req.Method)
	}
	if err != nil {
		if pe, ok := AsPreflight(err); ok {
			p.Checks = append(p.Checks, Check{Name: "verdict", OK: false, Detail: pe.Error()})
		}
		return p, err
	}
	return p, nil
}

// Execute carries out a plan that Plan returned without error.
func (rc *Recovery) Execute(ctx context.Context, p *Plan) (*Result, error) {
	if p == nil || p.config == nil {
		return nil, errors.New("recovery: execute needs a plan that passed its preflight")
	}
	for _, c := range p.Checks {
		if !c.OK && c.Name == "verdict" {
			return nil, errors.New("recovery: the plan was refused: " + c.Detail)
		}
	}
	if p.Method == MethodInstant {
		return nil, errors.New("recovery: an instant recovery is carried out by StartInstant, which keeps serving")
	}
	start := time.Now()
	var res *Result
	var err error
	switch p.Method {
	case MethodRebuild:
		res, err = rc.executeRebuild(ctx, p)
	case MethodMakeHA:
		res, err = rc.executeMakeHA(ctx, p)
	}
	if p.Method == MethodRebuild || p.Method == MethodMakeHA {
		if res != nil {
			res.Seconds = time.Since(start).Seconds()
		}
		return res, err
	}
	// The point's data must not be collected while it is read.
	lock, err := rc.Repo.Lock(ctx, false, "recover "+p.PointID)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock(context.WithoutCancel(ctx))
	switch p.Method {
	case MethodOriginal:
		res, err = rc.executeOriginal(ctx, p)
	case MethodVM:
		res, err = rc.executeVM(ctx, p)
	case MethodFolder:
		res, err = rc.executeFolder(ctx, p)
	default:
		return nil, fmt.Errorf("recovery: unknown method %q", p.Method)
	}
	if res != nil {
		res.Seconds = time.Since(start).Seconds()
	}
	return res, err
}

// ---- shared helpers ---------------------------------------------------------

// loadPoint loads the point or refuses.
func (rc *Recovery) loadPoint(ctx context.Context, p *Plan) error {
	if !repo.ValidPointID(p.PointID) {
		return refuse(CodePointUnusable, "list points with `lifeboat points`", "%q is not a point ID", p.PointID)
	}
	pt, err := rc.Repo.LoadPoint(ctx, p.PointID)
	if err != nil {
		return refuse(CodePointUnusable, "list points with `lifeboat points`", "point %s cannot be read: %v", p.PointID, err)
	}
	p.Point = pt
	p.check("point", true, "point %s of %s (%s, %s) from host %q", pt.ID, pt.Name, pt.Kind, pt.Time.Format(time.RFC3339), pt.Host)
	if len(pt.Config) > 0 {
		var vm vmconfig.VM
		if err := json.Unmarshal(pt.Config, &vm); err == nil {
			p.summary = &vm
		}
	}
	return nil
}

// configFile finds the point's hypervisor configuration: config.xml (a VM
// backup through a driver), else the one configuration file that is
// libvirt domain XML.
func configFile(pt *repo.Point) (repo.File, bool) {
	var cands []repo.File
	for _, f := range pt.Files {
		if f.Role != repo.RoleConfig {
			continue
		}
		if f.Path == "config.xml" {
			return f, true
		}
		if strings.HasSuffix(strings.ToLower(f.Path), ".xml") {
			cands = append(cands, f)
		}
	}
	if len(cands) == 1 {
		return cands[0], true
	}
	return repo.File{}, false
}

// maxConfig bounds a configuration file read into memory.
const maxConfig = 16 << 20

// readPointFile reads a small file of the point whole.
func (rc *Recovery) readPointFile(ctx context.Context, pt *repo.Point, f repo.File) ([]byte, error) {
	if f.Size > maxConfig {
		return nil, fmt.Errorf("point %s: %s is %d bytes, too large for a configuration", pt.ID, f.Path, f.Size)
	}
	img, err := rc.Repo.OpenFile(ctx, pt, f.Path)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	buf := make([]byte, img.Size())
	if _, err := img.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("point %s: read %s: %w", pt.ID, f.Path, err)
	}
	return buf, nil
}

// loadDomain reads and parses the point's libvirt configuration.
func (rc *Recovery) loadDomain(ctx context.Context, p *Plan) (*domainDoc, error) {
	f, ok := configFile(p.Point)
	if !ok {
		return nil, refuse(CodeConfigUnsupported, "recover its disks with method 3 (copy to a folder) and create the VM by hand",
			"point %s holds no libvirt domain configuration (config.xml)", p.Point.ID)
	}
	raw, err := rc.readPointFile(ctx, p.Point, f)
	if err != nil {
		return nil, err
	}
	doc, err := parseDomainXML(raw)
	if err != nil {
		return nil, refuse(CodeConfigUnsupported, "recover its disks with method 3 (copy to a folder) and create the VM by hand",
			"point %s: %s is not libvirt domain XML: %v", p.Point.ID, f.Path, err)
	}
	p.cfgName = f.Path
	p.check("configuration", true, "%s: VM %s, UUID %s, %d disk(s)", f.Path, doc.dom.Name, doc.dom.UUID, len(doc.disks()))
	return doc, nil
}

// allocated estimates the bytes a restored file occupies: its stored
// (non-hole) slots, and for a merged chain those of every layer.
func (rc *Recovery) allocated(ctx context.Context, pt *repo.Point, path string, merged bool) (int64, error) {
	var total int64
	for depth := 0; path != "" && depth < 64; depth++ {
		var f *repo.File
		for i := range pt.Files {
			if pt.Files[i].Path == path {
				f = &pt.Files[i]
			}
		}
		if f == nil {
			return 0, fmt.Errorf("point %s has no file %q", pt.ID, path)
		}
		id, err := repo.ParseID(f.Index)
		if err != nil {
			return 0, err
		}
		x, err := rc.Repo.LoadIndex(ctx, id)
		if err != nil {
			return 0, fmt.Errorf("point %s file %s: %w", pt.ID, path, err)
		}
		for _, s := range x.Slots {
			if !s.Hole {
				total += x.ChunkSize
			}
		}
		if !merged {
			break
		}
		path = f.Parent
	}
	return total, nil
}

// checkSpace refuses when a file system lacks room for need bytes (with
// 1% and 64 MiB to spare).
func checkSpace(p *Plan, dir string, need int64) error {
	free, err := freeBytes(dir)
	if err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	want := need + need/100 + 64<<20
	if free < want {
		return refuse(CodeNoSpace, "free space there or choose another folder",
			"%s has %s free; the restored files need about %s", dir, human(free), human(want))
	}
	p.check("space", true, "%s free in %s, about %s needed", human(free), dir, human(need))
	return nil
}

// existingAncestor returns dir or its nearest ancestor that exists.
func existingAncestor(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err == nil {
			if !fi.IsDir() {
				return "", fmt.Errorf("%s is not a folder", d)
			}
			return d, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		if d == filepath.Dir(d) {
			return "", err
		}
	}
}

// sharedFSTypes are file systems that make a mount point a cluster volume.
var sharedFSTypes = map[string]bool{
	"nfs": true, "nfs4": true, "cifs": true, "smb3": true, "gfs2": true, "ocfs2": true,
	"glusterfs": true, "fuse.glusterfs": true, "ceph": true, "fuse.ceph": true, "fuse.cephfs": true,
	"lustre": true, "gpfs": true, "beegfs": true,
}

// sharedRoot returns the shared volume whose root dir is, or "".
func sharedRoot(dir string, volumes []string, mountinfo string) string {
	dir = filepath.Clean(dir)
	fi, errDir := os.Stat(dir)
	for _, v := range volumes {
		if v == "" {
			continue
		}
		v = filepath.Clean(v)
		if v == dir {
			return v
		}
		if errDir == nil {
			if vi, err := os.Stat(v); err == nil && os.SameFile(fi, vi) {
				return v
			}
		}
	}
	vol := hypervisor.VolumeOf(mountinfo, dir)
	if vol.Mount == dir && sharedFSTypes[vol.FSType] {
		return vol.Mount
	}
	return ""
}

// checkDir runs the checks every folder target shares: an absolute path
// that is not the root of a shared volume, whose nearest existing
// ancestor is a writable folder. It returns that ancestor.
func checkDir(p *Plan, dir string, volumes []string) (string, error) {
	if dir == "" || !filepath.IsAbs(dir) {
		return "", refuse(CodeTargetPath, "give an absolute folder", "target folder %q is not an absolute path", dir)
	}
	if filepath.Clean(dir) != dir {
		return "", refuse(CodeTargetPath, "give the folder in its clean form", "target folder %q is not clean (use %s)", dir, filepath.Clean(dir))
	}
	if v := sharedRoot(dir, volumes, ""); v != "" {
		return "", refuse(CodeSharedVolumeRoot, "choose a folder on it", "%s is the root of shared volume %s: the root of a shared volume cannot hold a VM's files", dir, v)
	}
	p.check("shared volume", true, "%s is not the root of a shared volume", dir)
	anc, err := existingAncestor(dir)
	if err != nil {
		return "", refuse(CodeTargetPath, "choose a folder that exists or can be created", "target folder %s: %v", dir, err)
	}
	if err := writable(anc, true); err != nil {
		return "", refuse(CodeTargetPath, "choose a folder this process may write", "%s is not writable: %v", anc, err)
	}
	p.check("target folder", true, "%s (created under %s)", dir, anc)
	return anc, nil
}

// removeWritten removes files a failed recovery wrote, and the folders it
// created for them that are empty now.
func removeWritten(p *Plan, files []string) {
	for _, f := range files {
		os.Remove(f)
	}
	if p.anc == "" {
		return
	}
	for _, f := range files {
		for d := filepath.Dir(f); d != p.anc && strings.HasPrefix(d, p.anc+string(filepath.Separator)); d = filepath.Dir(d) {
			if os.Remove(d) != nil {
				break
			}
		}
	}
}

// checkFree refuses when any of the paths exists.
func checkFree(paths ...string) error {
	for _, q := range paths {
		if _, err := os.Lstat(q); err == nil {
			return refuse(CodeTargetPath, "choose an empty folder or remove the file", "%s already exists; a recovery never overwrites files in a target folder", q)
		}
	}
	return nil
}

// finishFile applies the plan's mode and owner to a restored file.
func finishFile(req Request, path string) error {
	mode := req.FileMode
	if mode == 0 {
		mode = 0o660
	}
	if err := os.Chmod(path, mode.Perm()); err != nil {
		return err
	}
	if req.ChownFiles {
		if err := os.Chown(path, req.UID, req.GID); err != nil {
			return err
		}
	}
	return nil
}

// writeFileAtomic writes a small file beside its final name, fsyncs and
// renames it.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	return writeAtomic(path, bytes.NewReader(data), mode)
}

// writeAtomic writes a new file whole: a temporary name beside it, fsync,
// rename, then the folder's fsync, so the name never shows a half file.
func writeAtomic(path string, r io.Reader, mode os.FileMode) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".lifeboat-"+randHex(6))
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// waitState polls a VM's state until want or the deadline.
func waitState(ctx context.Context, d hypervisor.Driver, vm string, want func(hypervisor.State) bool, timeout time.Duration) (hypervisor.State, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := vmState(ctx, d, vm)
		if err != nil {
			return "", err
		}
		if want(st) || time.Now().After(deadline) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// vmState returns a VM's state, or ErrNotFound.
func vmState(ctx context.Context, d hypervisor.Driver, vm string) (hypervisor.State, error) {
	info, err := findVM(ctx, d, vm)
	if err != nil {
		return "", err
	}
	return info.State, nil
}

func findVM(ctx context.Context, d hypervisor.Driver, vm string) (hypervisor.VMInfo, error) {
	list, err := d.List(ctx)
	if err != nil {
		return hypervisor.VMInfo{}, err
	}
	for _, v := range list {
		if v.Name == vm {
			return v, nil
		}
	}
	return hypervisor.VMInfo{}, fmt.Errorf("VM %q: %w", vm, hypervisor.ErrNotFound)
}

func isUp(st hypervisor.State) bool {
	return st == hypervisor.Running || st == hypervisor.Paused
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// newMAC returns a random MAC in QEMU's locally administered range.
func newMAC(taken map[string]bool) string {
	for {
		b := make([]byte, 3)
		rand.Read(b)
		m := fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
		if !taken[m] {
			taken[m] = true
			return m
		}
	}
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
