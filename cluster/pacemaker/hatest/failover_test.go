package hatest

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
)

// Issue 8, outcome 1: protection follows the VM. A protected VM that the
// cluster runs live-migrates (crm_resource --move) while its group runs; a
// backup asked for during the migration is deferred and runs on the new
// owner; the chain after the move continues or falls back to a full read
// that stores only new chunks (the test says which); every point restores
// to a state the guest really had, bit for bit, in order.
func TestHAMigrationFollowed(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster end-to-end")
	}
	w := newWorld(t)
	ctx := context.Background()
	v := w.newHAVM("mig")
	states := newGuestStates(t, w.l.Images.EXT4)
	src := w.runsOn(v.Name)
	if src == "" {
		t.Fatalf("%s runs on no node", v.Name)
	}
	dst := w.c.Other(src)
	waitUntil(t, "inventory of "+v.Name, 30*time.Second, func() bool {
		s := w.vm(v.Name)
		return s.State == catalog.VMRunning && s.OwnerName == src && strings.EqualFold(s.UUID, v.UUID)
	})
	w.lb(nil, "group", "create", "mig", "--incremental", "1h", "--member", v.Name)
	waitUntil(t, "a first point", 30*time.Second, func() bool { return len(w.points(v.Name)) >= 1 })
	const written = 2 << 20
	w.guestWrite(v.Name, 0x3c, 30<<20, written)
	states.write(0x3c, 30<<20, written)
	waitUntil(t, "an incremental point with the guest write", 30*time.Second, func() bool {
		ps := w.points(v.Name)
		return len(ps) >= 2 && bytesRead(ps[len(ps)-1]) >= written
	})

	// Move right after a point, so that no backup runs when the migration
	// starts (libvirt refuses to migrate a VM with a backup job); one
	// asked for while it moves must wait for the move.
	before := len(w.points(v.Name))
	waitUntil(t, "the next point", 30*time.Second, func() bool { return len(w.points(v.Name)) > before })
	before = len(w.points(v.Name))
	srcURI := w.l.Node(src).URI
	moveErr := make(chan error, 1)
	start := time.Now()
	go func() { moveErr <- w.c.Move(ctx, v.Name, dst, 60*time.Second) }()
	var manual catalog.Job
	var took time.Duration
	for done := false; !done; {
		select {
		case err := <-moveErr:
			if err != nil {
				t.Fatalf("move %s to %s: %v\n%s", v.Name, dst, err, w.c.LogLines(src, v.Name, 30))
			}
			took, done = time.Since(start), true
		default:
			if manual.ID == 0 {
				out, _ := exec.Command("virsh", "-c", srcURI, "domjobinfo", v.Name).CombinedOutput()
				if strings.Contains(string(out), "migration") {
					manual = w.backupNow(v.Name, false)
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	moved := time.Now()
	t.Logf("pacemaker moved %s from %s to %s in %s (migrate_to took %s)", v.Name, src, dst, took.Round(time.Millisecond), w.migrateTime(src, v.Name))
	rs, err := w.c.Manager(dst).Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.ID == v.Name && len(r.Failures) > 0 {
			t.Errorf("the move was no clean live migration: %+v", r.Failures)
		}
	}
	if !strings.Contains(w.c.LogLines(src, v.Name+" migrate_to", 5), "exited with status 0") {
		t.Errorf("no successful migrate_to of %s in %s's log:\n%s", v.Name, src, w.c.LogLines(src, v.Name, 20))
	}
	waitUntil(t, v.Name+" owned by "+dst, 20*time.Second, func() bool {
		s := w.vm(v.Name)
		return s.OwnerName == dst && s.State == catalog.VMRunning && strings.EqualFold(s.UUID, v.UUID)
	})

	// The first point from the new owner, then a second guest write and
	// an incremental that reads it.
	var first catalog.Point
	waitUntil(t, "a point from "+dst, 30*time.Second, func() bool {
		for _, p := range w.points(v.Name)[before:] {
			if p.Host == dst {
				first = p
				return true
			}
		}
		return false
	})
	t.Logf("first point from %s %s after the move", dst, first.Recorded.Sub(moved).Round(time.Millisecond))
	switch {
	case fellBack(first):
		t.Logf("the chain fell back to a full read after the move: read %d bytes, stored %d new bytes (%q)", bytesRead(first), newBytes(first), first.Notes)
		if newBytes(first) > diskSize/16 {
			t.Errorf("the full read after the move stored %d new bytes: more than the new chunks", newBytes(first))
		}
	case first.Previous != "" && bytesRead(first) < diskSize/8:
		t.Logf("the chain continued after the move: an incremental read %d bytes", bytesRead(first))
	default:
		t.Errorf("first point after the move: notes %q, read %d bytes, previous %q", first.Notes, bytesRead(first), first.Previous)
	}
	w.guestWrite(v.Name, 0x5d, 40<<20, written)
	states.write(0x5d, 40<<20, written)
	var last catalog.Point
	waitUntil(t, "an incremental from "+dst+" with the second write", 30*time.Second, func() bool {
		ps := w.points(v.Name)
		p := ps[len(ps)-1]
		if p.ID != first.ID && p.Host == dst && bytesRead(p) >= written {
			last = p
			return true
		}
		return false
	})
	if fellBack(last) || bytesRead(last) > diskSize/8 {
		t.Errorf("point after the second write is not incremental: read %d, notes %q", bytesRead(last), last.Notes)
	}

	// The backup asked for mid-migration ran on the new owner.
	if manual.ID == 0 {
		t.Errorf("the migration was never seen running: no backup was asked for during it")
	} else {
		var d api.JobDetail
		waitUntil(t, "the backup asked for during the migration", 30*time.Second, func() bool {
			d = w.job(manual.ID)
			return d.State == catalog.JobSucceeded || d.State == catalog.JobFailed
		})
		var res api.BackupResult
		json.Unmarshal(d.Result, &res)
		var p catalog.Point
		if _, err := w.api.Do(ctx, "GET", api.Prefix+"/points/"+res.Point, nil, &p); err != nil || d.State != catalog.JobSucceeded || p.Host != dst {
			t.Errorf("backup job %d asked for mid-migration: %s %s, point %s on %q (%v)", d.ID, d.State, d.Error, res.Point, p.Host, err)
		}
		t.Logf("backup job %d asked for mid-migration: %d attempts, log %q", d.ID, d.Attempts, jobLog(d))
	}
	// No job failed; some job (that one, unless the move ended before an
	// agent claimed it) met the migration and was deferred.
	var jobs []catalog.Job
	w.lb(&jobs, "job", "list", "--kind", "backup", "--limit", "1000")
	deferred := 0
	for _, j := range jobs {
		log := strings.Join(jobLog(w.job(j.ID)), "\n")
		if j.State == catalog.JobFailed {
			t.Errorf("backup job %d failed: %s\n%s", j.ID, j.Error, log)
		}
		// Met on the source while it moves ("is migrating"), or just
		// after ("left node … the job follows it").
		if j.Attempts > 1 && (strings.Contains(log, "is migrating") || strings.Contains(log, "the job follows it")) {
			deferred++
		}
	}
	// A deferral needs an agent to have claimed a job while the VM moved.
	// When the move was over before any claim, the job asked for during it
	// was claimed by the new owner at once (one attempt; its point from
	// dst is checked above): there was nothing to defer.
	switch {
	case deferred > 0:
		t.Logf("%d backup job(s) met the migration and were deferred", deferred)
	case manual.ID != 0 && w.job(manual.ID).Attempts == 1 && w.job(manual.ID).State == catalog.JobSucceeded:
		t.Logf("the move was over before an agent claimed the job asked for during it: %s ran it at once", dst)
	default:
		t.Errorf("no backup job was deferred by the migration")
	}

	// Every point restores to a guest state, in order, the last one to
	// the newest.
	prev := 0
	ps := w.points(v.Name)
	for i, p := range ps {
		k := states.match(w.restoredDisk(p.ID))
		switch {
		case k < 0:
			t.Errorf("point %d (%s, %s) restores to no state the guest had", i, p.ID, p.Host)
		case k < prev:
			t.Errorf("point %d (%s) restores to guest state %d, older than the point before it (%d)", i, p.ID, k, prev)
		default:
			prev = k
		}
		if p.ID == last.ID && k != len(states.states)-1 {
			t.Errorf("the point after the second write restores to state %d, want %d", k, len(states.states)-1)
		}
	}
	t.Logf("%d points restored bit-identically (%d from %s, the rest from %s)", len(ps), countHost(ps, dst), dst, src)
	if _, stderr, err := w.local(nil, "verify"); err != nil {
		t.Errorf("verify: %v\n%s", err, stderr)
	}
}

func countHost(ps []catalog.Point, host string) (n int) {
	for _, p := range ps {
		if p.Host == host {
			n++
		}
	}
	return n
}

// Issue 8, outcome 2: node death mid-backup. The node running a VM dies
// (corosync, pacemaker and the VM's QEMU killed) while a backup of the VM
// runs: the job fails cleanly and no partial point is listed; Pacemaker
// restarts the VM on the survivor; the next scheduled backup runs there;
// verify passes.
func TestHANodeDeathMidBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster end-to-end")
	}
	w := newWorld(t)
	ctx := context.Background()
	v := w.newHAVMSized("death", 512<<20)
	src := w.runsOn(v.Name)
	if src == "" {
		t.Fatalf("%s runs on no node", v.Name)
	}
	dst := w.c.Other(src)
	dead := false
	t.Cleanup(func() {
		if dead {
			if err := w.c.Revive(src); err != nil {
				t.Errorf("revive %s: %v", src, err)
			}
		}
	})
	waitUntil(t, "inventory of "+v.Name, 30*time.Second, func() bool {
		s := w.vm(v.Name)
		return s.State == catalog.VMRunning && s.OwnerName == src
	})
	// Data for a full read to chew on, so the kill meets a running backup.
	for i := int64(0); i < 4; i++ {
		w.guestWrite(v.Name, byte(0x40+i), (64+i*64)<<20, 64<<20)
	}
	w.lb(nil, "group", "create", "death", "--incremental", "1h", "--member", v.Name)
	waitUntil(t, "a first point", 30*time.Second, func() bool { return len(w.points(v.Name)) >= 1 })

	// A full-read backup asked for now; the node dies once it runs.
	var job catalog.Job
	waitUntil(t, "no backup running", 30*time.Second, func() bool {
		s := w.vm(v.Name)
		return s.LastBackupState != catalog.JobRunning && s.LastBackupState != catalog.JobQueued
	})
	job = w.backupNow(v.Name, true)
	// libvirt's own view: the backup job is there once the agent began
	// reading.
	srcURI := w.l.Node(src).URI
	for deadline := time.Now().Add(20 * time.Second); ; {
		out, _ := exec.Command("virsh", "-c", srcURI, "domjobinfo", v.Name).CombinedOutput()
		d := w.job(job.ID)
		if d.State != catalog.JobRunning && d.State != catalog.JobQueued {
			t.Fatalf("backup job %d ended (%s) before the kill", job.ID, d.State)
		}
		// Ours, not a scheduled one, must be the job that runs.
		if strings.Contains(string(out), "Backup") && d.State == catalog.JobRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no backup job of %s on %s after 20s", v.Name, src)
		}
	}
	pointsBefore := len(w.points(v.Name))
	killed := time.Now()
	if err := w.c.Kill(src, v.Name); err != nil {
		t.Fatal(err)
	}
	dead = true
	t.Logf("killed %s (took %s) while backup job %d ran", src, time.Since(killed).Round(time.Millisecond), job.ID)

	// Pacemaker restarts the VM on the survivor.
	if err := w.c.WaitOn(ctx, dst, v.Name, dst, 60*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, w.c.LogLines(dst, v.Name, 30))
	}
	failover := time.Since(killed)
	t.Logf("%s runs on %s %s after %s died", v.Name, dst, failover.Round(time.Millisecond), src)

	// The interrupted job either fails with a reason, or (what Lifeboat
	// does when the VM is gone from the node) follows the VM and runs on
	// the survivor; either way no point comes from the dead node.
	var d api.JobDetail
	waitUntil(t, "the interrupted backup job to end", 90*time.Second, func() bool {
		d = w.job(job.ID)
		return d.State == catalog.JobSucceeded || d.State == catalog.JobFailed || d.State == catalog.JobCanceled
	})
	var res api.BackupResult
	json.Unmarshal(d.Result, &res)
	switch d.State {
	case catalog.JobFailed:
		if d.Error == "" {
			t.Errorf("interrupted backup job %d failed without a reason", d.ID)
		}
		if res.Point != "" {
			t.Errorf("the failed job names a point: %s", res.Point)
		}
		t.Logf("interrupted backup job %d failed: %s", d.ID, d.Error)
	case catalog.JobSucceeded:
		var p catalog.Point
		if _, err := w.api.Do(ctx, "GET", api.Prefix+"/points/"+res.Point, nil, &p); err != nil || p.Host != dst || !p.Recorded.After(killed) {
			t.Errorf("interrupted backup job %d succeeded with point %s from %q at %s (%v): want a point from %s after the death", d.ID, res.Point, p.Host, p.Recorded, err, dst)
		}
		t.Logf("interrupted backup job %d followed the VM to %s (%d attempts): %q", d.ID, dst, d.Attempts, jobLog(d))
	default:
		t.Errorf("interrupted backup job %d: %s", d.ID, d.State)
	}

	// The next scheduled backup runs on the survivor.
	var first, next catalog.Point
	waitUntil(t, "a scheduled point from "+dst, 60*time.Second, func() bool {
		for _, p := range w.points(v.Name) {
			if p.Host != dst {
				continue
			}
			if first.ID == "" {
				first = p
			}
			if p.ID != res.Point {
				next = p
				return true
			}
		}
		return false
	})
	t.Logf("first point from %s %s after %s died; first scheduled one %s after (notes %q)", dst,
		first.Recorded.Sub(killed).Round(time.Millisecond), src, next.Recorded.Sub(killed).Round(time.Millisecond), next.Notes)

	// No point of the interrupted job, in the catalog or the repository.
	ps := w.points(v.Name)
	for _, p := range ps {
		if p.Host == src && p.Recorded.After(killed) {
			t.Errorf("point %s from the dead node %s recorded after its death", p.ID, src)
		}
	}
	if got := len(ps) - countHost(ps, dst); got != pointsBefore {
		t.Errorf("%d points from %s after the kill, %d before", got, src, pointsBefore)
	}
	stdout, stderr, err := w.local(nil, "points", "--json")
	if err != nil {
		t.Fatalf("points: %v\n%s", err, stderr)
	}
	var repoPoints []struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
	if err := json.Unmarshal([]byte(stdout), &repoPoints); err != nil {
		t.Fatalf("points --json: %v\n%s", err, stdout)
	}
	catalogIDs := map[string]bool{}
	for _, p := range w.points(v.Name) {
		catalogIDs[p.ID] = true
	}
	for _, p := range repoPoints {
		if p.Name == v.Name && !catalogIDs[p.ID] {
			t.Errorf("the repository lists point %s of %s that the catalog does not", p.ID, v.Name)
		}
	}
	if _, stderr, err := w.local(nil, "verify"); err != nil {
		t.Errorf("verify: %v\n%s", err, stderr)
	}

	// The node comes back; the VM stays where it runs.
	start := time.Now()
	if err := w.c.Revive(src); err != nil {
		t.Fatal(err)
	}
	dead = false
	t.Logf("%s rejoined in %s", src, time.Since(start).Round(time.Millisecond))
	if n := w.runsOn(v.Name); n != dst {
		t.Errorf("after %s rejoined, %s runs on %q", src, v.Name, n)
	}
}

type agentRow struct {
	catalog.Node
	Reachable bool `json:"reachable"`
}

func (w *world) agent(name string) agentRow {
	w.t.Helper()
	var as []agentRow
	if _, err := w.api.Do(context.Background(), "GET", api.Prefix+"/agents", nil, &as); err != nil {
		w.t.Fatal(err)
	}
	for _, a := range as {
		if a.Name == name {
			return a
		}
	}
	w.t.Fatalf("no agent %s", name)
	return agentRow{}
}

func (w *world) alerts(kind, subject string) []catalog.Alert {
	w.t.Helper()
	var as []catalog.Alert
	if _, err := w.api.Do(context.Background(), "GET", api.Prefix+"/alerts?kind="+kind, nil, &as); err != nil {
		w.t.Fatal(err)
	}
	var out []catalog.Alert
	for _, a := range as {
		if a.Subject == subject {
			out = append(out, a)
		}
	}
	return out
}

// Issue 8, outcome 3: agent death. The agent of the node that runs a VM
// is killed while the node stays up: the server marks the node
// unreachable, raises an alert and runs nothing there (a backup asked for
// waits); when the agent returns, the waiting backup runs there.
func TestHAAgentDeath(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster end-to-end")
	}
	w := newWorld(t)
	v := w.newHAVM("agent")
	on := w.runsOn(v.Name)
	if on == "" {
		t.Fatalf("%s runs on no node", v.Name)
	}
	waitUntil(t, "inventory of "+v.Name, 30*time.Second, func() bool {
		s := w.vm(v.Name)
		return s.State == catalog.VMRunning && s.OwnerName == on
	})
	waitUntil(t, "both agents reachable", 10*time.Second, func() bool {
		return w.agent(on).Reachable && w.agent(w.c.Other(on)).Reachable
	})

	w.agents[on].kill()
	killed := time.Now()
	waitUntil(t, on+" marked unreachable", 20*time.Second, func() bool { return !w.agent(on).Reachable })
	marked := time.Since(killed)
	waitUntil(t, "a node-unreachable alert", 20*time.Second, func() bool { return len(w.alerts("node-unreachable", "node:"+on)) > 0 })
	a := w.alerts("node-unreachable", "node:"+on)[0]
	t.Logf("%s marked unreachable %s after its agent died; alert %s: %s", on, marked.Round(time.Millisecond), a.Severity, a.Message)
	if !w.agent(w.c.Other(on)).Reachable {
		t.Errorf("the other node's agent is marked unreachable too")
	}

	// Nothing runs there: a backup asked for waits, claimed by no one.
	job := w.backupNow(v.Name, false)
	time.Sleep(3 * time.Second)
	if d := w.job(job.ID); d.State != catalog.JobQueued || d.NodeID != 0 {
		t.Errorf("backup job %d while %s's agent is dead: state %s, node %d; want queued, unclaimed", d.ID, on, d.State, d.NodeID)
	}
	if n := w.runsOn(v.Name); n != on {
		t.Errorf("%s runs on %q, want %s (the node is up)", v.Name, n, on)
	}

	// The agent returns: the node is reachable again and the job runs.
	w.startAgent(on)
	back := time.Now()
	waitUntil(t, on+" reachable again", 20*time.Second, func() bool { return w.agent(on).Reachable })
	var d api.JobDetail
	waitUntil(t, "the waiting backup", 60*time.Second, func() bool {
		d = w.job(job.ID)
		return d.State == catalog.JobSucceeded || d.State == catalog.JobFailed
	})
	var res api.BackupResult
	json.Unmarshal(d.Result, &res)
	var p catalog.Point
	if _, err := w.api.Do(context.Background(), "GET", api.Prefix+"/points/"+res.Point, nil, &p); err != nil || d.State != catalog.JobSucceeded || p.Host != on {
		t.Errorf("backup job %d after the agent returned: %s %s, point %s from %q (%v)", d.ID, d.State, d.Error, res.Point, p.Host, err)
	}
	t.Logf("agent of %s back: job %d %s %s after its return", on, d.ID, d.State, time.Since(back).Round(time.Millisecond))
	waitUntil(t, "the alert acknowledged", 10*time.Second, func() bool {
		as := w.alerts("node-unreachable", "node:"+on)
		return len(as) > 0 && !as[0].Acknowledged.IsZero()
	})
}
