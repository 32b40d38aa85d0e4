package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/disk"
	"lifeboat/disk/formats"
)

// proc is a background lifeboat process.
type proc struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
}

func startProc(t *testing.T, env []string, args ...string) (*proc, io.Reader) {
	t.Helper()
	p := &proc{cmd: exec.Command(lifeboatBin, args...)}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = &p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("lifeboat %s stderr (tail):\n%s", args[0], tail(p.stderr.String(), 3000))
		}
	})
	return p, out
}

func (p *proc) stop() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-done
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// lbEnv runs a client command with env and decodes its --json output.
func lbJSON(t *testing.T, env []string, out any, args ...string) {
	t.Helper()
	cmd := exec.Command(lifeboatBin, append(args, "--json")...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("lifeboat %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	if out != nil {
		if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
			t.Fatalf("lifeboat %s: %v\n%s", strings.Join(args, " "), err, stdout.String())
		}
	}
}

func lbFail(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(lifeboatBin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("lifeboat %s succeeded, want failure:\n%s", strings.Join(args, " "), out)
	}
	return string(out)
}

type serverStart struct {
	URL           string `json:"url"`
	CAFingerprint string `json:"ca_fingerprint"`
	AdminToken    string `json:"admin_token"`
	Adopted       int    `json:"adopted"`
	CA            string `json:"ca"`
}

func startServer(t *testing.T, args ...string) (*proc, serverStart) {
	t.Helper()
	p, out := startProc(t, nil, append([]string{"server", "--json", "--listen", "127.0.0.1:0"}, args...)...)
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
		io.Copy(io.Discard, out)
	}()
	var st serverStart
	select {
	case s := <-line:
		if err := json.Unmarshal([]byte(s), &st); err != nil {
			t.Fatalf("server start line %q: %v\n%s", s, err, p.stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("server did not start:\n%s", p.stderr.String())
	}
	return p, st
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The real binary end to end: a server and two agents on one shared
// volume. A protection group makes points by itself (the server's clock
// runs 900 times faster, so "every 15 minutes" is every second), backups
// on the volume never overlap, a restore on the other node gives the same
// bytes, the API refuses what it should and stays up, and a new server
// adopting the repository lists every point again.
func TestServerAgentsEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	root := t.TempDir()
	data, repoDir, shared := filepath.Join(root, "data"), filepath.Join(root, "repo"), filepath.Join(root, "shared")
	rawA := make([]byte, 3<<20+12345)
	rand.Read(rawA)
	for _, d := range []string{filepath.Join(shared, "n1", "vmA"), filepath.Join(shared, "n2", "vmB"), filepath.Join(shared, "n2", ".hidden")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(shared, "n1", "vmA", "disk.raw"), rawA, 0o644)
	os.WriteFile(filepath.Join(shared, "n1", "vmA", "vm.xml"), []byte("<domain/>"), 0o644)
	content := make([]byte, 1<<20)
	rand.Read(content)
	w, err := formats.Create(context.Background(), filepath.Join(shared, "n2", "img1.qcow2"), disk.QCOW2, disk.CreateOptions{Size: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	w.WriteAt(content, 2<<20)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(shared, "n2", "vmB", "disk.raw"), content[:512<<10], 0o644)

	srv, st := startServer(t, "--data", data, "--repo", repoDir, "--tick", "200ms", "--clock-speed", "900", "--heartbeat", "300ms")
	if st.AdminToken == "" || st.CAFingerprint == "" {
		t.Fatalf("start-up summary: %+v", st)
	}
	env := []string{"LIFEBOAT_DATA=" + data}
	lbJSON(t, env, nil, "cluster", "create", "lab")
	lbJSON(t, env, nil, "cluster", "volume", "add", "lab", shared, "vol1")
	var t1, t2 api.TokenResponse
	lbJSON(t, env, &t1, "token", "create", "--cluster", "lab")
	lbJSON(t, env, &t2, "token", "create", "--cluster", "lab")
	agentArgs := func(name, tok string) []string {
		return []string{"agent", "--server", st.URL, "--token", tok, "--ca-fingerprint", st.CAFingerprint,
			"--state", filepath.Join(root, "state-"+name), "--name", name, "--vm-dir", filepath.Join(shared, name),
			"--interval", "300ms", "--wait", "2s", "--restore-root", root}
	}
	startProc(t, nil, agentArgs("n1", t1.Token)...)
	startProc(t, nil, agentArgs("n2", t2.Token)...)

	var vms []catalog.VMStatus
	waitUntil(t, "inventory of 3 VMs on vol1", 20*time.Second, func() bool {
		lbJSON(t, env, &vms, "vm", "list")
		n := 0
		for _, v := range vms {
			if v.VolumeID == "vol1" {
				n++
			}
		}
		return n == 3
	})

	// Security and hygiene, against the live server.
	out := lbFail(t, nil, "agent", "--server", st.URL, "--token", t1.Token, "--ca-fingerprint", st.CAFingerprint,
		"--state", filepath.Join(root, "state-replay"), "--name", "n3")
	if !strings.Contains(out, "already used") {
		t.Fatalf("replayed token: %s", out)
	}
	caPEM, _ := os.ReadFile(filepath.Join(data, "tls", "ca.pem"))
	tc, _ := api.TLSConfig(caPEM, nil)
	hc := api.HTTPClient(tc, 10*time.Second)
	do := func(method, path, token string, body io.Reader) int {
		req, _ := http.NewRequest(method, st.URL+path, body)
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		name, method, path, token string
		body                      string
		want                      int
	}{
		{"no token", "GET", "/api/v1/points", "", "", 401},
		{"agent without certificate", "GET", "/api/v1/agent/jobs/next?wait=0s", "", "", 401},
		{"malformed JSON", "POST", "/api/v1/groups", st.AdminToken, `{"name":`, 400},
		{"huge body", "POST", "/api/v1/groups", st.AdminToken, `{"name":"` + strings.Repeat("x", 2<<20) + `"}`, 413},
		{"traversal", "POST", "/api/v1/groups", st.AdminToken, `{"name":"../../x","members":[]}`, 400},
		{"traversal in path", "GET", "/api/v1/points/..%2F..%2Fconfig", st.AdminToken, "", 400},
	} {
		if got := do(c.method, c.path, c.token, strings.NewReader(c.body)); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
	// The shared-volume rule, through the CLI.
	out = lbFail(t, env, "group", "create", "bad", "--incremental", "15m", "--member", shared)
	if !strings.Contains(out, "only VM data is supported on a cluster shared volume: "+shared+" is not a VM") {
		t.Fatalf("volume root accepted or wrong reason: %s", out)
	}

	// Protect; points appear without anyone asking.
	var g api.Group
	lbJSON(t, env, &g, "group", "create", "g", "--incremental", "15m", "--member", filepath.Join(shared, "n1", "vmA"), "img1", "vmB")
	start := time.Now()
	points := func(name string) []catalog.Point {
		var ps []catalog.Point
		lbJSON(t, env, &ps, "point", "list", "--name", name)
		return ps
	}
	waitUntil(t, "two scheduled points of every VM", 30*time.Second, func() bool {
		for _, n := range []string{"vmA", "img1", "vmB"} {
			if len(points(n)) < 2 {
				return false
			}
		}
		return true
	})
	t.Logf("scheduled points of 3 VMs, twice, in %s", time.Since(start).Round(time.Millisecond))

	// Backups on vol1 never overlapped.
	var jobs []catalog.Job
	lbJSON(t, env, &jobs, "job", "list", "--kind", "backup", "--state", "succeeded", "--limit", "1000")
	sort.Slice(jobs, func(i, j int) bool { return jobs[i].Started.Before(jobs[j].Started) })
	nodes := map[int64]bool{}
	for i, j := range jobs {
		if j.VolumeID != "vol1" {
			t.Fatalf("job %d: volume %q", j.ID, j.VolumeID)
		}
		nodes[j.NodeID] = true
		if i > 0 && j.Started.Before(jobs[i-1].Finished) {
			t.Fatalf("backups %d and %d on vol1 overlap", jobs[i-1].ID, j.ID)
		}
	}
	if len(jobs) < 6 || len(nodes) != 2 {
		t.Fatalf("%d backups on %d nodes", len(jobs), len(nodes))
	}

	// Restore vmA (on n1) and img1 (on n2) on the other node each.
	restore := func(name, node string) string {
		ps := points(name)
		to := filepath.Join(root, "restored-"+name)
		var j catalog.Job
		lbJSON(t, env, &j, "point", "restore", ps[0].ID, "--node", node, "--to", to)
		waitUntil(t, "restore of "+name, 20*time.Second, func() bool {
			var d api.JobDetail
			lbJSON(t, env, &d, "job", "show", itoa(j.ID))
			if d.State == catalog.JobFailed {
				t.Fatalf("restore of %s: %s", name, d.Error)
			}
			return d.State == catalog.JobSucceeded && d.NodeID != 0
		})
		return to
	}
	to := restore("vmA", "n2")
	if got, err := os.ReadFile(filepath.Join(to, "disk.raw")); err != nil || !bytes.Equal(got, rawA) {
		t.Fatalf("restored vmA disk differs (%v)", err)
	}
	if got, _ := os.ReadFile(filepath.Join(to, "vm.xml")); string(got) != "<domain/>" {
		t.Fatalf("restored vmA config %q", got)
	}
	to = restore("img1", "n1")
	sameContent(t, filepath.Join(shared, "n2", "img1.qcow2"), filepath.Join(to, "img1.qcow2"))
	// A restore outside the agent's restore root fails, and says why.
	var bad catalog.Job
	lbJSON(t, env, &bad, "point", "restore", points("vmB")[0].ID, "--node", "n1", "--to", "/tmp/elsewhere-lifeboat")
	waitUntil(t, "refused restore", 20*time.Second, func() bool {
		var d api.JobDetail
		lbJSON(t, env, &d, "job", "show", itoa(bad.ID))
		return d.State == catalog.JobFailed && strings.Contains(d.Error, "outside this agent's restore root")
	})

	var st2 api.Status
	lbJSON(t, env, &st2, "status")
	var metrics []byte
	c := &api.Client{Base: st.URL, Token: st.AdminToken, HTTP: hc}
	if _, err := c.Do(context.Background(), "GET", "/metrics", nil, &metrics); err != nil || !bytes.Contains(metrics, []byte("lifeboat_backup_bytes_read_total")) {
		t.Fatalf("metrics: %v", err)
	}

	// Adopt: the catalog is gone, the repository is not.
	var all []catalog.Point
	lbJSON(t, env, &all, "point", "list")
	srv.stop()
	if err := os.RemoveAll(data); err != nil {
		t.Fatal(err)
	}
	data2 := filepath.Join(root, "data2")
	_, st3 := startServer(t, "--data", data2, "--repo", repoDir, "--adopt-repo")
	var again []catalog.Point
	lbJSON(t, []string{"LIFEBOAT_DATA=" + data2}, &again, "point", "list")
	if st3.Adopted != len(all) || len(again) != len(all) {
		t.Fatalf("adopted %d, listed %d, want %d", st3.Adopted, len(again), len(all))
	}
	for i := range all {
		if all[i].ID != again[i].ID {
			t.Fatalf("point %d: %s, want %s", i, again[i].ID, all[i].ID)
		}
	}
	t.Logf("%d points, %d backups; adopted %d points", len(all), len(jobs), st3.Adopted)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// sameContent compares two images' guest-visible bytes.
func sameContent(t *testing.T, a, b string) {
	t.Helper()
	ctx := context.Background()
	ia, err := formats.Open(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer ia.Close()
	ib, err := formats.Open(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	defer ib.Close()
	if ia.Size() != ib.Size() {
		t.Fatalf("%s: size %d, want %d", b, ib.Size(), ia.Size())
	}
	ba, bb := make([]byte, ia.Size()), make([]byte, ib.Size())
	if _, err := ia.ReadAt(ba, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := ib.ReadAt(bb, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ba, bb) {
		t.Fatalf("%s differs from %s", b, a)
	}
}
