// Package lab gives integration tests the libvirt lab that lab/lab.sh
// brings up: a system libvirtd (node0), two session daemons of unprivileged
// users (node1, node2), a shared volume and base images with real NTFS and
// ext4 filesystems. See lab/README.md.
//
// Tests call Start, which runs `lab.sh up` once per test binary (it is
// idempotent and quick when the lab is already up) and holds a shared lock
// on $LAB/.users while the binary runs. A TestMain that calls Stop after
// m.Run takes the lab down when test binaries brought it up and no other
// binary still uses it; a lab brought up by hand stays up.
package lab

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"lifeboat/internal/testenv"
)

// Node is one libvirt host of the lab.
type Node struct {
	Name string `json:"name"`
	// Mode is "system" or "session".
	Mode string `json:"mode"`
	// URI is the libvirt URI (qemu:///system?socket=… or
	// qemu:///session?socket=…).
	URI    string `json:"uri"`
	Socket string `json:"socket"`
	// User runs the node's daemon and its QEMU processes.
	User string `json:"user"`
	// Root is where this machine sees the node's files ("/proc/PID/root"
	// for node0, whose libvirt folders are private bind mounts).
	Root string `json:"root"`
	// Disks is a folder for the node's own disks; Scratch one for
	// backup scratch files and NBD sockets (writable by the node's QEMU).
	Disks   string   `json:"disks"`
	Scratch string   `json:"scratch"`
	Pidfile string   `json:"pidfile"`
	VMs     []string `json:"vms"`
}

// Lab is the description lab.sh writes to $LAB/lab.json.
type Lab struct {
	Dir         string `json:"dir"`
	Shared      string `json:"shared"`
	SharedGroup string `json:"shared_group"`
	Images      struct {
		NTFS string `json:"ntfs"`
		EXT4 string `json:"ext4"`
	} `json:"images"`
	Nodes []Node `json:"nodes"`
}

// Node returns the node of that name; it panics on an unknown name.
func (l *Lab) Node(name string) Node {
	for _, n := range l.Nodes {
		if n.Name == name {
			return n
		}
	}
	panic("lab: no node " + name)
}

// Dir is the lab's folder: $LIFEBOAT_LAB or /var/tmp/lifeboat-lab.
func Dir() string {
	if d := os.Getenv("LIFEBOAT_LAB"); d != "" {
		return d
	}
	return "/var/tmp/lifeboat-lab"
}

var (
	mu    sync.Mutex
	upped bool
	upErr error
	upLab *Lab
	// component runs lab.sh; it holds a shared lock on $LAB/.users while
	// this process uses the lab.
	component = &Component{Script: "lab/lab.sh", Dir: Dir, Env: []string{"LIFEBOAT_LAB_BY_TESTS=1"}}
	root      string
)

// startedMarker, present in the lab folder, says test binaries brought the
// lab up, so the last of them to finish takes it down again.
const startedMarker = ".started-by-tests"

// Start brings the lab up (once per process) and returns its description.
// It needs root: elsewhere the test is skipped, unless CI is set, when it
// fails.
func Start(t testing.TB) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the libvirt lab needs root")
		}
		t.Skip("the libvirt lab needs root")
	}
	mu.Lock()
	defer mu.Unlock()
	if !upped {
		upped = true
		upLab, upErr = up(testenv.RepoRoot(t))
	} else if upErr == nil && !daemonsAlive(upLab) {
		// Debian's libvirtd 9 has been seen to segfault in its QEMU
		// driver under the lab's tests; bring dead nodes back (lab.sh up
		// is idempotent) so one crash does not fail every later test.
		upLab, upErr = runUp()
	}
	if upErr != nil {
		t.Fatal(upErr)
	}
	return upLab
}

func up(repoRoot string) (*Lab, error) {
	root = repoRoot
	return runUp()
}

// runUp runs lab.sh up and loads the lab's description.
func runUp() (*Lab, error) {
	if err := component.Up(root); err != nil {
		return nil, err
	}
	return Load()
}

// daemonsAlive reports whether every node's libvirtd still runs.
func daemonsAlive(l *Lab) bool {
	for _, n := range l.Nodes {
		b, err := os.ReadFile(n.Pidfile)
		if err != nil {
			return false
		}
		st, err := os.ReadFile("/proc/" + string(bytes.TrimSpace(b)) + "/stat")
		// The state follows the parenthesised command name; Z is a zombie.
		if i := bytes.LastIndexByte(st, ')'); err != nil || i < 0 || i+2 >= len(st) || st[i+2] == 'Z' {
			return false
		}
	}
	return true
}

// Load reads $LAB/lab.json of a lab that is up.
func Load() (*Lab, error) {
	b, err := os.ReadFile(filepath.Join(Dir(), "lab.json"))
	if err != nil {
		return nil, fmt.Errorf("lab: %w (is the lab up? run lab/lab.sh up)", err)
	}
	var l Lab
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("lab: lab.json: %w", err)
	}
	return &l, nil
}

// Stop ends this process's use of the lab. When test binaries brought the
// lab up and no other one still uses it, it takes the lab down. Call it
// from TestMain after m.Run.
func Stop() error { return component.Release() }
