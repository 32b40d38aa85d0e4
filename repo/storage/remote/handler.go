package remote

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"lifeboat/repo/storage"
)

// Policy says what callers may do to which keys. A nil func allows all.
type Policy struct {
	Read   func(key string) bool
	Write  func(key string) bool
	Delete func(key string) bool
	List   func(prefix string) bool
}

// AgentPolicy is what a server lets its agents do: read everything, write
// chunks, indexes, manifests, locks and boot verdicts (write-once, so
// nothing is ever replaced), delete only locks, and list only manifests
// and locks.
func AgentPolicy() Policy {
	under := func(prefixes ...string) func(string) bool {
		return func(k string) bool {
			for _, p := range prefixes {
				if strings.HasPrefix(k, p) {
					return true
				}
			}
			return false
		}
	}
	return Policy{
		Write:  under("chunks/", "indexes/", "points/", "locks/", "verify/"),
		Delete: under("locks/"),
		List:   func(p string) bool { return p == "points/" || p == "locks/" },
	}
}

// HandlerOptions configure the server side.
type HandlerOptions struct {
	// Prefix is the path the protocol lives under ("/api/v1/agent/repo").
	Prefix string
	// Backend holds the objects.
	Backend storage.Backend
	// Stager, if set, makes a backend whose Stage/Flush cover exactly one
	// batch request (a fresh local.Backend on the same folder), so a
	// batch is durable when its request answers even while other batches
	// flush. Without it a batch is written with Put.
	Stager func() (storage.Backend, error)
	// MaxObject bounds one object (PUT body or batch entry); MaxBatch a
	// batch body. Defaults: 80 MiB and 256 MiB.
	MaxObject int64
	MaxBatch  int64
	Policy    Policy
	Log       *slog.Logger
	// OnWrite, if set, is told of bytes stored by PUT and batch.
	OnWrite func(objects int, bytes int64)
}

type handler struct {
	o   HandlerOptions
	mux *http.ServeMux
}

// NewHandler serves the protocol over o.Backend.
func NewHandler(o HandlerOptions) http.Handler {
	if o.MaxObject <= 0 {
		o.MaxObject = 80 << 20
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 256 << 20
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	allow := func(f func(string) bool) func(string) bool {
		if f == nil {
			return func(string) bool { return true }
		}
		return f
	}
	o.Policy = Policy{Read: allow(o.Policy.Read), Write: allow(o.Policy.Write), Delete: allow(o.Policy.Delete), List: allow(o.Policy.List)}
	h := &handler{o: o, mux: http.NewServeMux()}
	p := strings.TrimSuffix(o.Prefix, "/")
	h.mux.HandleFunc("GET "+p+"/objects/{key...}", h.get)
	h.mux.HandleFunc("PUT "+p+"/objects/{key...}", h.put)
	h.mux.HandleFunc("DELETE "+p+"/objects/{key...}", h.del)
	h.mux.HandleFunc("GET "+p+"/list", h.list)
	h.mux.HandleFunc("POST "+p+"/missing", h.missing)
	h.mux.HandleFunc("POST "+p+"/batch", h.batch)
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func fail(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(errorBody{Error: msg, Code: code})
}

func (h *handler) storageError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, storage.ErrNotFound) {
		fail(w, http.StatusNotFound, "not_found", "object not found")
		return
	}
	h.o.Log.Error("repository storage", "method", r.Method, "path", r.URL.Path, "err", err)
	fail(w, http.StatusInternalServerError, "internal", "repository storage error")
}

// key validates the {key...} wildcard and the policy.
func (h *handler) key(w http.ResponseWriter, r *http.Request, allowed func(string) bool, verb string) (string, bool) {
	key := r.PathValue("key")
	if err := storage.CheckKey(key); err != nil {
		fail(w, http.StatusBadRequest, "bad_key", err.Error())
		return "", false
	}
	if !allowed(key) {
		fail(w, http.StatusForbidden, "forbidden", fmt.Sprintf("agents may not %s %s", verb, key))
		return "", false
	}
	return key, true
}

func (h *handler) get(w http.ResponseWriter, r *http.Request) {
	key, ok := h.key(w, r, h.o.Policy.Read, "read")
	if !ok {
		return
	}
	if r.Method == http.MethodHead {
		info, err := h.o.Backend.Stat(r.Context(), key)
		if err != nil {
			h.storageError(w, r, err)
			return
		}
		w.Header().Set("X-Object-Size", strconv.FormatInt(info.Size, 10))
		w.Header().Set("Content-Length", strconv.FormatInt(info.Size, 10))
		if !info.ModTime.IsZero() {
			w.Header().Set("Last-Modified", info.ModTime.UTC().Format(http.TimeFormat))
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	data, err := h.o.Backend.Get(r.Context(), key)
	if err != nil {
		h.storageError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Write(data)
}

func (h *handler) put(w http.ResponseWriter, r *http.Request) {
	key, ok := h.key(w, r, h.o.Policy.Write, "write")
	if !ok {
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.o.MaxObject))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			fail(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("object larger than %d bytes", h.o.MaxObject))
			return
		}
		fail(w, http.StatusBadRequest, "bad_request", "read body: "+err.Error())
		return
	}
	if err := h.o.Backend.Put(r.Context(), key, data); err != nil {
		h.storageError(w, r, err)
		return
	}
	if h.o.OnWrite != nil {
		h.o.OnWrite(1, int64(len(data)))
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) del(w http.ResponseWriter, r *http.Request) {
	key, ok := h.key(w, r, h.o.Policy.Delete, "delete")
	if !ok {
		return
	}
	if err := h.o.Backend.Delete(r.Context(), key); err != nil {
		h.storageError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	prefix := r.URL.Query().Get("prefix")
	if strings.Contains(prefix, "..") || strings.HasPrefix(prefix, "/") || strings.ContainsRune(prefix, 0) {
		fail(w, http.StatusBadRequest, "bad_key", fmt.Sprintf("invalid prefix %q", prefix))
		return
	}
	if !h.o.Policy.List(prefix) {
		fail(w, http.StatusForbidden, "forbidden", fmt.Sprintf("agents may not list %q", prefix))
		return
	}
	out := []ObjectInfo{}
	if err := h.o.Backend.List(r.Context(), prefix, func(o storage.ObjectInfo) error {
		out = append(out, ObjectInfo{Key: o.Key, Size: o.Size, ModTime: o.ModTime})
		return nil
	}); err != nil {
		h.storageError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

func (h *handler) missing(w http.ResponseWriter, r *http.Request) {
	var req MissingRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			fail(w, http.StatusRequestEntityTooLarge, "too_large", "body larger than 1 MiB")
			return
		}
		fail(w, http.StatusBadRequest, "bad_request", "malformed JSON: "+err.Error())
		return
	}
	if len(req.Keys) > MaxMissingKeys {
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("at most %d keys per query", MaxMissingKeys))
		return
	}
	res := MissingResponse{Missing: []string{}, Present: []ObjectInfo{}}
	for _, k := range req.Keys {
		if err := storage.CheckKey(k); err != nil {
			fail(w, http.StatusBadRequest, "bad_key", err.Error())
			return
		}
		if !h.o.Policy.Read(k) {
			fail(w, http.StatusForbidden, "forbidden", fmt.Sprintf("agents may not read %s", k))
			return
		}
		info, err := h.o.Backend.Stat(r.Context(), k)
		switch {
		case err == nil:
			res.Present = append(res.Present, ObjectInfo{Key: k, Size: info.Size, ModTime: info.ModTime})
		case errors.Is(err, storage.ErrNotFound):
			res.Missing = append(res.Missing, k)
		default:
			h.storageError(w, r, err)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(res)
}

func (h *handler) batch(w http.ResponseWriter, r *http.Request) {
	st := h.o.Backend
	stage := st.Put
	var flush func() error
	if h.o.Stager != nil {
		s, err := h.o.Stager()
		if err != nil {
			h.storageError(w, r, err)
			return
		}
		stage, flush = s.Stage, func() error { return s.Flush(r.Context()) }
	}
	br := bufio.NewReaderSize(http.MaxBytesReader(w, r.Body, h.o.MaxBatch), 256<<10)
	var n int
	var total int64
	bad := func(status int, code, msg string) {
		if flush != nil {
			flush() // whatever was staged is valid; keep it consistent
		}
		fail(w, status, code, msg)
	}
	for {
		var kl [2]byte
		if _, err := io.ReadFull(br, kl[:]); err == io.EOF {
			break
		} else if err != nil {
			bad(readStatus(err), "bad_request", "batch entry header: "+err.Error())
			return
		}
		key := make([]byte, binary.BigEndian.Uint16(kl[:]))
		var dl [4]byte
		if _, err := io.ReadFull(br, key); err != nil {
			bad(readStatus(err), "bad_request", "batch entry key: "+err.Error())
			return
		}
		if _, err := io.ReadFull(br, dl[:]); err != nil {
			bad(readStatus(err), "bad_request", "batch entry length: "+err.Error())
			return
		}
		k := string(key)
		if err := storage.CheckKey(k); err != nil {
			bad(http.StatusBadRequest, "bad_key", err.Error())
			return
		}
		if !h.o.Policy.Write(k) {
			bad(http.StatusForbidden, "forbidden", fmt.Sprintf("agents may not write %s", k))
			return
		}
		size := int64(binary.BigEndian.Uint32(dl[:]))
		if size > h.o.MaxObject {
			bad(http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("object %s larger than %d bytes", k, h.o.MaxObject))
			return
		}
		data := make([]byte, size)
		if _, err := io.ReadFull(br, data); err != nil {
			bad(readStatus(err), "bad_request", "batch entry data: "+err.Error())
			return
		}
		if err := stage(r.Context(), k, data); err != nil {
			h.storageError(w, r, err)
			return
		}
		n++
		total += size
	}
	if flush != nil {
		if err := flush(); err != nil {
			h.storageError(w, r, err)
			return
		}
	}
	if h.o.OnWrite != nil {
		h.o.OnWrite(n, total)
	}
	w.WriteHeader(http.StatusNoContent)
}

func readStatus(err error) int {
	var mb *http.MaxBytesError
	if errors.As(err, &mb) {
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusBadRequest
}
