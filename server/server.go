// Package server is `lifeboat server`: the catalog, the repository, an
// HTTPS JSON API for operators (admin token) and agents (mutual TLS after
// enrollment), the scheduler that turns protection groups into backup
// jobs, and the server's own jobs (prune, verify, gc).
//
// Its data folder holds everything it needs on embedded defaults:
//
//	catalog.db      the SQLite catalog (unless --db names PostgreSQL)
//	repo/           the repository (unless server.json names another)
//	server.json     settings remembered between starts (repository path)
//	tls/            ca.pem, ca-key.pem, server.pem, server-key.pem
//	admin-token     the operators' bearer token (0600)
package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/repo"
	"lifeboat/repo/storage"
	"lifeboat/repo/storage/local"
)

// Config is how a server starts.
type Config struct {
	// DataDir holds the catalog, the repository, TLS material and the
	// admin token.
	DataDir string
	// DB is a catalog DSN: "" for DataDir/catalog.db, or postgres://….
	DB string
	// RepoDir is the repository folder: "" for what server.json
	// remembers, else DataDir/repo. Initialised when it has no config.
	RepoDir string
	// Password opens (or, on first start, encrypts) the repository.
	Password string
	// AdoptRepo lists every point of the repository in the catalog again.
	AdoptRepo bool
	// Names go into the server certificate besides localhost, 127.0.0.1,
	// ::1 and the host name.
	Names []string

	// PerVolume and PerNode cap backups at once per shared volume and per
	// node (default 1 each; negative: no limit); MaxRecoveries caps
	// recoveries at once (default 8); MaxVerifyBoots caps verify-boot
	// jobs at once (default 2: each boots a throwaway guest, under TCG a
	// core's worth of work).
	PerVolume, PerNode, MaxRecoveries, MaxVerifyBoots int
	// Tick is how often the scheduler runs (default 10s).
	Tick time.Duration
	// ManualSchedule leaves scheduling rounds to the caller
	// (Scheduler().Round): tests step the clock and count jobs.
	ManualSchedule bool
	// Clock is the scheduler's clock (time.Now by default); tests and
	// demos speed it up.
	Clock func() time.Time
	// HeartbeatInterval is what agents are told (default 30s).
	HeartbeatInterval time.Duration
	// StaleAfter fails a running job not heard of for this long (10m).
	StaleAfter time.Duration

	Version string
	Log     *slog.Logger
}

// Server is a running server's state.
type Server struct {
	cfg     Config
	log     *slog.Logger
	cat     *catalog.Catalog
	repo    *repo.Repository
	repoDir string
	pki     *pki
	// tokenHash is SHA-256 of the admin token; compared in constant time.
	tokenHash [32]byte
	started   time.Time

	// FirstStart is set when this start made the data folder; AdminToken
	// then holds the new token, to be shown once.
	FirstStart bool
	AdminToken string
	// Adopted counts points listed again by AdoptRepo.
	Adopted, Unlisted int

	notify  *notifier
	metrics *metrics
	sched   *Scheduler

	nodeMu    sync.Mutex
	nodeCache map[string]nodeEntry
	invMu     sync.Mutex
	inventory map[int64]inventoryEntry
}

type nodeEntry struct {
	node    catalog.Node
	expires time.Time
}

type inventoryEntry struct {
	Time time.Time         `json:"time"`
	VMs  []api.InventoryVM `json:"vms"`
}

// settings is server.json.
type settings struct {
	Repo string `json:"repo"`
}

// Open prepares the data folder, the catalog and the repository.
func Open(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("server: no data folder")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.PerVolume == 0 {
		cfg.PerVolume = 1
	}
	if cfg.PerNode == 0 {
		cfg.PerNode = 1
	}
	if cfg.MaxRecoveries == 0 {
		cfg.MaxRecoveries = 8
	}
	if cfg.MaxVerifyBoots == 0 {
		cfg.MaxVerifyBoots = 2
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 10 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 30 * time.Second
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = 10 * time.Minute
	}
	data, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	cfg.DataDir = data
	s := &Server{cfg: cfg, log: cfg.Log, started: time.Now(), notify: newNotifier(), metrics: newMetrics(),
		nodeCache: map[string]nodeEntry{}, inventory: map[int64]inventoryEntry{}}
	if _, err := os.Stat(filepath.Join(data, "admin-token")); errors.Is(err, os.ErrNotExist) {
		s.FirstStart = true
	}
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, fmt.Errorf("server: data folder: %w", err)
	}

	host, _ := os.Hostname()
	names := []string{"localhost", "127.0.0.1", "::1"}
	if host != "" && host != "localhost" {
		names = append(names, host)
	}
	names = append(names, cfg.Names...)
	if s.pki, err = loadPKI(filepath.Join(data, "tls"), names); err != nil {
		return nil, fmt.Errorf("server: TLS: %w", err)
	}
	if err := s.loadToken(); err != nil {
		return nil, err
	}

	// Settings: where the repository is.
	var st settings
	sfile := filepath.Join(data, "server.json")
	if b, err := os.ReadFile(sfile); err == nil {
		if err := json.Unmarshal(b, &st); err != nil {
			return nil, fmt.Errorf("server: %s: %w", sfile, err)
		}
	}
	switch {
	case cfg.RepoDir != "":
		st.Repo, err = filepath.Abs(cfg.RepoDir)
		if err != nil {
			return nil, err
		}
	case st.Repo == "":
		st.Repo = filepath.Join(data, "repo")
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := writeFileAtomic(sfile, append(b, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s.repoDir = st.Repo
	if s.repo, err = openRepo(ctx, st.Repo, cfg.Password); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}

	dsn := cfg.DB
	if dsn == "" {
		dsn = filepath.Join(data, "catalog.db")
	}
	if s.cat, err = catalog.Open(ctx, dsn); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if cfg.AdoptRepo {
		if err := s.adopt(ctx); err != nil {
			s.cat.Close()
			return nil, err
		}
	}
	s.sched = newScheduler(s)
	return s, nil
}

func openRepo(ctx context.Context, dir, password string) (*repo.Repository, error) {
	b, err := local.Open(dir)
	if err != nil {
		return nil, err
	}
	if _, err := b.Stat(ctx, "config"); errors.Is(err, storage.ErrNotFound) {
		return repo.Init(ctx, b, repo.InitOptions{Password: password})
	} else if err != nil {
		return nil, err
	}
	return repo.Open(ctx, b, password)
}

// adopt lists every point of the repository in the catalog again.
func (s *Server) adopt(ctx context.Context) error {
	pts, errs, err := s.repo.Points(ctx)
	if err != nil {
		return fmt.Errorf("server: adopt repository: %w", err)
	}
	for id, e := range errs {
		s.log.Warn("adopt: point does not load", "point", id, "err", e)
	}
	list := make([]repo.Point, len(pts))
	for i, p := range pts {
		list[i] = *p
	}
	added, removed, err := s.cat.RebuildPoints(ctx, list)
	if err != nil {
		return fmt.Errorf("server: adopt repository: %w", err)
	}
	s.Adopted, s.Unlisted = added, removed
	verified := s.adoptVerdicts(ctx, list)
	s.log.Info("adopted repository", "repo", s.repoDir, "points", len(pts), "added", added, "removed", removed, "verified", verified)
	return nil
}

// loadToken reads the admin token, making one on first start.
func (s *Server) loadToken() error {
	f := filepath.Join(s.cfg.DataDir, "admin-token")
	b, err := os.ReadFile(f)
	if errors.Is(err, os.ErrNotExist) {
		var r [32]byte
		if _, err := rand.Read(r[:]); err != nil {
			return err
		}
		tok := "lba_" + base64.RawURLEncoding.EncodeToString(r[:])
		if err := writeFileAtomic(f, []byte(tok+"\n"), 0o600); err != nil {
			return fmt.Errorf("server: admin token: %w", err)
		}
		s.AdminToken = tok
		b = []byte(tok)
	} else if err != nil {
		return fmt.Errorf("server: admin token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return fmt.Errorf("server: admin token in %s is too short", f)
	}
	s.tokenHash = sha256.Sum256([]byte(tok))
	return nil
}

// checkAdmin compares a bearer token with the admin token in constant
// time (hashes have equal length whatever was sent).
func (s *Server) checkAdmin(tok string) bool {
	h := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(h[:], s.tokenHash[:]) == 1
}

// Catalog is the server's catalog (tests).
func (s *Server) Catalog() *catalog.Catalog { return s.cat }

// Repository is the server's repository.
func (s *Server) Repository() *repo.Repository { return s.repo }

// RepoDir is where the repository is.
func (s *Server) RepoDir() string { return s.repoDir }

// CAFingerprint is what agents pin.
func (s *Server) CAFingerprint() string { return s.pki.CAFingerprint() }

// CAPEM is the CA certificate.
func (s *Server) CAPEM() []byte { return s.pki.caPEM }

// Scheduler is the server's scheduler (tests drive it).
func (s *Server) Scheduler() *Scheduler { return s.sched }

// TLSConfig serves the API: the server's certificate chain, and client
// certificates verified against the CA when given (enrollment and admin
// calls come without one).
func (s *Server) TLSConfig() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(s.pki.caCert)
	return &tls.Config{
		Certificates: []tls.Certificate{s.pki.server},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2", "http/1.1"},
	}
}

// Serve answers on ln (TLS is added here) and runs the scheduler and the
// server's own jobs until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	tln := tls.NewListener(ln, s.TLSConfig())
	var wg sync.WaitGroup
	bg, stop := context.WithCancel(ctx)
	defer stop()
	wg.Add(4)
	go func() {
		defer wg.Done()
		if !s.cfg.ManualSchedule {
			s.sched.Run(bg)
		}
	}()
	go func() { defer wg.Done(); s.runServerJobs(bg) }()
	go func() { defer wg.Done(); s.housekeeping(bg) }()
	go func() { defer wg.Done(); s.watchNodes(bg) }()
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(tln) }()
	var err error
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		hs.Shutdown(sctx)
		cancel()
	case err = <-errc:
	}
	stop()
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Close closes the catalog.
func (s *Server) Close() error { return s.cat.Close() }

// housekeeping fails jobs whose agent went silent and refreshes gauges.
func (s *Server) housekeeping(ctx context.Context) {
	t := time.NewTicker(min(s.cfg.StaleAfter/4, 30*time.Second))
	defer t.Stop()
	s.metrics.refreshRepoSize(ctx, s)
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := s.cat.FailStaleJobs(ctx, time.Now().Add(-s.cfg.StaleAfter), "no word from the agent for "+s.cfg.StaleAfter.String())
		if err != nil {
			s.log.Error("fail stale jobs", "err", err)
		} else if n > 0 {
			s.log.Warn("failed stale jobs", "count", n)
			s.cat.RaiseAlert(ctx, catalog.Alert{Kind: "job-stale", Severity: catalog.SeverityWarning, Subject: "server",
				Message: fmt.Sprintf("%d running jobs failed: their agents went silent", n)})
			s.notify.broadcast()
		}
		if time.Since(last) > time.Minute {
			s.metrics.refreshRepoSize(ctx, s)
			last = time.Now()
		}
	}
}

// notifier wakes long polls when something changed.
type notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

func newNotifier() *notifier { return &notifier{ch: make(chan struct{})} }

func (n *notifier) wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ch
}

func (n *notifier) broadcast() {
	n.mu.Lock()
	close(n.ch)
	n.ch = make(chan struct{})
	n.mu.Unlock()
}
