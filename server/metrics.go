package server

import (
	"context"
	"maps"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"lifeboat/internal/promtext"
	"lifeboat/repo"
	"lifeboat/repo/storage"
)

// metrics are counted in memory and written in Prometheus' text
// exposition format (version 0.0.4) by internal/promtext, which the
// agent's metrics share.
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
	var p promtext.Writer
	st, err := s.cat.Stats(r.Context())
	if err != nil {
		s.internal(w, r, err)
		return
	}
	p.Family("lifeboat_jobs", "gauge", "Jobs in the catalog by state.")
	for _, k := range slices.Sorted(maps.Keys(st.Jobs)) {
		p.Sample("lifeboat_jobs", st.Jobs[k], "state", k)
	}
	m.mu.Lock()
	p.Family("lifeboat_jobs_finished_total", "counter", "Jobs finished since the server started, by kind and state.")
	keys := slices.SortedFunc(maps.Keys(m.finished), func(a, b [2]string) int { return strings.Compare(a[0]+a[1], b[0]+b[1]) })
	for _, k := range keys {
		p.Sample("lifeboat_jobs_finished_total", m.finished[k], "kind", k[0], "state", k[1])
	}
	p.Family("lifeboat_job_duration_seconds", "summary", "Run time of finished jobs, by kind.")
	for _, k := range slices.Sorted(maps.Keys(m.durSum)) {
		p.Sample("lifeboat_job_duration_seconds_sum", m.durSum[k], "kind", k)
		p.Sample("lifeboat_job_duration_seconds_count", m.durCount[k], "kind", k)
	}
	p.Family("lifeboat_http_responses_total", "counter", "API responses by status code.")
	for _, c := range slices.Sorted(maps.Keys(m.responses)) {
		p.Sample("lifeboat_http_responses_total", m.responses[c], "code", strconv.Itoa(c))
	}
	m.mu.Unlock()
	p.Single("lifeboat_backup_bytes_read_total", "counter", "Bytes read from sources by backups.", m.bytesRead.Load())
	p.Single("lifeboat_backup_bytes_reused_total", "counter", "Bytes taken unread from previous points.", m.bytesReused.Load())
	p.Single("lifeboat_backup_bytes_written_total", "counter", "Bytes of new chunks stored by backups (compressed, encrypted).", m.bytesStored.Load())
	p.Single("lifeboat_backup_chunks_total", "counter", "Chunks referenced by backups.", m.chunks.Load())
	p.Single("lifeboat_backup_chunks_deduplicated_total", "counter", "Chunks the repository already held.", m.chunksDedup.Load())
	p.Single("lifeboat_points_recorded_total", "counter", "Points recorded since the server started.", m.points.Load())
	p.Single("lifeboat_repo_objects_written_total", "counter", "Objects agents wrote to the repository.", m.objectsWritten.Load())
	p.Single("lifeboat_repo_bytes_written_total", "counter", "Bytes agents wrote to the repository.", m.bytesWritten.Load())
	p.Single("lifeboat_repository_size_bytes", "gauge", "Bytes in the repository (listed at most a minute ago).", m.repoBytes.Load())
	p.Single("lifeboat_repository_objects", "gauge", "Objects in the repository.", m.repoObjects.Load())
	p.Single("lifeboat_points", "gauge", "Points in the catalog.", st.Points)
	p.Single("lifeboat_agent_heartbeats_total", "counter", "Heartbeats received from agents.", m.heartbeats.Load())
	p.Single("lifeboat_agents", "gauge", "Nodes known.", st.Nodes)
	p.Single("lifeboat_agents_enrolled", "gauge", "Nodes enrolled (not revoked).", st.NodesEnrolled)
	p.Single("lifeboat_vms", "gauge", "VMs known.", st.VMs)
	p.Single("lifeboat_alerts_open", "gauge", "Unacknowledged alerts.", st.AlertsOpen)
	p.Single("lifeboat_handler_panics_total", "counter", "Requests that panicked (answered 500).", m.panics.Load())
	p.Family("lifeboat_build_info", "gauge", "The server's version (always 1).")
	p.Sample("lifeboat_build_info", 1, "version", s.cfg.Version, "goversion", runtime.Version())
	p.Write(w)
}
