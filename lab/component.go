package lab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Component is a part of the lab that a script of the repository brings up
// and takes down (`SCRIPT up|down`), shared by every test binary that uses
// it: each holds a shared flock on Dir/.users while it runs, and the last
// one to Release takes the component down when test binaries brought it up
// (the script then leaves a .started-by-tests marker in Dir). The libvirt
// lab, the single-node and the two-node Pacemaker clusters are components.
type Component struct {
	// Script is the script's path below the repository's root
	// ("lab/pacemaker.sh"); Dir the component's folder; Env is added to
	// the script's environment for `up`.
	Script string
	Dir    func() string
	Env    []string

	mu     sync.Mutex
	script string
	users  *os.File
}

// Up runs `SCRIPT up` (idempotent), the first time taking the shared lock.
// root is the repository's root.
func (c *Component) Up(root string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.users == nil {
		c.script = filepath.Join(root, c.Script)
		if err := os.MkdirAll(c.Dir(), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(filepath.Join(c.Dir(), ".users"), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return err
		}
		if err := lockShared(f); err != nil {
			f.Close()
			return err
		}
		c.users = f
	}
	var out bytes.Buffer
	cmd := exec.Command("bash", c.script, "up")
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s up: %v\n%s", filepath.Base(c.Script), err, out.String())
	}
	return nil
}

// Release ends this process's use of the component; when test binaries
// brought it up and no other one still uses it, it takes it down.
func (c *Component) Release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.users == nil {
		return nil
	}
	defer func() { c.users.Close(); c.users = nil }()
	if !tryLockExclusive(c.users) {
		return nil // another test binary still uses it
	}
	if _, err := os.Stat(filepath.Join(c.Dir(), startedMarker)); err != nil {
		return nil // brought up by hand: leave it
	}
	out, err := exec.Command("bash", c.script, "down").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s down: %v\n%s", filepath.Base(c.Script), err, out)
	}
	return nil
}

// GrepLines returns the last max lines of the file that contain s (for a
// failing test's message: resource agents write only to their logs).
func GrepLines(path, s string, max int) string {
	b, err := os.ReadFile(path)
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
