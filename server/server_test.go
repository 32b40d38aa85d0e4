package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lifeboat/agent"
	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/server"
)

// env is a server on a real TLS listener with an admin client.
type env struct {
	t     *testing.T
	srv   *server.Server
	url   string
	admin *api.Client
	anon  *http.Client // trusts the CA, no credentials
	data  string
	stop  func()
}

func quietLog(t *testing.T) *slog.Logger {
	if os.Getenv("LIFEBOAT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func start(t *testing.T, cfg server.Config) *env {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.Log == nil {
		cfg.Log = quietLog(t)
	}
	if cfg.Tick == 0 {
		cfg.Tick = time.Hour // tests drive rounds themselves unless they say otherwise
	}
	ctx := context.Background()
	s, err := server.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Serve(sctx, ln) }()
	tc, err := api.TLSConfig(s.CAPEM(), nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := api.HTTPClient(tc, 30*time.Second)
	tok, err := os.ReadFile(filepath.Join(cfg.DataDir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: s, url: "https://" + ln.Addr().String(), data: cfg.DataDir, anon: hc}
	e.admin = &api.Client{Base: e.url, Token: strings.TrimSpace(string(tok)), HTTP: hc}
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
			s.Close()
		})
	}
	t.Cleanup(e.stop)
	return e
}

func (e *env) do(method, path string, in, out any) error {
	_, err := e.admin.Do(context.Background(), method, path, in, out)
	return err
}

func (e *env) token(cluster string) string {
	var tr api.TokenResponse
	if err := e.do("POST", api.Prefix+"/enrollment-tokens", api.TokenRequest{Cluster: cluster}, &tr); err != nil {
		e.t.Fatal(err)
	}
	return tr.Token
}

// runAgent enrolls and runs an agent in-process until the test ends.
func (e *env) runAgent(name string, dirs ...string) (*agent.Agent, chan error) {
	e.t.Helper()
	a, err := agent.New(context.Background(), agent.Config{
		Server: e.url, Token: e.token(""), CAFingerprint: e.srv.CAFingerprint(), StateDir: e.t.TempDir(),
		Name: name, VMDirs: dirs, Interval: 200 * time.Millisecond, Wait: 2 * time.Second, Log: quietLog(e.t),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	e.t.Cleanup(func() { cancel(); <-done })
	return a, done
}

func status(t *testing.T, c *http.Client, method, url, token, ctype string, body io.Reader) (int, api.Error) {
	t.Helper()
	req, _ := http.NewRequest(method, url, body)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var eb api.Error
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 {
		if err := json.Unmarshal(data, &eb); err != nil || eb.Code == "" {
			t.Errorf("%s %s: %d with a body that is not a JSON error: %q", method, url, resp.StatusCode, data)
		}
	}
	return resp.StatusCode, eb
}

// The API refuses what it should with 4xx JSON errors and stays up.
func TestAPIHygiene(t *testing.T) { eachCatalog(t, testAPIHygiene) }

func testAPIHygiene(t *testing.T, cat catalogKind) {
	e := start(t, server.Config{DB: cat.db(t)})
	tok := e.admin.Token
	u := e.url + api.Prefix
	for _, c := range []struct {
		name, method, path, token, ctype string
		body                             io.Reader
		want                             int
	}{
		{"no token", "GET", "/jobs", "", "", nil, 401},
		{"wrong token", "GET", "/jobs", tok + "x", "", nil, 401},
		{"agent call without certificate", "POST", "/agent/heartbeat", tok, "application/json", strings.NewReader(`{}`), 401},
		{"malformed JSON", "POST", "/groups", tok, "application/json", strings.NewReader(`{"name": "g1", "members": [`), 400},
		{"not JSON", "POST", "/groups", tok, "application/json", strings.NewReader(`<xml/>`), 400},
		{"empty body", "POST", "/groups", tok, "application/json", strings.NewReader(``), 400},
		{"trailing data", "POST", "/groups", tok, "application/json", strings.NewReader(`{"name":"g1","members":[]} {}`), 400},
		{"unknown field", "POST", "/groups", tok, "application/json", strings.NewReader(`{"name": "g1", "members": [], "evil": 1}`), 400},
		{"wrong type", "POST", "/groups", tok, "application/json", strings.NewReader(`{"name": 5}`), 400},
		{"huge body", "POST", "/groups", tok, "application/json", bytes.NewReader(append([]byte(`{"name":"`), bytes.Repeat([]byte("a"), 3<<20)...)), 413},
		{"wrong content type", "POST", "/groups", tok, "text/plain", strings.NewReader(`{}`), 415},
		{"traversal in group name", "POST", "/groups", tok, "application/json", strings.NewReader(`{"name": "../../etc/passwd", "members": []}`), 400},
		{"traversal in member name", "POST", "/groups", tok, "application/json", strings.NewReader(`{"name": "g2", "members": ["../x"]}`), 422},
		{"traversal in member path", "POST", "/groups", tok, "application/json", strings.NewReader(`{"name": "g3", "members": ["/srv/../etc"]}`), 422},
		{"traversal in path segment", "GET", "/groups/..%2f..%2fetc%2fpasswd", tok, "", nil, 400},
		{"traversal in node", "GET", "/agents/..%2fetc", tok, "", nil, 400},
		{"traversal in restore target", "POST", "/restores", tok, "application/json", strings.NewReader(`{"point":"20260101T000000Z-00000000","node":"n","target":"/srv/../../etc"}`), 400},
		{"bad point id", "GET", "/points/..%2f..%2fconfig", tok, "", nil, 400},
		{"bad job id", "GET", "/jobs/abc", tok, "", nil, 400},
		{"missing job", "GET", "/jobs/999", tok, "", nil, 404},
		{"bad query", "GET", "/jobs?limit=-1", tok, "", nil, 400},
		{"unknown state", "GET", "/jobs?state=sleeping", tok, "", nil, 400},
		{"unknown endpoint", "GET", "/nothing", tok, "", nil, 404},
		{"incremental too short", "POST", "/groups", tok, "application/json", strings.NewReader(`{"name":"g4","incremental":"1m","members":[]}`), 400},
		{"server job kind", "POST", "/jobs", tok, "application/json", strings.NewReader(`{"kind":"backup"}`), 400},
		{"enroll with junk", "POST", "/enroll", "", "application/json", strings.NewReader(`{"token":"x","name":"n1","csr":"junk"}`), 400},
		{"enroll with unknown token", "POST", "/enroll", "", "application/json", strings.NewReader(`{"token":"x","name":"n1","csr":"` + csrPEM(t, "n1") + `"}`), 403},
	} {
		got, eb := status(t, e.anon, c.method, u+c.path, c.token, c.ctype, c.body)
		if got != c.want {
			t.Errorf("%s: %d %s (%s), want %d", c.name, got, eb.Code, eb.Error, c.want)
		}
	}
	if got, _ := status(t, e.anon, "GET", e.url+"/metrics", "", "", nil); got != 401 {
		t.Errorf("metrics without token: %d", got)
	}
	// Still alive, and the metrics say so.
	var st api.Status
	if err := e.do("GET", api.Prefix+"/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	var m []byte
	if err := e.do("GET", "/metrics", nil, &m); err != nil || !bytes.Contains(m, []byte(`lifeboat_http_responses_total{code="413"} 1`)) {
		t.Fatalf("metrics: %v\n%s", err, m)
	}
}

func csrPEM(t *testing.T, name string) string {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})))
	return strings.Trim(string(js), `"`)
}

// Enrollment is one-time; an agent without a valid certificate, or
// revoked, is refused; a wrong CA pin refuses to enroll.
func TestAgentSecurity(t *testing.T) { eachCatalog(t, testAgentSecurity) }

func testAgentSecurity(t *testing.T, cat catalogKind) {
	e := start(t, server.Config{DB: cat.db(t)})
	ctx := context.Background()
	tok := e.token("")
	cfg := agent.Config{Server: e.url, Token: tok, StateDir: t.TempDir(), Name: "a1", CAFingerprint: strings.Repeat("ab", 32),
		Interval: 500 * time.Millisecond, Wait: 10 * time.Second, Log: quietLog(t)}
	if _, err := agent.New(ctx, cfg); err == nil || !strings.Contains(err.Error(), "not the pinned") {
		t.Fatalf("wrong pin: %v", err)
	}
	cfg.CAFingerprint = e.srv.CAFingerprint()
	a, err := agent.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	_ = a
	// Replay: the same token again, from another host.
	cfg2 := cfg
	cfg2.StateDir, cfg2.Name = t.TempDir(), "a2"
	if _, err := agent.New(ctx, cfg2); api.StatusOf(err) != 403 || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("replayed token: %v", err)
	}

	// A certificate from another CA does not get past TLS.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "a1"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	forged := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	tc, _ := api.TLSConfig(e.srv.CAPEM(), &forged)
	fc := &api.Client{Base: e.url, HTTP: api.HTTPClient(tc, 10*time.Second)}
	if _, err := fc.Do(ctx, "POST", api.Prefix+"/agent/heartbeat", api.Heartbeat{}, nil); err == nil {
		t.Fatal("self-signed client certificate accepted")
	}

	// The enrolled agent works until revoked, then is refused.
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	waitFor(t, "heartbeat", func() bool {
		var ns []catalog.Node
		e.do("GET", api.Prefix+"/agents", nil, &ns)
		return len(ns) == 1 && !ns[0].LastHeartbeat.IsZero()
	})
	if err := e.do("POST", api.Prefix+"/agents/a1/revoke", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, agent.ErrRefused) {
			t.Fatalf("revoked agent stopped with %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("revoked agent kept running")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
