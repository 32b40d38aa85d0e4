package recovery

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"lifeboat/backup"
	"lifeboat/hypervisor"
	"lifeboat/hypervisor/libvirt"
	"lifeboat/lab"
	"lifeboat/repo"
)

// verifyTarget is a node that runs throwaway VMs: its driver, the folder
// both sides see, and who its QEMU runs as.
type verifyTarget struct {
	node lab.Node
	drv  *libvirt.Driver
}

func (vt verifyTarget) request(t *testing.T, point string) VerifyBootRequest {
	t.Helper()
	req := VerifyBootRequest{Point: point, Driver: vt.drv, TargetHost: vt.node.Name, Dir: vt.node.Scratch, Timeout: 60 * time.Second}
	if vt.node.User != "" && vt.node.User != "root" {
		u, err := user.Lookup(vt.node.User)
		if err != nil {
			t.Fatal(err)
		}
		req.UID, _ = strconv.Atoi(u.Uid)
		req.GID, _ = strconv.Atoi(u.Gid)
		req.ChownDir = true
	}
	return req
}

// nothingLeft checks that a verify-boot of vm left no domain, no run
// folder, no NBD listener and no open overlay behind.
func nothingLeft(t *testing.T, vt verifyTarget, vm string) {
	t.Helper()
	prefix := vm + "-verify-"
	list, err := vt.drv.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range list {
		if strings.HasPrefix(v.Name, prefix) {
			t.Errorf("domain %s (%s) is left on %s", v.Name, v.State, vt.node.Name)
		}
	}
	ents, err := os.ReadDir(vt.node.Scratch)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Errorf("%s is left in %s", e.Name(), vt.node.Scratch)
		}
	}
	unix, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(unix), filepath.Join(vt.node.Scratch, prefix)) {
		t.Errorf("a unix socket under %s still exists", filepath.Join(vt.node.Scratch, prefix))
	}
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.Contains(l, prefix) {
			t.Errorf("this process still holds %s open", l)
		}
	}
}

// TestLabVerifyBoot backs up the lab's real Linux guest running on node0
// and verify-boots the points: a good one passes with a check command run
// in the guest; an offline point (saved state from node0) boots cold on
// node1; a point without the guest agent is booted-no-agent; a point whose
// /sbin/init was destroyed does not boot, with the kernel's panic in the
// serial log. No run leaves a domain, folder, overlay or listener. Then
// method 2 brings the offline point up on node2, dropping its saved state,
// and the recovered VM's agent answers.
func TestLabVerifyBoot(t *testing.T) {
	l := lab.Start(t)
	lab.Guest(t)
	ctx := context.Background()
	n0, n1 := l.Node("node0"), l.Node("node1")
	d0, d1 := openNode(t, n0), openNode(t, n1)
	t0 := time.Now()

	name := fmt.Sprintf("lbvb%06x", time.Now().UnixNano()&0xffffff)
	g := n0.StartGuest(t, name, lab.GuestOptions{})
	t.Logf("guest %s on node0: agent after %.1fs", name, g.BootToAgent.Seconds())
	g.Run(t, "echo verified >/data/marker && sync")
	r, _ := newRepo(t)
	good, err := backup.RunVM(ctx, r, d0, name, backup.VMOptions{Options: backup.Options{Host: "node0"}})
	if err != nil {
		t.Fatal(err)
	}
	offline, err := backup.RunVM(ctx, r, d0, name, backup.VMOptions{Options: backup.Options{Host: "node0"}, Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	if !hasRole(offline, repo.RoleSavedState) {
		t.Fatalf("the offline point has no saved state: %+v", offline.Files)
	}
	if err := g.WaitAgent(ctx); err != nil {
		t.Fatal(err)
	}
	// Without its agent the guest still boots (the running agent goes on).
	g.Run(t, "rm /usr/sbin/qemu-ga && sync")
	noAgent, err := backup.RunVM(ctx, r, d0, name, backup.VMOptions{Options: backup.Options{Host: "node0"}})
	if err != nil {
		t.Fatal(err)
	}
	// /sbin/init becomes a file the kernel cannot execute.
	g.Run(t, "rm /sbin/init && echo 'not an executable' >/sbin/init && chmod 755 /sbin/init && sync")
	broken, err := backup.RunVM(ctx, r, d0, name, backup.VMOptions{Options: backup.Options{Host: "node0"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("setup (guest, 4 backups) %.1fs", time.Since(t0).Seconds())
	rc := &Recovery{Repo: r, Log: func(m string) { t.Log(m) }}
	on0, on1 := verifyTarget{n0, d0}, verifyTarget{n1, d1}

	t.Run("good", func(t *testing.T) {
		var times []string
		for i := 0; i < 3; i++ {
			req := on0.request(t, good.ID)
			req.Check = "cat /data/marker && test -x /usr/sbin/qemu-ga"
			v, err := rc.VerifyBoot(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if v.Verdict != VerdictAgentOK || v.Check == nil || v.Check.ExitCode != 0 || v.Check.Stdout != "verified\n" {
				t.Fatalf("verdict %s (%s), check %+v\nserial:\n%s", v.Verdict, v.Reason, v.Check, v.SerialLog)
			}
			if !strings.Contains(v.SerialLog, "LIFEBOAT-GUEST-READY") {
				t.Errorf("the serial log lacks the guest's ready line:\n%s", v.SerialLog)
			}
			nothingLeft(t, on0, name)
			times = append(times, fmt.Sprintf("%.1fs (agent after %.1fs; phases %+v)", v.Seconds, v.BootSeconds, v.Phases))
		}
		t.Logf("verify-boot of a good point on node0, 3 runs: %s", strings.Join(times, ", "))
		// A failing check fails the point.
		req := on0.request(t, good.ID)
		req.Check = "echo broken >&2; exit 3"
		v, err := rc.VerifyBoot(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if v.Verdict != VerdictCheckFailed || v.Check.ExitCode != 3 || v.Check.Stderr != "broken\n" {
			t.Errorf("failing check: %s (%s) %+v", v.Verdict, v.Reason, v.Check)
		}
		nothingLeft(t, on0, name)
		vs, err := rc.BootVerdicts(ctx, good.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(vs) != 4 || vs[0].Verdict != VerdictAgentOK || vs[3].Verdict != VerdictCheckFailed || vs[3].SerialLog == "" {
			t.Errorf("%d verdicts recorded for %s", len(vs), good.ID)
		}
	})

	// Interrupted mid-boot (an operator's ^C, a job cancelled): an error,
	// no verdict recorded, and still nothing left behind.
	t.Run("cancelled", func(t *testing.T) {
		before, err := r.VerdictKeys(ctx, good.ID)
		if err != nil {
			t.Fatal(err)
		}
		c, cancel := context.WithCancel(ctx)
		defer cancel()
		rc := &Recovery{Repo: r, Log: func(m string) {
			if strings.HasPrefix(m, "starting ") {
				time.AfterFunc(time.Second, cancel)
			}
		}}
		v, err := rc.VerifyBoot(c, on0.request(t, good.ID))
		if err == nil || v != nil {
			t.Fatalf("cancelled verify-boot: %+v, %v", v, err)
		}
		nothingLeft(t, on0, name)
		if after, _ := r.VerdictKeys(ctx, good.ID); len(after) != len(before) {
			t.Errorf("a cancelled run recorded a verdict: %v", after)
		}
	})

	t.Run("saved-state-other-host", func(t *testing.T) {
		req := on1.request(t, offline.ID)
		v, err := rc.VerifyBoot(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("offline point on node1: %s (%s) in %.1fs (agent after %.1fs); notes %v", v.Verdict, v.Reason, v.Seconds, v.BootSeconds, v.Notes)
		if v.Verdict != VerdictAgentOK {
			t.Fatalf("verdict %s (%s)\nserial:\n%s", v.Verdict, v.Reason, v.SerialLog)
		}
		if !strings.Contains(strings.Join(v.Notes, "\n"), "saved state") || !strings.Contains(v.SerialLog, "LIFEBOAT-GUEST-READY") {
			t.Errorf("not a cold boot: notes %v\nserial:\n%s", v.Notes, v.SerialLog)
		}
		nothingLeft(t, on1, name)
	})

	t.Run("no-agent", func(t *testing.T) {
		req := on1.request(t, noAgent.ID)
		req.Timeout = 15 * time.Second
		v, err := rc.VerifyBoot(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("point without agent: %s (%s) in %.1fs", v.Verdict, v.Reason, v.Seconds)
		if v.Verdict != VerdictNoAgent || !strings.Contains(v.SerialLog, "LIFEBOAT-GUEST-READY") {
			t.Errorf("verdict %s (%s)\nserial:\n%s", v.Verdict, v.Reason, v.SerialLog)
		}
		nothingLeft(t, on1, name)
	})

	t.Run("broken-init", func(t *testing.T) {
		req := on0.request(t, broken.ID)
		req.Timeout = 30 * time.Second
		v, err := rc.VerifyBoot(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("point with a broken /sbin/init: %s (%s) in %.1fs", v.Verdict, v.Reason, v.Seconds)
		if v.Verdict != VerdictNoBoot || !strings.Contains(v.SerialLog, "Kernel panic") {
			t.Errorf("verdict %s (%s)\nserial:\n%s", v.Verdict, v.Reason, v.SerialLog)
		}
		nothingLeft(t, on0, name)
		vs, err := rc.BootVerdicts(ctx, broken.ID)
		if err != nil || len(vs) != 1 || !strings.Contains(vs[0].SerialLog, "Kernel panic") {
			t.Errorf("recorded verdict of the broken point: %v %v", vs, err)
		}
	})

	// DPM's first-boot failure: a point with saved state recovered to
	// another host must boot cold there and come up.
	t.Run("method2-saved-state-other-host", func(t *testing.T) {
		// Other tests kill node daemons on purpose: lab.Start brings a
		// dead one back, and a fresh connection reaches it.
		d2 := openNode(t, lab.Start(t).Node("node2"))
		t1 := time.Now()
		dir := filepath.Join(l.Shared, name+"-m2")
		t.Cleanup(func() { os.RemoveAll(dir) })
		t.Cleanup(func() { removeVM(d2, name) })
		rc := &Recovery{Repo: r}
		p, err := rc.Plan(ctx, Request{Method: MethodVM, Point: offline.ID, Driver: d2, TargetHost: "node2", Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if p.KeepSavedState || !hasNote(p, "saved state", "dropped", "node2") {
			t.Fatalf("saved state not dropped: %v", p.Notes)
		}
		// The source's serial log is in node0's folder, which node2's
		// QEMU cannot write: it moves beside the disks.
		if !hasNote(p, name+".serial.log", "is written to "+filepath.Join(dir, name+".serial.log")) {
			t.Errorf("the serial log was not moved into %s: %v", dir, p.Notes)
		}
		res, err := rc.Execute(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		obs, err := WaitGuestAgent(ctx, d2, d2, name, "", 60*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if obs.Verdict != VerdictAgentOK {
			log, _ := os.ReadFile(filepath.Join(dir, name+".serial.log"))
			t.Fatalf("recovered VM on node2: %s (%s)\nserial:\n%s", obs.Verdict, obs.Reason, log)
		}
		out := RunGuestCommand(ctx, d2, name, "cat /data/marker", 30*time.Second)
		if out.ExitCode != 0 || out.Stdout != "verified\n" {
			t.Errorf("guest data after method 2: %+v", out)
		}
		if st := state(t, d2, name); st != hypervisor.Running {
			t.Errorf("recovered VM is %s", st)
		}
		t.Logf("method 2 of the offline point to node2, agent answering: %.1fs (notes %v)", time.Since(t1).Seconds(), res.Notes)
	})
	t.Logf("total %.1fs", time.Since(t0).Seconds())
}

func hasRole(p *repo.Point, role string) bool {
	for _, f := range p.Files {
		if f.Role == role {
			return true
		}
	}
	return false
}
