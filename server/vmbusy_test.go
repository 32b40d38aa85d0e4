package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/server"
)

// An in-place recovery (method 1) and a backup of the same VM never run at
// once: the recovery's preflight and start refuse with LB-40013 while a
// backup of the VM runs; a backup claimed while an in-place recovery of
// the VM runs, or an in-place recovery queued before a backup started, is
// deferred with the reason in its log and runs once the other job ends.
// The rival jobs are claimed by the server itself (node 0), so they stay
// running for as long as the test needs.
func TestInPlaceRecoveryAndBackupNeverOverlap(t *testing.T) {
	e := start(t, server.Config{HeartbeatInterval: 300 * time.Millisecond})
	ctx := context.Background()
	cat := e.srv.Catalog()
	e.folderVM("n1", "web")
	var run api.RunResponse
	if err := e.do("POST", api.Prefix+"/backups", api.BackupRequest{VM: "web"}, &run); err != nil {
		t.Fatal(err)
	}
	e.waitJobsDone()
	pid := e.points("web")[0].ID
	n1, err := cat.NodeByName(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	// rival makes a job of the kind for web and claims it for the server.
	rival := func(kind string, params any) catalog.Job {
		t.Helper()
		raw, _ := json.Marshal(params)
		j, err := cat.CreateJob(ctx, catalog.Job{Kind: kind, VMName: "web", Params: raw, NotBefore: time.Now().Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		if j, err = cat.ClaimJob(ctx, j.ID, 0); err != nil {
			t.Fatal(err)
		}
		return j
	}
	inPlace := api.RecoveryRequest{Method: "original", Point: pid}
	logOf := func(id int64) string {
		var d api.JobDetail
		if err := e.do("GET", api.Prefix+fmt.Sprintf("/jobs/%d", id), nil, &d); err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, l := range d.Log {
			b.WriteString(l.Message + "\n")
		}
		return d.State + "\n" + b.String()
	}

	// 1. A backup of web runs: the in-place recovery is refused, by the
	// preflight and at start, and no job is made for it.
	backup := rival(catalog.KindBackup, nil)
	var plan api.RecoveryPlan
	if err := e.do("POST", api.Prefix+"/recoveries/preflight", inPlace, &plan); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("a backup of VM web is running (job %d)", backup.ID)
	if plan.OK || plan.Code != "LB-40013" || plan.Message != want || plan.Advice == "" {
		t.Fatalf("preflight during a backup: %+v", plan)
	}
	err = e.do("POST", api.Prefix+"/recoveries", inPlace, nil)
	if api.StatusOf(err) != 409 || !strings.Contains(err.Error(), "LB-40013") {
		t.Fatalf("recovery during a backup: %v", err)
	}
	if js := e.jobs("kind=recovery"); len(js) != 0 {
		t.Fatalf("a refused recovery left jobs: %+v", js)
	}

	// 2. An in-place recovery job queued before that backup started (made
	// here directly: the API refuses it now) is deferred when claimed.
	raw, _ := json.Marshal(api.RecoveryParams{Recovery: inPlace})
	queued, err := cat.CreateJob(ctx, catalog.Job{Kind: catalog.KindRecovery, VMName: "web", TargetNodeID: n1.ID, Params: raw})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the queued recovery to be deferred", func() bool {
		return strings.Contains(logOf(queued.ID), "deferred until") && strings.Contains(logOf(queued.ID), want)
	})
	if j, _ := cat.GetJob(ctx, queued.ID); j.State != catalog.JobQueued {
		t.Fatalf("deferred recovery is %s", j.State)
	}
	if _, err := cat.CancelJob(ctx, queued.ID); err != nil {
		t.Fatal(err)
	}
	if err := cat.FinishJob(ctx, backup.ID, catalog.JobSucceeded, nil, ""); err != nil {
		t.Fatal(err)
	}
	// With the backup over, the preflight gets past the check (and on to
	// the agent, which manages folders and refuses method 1 itself).
	if err := e.do("POST", api.Prefix+"/recoveries/preflight", inPlace, &plan); err != nil {
		t.Fatal(err)
	}
	if plan.Code == "LB-40013" {
		t.Fatalf("preflight after the backup ended: %+v", plan)
	}

	// 3. An in-place recovery of web runs: a backup of web is deferred,
	// and runs once the recovery is over.
	rec := rival(catalog.KindRecovery, api.RecoveryParams{Recovery: inPlace})
	if err := e.do("POST", api.Prefix+"/backups", api.BackupRequest{VM: "web"}, &run); err != nil {
		t.Fatal(err)
	}
	bj := e.jobs("kind=backup&state=queued&state=running")
	if len(bj) != 1 {
		t.Fatalf("backup jobs: %+v", bj)
	}
	recWant := fmt.Sprintf("an in-place recovery of VM web is running (job %d)", rec.ID)
	waitFor(t, "the backup to be deferred", func() bool { return strings.Contains(logOf(bj[0].ID), recWant) })
	if pts := e.points("web"); len(pts) != 1 {
		t.Fatalf("a backup ran during the in-place recovery: %d points", len(pts))
	}
	// Another in-place recovery is refused meanwhile.
	if err := e.do("POST", api.Prefix+"/recoveries/preflight", inPlace, &plan); err != nil || plan.Code != "LB-40013" {
		t.Fatalf("second in-place recovery: %+v %v", plan, err)
	}
	if err := cat.FinishJob(ctx, rec.ID, catalog.JobSucceeded, nil, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the deferred backup to run", func() bool { return len(e.points("web")) == 2 })
}
