// Package libvirt is the hypervisor driver for libvirt with QEMU/KVM, in
// pure Go: it speaks libvirt's RPC protocol (github.com/digitalocean/
// go-libvirt) over the daemon's unix socket, parses XML with
// libvirt.org/go/libvirtxml, and reads online backups over NBD in pull mode
// (lifeboat/nbd).
//
// Online backups use virDomainBackupBegin in pull mode with a checkpoint
// (a persistent dirty bitmap in each qcow2 disk); an incremental exports
// the bitmap of the previous checkpoint as the NBD metadata context
// qemu:dirty-bitmap:backup-<disk>. Offline backups managed-save the VM and
// read its files.
//
// A daemon's paths are its own: a libvirtd in another mount namespace (a
// container, the lab's node0) sees files at other paths than this process.
// The driver finds the daemon's pid from the socket (SO_PEERCRED) and reads
// such files through /proc/<pid>/root when they are not the same file here.
package libvirt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/hypervisor"
	"lifeboat/vmconfig"
)

// Options say how to reach a libvirt daemon.
type Options struct {
	// URI is a local libvirt URI: qemu:///system or qemu:///session,
	// optionally with ?socket=PATH. Empty means qemu:///system.
	URI string
	// ScratchDir holds backup scratch files and NBD sockets, as the
	// daemon sees it; QEMU must be able to create files there. Empty
	// picks /var/tmp (system) or the daemon's XDG_RUNTIME_DIR (session).
	ScratchDir string
	// Root is the folder through which this process sees the daemon's
	// file system ("/" when they share it). Empty discovers it from the
	// daemon's pid.
	Root string
	// SaveDir is where the daemon keeps managed-save files, as it sees
	// it. Empty derives it from the mode (and the session daemon's
	// environment).
	SaveDir string
	// CheckpointPrefix prefixes the checkpoints this driver creates and
	// prunes; empty means "lifeboat-". Two independent backup chains of
	// one VM need different prefixes.
	CheckpointPrefix string
	// DialTimeout bounds connecting; 0 means 15 s.
	DialTimeout time.Duration
	// AgentTimeout bounds each guest-agent command of a backup other
	// than the freeze (ping, status, thaw); 0 means 5 s.
	AgentTimeout time.Duration
	// FreezeTimeout bounds the guest's filesystem freeze, its
	// application hooks included; 0 means 60 s. A guest not frozen by
	// then is backed up crash-consistent.
	FreezeTimeout time.Duration
	// ThawGuard, when set, starts a guard outside this process right
	// before a backup freezes a guest: the in-process thaws cannot cover
	// the process's own death (SIGKILL, a crash) while the guest is
	// frozen. Nil: no guard. See ThawGuardFunc.
	ThawGuard ThawGuardFunc
}

// Driver is a connection to one libvirt daemon.
type Driver struct {
	l       *golibvirt.Libvirt
	mode    string // "system" or "session"
	uri     string
	root    string // "" when the daemon shares our mount namespace
	mntinfo string // the daemon's mountinfo
	saveDir string
	cfgDir  string // the daemon's libvirt config folder ("/etc/libvirt")
	scratch string
	prefix  string

	agentTimeout  time.Duration
	freezeTimeout time.Duration
	thawGuard     ThawGuardFunc

	closeOnce sync.Once
}

var _ hypervisor.Driver = (*Driver)(nil)

// Open connects to the daemon named by opts.URI.
func Open(ctx context.Context, opts Options) (*Driver, error) {
	if opts.URI == "" {
		opts.URI = "qemu:///system"
	}
	u, err := url.Parse(opts.URI)
	if err != nil {
		return nil, fmt.Errorf("libvirt: bad URI %q: %w", opts.URI, err)
	}
	if u.Scheme != "qemu" && u.Scheme != "qemu+unix" {
		return nil, fmt.Errorf("libvirt: URI %q: only local qemu:// URIs are supported", opts.URI)
	}
	if u.Host != "" {
		return nil, fmt.Errorf("libvirt: URI %q: remote hosts are not supported; run an agent on the host", opts.URI)
	}
	mode := strings.TrimPrefix(u.Path, "/")
	if mode != "system" && mode != "session" {
		return nil, fmt.Errorf("libvirt: URI %q: path must be /system or /session", opts.URI)
	}
	sock := u.Query().Get("socket")
	if sock == "" {
		sock = defaultSocket(mode)
	}
	timeout := opts.DialTimeout
	if timeout == 0 {
		timeout = 15 * time.Second
	}
	dl := &dialer{path: sock, timeout: timeout}
	l := golibvirt.NewWithDialer(dl)
	err = callCtx(ctx, func() error { return l.ConnectToURI(golibvirt.ConnectURI("qemu:///" + mode)) }, func() { dl.close() })
	if err != nil {
		return nil, fmt.Errorf("libvirt: connect to %s: %w", opts.URI, err)
	}
	d := &Driver{l: l, mode: mode, uri: opts.URI, prefix: opts.CheckpointPrefix,
		agentTimeout: opts.AgentTimeout, freezeTimeout: opts.FreezeTimeout, thawGuard: opts.ThawGuard}
	if d.prefix == "" {
		d.prefix = "lifeboat-"
	}
	if d.agentTimeout <= 0 {
		d.agentTimeout = 5 * time.Second
	}
	if d.freezeTimeout <= 0 {
		d.freezeTimeout = 60 * time.Second
	}
	d.discover(dl.peer(), opts)
	return d, nil
}

func defaultSocket(mode string) string {
	if mode == "system" {
		return "/run/libvirt/libvirt-sock"
	}
	if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" {
		return filepath.Join(x, "libvirt", "libvirt-sock")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "libvirt", "libvirt-sock")
}

// discover works out where the daemon's files are.
func (d *Driver) discover(pid int, opts Options) {
	env := map[string]string{}
	if pid > 0 {
		env = procEnviron(pid)
		d.mntinfo = fmt.Sprintf("/proc/%d/mountinfo", pid)
		if opts.Root == "" && !sameMountNS(pid) {
			d.root = fmt.Sprintf("/proc/%d/root", pid)
		}
	}
	if opts.Root != "" && opts.Root != "/" {
		d.root = opts.Root
	}
	if d.mode == "system" {
		d.cfgDir = "/etc/libvirt"
		d.saveDir = "/var/lib/libvirt/qemu/save"
		d.scratch = "/var/tmp"
	} else {
		cfg := env["XDG_CONFIG_HOME"]
		if cfg == "" && env["HOME"] != "" {
			cfg = filepath.Join(env["HOME"], ".config")
		}
		if cfg != "" {
			d.cfgDir = filepath.Join(cfg, "libvirt")
			d.saveDir = filepath.Join(d.cfgDir, "qemu", "save")
		}
		d.scratch = env["XDG_RUNTIME_DIR"]
		if d.scratch == "" {
			d.scratch = "/tmp"
		}
	}
	if opts.SaveDir != "" {
		d.saveDir = opts.SaveDir
	}
	if opts.ScratchDir != "" {
		d.scratch = opts.ScratchDir
	}
}

// local maps a path as the daemon sees it to one this process can open:
// the path itself when it names the same file here, else the path under
// the daemon's root.
func (d *Driver) local(p string) string {
	if d.root == "" || p == "" {
		return p
	}
	alt := filepath.Join(d.root, p)
	a, errA := os.Stat(p)
	b, errB := os.Stat(alt)
	switch {
	case errA == nil && errB == nil && os.SameFile(a, b):
		return p
	case errB == nil:
		return alt
	case errA == nil:
		return p
	}
	// Neither exists (yet): a file the daemon will create, such as an NBD
	// socket: use the daemon's view unless its folder is the same here.
	if sameDir(filepath.Dir(p), filepath.Dir(alt)) {
		return p
	}
	return alt
}

func sameDir(a, b string) bool {
	x, errX := os.Stat(a)
	y, errY := os.Stat(b)
	return errX == nil && errY == nil && os.SameFile(x, y)
}

// Name implements hypervisor.Driver.
func (d *Driver) Name() string { return "libvirt" }

// URI is the URI the driver connected to.
func (d *Driver) URI() string { return d.uri }

// Host implements hypervisor.Driver.
func (d *Driver) Host(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	h, err := d.l.ConnectGetHostname()
	return h, d.wrap(err, "hostname")
}

// Close implements hypervisor.Driver.
func (d *Driver) Close() error {
	var err error
	d.closeOnce.Do(func() { err = d.l.Disconnect() })
	return err
}

func (d *Driver) wrap(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	msg := fmt.Sprintf(format, args...)
	if !d.l.IsConnected() {
		return fmt.Errorf("libvirt %s: %s: the connection to libvirtd is lost (%w)", d.uri, msg, err)
	}
	if golibvirt.IsNotFound(err) {
		return fmt.Errorf("libvirt %s: %s: %w: %v", d.uri, msg, hypervisor.ErrNotFound, err)
	}
	return fmt.Errorf("libvirt %s: %s: %w", d.uri, msg, err)
}

func (d *Driver) lookup(ctx context.Context, vm string) (golibvirt.Domain, error) {
	if err := ctx.Err(); err != nil {
		return golibvirt.Domain{}, err
	}
	dom, err := d.l.DomainLookupByName(vm)
	return dom, d.wrap(err, "VM %q", vm)
}

func (d *Driver) state(dom golibvirt.Domain) (hypervisor.State, error) {
	st, _, err := d.l.DomainGetState(dom, 0)
	if err != nil {
		return "", d.wrap(err, "state of %q", dom.Name)
	}
	switch golibvirt.DomainState(st) {
	case golibvirt.DomainRunning, golibvirt.DomainBlocked:
		return hypervisor.Running, nil
	case golibvirt.DomainPaused, golibvirt.DomainPmsuspended:
		return hypervisor.Paused, nil
	case golibvirt.DomainShutoff, golibvirt.DomainShutdown:
		n, err := d.l.DomainHasManagedSaveImage(dom, 0)
		if err == nil && n > 0 {
			return hypervisor.Saved, nil
		}
		return hypervisor.ShutOff, nil
	case golibvirt.DomainCrashed:
		return hypervisor.Crashed, nil
	}
	return hypervisor.Other, nil
}

func uuidString(u golibvirt.UUID) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// List implements hypervisor.Driver.
func (d *Driver) List(ctx context.Context) ([]hypervisor.VMInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	doms, _, err := d.l.ConnectListAllDomains(1, golibvirt.ConnectListDomainsActive|golibvirt.ConnectListDomainsInactive)
	if err != nil {
		return nil, d.wrap(err, "list VMs")
	}
	var out []hypervisor.VMInfo
	for _, dom := range doms {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		info, err := d.info(ctx, dom)
		if errors.Is(err, hypervisor.ErrNotFound) {
			continue // undefined while we listed
		}
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (d *Driver) info(ctx context.Context, dom golibvirt.Domain) (hypervisor.VMInfo, error) {
	st, err := d.state(dom)
	if err != nil {
		return hypervisor.VMInfo{}, err
	}
	x, err := d.l.DomainGetXMLDesc(dom, 0)
	if err != nil {
		return hypervisor.VMInfo{}, d.wrap(err, "XML of %q", dom.Name)
	}
	_, _, disks, err := parseDomain([]byte(x))
	if err != nil {
		return hypervisor.VMInfo{}, fmt.Errorf("libvirt: VM %q: %w", dom.Name, err)
	}
	info := hypervisor.VMInfo{Name: dom.Name, ID: uuidString(dom.UUID), State: st}
	if d.cfgDir != "" {
		p := filepath.Join(d.cfgDir, "qemu", dom.Name+".xml")
		if _, err := os.Stat(d.local(p)); err == nil {
			info.Files = append(info.Files, d.file(p, hypervisor.RoleConfig, ""))
		}
	}
	for _, dd := range disks {
		if !dd.backupable() {
			continue
		}
		info.Files = append(info.Files, d.diskFiles(ctx, dd, st)...)
	}
	if st == hypervisor.Saved && d.saveDir != "" {
		info.Files = append(info.Files, d.file(filepath.Join(d.saveDir, dom.Name+".save"), hypervisor.RoleSavedState, ""))
	}
	return info, nil
}

func (d *Driver) file(p, role string, f disk.Format) hypervisor.File {
	return hypervisor.File{Path: d.local(p), Role: role, Format: f, Volume: hypervisor.VolumeOf(d.mntinfo, p)}
}

// diskFiles lists a disk's file and its backing chain: from the live XML
// for a running VM, from the image headers of a stopped one.
func (d *Driver) diskFiles(ctx context.Context, dd diskDef, st hypervisor.State) []hypervisor.File {
	chain := dd.Chain
	if len(chain) == 0 && st != hypervisor.Running && st != hypervisor.Paused && dd.Format != disk.Raw {
		if img, paths, err := formats.OpenChain(ctx, d.local(dd.Path)); err == nil {
			img.Close()
			chain = paths[1:]
		}
	}
	top := d.file(dd.Path, hypervisor.RoleDisk, dd.Format)
	top.Target = dd.Target
	if len(chain) == 0 {
		return []hypervisor.File{top}
	}
	top.Role, top.Parent = hypervisor.RoleDifferencingDisk, d.local(chain[0])
	out := []hypervisor.File{top}
	for i, p := range chain {
		f := d.file(p, hypervisor.RoleDifferencingDisk, "")
		if i+1 < len(chain) {
			f.Parent = d.local(chain[i+1])
		} else {
			f.Role = hypervisor.RoleDisk
		}
		if fm, err := formats.Detect(f.Path); err == nil {
			f.Format = fm
		}
		out = append(out, f)
	}
	return out
}

// Config implements hypervisor.Driver. Raw is the persistent definition
// (what Define takes back), with secrets, so a recovery is faithful.
func (d *Driver) Config(ctx context.Context, vm string) (*hypervisor.Config, error) {
	dom, err := d.lookup(ctx, vm)
	if err != nil {
		return nil, err
	}
	x, err := d.l.DomainGetXMLDesc(dom, golibvirt.DomainXMLInactive|golibvirt.DomainXMLSecure)
	if err != nil {
		return nil, d.wrap(err, "XML of %q", vm)
	}
	_, sum, _, err := parseDomain([]byte(x))
	if err != nil {
		return nil, fmt.Errorf("libvirt: VM %q: %w", vm, err)
	}
	sum.Snapshots, sum.CurrentSnapshot, err = d.snapshots(dom)
	if err != nil {
		return nil, err
	}
	if n, err := d.l.DomainHasManagedSaveImage(dom, 0); err == nil && n > 0 {
		sum.SavedState = []string{dom.Name + ".save"}
	}
	return &hypervisor.Config{Format: ConfigFormat, Raw: []byte(x), Summary: sum}, nil
}

// snapshots returns the snapshot tree, oldest first, and the current one.
func (d *Driver) snapshots(dom golibvirt.Domain) ([]vmconfig.Snapshot, string, error) {
	snaps, _, err := d.l.DomainListAllSnapshots(dom, 1, 0)
	if err != nil {
		return nil, "", d.wrap(err, "snapshots of %q", dom.Name)
	}
	var out []vmconfig.Snapshot
	current := ""
	for _, sn := range snaps {
		x, err := d.l.DomainSnapshotGetXMLDesc(sn, 0)
		if err != nil {
			return nil, "", d.wrap(err, "snapshot %q of %q", sn.Name, dom.Name)
		}
		s, err := parseSnapshot(x)
		if err != nil {
			return nil, "", fmt.Errorf("libvirt: snapshot %q of %q: %w", sn.Name, dom.Name, err)
		}
		if cur, err := d.l.DomainSnapshotIsCurrent(sn, 0); err == nil && cur == 1 {
			current = s.ID
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Time.Equal(out[j].Time) {
			return out[i].Time.Before(out[j].Time)
		}
		return out[i].Name < out[j].Name
	})
	return out, current, nil
}

// Define implements hypervisor.Driver.
func (d *Driver) Define(ctx context.Context, raw []byte) (string, error) {
	if _, _, _, err := parseDomain(raw); err != nil {
		return "", fmt.Errorf("libvirt: define: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	dom, err := d.l.DomainDefineXMLFlags(string(raw), golibvirt.DomainDefineValidate)
	if err != nil {
		return "", d.wrap(err, "define")
	}
	return dom.Name, nil
}

// Start implements hypervisor.Driver.
func (d *Driver) Start(ctx context.Context, vm string) error {
	dom, err := d.lookup(ctx, vm)
	if err != nil {
		return err
	}
	return d.wrap(d.l.DomainCreate(dom), "start %q", vm)
}

// Restore implements hypervisor.Driver: starting a VM with a managed save
// resumes it from there.
func (d *Driver) Restore(ctx context.Context, vm string) error {
	dom, err := d.lookup(ctx, vm)
	if err != nil {
		return err
	}
	n, err := d.l.DomainHasManagedSaveImage(dom, 0)
	if err != nil {
		return d.wrap(err, "saved state of %q", vm)
	}
	if n == 0 {
		return fmt.Errorf("libvirt %s: restore %q: it has no saved state", d.uri, vm)
	}
	return d.wrap(d.l.DomainCreate(dom), "restore %q", vm)
}

// Shutdown implements hypervisor.Driver.
func (d *Driver) Shutdown(ctx context.Context, vm string) error {
	dom, err := d.lookup(ctx, vm)
	if err != nil {
		return err
	}
	return d.wrap(d.l.DomainShutdown(dom), "shut down %q", vm)
}

// Destroy implements hypervisor.Driver.
func (d *Driver) Destroy(ctx context.Context, vm string) error {
	dom, err := d.lookup(ctx, vm)
	if err != nil {
		return err
	}
	return d.wrap(d.l.DomainDestroy(dom), "destroy %q", vm)
}

// Undefine implements hypervisor.Driver. It keeps NVRAM files (firmware
// state belongs with the disks) and never touches disks.
func (d *Driver) Undefine(ctx context.Context, vm string) error {
	dom, err := d.lookup(ctx, vm)
	if err != nil {
		return err
	}
	flags := golibvirt.DomainUndefineManagedSave | golibvirt.DomainUndefineSnapshotsMetadata |
		golibvirt.DomainUndefineCheckpointsMetadata | golibvirt.DomainUndefineKeepNvram
	return d.wrap(d.l.DomainUndefineFlags(dom, flags), "undefine %q", vm)
}

// ManagedSave implements hypervisor.Driver.
func (d *Driver) ManagedSave(ctx context.Context, vm string) error {
	dom, err := d.lookup(ctx, vm)
	if err != nil {
		return err
	}
	return d.wrap(d.l.DomainManagedSave(dom, 0), "managed save of %q", vm)
}

// QEMUMonitor runs a QEMU monitor command (HMP when hmp is set, else QMP
// JSON) in a running VM. It is for tests and diagnostics: libvirt does not
// support changes made behind its back.
func (d *Driver) QEMUMonitor(ctx context.Context, vm, cmd string, hmp bool) (string, error) {
	dom, err := d.lookup(ctx, vm)
	if err != nil {
		return "", err
	}
	var flags uint32
	if hmp {
		flags = 1 // VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
	}
	out, err := d.l.QEMUDomainMonitorCommand(dom, cmd, flags)
	return out, d.wrap(err, "monitor command in %q", vm)
}

// callCtx runs f, calling cancel when ctx ends first (go-libvirt's calls
// take no context).
func callCtx(ctx context.Context, f func() error, cancel func()) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		cancel()
		<-done
		return ctx.Err()
	}
}

// dialer connects to the daemon's socket and remembers the connection, to
// learn the daemon's pid.
type dialer struct {
	path    string
	timeout time.Duration
	mu      sync.Mutex
	conn    net.Conn
}

func (dl *dialer) Dial() (net.Conn, error) {
	c, err := net.DialTimeout("unix", dl.path, dl.timeout)
	if err != nil {
		return nil, err
	}
	dl.mu.Lock()
	dl.conn = c
	dl.mu.Unlock()
	return c, nil
}

func (dl *dialer) close() {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	if dl.conn != nil {
		dl.conn.Close()
	}
}

func (dl *dialer) peer() int {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	if dl.conn == nil {
		return 0
	}
	return peerPID(dl.conn)
}
