package libvirt

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/hypervisor"
	"lifeboat/nbd"
)

// dirtyWindow is how much of a disk one dirty-bitmap query covers.
const dirtyWindow = 1 << 30

// Backup implements hypervisor.Driver. A running VM is backed up online
// (pull mode over NBD) unless opts.Offline; a stopped one from its files.
func (d *Driver) Backup(ctx context.Context, vm string, opts hypervisor.BackupOptions) (hypervisor.BackupSession, error) {
	dom, err := d.lookup(ctx, vm)
	if err != nil {
		return nil, err
	}
	cfg, err := d.Config(ctx, vm)
	if err != nil {
		return nil, err
	}
	st, err := d.state(dom)
	if err != nil {
		return nil, err
	}
	online := st == hypervisor.Running || st == hypervisor.Paused
	if online && !opts.Offline {
		return d.backupOnline(ctx, dom, cfg, opts)
	}
	return d.backupOffline(ctx, dom, cfg, opts, online)
}

// session is one backup in progress.
type session struct {
	d           *Driver
	dom         golibvirt.Domain
	cfg         *hypervisor.Config
	consistency string
	disks       []hypervisor.BackupDisk
	files       []hypervisor.File
	checkpoint  string
	incremental bool
	fallback    string
	notes       []string

	// temp are the NBD socket and scratch files of the job, as the
	// daemon sees them; End removes what QEMU leaves behind.
	temp []string

	// freeze is the guest's filesystem freeze, if one was asked for;
	// End waits for a thaw still in progress.
	freeze *guestFreeze

	mu        sync.Mutex
	jobActive bool // a pull-mode backup job runs
	resume    bool // offline: start the VM again at End
	committed bool
	ended     bool
	endErr    error
}

func (s *session) Consistency() string            { return s.consistency }
func (s *session) Config() *hypervisor.Config     { return s.cfg }
func (s *session) Disks() []hypervisor.BackupDisk { return s.disks }
func (s *session) Files() []hypervisor.File       { return s.files }
func (s *session) Checkpoint() string             { return s.checkpoint }
func (s *session) Incremental() bool              { return s.incremental }
func (s *session) Fallback() string               { return s.fallback }
func (s *session) Notes() []string                { return s.notes }

// Commit implements hypervisor.BackupSession.
func (s *session) Commit(ctx context.Context) error {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return fmt.Errorf("libvirt: commit of a backup of %q that has ended", s.dom.Name)
	}
	s.committed = true
	s.mu.Unlock()
	if err := s.End(ctx); err != nil {
		return err
	}
	if s.checkpoint == "" {
		return nil
	}
	return s.d.pruneCheckpoints(s.dom, s.checkpoint)
}

// End implements hypervisor.BackupSession.
func (s *session) End(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return s.endErr
	}
	s.ended = true
	var errs []error
	for _, bd := range s.disks {
		if bd.Image != nil {
			bd.Image.Close()
		}
	}
	if s.jobActive {
		// Ending a pull-mode job is aborting it; a job already gone
		// (the VM stopped) is not an error.
		if err := s.d.l.DomainAbortJob(s.dom); err != nil && !noJob(err) {
			errs = append(errs, s.d.wrap(err, "end backup job of %q", s.dom.Name))
		}
		s.jobActive = false
	}
	s.d.removeTemp(s.temp)
	if s.checkpoint != "" && !s.committed {
		if err := s.d.deleteCheckpoint(s.dom, s.checkpoint); err != nil {
			errs = append(errs, err)
		}
		s.checkpoint = ""
	}
	if s.freeze != nil {
		s.freeze.wait()
	}
	if s.resume {
		if err := s.d.l.DomainCreate(s.dom); err != nil {
			errs = append(errs, s.d.wrap(err, "resume %q after an offline backup", s.dom.Name))
		}
		s.resume = false
	}
	s.endErr = errors.Join(errs...)
	return s.endErr
}

// noJob says the error is libvirt's "no job is active".
func noJob(err error) bool {
	var e golibvirt.Error
	if errors.As(err, &e) {
		return golibvirt.ErrorNumber(e.Code) == golibvirt.ErrOperationInvalid && strings.Contains(e.Message, "no job")
	}
	return false
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (d *Driver) newCheckpointName() string {
	return d.prefix + time.Now().UTC().Format("20060102T150405Z") + "-" + randomHex(3)
}

// backupOnline runs a pull-mode backup with a new checkpoint.
func (d *Driver) backupOnline(ctx context.Context, dom golibvirt.Domain, cfg *hypervisor.Config, opts hypervisor.BackupOptions) (hypervisor.BackupSession, error) {
	if err := d.abortStaleJob(dom); err != nil {
		return nil, err
	}
	live, err := d.l.DomainGetXMLDesc(dom, 0)
	if err != nil {
		return nil, d.wrap(err, "XML of %q", dom.Name)
	}
	_, _, all, err := parseDomain([]byte(live))
	if err != nil {
		return nil, fmt.Errorf("libvirt: VM %q: %w", dom.Name, err)
	}
	var disks []diskDef
	for _, dd := range all {
		if dd.backupable() {
			disks = append(disks, dd)
		}
	}
	if len(disks) == 0 {
		return nil, fmt.Errorf("libvirt: VM %q has no disk to back up", dom.Name)
	}

	// Checkpoints need a persistent dirty bitmap, which only qcow2 has.
	cpName := opts.CheckpointName
	if cpName == "" {
		cpName = d.newCheckpointName()
	}
	var bitmapped []string
	for _, dd := range disks {
		if dd.Format == disk.QCOW2 {
			bitmapped = append(bitmapped, dd.Target)
		}
	}
	if len(bitmapped) == 0 {
		cpName = ""
	}

	// Which disks can be incremental, and from where.
	incr := map[string]bool{}
	var notes, chain []string // chain: why an incremental is not possible
	base := ""
	if opts.Incremental {
		var why string
		base, why = d.resolveBase(dom, opts.Since)
		if why != "" {
			chain = append(chain, why)
		} else {
			have, err := d.checkpointDisks(dom, base)
			if err != nil {
				chain = append(chain, err.Error())
				base = ""
			}
			for _, dd := range disks {
				if base == "" {
					break
				}
				if have[dd.Target] {
					incr[dd.Target] = true
				} else {
					chain = append(chain, fmt.Sprintf("disk %s has no bitmap in checkpoint %s", dd.Target, base))
				}
			}
		}
	}

	tag := randomHex(4)
	sock := filepath.Join(d.scratch, "lifeboat-"+tag+".sock")
	scratch := func(target string) string {
		return filepath.Join(d.scratch, "lifeboat-"+tag+"-"+target+".qcow2")
	}

	consistency := hypervisor.Crash
	var fz *guestFreeze
	if opts.Quiesce && ctx.Err() == nil {
		fz = d.freeze(ctx, dom)
		notes = append(notes, fz.notes...)
	}
	// From here on a guest this backup froze, or may have frozen (a freeze
	// that timed out can still take effect), is thawed on every path, a
	// failure or cancellation included.
	thawDone := false
	defer func() {
		if fz != nil && !thawDone {
			fz.thaw()
			fz.wait()
		}
	}()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("libvirt: backup of %q: %w", dom.Name, err)
	}
	err = d.beginBackup(dom, all, disks, incr, base, sock, scratch, cpName, bitmapped)
	if err != nil && len(incr) > 0 {
		// A broken chain shows here (a bitmap lost from the image, a
		// checkpoint whose bitmap QEMU does not have): read in full.
		chain = append(chain, fmt.Sprintf("incremental backup from checkpoint %s failed: %v", base, err))
		incr = map[string]bool{}
		err = d.beginBackup(dom, all, disks, incr, base, sock, scratch, cpName, bitmapped)
	}
	if fz != nil {
		thawDone = true
		if terr := fz.thaw(); terr != nil {
			notes = append(notes, terr.Error())
		}
		if fz.frozen && err == nil {
			consistency = hypervisor.Application
		}
	}
	if err != nil {
		if fz != nil {
			fz.wait()
		}
		return nil, d.wrap(err, "begin backup of %q", dom.Name)
	}

	if len(chain) > 0 {
		notes = append(chain, notes...)
	}
	s := &session{d: d, dom: dom, cfg: cfg, consistency: consistency, checkpoint: cpName, jobActive: true, notes: notes, freeze: fz}
	s.temp = append(s.temp, sock)
	for _, dd := range disks {
		s.temp = append(s.temp, scratch(dd.Target))
	}
	if opts.Incremental && len(incr) < len(disks) {
		s.fallback = strings.Join(chain, "; ")
		if s.fallback == "" {
			s.fallback = "incremental backup not possible"
		}
	}
	if err := s.openExports(ctx, disks, incr); err != nil {
		s.End(context.WithoutCancel(ctx))
		return nil, err
	}
	s.incremental = len(incr) == len(disks)
	return s, nil
}

// beginBackup starts the pull-mode job and creates the checkpoint.
func (d *Driver) beginBackup(dom golibvirt.Domain, all, disks []diskDef, incr map[string]bool, base string,
	sock string, scratch func(string) string, cpName string, bitmapped []string) error {
	in := map[string]bool{}
	for _, dd := range disks {
		in[dd.Target] = true
	}
	pull := &libvirtxml.DomainBackupPullDisks{}
	for _, dd := range all {
		if dd.Target == "" {
			continue
		}
		if !in[dd.Target] {
			pull.Disks = append(pull.Disks, libvirtxml.DomainBackupPullDisk{Name: dd.Target, Backup: "no"})
			continue
		}
		pd := libvirtxml.DomainBackupPullDisk{
			Name: dd.Target, Backup: "yes", BackupMode: "full",
			Driver:  &libvirtxml.DomainBackupDiskDriver{Type: "qcow2"},
			Scratch: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: scratch(dd.Target)}},
		}
		if incr[dd.Target] {
			pd.BackupMode = "incremental"
		}
		pull.Disks = append(pull.Disks, pd)
	}
	b := libvirtxml.DomainBackup{Pull: &libvirtxml.DomainBackupPull{
		Server: &libvirtxml.DomainBackupPullServer{UNIX: &libvirtxml.DomainBackupPullServerUNIX{Socket: sock}},
		Disks:  pull,
	}}
	// One base for every incremental disk; disks not in incr are marked
	// full above.
	if len(incr) > 0 {
		b.Incremental = base
	}
	bx, err := b.Marshal()
	if err != nil {
		return err
	}
	var cpx golibvirt.OptString
	if cpName != "" {
		cp := libvirtxml.DomainCheckpoint{Name: cpName, Description: "Lifeboat backup checkpoint",
			Disks: &libvirtxml.DomainCheckpointDisks{}}
		has := map[string]bool{}
		for _, t := range bitmapped {
			has[t] = true
		}
		for _, dd := range all {
			if dd.Target == "" {
				continue
			}
			mode := "no"
			if has[dd.Target] {
				mode = "bitmap"
			}
			cp.Disks.Disks = append(cp.Disks.Disks, libvirtxml.DomainCheckpointDisk{Name: dd.Target, Checkpoint: mode})
		}
		x, err := cp.Marshal()
		if err != nil {
			return err
		}
		cpx = golibvirt.OptString{x}
	}
	return d.l.DomainBackupBegin(dom, bx, cpx, 0)
}

// resolveBase checks the checkpoint an incremental starts from. why says
// what is missing.
func (d *Driver) resolveBase(dom golibvirt.Domain, since string) (base, why string) {
	if since == "" {
		return "", "no previous checkpoint given"
	}
	if _, err := d.l.DomainCheckpointLookupByName(dom, since, 0); err != nil {
		return "", fmt.Sprintf("checkpoint %s not found: %v", since, err)
	}
	return since, ""
}

// checkpoints lists a VM's checkpoints with their XML.
func (d *Driver) checkpoints(dom golibvirt.Domain) ([]libvirtxml.DomainCheckpoint, error) {
	list, _, err := d.l.DomainListAllCheckpoints(dom, 1, 0)
	if err != nil {
		return nil, d.wrap(err, "checkpoints of %q", dom.Name)
	}
	var out []libvirtxml.DomainCheckpoint
	for _, c := range list {
		x, err := d.l.DomainCheckpointGetXMLDesc(c, uint32(golibvirt.DomainCheckpointXMLNoDomain))
		if err != nil {
			return nil, d.wrap(err, "checkpoint %q of %q", c.Name, dom.Name)
		}
		var cp libvirtxml.DomainCheckpoint
		if err := cp.Unmarshal(x); err != nil {
			return nil, fmt.Errorf("libvirt: checkpoint %q of %q: %w", c.Name, dom.Name, err)
		}
		out = append(out, cp)
	}
	return out, nil
}

// checkpointDisks says which disks a checkpoint has a bitmap for.
func (d *Driver) checkpointDisks(dom golibvirt.Domain, name string) (map[string]bool, error) {
	c, err := d.l.DomainCheckpointLookupByName(dom, name, 0)
	if err != nil {
		return nil, d.wrap(err, "checkpoint %q of %q", name, dom.Name)
	}
	x, err := d.l.DomainCheckpointGetXMLDesc(c, uint32(golibvirt.DomainCheckpointXMLNoDomain))
	if err != nil {
		return nil, d.wrap(err, "checkpoint %q of %q", name, dom.Name)
	}
	var cp libvirtxml.DomainCheckpoint
	if err := cp.Unmarshal(x); err != nil {
		return nil, fmt.Errorf("libvirt: checkpoint %q of %q: %w", name, dom.Name, err)
	}
	out := map[string]bool{}
	if cp.Disks != nil {
		for _, dk := range cp.Disks.Disks {
			if dk.Checkpoint == "bitmap" {
				out[dk.Name] = true
			}
		}
	}
	return out, nil
}

func (d *Driver) deleteCheckpoint(dom golibvirt.Domain, name string) error {
	c, err := d.l.DomainCheckpointLookupByName(dom, name, 0)
	if err != nil {
		var e golibvirt.Error
		if errors.As(err, &e) && golibvirt.ErrorNumber(e.Code) == golibvirt.ErrNoDomainCheckpoint {
			return nil
		}
		return d.wrap(err, "checkpoint %q of %q", name, dom.Name)
	}
	err = d.l.DomainCheckpointDelete(c, 0)
	if err != nil {
		// A checkpoint whose bitmap is gone from the image cannot be
		// deleted normally ("bitmap not found in backing chain"): drop
		// libvirt's record of it.
		if err2 := d.l.DomainCheckpointDelete(c, golibvirt.DomainCheckpointDeleteMetadataOnly); err2 == nil {
			return nil
		}
	}
	return d.wrap(err, "delete checkpoint %q of %q", name, dom.Name)
}

// pruneCheckpoints deletes the driver's checkpoints other than keep: the
// next incremental starts from keep, and every active bitmap costs QEMU
// work on each guest write.
func (d *Driver) pruneCheckpoints(dom golibvirt.Domain, keep string) error {
	cps, err := d.checkpoints(dom)
	if err != nil {
		return err
	}
	var errs []error
	for _, cp := range cps {
		if cp.Name != keep && strings.HasPrefix(cp.Name, d.prefix) {
			if err := d.deleteCheckpoint(dom, cp.Name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// agentCommand sends one guest-agent command with a bounded wait: a
// hung agent must not hang a backup. (virDomainFSFreeze and FSThaw wait
// as long as the domain's agent timeout, which is "forever" unless
// someone set it; a raw agent command takes a timeout of its own, at the
// price of libvirt marking the domain tainted "custom-ga-command" in its
// log.)
func (d *Driver) agentCommand(dom golibvirt.Domain, cmd string, timeout time.Duration) (string, error) {
	secs := int32((timeout + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	r, err := d.l.QEMUDomainAgentCommand(dom, cmd, secs, 0)
	if err != nil {
		return "", err
	}
	if len(r) == 0 {
		return "", nil
	}
	return r[0], nil
}

// guestFreeze is one backup's filesystem freeze through the guest agent
// (guest-fsfreeze-freeze before backup-begin, guest-fsfreeze-thaw after:
// libvirt 9's backup-begin has no quiesce flag).
type guestFreeze struct {
	d   *Driver
	dom golibvirt.Domain
	// frozen: the agent confirmed the freeze.
	frozen bool
	// uncertain: the freeze (or the thaw) did not answer in time, so the
	// agent may still freeze, or stay frozen; a watcher then thaws the
	// guest as soon as the agent answers again.
	uncertain bool
	// leftFrozen: the guest was found frozen by an earlier freeze and
	// could not be thawed.
	leftFrozen bool
	notes      []string

	// guard is the thaw guard's release, nil without a guard; called
	// once, with whether the guest is known to be thawed.
	guard     func(thawed bool)
	guardOnce sync.Once

	once    sync.Once
	watcher chan struct{} // closed when the watcher is done; nil if none
}

const (
	agentPing   = `{"execute":"guest-ping"}`
	agentStatus = `{"execute":"guest-fsfreeze-status"}`
	agentFreeze = `{"execute":"guest-fsfreeze-freeze"}`
	agentThaw   = `{"execute":"guest-fsfreeze-thaw"}`
)

// freeze asks the guest agent to freeze the guest's filesystems, waiting
// at most the driver's freeze timeout. Without an agent, or when the freeze
// fails, the backup goes on crash-consistent and the notes say why.
func (d *Driver) freeze(ctx context.Context, dom golibvirt.Domain) *guestFreeze {
	f := &guestFreeze{d: d, dom: dom}
	if _, err := d.agentCommand(dom, agentPing, d.agentTimeout); err != nil {
		f.notes = append(f.notes, fmt.Sprintf("no guest agent (%v): crash-consistent", err))
		return f
	}
	if d.thawGuard != nil {
		release, err := d.thawGuard(ctx, d.uri, dom.Name, d.freezeTimeout)
		if errors.Is(err, ErrGuardBusy) {
			f.notes = append(f.notes, fmt.Sprintf("not frozen: %v (an earlier backup died while the guest was frozen): crash-consistent", err))
			return f
		}
		if err != nil {
			f.notes = append(f.notes, fmt.Sprintf("no thaw guard (%v): if this process dies while the guest is frozen, the guest stays frozen until its next backup", err))
		} else {
			f.guard = release
		}
	}
	// A freeze that an earlier backup could not undo (its process killed
	// while the guest was frozen, an application hook that finished after
	// the freeze timed out) makes this freeze fail and keeps the guest
	// frozen: thaw it first.
	if st, err := d.agentCommand(dom, agentStatus, d.agentTimeout); err == nil && strings.Contains(st, `"frozen"`) {
		if err := d.thawNow(dom); err != nil {
			f.notes = append(f.notes, fmt.Sprintf("the guest's filesystems were found frozen and could not be thawed (%v): crash-consistent", err))
			f.leftFrozen = true
			return f
		}
		f.notes = append(f.notes, "the guest's filesystems were found frozen by an earlier freeze that was not undone: thawed them first")
	}
	if _, err := d.agentCommand(dom, agentFreeze, d.freezeTimeout); err != nil {
		f.uncertain = true
		f.notes = append(f.notes, fmt.Sprintf("guest filesystem freeze failed or took longer than %v (%v): crash-consistent", d.freezeTimeout, err))
		return f
	}
	f.frozen = true
	return f
}

// thawNow thaws the guest's filesystems, trying three times.
func (d *Driver) thawNow(dom golibvirt.Domain) error {
	var err error
	for i := 0; i < 3; i++ {
		if _, err = d.agentCommand(dom, agentThaw, d.agentTimeout); err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return d.wrap(err, "thaw guest filesystems of %q", dom.Name)
}

// thaw undoes the freeze. A confirmed freeze is thawed at once; when that
// fails, or the freeze's outcome is unknown, a watcher thaws the guest as
// soon as its agent answers, for up to the freeze timeout (at least
// watchMin); wait waits for it. The error is for the point's notes.
//
// What no code in this process can cover: the process killed (SIGKILL)
// while the guest is frozen or the freeze runs; libvirtd still delivers
// the freeze. The thaw guard (Options.ThawGuard), told here whether the
// guest is known thawed, covers it; without one the next backup of the
// VM finds the guest frozen and thaws it first.
func (f *guestFreeze) thaw() error {
	var err error
	f.once.Do(func() {
		if f.frozen {
			if err = f.d.thawNow(f.dom); err == nil {
				f.releaseGuard(true)
				return
			}
			f.uncertain = true
		}
		if f.uncertain {
			f.watcher = make(chan struct{})
			go f.watch(time.Now().Add(max(f.d.freezeTimeout, watchMin)))
			return
		}
		f.releaseGuard(!f.leftFrozen)
	})
	return err
}

// releaseGuard lets the thaw guard go: with thawed, it exits; without,
// it goes on trying to thaw the guest, as if this process had died.
func (f *guestFreeze) releaseGuard(thawed bool) {
	f.guardOnce.Do(func() {
		if f.guard != nil {
			f.guard(thawed)
		}
	})
}

// watchMin is the least time the watcher waits for a busy agent: libvirt
// 9 holds each agent command for up to 5 s of guest-sync while the agent
// still runs a hook, whatever the command's own timeout.
const watchMin = 10 * time.Second

// watch polls the agent until it answers guest-fsfreeze-status (a hung
// freeze has then finished one way or the other), thaws the guest if it
// is frozen, and gives up at the deadline.
func (f *guestFreeze) watch(deadline time.Time) {
	defer close(f.watcher)
	for {
		st, err := f.d.agentCommand(f.dom, agentStatus, time.Second)
		if err == nil {
			thawed := true
			if strings.Contains(st, `"frozen"`) {
				thawed = f.d.thawNow(f.dom) == nil
			}
			f.releaseGuard(thawed)
			return
		}
		if time.Now().After(deadline) {
			f.releaseGuard(false)
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// wait waits for the watcher, if any.
func (f *guestFreeze) wait() {
	if f.watcher != nil {
		<-f.watcher
	}
}

// openExports connects to each disk's NBD export and reads the dirty
// bitmaps of incremental disks.
func (s *session) openExports(ctx context.Context, disks []diskDef, incr map[string]bool) error {
	d := s.d
	x, err := d.l.DomainBackupGetXMLDesc(s.dom, 0)
	if err != nil {
		return d.wrap(err, "backup job of %q", s.dom.Name)
	}
	var b libvirtxml.DomainBackup
	if err := b.Unmarshal(x); err != nil {
		return fmt.Errorf("libvirt: backup XML of %q: %w", s.dom.Name, err)
	}
	if b.Pull == nil || b.Pull.Server == nil || b.Pull.Server.UNIX == nil || b.Pull.Disks == nil {
		return fmt.Errorf("libvirt: backup job of %q is not a pull-mode job on a unix socket", s.dom.Name)
	}
	sock := d.local(b.Pull.Server.UNIX.Socket)
	exports := map[string]libvirtxml.DomainBackupPullDisk{}
	for _, pd := range b.Pull.Disks.Disks {
		exports[pd.Name] = pd
	}
	for _, dd := range disks {
		pd, ok := exports[dd.Target]
		if !ok || pd.Backup == "no" {
			return fmt.Errorf("libvirt: backup job of %q does not export disk %s", s.dom.Name, dd.Target)
		}
		name := pd.ExportName
		if name == "" {
			name = dd.Target
		}
		opts := nbd.Options{Export: name, Timeout: 2 * time.Minute}
		bitmap := ""
		if incr[dd.Target] {
			bitmap = pd.ExportBitmap
			if bitmap == "" {
				bitmap = "backup-" + dd.Target
			}
			opts.MetaContexts = []string{nbd.DirtyBitmapContext(bitmap)}
		}
		c, err := nbd.Dial(ctx, "unix", sock, opts)
		if err != nil {
			return fmt.Errorf("libvirt: backup of %q, disk %s: %w", s.dom.Name, dd.Target, err)
		}
		bd := hypervisor.BackupDisk{Target: dd.Target, Path: d.local(dd.Path), Format: dd.Format, Image: nbd.NewImage(c)}
		s.disks = append(s.disks, bd)
		if bitmap != "" {
			for off := int64(0); off < c.Size(); off += dirtyWindow {
				ext, err := c.Dirty(ctx, bitmap, off, min(dirtyWindow, c.Size()-off))
				if err != nil {
					return fmt.Errorf("libvirt: backup of %q, disk %s: dirty bitmap: %w", s.dom.Name, dd.Target, err)
				}
				for _, e := range ext {
					bd.Changed = disk.AppendExtent(bd.Changed, e)
				}
			}
			bd.ChangedKnown = true
			s.disks[len(s.disks)-1] = bd
		}
	}
	return nil
}

// backupOffline reads a stopped VM's files; a running one is managed-saved
// first and resumed at End.
func (d *Driver) backupOffline(ctx context.Context, dom golibvirt.Domain, cfg *hypervisor.Config, opts hypervisor.BackupOptions, running bool) (hypervisor.BackupSession, error) {
	s := &session{d: d, dom: dom, cfg: cfg, consistency: hypervisor.Offline}
	if opts.Incremental {
		s.fallback = "offline backup: no change map, read in full"
		s.notes = append(s.notes, s.fallback)
	}
	if running {
		s.notes = append(s.notes, "saved with managed save and resumed after the backup")
	}
	if running {
		if err := d.l.DomainManagedSave(dom, 0); err != nil {
			return nil, d.wrap(err, "managed save of %q", dom.Name)
		}
		s.resume = true
	}
	fail := func(err error) (hypervisor.BackupSession, error) {
		s.End(context.WithoutCancel(ctx))
		return nil, err
	}
	// Never read a running VM's files.
	st, err := d.state(dom)
	if err != nil {
		return fail(err)
	}
	if st != hypervisor.ShutOff && st != hypervisor.Saved {
		return fail(fmt.Errorf("libvirt: VM %q is %s, not stopped: its files cannot be read", dom.Name, st))
	}
	x, err := d.l.DomainGetXMLDesc(dom, 0)
	if err != nil {
		return fail(d.wrap(err, "XML of %q", dom.Name))
	}
	_, _, disks, err := parseDomain([]byte(x))
	if err != nil {
		return fail(fmt.Errorf("libvirt: VM %q: %w", dom.Name, err))
	}
	for _, dd := range disks {
		if !dd.backupable() {
			continue
		}
		p := d.local(dd.Path)
		var img disk.Image
		if dd.Format == disk.Raw || dd.Type == "block" {
			img, err = formats.OpenAs(ctx, p, disk.Raw)
		} else {
			img, _, err = formats.OpenChain(ctx, p)
		}
		if err != nil {
			return fail(fmt.Errorf("libvirt: offline backup of %q, disk %s: %w", dom.Name, dd.Target, err))
		}
		s.disks = append(s.disks, hypervisor.BackupDisk{Target: dd.Target, Path: p, Format: img.Format(), Image: img})
	}
	if len(s.disks) == 0 {
		return fail(fmt.Errorf("libvirt: VM %q has no disk to back up", dom.Name))
	}
	if st == hypervisor.Saved {
		if d.saveDir == "" {
			return fail(fmt.Errorf("libvirt: VM %q has a saved state but the daemon's save folder is unknown (set Options.SaveDir)", dom.Name))
		}
		f := d.file(filepath.Join(d.saveDir, dom.Name+".save"), hypervisor.RoleSavedState, "")
		s.files = append(s.files, f)
	}
	return s, nil
}

// abortStaleJob ends a pull-mode backup job that an earlier Lifeboat
// session left behind (the agent or libvirtd died before End): QEMU and
// libvirt keep such a job, and its export, until someone aborts it. Its
// checkpoint is never committed and goes at the next Commit's pruning.
func (d *Driver) abortStaleJob(dom golibvirt.Domain) error {
	x, err := d.l.DomainBackupGetXMLDesc(dom, 0)
	if err != nil {
		return nil // no backup job
	}
	var b libvirtxml.DomainBackup
	if b.Unmarshal(x) != nil || b.Pull == nil || b.Pull.Server == nil || b.Pull.Server.UNIX == nil ||
		!strings.HasPrefix(filepath.Base(b.Pull.Server.UNIX.Socket), "lifeboat-") {
		return fmt.Errorf("libvirt: VM %q has a backup job that Lifeboat did not start; end it first (virsh domjobabort)", dom.Name)
	}
	if err := d.l.DomainAbortJob(dom); err != nil && !noJob(err) {
		return d.wrap(err, "end a stale backup job of %q", dom.Name)
	}
	temp := []string{b.Pull.Server.UNIX.Socket}
	if b.Pull.Disks != nil {
		for _, pd := range b.Pull.Disks.Disks {
			if pd.Scratch != nil && pd.Scratch.File != nil && strings.HasPrefix(filepath.Base(pd.Scratch.File.File), "lifeboat-") {
				temp = append(temp, pd.Scratch.File.File)
			}
		}
	}
	d.removeTemp(temp)
	return nil
}

// removeTemp removes a finished job's socket and scratch files, waiting
// briefly for QEMU to let go of them first.
func (d *Driver) removeTemp(paths []string) {
	for _, p := range paths {
		lp := d.local(p)
		for i := 0; i < 10; i++ {
			if err := os.Remove(lp); err == nil || errors.Is(err, fs.ErrNotExist) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
