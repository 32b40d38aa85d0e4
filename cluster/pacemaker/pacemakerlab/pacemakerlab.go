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
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
	mu        sync.Mutex
	upped     bool
	upErr     error
	up        *Cluster
	component = &lab.Component{Script: "lab/pacemaker.sh", Dir: Dir, Env: []string{"LIFEBOAT_PCMK_BY_TESTS=1"}}
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
	if err := component.Up(root); err != nil {
		return nil, err
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
func (c *Cluster) LogLines(s string, max int) string { return lab.GrepLines(c.Log, s, max) }

// Stop ends this process's use of the cluster; when test binaries brought
// it up and no other one still uses it, it takes the cluster down.
func Stop() error { return component.Release() }
