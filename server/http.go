package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/repo/storage"
	"lifeboat/repo/storage/local"
	"lifeboat/repo/storage/remote"
)

type ctxKey int

const nodeKey ctxKey = 1

// Handler is the whole API.
func (s *Server) Handler() http.Handler {
	mux, _ := s.routes()
	return mux
}

// AdminRoutes lists the patterns ("METHOD /path/{param}") of every
// endpoint that needs the admin token, so tests can check each one refuses
// a caller without it, including endpoints added later.
func (s *Server) AdminRoutes() []string {
	_, admins := s.routes()
	return admins
}

func (s *Server) routes() (http.Handler, []string) {
	mux := http.NewServeMux()
	p := api.Prefix
	var admins []string
	open := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, h) }
	admin := func(pattern string, h http.HandlerFunc) {
		admins = append(admins, pattern)
		mux.Handle(pattern, s.requireAdmin(h))
	}
	agent := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, s.requireAgent(h)) }

	open("GET "+p+"/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	open("GET "+p+"/ca.pem", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(s.pki.caPEM)
	})
	open("POST "+p+"/enroll", s.handleEnroll)

	admin("GET "+p+"/status", s.handleStatus)
	admin("POST "+p+"/enrollment-tokens", s.handleCreateToken)
	admin("GET "+p+"/enrollment-tokens", s.handleListTokens)
	admin("GET "+p+"/agents", s.handleListAgents)
	admin("GET "+p+"/agents/{node}", s.handleGetAgent)
	admin("GET "+p+"/agents/{node}/inventory", s.handleAgentInventory)
	admin("POST "+p+"/agents/{node}/revoke", s.handleRevokeAgent)
	admin("GET "+p+"/clusters", s.handleListClusters)
	admin("POST "+p+"/clusters", s.handleCreateCluster)
	admin("GET "+p+"/clusters/{cluster}/volumes", s.handleListVolumes)
	admin("POST "+p+"/clusters/{cluster}/volumes", s.handleAddVolume)
	admin("GET "+p+"/vms", s.handleListVMs)
	admin("GET "+p+"/groups", s.handleListGroups)
	admin("POST "+p+"/groups", s.handleCreateGroup)
	admin("GET "+p+"/groups/{group}", s.handleGetGroup)
	admin("POST "+p+"/groups/{group}/members", s.handleAddMembers)
	admin("PATCH "+p+"/groups/{group}", s.handleUpdateGroup)
	admin("DELETE "+p+"/groups/{group}/members/{vm}", s.handleRemoveMember)
	admin("POST "+p+"/groups/{group}/run", s.handleRunGroup)
	admin("POST "+p+"/protect", s.handleProtect)
	admin("GET "+p+"/jobs", s.handleListJobs)
	admin("POST "+p+"/jobs", s.handleCreateJob)
	admin("GET "+p+"/jobs/{id}", s.handleGetJob)
	admin("POST "+p+"/jobs/{id}/cancel", s.handleCancelJob)
	admin("POST "+p+"/backups", s.handleBackupNow)
	admin("POST "+p+"/restores", s.handleRestore)
	admin("POST "+p+"/recoveries/preflight", s.handlePreflight)
	admin("POST "+p+"/recoveries", s.handleRecover)
	admin("GET "+p+"/points/{id}/items", s.handleItems)
	admin("GET "+p+"/points/{id}/items/download", s.handleItemsDownload)
	admin("GET "+p+"/points", s.handleListPoints)
	admin("GET "+p+"/point-names", s.handlePointNames)
	admin("GET "+p+"/points/{id}", s.handleGetPoint)
	admin("POST "+p+"/points/{id}/verify-boot", s.handleVerifyBoot)
	admin("GET "+p+"/alerts", s.handleListAlerts)
	admin("POST "+p+"/alerts/{id}/ack", s.handleAckAlert)
	admin("GET "+p+"/tapes", s.handleListTapes)
	admin("GET /metrics", s.handleMetrics)

	agent("POST "+p+"/agent/heartbeat", s.handleHeartbeat)
	agent("POST "+p+"/agent/inventory", s.handleInventory)
	agent("GET "+p+"/agent/jobs/next", s.handleNextJob)
	agent("POST "+p+"/agent/jobs/{id}/progress", s.handleProgress)
	agent("POST "+p+"/agent/jobs/{id}/log", s.handleLog)
	agent("POST "+p+"/agent/jobs/{id}/finish", s.handleFinish)
	agent("POST "+p+"/agent/jobs/{id}/defer", s.handleDefer)
	repoPrefix := p + "/agent/repo"
	rh := remote.NewHandler(remote.HandlerOptions{
		Prefix:    repoPrefix,
		Backend:   s.repo.Backend(),
		Stager:    func() (storage.Backend, error) { return local.Open(s.repoDir) },
		MaxObject: int64(s.repo.Config().ChunkSize) + 1<<20,
		Policy:    remote.AgentPolicy(),
		Log:       s.log,
		OnWrite:   s.metrics.repoWrite,
	})
	mux.Handle(repoPrefix+"/", s.requireAgent(rh.ServeHTTP))

	mux.Handle("/", s.consoleHandler(mux, func(w http.ResponseWriter, r *http.Request) {
		fail(w, http.StatusNotFound, "not_found", fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path))
	}))
	return s.recoverer(s.logRequests(mux)), admins
}

// ---- middleware --------------------------------------------------------------

type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.status, w.wrote = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// recoverer turns a panic into a logged 500; the server stays up.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic in handler", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				s.metrics.panics.Add(1)
				if !sw.wrote {
					fail(sw, http.StatusInternalServerError, "internal", "internal error")
				}
			}
		}()
		next.ServeHTTP(sw, r)
	})
}

func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw, ok := w.(*statusWriter)
		if !ok {
			sw = &statusWriter{ResponseWriter: w}
		}
		next.ServeHTTP(sw, r)
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		s.metrics.request(status)
		level := slog.LevelInfo
		if strings.HasPrefix(r.URL.Path, api.Prefix+"/agent/") && status < 400 {
			level = slog.LevelDebug // the data path is chatty
		}
		if status >= 500 {
			level = slog.LevelError
		}
		s.log.Log(r.Context(), level, "request", "method", r.Method, "path", r.URL.Path, "status", status,
			"ms", time.Since(start).Milliseconds(), "remote", r.RemoteAddr)
	})
}

func (s *Server) requireAdmin(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok || !s.checkAdmin(strings.TrimSpace(tok)) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="lifeboat"`)
			fail(w, http.StatusUnauthorized, "unauthorized", "an admin token is required: Authorization: Bearer <token>")
			return
		}
		next(w, r)
	})
}

// requireAgent admits a verified client certificate whose fingerprint
// belongs to an enrolled node.
func (s *Server) requireAgent(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.PeerCertificates) == 0 {
			fail(w, http.StatusUnauthorized, "unauthorized", "agent calls need the client certificate issued at enrollment")
			return
		}
		fp := api.Fingerprint(r.TLS.PeerCertificates[0].Raw)
		n, err := s.nodeByFingerprint(r.Context(), fp)
		if errors.Is(err, catalog.ErrNotFound) {
			fail(w, http.StatusForbidden, "unknown_agent", "this certificate belongs to no enrolled agent")
			return
		}
		if err != nil {
			s.internal(w, r, err)
			return
		}
		if n.State != catalog.NodeEnrolled {
			fail(w, http.StatusForbidden, "revoked", fmt.Sprintf("agent %s is %s", n.Name, n.State))
			return
		}
		next(w, r.WithContext(context.WithValue(r.Context(), nodeKey, n)))
	})
}

func (s *Server) nodeByFingerprint(ctx context.Context, fp string) (catalog.Node, error) {
	s.nodeMu.Lock()
	e, ok := s.nodeCache[fp]
	s.nodeMu.Unlock()
	if ok && time.Now().Before(e.expires) {
		return e.node, nil
	}
	n, err := s.cat.NodeByFingerprint(ctx, fp)
	if err != nil {
		return n, err
	}
	s.nodeMu.Lock()
	if len(s.nodeCache) > 10000 {
		clear(s.nodeCache)
	}
	s.nodeCache[fp] = nodeEntry{node: n, expires: time.Now().Add(2 * time.Second)}
	s.nodeMu.Unlock()
	return n, nil
}

func (s *Server) forgetNodes() {
	s.nodeMu.Lock()
	clear(s.nodeCache)
	s.nodeMu.Unlock()
}

func nodeOf(r *http.Request) catalog.Node {
	n, _ := r.Context().Value(nodeKey).(catalog.Node)
	return n
}

// ---- helpers -------------------------------------------------------------------

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, api.Error{Error: msg, Code: code})
}

func (s *Server) internal(w http.ResponseWriter, r *http.Request, err error) {
	s.log.Error("internal error", "method", r.Method, "path", r.URL.Path, "err", err)
	fail(w, http.StatusInternalServerError, "internal", "internal error")
}

// catalogError answers a catalog error with the status its sentinel
// means, or 500.
func (s *Server) catalogError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, catalog.ErrNotFound):
		fail(w, http.StatusNotFound, "not_found", trimCatalog(err))
	case errors.Is(err, catalog.ErrConflict):
		fail(w, http.StatusConflict, "conflict", trimCatalog(err))
	case errors.Is(err, catalog.ErrInvalid):
		fail(w, http.StatusBadRequest, "bad_request", trimCatalog(err))
	case errors.Is(err, catalog.ErrExpired):
		fail(w, http.StatusForbidden, "expired", trimCatalog(err))
	case errors.Is(err, context.Canceled):
		fail(w, 499, "canceled", "request canceled")
	default:
		s.internal(w, r, err)
	}
}

// trimCatalog keeps a catalog message readable without driver details.
func trimCatalog(err error) string {
	msg := strings.TrimPrefix(err.Error(), "catalog: ")
	if i := strings.Index(msg, ": constraint failed"); i > 0 {
		msg = msg[:i]
	}
	if i := strings.Index(msg, ": UNIQUE constraint"); i > 0 {
		msg = msg[:i]
	}
	if i := strings.Index(msg, ": ERROR: "); i > 0 {
		msg = msg[:i]
	}
	return msg
}

// decode reads one JSON object of at most api.MaxBody bytes with no
// unknown fields. On failure it has answered.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		fail(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "send application/json")
		return false
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, api.MaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mb *http.MaxBytesError
		switch {
		case errors.As(err, &mb):
			fail(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("request body larger than %d bytes", api.MaxBody))
		case errors.Is(err, io.EOF):
			fail(w, http.StatusBadRequest, "bad_request", "empty body: a JSON object is required")
		default:
			fail(w, http.StatusBadRequest, "bad_request", "malformed JSON: "+err.Error())
		}
		return false
	}
	if dec.More() {
		fail(w, http.StatusBadRequest, "bad_request", "malformed JSON: data after the object")
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		fail(w, http.StatusBadRequest, "bad_request", "malformed JSON: data after the object")
		return false
	}
	return true
}

func pathID(w http.ResponseWriter, r *http.Request, name string) (int64, bool) {
	v := r.PathValue(name)
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id <= 0 {
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("%s %q is not a positive integer", name, v))
		return 0, false
	}
	return id, true
}

func queryInt(w http.ResponseWriter, r *http.Request, name string, def, max int) (int, bool) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > max {
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("%s must be an integer from 0 to %d", name, max))
		return 0, false
	}
	return n, true
}
