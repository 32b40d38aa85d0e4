package hatest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/cluster/pacemaker/clusterlab"
	"lifeboat/disk/formats"
	"lifeboat/lab"
)

var lifeboatBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lifeboat-hatest")
	if err != nil {
		panic(err)
	}
	lifeboatBin = filepath.Join(dir, "lifeboat")
	if out, err := exec.Command("go", "build", "-o", lifeboatBin, "lifeboat/cmd/lifeboat").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build lifeboat: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	// The cluster's resources need the libvirt daemons: cluster first.
	if err := clusterlab.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stop cluster: %v\n", err)
	}
	if err := lab.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stop lab: %v\n", err)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// ------------------------------------------------------------ processes

type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr bytes.Buffer
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.Write(b)
}

func (p *proc) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stderr.String()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}

func startProc(t *testing.T, args ...string) (*proc, io.Reader) {
	t.Helper()
	p := &proc{cmd: exec.Command(lifeboatBin, args...)}
	p.cmd.Stderr = p
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("lifeboat %s stderr (tail):\n%s", args[0], p.tail(3000))
		}
	})
	return p, out
}

func (p *proc) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

// kill is an agent's sudden death.
func (p *proc) kill() {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---------------------------------------------------------------- world

// world is a Lifeboat server with one agent per cluster node, each
// protecting its node's libvirt host, on the lab's two-node cluster.
type world struct {
	t      *testing.T
	c      *clusterlab.Cluster
	l      *lab.Lab
	root   string
	data   string
	repo   string
	env    []string
	url    string
	fp     string
	api    *api.Client
	agents map[string]*proc
	sfx    string
}

type serverStart struct {
	URL           string `json:"url"`
	CAFingerprint string `json:"ca_fingerprint"`
	AdminToken    string `json:"admin_token"`
}

// newWorld starts the cluster, a server whose clock runs 600 times faster
// ("every hour" is every 6 s) and agents for node1 and node2.
func newWorld(t *testing.T) *world {
	t.Helper()
	c := clusterlab.Start(t)
	w := &world{t: t, c: c, l: c.Lab, root: t.TempDir(), agents: map[string]*proc{},
		sfx: strconv.FormatInt(time.Now().UnixNano()%1e6, 36)}
	w.data, w.repo = filepath.Join(w.root, "data"), filepath.Join(w.root, "repo")
	w.env = []string{"LIFEBOAT_DATA=" + w.data}
	p, out := startProc(t, "server", "--json", "--listen", "127.0.0.1:0", "--data", w.data, "--repo", w.repo,
		"--tick", "200ms", "--clock-speed", "600", "--heartbeat", "300ms")
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
		io.Copy(io.Discard, out)
	}()
	var st serverStart
	select {
	case s := <-line:
		if err := json.Unmarshal([]byte(s), &st); err != nil {
			t.Fatalf("server start line %q: %v\n%s", s, err, p.tail(3000))
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("server did not start:\n%s", p.tail(3000))
	}
	w.url, w.fp = st.URL, st.CAFingerprint
	caPEM, err := os.ReadFile(filepath.Join(w.data, "tls", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := api.TLSConfig(caPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.api = &api.Client{Base: st.URL, Token: st.AdminToken, HTTP: api.HTTPClient(tc, 10*time.Second)}
	w.lb(nil, "cluster", "create", "ha", "--ha", "pacemaker")
	w.lb(nil, "cluster", "volume", "add", "ha", w.l.Shared, "labshared")
	for _, n := range c.Nodes {
		w.startAgent(n)
	}
	return w
}

// startAgent enrolls (the first time) and starts node n's agent.
func (w *world) startAgent(n string) {
	w.t.Helper()
	args := []string{"agent", "--state", filepath.Join(w.root, "state-"+n), "--name", n,
		"--libvirt", w.l.Node(n).URI, "--libvirt-scratch", w.l.Node(n).Scratch, "--interval", "300ms", "--wait", "2s"}
	if _, err := os.Stat(filepath.Join(w.root, "state-"+n)); err != nil {
		var tok api.TokenResponse
		w.lb(&tok, "token", "create", "--cluster", "ha")
		args = append(args, "--server", w.url, "--token", tok.Token, "--ca-fingerprint", w.fp)
	}
	p, out := startProc(w.t, args...)
	go io.Copy(io.Discard, out)
	w.agents[n] = p
}

// lb runs the CLI with --json against the server.
func (w *world) lb(out any, args ...string) {
	w.t.Helper()
	cmd := exec.Command(lifeboatBin, append(args, "--json")...)
	cmd.Env = append(os.Environ(), w.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		w.t.Fatalf("lifeboat %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	if out != nil {
		if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
			w.t.Fatalf("lifeboat %s: %v\n%s", strings.Join(args, " "), err, stdout.String())
		}
	}
}

// local runs the CLI on the repository directly (restore, verify,
// recover), with extra environment; it returns stdout, stderr and the error.
func (w *world) local(env []string, args ...string) (string, string, error) {
	cmd := exec.Command(lifeboatBin, args...)
	cmd.Env = append(append(os.Environ(), "LIFEBOAT_REPO="+w.repo), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

func (w *world) vm(name string) catalog.VMStatus {
	w.t.Helper()
	var vms []catalog.VMStatus
	if _, err := w.api.Do(context.Background(), "GET", api.Prefix+"/vms", nil, &vms); err != nil {
		w.t.Fatal(err)
	}
	for _, v := range vms {
		if v.Name == name {
			return v
		}
	}
	return catalog.VMStatus{}
}

// points lists a VM's points, oldest first, with files and notes.
func (w *world) points(name string) []catalog.Point {
	w.t.Helper()
	var ps []catalog.Point
	w.lb(&ps, "point", "list", "--name", name)
	out := make([]catalog.Point, 0, len(ps))
	for i := len(ps) - 1; i >= 0; i-- {
		var p catalog.Point
		if _, err := w.api.Do(context.Background(), "GET", api.Prefix+"/points/"+ps[i].ID, nil, &p); err != nil {
			w.t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func (w *world) job(id int64) api.JobDetail {
	w.t.Helper()
	var d api.JobDetail
	if _, err := w.api.Do(context.Background(), "GET", api.Prefix+"/jobs/"+strconv.FormatInt(id, 10), nil, &d); err != nil {
		w.t.Fatal(err)
	}
	return d
}

func (w *world) backupNow(vm string, full bool) catalog.Job {
	w.t.Helper()
	var rr api.RunResponse
	if _, err := w.api.Do(context.Background(), "POST", api.Prefix+"/backups", api.BackupRequest{VM: vm, FullRead: full}, &rr); err != nil || len(rr.Jobs) != 1 {
		w.t.Fatalf("backup now of %s: %v %+v", vm, err, rr)
	}
	return rr.Jobs[0]
}

func jobLog(d api.JobDetail) []string {
	var lines []string
	for _, l := range d.Log {
		lines = append(lines, l.Message)
	}
	return lines
}

func bytesRead(p catalog.Point) (n int64) {
	for _, f := range p.Files {
		n += f.Stats.BytesRead
	}
	return n
}

func newBytes(p catalog.Point) (n int64) {
	for _, f := range p.Files {
		n += f.Stats.NewBytes
	}
	return n
}

func fellBack(p catalog.Point) bool {
	return strings.Contains(strings.Join(p.Notes, "\n"), "fell back to a full read")
}

// ------------------------------------------------------------------ VMs

const diskSize = 64 << 20

// haVM is a VM of the test's own, run by the cluster: its disk (a copy of
// the lab's ext4 image) and its domain XML in a folder of the shared
// volume, a VirtualDomain resource of its name. It is removed at the end.
type haVM struct {
	Name, UUID, Dir, Disk, Config string
}

func (w *world) newHAVM(short string) haVM { return w.newHAVMSized(short, 0) }

// newHAVMSized is newHAVM with the disk grown to size bytes (0: as the
// image is, 64 MiB).
func (w *world) newHAVMSized(short string, size int64) haVM {
	t := w.t
	t.Helper()
	name := "lbha-" + short + "-" + w.sfx
	v := haVM{Name: name, Dir: filepath.Join(w.l.Shared, name)}
	v.Disk, v.Config = filepath.Join(v.Dir, "disk.qcow2"), filepath.Join(v.Dir, name+".xml")
	v.UUID = fmt.Sprintf("1b0a0000-0000-4000-8000-%012x", time.Now().UnixNano()&0xffffffffffff)
	g, err := user.LookupGroup(w.l.SharedGroup)
	if err != nil {
		t.Fatal(err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	if err := os.Mkdir(v.Dir, 0o2770); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(v.Dir) })
	// Mode and group explicitly: umask and mkdir do not set setgid.
	os.Chown(v.Dir, 0, gid)
	os.Chmod(v.Dir, 0o2770|os.ModeSetgid)
	copyFile(t, w.l.Images.EXT4, v.Disk)
	if size > 0 {
		if out, err := exec.Command("qemu-img", "resize", "-q", v.Disk, strconv.FormatInt(size, 10)).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img resize: %v %s", err, out)
		}
	}
	os.Chown(v.Disk, 0, gid)
	os.Chmod(v.Disk, 0o660) // 640 makes a live migration fail at "cont"
	xml := fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
`, name, v.UUID, v.Disk)
	if err := os.WriteFile(v.Config, []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m := w.c.Manager(w.c.Nodes[0])
	t.Cleanup(func() { w.removeResource(name) })
	if err := m.AddVirtualDomain(ctx, w.c.Spec(name, v.Config)); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitStarted(ctx, name, 60*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, w.c.LogLines(w.c.Nodes[0], name, 20))
	}
	return v
}

// removeResource removes a resource of the test (if it is still there)
// through whichever node is up, and the VM from both libvirt hosts.
func (w *world) removeResource(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for _, n := range w.c.Nodes {
		m := w.c.Manager(n)
		ok, err := m.Exists(ctx, id)
		if err != nil {
			continue
		}
		if ok {
			// A test may have left it unmanaged; RemoveResource stops it.
			w.c.Exec(ctx, n, "crm_resource", "--resource", id, "--meta", "--delete-parameter", "is-managed")
			if err := m.RemoveResource(ctx, id); err != nil {
				w.t.Logf("remove resource %s: %v", id, err)
			}
		}
		break
	}
	for _, n := range w.c.Nodes {
		uri := w.l.Node(n).URI
		exec.Command("virsh", "-c", uri, "destroy", id).Run()
		exec.Command("virsh", "-c", uri, "undefine", "--checkpoints-metadata", id).Run()
	}
}

// runsOn is the libvirt host whose daemon runs the VM now ("" if none).
func (w *world) runsOn(vm string) string {
	for _, n := range w.c.Nodes {
		out, _ := exec.Command("virsh", "-c", w.l.Node(n).URI, "domstate", vm).CombinedOutput()
		if strings.TrimSpace(string(out)) == "running" {
			return n
		}
	}
	return ""
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// guestWrite writes a pattern into the VM's disk through QEMU, as the
// guest would.
func (w *world) guestWrite(vm string, pattern byte, off, n int64) {
	w.t.Helper()
	node := w.runsOn(vm)
	cmd := fmt.Sprintf(`qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "write -P %#x %d %d"`, pattern, off, n)
	out, err := exec.Command("virsh", "-c", w.l.Node(node).URI, "qemu-monitor-command", "--hmp", vm, cmd).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		w.t.Fatalf("guest write on %s: %v %s", node, err, out)
	}
}

// imageBytes reads an image's guest-visible bytes.
func imageBytes(t *testing.T, p string) []byte {
	t.Helper()
	ctx := context.Background()
	img, err := formats.Open(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// restoredDisk restores a point into a folder and returns the bytes of its
// one disk.
func (w *world) restoredDisk(point string) []byte {
	t := w.t
	t.Helper()
	to := filepath.Join(w.root, "restore-"+point)
	if _, stderr, err := w.local(nil, "restore", "--point", point, "--to", to, "--format", "raw"); err != nil {
		t.Fatalf("restore %s: %v\n%s", point, err, stderr)
	}
	defer os.RemoveAll(to)
	var disk string
	filepath.Walk(to, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && fi.Size() == diskSize {
			disk = p
		}
		return nil
	})
	if disk == "" {
		t.Fatalf("restore of %s holds no %d-byte disk", point, diskSize)
	}
	return imageBytes(t, disk)
}

// guestStates are the disk contents a VM has had: the base image, then
// each guest write applied in turn.
type guestStates struct {
	states [][]byte
}

func newGuestStates(t *testing.T, base string) *guestStates {
	return &guestStates{states: [][]byte{imageBytes(t, base)}}
}

func (g *guestStates) write(pattern byte, off, n int64) {
	last := g.states[len(g.states)-1]
	next := bytes.Clone(last)
	for i := off; i < off+n; i++ {
		next[i] = pattern
	}
	g.states = append(g.states, next)
}

// match is the index of the state b equals, -1 for none.
func (g *guestStates) match(b []byte) int {
	for i := len(g.states) - 1; i >= 0; i-- {
		if bytes.Equal(g.states[i], b) {
			return i
		}
	}
	return -1
}
