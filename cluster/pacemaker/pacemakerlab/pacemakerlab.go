// Package pacemakerlab gives integration tests the lab's single-node
// Pacemaker cluster that lab/pacemaker.sh brings up (see lab/README.md):
// corosync and pacemakerd as root, node "node0", stonith off.
//
// Tests call Start, which runs `pacemaker.sh up` once per test binary
// (idempotent; about 5 s from nothing, 0.2 s when up) and holds a shared
// lock on $LAB/pacemaker/.users while the binary runs. A TestMain that
// calls Stop after m.Run takes the cluster down when test binaries brought
// it up and no other binary still uses it; a cluster brought up by hand
// stays up. Call Stop before lab.Stop: stopping VirtualDomain resources
// needs their libvirt daemons.
package pacemakerlab

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"lifeboat/internal/testenv"
	"lifeboat/lab"
)

// Cluster describes the running cluster.
type Cluster struct {
	// Node is the cluster node's name (node0).
	Node string
	// Dir is $LAB/pacemaker; Log the pacemaker log file (the agents'
	// stderr goes there).
	Dir string
	Log string
}

var (
	mu     sync.Mutex
	upped  bool
	upErr  error
	up     *Cluster
	script string
	users  *os.File
)

// Dir is $LAB/pacemaker.
func Dir() string { return filepath.Join(lab.Dir(), "pacemaker") }

// Start brings the cluster up (once per process). It needs root:
// elsewhere the test is skipped, unless CI is set, when it fails.
func Start(t testing.TB) *Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the Pacemaker lab needs root")
		}
		t.Skip("the Pacemaker lab needs root")
	}
	mu.Lock()
	defer mu.Unlock()
	if !upped {
		upped = true
		up, upErr = start(testenv.RepoRoot(t))
	}
	if upErr != nil {
		t.Fatal(upErr)
	}
	return up
}

func start(root string) (*Cluster, error) {
	script = filepath.Join(root, "lab", "pacemaker.sh")
	if err := os.MkdirAll(Dir(), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(Dir(), ".users"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		f.Close()
		return nil, err
	}
	users = f
	var out bytes.Buffer
	cmd := exec.Command("bash", script, "up")
	cmd.Env = append(os.Environ(), "LIFEBOAT_PCMK_BY_TESTS=1")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("pacemaker.sh up: %v\n%s", err, out.String())
	}
	return Load()
}

// Load reads $LAB/pacemaker/cluster.env of a cluster that is up.
func Load() (*Cluster, error) {
	f, err := os.Open(filepath.Join(Dir(), "cluster.env"))
	if err != nil {
		return nil, fmt.Errorf("pacemakerlab: %w (is the cluster up? run lab/pacemaker.sh up)", err)
	}
	defer f.Close()
	c := &Cluster{Dir: Dir()}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "PCMK_NODE":
			c.Node = v
		case "PCMK_LOG":
			c.Log = v
		}
	}
	if c.Node == "" {
		return nil, fmt.Errorf("pacemakerlab: no PCMK_NODE in %s", f.Name())
	}
	return c, sc.Err()
}

// LogLines returns the lines of the pacemaker log that contain s (for a
// failing test's message: the agents' stderr is only there).
func (c *Cluster) LogLines(s string, max int) string {
	b, err := os.ReadFile(c.Log)
	if err != nil {
		return err.Error()
	}
	var hits []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			hits = append(hits, l)
		}
	}
	if len(hits) > max {
		hits = hits[len(hits)-max:]
	}
	return strings.Join(hits, "\n")
}

// Stop ends this process's use of the cluster; when test binaries brought
// it up and no other one still uses it, it takes the cluster down.
func Stop() error {
	mu.Lock()
	defer mu.Unlock()
	if users == nil {
		return nil
	}
	defer func() { users.Close(); users = nil }()
	if syscall.Flock(int(users.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return nil // another test binary still uses it
	}
	if _, err := os.Stat(filepath.Join(Dir(), ".started-by-tests")); err != nil {
		return nil // brought up by hand: leave it
	}
	out, err := exec.Command("bash", script, "down").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pacemaker.sh down: %v\n%s", err, out)
	}
	return nil
}
