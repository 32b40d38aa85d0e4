package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"lifeboat/catalog"
	"lifeboat/internal/promtext"
	"lifeboat/repo"
	"lifeboat/repo/storage/remote"
)

// metrics count what this agent did since it started. The server sees a
// job only when it finishes; these move while it runs (bytes processed,
// bytes sent to the repository, restored bytes), so a scrape during a long
// backup shows it working. Served by ServeMetrics in Prometheus' text
// format.
type metrics struct {
	start time.Time

	heartbeatsOK     atomic.Int64
	heartbeatsFailed atomic.Int64
	lastHeartbeat    atomic.Int64 // Unix nanoseconds of the last heartbeat the server answered
	vms              atomic.Int64

	processed   atomic.Int64 // source bytes backups went through (read or reused), as they go
	restored    atomic.Int64 // bytes restores and recoveries wrote, as they go
	bytesRead   atomic.Int64 // the rest from finished points' stats
	bytesReused atomic.Int64
	bytesStored atomic.Int64
	chunks      atomic.Int64
	chunksNew   atomic.Int64
	sentObjects atomic.Int64 // of backups that ended; running ones are in backends
	sentBytes   atomic.Int64

	mu       sync.Mutex
	started  map[string]int64    // kind
	finished map[[2]string]int64 // kind, result
	running  map[string]int64
	durSum   map[string]float64
	durCount map[string]int64
	backends map[*remote.Backend]bool // backups running now: their sends count live
}

func newMetrics() *metrics {
	m := &metrics{start: time.Now(), started: map[string]int64{}, finished: map[[2]string]int64{}, running: map[string]int64{},
		durSum: map[string]float64{}, durCount: map[string]int64{}, backends: map[*remote.Backend]bool{}}
	// The kinds an agent runs are always listed, so a dashboard sees 0
	// rather than no series before the first job.
	for _, k := range []string{catalog.KindBackup, catalog.KindRecovery} {
		m.started[k], m.running[k] = 0, 0
	}
	return m
}

func (m *metrics) jobStarted(kind string) {
	m.mu.Lock()
	m.started[kind]++
	m.running[kind]++
	m.mu.Unlock()
}

// jobFinished records a job's end; result is the job state the agent
// reported (succeeded, failed, canceled) or "deferred".
func (m *metrics) jobFinished(kind, result string, d time.Duration) {
	m.mu.Lock()
	m.running[kind]--
	m.finished[[2]string{kind, result}]++
	m.durSum[kind] += d.Seconds()
	m.durCount[kind]++
	m.mu.Unlock()
}

// progressed adds bytes a running job went through since its last report.
func (m *metrics) progressed(kind string, delta int64) {
	if delta <= 0 {
		return
	}
	if kind == catalog.KindBackup {
		m.processed.Add(delta)
	} else {
		m.restored.Add(delta)
	}
}

// sending counts b's sends live until done is called, which folds them
// into the totals.
func (m *metrics) sending(b *remote.Backend) (done func()) {
	m.mu.Lock()
	m.backends[b] = true
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if !m.backends[b] {
			return
		}
		delete(m.backends, b)
		_, _, objs, bytes := b.Counters()
		m.sentObjects.Add(objs)
		m.sentBytes.Add(bytes)
	}
}

func (m *metrics) pointStats(st repo.Stats) {
	m.bytesRead.Add(st.BytesRead)
	m.bytesReused.Add(st.BytesReused)
	m.bytesStored.Add(st.NewBytes)
	m.chunks.Add(st.Chunks)
	m.chunksNew.Add(st.NewChunks)
}

func (m *metrics) heartbeat(ok bool, at time.Time) {
	if !ok {
		m.heartbeatsFailed.Add(1)
		return
	}
	m.heartbeatsOK.Add(1)
	m.lastHeartbeat.Store(at.UnixNano())
}

// write is the exposition. Names start with lifeboat_agent_ so that they
// never mix with the server's when both are scraped.
func (m *metrics) write(p *promtext.Writer, version, driver string) {
	p.Family("lifeboat_agent_build_info", "gauge", "The agent's version and driver (always 1).")
	p.Sample("lifeboat_agent_build_info", 1, "version", version, "goversion", runtime.Version(), "driver", driver)
	p.Single("lifeboat_agent_start_time_seconds", "gauge", "When the agent started (Unix time).", float64(m.start.UnixNano())/1e9)

	m.mu.Lock()
	p.Family("lifeboat_agent_jobs_started_total", "counter", "Jobs the agent took from the server, by kind.")
	for _, k := range slices.Sorted(maps.Keys(m.started)) {
		p.Sample("lifeboat_agent_jobs_started_total", m.started[k], "kind", k)
	}
	p.Family("lifeboat_agent_jobs_running", "gauge", "Jobs running now, by kind.")
	for _, k := range slices.Sorted(maps.Keys(m.running)) {
		p.Sample("lifeboat_agent_jobs_running", m.running[k], "kind", k)
	}
	p.Family("lifeboat_agent_jobs_finished_total", "counter", "Jobs that ended, by kind and result (succeeded, failed, canceled, deferred).")
	keys := slices.SortedFunc(maps.Keys(m.finished), func(a, b [2]string) int {
		return strings.Compare(a[0]+"\x00"+a[1], b[0]+"\x00"+b[1])
	})
	for _, k := range keys {
		p.Sample("lifeboat_agent_jobs_finished_total", m.finished[k], "kind", k[0], "result", k[1])
	}
	p.Family("lifeboat_agent_job_duration_seconds", "summary", "Run time of jobs that ended, by kind.")
	for _, k := range slices.Sorted(maps.Keys(m.durSum)) {
		p.Sample("lifeboat_agent_job_duration_seconds_sum", m.durSum[k], "kind", k)
		p.Sample("lifeboat_agent_job_duration_seconds_count", m.durCount[k], "kind", k)
	}
	objs, bytes := m.sentObjects.Load(), m.sentBytes.Load()
	for b := range m.backends {
		_, _, o, n := b.Counters()
		objs += o
		bytes += n
	}
	m.mu.Unlock()

	p.Single("lifeboat_agent_backup_bytes_processed_total", "counter", "Source bytes backups went through (read or reused), counted as they go.", m.processed.Load())
	p.Single("lifeboat_agent_backup_bytes_read_total", "counter", "Bytes read from sources by finished backups.", m.bytesRead.Load())
	p.Single("lifeboat_agent_backup_bytes_reused_total", "counter", "Bytes finished backups took unread from the previous point (unchanged).", m.bytesReused.Load())
	p.Single("lifeboat_agent_backup_bytes_stored_total", "counter", "Bytes of new chunks finished backups stored (compressed, encrypted).", m.bytesStored.Load())
	p.Single("lifeboat_agent_backup_chunks_total", "counter", "Chunks finished backups referenced.", m.chunks.Load())
	p.Single("lifeboat_agent_backup_chunks_new_total", "counter", "Chunks finished backups stored because the repository lacked them.", m.chunksNew.Load())
	p.Single("lifeboat_agent_backup_chunks_deduplicated_total", "counter", "Chunks finished backups found in the repository already.", m.chunks.Load()-m.chunksNew.Load())
	p.Single("lifeboat_agent_repo_objects_sent_total", "counter", "Objects backups sent to the server's repository, counted as they go.", objs)
	p.Single("lifeboat_agent_repo_bytes_sent_total", "counter", "Bytes backups sent to the server's repository, counted as they go.", bytes)
	p.Single("lifeboat_agent_restore_bytes_written_total", "counter", "Bytes restores and recoveries wrote on this host, counted as they go.", m.restored.Load())

	p.Family("lifeboat_agent_heartbeats_sent_total", "counter", "Heartbeats sent to the server, by result (ok, error).")
	p.Sample("lifeboat_agent_heartbeats_sent_total", m.heartbeatsFailed.Load(), "result", "error")
	p.Sample("lifeboat_agent_heartbeats_sent_total", m.heartbeatsOK.Load(), "result", "ok")
	last := 0.0
	if ns := m.lastHeartbeat.Load(); ns != 0 {
		last = float64(ns) / 1e9
	}
	p.Single("lifeboat_agent_last_heartbeat_success_timestamp_seconds", "gauge", "When the server last answered a heartbeat (Unix time; 0: never).", last)
	p.Single("lifeboat_agent_vms", "gauge", "VMs in the last inventory.", m.vms.Load())
}

// MetricsHandler serves GET /metrics.
func (a *Agent) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		var p promtext.Writer
		a.metrics.write(&p, a.cfg.Version, a.cfg.Driver.Name())
		p.Write(w)
	})
	return mux
}

// ServeMetrics serves MetricsHandler on ln, in plain HTTP, until ctx
// ends. The metrics hold no secrets (counts, the version, the driver),
// but the listener has no authentication: bind it to localhost or a
// management network.
func (a *Agent) ServeMetrics(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: a.MetricsHandler(), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		<-done
		return nil
	}
	return fmt.Errorf("metrics listener %s: %w", ln.Addr(), err)
}
