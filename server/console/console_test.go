package console_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"lifeboat/agent"
	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/internal/testenv"
	"lifeboat/server"
)

// env is a real server on a TLS listener, with the console at /.
type env struct {
	t     *testing.T
	srv   *server.Server
	url   string
	token string
	admin *api.Client
	tls   *http.Client
}

func quiet() *slog.Logger {
	if os.Getenv("LIFEBOAT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func start(t *testing.T) *env {
	t.Helper()
	data := t.TempDir()
	ctx := context.Background()
	s, err := server.Open(ctx, server.Config{DataDir: data, Log: quiet(), Tick: time.Hour, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Serve(sctx, ln) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })
	tc, err := api.TLSConfig(s.CAPEM(), nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(filepath.Join(data, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: s, url: "https://" + ln.Addr().String(), token: strings.TrimSpace(string(tok)),
		tls: api.HTTPClient(tc, 30*time.Second)}
	e.admin = &api.Client{Base: e.url, Token: e.token, HTTP: e.tls}
	return e
}

// browser is a cookie-keeping client that does not follow redirects.
func (e *env) browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Transport: e.tls.Transport, Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

type answer struct {
	status   int
	location string
	body     string
	header   http.Header
}

// send makes one request; hdr sets headers (Origin, X-CSRF-Token …).
func (e *env) send(c *http.Client, method, path string, form url.Values, hdr map[string]string) answer {
	e.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, e.url+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, location: resp.Header.Get("Location"), body: string(b), header: resp.Header}
}

var csrfRe = regexp.MustCompile(`<meta name="csrf-token" content="([^"]+)">`)

// login logs a browser in and returns its CSRF token.
func (e *env) login(c *http.Client) string {
	e.t.Helper()
	a := e.send(c, "POST", "/login", url.Values{"token": {e.token}, "next": {"/"}}, map[string]string{"Origin": e.url})
	if a.status != http.StatusSeeOther || a.location != "/" {
		e.t.Fatalf("login: %d %q %s", a.status, a.location, a.body)
	}
	page := e.send(c, "GET", "/", nil, nil)
	m := csrfRe.FindStringSubmatch(page.body)
	if page.status != 200 || m == nil {
		e.t.Fatalf("overview after login: %d, csrf meta %v\n%s", page.status, m, page.body)
	}
	return m[1]
}

// consolePages are the console's pages a browser opens with GET.
var consolePages = []string{"/", "/protection", "/protection/new", "/protection/g1", "/recovery", "/recovery?vm=x",
	"/recovery/items?point=0000000000000000-00000000", "/jobs", "/jobs/1", "/tapes", "/alerts", "/no-such-page"}

// adminEndpoints are the server's admin calls, from its own route table
// (so an endpoint added later is checked too), with sample path values.
func adminEndpoints(e *env) [][2]string {
	sample := strings.NewReplacer("{node}", "n1", "{cluster}", "c1", "{group}", "g1", "{vm}", "vm1", "{id}", "1")
	var out [][2]string
	for _, r := range e.srv.AdminRoutes() {
		method, path, _ := strings.Cut(r, " ")
		if strings.HasPrefix(path, api.Prefix+"/points/{id}") {
			path = strings.Replace(path, "{id}", "0000000000000000-00000000", 1)
		}
		out = append(out, [2]string{method, strings.TrimPrefix(sample.Replace(path), api.Prefix)})
	}
	return out
}

// Outcome 3 of issue 6: no console page and no API call works without a
// login; a forged cross-site POST changes nothing; the session cookie is
// HttpOnly, Secure and SameSite=Strict.
func TestConsoleRefusesWithoutLogin(t *testing.T) {
	e := start(t)
	anon := e.browser()
	for _, p := range consolePages {
		a := e.send(anon, "GET", p, nil, nil)
		if a.status != http.StatusSeeOther || !strings.HasPrefix(a.location, "/login?next=") {
			t.Errorf("GET %s without a session: %d %q, want a redirect to /login", p, a.status, a.location)
		}
	}
	eps := adminEndpoints(e)
	if len(eps) < 35 { // 38 when written: a guard against an empty table
		t.Fatalf("only %d admin routes: %v", len(eps), eps)
	}
	for _, ep := range eps {
		if !strings.HasPrefix(ep[1], "/") || ep[1] == "/metrics" {
			continue // /metrics is checked below, outside the API prefix
		}
		for _, prefix := range []string{api.Prefix, "/console" + api.Prefix} {
			a := e.send(anon, ep[0], prefix+ep[1], url.Values{}, map[string]string{"Origin": e.url})
			if a.status != http.StatusUnauthorized {
				t.Errorf("%s %s without a token or session: %d %s", ep[0], prefix+ep[1], a.status, a.body)
			}
		}
	}
	if a := e.send(anon, "GET", "/metrics", nil, nil); a.status != http.StatusUnauthorized {
		t.Errorf("GET /metrics without a token: %d", a.status)
	}
	// Unknown API paths keep the API's JSON 404.
	if a := e.send(anon, "GET", api.Prefix+"/nothing-here", nil, nil); a.status != 404 || !strings.Contains(a.header.Get("Content-Type"), "json") {
		t.Errorf("unknown API path: %d %s %q", a.status, a.header.Get("Content-Type"), a.body)
	}
	// Console POSTs without a session.
	for _, p := range []string{"/protection/new", "/backup", "/logout", "/alerts/1/ack", "/jobs/1/cancel"} {
		if a := e.send(anon, "POST", p, url.Values{"name": {"x"}}, map[string]string{"Origin": e.url}); a.status != http.StatusForbidden {
			t.Errorf("POST %s without a session: %d", p, a.status)
		}
	}
	// A wrong token is refused; so is a login posted from another site.
	if a := e.send(anon, "POST", "/login", url.Values{"token": {"lba_wrong-token-of-enough-length"}}, map[string]string{"Origin": e.url}); a.status != http.StatusUnauthorized || len(a.header.Values("Set-Cookie")) != 0 {
		t.Errorf("login with a wrong token: %d, cookies %q", a.status, a.header.Values("Set-Cookie"))
	}
	if a := e.send(anon, "POST", "/login", url.Values{"token": {e.token}}, map[string]string{"Origin": "https://evil.example"}); a.status != http.StatusForbidden {
		t.Errorf("login posted from another origin: %d", a.status)
	}
	// A session cookie made up by the caller is no session.
	fake := e.browser()
	u, _ := url.Parse(e.url)
	fake.Jar.SetCookies(u, []*http.Cookie{{Name: "lifeboat_session", Value: strings.Repeat("A", 43)}})
	if a := e.send(fake, "GET", "/", nil, nil); a.status != http.StatusSeeOther {
		t.Errorf("made-up session cookie: %d", a.status)
	}

	// Log in: the cookie's attributes.
	b := e.browser()
	a := e.send(b, "POST", "/login", url.Values{"token": {e.token}, "next": {"/jobs"}}, map[string]string{"Origin": e.url})
	ck := a.header.Get("Set-Cookie")
	for _, want := range []string{"HttpOnly", "Secure", "SameSite=Strict", "Path=/"} {
		if !strings.Contains(ck, want) {
			t.Errorf("session cookie %q lacks %s", ck, want)
		}
	}
	if a.location != "/jobs" {
		t.Errorf("login redirect %q, want /jobs", a.location)
	}
	if a := e.send(anon, "POST", "/login", url.Values{"token": {e.token}, "next": {"//evil.example/x"}}, map[string]string{"Origin": e.url}); a.location != "/" {
		t.Errorf("login with an off-site next: redirect %q", a.location)
	}
	csrf := e.login(b)
	for _, p := range consolePages {
		a := e.send(b, "GET", p, nil, nil)
		if a.status != 200 && a.status != 404 {
			t.Errorf("GET %s logged in: %d %s", p, a.status, a.body)
		}
		if csp := a.header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || a.header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("GET %s: CSP %q, X-Frame-Options %q", p, csp, a.header.Get("X-Frame-Options"))
		}
	}
	// A page whose subject does not exist says so, with a way back.
	for _, c := range []struct{ path, says, back string }{
		{"/protection/no-such-group", "no-such-group", `<a class="button" href="/protection">Back to protection groups</a>`},
		{"/jobs/abc", `&#34;abc&#34; is not a job number`, `<a class="button" href="/jobs">All jobs</a>`},
		{"/recovery/items?point=0000000000000000-00000000", "0000000000000000-00000000", `<a class="button" href="/recovery">Back to Recovery</a>`},
	} {
		a := e.send(b, "GET", c.path, nil, nil)
		if a.status != 404 || !strings.Contains(a.body, c.says) || !strings.Contains(a.body, c.back) {
			t.Errorf("GET %s: %d, want 404 saying %q with %s: %s", c.path, a.status, c.says, c.back, a.body)
		}
	}

	// Forged POSTs: each would create a group if accepted.
	groupForm := func(name string) url.Values {
		return url.Values{"name": {name}, "member": {"vm-forged"}, "incremental": {"1h"}, "time_zone": {"UTC"}}
	}
	forged := []struct {
		name string
		form url.Values
		hdr  map[string]string
	}{
		{"no CSRF token", groupForm("f1"), map[string]string{"Origin": e.url}},
		{"wrong CSRF token", withCSRF(groupForm("f2"), "x"+csrf[1:]), map[string]string{"Origin": e.url}},
		{"another site's origin", withCSRF(groupForm("f3"), csrf), map[string]string{"Origin": "https://evil.example"}},
		{"cross-site fetch metadata", withCSRF(groupForm("f4"), csrf), map[string]string{"Origin": e.url, "Sec-Fetch-Site": "cross-site"}},
		{"another site's referer", withCSRF(groupForm("f5"), csrf), map[string]string{"Referer": "https://evil.example/page"}},
		{"no origin at all", withCSRF(groupForm("f6"), csrf), nil},
	}
	for _, f := range forged {
		if a := e.send(b, "POST", "/protection/new", f.form, f.hdr); a.status != http.StatusForbidden {
			t.Errorf("forged POST (%s): %d, want 403", f.name, a.status)
		}
	}
	// The script's API calls: CSRF header and origin too.
	body := `{"name":"f7","members":["vm-forged"]}`
	for _, h := range []map[string]string{{"Origin": e.url}, {"Origin": "https://evil.example", "X-CSRF-Token": csrf}} {
		req, _ := http.NewRequest("POST", e.url+"/console"+api.Prefix+"/groups", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := b.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("forged API call through the console %v: %d", h, resp.StatusCode)
		}
	}
	var groups []api.Group
	if _, err := e.admin.Do(context.Background(), "GET", api.Prefix+"/groups", nil, &groups); err != nil || len(groups) != 0 {
		t.Fatalf("after forged requests: groups %+v (%v), want none", groups, err)
	}
	// Agent endpoints stay out of the console's reach.
	if a := e.send(b, "GET", "/console"+api.Prefix+"/agent/jobs/next", nil, nil); a.status != http.StatusForbidden {
		t.Errorf("agent endpoint through the console: %d", a.status)
	}

	// The same POST from the console page is accepted.
	a = e.send(b, "POST", "/protection/new", withCSRF(groupForm("real"), csrf), map[string]string{"Origin": e.url})
	if a.status != http.StatusSeeOther || a.location != "/protection/real" {
		t.Fatalf("group from the console: %d %q %s", a.status, a.location, a.body)
	}
	if _, err := e.admin.Do(context.Background(), "GET", api.Prefix+"/groups", nil, &groups); err != nil || len(groups) != 1 || groups[0].Name != "real" {
		t.Fatalf("groups after the real POST: %+v (%v)", groups, err)
	}
	// Its settings form edits the group; a forged one does not.
	settings := url.Values{"full": {"02:00, 14:00"}, "time_zone": {"UTC"}, "incremental": {"30m"}, "retention_days": {"7"},
		"retention_count": {"2"}, "verify_boot": {"on"}}
	if a := e.send(b, "POST", "/protection/real/settings", withCSRF(settings, "x"+csrf[1:]), map[string]string{"Origin": e.url}); a.status != http.StatusForbidden {
		t.Errorf("forged settings POST: %d", a.status)
	}
	if a := e.send(b, "POST", "/protection/real/settings", withCSRF(settings, csrf), map[string]string{"Origin": e.url}); a.status != http.StatusSeeOther {
		t.Errorf("settings POST: %d %s", a.status, a.body)
	}
	var g api.Group
	if _, err := e.admin.Do(context.Background(), "GET", api.Prefix+"/groups/real", nil, &g); err != nil || g.Incremental != "30m0s" ||
		strings.Join(g.FullTimes, ",") != "02:00,14:00" || g.RetentionDays != 7 || g.RetentionCount != 2 || !g.VerifyBoot || g.OfflineFallback == nil || *g.OfflineFallback {
		t.Errorf("group after the settings form: %+v (%v)", g, err)
	}
	if page := e.send(b, "GET", "/protection/real", nil, nil); !strings.Contains(page.body, `value="02:00,14:00"`) || !strings.Contains(page.body, "Settings of real saved") {
		t.Errorf("group page after saving: %d\n%s", page.status, page.body)
	}
	// Logging out ends the session for pages and the script's calls.
	if a := e.send(b, "POST", "/logout", url.Values{"csrf": {csrf}}, map[string]string{"Origin": e.url}); a.status != http.StatusSeeOther {
		t.Errorf("logout: %d", a.status)
	}
	if a := e.send(b, "GET", "/", nil, nil); a.status != http.StatusSeeOther {
		t.Errorf("overview after logout: %d", a.status)
	}
	if a := e.send(b, "GET", "/console"+api.Prefix+"/groups", nil, nil); a.status != http.StatusUnauthorized {
		t.Errorf("API through the console after logout: %d", a.status)
	}
}

func withCSRF(v url.Values, tok string) url.Values {
	v.Set("csrf", tok)
	return v
}

// The item browser through the console, on a real point: an ext4 disk
// image of a folder VM, backed up by an in-process agent. A file comes
// back byte for byte; paths that try to leave the point are refused.
func TestConsoleItemDownloadStaysInPoint(t *testing.T) {
	mkfs := testenv.Tool(t, "mkfs.ext4")
	e := start(t)
	root := t.TempDir()
	src := filepath.Join(root, "src")
	os.MkdirAll(filepath.Join(src, "dir"), 0o755)
	want := bytes.Repeat([]byte("lifeboat console item 0123456789\n"), 5000)
	os.WriteFile(filepath.Join(src, "dir", "file.txt"), want, 0o644)
	os.WriteFile(filepath.Join(src, "hello.txt"), []byte("hello\n"), 0o644)
	vmDir := filepath.Join(root, "vms", "vmItems")
	os.MkdirAll(vmDir, 0o755)
	img := filepath.Join(vmDir, "disk.raw")
	if out, err := exec.Command(mkfs, "-q", "-F", "-d", src, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	var tr api.TokenResponse
	ctx := context.Background()
	if _, err := e.admin.Do(ctx, "POST", api.Prefix+"/enrollment-tokens", api.TokenRequest{}, &tr); err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(ctx, agent.Config{Server: e.url, Token: tr.Token, CAFingerprint: e.srv.CAFingerprint(), StateDir: t.TempDir(),
		Name: "n1", VMDirs: []string{filepath.Join(root, "vms")}, Interval: 200 * time.Millisecond, Wait: 2 * time.Second, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	t.Cleanup(func() { cancel(); <-done })

	b := e.browser()
	csrf := e.login(b)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var vms []catalog.VMStatus
		e.admin.Do(ctx, "GET", api.Prefix+"/vms", nil, &vms)
		if len(vms) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent reported no VM")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Back up from the overview's button.
	r := e.send(b, "POST", "/backup", url.Values{"vm": {"vmItems"}, "csrf": {csrf}}, map[string]string{"Origin": e.url})
	if r.status != http.StatusSeeOther || !strings.HasPrefix(r.location, "/jobs/") {
		t.Fatalf("backup now: %d %q", r.status, r.location)
	}
	var job catalog.Job
	for deadline := time.Now().Add(30 * time.Second); ; {
		if err := json.Unmarshal([]byte(e.send(b, "GET", "/console"+api.Prefix+r.location, nil, nil).body), &job); err == nil && job.Done() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backup job %s: %+v", r.location, job)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var res api.BackupResult
	json.Unmarshal(job.Result, &res)
	if job.State != catalog.JobSucceeded || res.Point == "" {
		t.Fatalf("backup: %s %s", job.State, job.Error)
	}
	for _, p := range []string{r.location, "/jobs", "/", "/protection", "/recovery?vm=vmItems", "/recovery?vm=vmItems&point=" + res.Point, "/recovery/items?point=" + res.Point,
		"/recovery/items?point=" + res.Point + "&disk=disk.raw&volume=0&path=/dir"} {
		if a := e.send(b, "GET", p, nil, nil); a.status != 200 || strings.Contains(a.body, `role="alert"`) {
			t.Errorf("GET %s: %d\n%s", p, a.status, a.body)
		}
	}
	// Tapes and alerts as the catalog holds them: a cartridge with the
	// point's copy, and an alert acknowledged from its page.
	cat := e.srv.Catalog()
	cart, err := cat.SaveCartridge(ctx, catalog.Cartridge{Library: "lib1", Barcode: "LB0001L9", Slot: 3, LabelID: "label-1", Capacity: 1 << 40, Used: 5 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.RecordTapeSegments(ctx, []catalog.TapeSegment{{CopyID: "copy-1", Seq: 0, PointID: res.Point, CartridgeID: cart.ID, FileNumber: 2, Length: 5 << 20, Final: true}}); err != nil {
		t.Fatal(err)
	}
	if a := e.send(b, "GET", "/tapes", nil, nil); a.status != 200 || !strings.Contains(a.body, "LB0001L9") || !strings.Contains(a.body, res.Point) || !strings.Contains(a.body, "Library lib1") {
		t.Errorf("tapes page: %d\n%s", a.status, a.body)
	}
	if a := e.send(b, "GET", "/recovery?point="+res.Point, nil, nil); !strings.Contains(a.body, "On tape:") || !strings.Contains(a.body, "LB0001L9 file 2") {
		t.Errorf("the recovery page does not say the point is on tape LB0001L9:\n%s", a.body)
	}
	al, err := cat.RaiseAlert(ctx, catalog.Alert{Kind: "job-failed", Severity: catalog.SeverityCritical, Subject: "vmItems", Message: "backup failed: disk gone"})
	if err != nil {
		t.Fatal(err)
	}
	if a := e.send(b, "GET", "/alerts", nil, nil); !strings.Contains(a.body, "backup failed: disk gone") || !strings.Contains(a.body, fmt.Sprintf("/alerts/%d/ack", al.ID)) {
		t.Errorf("alerts page:\n%s", a.body)
	}
	if a := e.send(b, "POST", fmt.Sprintf("/alerts/%d/ack", al.ID), url.Values{"csrf": {csrf}}, map[string]string{"Origin": e.url}); a.status != http.StatusSeeOther {
		t.Errorf("acknowledge: %d %s", a.status, a.body)
	}
	if a := e.send(b, "GET", "/alerts", nil, nil); strings.Contains(a.body, "backup failed: disk gone") || !strings.Contains(a.body, "acknowledged") {
		t.Errorf("alerts page after acknowledging:\n%s", a.body)
	}
	var tapes []struct {
		catalog.Cartridge
		Segments []catalog.TapeSegment `json:"segments"`
	}
	if _, err := e.admin.Do(ctx, "GET", api.Prefix+"/tapes", nil, &tapes); err != nil || len(tapes) != 1 || len(tapes[0].Segments) != 1 || tapes[0].Segments[0].PointID != res.Point {
		t.Errorf("GET /api/v1/tapes: %+v (%v)", tapes, err)
	}

	items := e.send(b, "GET", "/recovery/items?point="+res.Point+"&disk=disk.raw&volume=0&path=/dir", nil, nil)
	if !strings.Contains(items.body, "file.txt") {
		t.Fatalf("item browser of /dir lacks file.txt:\n%s", items.body)
	}
	dl := "/console" + api.Prefix + "/points/" + res.Point + "/items/download?"
	got := e.send(b, "GET", dl+url.Values{"disk": {"disk.raw"}, "volume": {"0"}, "path": {"/dir/file.txt"}}.Encode(), nil, nil)
	if got.status != 200 {
		t.Fatalf("download: %d %s", got.status, got.body)
	}
	tr2 := tar.NewReader(strings.NewReader(got.body))
	h, err := tr2.Next()
	if err != nil {
		t.Fatalf("download is no tar: %v", err)
	}
	data, _ := io.ReadAll(tr2)
	if !bytes.Equal(data, want) {
		t.Fatalf("downloaded %s: %d bytes, want the %d written", h.Name, len(data), len(want))
	}
	t.Logf("downloaded %s (%d bytes) through the console: same bytes", h.Name, len(data))
	for _, bad := range []string{"../../etc/passwd", "/../../etc/passwd", "/etc/passwd", "dir/../../../etc/passwd", "/dir/../..", "..", "/dir/\x00x"} {
		for _, prefix := range []string{"/console" + api.Prefix, api.Prefix} {
			u := prefix + "/points/" + res.Point + "/items/download?" + url.Values{"disk": {"disk.raw"}, "volume": {"0"}, "path": {bad}}.Encode()
			var a answer
			if prefix == api.Prefix {
				a = e.send(e.tls, "GET", u, nil, map[string]string{"Authorization": "Bearer " + e.token})
			} else {
				a = e.send(b, "GET", u, nil, nil)
			}
			if a.status < 400 || a.status > 499 || strings.Contains(a.body, "root:") {
				t.Errorf("download of %q via %s: %d (%d bytes), want 4xx", bad, prefix, a.status, len(a.body))
			}
		}
	}
	// A point ID that is a path: the mux redirects to the cleaned path
	// (which is no download) or the API refuses it.
	for _, bad := range []string{"../x", "0000000000000000-0000000%2F..%2F.."} {
		if a := e.send(b, "GET", "/console"+api.Prefix+"/points/"+bad+"/items/download?path=/hello.txt", nil, nil); a.status < 300 || a.status > 499 {
			t.Errorf("download from point %q: %d", bad, a.status)
		}
	}
}
