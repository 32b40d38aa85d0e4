package recovery

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"libvirt.org/go/libvirtxml"

	"lifeboat/hypervisor"
	"lifeboat/nbd/server"
	"lifeboat/repo"
)

// Verify-boot proves that a point boots: its disks are served over NBD
// (as in an instant recovery, with a temporary copy-on-write overlay that
// is unlinked at once, so guest writes never outlive the run), a
// throwaway domain is defined from the point's configuration with a new
// name (<vm>-verify-<6 hex>), a new UUID, no network interfaces, no
// graphics, a serial console written to a file and the QEMU guest agent
// channel, and started cold: a point's saved state is never resumed, so
// a memory image that belongs to another host (or to devices the
// throwaway lacks) cannot fail the boot. The verdict comes from the guest
// agent (guest-ping, then an optional check command through guest-exec)
// and from the serial log. The domain, its definition, the NBD server,
// its socket and the run folder are removed whatever happens.

// Boot verdicts.
const (
	// VerdictAgentOK: the guest booted and its agent answered (and the
	// check command, when given, exited 0).
	VerdictAgentOK = "booted-agent-ok"
	// VerdictNoAgent: the serial log shows a kernel that booted without
	// panicking, but the agent stayed silent until the timeout.
	VerdictNoAgent = "booted-no-agent"
	// VerdictNoBoot: the VM did not start, stopped, its kernel panicked,
	// or nothing that looks like a booting kernel reached the serial log.
	VerdictNoBoot = "did-not-boot"
	// VerdictCheckFailed: the agent answered but the check command failed
	// (non-zero exit, signal, or no end within the check timeout).
	VerdictCheckFailed = "check-failed"
)

// GuestAgentChannel is the virtio-serial port name of the QEMU guest agent.
const GuestAgentChannel = "org.qemu.guest_agent.0"

// GuestAgent is what verify-boot needs from a driver beyond
// hypervisor.Driver: a QEMU guest agent command in a running VM (libvirt:
// virDomainQemuAgentCommand).
type GuestAgent interface {
	AgentCommand(ctx context.Context, vm, cmd string, timeout time.Duration) (string, error)
}

// stateReader is optional for drivers: one VM's state without a listing.
type stateReader interface {
	State(ctx context.Context, vm string) (hypervisor.State, error)
}

// VerifyBootRequest asks for one verify-boot.
type VerifyBootRequest struct {
	// Point is the recovery point's ID.
	Point string `json:"point"`
	// Driver is the host that runs the throwaway VM; it must implement
	// GuestAgent.
	Driver hypervisor.Driver `json:"-"`
	// TargetHost names the host in the verdict; "" asks the driver.
	TargetHost string `json:"target_host,omitempty"`
	// Dir is a folder that this process and the host's QEMU both see at
	// this path (the host's scratch folder): the run's own folder is made
	// in it (NBD socket, serial log, NVRAM) and removed afterwards.
	Dir string `json:"dir"`
	// Check is a shell command run in the guest (/bin/sh -c) once its
	// agent answers; "" runs none.
	Check string `json:"check,omitempty"`
	// Timeout bounds the wait for the agent from the start of the VM; 0
	// means 60 s. CheckTimeout bounds the check command; 0 means Timeout.
	Timeout      time.Duration `json:"timeout,omitempty"`
	CheckTimeout time.Duration `json:"check_timeout,omitempty"`
	// With ChownDir, UID and GID own the run folder and the NBD socket:
	// the host's QEMU (a session daemon's user, libvirt-qemu) must create
	// the serial log there and connect to the socket.
	UID, GID int  `json:"-"`
	ChownDir bool `json:"-"`
	// NoRecord skips storing the verdict in the repository.
	NoRecord bool `json:"no_record,omitempty"`
	// KeepLogDir, when set, receives the whole serial log as
	// <throwaway>.serial.log and the verdict as <throwaway>.verdict.json.
	KeepLogDir string `json:"keep_log_dir,omitempty"`
}

// CheckResult is what the check command did inside the guest.
type CheckResult struct {
	Command  string  `json:"command"`
	Exited   bool    `json:"exited"`
	ExitCode int     `json:"exit_code"`
	Signal   int     `json:"signal,omitempty"`
	Stdout   string  `json:"stdout,omitempty"`
	Stderr   string  `json:"stderr,omitempty"`
	Seconds  float64 `json:"seconds"`
	// Truncated says the agent cut the captured output.
	Truncated bool   `json:"truncated,omitempty"`
	Error     string `json:"error,omitempty"`
}

// BootVerdict is the outcome of a verify-boot: stored in the repository
// beside the point (verify/<point>/<time>-<hex>) and printed by the CLI.
type BootVerdict struct {
	Version   int       `json:"version"`
	Point     string    `json:"point"`
	VM        string    `json:"vm"`
	Throwaway string    `json:"throwaway"`
	Host      string    `json:"host,omitempty"`
	Time      time.Time `json:"time"`
	Verdict   string    `json:"verdict"`
	// Reason says what decided the verdict in words.
	Reason string `json:"reason"`
	// BootSeconds is from the start of the VM to the agent's first answer
	// (0 when it never answered); Seconds the whole run, clean-up included.
	BootSeconds float64 `json:"boot_seconds,omitempty"`
	Seconds     float64 `json:"seconds"`
	// Phases splits Seconds: setup (point, serving, define, start), boot
	// (start to the verdict of the wait), check, clean-up.
	Phases BootPhases   `json:"phases"`
	Check  *CheckResult `json:"check,omitempty"`
	// SerialLog is the serial console's output, cut to its first 8 KiB
	// and last 56 KiB when longer (SerialLogBytes is the whole size);
	// SerialLogFile is where the CLI kept it, when asked.
	SerialLog      string   `json:"serial_log"`
	SerialLogBytes int64    `json:"serial_log_bytes"`
	SerialLogFile  string   `json:"serial_log_file,omitempty"`
	Notes          []string `json:"notes,omitempty"`
	// Key is the verdict's object in the repository.
	Key string `json:"key,omitempty"`
}

// BootPhases are the parts of a verify-boot's time, in seconds.
type BootPhases struct {
	Setup   float64 `json:"setup"`
	Boot    float64 `json:"boot"`
	Check   float64 `json:"check,omitempty"`
	Cleanup float64 `json:"cleanup"`
}

// OK says the point passed.
func (v *BootVerdict) OK() bool { return v.Verdict == VerdictAgentOK }

// DecodeBootVerdict parses a stored verdict.
func DecodeBootVerdict(b []byte) (*BootVerdict, error) {
	var v BootVerdict
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("boot verdict: %w", err)
	}
	if v.Version != 1 {
		return nil, fmt.Errorf("boot verdict: version %d, want 1", v.Version)
	}
	if !repo.ValidPointID(v.Point) {
		return nil, fmt.Errorf("boot verdict: %q is not a point ID", v.Point)
	}
	switch v.Verdict {
	case VerdictAgentOK, VerdictNoAgent, VerdictNoBoot, VerdictCheckFailed:
	default:
		return nil, fmt.Errorf("boot verdict of %s: unknown verdict %q", v.Point, v.Verdict)
	}
	return &v, nil
}

// BootVerdicts returns a point's stored verdicts, oldest first.
func (rc *Recovery) BootVerdicts(ctx context.Context, pointID string) ([]*BootVerdict, error) {
	keys, err := rc.Repo.VerdictKeys(ctx, pointID)
	if err != nil {
		return nil, err
	}
	var out []*BootVerdict
	for _, k := range keys {
		b, err := rc.Repo.LoadVerdict(ctx, k)
		if err != nil {
			return nil, err
		}
		v, err := DecodeBootVerdict(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		v.Key = k
		out = append(out, v)
	}
	return out, nil
}

// serialKeepHead and serialKeepTail bound the serial log a verdict holds:
// the head shows the kernel's first lines, the tail how it ended.
const (
	serialKeepHead = 8 << 10
	serialKeepTail = 56 << 10
	// serialReadMax bounds what is read of a runaway serial log.
	serialReadMax = 64 << 20
)

// verifyRun is one verify-boot in progress: what cleanup must undo.
type verifyRun struct {
	rc     *Recovery
	drv    hypervisor.Driver
	dir    string // the run's folder
	serial string // the serial log
	sock   string
	name   string

	lock    *repo.Lock
	bases   []*repo.FileImage
	ovs     []*server.Overlay
	cancel  context.CancelFunc
	served  chan error
	made    bool // dir was created by this run
	defined bool
}

// VerifyBoot boots the point as a throwaway VM on the request's host and
// returns the verdict. A point that does not boot is a verdict, not an
// error; an error means the verify-boot itself could not be carried out
// (the point does not load, the host does not answer, the folder cannot
// be made) or could not clean up after itself (the verdict, if any, is
// returned too). The verdict is stored in the repository unless
// req.NoRecord.
func (rc *Recovery) VerifyBoot(ctx context.Context, req VerifyBootRequest) (v *BootVerdict, err error) {
	start := time.Now()
	if req.Timeout <= 0 {
		req.Timeout = time.Minute
	}
	if req.CheckTimeout <= 0 {
		req.CheckTimeout = req.Timeout
	}
	agent, ok := req.Driver.(GuestAgent)
	if req.Driver == nil || !ok {
		return nil, errors.New("verify-boot: the host's driver cannot talk to a guest agent")
	}
	p := &Plan{Method: "verify-boot", PointID: req.Point, req: Request{Driver: req.Driver, TargetHost: req.TargetHost}}
	if err := rc.loadPoint(ctx, p); err != nil {
		return nil, err
	}
	doc, err := rc.loadDomain(ctx, p)
	if err != nil {
		return nil, err
	}
	list, err := targetHost(ctx, p)
	if err != nil {
		return nil, err
	}
	if req.Dir == "" || !filepath.IsAbs(req.Dir) {
		return nil, refuse(CodeTargetPath, "give the host's scratch folder", "verify-boot folder %q is not an absolute path", req.Dir)
	}
	dfs, err := mapDisks(p.Point, doc)
	if err != nil {
		return nil, err
	}
	if len(dfs) == 0 {
		return nil, refuse(CodePointUnusable, "choose a point of a VM with disks", "point %s: the configuration names no disk to boot from", p.Point.ID)
	}
	taken := map[string]bool{}
	for _, vm := range list {
		taken[vm.Name] = true
	}
	name := ""
	for name == "" || taken[name] {
		name = doc.dom.Name + "-verify-" + randHex(3)
	}
	v = &BootVerdict{Version: 1, Point: p.Point.ID, VM: doc.dom.Name, Throwaway: name, Host: p.Host, Time: start.UTC()}
	for _, f := range p.Point.Files {
		if f.Role == repo.RoleSavedState {
			v.Notes = append(v.Notes, fmt.Sprintf("the point's saved state %s is not used: a verify-boot always boots cold", f.Path))
		}
	}

	run := &verifyRun{rc: rc, drv: req.Driver, name: name, dir: filepath.Join(req.Dir, name)}
	run.serial = filepath.Join(run.dir, "serial.log")
	run.sock = filepath.Join(run.dir, InstantSocket)
	if len(run.sock) > maxSocketPath {
		return nil, refuse(CodeTargetPath, "choose a shorter folder path", "the NBD socket %s is longer than a unix socket address allows (%d bytes)", run.sock, maxSocketPath)
	}
	defer func() {
		// A fresh context: a cancelled or timed-out run still cleans up.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		cleanStart := time.Now()
		cerr := run.stopVM(cctx)
		// Read after the VM is gone: QEMU has written all it will.
		log, size, lerr := readSerial(run.serial)
		var kept string
		if req.KeepLogDir != "" && run.made {
			kept = filepath.Join(req.KeepLogDir, name+".serial.log")
			if kerr := copyFileAtomic(run.serial, kept); kerr != nil {
				kept = ""
				if v != nil {
					v.Notes = append(v.Notes, fmt.Sprintf("the serial log could not be kept: %v", kerr))
				}
			}
		}
		cerr = errors.Join(cerr, run.release(cctx))
		if cerr != nil {
			err = errors.Join(err, fmt.Errorf("verify-boot: clean-up of %s: %w", name, cerr))
		}
		if v == nil {
			return
		}
		if lerr == nil {
			v.SerialLog, v.SerialLogBytes = log, size
		}
		v.SerialLogFile = kept
		v.Phases.Cleanup = time.Since(cleanStart).Seconds()
		v.Seconds = time.Since(start).Seconds()
		if err == nil && !req.NoRecord && v.Verdict != "" {
			b, merr := json.Marshal(v)
			if merr == nil {
				v.Key, merr = rc.Repo.SaveVerdict(cctx, v.Point, v.Time, b)
			}
			if merr != nil {
				err = fmt.Errorf("verify-boot: record the verdict: %w", merr)
			}
		}
		if req.KeepLogDir != "" && v.Verdict != "" {
			b, _ := json.MarshalIndent(v, "", "  ")
			if werr := writeFileAtomic(filepath.Join(req.KeepLogDir, name+".verdict.json"), append(b, '\n'), 0o644); werr != nil {
				err = errors.Join(err, fmt.Errorf("verify-boot: keep the verdict: %w", werr))
			}
		}
	}()

	if err := os.Mkdir(run.dir, 0o750); err != nil {
		return nil, fmt.Errorf("verify-boot: %w", err)
	}
	run.made = true
	if req.ChownDir {
		if err := os.Chown(run.dir, req.UID, req.GID); err != nil {
			return nil, fmt.Errorf("verify-boot: %w", err)
		}
	}
	// The point's data must not be collected while it is served.
	if run.lock, err = rc.Repo.Lock(ctx, false, "verify-boot "+p.PointID); err != nil {
		return nil, err
	}
	var exports []server.Export
	for _, df := range dfs {
		exp := df.Target
		if exp == "" {
			exp = fmt.Sprintf("disk%d", df.Index)
		}
		base, err := rc.Repo.OpenFile(context.WithoutCancel(ctx), p.Point, df.File.Path)
		if err != nil {
			return nil, err
		}
		run.bases = append(run.bases, base)
		// A temporary overlay is unlinked at once: the guest's writes
		// vanish with the run, even if this process dies.
		ov, err := server.OpenOverlay(base, server.OverlayOptions{Dir: run.dir})
		if err != nil {
			return nil, fmt.Errorf("verify-boot: %w", err)
		}
		run.ovs = append(run.ovs, ov)
		exports = append(exports, server.Export{Name: exp, Description: name + " " + df.Target, Overlay: ov})
		doc.setDiskNBD(df.Index, exp, run.sock)
	}
	srv, err := server.New(exports...)
	if err != nil {
		return nil, err
	}
	srv.Logf = func(format string, args ...any) { rc.logf(format, args...) }
	l, err := server.ListenUnix(run.sock)
	if err != nil {
		return nil, err
	}
	if req.ChownDir {
		if err := os.Chown(run.sock, req.UID, req.GID); err != nil {
			l.Close()
			return nil, fmt.Errorf("verify-boot: %w", err)
		}
	}
	sctx, cancel := context.WithCancel(context.Background())
	run.cancel, run.served = cancel, make(chan error, 1)
	go func() { run.served <- srv.Serve(sctx, l) }()

	v.Notes = append(v.Notes, doc.throwaway(name, newUUID(), run.serial, filepath.Join(run.dir, "nvram.fd"), run.sock)...)
	cfg, err := doc.marshal()
	if err != nil {
		return nil, err
	}
	rc.logf("defining throwaway VM %s on %s", name, p.Host)
	if _, err := req.Driver.Define(ctx, cfg); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		v.Verdict, v.Reason = VerdictNoBoot, fmt.Sprintf("the host refused the definition: %v", err)
		return v, nil
	}
	run.defined = true
	rc.logf("starting %s", name)
	bootStart := time.Now()
	v.Phases.Setup = bootStart.Sub(start).Seconds()
	if err := req.Driver.Start(ctx, name); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		v.Verdict, v.Reason = VerdictNoBoot, fmt.Sprintf("the VM does not start: %v", err)
		return v, nil
	}
	obs, err := WaitGuestAgent(ctx, req.Driver, agent, name, run.serial, req.Timeout)
	if err != nil {
		return nil, err
	}
	v.Phases.Boot = time.Since(bootStart).Seconds()
	v.Verdict, v.Reason = obs.Verdict, obs.Reason
	if obs.Verdict != VerdictAgentOK {
		return v, nil
	}
	v.BootSeconds = obs.Answered.Sub(bootStart).Seconds()
	rc.logf("guest agent of %s answered after %.1fs", name, v.BootSeconds)
	if req.Check == "" {
		return v, nil
	}
	rc.logf("running the check in %s: %s", name, req.Check)
	v.Check = RunGuestCommand(ctx, agent, name, req.Check, req.CheckTimeout)
	v.Phases.Check = v.Check.Seconds
	if c := v.Check; c.Error != "" || !c.Exited || c.ExitCode != 0 || c.Signal != 0 {
		v.Verdict = VerdictCheckFailed
		switch {
		case c.Error != "":
			v.Reason = "the check command could not be run: " + c.Error
		case !c.Exited:
			v.Reason = fmt.Sprintf("the check command did not end within %s", req.CheckTimeout)
		case c.Signal != 0:
			v.Reason = fmt.Sprintf("the check command was killed by signal %d", c.Signal)
		default:
			v.Reason = fmt.Sprintf("the check command exited with %d", c.ExitCode)
		}
		return v, nil
	}
	v.Reason += "; the check command exited 0"
	return v, nil
}

// stopVM powers the throwaway off and undefines it.
func (run *verifyRun) stopVM(ctx context.Context) error {
	if !run.defined {
		return nil
	}
	var errs []error
	if err := run.drv.Destroy(ctx, run.name); err != nil && !errors.Is(err, hypervisor.ErrNotFound) && !notRunning(err) {
		errs = append(errs, err)
	}
	if err := run.drv.Undefine(ctx, run.name); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// release stops serving, closes the images, releases the lock and
// removes the run's folder.
func (run *verifyRun) release(ctx context.Context) error {
	var errs []error
	if run.cancel != nil {
		run.cancel()
		<-run.served
	}
	for _, ov := range run.ovs {
		ov.Close()
	}
	for _, b := range run.bases {
		b.Close()
	}
	if run.lock != nil {
		run.lock.Unlock(ctx)
	}
	if run.made {
		if err := os.RemoveAll(run.dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// notRunning recognises libvirt's answer to destroying a VM that is off.
func notRunning(err error) bool {
	return strings.Contains(err.Error(), "not running")
}

// throwaway rewrites the definition for a verify-boot, whose point disks
// already name the NBD socket sock: new name and UUID; no network
// interfaces, host devices, shared host folders, other disks or other
// channels (the VM must reach nothing, write nothing of the original's and
// clash with nothing); no graphics; removable media ejected; the serial
// console to a file, the guest agent channel, NVRAM in the run's folder.
// It returns notes on what it changed that a reader of the verdict may
// need.
func (d *domainDoc) throwaway(name, uuid, serialLog, nvram, sock string) []string {
	var notes []string
	d.forgetRuntime()
	d.dom.Name, d.dom.UUID = name, uuid
	d.dom.Description, d.dom.Title = "", ""
	d.dom.OnPoweroff, d.dom.OnCrash = "destroy", "destroy"
	// A VM's NVRAM file is its own: the throwaway gets a fresh one from
	// the template, in the run's folder.
	if o := d.dom.OS; o != nil && o.Loader != nil && o.NVRam != nil {
		o.NVRam = &libvirtxml.DomainNVRam{NVRam: nvram, Template: o.NVRam.Template}
	}
	if d.dom.Devices == nil {
		d.dom.Devices = &libvirtxml.DomainDeviceList{}
	}
	dev := d.dom.Devices
	if n := len(dev.Interfaces); n > 0 {
		notes = append(notes, fmt.Sprintf("%d network interface(s) removed: the throwaway VM is isolated", n))
		dev.Interfaces = nil
	}
	if len(dev.Hostdevs) > 0 {
		notes = append(notes, fmt.Sprintf("%d host device(s) removed", len(dev.Hostdevs)))
		dev.Hostdevs = nil
	}
	if len(dev.Filesystems) > 0 {
		notes = append(notes, fmt.Sprintf("%d shared host folder(s) removed", len(dev.Filesystems)))
		dev.Filesystems = nil
	}
	dev.Graphics, dev.Audios, dev.RedirDevs, dev.Smartcards, dev.Parallels = nil, nil, nil, nil, nil
	var disks []libvirtxml.DomainDisk
	for _, dd := range dev.Disks {
		switch {
		case dd.Device == "cdrom" || dd.Device == "floppy":
			if dd.Source != nil {
				dd.Source = nil
				notes = append(notes, fmt.Sprintf("removable medium %s ejected", targetOf(&dd)))
			}
		case dd.Source != nil && dd.Source.Network != nil && len(dd.Source.Network.Hosts) == 1 && dd.Source.Network.Hosts[0].Socket == sock:
		default:
			// Not from the point: the original's live disk, or one the
			// target host may not have.
			notes = append(notes, fmt.Sprintf("disk %s is not part of the point and is left out", targetOf(&dd)))
			continue
		}
		disks = append(disks, dd)
	}
	dev.Disks = disks
	port := uint(0)
	dev.Serials = []libvirtxml.DomainSerial{{
		Source: &libvirtxml.DomainChardevSource{File: &libvirtxml.DomainChardevSourceFile{Path: serialLog}},
		Target: &libvirtxml.DomainSerialTarget{Port: &port},
	}}
	// libvirt adds the console that mirrors serial port 0.
	dev.Consoles = nil
	// Other channels lead to the host (files, sockets, a display agent):
	// only the guest agent's stays.
	dev.Channels = append([]libvirtxml.DomainChannel(nil), libvirtxml.DomainChannel{
		Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind"}},
		Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: GuestAgentChannel}},
	})
	return notes
}

func targetOf(dd *libvirtxml.DomainDisk) string {
	if dd.Target != nil {
		return dd.Target.Dev
	}
	return dd.Device
}

// BootObservation is what WaitGuestAgent saw.
type BootObservation struct {
	Verdict  string    `json:"verdict"`
	Reason   string    `json:"reason"`
	Answered time.Time `json:"answered,omitempty"`
}

// WaitGuestAgent waits until the running VM's guest agent answers a
// guest-ping, the VM stops, its serial log (serialLog, "" for none) shows
// a kernel panic, or timeout passes, and says which: VerdictAgentOK,
// VerdictNoAgent (a kernel booted but the agent stayed silent) or
// VerdictNoBoot. Only ctx ending or the host failing is an error.
func WaitGuestAgent(ctx context.Context, drv hypervisor.Driver, agent GuestAgent, vm, serialLog string, timeout time.Duration) (BootObservation, error) {
	deadline := time.Now().Add(timeout)
	var lastErr error
	var panicSeen time.Time
	for {
		_, err := agent.AgentCommand(ctx, vm, `{"execute":"guest-ping"}`, 2*time.Second)
		if err == nil {
			return BootObservation{Verdict: VerdictAgentOK, Reason: "the guest agent answered guest-ping", Answered: time.Now()}, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			return BootObservation{}, ctx.Err()
		}
		var sig serialSigns
		if serialLog != "" {
			if log, _, err := readSerial(serialLog); err == nil {
				sig = classifySerial([]byte(log))
			}
		}
		if sig.Panic != "" {
			// Let the panic's last lines reach the log, then stop waiting.
			if panicSeen.IsZero() {
				panicSeen = time.Now()
			} else if time.Since(panicSeen) > time.Second {
				return BootObservation{Verdict: VerdictNoBoot, Reason: "the kernel panicked: " + sig.Panic}, nil
			}
		}
		st, err := stateOf(ctx, drv, vm)
		if err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
			// The host, not the point, failed: no verdict.
			return BootObservation{}, fmt.Errorf("verify-boot: state of %s: %w", vm, err)
		}
		if err != nil || !isUp(st) {
			why := fmt.Sprintf("the VM stopped (%s)", st)
			if err != nil {
				why = fmt.Sprintf("the VM is gone: %v", err)
			}
			if sig.Panic != "" {
				why += " after a kernel panic: " + sig.Panic
			} else if sig.Booted != "" {
				why += " after its kernel started"
			}
			return BootObservation{Verdict: VerdictNoBoot, Reason: why}, nil
		}
		if time.Now().After(deadline) {
			switch {
			case sig.Panic != "":
				return BootObservation{Verdict: VerdictNoBoot, Reason: "the kernel panicked: " + sig.Panic}, nil
			case sig.Booted != "":
				return BootObservation{Verdict: VerdictNoAgent, Reason: fmt.Sprintf("the guest booted (its serial console shows %q) but its agent did not answer within %s: %v", sig.Booted, timeout, lastErr)}, nil
			case serialLog == "":
				return BootObservation{Verdict: VerdictNoBoot, Reason: fmt.Sprintf("the guest agent did not answer within %s: %v", timeout, lastErr)}, nil
			}
			return BootObservation{Verdict: VerdictNoBoot, Reason: fmt.Sprintf("no kernel output on the serial console and no guest agent within %s", timeout)}, nil
		}
		select {
		case <-ctx.Done():
			return BootObservation{}, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func stateOf(ctx context.Context, drv hypervisor.Driver, vm string) (hypervisor.State, error) {
	if s, ok := drv.(stateReader); ok {
		return s.State(ctx, vm)
	}
	return vmState(ctx, drv, vm)
}

// serialSigns is what a serial log says about a boot: the first line
// showing a kernel at work, and the line of a panic.
type serialSigns struct {
	Booted string
	Panic  string
}

var (
	bootedRe = regexp.MustCompile(`Linux version [0-9]|Booting Linux|Run /\S+ as init process|Freeing unused kernel|login: ?$|systemd\[1\]|Windows Boot Manager`)
	panicRe  = regexp.MustCompile(`Kernel panic - not syncing|Attempted to kill init|No working init found|VFS: Unable to mount root fs`)
	// firmwareRe matches what firmware and boot loaders print before any
	// kernel runs: such lines are no sign of a boot.
	firmwareRe = regexp.MustCompile(`(?i)seabios|ipxe|booting from|no bootable device|press esc|bdsdxe|uefi|grub|machine uuid|^\s*$`)
)

// classifySerial reads a serial log (untrusted guest output) for signs of
// a booting kernel and of a panic. A kernel booted with "quiet" prints
// nothing before its init does, so any line that firmware would not
// print counts as a sign too, when no kernel line is there.
func classifySerial(log []byte) serialSigns {
	var s serialSigns
	other := ""
	for _, line := range bytes.Split(log, []byte("\n")) {
		line = bytes.TrimRight(line, "\r")
		if s.Booted == "" && bootedRe.Match(line) {
			s.Booted = printable(line, 160)
		}
		if s.Panic == "" && panicRe.Match(line) {
			s.Panic = printable(line, 200)
		}
		if other == "" && !firmwareRe.Match(line) {
			other = printable(line, 160)
		}
	}
	if s.Booted == "" {
		s.Booted = other
	}
	return s
}

// printable makes a line of guest output safe to show: control bytes
// dropped, cut to max bytes.
func printable(b []byte, max int) string {
	s := strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return -1
		}
		return r
	}, string(b))
	s = strings.TrimSpace(s)
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

// readSerial reads a serial log, keeping its head and tail when it is
// long, and returns it with its whole size.
func readSerial(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	size := fi.Size()
	if size <= serialKeepHead+serialKeepTail {
		b, err := io.ReadAll(io.LimitReader(f, serialReadMax))
		return string(b), int64(len(b)), err
	}
	head := make([]byte, serialKeepHead)
	if _, err := f.ReadAt(head, 0); err != nil {
		return "", size, err
	}
	tail := make([]byte, serialKeepTail)
	if _, err := f.ReadAt(tail, size-serialKeepTail); err != nil && !errors.Is(err, io.EOF) {
		return "", size, err
	}
	return string(head) + fmt.Sprintf("\n[… %d bytes of the serial log left out …]\n", size-serialKeepHead-serialKeepTail) + string(tail), size, nil
}

// copyFileAtomic copies a file whole to dst (temp name, fsync, rename).
func copyFileAtomic(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeAtomic(dst, io.LimitReader(in, serialReadMax), 0o644)
}

// maxCheckOutput bounds the check command's output kept in a verdict.
const maxCheckOutput = 16 << 10

// RunGuestCommand runs a shell command in the guest through the agent
// (guest-exec, then guest-exec-status until it ends or timeout) and
// returns what it did; an agent error is in the result's Error.
func RunGuestCommand(ctx context.Context, agent GuestAgent, vm, command string, timeout time.Duration) *CheckResult {
	res := &CheckResult{Command: command}
	start := time.Now()
	defer func() { res.Seconds = time.Since(start).Seconds() }()
	req, _ := json.Marshal(map[string]any{"execute": "guest-exec", "arguments": map[string]any{
		"path": "/bin/sh", "arg": []string{"-c", command}, "capture-output": true}})
	out, err := agent.AgentCommand(ctx, vm, string(req), 10*time.Second)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	pid, err := parseExecReply([]byte(out))
	if err != nil {
		res.Error = err.Error()
		return res
	}
	deadline := start.Add(timeout)
	status := fmt.Sprintf(`{"execute":"guest-exec-status","arguments":{"pid":%d}}`, pid)
	for {
		out, err := agent.AgentCommand(ctx, vm, status, 10*time.Second)
		if err != nil {
			res.Error = err.Error()
			return res
		}
		st, err := parseExecStatus([]byte(out))
		if err != nil {
			res.Error = err.Error()
			return res
		}
		if st.Exited {
			res.Exited, res.ExitCode, res.Signal = true, st.ExitCode, st.Signal
			res.Stdout, res.Stderr = clipOutput(st.Stdout), clipOutput(st.Stderr)
			res.Truncated = st.Truncated || len(st.Stdout) > maxCheckOutput || len(st.Stderr) > maxCheckOutput
			return res
		}
		if time.Now().After(deadline) {
			return res
		}
		select {
		case <-ctx.Done():
			res.Error = ctx.Err().Error()
			return res
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func clipOutput(b []byte) string {
	if len(b) > maxCheckOutput {
		b = b[len(b)-maxCheckOutput:]
	}
	return string(bytes.ToValidUTF8(b, []byte("\uFFFD")))
}

// parseExecReply reads guest-exec's answer: {"return":{"pid":N}}.
func parseExecReply(b []byte) (int64, error) {
	var r struct {
		Return *struct {
			PID *int64 `json:"pid"`
		} `json:"return"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, fmt.Errorf("guest-exec reply %q: %w", clip(b), err)
	}
	if r.Return == nil || r.Return.PID == nil {
		return 0, fmt.Errorf("guest-exec reply %q names no pid", clip(b))
	}
	return *r.Return.PID, nil
}

// execStatus is guest-exec-status's answer, output decoded.
type execStatus struct {
	Exited         bool
	ExitCode       int
	Signal         int
	Stdout, Stderr []byte
	Truncated      bool
}

// parseExecStatus reads guest-exec-status's answer (untrusted: it comes
// from the guest): {"return":{"exited":…,"exitcode":…,"signal":…,
// "out-data":base64,"err-data":base64,"out-truncated":…,"err-truncated":…}}.
func parseExecStatus(b []byte) (execStatus, error) {
	var r struct {
		Return *struct {
			Exited       bool   `json:"exited"`
			ExitCode     int    `json:"exitcode"`
			Signal       int    `json:"signal"`
			OutData      string `json:"out-data"`
			ErrData      string `json:"err-data"`
			OutTruncated bool   `json:"out-truncated"`
			ErrTruncated bool   `json:"err-truncated"`
		} `json:"return"`
	}
	var st execStatus
	if err := json.Unmarshal(b, &r); err != nil {
		return st, fmt.Errorf("guest-exec-status reply %q: %w", clip(b), err)
	}
	if r.Return == nil {
		return st, fmt.Errorf("guest-exec-status reply %q has no return", clip(b))
	}
	x := r.Return
	var err error
	if st.Stdout, err = base64.StdEncoding.DecodeString(x.OutData); err != nil {
		return st, fmt.Errorf("guest-exec-status: out-data: %w", err)
	}
	if st.Stderr, err = base64.StdEncoding.DecodeString(x.ErrData); err != nil {
		return st, fmt.Errorf("guest-exec-status: err-data: %w", err)
	}
	st.Exited, st.ExitCode, st.Signal = x.Exited, x.ExitCode, x.Signal
	st.Truncated = x.OutTruncated || x.ErrTruncated
	return st, nil
}

func clip(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}
