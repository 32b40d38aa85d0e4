package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/internal/testenv"
	"lifeboat/lab"
)

// Issue 7 through the CLI on a real Linux guest (a session node): backups
// with the guest agent are application-consistent; a backup stopped by
// SIGTERM during the guest's freeze hook thaws the guest itself; one
// killed (SIGKILL) then, whose freeze the agent carries out when the hook
// ends, leaves the thaw to its thaw guard, which thaws the guest without
// another backup and exits; files the guest wrote come back with
// `lifeboat items extract`; the restored filesystem is clean.
func TestLibvirtGuestBackupKilledDuringFreeze(t *testing.T) {
	l := lab.Start(t)
	n := l.Node("node2")
	v := n.StartGuest(t, "lbtest-cli-guest", lab.GuestOptions{})
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	lb(t, repoDir, false, "repo", "init")
	type result struct {
		Point       string   `json:"point"`
		Consistency string   `json:"consistency"`
		Notes       []string `json:"notes"`
	}
	backup := func() result {
		var r result
		out := lb(t, repoDir, false, "backup", "--libvirt", n.URI, "--vm", v.Name, "--json")
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("backup output %q: %v", out, err)
		}
		return r
	}
	status := func() string {
		s, err := v.Agent(`{"execute":"guest-fsfreeze-status"}`, 10)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	if r := backup(); r.Consistency != "application" || len(r.Notes) != 0 {
		t.Fatalf("first backup: consistency %q, notes %q; want application and none", r.Consistency, r.Notes)
	}
	v.Run(t, "dd if=/dev/urandom of=/data/cli1 bs=4096 count=300 2>/dev/null && echo small >/data/cli2 && sync")
	want := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(v.Run(t, "cd /data && sha256sum cli1 cli2")), "\n") {
		f := strings.Fields(line)
		want[f[1]] = f[0]
	}

	// signalDuringFreeze starts a backup, sends sig while the freeze hook
	// runs (it takes hookSeconds) and returns the backup's exit error.
	signalDuringFreeze := func(sig os.Signal, hookSeconds int) error {
		v.Run(t, fmt.Sprintf("echo %d >/run/fsfreeze-hang", hookSeconds))
		hooks := strings.Count(v.Serial(), "fsfreeze-hook: freeze")
		cmd := exec.Command(lifeboatBin, "backup", "--libvirt", n.URI, "--vm", v.Name, "--json")
		cmd.Env = append(os.Environ(), "LIFEBOAT_REPO="+repoDir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for strings.Count(v.Serial(), "fsfreeze-hook: freeze") == hooks {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("the backup never ran the freeze hook:\n%s", v.Serial())
			}
			time.Sleep(20 * time.Millisecond)
		}
		cmd.Process.Signal(sig)
		return cmd.Wait()
	}

	// SIGTERM cancels the backup: it fails, and the guest, frozen when
	// the hook ended, is thawed before the process exits.
	if err := signalDuringFreeze(syscall.SIGTERM, 2); err == nil {
		t.Fatal("backup sent SIGTERM during the freeze succeeded")
	}
	if s := status(); !strings.Contains(s, `"thawed"`) {
		t.Fatalf("guest freeze status after the terminated backup: %s", s)
	}
	if got := v.Run(t, "echo alive >/data/alive && sync && cat /data/alive"); got != "alive\n" {
		t.Fatalf("guest write after the terminated backup: %q", got)
	}

	if g := thawGuards(v.Name); len(g) > 0 {
		t.Errorf("thaw guards %v still run after the terminated backup", g)
	}

	// SIGKILL: libvirtd still delivers the dead process's freeze when
	// the hook ends; the guard thaws the guest (the hook logs the thaw)
	// and exits.
	thaws := strings.Count(v.Serial(), "fsfreeze-hook: thaw")
	killed := time.Now()
	signalDuringFreeze(os.Kill, 3)
	deadline := killed.Add(20 * time.Second)
	for strings.Count(v.Serial(), "fsfreeze-hook: thaw") == thaws || !strings.Contains(status(), `"thawed"`) {
		if time.Now().After(deadline) {
			t.Fatalf("20 s after the kill, the guest was not thawed: freeze status %s, thaw guards %v\n%s", status(), thawGuards(v.Name), v.Serial())
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("the thaw guard thawed the guest %v after the kill", time.Since(killed).Round(100*time.Millisecond))
	if got := v.Run(t, "echo alive >/data/alive && sync && cat /data/alive"); got != "alive\n" {
		t.Fatalf("guest write after the killed backup: %q", got)
	}
	for g := thawGuards(v.Name); len(g) > 0; g = thawGuards(v.Name) {
		if time.Now().After(killed.Add(30 * time.Second)) {
			t.Fatalf("thaw guards %v still run 30 s after the kill", g)
		}
		time.Sleep(100 * time.Millisecond)
	}

	r := backup()
	if r.Consistency != "application" || len(r.Notes) != 0 {
		t.Errorf("backup after the kill: consistency %q, notes %q; want application and none (the guard thawed)", r.Consistency, r.Notes)
	}
	if s := status(); !strings.Contains(s, `"thawed"`) {
		t.Fatalf("guest freeze status after the backup: %s", s)
	}
	if got := v.Run(t, "echo alive >/data/alive && sync && cat /data/alive"); got != "alive\n" {
		t.Fatalf("guest write after the backup: %q", got)
	}

	// Item-level recovery of the guest's files from that point.
	to := filepath.Join(dir, "items")
	lb(t, repoDir, false, "items", "extract", "--point", r.Point, "--to", to, "/data")
	found := map[string]string{}
	filepath.Walk(to, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			h := sha256.Sum256(b)
			found[fi.Name()] = hex.EncodeToString(h[:])
		}
		return nil
	})
	for name, sum := range want {
		if found[name] != sum {
			t.Errorf("items extract: /data/%s has sha256 %q, the guest has %s", name, found[name], sum)
		}
	}

	// The point's filesystem is clean: restore it, make it raw, e2fsck.
	out := filepath.Join(dir, "restored")
	lb(t, repoDir, false, "restore", "--point", r.Point, "--to", out)
	var disks []string
	filepath.Walk(filepath.Join(out, "disks"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			disks = append(disks, p)
		}
		return nil
	})
	if len(disks) != 1 {
		t.Fatalf("restore gave disks %q, want one", disks)
	}
	raw := filepath.Join(dir, "disk.raw")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if b, err := exec.CommandContext(ctx, testenv.Tool(t, "qemu-img"), "convert", "-O", "raw", disks[0], raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, b)
	}
	if b, err := exec.CommandContext(ctx, testenv.Tool(t, "e2fsck"), "-fn", raw).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn of the restored point: %v\n%s", err, b)
	}
}

// thawGuards lists the pids of thaw guards of vm: backups re-execute
// themselves as `lifeboat __thaw-guard ... --vm VM ...`.
func thawGuards(vm string) []int {
	var pids []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 1 && args[1] == thawGuardCmd && slices.Contains(args, vm) {
			pids = append(pids, pid)
		}
	}
	return pids
}
