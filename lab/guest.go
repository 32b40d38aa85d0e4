package lab

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"lifeboat/internal/testenv"
)

// GuestImage is the lab's real Linux guest that lab/guest.sh builds:
// Debian's cloud kernel, a busybox initrd, and an ext4 root filesystem with
// qemu-guest-agent (see lab/README.md, "The guest").
type GuestImage struct {
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd"`
	// Rootfs is the base qcow2 (64 MiB virtual, ext4 without a partition
	// table). Guests get copies of it; never boot it directly.
	Rootfs        string `json:"rootfs"`
	Cmdline       string `json:"cmdline"`
	KernelVersion string `json:"kernel_version"`
	// ReadyMarker is the line init writes to the serial console once it
	// has started qemu-ga.
	ReadyMarker string `json:"ready_marker"`
}

var (
	guestMu   sync.Mutex
	guestDone bool
	guestImg  GuestImage
	guestErr  error
)

// Guest builds the guest image (once per process; lab/guest.sh caches it
// across processes) and describes it. It needs root: elsewhere the test is
// skipped, unless CI is set, when it fails.
func Guest(t testing.TB) GuestImage {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the lab guest needs root")
		}
		t.Skip("the lab guest needs root")
	}
	guestMu.Lock()
	defer guestMu.Unlock()
	if !guestDone {
		guestDone = true
		guestImg, guestErr = buildGuest(filepath.Join(testenv.RepoRoot(t), "lab", "guest.sh"))
	}
	if guestErr != nil {
		t.Fatal(guestErr)
	}
	return guestImg
}

func buildGuest(script string) (GuestImage, error) {
	var out, errb bytes.Buffer
	cmd := exec.Command("bash", script)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return GuestImage{}, fmt.Errorf("lab/guest.sh: %v\n%s", err, errb.String())
	}
	p := strings.TrimSpace(out.String())
	b, err := os.ReadFile(p)
	if err != nil {
		return GuestImage{}, fmt.Errorf("lab/guest.sh: %w", err)
	}
	var g GuestImage
	if err := json.Unmarshal(b, &g); err != nil {
		return GuestImage{}, fmt.Errorf("lab/guest.sh: %s: %w", p, err)
	}
	return g, nil
}

// GuestSpec is one guest domain made from the image.
type GuestSpec struct {
	Name string
	// Disk is the guest's own qcow2 (a copy of Rootfs), as the node sees
	// it; it becomes vda.
	Disk string
	// SerialLog receives the serial console (kernel messages, the ready
	// marker); the node's QEMU must be able to create it.
	SerialLog string
	// MemoryMiB defaults to 160.
	MemoryMiB int
	// NoAgent leaves out the guest-agent channel: the guest boots but has
	// no agent.
	NoAgent bool
}

// DomainXML is a TCG domain that boots the image's kernel and initrd
// directly: virtio disk and rng, serial console to a file, the guest-agent
// channel (its socket path left to libvirt, which knows where a session
// daemon may put it), no graphics and no NIC.
func (g GuestImage) DomainXML(s GuestSpec) string {
	mem := s.MemoryMiB
	if mem == 0 {
		mem = 160
	}
	esc := func(v string) string {
		var b strings.Builder
		xml.EscapeText(&b, []byte(v))
		return b.String()
	}
	agent := "    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n"
	if s.NoAgent {
		agent = ""
	}
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>%s</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
%s    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
`, esc(s.Name), mem, esc(g.Kernel), esc(g.Initrd), esc(g.Cmdline), esc(s.Disk), esc(s.SerialLog), agent)
}

// Connect opens a go-libvirt connection to the node's daemon, closed at
// the end of the test.
func (n Node) Connect(t testing.TB) *golibvirt.Libvirt {
	t.Helper()
	l := golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(n.Socket), dialers.WithLocalTimeout(15*time.Second)))
	if err := l.ConnectToURI(golibvirt.ConnectURI("qemu:///" + n.Mode)); err != nil {
		t.Fatalf("lab: connect to %s: %v", n.Name, err)
	}
	t.Cleanup(func() { l.Disconnect() })
	return l
}

// GuestOptions change how StartGuest makes a guest.
type GuestOptions struct {
	// Dir holds the guest's disk and serial log; empty means the node's
	// Disks folder. The shared volume works for session nodes (the disk
	// is made group lbshared).
	Dir string
	// MemoryMiB defaults to 160.
	MemoryMiB int
	// NoAgent leaves out the guest-agent channel.
	NoAgent bool
	// NoWait returns as soon as the domain runs, without waiting for the
	// agent.
	NoWait bool
}

// GuestVM is a running guest of the lab, defined (persistent) on a node.
type GuestVM struct {
	Node      Node
	Name      string
	Disk      string // qcow2, as both this process and the node see it
	SerialLog string
	L         *golibvirt.Libvirt
	Dom       golibvirt.Domain
	Started   time.Time // when the domain was started
	// BootToAgent is how long the agent took to answer guest-ping after
	// the start (0 with NoWait).
	BootToAgent time.Duration
}

// StartGuest copies the image's root filesystem to a disk of its own,
// defines and starts the domain name on the node and waits (60 s at most)
// for its agent to answer guest-ping. The domain, its checkpoints, disk and
// log go at the end of the test. Name must be unique in the lab: use a
// prefix of your own.
func (n Node) StartGuest(t testing.TB, name string, o GuestOptions) *GuestVM {
	t.Helper()
	g := Guest(t)
	dir := o.Dir
	if dir == "" {
		dir = n.Disks
	}
	v := &GuestVM{Node: n, Name: name,
		Disk: filepath.Join(dir, name+".qcow2"), SerialLog: filepath.Join(dir, name+".serial.log")}
	if err := copyDisk(g.Rootfs, v.Disk, n, dir); err != nil {
		t.Fatal(err)
	}
	os.Remove(v.SerialLog)
	v.L = n.Connect(t)
	if old, err := v.L.DomainLookupByName(name); err == nil {
		// Left over by a test that was killed: it is ours by name.
		v.L.DomainDestroy(old)
		v.L.DomainUndefineFlags(old, undefineAll)
	}
	x := g.DomainXML(GuestSpec{Name: name, Disk: v.Disk, SerialLog: v.SerialLog, MemoryMiB: o.MemoryMiB, NoAgent: o.NoAgent})
	dom, err := v.L.DomainDefineXML(x)
	if err != nil {
		t.Fatalf("lab: define guest %s on %s: %v", name, n.Name, err)
	}
	v.Dom = dom
	t.Cleanup(func() {
		v.L.DomainDestroy(v.Dom)
		if err := v.L.DomainUndefineFlags(v.Dom, undefineAll); err != nil {
			t.Logf("lab: undefine guest %s: %v", name, err)
		}
		os.Remove(v.Disk)
		os.Remove(v.SerialLog)
	})
	v.Started = time.Now()
	if err := v.L.DomainCreate(dom); err != nil {
		t.Fatalf("lab: start guest %s on %s: %v", name, n.Name, err)
	}
	if o.NoWait || o.NoAgent {
		return v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := v.WaitAgent(ctx); err != nil {
		t.Fatalf("lab: guest %s: %v\nserial console:\n%s", name, err, v.Serial())
	}
	v.BootToAgent = time.Since(v.Started)
	return v
}

const undefineAll = golibvirt.DomainUndefineManagedSave | golibvirt.DomainUndefineSnapshotsMetadata |
	golibvirt.DomainUndefineCheckpointsMetadata | golibvirt.DomainUndefineNvram

// copyDisk copies the base image to dst, owned so that the node's QEMU can
// write it.
func copyDisk(src, dst string, n Node, dir string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("lab: guest disk: %w", err)
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("lab: guest disk: %w", err)
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && n.User != "" && n.User != "root" {
		uid, gid := -1, -1
		if u, lerr := user.Lookup(n.User); lerr == nil {
			uid, _ = strconv.Atoi(u.Uid)
			gid, _ = strconv.Atoi(u.Gid)
		}
		// On the shared volume the group is the volume's (setgid folder).
		if st, serr := os.Stat(dir); serr == nil && st.Mode()&os.ModeSetgid != 0 {
			gid = -1
		}
		if err = os.Chown(tmp, uid, gid); err == nil {
			err = os.Chmod(tmp, 0o660)
		}
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("lab: guest disk %s: %w", dst, err)
	}
	return nil
}

// Agent sends one guest-agent command (JSON) with a bounded wait in
// seconds and returns the reply.
func (v *GuestVM) Agent(cmd string, timeoutSec int32) (string, error) {
	r, err := v.L.QEMUDomainAgentCommand(v.Dom, cmd, timeoutSec, 0)
	if err != nil {
		return "", fmt.Errorf("guest %s: agent %s: %w", v.Name, cmd, err)
	}
	if len(r) == 0 {
		return "", nil
	}
	return r[0], nil
}

// WaitAgent polls guest-ping until the agent answers or ctx ends.
func (v *GuestVM) WaitAgent(ctx context.Context) error {
	for {
		_, err := v.Agent(`{"execute":"guest-ping"}`, 1)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no guest agent: %w (last: %v)", ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ExecResult is what a command run in the guest did.
type ExecResult struct {
	Exit           int
	Stdout, Stderr []byte
}

// Exec runs script with /bin/sh -c in the guest through guest-exec and
// waits for it (until ctx ends). Each agent call waits 10 s at most.
func (v *GuestVM) Exec(ctx context.Context, script string) (ExecResult, error) {
	req, _ := json.Marshal(map[string]any{"execute": "guest-exec", "arguments": map[string]any{
		"path": "/bin/sh", "arg": []string{"-c", script}, "capture-output": true}})
	r, err := v.Agent(string(req), 10)
	if err != nil {
		return ExecResult{}, err
	}
	var started struct {
		Return struct {
			PID int `json:"pid"`
		} `json:"return"`
	}
	if err := json.Unmarshal([]byte(r), &started); err != nil {
		return ExecResult{}, fmt.Errorf("guest %s: guest-exec reply %q: %w", v.Name, r, err)
	}
	status := fmt.Sprintf(`{"execute":"guest-exec-status","arguments":{"pid":%d}}`, started.Return.PID)
	for {
		r, err := v.Agent(status, 10)
		if err != nil {
			return ExecResult{}, err
		}
		var st struct {
			Return struct {
				Exited   bool   `json:"exited"`
				Exit     int    `json:"exitcode"`
				Signal   int    `json:"signal"`
				Out      string `json:"out-data"`
				Err      string `json:"err-data"`
				OutTrunc bool   `json:"out-truncated"`
			} `json:"return"`
		}
		if err := json.Unmarshal([]byte(r), &st); err != nil {
			return ExecResult{}, fmt.Errorf("guest %s: guest-exec-status reply %q: %w", v.Name, r, err)
		}
		if st.Return.Exited {
			res := ExecResult{Exit: st.Return.Exit}
			res.Stdout, _ = base64.StdEncoding.DecodeString(st.Return.Out)
			res.Stderr, _ = base64.StdEncoding.DecodeString(st.Return.Err)
			if st.Return.Signal != 0 {
				res.Exit = 128 + st.Return.Signal
			}
			return res, nil
		}
		select {
		case <-ctx.Done():
			return ExecResult{}, fmt.Errorf("guest %s: %q: %w", v.Name, script, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Run is Exec that fails the test unless the script exits 0; it returns
// the script's standard output.
func (v *GuestVM) Run(t testing.TB, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := v.Exec(ctx, script)
	if err != nil {
		t.Fatal(err)
	}
	if r.Exit != 0 {
		t.Fatalf("guest %s: %q exited %d: %s%s", v.Name, script, r.Exit, r.Stdout, r.Stderr)
	}
	return string(r.Stdout)
}

// Serial is what the guest wrote to its serial console so far.
func (v *GuestVM) Serial() string {
	b, err := os.ReadFile(v.SerialLog)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err.Error()
	}
	return string(b)
}
