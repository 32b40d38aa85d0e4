// Package clusterlab gives integration tests the lab's two-node failover
// cluster that lab/cluster.sh brings up (see lab/README.md): corosync and
// pacemaker on nodes "node1" and "node2", which are the lab's libvirt
// session hosts of the same names, each node in namespaces of its own
// (network, mount, UTS), stonith off.
//
// Pacemaker's tools reach a node only from inside its namespaces, so every
// tool runs through `nsenter` into the node's holder process: Manager gives
// a pacemaker.Manager that does so, Command the prefix for other programs
// (and for `lifeboat` through $LIFEBOAT_PACEMAKER_COMMAND).
//
// Tests call Start, which brings the libvirt lab up (lab.Start), then runs
// `cluster.sh up` once per test binary and holds a shared lock on
// $LAB/hacluster/.users. A TestMain that calls Stop after m.Run (and before
// lab.Stop) takes the cluster down when test binaries brought it up and no
// other binary still uses it; a cluster brought up by hand stays up.
package clusterlab

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"lifeboat/cluster"
	"lifeboat/cluster/pacemaker"
	"lifeboat/internal/testenv"
	"lifeboat/lab"
)

// Cluster describes the running two-node cluster.
type Cluster struct {
	// Nodes are the cluster's node names (node1, node2), which are also
	// the libvirt hosts' names.
	Nodes []string
	// Dir is $LAB/hacluster.
	Dir string
	// Lab is the libvirt lab whose hosts the nodes are.
	Lab *lab.Lab

	script  string
	holders map[string]int
	logs    map[string]string
}

var (
	mu        sync.Mutex
	upped     bool
	upErr     error
	up        *Cluster
	component = &lab.Component{Script: "lab/cluster.sh", Dir: Dir, Env: []string{"LIFEBOAT_HA_BY_TESTS=1", "LIFEBOAT_LAB_BY_TESTS=1"}}
)

// Dir is $LAB/hacluster.
func Dir() string { return filepath.Join(lab.Dir(), "hacluster") }

// Start brings the libvirt lab and the cluster up (the cluster once per
// process). It needs root: elsewhere the test is skipped, unless CI is set,
// when it fails.
func Start(t testing.TB) *Cluster {
	t.Helper()
	l := lab.Start(t)
	mu.Lock()
	defer mu.Unlock()
	if !upped {
		upped = true
		up, upErr = start(testenv.RepoRoot(t), l)
	}
	if upErr != nil {
		t.Fatal(upErr)
	}
	return up
}

func start(root string, l *lab.Lab) (*Cluster, error) {
	if err := component.Up(root); err != nil {
		return nil, err
	}
	c, err := Load()
	if err != nil {
		return nil, err
	}
	c.Lab, c.script = l, filepath.Join(root, component.Script)
	return c, nil
}

// Load reads $LAB/hacluster/cluster.env of a cluster that is up.
func Load() (*Cluster, error) {
	f, err := os.Open(filepath.Join(Dir(), "cluster.env"))
	if err != nil {
		return nil, fmt.Errorf("clusterlab: %w (is the cluster up? run lab/cluster.sh up)", err)
	}
	defer f.Close()
	c, err := parseEnv(f, f.Name())
	if err != nil {
		return nil, err
	}
	c.Dir = Dir()
	return c, nil
}

// parseEnv reads cluster.env (KEY=VALUE lines, values possibly in single
// quotes); name is for errors.
func parseEnv(r io.Reader, name string) (*Cluster, error) {
	c := &Cluster{holders: map[string]int{}, logs: map[string]string{}}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, "'")
		switch {
		case k == "HA_NODES":
			c.Nodes = strings.Fields(v)
		case strings.HasSuffix(k, "_HOLDER"):
			pid, err := strconv.Atoi(v)
			if err != nil || pid <= 0 {
				return nil, fmt.Errorf("clusterlab: %s: %s=%q: not a process ID", name, k, v)
			}
			c.holders[nodeOf(k, "_HOLDER")] = pid
		case strings.HasSuffix(k, "_LOG") && !strings.HasSuffix(k, "_COROSYNC_LOG"):
			c.logs[nodeOf(k, "_LOG")] = v
		}
	}
	if len(c.Nodes) != 2 || c.Nodes[0] == c.Nodes[1] {
		return nil, fmt.Errorf("clusterlab: %s: HA_NODES %v, want two nodes", name, c.Nodes)
	}
	for _, n := range c.Nodes {
		if c.holders[n] == 0 {
			return nil, fmt.Errorf("clusterlab: %s: no holder pid of %s", name, n)
		}
	}
	return c, sc.Err()
}

// nodeOf turns HA_NODE1_HOLDER into node1.
func nodeOf(key, suffix string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(key, "HA_"), suffix))
}

// Other is the node that is not n.
func (c *Cluster) Other(n string) string {
	if n == c.Nodes[0] {
		return c.Nodes[1]
	}
	return c.Nodes[0]
}

// Command is the prefix that runs a program in node n's namespaces.
func (c *Cluster) Command(n string) []string {
	return []string{"nsenter", "--target", strconv.Itoa(c.holders[n]), "--mount", "--net", "--uts", "--"}
}

// Manager is the Pacemaker adapter, running the tools on node n.
func (c *Cluster) Manager(n string) *pacemaker.Manager {
	return pacemaker.New(pacemaker.Options{Command: c.Command(n)})
}

// Exec runs a program on node n and returns its combined output.
func (c *Cluster) Exec(ctx context.Context, n string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.Command(n)[0], append(c.Command(n)[1:], args...)...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s on %s: %w: %s", strings.Join(args, " "), n, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func (c *Cluster) run(args ...string) error {
	out, err := exec.Command("bash", append([]string{c.script}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cluster.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// Kill is a hard death of node n: SIGKILL of its corosync and pacemaker
// and of the QEMU of the given VMs on that libvirt host (or, with none
// given, of the VMs the cluster runs there). The node's libvirtd stays.
func (c *Cluster) Kill(n string, vms ...string) error {
	// The named VMs die first, from here: a script takes a moment to
	// start, and a test may be waiting for a backup job on one of them.
	for _, vm := range vms {
		if err := c.KillVM(n, vm); err != nil {
			return err
		}
	}
	return c.run(append([]string{"kill", n}, vms...)...)
}

// KillVM SIGKILLs the QEMU of a VM on libvirt host n, found by the session
// daemon's pidfile (driver.pid there is libvirtd's own). A VM that does not
// run there is no error.
func (c *Cluster) KillVM(n, vm string) error {
	b, err := os.ReadFile(filepath.Join(c.Lab.Dir, n, "run", "libvirt", "qemu", "run", vm+".pid"))
	if err != nil {
		return nil
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return nil
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || !strings.HasPrefix(string(comm), "qemu-system") {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill QEMU of %s on %s (pid %d): %w", vm, n, pid, err)
	}
	return nil
}

// Revive starts node n's corosync and pacemaker again and waits until both
// nodes are online.
func (c *Cluster) Revive(n string) error { return c.run("revive", n) }

// Move asks Pacemaker to move a resource to node n (crm_resource --move,
// a live migration for a VirtualDomain with allow-migrate) and waits,
// within timeout, until it runs there alone. The move's constraint is
// cleared afterwards, so the resource may fail over again.
func (c *Cluster) Move(ctx context.Context, resource, n string, timeout time.Duration) error {
	on := c.Other(n)
	if _, err := c.Exec(ctx, on, "crm_resource", "--move", "--resource", resource, "--node", n); err != nil {
		return err
	}
	defer c.Exec(context.WithoutCancel(ctx), on, "crm_resource", "--clear", "--resource", resource)
	return c.WaitOn(ctx, on, resource, n, timeout)
}

// WaitOn waits, asking node ask, until the resource runs on node n alone.
func (c *Cluster) WaitOn(ctx context.Context, ask, resource, n string, timeout time.Duration) error {
	m := c.Manager(ask)
	deadline := time.Now().Add(timeout)
	var last string
	for {
		rs, err := m.Resources(ctx)
		if err == nil {
			last = "not configured"
			for _, r := range rs {
				if r.ID == resource {
					last = fmt.Sprintf("state %s on %v", r.State, r.Nodes)
					if r.State == cluster.StateStarted && r.Node == n {
						return nil
					}
				}
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("resource %s not running on %s after %v (%s)", resource, n, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Spec is a VirtualDomain resource as the lab runs them: the hypervisor
// chosen per node, live migration between the session daemons (`--unsafe`:
// the shared folder is no cluster filesystem libvirt knows), stop by
// destroy (the lab's guests have no OS and ignore shutdown), monitor every
// 5 s. configPath is the domain XML, readable on both nodes.
func (c *Cluster) Spec(id, configPath string) cluster.VirtualDomainSpec {
	hv := map[string]string{}
	for _, n := range c.Nodes {
		hv[n] = c.Lab.Node(n).URI
	}
	return cluster.VirtualDomainSpec{
		ID:              id,
		ConfigPath:      configPath,
		NodeHypervisors: hv,
		RemoteURI:       "qemu:///session?socket=" + filepath.Join(c.Lab.Dir, "%n", "run", "libvirt", "libvirt-sock"),
		MigrateOptions:  "--unsafe",
		ForceStop:       true,
		MonitorInterval: 5 * time.Second,
		Nodes:           c.Nodes,
	}
}

// LogLines returns the lines of node n's pacemaker log that contain s (the
// agents' output is only there).
func (c *Cluster) LogLines(n, s string, max int) string { return lab.GrepLines(c.logs[n], s, max) }

// Stop ends this process's use of the cluster; when test binaries brought
// it up and no other one still uses it, it takes the cluster down.
func Stop() error { return component.Release() }
