// Package remote is a storage.Backend that reaches a repository through
// a Lifeboat server over HTTPS: agents chunk, compress and encrypt
// locally and send the server only objects it lacks.
//
// The protocol, under a base URL (the server mounts it at
// /api/v1/agent/repo behind mutual TLS):
//
//	GET    BASE/objects/KEY          the object's bytes, or 404
//	HEAD   BASE/objects/KEY          X-Object-Size and Last-Modified, or 404
//	PUT    BASE/objects/KEY          store once (an existing key is kept): 204
//	DELETE BASE/objects/KEY          204, also for a missing key
//	GET    BASE/list?prefix=P        JSON [{key,size,mtime}]
//	POST   BASE/missing              {"keys":[…]} → {"missing":[…],"present":[{key,size,mtime}]}
//	POST   BASE/batch                many objects in one body (below), durable on 204
//
// A batch body is a sequence of entries, each u16 key length, the key,
// u32 data length, the data (big-endian), ending at EOF.
//
// The repository asks Stat for every chunk it is about to store; Stat of
// a chunk key is answered from an in-memory set of keys known present, and
// otherwise joins the next "missing" query: concurrent callers share one
// round trip. Stage collects objects into batches sent a few MiB at a
// time; Flush sends the rest and waits for all of them.
package remote

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"lifeboat/repo/storage"
)

// ObjectInfo is the wire form of storage.ObjectInfo.
type ObjectInfo struct {
	Key     string    `json:"key"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime,omitzero"`
}

// MissingRequest asks which keys the repository lacks.
type MissingRequest struct {
	Keys []string `json:"keys"`
}

// MissingResponse answers a MissingRequest.
type MissingResponse struct {
	Missing []string     `json:"missing"`
	Present []ObjectInfo `json:"present"`
}

// MaxMissingKeys caps one missing query.
const MaxMissingKeys = 4096

// errorBody is the server's error answer.
type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// Options configure a Backend.
type Options struct {
	// Base is the protocol's base URL, e.g.
	// "https://server:8443/api/v1/agent/repo".
	Base string
	// HTTP carries the requests (with the agent's client certificate).
	HTTP *http.Client
	// BatchBytes and BatchObjects bound one batch (8 MiB, 256 objects by
	// default); Parallel bounds batches in flight (4).
	BatchBytes   int
	BatchObjects int
	Parallel     int
}

// Backend is the client side.
type Backend struct {
	opts Options

	mu       sync.Mutex
	known    map[string]storage.ObjectInfo // keys known present
	pending  []*statCall
	inflight bool

	bmu      sync.Mutex
	batch    *bytes.Buffer
	batchN   int
	batchKey []storage.ObjectInfo
	sem      chan struct{}
	sending  sync.WaitGroup
	sendErr  error

	// Counters, for reports.
	statCalls, statQueries, sentObjects, sentBytes int64
}

type statCall struct {
	key  string
	done chan struct{}
	info storage.ObjectInfo
	err  error
}

// New makes a Backend.
func New(opts Options) *Backend {
	if opts.BatchBytes <= 0 {
		opts.BatchBytes = 8 << 20
	}
	if opts.BatchObjects <= 0 {
		opts.BatchObjects = 256
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	opts.Base = strings.TrimSuffix(opts.Base, "/")
	return &Backend{opts: opts, known: map[string]storage.ObjectInfo{}, sem: make(chan struct{}, opts.Parallel)}
}

// Location is the base URL.
func (b *Backend) Location() string { return b.opts.Base }

// Counters reports Stat calls, missing queries made, and objects and
// bytes sent.
func (b *Backend) Counters() (statCalls, statQueries, objects, bytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.statCalls, b.statQueries, b.sentObjects, b.sentBytes
}

func (b *Backend) objectURL(key string) string {
	return b.opts.Base + "/objects/" + key // CheckKey allows only URL-safe characters
}

func (b *Backend) do(ctx context.Context, method, u string, body io.Reader, ctype string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := b.opts.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var eb errorBody
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
			msg = eb.Error
		}
		if resp.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("%s %s: %w", method, u, storage.ErrNotFound)
		}
		return nil, fmt.Errorf("%s %s: HTTP %d: %s", method, u, resp.StatusCode, msg)
	}
	return resp, nil
}

func (b *Backend) remember(key string, size int64) {
	b.mu.Lock()
	b.known[key] = storage.ObjectInfo{Key: key, Size: size}
	b.mu.Unlock()
}

// Put stores one object now.
func (b *Backend) Put(ctx context.Context, key string, data []byte) error {
	if err := storage.CheckKey(key); err != nil {
		return err
	}
	resp, err := b.do(ctx, http.MethodPut, b.objectURL(key), bytes.NewReader(data), "application/octet-stream")
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	resp.Body.Close()
	b.remember(key, int64(len(data)))
	return nil
}

// Stage adds the object to the current batch, sending the batch when it
// is full.
func (b *Backend) Stage(ctx context.Context, key string, data []byte) error {
	if err := storage.CheckKey(key); err != nil {
		return err
	}
	if len(key) > 0xffff || int64(len(data)) > 0xffffffff {
		return fmt.Errorf("stage %s: object too large", key)
	}
	b.bmu.Lock()
	if b.batch == nil {
		b.batch = new(bytes.Buffer)
	}
	var hdr [6]byte
	binary.BigEndian.PutUint16(hdr[:2], uint16(len(key)))
	b.batch.Write(hdr[:2])
	b.batch.WriteString(key)
	binary.BigEndian.PutUint32(hdr[2:], uint32(len(data)))
	b.batch.Write(hdr[2:])
	b.batch.Write(data) // copies: the caller reuses data
	b.batchN++
	b.batchKey = append(b.batchKey, storage.ObjectInfo{Key: key, Size: int64(len(data))})
	var full *bytes.Buffer
	var keys []storage.ObjectInfo
	if b.batch.Len() >= b.opts.BatchBytes || b.batchN >= b.opts.BatchObjects {
		full, keys = b.batch, b.batchKey
		b.batch, b.batchN, b.batchKey = nil, 0, nil
	}
	b.bmu.Unlock()
	if full != nil {
		return b.send(ctx, full, keys)
	}
	return nil
}

// send posts one batch, at most Parallel at once.
func (b *Backend) send(ctx context.Context, body *bytes.Buffer, keys []storage.ObjectInfo) error {
	b.sending.Add(1)
	defer b.sending.Done()
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-b.sem }()
	n := int64(body.Len())
	resp, err := b.do(ctx, http.MethodPost, b.opts.Base+"/batch", body, "application/octet-stream")
	if err != nil {
		err = fmt.Errorf("send %d staged objects: %w", len(keys), err)
		b.bmu.Lock()
		if b.sendErr == nil {
			b.sendErr = err
		}
		b.bmu.Unlock()
		return err
	}
	resp.Body.Close()
	b.mu.Lock()
	for _, k := range keys {
		b.known[k.Key] = k
	}
	b.sentObjects += int64(len(keys))
	b.sentBytes += n
	b.mu.Unlock()
	return nil
}

// Flush sends the current batch and waits for every batch in flight.
func (b *Backend) Flush(ctx context.Context) error {
	b.bmu.Lock()
	body, keys := b.batch, b.batchKey
	b.batch, b.batchN, b.batchKey = nil, 0, nil
	b.bmu.Unlock()
	var err error
	if body != nil && len(keys) > 0 {
		err = b.send(ctx, body, keys)
	}
	b.sending.Wait()
	b.bmu.Lock()
	if err == nil {
		err = b.sendErr
	}
	b.sendErr = nil
	b.bmu.Unlock()
	return err
}

// Get fetches an object.
func (b *Backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := storage.CheckKey(key); err != nil {
		return nil, err
	}
	resp, err := b.do(ctx, http.MethodGet, b.objectURL(key), nil, "")
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if resp.ContentLength > 0 {
		buf.Grow(int(resp.ContentLength))
	}
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return buf.Bytes(), nil
}

// Stat describes an object. Chunk keys are answered from memory or by a
// shared missing query; other keys by HEAD.
func (b *Backend) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := storage.CheckKey(key); err != nil {
		return storage.ObjectInfo{}, err
	}
	if strings.HasPrefix(key, "chunks/") {
		return b.statBatched(ctx, key)
	}
	resp, err := b.do(ctx, http.MethodHead, b.objectURL(key), nil, "")
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, err)
	}
	resp.Body.Close()
	info := storage.ObjectInfo{Key: key, Size: resp.ContentLength}
	if s := resp.Header.Get("X-Object-Size"); s != "" {
		info.Size, _ = strconv.ParseInt(s, 10, 64)
	}
	if t, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil {
		info.ModTime = t
	}
	return info, nil
}

func (b *Backend) statBatched(ctx context.Context, key string) (storage.ObjectInfo, error) {
	b.mu.Lock()
	b.statCalls++
	if info, ok := b.known[key]; ok {
		b.mu.Unlock()
		return info, nil
	}
	c := &statCall{key: key, done: make(chan struct{})}
	b.pending = append(b.pending, c)
	if !b.inflight {
		b.inflight = true
		go b.runStats()
	}
	b.mu.Unlock()
	select {
	case <-c.done:
		return c.info, c.err
	case <-ctx.Done():
		return storage.ObjectInfo{}, ctx.Err()
	}
}

// runStats answers pending Stat calls, one missing query per round: the
// calls that arrive while a query is in flight share the next one.
func (b *Backend) runStats() {
	for {
		b.mu.Lock()
		n := min(len(b.pending), MaxMissingKeys)
		if n == 0 {
			b.inflight = false
			b.mu.Unlock()
			return
		}
		batch := b.pending[:n:n]
		b.pending = append([]*statCall(nil), b.pending[n:]...)
		b.statQueries++
		b.mu.Unlock()
		keys := make([]string, 0, len(batch))
		seen := map[string]bool{}
		for _, c := range batch {
			if !seen[c.key] {
				seen[c.key] = true
				keys = append(keys, c.key)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		res, err := b.Missing(ctx, keys)
		cancel()
		present := map[string]storage.ObjectInfo{}
		if err == nil {
			for _, o := range res.Present {
				present[o.Key] = storage.ObjectInfo{Key: o.Key, Size: o.Size, ModTime: o.ModTime}
			}
		}
		b.mu.Lock()
		for k, info := range present {
			b.known[k] = info
		}
		b.mu.Unlock()
		for _, c := range batch {
			switch info, ok := present[c.key]; {
			case err != nil:
				c.err = fmt.Errorf("stat %s: %w", c.key, err)
			case ok:
				c.info = info
			default:
				c.err = fmt.Errorf("stat %s: %w", c.key, storage.ErrNotFound)
			}
			close(c.done)
		}
	}
}

// Missing asks which of keys the repository lacks (at most
// MaxMissingKeys).
func (b *Backend) Missing(ctx context.Context, keys []string) (*MissingResponse, error) {
	body, err := json.Marshal(MissingRequest{Keys: keys})
	if err != nil {
		return nil, err
	}
	resp, err := b.do(ctx, http.MethodPost, b.opts.Base+"/missing", bytes.NewReader(body), "application/json")
	if err != nil {
		return nil, fmt.Errorf("missing query: %w", err)
	}
	defer resp.Body.Close()
	var out MissingResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("missing query: %w", err)
	}
	return &out, nil
}

// List calls fn for every object under prefix.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	resp, err := b.do(ctx, http.MethodGet, b.opts.Base+"/list?prefix="+url.QueryEscape(prefix), nil, "")
	if err != nil {
		return fmt.Errorf("list %q: %w", prefix, err)
	}
	defer resp.Body.Close()
	var objs []ObjectInfo
	if err := json.NewDecoder(bufio.NewReader(resp.Body)).Decode(&objs); err != nil {
		return fmt.Errorf("list %q: %w", prefix, err)
	}
	for _, o := range objs {
		if err := fn(storage.ObjectInfo{Key: o.Key, Size: o.Size, ModTime: o.ModTime}); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes an object (the server allows it for lock objects only).
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := storage.CheckKey(key); err != nil {
		return err
	}
	resp, err := b.do(ctx, http.MethodDelete, b.objectURL(key), nil, "")
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	resp.Body.Close()
	b.mu.Lock()
	delete(b.known, key)
	b.mu.Unlock()
	return nil
}

var _ storage.Backend = (*Backend)(nil)
