package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/lab"
)

// lbEnv runs the binary with env added and returns stdout, stderr and the
// exit code.
func lbEnv(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(lifeboatBin, args...)
	cmd.Env = append(os.Environ(), env...)
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

// Verify-boot as a job of the server, on the lab (issue 7 through the
// server): a real guest on node1 (a session daemon: the agent hands the
// run folder to the daemon's user) is in a group created with
// --verify-boot; `group run` backs it up, the server queues a verify-boot
// of the new point on node1, and its verdict, booted-agent-ok with the
// serial log, shows in GET /points/{id}, `point list` and `point show`.
// `point verify-boot --check` with a failing command then fails with
// check-failed, the verdict the point now shows, with the check's output.
// Nothing of either run stays on the node.
func TestAgentVerifyBootLab(t *testing.T) {
	if testing.Short() {
		t.Skip("lab end-to-end")
	}
	l := lab.Start(t)
	t0 := time.Now()
	n1 := l.Node("node1")
	vm := fmt.Sprintf("lbvj%06x", time.Now().UnixNano()&0xffffff)
	n1.StartGuest(t, vm, lab.GuestOptions{})
	tGuest := time.Since(t0)

	root := t.TempDir()
	data := filepath.Join(root, "data")
	_, st := startServer(t, "--data", data, "--repo", filepath.Join(root, "repo"), "--tick", "200ms", "--heartbeat", "300ms")
	env := []string{"LIFEBOAT_DATA=" + data}
	var tok api.TokenResponse
	lbJSON(t, env, &tok, "token", "create")
	startProc(t, nil, "agent", "--server", st.URL, "--token", tok.Token, "--ca-fingerprint", st.CAFingerprint,
		"--state", filepath.Join(root, "state"), "--name", "node1", "--libvirt", n1.URI, "--libvirt-scratch", n1.Scratch,
		"--interval", "300ms", "--wait", "2s")
	waitUntil(t, "the guest in the inventory", 30*time.Second, func() bool {
		var vms []catalog.VMStatus
		lbJSON(t, env, &vms, "vm", "list")
		for _, v := range vms {
			if v.Name == vm && v.OwnerName == "node1" {
				return true
			}
		}
		return false
	})
	var g api.Group
	lbJSON(t, env, &g, "group", "create", vm+"-g", "--verify-boot", vm)
	if !g.VerifyBoot {
		t.Fatalf("group create --verify-boot: %+v", g)
	}
	lbJSON(t, env, nil, "group", "run", vm+"-g")

	// jobsOf lists the jobs of a kind, newest first.
	jobsOf := func(kind string) []catalog.Job {
		var js []catalog.Job
		lbJSON(t, env, &js, "job", "list", "--kind", kind)
		return js
	}
	var vj catalog.Job
	waitUntil(t, "the group's verify-boot job to finish", 60*time.Second, func() bool {
		if js := jobsOf(catalog.KindBackup); len(js) > 0 && js[0].State == catalog.JobFailed {
			t.Fatalf("backup failed: %s", js[0].Error)
		}
		js := jobsOf(catalog.KindVerifyBoot)
		if len(js) == 0 || !js[0].Done() {
			return false
		}
		vj = js[0]
		return true
	})
	tFirst := time.Since(t0)
	var pts []catalog.Point
	lbJSON(t, env, &pts, "point", "list", "--name", vm)
	if len(pts) != 1 {
		t.Fatalf("points of %s: %+v", vm, pts)
	}
	pt := pts[0]
	var pd api.PointDetail
	lbJSON(t, env, &pd, "point", "show", pt.ID)
	v := pd.VerifyBoot
	if vj.State != catalog.JobSucceeded || v == nil {
		t.Fatalf("verify-boot job %d %s: %s (verdict %+v)", vj.ID, vj.State, vj.Error, v)
	}
	if v.Verdict != "booted-agent-ok" || v.Host != "node1" || pd.BootVerdict != v.Verdict || vj.GroupID != g.ID ||
		!strings.HasPrefix(v.Key, "verify/"+pt.ID+"/") || v.SerialLogBytes == 0 || !strings.Contains(v.SerialLog, "LIFEBOAT-GUEST-READY") {
		t.Fatalf("the group's verdict on %s: %+v\nserial log:\n%s", pt.ID, v, v.SerialLog)
	}
	t.Logf("group verify-boot of %s on node1: %s, agent after %.1fs, %.1fs in all (serial log %d bytes)",
		pt.ID, v.Verdict, v.BootSeconds, v.Seconds, v.SerialLogBytes)
	if out, _, code := lbEnv(t, env, "point", "list", "--name", vm); code != 0 || !strings.Contains(out, "BOOT") || !strings.Contains(out, "booted-agent-ok") {
		t.Errorf("point list (exit %d):\n%s", code, out)
	}
	if out, _, code := lbEnv(t, env, "point", "show", pt.ID); code != 0 || !strings.Contains(out, "boot: booted-agent-ok on node1") {
		t.Errorf("point show (exit %d):\n%s", code, out)
	}
	// The console shows it on the point, with the serial console's log.
	if page := consolePage(t, st, "/recovery?vm="+vm+"&point="+pt.ID); !strings.Contains(page, "booted-agent-ok") ||
		!strings.Contains(page, "Serial console log") || !strings.Contains(page, "LIFEBOAT-GUEST-READY") {
		t.Errorf("the console's point page does not show the verdict and its serial log")
	}

	// A check that fails: the job fails, the point shows check-failed.
	stdout, stderr, code := lbEnv(t, env, "point", "verify-boot", pt.ID, "--node", "node1", "--check", "echo broken-app; exit 3", "--wait")
	if code == 0 || !strings.Contains(stdout, "boot: check-failed on node1") || !strings.Contains(stdout, "broken-app") || !strings.Contains(stderr, "exited with 3") {
		t.Errorf("point verify-boot with a failing check: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	lbJSON(t, env, &pd, "point", "show", pt.ID)
	if v := pd.VerifyBoot; v == nil || v.Verdict != "check-failed" || !strings.Contains(string(v.Check), `"exit_code":3`) {
		t.Errorf("verdict after the failing check: %+v", pd.VerifyBoot)
	}
	var alerts []catalog.Alert
	lbJSON(t, env, &alerts, "alert", "list")
	found := false
	for _, a := range alerts {
		found = found || a.Kind == "verify-boot-failed" && a.Subject == "vm:"+vm && a.Severity == catalog.SeverityCritical
	}
	if !found {
		t.Errorf("no critical verify-boot-failed alert for %s: %+v", vm, alerts)
	}
	// The agent cleans up before it reports the verdict.
	if left := leftovers(t, n1, vm); len(left) > 0 {
		t.Errorf("verify-boot left %v", left)
	}
	t.Logf("guest up %.1fs, group's verdict at %.1fs, whole test %.1fs", tGuest.Seconds(), tFirst.Seconds(), time.Since(t0).Seconds())
}

// consolePage logs in to the server's console with the admin token and
// returns one page's HTML.
func consolePage(t *testing.T, st serverStart, path string) string {
	t.Helper()
	caPEM, err := os.ReadFile(st.CA)
	if err != nil {
		t.Fatal(err)
	}
	tc, _ := api.TLSConfig(caPEM, nil)
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return nil }}
	req, _ := http.NewRequest("POST", st.URL+"/login", strings.NewReader(url.Values{"token": {st.AdminToken}, "next": {"/"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", st.URL)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = hc.Get(st.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Request.URL.Path == "/login" {
		t.Fatalf("console %s: %d at %s", path, resp.StatusCode, resp.Request.URL)
	}
	return string(b)
}
