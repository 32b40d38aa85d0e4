package main

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
)

// Recovery and item-level browsing through the API, with a real server
// and a real (folder) agent: the preflight runs on the agent and answers
// before anything is written; refusals carry their code and advice; a
// folder recovery writes the point's bytes; the item browser lists a real
// ext4 filesystem inside the point and downloads a file as tar, and no
// path leaves the point.
func TestServerRecoveryAPI(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	root := t.TempDir()
	data, repoDir, vms := filepath.Join(root, "data"), filepath.Join(root, "repo"), filepath.Join(root, "vms")
	vmDir := filepath.Join(vms, "web")
	os.MkdirAll(vmDir, 0o755)
	img := makeContentImage(t, t.TempDir(), 24<<20)
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(vmDir, "disk.raw"), raw, 0o644)
	motd, _ := os.ReadFile(filepath.Join(filepath.Dir(img), "tree", "etc", "motd"))

	_, st := startServer(t, "--data", data, "--repo", repoDir, "--tick", "200ms", "--heartbeat", "300ms")
	env := []string{"LIFEBOAT_DATA=" + data}
	var tok api.TokenResponse
	lbJSON(t, env, &tok, "token", "create")
	startProc(t, nil, "agent", "--server", st.URL, "--token", tok.Token, "--ca-fingerprint", st.CAFingerprint,
		"--state", filepath.Join(root, "state"), "--name", "n1", "--vm-dir", vms, "--interval", "300ms", "--wait", "2s",
		"--restore-root", filepath.Join(root, "out"))
	caPEM, _ := os.ReadFile(filepath.Join(data, "tls", "ca.pem"))
	tc, _ := api.TLSConfig(caPEM, nil)
	c := &api.Client{Base: st.URL, Token: st.AdminToken, HTTP: api.HTTPClient(tc, time.Minute)}
	ctx := context.Background()
	waitUntil(t, "the agent's inventory", 20*time.Second, func() bool {
		var vs []catalog.VMStatus
		c.Do(ctx, "GET", api.Prefix+"/vms", nil, &vs)
		return len(vs) == 1
	})
	var run api.RunResponse
	if _, err := c.Do(ctx, "POST", api.Prefix+"/backups", api.BackupRequest{VM: "web"}, &run); err != nil {
		t.Fatal(err)
	}
	var pts []catalog.Point
	waitUntil(t, "a point of web", 30*time.Second, func() bool {
		c.Do(ctx, "GET", api.Prefix+"/points?name=web", nil, &pts)
		return len(pts) == 1
	})
	pid := pts[0].ID

	preflight := func(req api.RecoveryRequest) api.RecoveryPlan {
		t.Helper()
		var p api.RecoveryPlan
		if _, err := c.Do(ctx, "POST", api.Prefix+"/recoveries/preflight", req, &p); err != nil {
			t.Fatalf("preflight %+v: %v", req, err)
		}
		return p
	}
	out := filepath.Join(root, "out", "web")
	for _, tc := range []struct {
		name string
		req  api.RecoveryRequest
		ok   bool
		code string
		in   string // in Message
	}{
		{"folder", api.RecoveryRequest{Method: "folder", Point: pid, Node: "n1", Dir: out}, true, "", ""},
		{"vm on a folder agent", api.RecoveryRequest{Method: "vm", Point: pid, Node: "n1", Dir: out}, false, "LB-40002", "manages VM folders"},
		{"original on a folder agent", api.RecoveryRequest{Method: "original", Point: pid}, false, "LB-40002", "n1"},
		{"outside the restore root", api.RecoveryRequest{Method: "folder", Point: pid, Node: "n1", Dir: "/srv/elsewhere"}, false, "LB-40005", "restore root"},
	} {
		p := preflight(tc.req)
		if p.OK != tc.ok || p.Code != tc.code || !strings.Contains(p.Message, tc.in) || p.Node != "n1" {
			t.Errorf("%s: plan %+v", tc.name, p)
		}
		if !p.OK && p.Advice == "" {
			t.Errorf("%s: a refusal without advice", tc.name)
		}
		if tc.ok && (len(p.Disks) != 1 || p.Disks[0].Path != filepath.Join(out, "disk.raw")) {
			t.Errorf("%s: disks %+v", tc.name, p.Disks)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("a preflight wrote %s (%v)", out, err)
	}
	for _, c2 := range []struct {
		name string
		req  api.RecoveryRequest
		want int
	}{
		{"unknown node", api.RecoveryRequest{Method: "folder", Point: pid, Node: "nope", Dir: out}, 404},
		{"unknown point", api.RecoveryRequest{Method: "folder", Point: "20200101T000000Z-00000000", Node: "n1", Dir: out}, 404},
		{"bad method", api.RecoveryRequest{Method: "tape", Point: pid, Node: "n1", Dir: out}, 400},
		{"relative dir", api.RecoveryRequest{Method: "folder", Point: pid, Node: "n1", Dir: "x/../y"}, 400},
		{"folder without node", api.RecoveryRequest{Method: "folder", Point: pid, Dir: out}, 400},
	} {
		_, err := c.Do(ctx, "POST", api.Prefix+"/recoveries/preflight", c2.req, nil)
		if got := api.StatusOf(err); got != c2.want {
			t.Errorf("%s: status %d (%v), want %d", c2.name, got, err, c2.want)
		}
	}

	// The CLI runs the preflight, then the job, and waits.
	var res struct {
		Plan api.RecoveryPlan `json:"plan"`
		Job  api.JobDetail    `json:"job"`
	}
	lbJSON(t, env, &res, "point", "recover", pid, "--method", "folder", "--node", "n1", "--to", out)
	if !res.Plan.OK || res.Job.State != catalog.JobSucceeded {
		t.Fatalf("recover: %+v", res)
	}
	if got, err := os.ReadFile(filepath.Join(out, "disk.raw")); err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("recovered disk differs from the source (%v)", err)
	}
	if msg := lbFail(t, env, "point", "recover", pid, "--method", "vm", "--node", "n1", "--to", out+"2"); !strings.Contains(msg, "LB-40002") {
		t.Fatalf("refused recovery through the CLI: %s", msg)
	}

	// Item level.
	items := func(q url.Values) (api.ItemList, error) {
		var l api.ItemList
		_, err := c.Do(ctx, "GET", api.Prefix+"/points/"+pid+"/items?"+q.Encode(), nil, &l)
		return l, err
	}
	l, err := items(url.Values{})
	if err != nil || len(l.Volumes) != 1 || l.Volumes[0].FS != "ext4" || l.Volumes[0].Disk != "disk.raw" {
		t.Fatalf("volumes: %+v %v", l, err)
	}
	l, err = items(url.Values{"path": {"/"}})
	names := map[string]bool{}
	for _, e := range l.Entries {
		names[e.Name] = true
	}
	if err != nil || !names["etc"] || !names["random.bin"] {
		t.Fatalf("root folder: %+v %v", l, err)
	}
	tarFile := filepath.Join(root, "motd.tar")
	lbJSON(t, env, nil, "point", "download", pid, "/etc/motd", "--out", tarFile)
	f, err := os.Open(tarFile)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(f)
	h, err := tr.Next()
	if err != nil || h.Name != "motd" {
		t.Fatalf("tar entry %+v %v", h, err)
	}
	if got, _ := io.ReadAll(tr); !bytes.Equal(got, motd) {
		t.Fatalf("downloaded motd: %d bytes, want %d", len(got), len(motd))
	}
	f.Close()
	for _, c3 := range []struct {
		path string
		want int
	}{
		{"../../etc/passwd", 400},
		{"/etc/../../x", 400},
		{"/no/such/file", 404},
	} {
		req, _ := http.NewRequest("GET", st.URL+api.Prefix+"/points/"+pid+"/items/download?"+url.Values{"path": {c3.path}}.Encode(), nil)
		req.Header.Set("Authorization", "Bearer "+st.AdminToken)
		resp, err := c.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c3.want {
			t.Errorf("download %q: %d, want %d", c3.path, resp.StatusCode, c3.want)
		}
	}
	if _, err := items(url.Values{"disk": {"../config"}}); api.StatusOf(err) != 404 {
		t.Errorf("disk outside the point: %v", err)
	}

	// Copy to tape through the server: the point spans two cartridges,
	// the server's tape catalog says where it is, and the tapes alone
	// give the disk back.
	lib := filepath.Join(root, "library")
	lbJSON(t, env, nil, "tape", "library-create", "--library", lib)
	for _, bc := range []string{"LBA001L8", "LBA002L8"} {
		lbJSON(t, env, nil, "tape", "add", "--library", lib, "--barcode", bc, "--capacity", "8388608")
	}
	// Method 4 through the recovery API: the server's preflight, then
	// the job; a second copy finds no blank cartridge left and is refused
	// before anything is written; the CLI overwrites them on request.
	if p := preflight(api.RecoveryRequest{Method: "tape", Point: pid, Library: filepath.Join(root, "no-library")}); p.OK || p.Code != "LB-40005" {
		t.Errorf("tape preflight without a library: %+v", p)
	}
	tapeReq := api.RecoveryRequest{Method: "tape", Point: pid, Library: lib}
	if p := preflight(tapeReq); !p.OK || p.Node != "server" || len(p.Disks) != 1 {
		t.Fatalf("tape preflight: %+v", p)
	}
	var tjob catalog.Job
	if _, err := c.Do(ctx, "POST", api.Prefix+"/recoveries", tapeReq, &tjob); err != nil || tjob.Kind != catalog.KindTape {
		t.Fatalf("tape recovery: %+v %v", tjob, err)
	}
	waitUntil(t, "the tape job", 60*time.Second, func() bool {
		var d api.JobDetail
		c.Do(ctx, "GET", api.Prefix+"/jobs/"+itoa(tjob.ID), nil, &d)
		if d.State == catalog.JobFailed {
			t.Fatalf("tape job: %s", d.Error)
		}
		return d.State == catalog.JobSucceeded
	})
	if p := preflight(tapeReq); p.OK || p.Code != "LB-40007" {
		t.Errorf("second tape copy without blank cartridges: %+v", p)
	}
	var tj api.JobDetail
	lbJSON(t, env, &tj, "point", "tape", pid, "--library", lib, "--overwrite")
	if tj.State != catalog.JobSucceeded {
		t.Fatalf("tape job: %+v", tj)
	}
	var carts []struct {
		catalog.Cartridge
		Segments []catalog.TapeSegment `json:"segments"`
	}
	if _, err := c.Do(ctx, "GET", api.Prefix+"/tapes", nil, &carts); err != nil {
		t.Fatal(err)
	}
	onTape := map[string]bool{}
	for _, ct := range carts {
		for _, sg := range ct.Segments {
			if sg.PointID == pid && ct.Library == lib {
				onTape[ct.Barcode] = true
			}
		}
	}
	if len(onTape) != 2 {
		t.Fatalf("the tape catalog puts point %s on %v, want both cartridges (%+v)", pid, onTape, carts)
	}
	fromTape := filepath.Join(root, "from-tape")
	lbJSON(t, nil, nil, "tape", "restore", "--library", lib, "--point", pid, "--to", fromTape)
	if got, err := os.ReadFile(filepath.Join(fromTape, "disk.raw")); err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("disk restored from tape differs from the source (%v)", err)
	}
	if _, err := c.Do(ctx, "POST", api.Prefix+"/jobs", api.JobRequest{Kind: "tape", Params: []byte(`{"point":"` + pid + `","library":"rel/lib"}`)}, nil); api.StatusOf(err) != 400 {
		t.Errorf("tape job with a relative library: %v", err)
	}
}
