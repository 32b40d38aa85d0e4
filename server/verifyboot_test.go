package server_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/recovery"
	"lifeboat/repo"
	"lifeboat/repo/storage/local"
	"lifeboat/server"
)

// Verify-boot through the server without a hypervisor (the lab test
// TestAgentVerifyBootLab boots for real): a group with verify_boot queues
// a verify-boot of each new point on the node that took it; an agent of VM
// folders fails such a job with the reason, which raises a critical
// alert; POST /points/{id}/verify-boot checks its input, defaults to the
// point's node and pins the job there; a verdict written into the
// repository directly (as `lifeboat verify-boot` does) shows in GET
// /points/{id} with its serial log, then in the point list, and a server
// adopting the repository lists it too.
func TestVerifyBootJobs(t *testing.T) { eachCatalog(t, testVerifyBootJobs) }

func testVerifyBootJobs(t *testing.T, cat catalogKind) {
	e := start(t, server.Config{DB: cat.db(t), ManualSchedule: true})
	e.folderVM("fold1", "vmV")
	var g api.Group
	if err := e.do("POST", api.Prefix+"/groups", api.Group{Name: "gv", VerifyBoot: true, Members: []string{"vmV"}}, &g); err != nil {
		t.Fatal(err)
	}
	if !g.VerifyBoot {
		t.Fatalf("group created with verify_boot answers %+v", g)
	}
	var run api.RunResponse
	if err := e.do("POST", api.Prefix+"/groups/gv/run", nil, &run); err != nil || len(run.Jobs) != 1 {
		t.Fatalf("run group: %+v, %v", run, err)
	}
	waitFor(t, "the group's backup and verify-boot", func() bool {
		return len(e.jobs("kind=verify-boot&state=failed")) == 1 && len(e.jobs("state=queued&state=running")) == 0
	})
	pts := e.points("vmV")
	if len(pts) != 1 || pts[0].Host != "fold1" || pts[0].BootVerdict != "" {
		t.Fatalf("points of vmV: %+v", pts)
	}
	pt := pts[0]
	vj := e.jobs("kind=verify-boot")[0]
	var params api.VerifyBootParams
	json.Unmarshal(vj.Params, &params)
	const why = "node fold1's agent manages VM folders, not a hypervisor (driver folders)"
	if params.Point != pt.ID || params.Reason != "group" || vj.GroupID != g.ID || vj.VMName != "vmV" || vj.TargetNodeID == 0 ||
		vj.NodeID != vj.TargetNodeID || !strings.Contains(vj.Error, why) {
		t.Fatalf("the group's verify-boot job: %+v (params %+v)", vj, params)
	}
	var alerts []catalog.Alert
	e.do("GET", api.Prefix+"/alerts?kind=verify-boot-failed", nil, &alerts)
	if len(alerts) != 1 || alerts[0].Severity != catalog.SeverityCritical || alerts[0].Subject != "vm:vmV" {
		t.Errorf("alerts after a failed verify-boot: %+v", alerts)
	}

	// The API's own checks, then a job on the point's node by default.
	for _, c := range []struct {
		path   string
		req    api.VerifyBootRequest
		status int
	}{
		{"/points/nope/verify-boot", api.VerifyBootRequest{}, 400},
		{"/points/20261125T150000Z-ffffffff/verify-boot", api.VerifyBootRequest{}, 404},
		{"/points/" + pt.ID + "/verify-boot", api.VerifyBootRequest{TimeoutSeconds: 3601}, 400},
		{"/points/" + pt.ID + "/verify-boot", api.VerifyBootRequest{Check: "a\x00b"}, 400},
		{"/points/" + pt.ID + "/verify-boot", api.VerifyBootRequest{Node: "nosuchnode"}, 404},
	} {
		err := e.do("POST", api.Prefix+c.path, c.req, nil)
		var he *api.HTTPError
		if !errorsAs(err, &he) || he.Status != c.status {
			t.Errorf("POST %s %+v: %v, want %d", c.path, c.req, err, c.status)
		}
	}
	var j catalog.Job
	if err := e.do("POST", api.Prefix+"/points/"+pt.ID+"/verify-boot", api.VerifyBootRequest{Check: "true", TimeoutSeconds: 5}, &j); err != nil {
		t.Fatal(err)
	}
	if j.Kind != catalog.KindVerifyBoot || j.TargetNodeID != vj.TargetNodeID || j.VMName != "vmV" {
		t.Fatalf("verify-boot job: %+v", j)
	}
	waitFor(t, "the verify-boot job", func() bool {
		var d api.JobDetail
		e.do("GET", api.Prefix+"/jobs/"+itoa(j.ID), nil, &d)
		j = d.Job
		return d.Done()
	})
	if j.State != catalog.JobFailed || !strings.Contains(j.Error, why) {
		t.Fatalf("verify-boot on a folders agent: %s: %s", j.State, j.Error)
	}

	var pd api.PointDetail
	if err := e.do("GET", api.Prefix+"/points/"+pt.ID, nil, &pd); err != nil || pd.VerifyBoot != nil || pd.ID != pt.ID || len(pd.Files) == 0 {
		t.Fatalf("point never verified: %+v, %v", pd, err)
	}

	// A verdict the CLI stored in the repository itself.
	ctx := context.Background()
	b, err := local.Open(e.srv.RepoDir())
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, b, "")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().UTC().Truncate(time.Second)
	save := func(v recovery.BootVerdict) string {
		t.Helper()
		raw, _ := json.Marshal(v)
		key, err := r.SaveVerdict(ctx, v.Point, v.Time, raw)
		if err != nil {
			t.Fatal(err)
		}
		return key
	}
	save(recovery.BootVerdict{Version: 1, Point: pt.ID, VM: "vmV", Host: "hv9", Time: at.Add(-time.Hour), Verdict: recovery.VerdictNoBoot,
		Reason: "an older run", SerialLog: "old"})
	key := save(recovery.BootVerdict{Version: 1, Point: pt.ID, VM: "vmV", Host: "hv9", Time: at, Verdict: recovery.VerdictNoAgent,
		Reason: "no agent within 5s", Seconds: 6.5, SerialLog: "Linux version 6.1\nRun /sbin/init as init process\n", SerialLogBytes: 47,
		Check: &recovery.CheckResult{Command: "true"}})
	if err := e.do("GET", api.Prefix+"/points/"+pt.ID, nil, &pd); err != nil {
		t.Fatal(err)
	}
	v := pd.VerifyBoot
	if v == nil || v.Verdict != recovery.VerdictNoAgent || v.Key != key || v.Host != "hv9" || !v.CheckedAt.Equal(at) ||
		!strings.Contains(v.SerialLog, "Run /sbin/init") || v.SerialLogBytes != 47 || len(v.Check) == 0 || pd.BootVerdict != recovery.VerdictNoAgent {
		t.Fatalf("point with a verdict in the repository: %+v", v)
	}
	if ps := e.points("vmV"); len(ps) != 1 || ps[0].BootVerdict != recovery.VerdictNoAgent {
		t.Fatalf("point list after the verdict: %+v", ps)
	}

	// A new server adopting the repository lists the verdict at once.
	e.stop()
	e2 := start(t, server.Config{DB: cat.db(t), RepoDir: e.srv.RepoDir(), AdoptRepo: true})
	if ps := e2.points("vmV"); len(ps) != 1 || ps[0].BootVerdict != recovery.VerdictNoAgent {
		t.Fatalf("points of the adopting server: %+v", ps)
	}
}
