package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/internal/promtext"
	"lifeboat/internal/testenv"
)

// Every command path gives its flag set to -h (the completion script and
// `-h` both depend on it), the subcommand table names only real
// subcommands, and every command but completion takes --json.
func TestCommandTree(t *testing.T) {
	tree := commandTree()
	byPath := map[string]cliNode{}
	for _, n := range tree {
		byPath[n.path] = n
	}
	for _, c := range commands() {
		n, ok := byPath[c.name]
		if !ok {
			t.Fatalf("command %s missing from the tree", c.name)
		}
		if n.fs == nil && len(n.subs) == 0 {
			t.Errorf("%s: -h gives no flag set and the subcommand table lists no subcommands of it", c.name)
		}
	}
	for path := range subcommands() {
		if _, ok := byPath[path]; !ok {
			t.Errorf("subcommand table: %q is not a command path", path)
		}
	}
	for _, n := range tree {
		t.Run(strings.ReplaceAll(n.path, " ", "_"), func(t *testing.T) {
			if n.fs == nil {
				if len(n.subs) == 0 {
					t.Fatalf("%s: no flag set and no subcommands", n.path)
				}
				return
			}
			if strings.HasPrefix(n.path, "completion") {
				return // a shell script is its output
			}
			if n.fs.Lookup("json") == nil {
				t.Errorf("lifeboat %s has no --json", n.path)
			}
		})
	}
}

// The real binary's -h goes through the same path: usage on stderr,
// exit 0, the flags listed.
func TestHelpFlag(t *testing.T) {
	for _, args := range [][]string{{"agent", "-h"}, {"tape", "write", "-h"}, {"cluster", "volume", "add", "--help"}, {"version", "-h"}} {
		cmd := exec.Command(lifeboatBin, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("lifeboat %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		if !strings.Contains(stderr.String(), "-json") {
			t.Errorf("lifeboat %s: usage lists no -json:\n%s", strings.Join(args, " "), stderr.String())
		}
	}
	var v map[string]string
	lbJSON(t, nil, &v, "version")
	if v["version"] == "" || v["go"] == "" {
		t.Fatalf("version --json: %v", v)
	}
}

func completionScript(t *testing.T, shell string) string {
	t.Helper()
	out, err := exec.Command(lifeboatBin, "completion", shell).Output()
	if err != nil {
		t.Fatalf("completion %s: %v", shell, err)
	}
	return string(out)
}

// The bash script parses, names every command, and completes in a real
// bash: the words typed so far go in COMP_WORDS as bash would put them.
func TestCompletionBash(t *testing.T) {
	bash := testenv.Tool(t, "bash")
	script := completionScript(t, "bash")
	for _, c := range commands() {
		if !strings.Contains(script, " "+c.name+" ") && !strings.Contains(script, `"`+c.name+`"`) {
			t.Errorf("the script does not name %s", c.name)
		}
	}
	file := filepath.Join(t.TempDir(), "lifeboat.bash")
	if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bash, "-n", file).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "repo-folder-x"), nil, 0o644)
	for _, c := range []struct {
		words []string // the last is the word being completed
		want  string
	}{
		{[]string{"rec"}, "recover"},
		{[]string{"tape", "wr"}, "write"},
		{[]string{"cluster", "volume", "a"}, "add"},
		{[]string{"backup", "--full"}, "--full-read"},
		{[]string{"agent", "--metrics-l"}, "--metrics-listen"},
		{[]string{"server", "--log-f"}, "--log-format"},
		{[]string{"backup", "--json", "--repo", "repo-folder"}, "repo-folder-x"}, // a flag's value: files
		{[]string{"completion", "fi"}, "fish"},
	} {
		words := append([]string{"lifeboat"}, c.words...)
		prog := "source " + file + "\nCOMP_WORDS=(" + strings.Join(words, " ") + ")\nCOMP_CWORD=" + itoa(int64(len(words)-1)) +
			"\n_lifeboat\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
		cmd := exec.Command(bash, "--norc", "--noprofile", "-c", prog)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", words, err, out)
		}
		if got := strings.Fields(string(out)); len(got) != 1 || got[0] != c.want {
			t.Errorf("lifeboat %s<TAB>: %q, want %q", strings.Join(c.words, " "), got, c.want)
		}
	}
}

// zsh and fish get scripts too; they are checked by their shells when
// those are installed (neither is part of the test set-up).
func TestCompletionOtherShells(t *testing.T) {
	for _, sh := range []string{"zsh", "fish"} {
		script := completionScript(t, sh)
		for _, w := range []string{"recover", "verify", "metrics-listen"} {
			if !strings.Contains(script, w) {
				t.Errorf("%s script lacks %s", sh, w)
			}
		}
		bin, err := exec.LookPath(sh)
		if err != nil {
			t.Logf("%s not installed: its script is not run", sh)
			continue
		}
		file := filepath.Join(t.TempDir(), "lifeboat."+sh)
		os.WriteFile(file, []byte(script), 0o644)
		if out, err := exec.Command(bin, "-n", file).CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v\n%s", sh, err, out)
		}
		if sh == "zsh" {
			// Registered with zsh's completion system (it runs the bash
			// function through bashcompinit).
			out, err := exec.Command(bin, "-f", "-c", "autoload -U compinit && compinit -u -D; source "+file+"; print -r -- ${_comps[lifeboat]}").CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "_bash_complete -F _lifeboat" {
				t.Errorf("zsh: lifeboat completes with %q (%v)", out, err)
			}
			continue
		}
		for _, c := range []struct{ line, want string }{
			{"lifeboat rec", "recover"},
			{"lifeboat tape wr", "write"},
			{"lifeboat cluster volume a", "add"},
			{"lifeboat backup --full", "--full-read"},
			{"lifeboat agent --metrics-l", "--metrics-listen"},
		} {
			out, err := exec.Command(bin, "--no-config", "-c", "source "+file+"; complete -C '"+c.line+"'").CombinedOutput()
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				got = append(got, strings.SplitN(l, "\t", 2)[0])
			}
			if err != nil || len(got) != 1 || got[0] != c.want {
				t.Errorf("fish: %s<TAB>: %q (%v), want %q", c.line, got, err, c.want)
			}
		}
	}
	if out, err := exec.Command(lifeboatBin, "completion", "tcsh").CombinedOutput(); err == nil || !strings.Contains(string(out), "bash|zsh|fish") {
		t.Errorf("completion tcsh: %v\n%s", err, out)
	}
}

// The server and the agent log JSON lines when stderr is not a terminal,
// text on a terminal (auto), and what --log-format says.
func TestDaemonLogFormat(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	// The start-up line is logged right after the summary startServer
	// waits for; a stopping server still writes it.
	first := func(p *proc) string {
		t.Helper()
		p.stop()
		line, _, _ := strings.Cut(p.stderr.String(), "\n")
		return line
	}
	for _, c := range []struct {
		format string
		json   bool
	}{{"", true}, {"json", true}, {"text", false}} {
		args := []string{"--data", t.TempDir()}
		if c.format != "" {
			args = append(args, "--log-format", c.format)
		}
		p, _ := startServer(t, args...)
		line := first(p)
		var rec map[string]any
		isJSON := json.Unmarshal([]byte(line), &rec) == nil
		if isJSON != c.json || !strings.Contains(line, "server started") {
			t.Errorf("--log-format %q: first log line %q", c.format, line)
		}
		if isJSON && (rec["level"] != "INFO" || rec["url"] == nil) {
			t.Errorf("--log-format %q: %v", c.format, rec)
		}
		if !c.json && !strings.Contains(line, "level=INFO") {
			t.Errorf("--log-format text: %q", line)
		}
	}
	out := lbFail(t, nil, "server", "--data", t.TempDir(), "--log-format", "xml")
	if !strings.Contains(out, "--log-format") {
		t.Errorf("bad --log-format: %s", out)
	}
	// auto on a terminal: script(1) gives the server a pseudo-terminal.
	script := testenv.Tool(t, "script")
	cmd := exec.Command(script, "-qfec", lifeboatBin+" server --listen 127.0.0.1:0 --data "+t.TempDir(), "/dev/null")
	var buf syncBuffer
	cmd.Stdout = &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitUntil(t, "the server's log on a terminal", 20*time.Second, func() bool { return strings.Contains(buf.String(), "server started") })
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.Contains(l, "server started") && (!strings.Contains(l, "level=INFO") || strings.HasPrefix(strings.TrimSpace(l), "{")) {
			t.Errorf("log on a terminal is not text: %q", l)
		}
	}
}

// syncBuffer is a bytes.Buffer a process may write while the test reads.
type syncBuffer struct {
	mu chan struct{}
	b  bytes.Buffer
}

func (s *syncBuffer) lock() {
	if s.mu == nil {
		s.mu = make(chan struct{}, 1)
	}
	s.mu <- struct{}{}
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.lock()
	defer func() { <-s.mu }()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.lock()
	defer func() { <-s.mu }()
	return s.b.String()
}

// Outcome 4 of issue #6: /metrics of the server and of the agent, scraped
// over HTTP while a backup runs, show the job running and the byte
// counters moving, and after it the finished job and its bytes. A second,
// unchanged backup moves the reuse counters.
func TestMetricsMoveDuringBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	root := t.TempDir()
	data, vmDir := filepath.Join(root, "data"), filepath.Join(root, "vms")
	// 200 MiB, 4 MiB of random data in every 6 MiB: about 130 MiB to
	// read, compress, hash and send — seconds, long enough to be seen.
	if err := os.MkdirAll(filepath.Join(vmDir, "big"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(vmDir, "big", "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	block := make([]byte, 4<<20)
	var dataBytes int64
	const size = 200 << 20
	for off := int64(0); off < size; off += 6 << 20 {
		b := block[:min(int64(len(block)), size-off)]
		rand.Read(b)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		dataBytes += int64(len(b))
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()

	_, st := startServer(t, "--data", data, "--heartbeat", "300ms")
	env := []string{"LIFEBOAT_DATA=" + data}
	var tok api.TokenResponse
	lbJSON(t, env, &tok, "token", "create")
	ag, out := startProc(t, nil, "agent", "--server", st.URL, "--token", tok.Token, "--ca-fingerprint", st.CAFingerprint,
		"--state", filepath.Join(root, "state"), "--name", "n1", "--vm-dir", vmDir, "--interval", "300ms", "--wait", "2s",
		"--metrics-listen", "127.0.0.1:0", "--json")
	var summary struct {
		Metrics string `json:"metrics"`
		Node    string `json:"node"`
	}
	lines := bufio.NewReader(out)
	line, err := lines.ReadString('\n')
	if err != nil || json.Unmarshal([]byte(line), &summary) != nil || !strings.HasPrefix(summary.Metrics, "http://127.0.0.1:") || summary.Node != "n1" {
		t.Fatalf("agent start-up line %q: %v", line, err)
	}
	go io.Copy(io.Discard, lines)

	caPEM, _ := os.ReadFile(filepath.Join(data, "tls", "ca.pem"))
	tc, _ := api.TLSConfig(caPEM, nil)
	srvClient := &api.Client{Base: st.URL, Token: st.AdminToken, HTTP: api.HTTPClient(tc, 10*time.Second)}
	fetchServer := func() (promtext.Samples, error) {
		var b []byte
		if _, err := srvClient.Do(context.Background(), "GET", "/metrics", nil, &b); err != nil {
			return nil, fmt.Errorf("server /metrics: %w", err)
		}
		s, err := promtext.Parse(b)
		if err != nil {
			return nil, fmt.Errorf("server /metrics: %w\n%s", err, b)
		}
		return s, nil
	}
	fetchAgent := func() (promtext.Samples, error) {
		resp, err := http.Get(summary.Metrics)
		if err != nil {
			return nil, fmt.Errorf("agent /metrics: %w", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != promtext.ContentType {
			return nil, fmt.Errorf("agent /metrics: %s, %q", resp.Status, resp.Header.Get("Content-Type"))
		}
		s, err := promtext.Parse(b)
		if err != nil {
			return nil, fmt.Errorf("agent /metrics: %w\n%s", err, b)
		}
		return s, nil
	}
	must := func(s promtext.Samples, err error) promtext.Samples {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	scrapeServer := func() promtext.Samples { t.Helper(); return must(fetchServer()) }
	scrapeAgent := func() promtext.Samples { t.Helper(); return must(fetchAgent()) }
	get := func(s promtext.Samples, name string, labels ...string) float64 {
		t.Helper()
		v, ok := s.Get(name, labels...)
		if !ok {
			t.Fatalf("no series %s", promtext.Key(name, labels...))
		}
		return v
	}

	var vms []catalog.VMStatus
	waitUntil(t, "the agent's inventory", 20*time.Second, func() bool {
		lbJSON(t, env, &vms, "vm", "list")
		return len(vms) == 1
	})
	waitUntil(t, "agent heartbeats counted", 10*time.Second, func() bool {
		return get(scrapeAgent(), "lifeboat_agent_heartbeats_sent_total", "result", "ok") >= 2
	})
	sBefore, aBefore := scrapeServer(), scrapeAgent()
	if v, _ := aBefore.Get("lifeboat_agent_build_info", "version", "dev", "goversion", runtime.Version(), "driver", "folders"); v != 1 {
		t.Errorf("agent build info: %v", aBefore)
	}
	if get(aBefore, "lifeboat_agent_last_heartbeat_success_timestamp_seconds") < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last heartbeat timestamp is old")
	}

	// Back up (a new group's VM is due at once). Both are scraped as
	// fast as they answer from before the job is queued until it ends.
	type scrape struct{ server, agent promtext.Samples }
	var scrapes []scrape
	stopScraping, scraped := make(chan struct{}), make(chan error, 1)
	go func() {
		for {
			select {
			case <-stopScraping:
				scraped <- nil
				return
			default:
			}
			sv, err := fetchServer()
			if err != nil {
				scraped <- err
				return
			}
			ag, err := fetchAgent()
			if err != nil {
				scraped <- err
				return
			}
			scrapes = append(scrapes, scrape{sv, ag})
			time.Sleep(10 * time.Millisecond)
		}
	}()
	lbJSON(t, env, nil, "group", "create", "g", "--member", "big")
	var jobs []catalog.Job
	waitUntil(t, "the scheduled backup", 20*time.Second, func() bool {
		lbJSON(t, env, &jobs, "job", "list", "--kind", "backup")
		return len(jobs) == 1
	})
	jobID := itoa(jobs[0].ID)
	var d api.JobDetail
	waitUntil(t, "the backup", 3*time.Minute, func() bool {
		lbJSON(t, env, &d, "job", "show", jobID)
		if d.State == catalog.JobFailed {
			t.Fatalf("backup failed: %s", d.Error)
		}
		return d.State == catalog.JobSucceeded
	})
	close(stopScraping)
	if err := <-scraped; err != nil {
		t.Fatal(err)
	}
	type seen struct{ serverRunning, agentRunning, serverBytesMid, agentBytesMid, agentProcessedMid []float64 }
	var during seen
	for _, sc := range scrapes {
		if v, _ := sc.server.Get("lifeboat_jobs", "state", "running"); v > 0 {
			during.serverRunning = append(during.serverRunning, v)
			during.serverBytesMid = append(during.serverBytesMid, get(sc.server, "lifeboat_repo_bytes_written_total"))
		}
		if v := get(sc.agent, "lifeboat_agent_jobs_running", "kind", "backup"); v > 0 {
			during.agentRunning = append(during.agentRunning, v)
			during.agentBytesMid = append(during.agentBytesMid, get(sc.agent, "lifeboat_agent_repo_bytes_sent_total"))
			during.agentProcessedMid = append(during.agentProcessedMid, get(sc.agent, "lifeboat_agent_backup_bytes_processed_total"))
		}
	}
	var sAfter, aAfter promtext.Samples
	waitUntil(t, "the agent to count the finished job", 10*time.Second, func() bool {
		aAfter = scrapeAgent()
		return get(aAfter, "lifeboat_agent_jobs_running", "kind", "backup") == 0
	})
	sAfter = scrapeServer()
	t.Logf("%d scrapes; the server's showed the backup running in %d, the agent's in %d", len(scrapes), len(during.serverRunning), len(during.agentRunning))

	if len(during.serverRunning) == 0 || len(during.agentRunning) == 0 {
		t.Fatalf("no scrape saw the backup running (server %d, agent %d)", len(during.serverRunning), len(during.agentRunning))
	}
	strictlyBetween := func(what string, before, after float64, mids []float64) {
		t.Helper()
		var between []float64
		for _, m := range mids {
			if m > before && m < after {
				between = append(between, m)
			}
		}
		if len(between) > 0 {
			mid, distinct := between[len(between)/2], len(slices.Compact(slices.Clone(between)))
			t.Logf("%s: before %.0f, during %.0f (%d distinct values in between), after %.0f", what, before, mid, distinct, after)
			return
		}
		t.Errorf("%s: no value during the backup strictly between %.0f and %.0f: %v", what, before, after, mids)
	}
	strictlyBetween("server lifeboat_repo_bytes_written_total", get(sBefore, "lifeboat_repo_bytes_written_total"), get(sAfter, "lifeboat_repo_bytes_written_total"), during.serverBytesMid)
	strictlyBetween("agent lifeboat_agent_repo_bytes_sent_total", get(aBefore, "lifeboat_agent_repo_bytes_sent_total"), get(aAfter, "lifeboat_agent_repo_bytes_sent_total"), during.agentBytesMid)
	strictlyBetween("agent lifeboat_agent_backup_bytes_processed_total", get(aBefore, "lifeboat_agent_backup_bytes_processed_total"), get(aAfter, "lifeboat_agent_backup_bytes_processed_total"), during.agentProcessedMid)

	// After: one more job finished on both sides, and the bytes.
	for _, c := range []struct {
		what          string
		before, after promtext.Samples
		name          string
		labels        []string
		atLeast       float64 // growth
	}{
		{"server", sBefore, sAfter, "lifeboat_jobs_finished_total", []string{"kind", "backup", "state", "succeeded"}, 1},
		{"server", sBefore, sAfter, "lifeboat_points_recorded_total", nil, 1},
		{"server", sBefore, sAfter, "lifeboat_backup_bytes_read_total", nil, float64(dataBytes)},
		{"server", sBefore, sAfter, "lifeboat_repo_bytes_written_total", nil, float64(dataBytes) / 2},
		{"agent", aBefore, aAfter, "lifeboat_agent_jobs_started_total", []string{"kind", "backup"}, 1},
		{"agent", aBefore, aAfter, "lifeboat_agent_jobs_finished_total", []string{"kind", "backup", "result", "succeeded"}, 1},
		{"agent", aBefore, aAfter, "lifeboat_agent_job_duration_seconds_count", []string{"kind", "backup"}, 1},
		{"agent", aBefore, aAfter, "lifeboat_agent_backup_bytes_read_total", nil, float64(dataBytes)},
		{"agent", aBefore, aAfter, "lifeboat_agent_backup_bytes_processed_total", nil, float64(dataBytes)},
		{"agent", aBefore, aAfter, "lifeboat_agent_repo_bytes_sent_total", nil, float64(dataBytes) / 2},
		{"agent", aBefore, aAfter, "lifeboat_agent_backup_chunks_new_total", nil, 1},
	} {
		var b float64
		if v, ok := c.before.Get(c.name, c.labels...); ok {
			b = v
		}
		if a := get(c.after, c.name, c.labels...); a-b < c.atLeast {
			t.Errorf("%s %s: %.0f -> %.0f, want a growth of at least %.0f", c.what, promtext.Key(c.name, c.labels...), b, a, c.atLeast)
		}
	}
	// Not equal: the agent counts batches as sent (framing included), the
	// server the objects it stored (small direct writes included).
	t.Logf("server stored %.0f bytes, the agent sent %.0f in batches", get(sAfter, "lifeboat_repo_bytes_written_total"), get(aAfter, "lifeboat_agent_repo_bytes_sent_total"))

	// An unchanged second backup reuses what the first stored.
	var run api.RunResponse
	lbJSON(t, env, &run, "group", "run", "g")
	if len(run.Jobs) != 1 {
		t.Fatalf("group run: %+v", run)
	}
	jobID = itoa(run.Jobs[0].ID)
	waitUntil(t, "the second backup", 3*time.Minute, func() bool {
		lbJSON(t, env, &d, "job", "show", jobID)
		return d.State == catalog.JobSucceeded || d.State == catalog.JobFailed
	})
	var a2 promtext.Samples
	waitUntil(t, "the agent to count the second job", 10*time.Second, func() bool {
		a2 = scrapeAgent()
		return get(a2, "lifeboat_agent_jobs_finished_total", "kind", "backup", "result", "succeeded") == 2
	})
	reused := get(a2, "lifeboat_agent_backup_bytes_reused_total") - get(aAfter, "lifeboat_agent_backup_bytes_reused_total")
	dedup := get(a2, "lifeboat_agent_backup_chunks_deduplicated_total") - get(aAfter, "lifeboat_agent_backup_chunks_deduplicated_total")
	if reused <= 0 && dedup <= 0 {
		t.Errorf("second backup: reused %.0f bytes, %.0f chunks deduplicated", reused, dedup)
	}
	t.Logf("second backup: %.0f bytes reused, %.0f chunks deduplicated", reused, dedup)

	// The agent logs JSON lines (stderr is a pipe here).
	ag.stop()
	for _, l := range strings.Split(strings.TrimSpace(ag.stderr.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("agent log line is not JSON: %q", l)
		}
	}
}
