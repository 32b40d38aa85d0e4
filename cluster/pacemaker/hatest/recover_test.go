package hatest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/recovery"
)

// haFlags are the `lifeboat recover` / `vm rebuild` flags that make the
// resource --ha adds one like the lab's others: the cluster reaches the
// VM through each node's own session daemon and live-migrates it.
func (w *world) haFlags() []string {
	spec := w.c.Spec("x", "/x.xml")
	var f []string
	for _, n := range w.c.Nodes {
		f = append(f, "--ha-hypervisor", n+"="+spec.NodeHypervisors[n])
	}
	return append(f, "--ha", "--ha-manager", "pacemaker", "--ha-remote-uri", spec.RemoteURI,
		"--ha-migrate-options", spec.MigrateOptions, "--ha-force-stop", "--ha-monitor", "5s")
}

// haEnv runs the Pacemaker tools of a `lifeboat` command on node n.
func (w *world) haEnv(n string) []string {
	return []string{"LIFEBOAT_PACEMAKER_COMMAND=" + strings.Join(w.c.Command(n), " ")}
}

type recoverOut struct {
	Plan    *recovery.Plan           `json:"plan"`
	Result  *recovery.Result         `json:"result"`
	Refusal *recovery.PreflightError `json:"refusal"`
}

// recoverCLI runs `lifeboat ARGS --json` on the repository and decodes
// its answer.
func (w *world) recoverCLI(env []string, args ...string) (recoverOut, string, error) {
	w.t.Helper()
	stdout, stderr, err := w.local(env, append(args, "--json")...)
	var out recoverOut
	if jerr := json.Unmarshal([]byte(stdout), &out); jerr != nil && err == nil {
		w.t.Fatalf("lifeboat %s: %v\n%s\n%s", strings.Join(args, " "), jerr, stdout, stderr)
	}
	return out, stderr, err
}

// sharedDir is a new folder of the test on the shared volume.
func (w *world) sharedDir(name string) string {
	w.t.Helper()
	d := filepath.Join(w.l.Shared, name)
	if err := os.Mkdir(d, 0o2770); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { os.RemoveAll(d) })
	os.Chmod(d, 0o2770|os.ModeSetgid)
	return d
}

// takePoint asks for a backup of the VM now and returns its point.
func (w *world) takePoint(vm string) string {
	w.t.Helper()
	j := w.backupNow(vm, false)
	var d api.JobDetail
	waitUntil(w.t, "backup of "+vm, 60*time.Second, func() bool {
		d = w.job(j.ID)
		return d.State == catalog.JobSucceeded || d.State == catalog.JobFailed
	})
	var res api.BackupResult
	json.Unmarshal(d.Result, &res)
	if d.State != catalog.JobSucceeded || res.Point == "" {
		w.t.Fatalf("backup of %s: %s %s %q", vm, d.State, d.Error, jobLog(d))
	}
	return res.Point
}

// checkHAResource checks that the resource runs (on the node that runs the
// VM), then live-migrates it with Pacemaker to the other node.
func (w *world) checkHAResource(what, id string) {
	t := w.t
	t.Helper()
	ctx := context.Background()
	on := w.runsOn(id)
	if on == "" {
		t.Fatalf("%s: VM %s runs nowhere", what, id)
	}
	if err := w.c.WaitOn(ctx, on, id, on, 60*time.Second); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, w.c.LogLines(on, id, 20))
	}
	to := w.c.Other(on)
	start := time.Now()
	if err := w.c.Move(ctx, id, to, 60*time.Second); err != nil {
		t.Fatalf("%s: move %s to %s: %v\n%s", what, id, to, err, w.c.LogLines(on, id, 30))
	}
	took := time.Since(start)
	if !strings.Contains(w.c.LogLines(on, id+" migrate_to", 5), "exited with status 0") {
		t.Errorf("%s: %s did not live-migrate to %s:\n%s", what, id, to, w.c.LogLines(on, id, 20))
	}
	if n := w.runsOn(id); n != to {
		t.Errorf("%s: after the move %s runs on %q, want %s", what, id, n, to)
	}
	t.Logf("%s: resource %s started by Pacemaker on %s, live-migrated to %s in %s (migrate_to took %s)", what, id, on, to, took.Round(time.Millisecond), w.migrateTime(on, id))
}

var execTimeRE = regexp.MustCompile(`migrate_to \(call \d+, PID \d+\) exited with status 0 \(execution time ([0-9.]+m?s)`)

// migrateTime is how long the agent's last migrate_to of the resource on
// node n ran, from the node's Pacemaker log.
func (w *world) migrateTime(n, id string) string {
	m := execTimeRE.FindAllStringSubmatch(w.c.LogLines(n, id+" migrate_to", 10), -1)
	if len(m) == 0 {
		return "?"
	}
	return m[len(m)-1][1]
}

// Issue 8, outcomes 4–6: recoveries of a VM that the cluster runs.
//   - Method 2 with --ha to the other node adds a VirtualDomain resource
//     that Pacemaker runs and live-migrates like any other (outcome 5).
//   - Method 3, then `vm rebuild --ha`, gives the same (outcome 6).
//   - Method 1 restores in place and the VM stays a cluster resource;
//     after the resource is deleted it is refused with LB-32579 and
//     nothing changes (outcome 4).
func TestHARecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster end-to-end")
	}
	w := newWorld(t)
	ctx := context.Background()
	v := w.newHAVM("rec")
	src := w.runsOn(v.Name)
	if src == "" {
		t.Fatalf("%s runs on no node", v.Name)
	}
	dst := w.c.Other(src)
	waitUntil(t, "inventory of "+v.Name, 30*time.Second, func() bool {
		s := w.vm(v.Name)
		return s.State == catalog.VMRunning && s.OwnerName == src
	})
	w.guestWrite(v.Name, 0x6e, 20<<20, 1<<20)
	point := w.takePoint(v.Name)

	t.Run("method2-ha", func(t *testing.T) {
		w := *w
		w.t = t
		dir := w.sharedDir(v.Name + "-m2")
		out, stderr, err := w.recoverCLI(w.haEnv(dst), append([]string{"recover", "--method", "vm", "--point", point,
			"--host", w.l.Node(dst).URI, "--host-name", dst, "--to", dir, "--new-identity"}, w.haFlags()...)...)
		if err != nil {
			t.Fatalf("method 2 --ha to %s: %v\n%s", dst, err, stderr)
		}
		name := out.Result.VM
		t.Cleanup(func() { w.removeResource(name) })
		if !out.Result.HA || !out.Result.Running || out.Result.Host != dst {
			t.Errorf("method 2 result: %+v", out.Result)
		}
		t.Logf("method 2 --ha: %s on %s in %.1fs, notes %q", name, out.Result.Host, out.Result.Seconds, out.Result.Notes)
		w.checkHAResource("method 2", name)
	})

	t.Run("method3-rebuild-ha", func(t *testing.T) {
		w := *w
		w.t = t
		dir := w.sharedDir(v.Name + "-m3")
		if _, stderr, err := w.recoverCLI(nil, "recover", "--method", "folder", "--point", point, "--to", dir); err != nil {
			t.Fatalf("method 3: %v\n%s", err, stderr)
		}
		out, stderr, err := w.recoverCLI(w.haEnv(dst), append([]string{"vm", "rebuild", dir,
			"--libvirt", w.l.Node(dst).URI, "--host-name", dst, "--new-identity"}, w.haFlags()...)...)
		if err != nil {
			t.Fatalf("vm rebuild --ha on %s: %v\n%s", dst, err, stderr)
		}
		name := out.Result.VM
		t.Cleanup(func() { w.removeResource(name) })
		if !out.Result.HA || !out.Result.Running {
			t.Errorf("vm rebuild result: %+v", out.Result)
		}
		w.checkHAResource("method 3 + rebuild", name)
	})

	t.Run("method1-in-place", func(t *testing.T) {
		w := *w
		w.t = t
		on := w.runsOn(v.Name)
		want := w.restoredDisk(point)
		// A write after the point, which the recovery undoes.
		w.guestWrite(v.Name, 0x7f, 20<<20, 1<<20)
		out, stderr, err := w.recoverCLI(w.haEnv(on), "recover", "--method", "original", "--point", point,
			"--libvirt", w.l.Node(on).URI, "--host-name", on, "--ha-manager", "pacemaker", "--graceful-timeout", "1s")
		if err != nil {
			t.Fatalf("method 1 on %s: %v\n%s\nplan notes: %v", on, err, stderr, planNotes(out))
		}
		t.Logf("method 1: %+v", out.Result)
		if !out.Result.HA {
			t.Errorf("method 1 result: not HA: %+v", out.Result)
		}
		// The cluster runs it again (wherever it chooses).
		waitUntil(t, v.Name+" running again", 60*time.Second, func() bool { return w.runsOn(v.Name) != "" })
		now := w.runsOn(v.Name)
		if err := w.c.WaitOn(ctx, now, v.Name, now, 60*time.Second); err != nil {
			t.Fatalf("after method 1: %v\n%s", err, w.c.LogLines(now, v.Name, 30))
		}
		// Unmanaged while it was restored, the resource saw no failure.
		rs, err := w.c.Manager(now).Resources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.ID == v.Name && (len(r.Failures) > 0 || !r.Managed) {
				t.Errorf("after method 1 resource %s: managed %v, failures %+v", r.ID, r.Managed, r.Failures)
			}
		}
		if got := imageBytes(t, v.Disk); !bytes.Equal(got, want) {
			t.Errorf("after method 1 the disk differs from the point")
		}

		// The resource goes (the VM keeps running, unmanaged first):
		// method 1 is refused and changes nothing.
		if _, err := w.c.Exec(ctx, now, "crm_resource", "--resource", v.Name, "--meta", "--set-parameter", "is-managed", "--parameter-value", "false"); err != nil {
			t.Fatal(err)
		}
		if _, err := w.c.Exec(ctx, now, "cibadmin", "--delete-all", "--force", "--xpath", "//constraints/*[@rsc='"+v.Name+"']"); err != nil {
			t.Fatal(err)
		}
		if _, err := w.c.Exec(ctx, now, "cibadmin", "--delete", "--xpath", "//primitive[@id='"+v.Name+"']"); err != nil {
			t.Fatal(err)
		}
		sum := fileSum(t, v.Disk)
		cfg := fileSum(t, v.Config)
		out, stderr, err = w.recoverCLI(w.haEnv(now), "recover", "--method", "original", "--point", point,
			"--libvirt", w.l.Node(now).URI, "--host-name", now, "--ha-manager", "pacemaker")
		if err == nil || out.Refusal == nil || out.Refusal.Code != "LB-32579" {
			t.Errorf("method 1 after the resource was deleted: %v, refusal %+v\n%s", err, out.Refusal, stderr)
		} else {
			t.Logf("refused: %s", out.Refusal.Error())
		}
		if fileSum(t, v.Disk) != sum || fileSum(t, v.Config) != cfg {
			t.Errorf("the refused recovery changed the VM's files")
		}
		if w.runsOn(v.Name) != now {
			t.Errorf("after the refusal %s runs on %q, want %s as before", v.Name, w.runsOn(v.Name), now)
		}
	})
}

func planNotes(o recoverOut) []string {
	if o.Plan == nil {
		return nil
	}
	return o.Plan.Notes
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}
