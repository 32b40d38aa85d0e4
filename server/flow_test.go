package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"lifeboat/agent"
	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/disk"
	"lifeboat/disk/formats"
	"lifeboat/server"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

func randomFile(t *testing.T, path string, n int) []byte {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, n)
	rand.Read(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

func qcow2Image(t *testing.T, path string, size int64, data []byte) {
	t.Helper()
	w, err := formats.Create(context.Background(), path, disk.QCOW2, disk.CreateOptions{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func (e *env) agentIn(cluster, name string, dirs ...string) {
	e.t.Helper()
	a, err := agent.New(context.Background(), agent.Config{
		Server: e.url, Token: e.token(cluster), CAFingerprint: e.srv.CAFingerprint(), StateDir: e.t.TempDir(),
		Name: name, VMDirs: dirs, Interval: 200 * time.Millisecond, Wait: 2 * time.Second, Log: quietLog(e.t),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	e.t.Cleanup(func() { cancel(); <-done })
}

// folderVM makes VM vm (one 1 MiB raw disk) in a new folder, runs a folder
// agent named node over it, and waits until the server lists the VM.
func (e *env) folderVM(node, vm string) {
	e.t.Helper()
	vms := e.t.TempDir()
	randomFile(e.t, filepath.Join(vms, vm, "disk.raw"), 1<<20)
	e.runAgent(node, vms)
	waitFor(e.t, "inventory", func() bool {
		var list []catalog.VMStatus
		e.do("GET", api.Prefix+"/vms?name="+vm, nil, &list)
		return len(list) == 1
	})
}

func (e *env) jobs(q string) []catalog.Job {
	var js []catalog.Job
	if err := e.do("GET", api.Prefix+"/jobs?limit=1000&"+q, nil, &js); err != nil {
		e.t.Fatal(err)
	}
	return js
}

func (e *env) waitJobsDone() {
	e.t.Helper()
	waitFor(e.t, "jobs to finish", func() bool { return len(e.jobs("state=queued&state=running")) == 0 })
	for _, j := range e.jobs("state=failed") {
		e.t.Fatalf("job %d (%s %s) failed: %s", j.ID, j.Kind, j.VMName, j.Error)
	}
}

func (e *env) points(name string) []catalog.Point {
	var ps []catalog.Point
	q := ""
	if name != "" {
		q = "?name=" + name
	}
	if err := e.do("GET", api.Prefix+"/points"+q, nil, &ps); err != nil {
		e.t.Fatal(err)
	}
	return ps
}

// Two agents, three VMs on one shared volume, a protection group: the
// scheduler makes points by itself on its clock, backups on the volume
// never overlap, a moved VM keeps getting points on its new node, a
// restore on the other node is bit-identical, and a new server adopting
// the repository lists every point again.
func TestProtectionFlow(t *testing.T) { eachCatalog(t, testProtectionFlow) }

func testProtectionFlow(t *testing.T, cat catalogKind) {
	clock := &fakeClock{now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	e := start(t, server.Config{DB: cat.db(t), Clock: clock.Now, ManualSchedule: true})
	root := t.TempDir()
	shared := filepath.Join(root, "shared")
	vmA := randomFile(t, filepath.Join(shared, "n1", "vmA", "disk.raw"), 3<<20)
	img := make([]byte, 1<<20)
	rand.Read(img)
	qcow2Image(t, filepath.Join(shared, "n1", "img1.qcow2"), 4<<20, img)
	randomFile(t, filepath.Join(shared, "n2", "vmB", "disk.raw"), 2<<20)
	randomFile(t, filepath.Join(shared, "n2", "vmB", "vm.xml"), 100)

	if err := e.do("POST", api.Prefix+"/clusters", api.ClusterRequest{Name: "lab"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.do("POST", api.Prefix+"/clusters/lab/volumes", api.VolumeRequest{Path: shared, VolumeID: "vol1"}, nil); err != nil {
		t.Fatal(err)
	}
	e.agentIn("lab", "n1", filepath.Join(shared, "n1"))
	e.agentIn("lab", "n2", filepath.Join(shared, "n2"))
	waitFor(t, "inventory", func() bool {
		var vms []catalog.VMStatus
		e.do("GET", api.Prefix+"/vms", nil, &vms)
		n := 0
		for _, v := range vms {
			if v.VolumeID == "vol1" {
				n++
			}
		}
		return n == 3
	})

	// The shared-volume rule.
	for _, c := range []struct{ path, why string }{
		{shared, "it is the root of shared volume vol1"},
		{filepath.Join(shared, "n1", "vmA", "disk.raw"), "it lies inside VM vmA"},
		{filepath.Join(shared, "n1"), "no VM is known there on shared volume vol1"},
	} {
		err := e.do("POST", api.Prefix+"/groups", api.Group{Name: "g", Incremental: "15m", Members: []string{c.path}}, nil)
		var he *api.HTTPError
		want := "only VM data is supported on a cluster shared volume: " + c.path + " is not a VM (" + c.why
		if !errorsAs(err, &he) || he.Status != 422 || he.Body.Code != "not_a_vm" || !strings.HasPrefix(he.Body.Error, want) {
			t.Fatalf("protect %s: %v, want 422 %q", c.path, err, want)
		}
	}
	var g api.Group
	if err := e.do("POST", api.Prefix+"/groups", api.Group{Name: "g", Incremental: "15m", RetentionCount: 10,
		Members: []string{filepath.Join(shared, "n1", "vmA"), "img1"}}, &g); err != nil {
		t.Fatal(err)
	}
	if err := e.do("POST", api.Prefix+"/protect", api.ProtectRequest{Path: filepath.Join(shared, "n2", "vmB"), Group: "g"}, &g); err != nil {
		t.Fatal(err)
	}
	if strings.Join(g.Members, ",") != "img1,vmA,vmB" {
		t.Fatalf("members %v", g.Members)
	}

	sc := e.srv.Scheduler()
	ctx := context.Background()
	round := func(want int) {
		t.Helper()
		js, err := sc.Round(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(js) != want {
			t.Fatalf("round created %d jobs, want %d", len(js), want)
		}
	}
	round(3) // never backed up
	round(0) // queued or running: nothing more
	e.waitJobsDone()
	round(0) // not due yet
	clock.Add(10 * time.Minute)
	round(0)
	clock.Add(6 * time.Minute)
	round(3) // 16 minutes: incrementals are due
	e.waitJobsDone()
	if n := len(e.points("")); n != 6 {
		t.Fatalf("%d points, want 6", n)
	}

	// Per-volume serialization, from the jobs' own timestamps.
	bs := e.jobs("kind=backup")
	sort.Slice(bs, func(i, j int) bool { return bs[i].Started.Before(bs[j].Started) })
	for i := 1; i < len(bs); i++ {
		if bs[i].Started.Before(bs[i-1].Finished) {
			t.Fatalf("backups %d and %d on vol1 overlap: %s < %s", bs[i-1].ID, bs[i].ID, bs[i].Started, bs[i-1].Finished)
		}
	}

	// Move vmB to n1: its next job runs there and it keeps its points.
	if err := os.Rename(filepath.Join(shared, "n2", "vmB"), filepath.Join(shared, "n1", "vmB")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "vmB to move", func() bool {
		var vms []catalog.VMStatus
		e.do("GET", api.Prefix+"/vms?name=vmB", nil, &vms)
		return len(vms) == 1 && vms[0].OwnerName == "n1" && vms[0].State != catalog.VMAbsent
	})
	clock.Add(16 * time.Minute)
	round(3)
	e.waitJobsDone()
	pb := e.points("vmB")
	if len(pb) != 3 || pb[0].Host != "n1" || pb[1].Host != "n2" {
		t.Fatalf("vmB points after the move: %+v", pb)
	}

	// Restore vmA on the other node.
	pa := e.points("vmA")
	target := filepath.Join(root, "restored")
	var rj catalog.Job
	if err := e.do("POST", api.Prefix+"/restores", api.RestoreRequest{Point: pa[0].ID, Node: "n2", Target: target}, &rj); err != nil {
		t.Fatal(err)
	}
	e.waitJobsDone()
	if got, err := os.ReadFile(filepath.Join(target, "disk.raw")); err != nil || !bytes.Equal(got, vmA) {
		t.Fatalf("restored vmA differs: %v", err)
	}
	var rjd api.JobDetail
	e.do("GET", api.Prefix+"/jobs/"+itoa(rj.ID), nil, &rjd)
	if rjd.NodeID == 0 || rjd.State != catalog.JobSucceeded {
		t.Fatalf("restore job: %+v", rjd.Job)
	}

	// A new server on an empty data folder adopts the repository.
	all := e.points("")
	e.stop()
	e2 := start(t, server.Config{DB: cat.db(t), RepoDir: e.srv.RepoDir(), AdoptRepo: true})
	got := e2.points("")
	if len(got) != len(all) || e2.srv.Adopted != len(all) {
		t.Fatalf("adopted %d points (%d listed), want %d", e2.srv.Adopted, len(got), len(all))
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func errorsAs(err error, target **api.HTTPError) bool {
	he, ok := err.(*api.HTTPError)
	if ok {
		*target = he
	}
	return ok
}
