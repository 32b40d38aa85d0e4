package agent

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"lifeboat/catalog"
	"lifeboat/internal/promtext"
	"lifeboat/repo"
	"lifeboat/repo/storage/remote"
)

// The agent's exposition parses, starts with the kinds at 0, and follows
// a job's life: started, running, progress, point stats, finished.
func TestAgentMetrics(t *testing.T) {
	a := &Agent{cfg: Config{Version: "1.2.3", Driver: &Folders{}}, metrics: newMetrics()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- a.ServeMetrics(ctx, ln) }()
	scrape := func() promtext.Samples {
		t.Helper()
		resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		s, err := promtext.Parse(b)
		if err != nil {
			t.Fatalf("%v\n%s", err, b)
		}
		return s
	}
	want := func(s promtext.Samples, v float64, name string, labels ...string) {
		t.Helper()
		if got, ok := s.Get(name, labels...); !ok || got != v {
			t.Errorf("%s: %v (%v), want %v", promtext.Key(name, labels...), got, ok, v)
		}
	}
	s := scrape()
	want(s, 0, "lifeboat_agent_jobs_started_total", "kind", "backup")
	want(s, 0, "lifeboat_agent_jobs_running", "kind", "recovery")
	want(s, 0, "lifeboat_agent_last_heartbeat_success_timestamp_seconds")
	if s.Sum("lifeboat_agent_build_info") != 1 {
		t.Errorf("build info: %v", s)
	}

	m := a.metrics
	m.heartbeat(true, time.Unix(1700000000, 0))
	m.heartbeat(false, time.Now())
	m.jobStarted(catalog.KindBackup)
	done := m.sending(remote.New(remote.Options{Base: "https://127.0.0.1:1/repo", HTTP: http.DefaultClient}))
	m.progressed(catalog.KindBackup, 4096)
	m.progressed(catalog.KindBackup, -10) // a restarted count never lowers a counter
	s = scrape()
	want(s, 1, "lifeboat_agent_jobs_running", "kind", "backup")
	want(s, 4096, "lifeboat_agent_backup_bytes_processed_total")
	want(s, 1700000000, "lifeboat_agent_last_heartbeat_success_timestamp_seconds")
	want(s, 1, "lifeboat_agent_heartbeats_sent_total", "result", "error")
	done()
	done() // twice is harmless
	m.pointStats(repo.Stats{BytesRead: 100, BytesReused: 50, Chunks: 10, NewChunks: 4, NewBytes: 60})
	m.jobFinished(catalog.KindBackup, catalog.JobSucceeded, 2*time.Second)
	m.jobStarted(catalog.KindRecovery)
	m.progressed(catalog.KindRecovery, 7)
	m.jobFinished(catalog.KindRecovery, catalog.JobFailed, time.Second)
	s = scrape()
	want(s, 0, "lifeboat_agent_jobs_running", "kind", "backup")
	want(s, 1, "lifeboat_agent_jobs_finished_total", "kind", "backup", "result", "succeeded")
	want(s, 1, "lifeboat_agent_jobs_finished_total", "kind", "recovery", "result", "failed")
	want(s, 2, "lifeboat_agent_job_duration_seconds_sum", "kind", "backup")
	want(s, 100, "lifeboat_agent_backup_bytes_read_total")
	want(s, 50, "lifeboat_agent_backup_bytes_reused_total")
	want(s, 6, "lifeboat_agent_backup_chunks_deduplicated_total")
	want(s, 7, "lifeboat_agent_restore_bytes_written_total")
	want(s, 0, "lifeboat_agent_repo_bytes_sent_total")

	cancel()
	if err := <-served; err != nil {
		t.Fatalf("ServeMetrics: %v", err)
	}
}
