package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/lab"
)

// lbRun runs the binary and returns stdout, stderr and the exit code.
func lbRun(t *testing.T, repoDir string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(lifeboatBin, args...)
	cmd.Env = append(os.Environ(), "LIFEBOAT_REPO="+repoDir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &ee):
		return stdout.String(), stderr.String(), ee.ExitCode()
	}
	t.Fatalf("lifeboat %s: %v", strings.Join(args, " "), err)
	return "", "", -1
}

type verdictOut struct {
	Verdict struct {
		Verdict     string   `json:"verdict"`
		Reason      string   `json:"reason"`
		Throwaway   string   `json:"throwaway"`
		Host        string   `json:"host"`
		BootSeconds float64  `json:"boot_seconds"`
		Seconds     float64  `json:"seconds"`
		SerialLog   string   `json:"serial_log"`
		LogFile     string   `json:"serial_log_file"`
		Notes       []string `json:"notes"`
		Key         string   `json:"key"`
		Check       *struct {
			ExitCode int    `json:"exit_code"`
			Stdout   string `json:"stdout"`
		} `json:"check"`
	} `json:"verdict"`
}

// leftovers lists what a verify-boot of vm could have left on a node:
// domains and run folders named <vm>-verify-….
func leftovers(t *testing.T, n lab.Node, vm string) []string {
	t.Helper()
	var out []string
	list, err := exec.Command("virsh", "-c", n.URI, "list", "--all", "--name").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range strings.Fields(string(list)) {
		if strings.HasPrefix(name, vm+"-verify-") {
			out = append(out, "domain "+name)
		}
	}
	ents, _ := os.ReadDir(n.Scratch)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), vm+"-verify-") {
			out = append(out, filepath.Join(n.Scratch, e.Name()))
		}
	}
	return out
}

// TestVerifyBootCLI is issue 7 through the binary: the lab's real guest on
// node0 is backed up online (`lifeboat backup --libvirt`), verify-boot
// passes with a check command; an offline point (saved state) boots cold
// on node1; after /sbin/init is destroyed in the guest, the next point
// fails with the kernel's panic in the serial log, kept as a file with the
// verdict. Each run leaves no domain or folder behind, and --list shows
// the recorded verdicts.
func TestVerifyBootCLI(t *testing.T) {
	l := lab.Start(t)
	n0, n1 := l.Node("node0"), l.Node("node1")
	name := fmt.Sprintf("lbvc%06x", time.Now().UnixNano()&0xffffff)
	g := n0.StartGuest(t, name, lab.GuestOptions{})
	g.Run(t, "echo cli-verified >/data/marker && sync")
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	lb(t, repoDir, false, "repo", "init")
	backup := func(extra ...string) string {
		var r struct {
			Point string `json:"point"`
		}
		out := lb(t, repoDir, false, append([]string{"backup", "--libvirt", n0.URI, "--vm", name, "--json"}, extra...)...)
		if err := json.Unmarshal([]byte(out), &r); err != nil || r.Point == "" {
			t.Fatalf("backup output %q: %v", out, err)
		}
		return r.Point
	}
	verify := func(n lab.Node, point string, wantExit int, extra ...string) verdictOut {
		t.Helper()
		args := append([]string{"verify-boot", "--point", point, "--libvirt", n.URI, "--dir", n.Scratch, "--json"}, extra...)
		if n.User != "root" {
			args = append(args, "--owner", n.User)
		}
		stdout, stderr, code := lbRun(t, repoDir, args...)
		var v verdictOut
		if err := json.Unmarshal([]byte(stdout), &v); err != nil {
			t.Fatalf("verify-boot output %q (stderr %s): %v", stdout, stderr, err)
		}
		if code != wantExit {
			t.Fatalf("verify-boot exit %d, want %d: %s (%s)\nstderr: %s\nserial:\n%s", code, wantExit, v.Verdict.Verdict, v.Verdict.Reason, stderr, v.Verdict.SerialLog)
		}
		if left := leftovers(t, n, name); len(left) > 0 {
			t.Errorf("verify-boot left %v", left)
		}
		return v
	}

	good := backup()
	v := verify(n0, good, 0, "--check", "cat /data/marker")
	if v.Verdict.Verdict != "booted-agent-ok" || v.Verdict.Check == nil || v.Verdict.Check.Stdout != "cli-verified\n" || v.Verdict.Key == "" {
		t.Errorf("good point: %+v", v.Verdict)
	}
	t.Logf("good point on node0: %s in %.1fs (agent after %.1fs)", v.Verdict.Verdict, v.Verdict.Seconds, v.Verdict.BootSeconds)

	if err := g.WaitAgent(t.Context()); err != nil {
		t.Fatal(err)
	}
	offline := backup("--offline")
	if err := g.WaitAgent(t.Context()); err != nil {
		t.Fatal(err)
	}
	v = verify(n1, offline, 0)
	if !strings.Contains(strings.Join(v.Verdict.Notes, " "), "saved state") {
		t.Errorf("offline point on node1: %+v", v.Verdict)
	}
	t.Logf("offline point on node1: %s in %.1fs, notes %v", v.Verdict.Verdict, v.Verdict.Seconds, v.Verdict.Notes)

	g.Run(t, "rm /sbin/init && echo 'not an executable' >/sbin/init && chmod 755 /sbin/init && sync")
	broken := backup()
	keep := filepath.Join(dir, "logs")
	os.Mkdir(keep, 0o755)
	v = verify(n0, broken, 1, "--timeout", "30s", "--keep-log", keep)
	if v.Verdict.Verdict != "did-not-boot" || !strings.Contains(v.Verdict.SerialLog, "Kernel panic") {
		t.Errorf("broken point: %s (%s)\nserial:\n%s", v.Verdict.Verdict, v.Verdict.Reason, v.Verdict.SerialLog)
	}
	if b, err := os.ReadFile(v.Verdict.LogFile); err != nil || !strings.Contains(string(b), "Kernel panic") {
		t.Errorf("kept serial log %s: %v", v.Verdict.LogFile, err)
	}
	if _, err := os.Stat(filepath.Join(keep, v.Verdict.Throwaway+".verdict.json")); err != nil {
		t.Error(err)
	}
	t.Logf("broken point on node0: %s (%s) in %.1fs", v.Verdict.Verdict, v.Verdict.Reason, v.Verdict.Seconds)

	var list struct {
		Verdicts []struct {
			Verdict string `json:"verdict"`
		} `json:"verdicts"`
	}
	json.Unmarshal([]byte(lb(t, repoDir, false, "verify-boot", "--point", broken, "--list", "--json")), &list)
	if len(list.Verdicts) != 1 || list.Verdicts[0].Verdict != "did-not-boot" {
		t.Errorf("recorded verdicts of %s: %+v", broken, list.Verdicts)
	}
}
