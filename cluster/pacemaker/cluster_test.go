package pacemaker_test

// Integration tests on a real single-node corosync + pacemaker cluster
// (lab/pacemaker.sh) whose VirtualDomain resources run throwaway no-OS VMs
// on the lab's node0 (lab/lab.sh). They need root: skipped elsewhere,
// failed under CI.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/cluster"
	"lifeboat/cluster/pacemaker"
	"lifeboat/cluster/pacemaker/pacemakerlab"
	"lifeboat/lab"
)

func TestMain(m *testing.M) {
	code := m.Run()
	// The cluster first: stopping its VirtualDomain resources needs
	// node0's libvirtd.
	if err := pacemakerlab.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	if err := lab.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

type env struct {
	m    *pacemaker.Manager
	pc   *pacemakerlab.Cluster
	node lab.Node // libvirt node0
}

func setup(t *testing.T) *env {
	t.Helper()
	l := lab.Start(t)
	pc := pacemakerlab.Start(t)
	return &env{m: pacemaker.New(pacemaker.Options{}), pc: pc, node: l.Node("node0")}
}

func virsh(uri string, args ...string) (string, error) {
	out, err := exec.Command("virsh", append([]string{"-q", "-c", uri}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// vm writes a throwaway VM for node0: a copy of the lab's NTFS image (its
// boot code halts, so the guest idles) and a domain XML in libvirt's
// layout. With noDisk the XML names a disk that does not exist. It
// removes any resource or domain of that name left by an earlier run, and
// registers the same clean-up for the end of the test.
func (e *env) vm(t *testing.T, name string, noDisk bool) string {
	t.Helper()
	dir := filepath.Join(e.node.Disks, "pcmk-"+name)
	clean := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if ok, err := e.m.Exists(ctx, name); err == nil && ok {
			if err := e.m.RemoveResource(ctx, name); err != nil {
				t.Errorf("clean-up: %v", err)
			}
		}
		virsh(e.node.URI, "destroy", name)
		virsh(e.node.URI, "undefine", name)
		os.RemoveAll(dir)
	}
	clean()
	t.Cleanup(clean)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, name+".qcow2")
	if noDisk {
		disk = filepath.Join(dir, "missing.qcow2")
	} else if out, err := exec.Command("cp", "--sparse=always", lab.Dir()+"/images/ntfs.qcow2", disk).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	x := fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
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
`, name, disk)
	cfg := filepath.Join(dir, name+".xml")
	if err := os.WriteFile(cfg, []byte(x), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func crmList(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("crm_resource", "--list").CombinedOutput()
	// With no resource at all it says so and exits 105 (no such object).
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 105 && strings.Contains(string(out), "No resources") {
		err = nil
	}
	if err != nil {
		t.Fatalf("crm_resource --list: %v\n%s", err, out)
	}
	return string(out)
}

// settle lets the cluster act on every change made so far.
func settle(t *testing.T) {
	t.Helper()
	if out, err := exec.Command("crm_resource", "--wait", "--timeout", "20s").CombinedOutput(); err != nil {
		t.Fatalf("crm_resource --wait: %v\n%s", err, out)
	}
}

func find(rs []cluster.Resource, id string) *cluster.Resource {
	for i := range rs {
		if rs[i].ID == id {
			return &rs[i]
		}
	}
	return nil
}

func TestVirtualDomainLifecycle(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	const id = "lbpm-life"
	cfg := e.vm(t, id, false)

	t0 := time.Now()
	err := e.m.AddVirtualDomain(ctx, cluster.VirtualDomainSpec{
		ConfigPath:      cfg,
		HypervisorURI:   e.node.URI,
		ForceStop:       true, // no OS: a shutdown request would be ignored
		Nodes:           []string{e.pc.Node},
		MonitorInterval: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(crmList(t), id) {
		t.Errorf("crm_resource --list does not show %s:\n%s", id, crmList(t))
	}
	if err := e.m.WaitStarted(ctx, id, 60*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, e.pc.LogLines(id, 20))
	}
	t.Logf("added and started in %v", time.Since(t0).Round(time.Millisecond))

	if st, err := virsh(e.node.URI, "domstate", id); err != nil || st != "running" {
		t.Errorf("virsh domstate on node0: %q, %v", st, err)
	}
	node, err := e.m.Location(ctx, id)
	if err != nil || node != e.pc.Node {
		t.Errorf("Location: %q, %v", node, err)
	}
	rs, err := e.m.Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := find(rs, id)
	if r == nil {
		t.Fatalf("Resources() lacks %s: %+v", id, rs)
	}
	if r.Type != "ocf:heartbeat:VirtualDomain" || r.Node != e.pc.Node || r.State != cluster.StateStarted ||
		r.Role != "Started" || r.Config != cfg || r.HypervisorURI != e.node.URI ||
		r.Meta["allow-migrate"] != "true" || r.TargetRole != "Started" || !r.Managed || len(r.Failures) != 0 {
		t.Errorf("resource: %+v", *r)
	}
	if ok, err := e.m.Exists(ctx, id); !ok || err != nil {
		t.Errorf("Exists: %v, %v", ok, err)
	}
	// The agent made the domain transient: the config file defines it.
	if info, _ := virsh(e.node.URI, "dominfo", id); !strings.Contains(info, "Persistent:     no") {
		t.Errorf("domain is persistent:\n%s", info)
	}
	if err := e.m.AddVirtualDomain(ctx, cluster.VirtualDomainSpec{ConfigPath: cfg, HypervisorURI: e.node.URI}); !errors.Is(err, cluster.ErrExists) {
		t.Errorf("second add: %v", err)
	}

	t1 := time.Now()
	if err := e.m.RemoveResource(ctx, id); err != nil {
		t.Fatal(err)
	}
	t.Logf("removed in %v", time.Since(t1).Round(time.Millisecond))
	if ok, err := e.m.Exists(ctx, id); ok || err != nil {
		t.Errorf("Exists after remove: %v, %v", ok, err)
	}
	if strings.Contains(crmList(t), id) {
		t.Errorf("crm_resource --list still shows %s", id)
	}
	if _, err := virsh(e.node.URI, "dominfo", id); err == nil {
		t.Errorf("domain %s still on node0 after remove", id)
	}
	if _, err := e.m.Location(ctx, id); !errors.Is(err, cluster.ErrNotFound) {
		t.Errorf("Location after remove: %v", err)
	}
	if out, _ := exec.Command("cibadmin", "--query", "--scope", "constraints").CombinedOutput(); strings.Contains(string(out), id) {
		t.Errorf("constraints left:\n%s", out)
	}
	if err := e.m.RemoveResource(ctx, id); !errors.Is(err, cluster.ErrNotFound) {
		t.Errorf("second remove: %v", err)
	}
}

// A per-node hypervisor (a #uname rule, as a cluster of several libvirt
// hosts needs) wins over the plain one: the plain URI here leads nowhere.
func TestPerNodeHypervisor(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	const id = "lbpm-pernode"
	cfg := e.vm(t, id, false)
	err := e.m.AddVirtualDomain(ctx, cluster.VirtualDomainSpec{
		ConfigPath:      cfg,
		HypervisorURI:   "qemu:///system?socket=/nonexistent/libvirt-sock",
		NodeHypervisors: map[string]string{e.pc.Node: e.node.URI},
		ForceStop:       true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.m.WaitStarted(ctx, id, 60*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, e.pc.LogLines(id, 20))
	}
	if st, err := virsh(e.node.URI, "domstate", id); err != nil || st != "running" {
		t.Errorf("virsh domstate on node0: %q, %v", st, err)
	}
	rs, err := e.m.Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r := find(rs, id); r == nil || r.NodeHypervisors[e.pc.Node] != e.node.URI {
		t.Errorf("resource: %+v", r)
	}
	if err := e.m.RemoveResource(ctx, id); err != nil {
		t.Fatal(err)
	}
}

// A resource whose domain cannot start (its disk is missing) fails; the
// wait says why, Resources reports it, and removing it clears its history.
func TestMissingDomain(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	const id = "lbpm-missing"
	cfg := e.vm(t, id, true)
	if err := e.m.AddVirtualDomain(ctx, cluster.VirtualDomainSpec{ConfigPath: cfg, HypervisorURI: e.node.URI, ForceStop: true}); err != nil {
		t.Fatal(err)
	}
	err := e.m.WaitStarted(ctx, id, 60*time.Second)
	if err == nil || !strings.Contains(err.Error(), "Failed to start virtual domain "+id) {
		t.Fatalf("WaitStarted: %v", err)
	}
	t.Logf("WaitStarted: %v", err)
	rs, err := e.m.Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r := find(rs, id); r == nil || r.State != cluster.StateFailed {
		t.Fatalf("resource right after the failed start: %+v", r)
	}
	settle(t)
	rs, err = e.m.Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := find(rs, id)
	if r == nil || r.State != cluster.StateFailed || r.Node != "" || len(r.Failures) == 0 ||
		r.Failures[0].Op != "start" || r.Failures[0].Node != e.pc.Node {
		t.Fatalf("resource: %+v", r)
	}
	if node, err := e.m.Location(ctx, id); node != "" || err != nil {
		t.Errorf("Location: %q, %v", node, err)
	}
	if err := e.m.RemoveResource(ctx, id); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("crm_mon", "-1", "--inactive", "--output-as=xml").CombinedOutput()
	if strings.Contains(string(out), id) {
		t.Errorf("history of %s left:\n%s", id, out)
	}
}

// A config file that is not there is refused before anything is added.
func TestMissingConfig(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	cfg := filepath.Join(e.node.Disks, "pcmk-nosuch", "nosuch.xml")
	err := e.m.AddVirtualDomain(ctx, cluster.VirtualDomainSpec{ID: "lbpm-nosuch", ConfigPath: cfg, HypervisorURI: e.node.URI})
	if err == nil || !strings.Contains(err.Error(), cfg) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("AddVirtualDomain: %v", err)
	}
	if ok, err := e.m.Exists(ctx, "lbpm-nosuch"); ok || err != nil {
		t.Errorf("Exists: %v, %v", ok, err)
	}
}

// Stopped with resource-discovery=never: the resource is configured but
// never started nor probed on the avoided node.
func TestStoppedWithoutDiscovery(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	const id = "lbpm-stopped"
	cfg := e.vm(t, id, false)
	err := e.m.AddVirtualDomain(ctx, cluster.VirtualDomainSpec{
		ConfigPath: cfg, HypervisorURI: e.node.URI, Stopped: true, Avoid: []string{e.pc.Node},
	})
	if err != nil {
		t.Fatal(err)
	}
	settle(t)
	if !strings.Contains(crmList(t), id) {
		t.Errorf("crm_resource --list does not show %s", id)
	}
	rs, err := e.m.Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := find(rs, id)
	if r == nil || r.State != cluster.StateStopped || r.TargetRole != "Stopped" || r.Node != "" {
		t.Fatalf("resource: %+v", r)
	}
	out, _ := exec.Command("crm_mon", "-1", "--inactive", "--output-as=xml").CombinedOutput()
	if strings.Contains(string(out), `resource_history id="`+id+`"`) {
		t.Errorf("%s was probed on %s despite resource-discovery=never:\n%s", id, e.pc.Node, out)
	}
	cons, _ := exec.Command("cibadmin", "--query", "--scope", "constraints").CombinedOutput()
	if !strings.Contains(string(cons), `resource-discovery="never"`) {
		t.Errorf("constraints:\n%s", cons)
	}
	if _, err := virsh(e.node.URI, "dominfo", id); err == nil {
		t.Errorf("domain %s exists on node0", id)
	}
	if err := e.m.RemoveResource(ctx, id); err != nil {
		t.Fatal(err)
	}
	if ok, _ := e.m.Exists(ctx, id); ok {
		t.Error("still exists")
	}
}
