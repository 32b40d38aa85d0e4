package server

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"lifeboat/repo"
	"lifeboat/repo/storage"
)

// metrics are counted in memory and written in Prometheus' text
// exposition format (version 0.0.4) by hand.
type metrics struct {
	heartbeats     atomic.Int64
	bytesRead      atomic.Int64
	bytesReused    atomic.Int64
	bytesStored    atomic.Int64
	chunks         atomic.Int64
	chunksDedup    atomic.Int64
	points         atomic.Int64
	objectsWritten atomic.Int64
	bytesWritten   atomic.Int64
	panics         atomic.Int64
	repoBytes      atomic.Int64
	repoObjects    atomic.Int64

	mu        sync.Mutex
	finished  map[[2]string]int64 // kind, state
	durSum    map[string]float64  // kind
	durCount  map[string]int64
	responses map[int]int64
}

func newMetrics() *metrics {
	return &metrics{finished: map[[2]string]int64{}, durSum: map[string]float64{}, durCount: map[string]int64{}, responses: map[int]int64{}}
}

func (m *metrics) repoWrite(objects int, bytes int64) {
	m.objectsWritten.Add(int64(objects))
	m.bytesWritten.Add(bytes)
}

func (m *metrics) request(status int) {
	m.mu.Lock()
	m.responses[status]++
	m.mu.Unlock()
}

func (m *metrics) jobDone(kind, state string, d time.Duration) {
	m.mu.Lock()
	m.finished[[2]string{kind, state}]++
	if d > 0 {
		m.durSum[kind] += d.Seconds()
		m.durCount[kind]++
	}
	m.mu.Unlock()
}

func (m *metrics) backupDone(p *repo.Point) {
	var st repo.Stats
	for _, f := range p.Files {
		st.Add(f.Stats)
	}
	m.bytesRead.Add(st.BytesRead)
	m.bytesReused.Add(st.BytesReused)
	m.bytesStored.Add(st.NewBytes)
	m.chunks.Add(st.Chunks)
	m.chunksDedup.Add(st.Chunks - st.NewChunks)
	m.points.Add(1)
}

// refreshRepoSize lists the repository (a minute apart at most).
func (m *metrics) refreshRepoSize(ctx context.Context, s *Server) {
	var n, size int64
	err := s.repo.Backend().List(ctx, "", func(o storage.ObjectInfo) error {
		n++
		size += o.Size
		return nil
	})
	if err == nil {
		m.repoObjects.Store(n)
		m.repoBytes.Store(size)
	}
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	m := s.metrics
	var b strings.Builder
	metric := func(name, typ, help string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	one := func(name, typ, help string, v any) {
		metric(name, typ, help)
		fmt.Fprintf(&b, "%s %v\n", name, v)
	}
	st, err := s.cat.Stats(r.Context())
	if err != nil {
		s.internal(w, r, err)
		return
	}
	metric("lifeboat_jobs", "gauge", "Jobs in the catalog by state.")
	states := make([]string, 0, len(st.Jobs))
	for k := range st.Jobs {
		states = append(states, k)
	}
	sort.Strings(states)
	for _, k := range states {
		fmt.Fprintf(&b, "lifeboat_jobs{state=%q} %d\n", k, st.Jobs[k])
	}
	m.mu.Lock()
	metric("lifeboat_jobs_finished_total", "counter", "Jobs finished since the server started, by kind and state.")
	keys := make([][2]string, 0, len(m.finished))
	for k := range m.finished {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+keys[i][1] < keys[j][0]+keys[j][1] })
	for _, k := range keys {
		fmt.Fprintf(&b, "lifeboat_jobs_finished_total{kind=%q,state=%q} %d\n", k[0], k[1], m.finished[k])
	}
	metric("lifeboat_job_duration_seconds", "summary", "Run time of finished jobs, by kind.")
	kinds := make([]string, 0, len(m.durSum))
	for k := range m.durSum {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(&b, "lifeboat_job_duration_seconds_sum{kind=%q} %g\n", k, m.durSum[k])
		fmt.Fprintf(&b, "lifeboat_job_duration_seconds_count{kind=%q} %d\n", k, m.durCount[k])
	}
	metric("lifeboat_http_responses_total", "counter", "API responses by status code.")
	codes := make([]int, 0, len(m.responses))
	for c := range m.responses {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	for _, c := range codes {
		fmt.Fprintf(&b, "lifeboat_http_responses_total{code=\"%d\"} %d\n", c, m.responses[c])
	}
	m.mu.Unlock()
	one("lifeboat_backup_bytes_read_total", "counter", "Bytes read from sources by backups.", m.bytesRead.Load())
	one("lifeboat_backup_bytes_reused_total", "counter", "Bytes taken unread from previous points.", m.bytesReused.Load())
	one("lifeboat_backup_bytes_written_total", "counter", "Bytes of new chunks stored by backups (compressed, encrypted).", m.bytesStored.Load())
	one("lifeboat_backup_chunks_total", "counter", "Chunks referenced by backups.", m.chunks.Load())
	one("lifeboat_backup_chunks_deduplicated_total", "counter", "Chunks the repository already held.", m.chunksDedup.Load())
	one("lifeboat_points_recorded_total", "counter", "Points recorded since the server started.", m.points.Load())
	one("lifeboat_repo_objects_written_total", "counter", "Objects agents wrote to the repository.", m.objectsWritten.Load())
	one("lifeboat_repo_bytes_written_total", "counter", "Bytes agents wrote to the repository.", m.bytesWritten.Load())
	one("lifeboat_repository_size_bytes", "gauge", "Bytes in the repository (listed at most a minute ago).", m.repoBytes.Load())
	one("lifeboat_repository_objects", "gauge", "Objects in the repository.", m.repoObjects.Load())
	one("lifeboat_points", "gauge", "Points in the catalog.", st.Points)
	one("lifeboat_agent_heartbeats_total", "counter", "Heartbeats received from agents.", m.heartbeats.Load())
	one("lifeboat_agents", "gauge", "Nodes known.", st.Nodes)
	one("lifeboat_agents_enrolled", "gauge", "Nodes enrolled (not revoked).", st.NodesEnrolled)
	one("lifeboat_vms", "gauge", "VMs known.", st.VMs)
	one("lifeboat_alerts_open", "gauge", "Unacknowledged alerts.", st.AlertsOpen)
	one("lifeboat_handler_panics_total", "counter", "Requests that panicked (answered 500).", m.panics.Load())
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Write([]byte(b.String()))
}
