// Command scale measures one running lifeboat server with many agents:
// it enrolls N agents (the real agent package, in this process: one-time
// tokens, mutual TLS, heartbeats, inventory, long-poll jobs, backups through
// the agent repository API) each with M tiny VM images, protects every VM in
// one group, and times the scheduler's rounds, the drain of their jobs, the
// catalog-backed API calls, and the server's CPU time and memory from
// /proc/PID. bench/scale/run.sh starts the server and runs it.
//
// Rounds measured:
//
//	first     POST /groups with all VMs pokes the scheduler; the round
//	          creates a backup job per VM (none was ever backed up). Its
//	          time is the newest job's created stamp minus the moment the
//	          POST was answered (an upper bound: it includes the poke).
//	schedule  the incrementals come due on the scheduler's clock (the
//	          server runs with --clock-speed): a tick's round creates a job
//	          per VM. Its jobs' created stamps give the batch's spread.
//	run       with -run-round, after the schedule round's jobs drained:
//	          POST /groups/G/run, the same job creation synchronously.
//
// The first round's jobs are then run by the agents (tiny real backups, so
// the server loads each reported point as it would in production); "drain"
// is the time until none is queued or running. The catalog queries are
// timed while the schedule round's jobs run (the server under load).
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"lifeboat/agent"
	"lifeboat/api"
	"lifeboat/catalog"
)

var (
	serverURL = flag.String("server", "https://127.0.0.1:18443", "server URL")
	dataDir   = flag.String("data", "", "the server's data folder (admin-token, tls/ca.pem)")
	pid       = flag.Int("pid", 0, "the server's process ID (for /proc)")
	work      = flag.String("work", "/tmp/lifeboat-scale/agents", "folder for the agents' state and VM images")
	nAgents   = flag.Int("agents", 50, "agents")
	nVMs      = flag.Int("vms", 20, "VMs per agent")
	imgSize   = flag.Int("image-size", 64<<10, "bytes of random data per VM image")
	runRound  = flag.Bool("run-round", false, "after the schedule round drained, time POST /groups/G/run too")
	samples   = flag.Int("samples", 20, "timed calls per API query")
	out       = flag.String("out", "", "write the results as JSON here")
)

type proc struct{ cpu, rss, hwm float64 } // seconds, MiB, MiB

func sample() proc {
	var p proc
	if *pid == 0 {
		return p
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", *pid))
	if err == nil {
		s := string(st)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		ut, _ := strconv.ParseFloat(f[11], 64)
		stt, _ := strconv.ParseFloat(f[12], 64)
		p.cpu = (ut + stt) / 100 // USER_HZ
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", *pid))
	for _, l := range strings.Split(string(status), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && (f[0] == "VmRSS:" || f[0] == "VmHWM:") {
			kb, _ := strconv.ParseFloat(f[1], 64)
			if f[0] == "VmRSS:" {
				p.rss = kb / 1024
			} else {
				p.hwm = kb / 1024
			}
		}
	}
	return p
}

// Results is what the run prints and saves.
type Results struct {
	Agents, VMs         int
	Rounds              []Round
	Queries             []Query
	EnrollSeconds       float64
	InventorySeconds    float64
	ServerCPUSeconds    float64 // whole run
	ServerRSSMiB        float64 // at the end
	ServerPeakRSSMiB    float64 // VmHWM
	PeakRSSBeforeRounds float64
	Points              int
	Failed              int
}

type Round struct {
	Name string
	Jobs int
	// Seconds is from the request that asked for the round (POST sent)
	// until all its jobs were seen in the catalog (polled every 20 ms);
	// 0 for a round the clock started. HTTPSeconds is the request's own
	// latency (for "first" it creates the group, the round follows).
	Seconds, HTTPSeconds float64
	// ToInsertSeconds is from the request to the jobs' created stamp (taken
	// as the round starts inserting); InsertSeconds from that stamp until
	// the jobs were seen, an upper bound on the insert transaction.
	ToInsertSeconds, InsertSeconds float64
	// CPUSeconds is server CPU from before the round to its jobs all
	// seen; for "schedule" it includes the idle wait for the clock.
	CPUSeconds   float64
	DrainSeconds float64
	DrainCPU     float64
	PeakRSSMiB   float64
}

type Query struct {
	Path                   string
	Rows                   int
	MedianMs, P95Ms, MaxMs float64
}

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "[scale %s] %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, a...))
}

func run() error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	caPEM, err := os.ReadFile(filepath.Join(*dataDir, "tls", "ca.pem"))
	if err != nil {
		return err
	}
	tok, err := os.ReadFile(filepath.Join(*dataDir, "admin-token"))
	if err != nil {
		return err
	}
	tc, err := api.TLSConfig(caPEM, nil)
	if err != nil {
		return err
	}
	admin := &api.Client{Base: *serverURL, Token: strings.TrimSpace(string(tok)), HTTP: api.HTTPClient(tc, 60*time.Second)}
	do := func(method, path string, in, out any) error {
		_, err := admin.Do(ctx, method, path, in, out)
		return err
	}
	var st api.Status
	if err := do("GET", api.Prefix+"/status", nil, &st); err != nil {
		return err
	}
	res := Results{Agents: *nAgents, VMs: *nAgents * *nVMs}
	cpu0 := sample().cpu

	// Agents: each a folder of tiny raw images, one VM each.
	os.RemoveAll(*work)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var names []string
	agents := make([]*agent.Agent, *nAgents)
	t := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, *nAgents)
	for i := range *nAgents {
		name := fmt.Sprintf("host%02d", i+1)
		dir := filepath.Join(*work, name, "vms")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for j := range *nVMs {
			vm := fmt.Sprintf("%s-vm%02d", name, j+1)
			names = append(names, vm)
			b := make([]byte, *imgSize)
			rand.Read(b)
			if err := os.WriteFile(filepath.Join(dir, vm+".raw"), b, 0o644); err != nil {
				return err
			}
		}
		var tr api.TokenResponse
		if err := do("POST", api.Prefix+"/enrollment-tokens", api.TokenRequest{}, &tr); err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := agent.New(ctx, agent.Config{Server: *serverURL, Token: tr.Token, CAFingerprint: st.CAFingerprint,
				StateDir: filepath.Join(*work, name, "state"), Name: name, VMDirs: []string{dir},
				Interval: 10 * time.Second, Wait: 30 * time.Second, Log: quiet})
			if err != nil {
				errs <- fmt.Errorf("agent %s: %w", name, err)
				return
			}
			agents[i] = a
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	res.EnrollSeconds = time.Since(t).Seconds()
	logf("%d agents enrolled in %.2fs", *nAgents, res.EnrollSeconds)
	runErr := make(chan error, *nAgents)
	for _, a := range agents {
		go func() { runErr <- a.Run(ctx) }()
	}
	if err := waitFor(ctx, runErr, 120*time.Second, func() (bool, error) {
		var vms []catalog.VMStatus
		if err := do("GET", api.Prefix+"/vms", nil, &vms); err != nil {
			return false, err
		}
		n := 0
		for _, v := range vms {
			if v.OwnerNodeID != 0 && v.State != catalog.VMAbsent {
				n++
			}
		}
		return n == res.VMs, nil
	}); err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	res.InventorySeconds = time.Since(t).Seconds()
	res.PeakRSSBeforeRounds = sample().hwm
	logf("%d VMs reported (%.2fs after the first enrollment)", res.VMs, res.InventorySeconds)

	jobCount := func() (int64, int64, error) { // all jobs, queued+running
		var st api.Status
		if err := do("GET", api.Prefix+"/status", nil, &st); err != nil {
			return 0, 0, err
		}
		var all int64
		for _, n := range st.Stats.Jobs {
			all += n
		}
		return all, st.Stats.Jobs[catalog.JobQueued] + st.Stats.Jobs[catalog.JobRunning], nil
	}
	// round waits for a job per VM after base (polling every 20 ms and
	// sampling the server's CPU at each poll), then for their drain.
	// trigger is when the round was asked for (zero: by the clock).
	round := func(r *Round, base int64, trigger time.Time, p0 proc, drain bool) error {
		var cur proc
		var seen time.Time
		deadline := time.Now().Add(600 * time.Second)
		for {
			cur = sample()
			n, _, err := jobCount()
			if err != nil {
				return err
			}
			if n-base >= int64(res.VMs) {
				seen = time.Now()
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("round %s: timed out", r.Name)
			}
			select {
			case err := <-runErr:
				return fmt.Errorf("an agent stopped: %v", err)
			default:
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !trigger.IsZero() {
			r.CPUSeconds = cur.cpu - p0.cpu
		}
		var js []catalog.Job
		if err := do("GET", api.Prefix+"/jobs?kind=backup&limit=10000", nil, &js); err != nil {
			return err
		}
		sort.Slice(js, func(i, j int) bool { return js[i].ID > js[j].ID })
		js = js[:min(len(js), res.VMs)]
		r.Jobs = len(js)
		hi := js[0].Created
		for _, j := range js {
			hi = maxT(hi, j.Created)
		}
		r.InsertSeconds = seen.Sub(hi).Seconds()
		if !trigger.IsZero() {
			r.Seconds = seen.Sub(trigger).Seconds()
			r.ToInsertSeconds = hi.Sub(trigger).Seconds()
		}
		p1 := sample()
		r.PeakRSSMiB = p1.hwm
		if !drain {
			logf("round %s: %d jobs, %.3fs (HTTP %.3fs, to insert %.3fs, insert ≤ %.3fs, server CPU %.2fs); peak RSS %.0f MiB",
				r.Name, r.Jobs, r.Seconds, r.HTTPSeconds, r.ToInsertSeconds, r.InsertSeconds, r.CPUSeconds, r.PeakRSSMiB)
			res.Rounds = append(res.Rounds, *r)
			return nil
		}
		t := time.Now()
		if err := waitFor(ctx, runErr, 600*time.Second, func() (bool, error) {
			_, active, err := jobCount()
			return active == 0, err
		}); err != nil {
			return fmt.Errorf("drain %s: %w", r.Name, err)
		}
		r.DrainSeconds = time.Since(t).Seconds()
		p2 := sample()
		r.DrainCPU, r.PeakRSSMiB = p2.cpu-p1.cpu, p2.hwm
		logf("round %s: %d jobs, %.3fs (HTTP %.3fs, to insert %.3fs, insert ≤ %.3fs, server CPU %.2fs); drained in %.1fs (CPU %.1fs); peak RSS %.0f MiB",
			r.Name, r.Jobs, r.Seconds, r.HTTPSeconds, r.ToInsertSeconds, r.InsertSeconds, r.CPUSeconds, r.DrainSeconds, r.DrainCPU, r.PeakRSSMiB)
		res.Rounds = append(res.Rounds, *r)
		return nil
	}

	// Round 1: the group's creation pokes the scheduler.
	base, _, err := jobCount()
	if err != nil {
		return err
	}
	p0, t := sample(), time.Now()
	if err := do("POST", api.Prefix+"/groups", api.Group{Name: "all", Incremental: "15m", Members: names}, nil); err != nil {
		return err
	}
	if err := round(&Round{Name: "first", HTTPSeconds: time.Since(t).Seconds()}, base, t, p0, true); err != nil {
		return err
	}

	// Round 2: the incrementals come due on the scheduler's (sped-up) clock.
	if base, _, err = jobCount(); err != nil {
		return err
	}
	if err := round(&Round{Name: "schedule"}, base, time.Time{}, proc{}, false); err != nil {
		return err
	}

	// Catalog-backed queries, timed from here (keep-alive TLS connection).
	for _, path := range []string{"/status", "/vms", "/vms?name=host25-vm10", "/agents", "/groups/all",
		"/jobs?limit=10000", "/jobs?state=queued&state=running", "/jobs?vm=host25-vm10", "/points", "/points?name=host25-vm10", "/alerts"} {
		q := Query{Path: api.Prefix + path}
		var ds []float64
		for range *samples {
			var v json.RawMessage
			t := time.Now()
			if err := do("GET", q.Path, nil, &v); err != nil {
				return fmt.Errorf("GET %s: %w", q.Path, err)
			}
			ds = append(ds, float64(time.Since(t).Microseconds())/1000)
			var arr []json.RawMessage
			if json.Unmarshal(v, &arr) == nil {
				q.Rows = len(arr)
			} else {
				q.Rows = 1
			}
		}
		sort.Float64s(ds)
		q.MedianMs, q.P95Ms, q.MaxMs = ds[len(ds)/2], ds[(len(ds)*95+99)/100-1], ds[len(ds)-1]
		res.Queries = append(res.Queries, q)
		logf("GET %s: %d rows, median %.1f ms, p95 %.1f ms", path, q.Rows, q.MedianMs, q.P95Ms)
	}

	// Round 3 (-run-round): once the schedule round's jobs drained, run
	// the group now, synchronously (not drained: the run ends).
	if *runRound {
		if err := waitFor(ctx, runErr, 900*time.Second, func() (bool, error) {
			_, active, err := jobCount()
			return active == 0, err
		}); err != nil {
			return err
		}
		if base, _, err = jobCount(); err != nil {
			return err
		}
		p0, t = sample(), time.Now()
		var rr api.RunResponse
		if err := do("POST", api.Prefix+"/groups/all/run", nil, &rr); err != nil {
			return err
		}
		if err := round(&Round{Name: "run", HTTPSeconds: time.Since(t).Seconds()}, base, t, p0, false); err != nil {
			return err
		}
	}

	var ps []catalog.Point
	if err := do("GET", api.Prefix+"/points?limit=100000", nil, &ps); err != nil {
		if err := do("GET", api.Prefix+"/points", nil, &ps); err != nil {
			return err
		}
	}
	res.Points = len(ps)
	var failed []catalog.Job
	if err := do("GET", api.Prefix+"/jobs?state=failed&limit=10000", nil, &failed); err != nil {
		return err
	}
	res.Failed = len(failed)
	for i, j := range failed {
		if i < 5 {
			logf("failed job %d (%s %s): %s", j.ID, j.Kind, j.VMName, j.Error)
		}
	}
	p := sample()
	res.ServerCPUSeconds, res.ServerRSSMiB, res.ServerPeakRSSMiB = p.cpu-cpu0, p.rss, p.hwm
	logf("points %d, failed jobs %d; server CPU %.1fs over the run, RSS %.0f MiB, peak %.0f MiB",
		res.Points, res.Failed, res.ServerCPUSeconds, res.ServerRSSMiB, res.ServerPeakRSSMiB)
	cancel()
	if *out != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*out, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func waitFor(ctx context.Context, runErr chan error, limit time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case err := <-runErr:
			return fmt.Errorf("an agent stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func maxT(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
