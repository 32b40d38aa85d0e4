package main

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/internal/testenv"
)

// On a terminal the long commands draw a progress bar on stderr; with
// --json they draw none, so the terminal shows only the JSON result.
// script(1) gives the binary a pseudo-terminal.
func TestProgressOnTerminal(t *testing.T) {
	script := testenv.Tool(t, "script")
	dir := t.TempDir()
	repoDir, img, to := filepath.Join(dir, "repo"), filepath.Join(dir, "disk.raw"), filepath.Join(dir, "out")
	data := make([]byte, 8<<20)
	rand.Read(data)
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	lb(t, repoDir, false, "repo", "init", "--repo", repoDir)
	onTTY := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(script, "-qfec", lifeboatBin+" "+strings.Join(args, " "), "/dev/null")
		cmd.Env = append(os.Environ(), "LIFEBOAT_REPO="+repoDir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("lifeboat %s on a terminal: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	lb(t, repoDir, false, "backup", "--name", "seed", img)
	point := lastPoint(t, repoDir)
	for _, c := range []struct {
		args []string
		bar  string
	}{
		{[]string{"backup", "--name", "vm1", img}, "backup vm1 ["},
		{[]string{"verify"}, "verify ["},
		{[]string{"restore", "--point", point, "--to", to + "-" + "X"}, "restore seed ["},
	} {
		out := onTTY(c.args...)
		if !strings.Contains(out, c.bar) || !strings.Contains(out, "100%") {
			t.Errorf("lifeboat %s on a terminal: no bar %q:\n%q", strings.Join(c.args, " "), c.bar, out)
		}
		args := append(c.args, "--json")
		if c.args[0] == "restore" {
			args = append(c.args[:len(c.args)-1:len(c.args)-1], to+"-json", "--json")
		}
		out = onTTY(args...)
		if strings.Contains(out, "[#") || strings.Contains(out, "\r"+c.bar) {
			t.Errorf("lifeboat %s: a bar in --json mode:\n%q", strings.Join(args, " "), out)
		}
		var v any
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &v); err != nil {
			t.Errorf("lifeboat %s on a terminal is not just JSON: %v\n%q", strings.Join(args, " "), err, out)
		}
	}
	// Tape: the write's total is not known ahead (bytes and rate only);
	// a restore reads the tape, then writes the disks.
	lib := filepath.Join(dir, "lib")
	lb(t, repoDir, false, "tape", "library-create", "--library", lib)
	lb(t, repoDir, false, "tape", "add", "--library", lib, "--barcode", "LB0001L8", "--capacity", "67108864")
	if out := onTTY("tape", "write", "--library", lib, "--point", point); !strings.Contains(out, "tape write "+point+" ") || !strings.Contains(out, "MiB/s") {
		t.Errorf("tape write on a terminal: no progress:\n%q", out)
	}
	if out := onTTY("tape", "restore", "--library", lib, "--point", point, "--to", filepath.Join(dir, "fromtape")); !strings.Contains(out, "tape read "+point) || !strings.Contains(out, "restore "+point+" [") {
		t.Errorf("tape restore on a terminal: no progress:\n%q", out)
	}
}
