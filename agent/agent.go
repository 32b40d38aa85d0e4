// Package agent is `lifeboat agent`: it enrolls with a server once
// (one-time token, CSR, client certificate), then over mutual TLS reports
// a heartbeat and its host's inventory, long-polls for jobs, and runs
// them: backups chunk, compress and encrypt locally and send the server's
// repository only the chunks it lacks (repo/storage/remote); restores read
// through the same backend and write anywhere on this host.
//
// Its state folder holds key.pem (0600), cert.pem, ca.pem and agent.json.
// The server's CA is pinned at enrollment: by --ca-fingerprint, by --ca
// FILE, or else trusted on first use and remembered (its fingerprint is
// logged so it can be compared with `lifeboat server`'s).
package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/recovery"
)

// Config is how an agent starts.
type Config struct {
	// Server is the server's URL, "https://host:8443".
	Server string
	// Token is the one-time enrollment token (needed only to enroll).
	Token string
	// CAFingerprint pins the server's CA (hex SHA-256 of its DER); CAFile
	// trusts a CA PEM given by hand. Neither: trust on first use.
	CAFingerprint string
	CAFile        string
	// StateDir holds the key, certificates and agent.json.
	StateDir string
	// Name is the node's name (the host name by default).
	Name string
	// Driver lists and prepares VMs (Folders over VMDirs by default).
	Driver Driver
	VMDirs []string
	// Volumes are shared volumes known locally, added to those of the
	// node's cluster that the server sends.
	Volumes []catalog.SharedVolume
	// Password opens an encrypted repository.
	Password string
	// RestoreRoot, if set, confines restores to folders under it.
	RestoreRoot string
	// HA is the cluster's HA manager for recoveries that keep or add an
	// HA role (nil: none; such requests are refused).
	HA recovery.HA
	// Interval between heartbeats; 0 takes the server's.
	Interval time.Duration
	// Jobs run at once (default 2: a restore need not wait for a backup).
	Jobs int
	// Wait is the long-poll wait (default 30s).
	Wait    time.Duration
	Version string
	Log     *slog.Logger
}

// Agent is a running agent.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	client *api.Client
	base   string
	node   catalog.Node

	mu      sync.Mutex
	volumes []catalog.SharedVolume
	vms     []VM // last inventory
	invErr  error

	metrics *metrics
}

// state is agent.json.
type state struct {
	Server        string `json:"server"`
	Name          string `json:"name"`
	NodeID        int64  `json:"node_id"`
	CAFingerprint string `json:"ca_fingerprint"`
	Enrolled      string `json:"enrolled"`
}

// ErrRefused means the server refused this agent (revoked or unknown):
// enroll again with a new token.
var ErrRefused = errors.New("the server refused this agent")

// New enrolls when the state folder has no certificate yet, and returns
// an agent ready to Run.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Jobs <= 0 {
		cfg.Jobs = 2
	}
	if cfg.Wait <= 0 {
		cfg.Wait = 30 * time.Second
	}
	if cfg.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, err
		}
		cfg.Name = strings.SplitN(h, ".", 2)[0]
	}
	if err := api.CheckName("node", cfg.Name); err != nil {
		return nil, err
	}
	if cfg.Driver == nil {
		cfg.Driver = &Folders{Dirs: cfg.VMDirs}
	}
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("agent: no state folder")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Log, metrics: newMetrics()}
	var st state
	if b, err := os.ReadFile(a.file("agent.json")); err == nil {
		if err := json.Unmarshal(b, &st); err != nil {
			return nil, fmt.Errorf("agent: %s: %w", a.file("agent.json"), err)
		}
	}
	if cfg.Server == "" {
		cfg.Server = st.Server
		a.cfg.Server = st.Server
	}
	if cfg.Server == "" {
		return nil, fmt.Errorf("agent: no server URL")
	}
	u, err := url.Parse(cfg.Server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("agent: server %q must be an https:// URL", cfg.Server)
	}
	a.base = strings.TrimSuffix(cfg.Server, "/")
	if _, err := os.Stat(a.file("cert.pem")); errors.Is(err, os.ErrNotExist) {
		if err := a.enroll(ctx, u); err != nil {
			return nil, err
		}
	} else if cfg.Token != "" {
		a.log.Info("already enrolled; the token was not used", "state", cfg.StateDir)
	}
	cert, err := tls.LoadX509KeyPair(a.file("cert.pem"), a.file("key.pem"))
	if err != nil {
		return nil, fmt.Errorf("agent: client certificate: %w", err)
	}
	caPEM, err := os.ReadFile(a.file("ca.pem"))
	if err != nil {
		return nil, fmt.Errorf("agent: CA: %w", err)
	}
	tc, err := api.TLSConfig(caPEM, &cert)
	if err != nil {
		return nil, err
	}
	a.client = &api.Client{Base: a.base, HTTP: api.HTTPClient(tc, 0)}
	return a, nil
}

func (a *Agent) file(name string) string { return filepath.Join(a.cfg.StateDir, name) }

// enroll fetches and pins the server's CA, makes a key and a CSR, and
// trades the token for a certificate.
func (a *Agent) enroll(ctx context.Context, u *url.URL) error {
	if a.cfg.Token == "" {
		return fmt.Errorf("agent: not enrolled yet: give --token (from `lifeboat token create`)")
	}
	caPEM, fp, err := a.serverCA(ctx, u)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: a.cfg.Name},
	}, key)
	if err != nil {
		return err
	}
	tc, err := api.TLSConfig(caPEM, nil)
	if err != nil {
		return err
	}
	c := &api.Client{Base: a.base, HTTP: api.HTTPClient(tc, time.Minute)}
	host, _ := os.Hostname()
	var resp api.EnrollResponse
	if _, err := c.Do(ctx, http.MethodPost, api.Prefix+"/enroll", api.EnrollRequest{
		Token: a.cfg.Token, Name: a.cfg.Name, Hostname: host,
		CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
	}, &resp); err != nil {
		return fmt.Errorf("agent: enroll: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeFile(a.file("key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	if err := writeFile(a.file("ca.pem"), caPEM, 0o644); err != nil {
		return err
	}
	st := state{Server: a.base, Name: a.cfg.Name, NodeID: resp.Node.ID, CAFingerprint: fp, Enrolled: time.Now().UTC().Format(time.RFC3339)}
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := writeFile(a.file("agent.json"), append(b, '\n'), 0o600); err != nil {
		return err
	}
	// The certificate last: its presence means "enrolled".
	if err := writeFile(a.file("cert.pem"), []byte(resp.Certificate), 0o644); err != nil {
		return err
	}
	a.log.Info("enrolled", "node", resp.Node.Name, "id", resp.Node.ID, "server", a.base, "ca_fingerprint", fp)
	return nil
}

// serverCA gets the CA the server presents in its chain and checks it
// against the pin (or trusts it on first use), then checks that the
// server's certificate is valid for the URL's host under that CA.
func (a *Agent) serverCA(ctx context.Context, u *url.URL) ([]byte, string, error) {
	if a.cfg.CAFile != "" {
		data, err := os.ReadFile(a.cfg.CAFile)
		if err != nil {
			return nil, "", fmt.Errorf("agent: --ca: %w", err)
		}
		certs, err := api.ParseCertsPEM(data)
		if err != nil {
			return nil, "", fmt.Errorf("agent: --ca %s: %w", a.cfg.CAFile, err)
		}
		fp := api.Fingerprint(certs[0].Raw)
		if want := api.NormalizeFingerprint(a.cfg.CAFingerprint); want != "" && want != fp {
			return nil, "", fmt.Errorf("agent: --ca %s has fingerprint %s, not the pinned %s", a.cfg.CAFile, fp, want)
		}
		return data, fp, nil
	}
	host := u.Host
	if _, _, err := net.SplitHostPort(host); err != nil {
		host = net.JoinHostPort(host, "443")
	}
	d := &tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}} // verified below, by pin
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, "", fmt.Errorf("agent: reach server: %w", err)
	}
	chain := conn.(*tls.Conn).ConnectionState().PeerCertificates
	conn.Close()
	if len(chain) < 2 {
		return nil, "", fmt.Errorf("agent: the server presented no CA certificate; give --ca FILE")
	}
	leaf := chain[0]
	var ca *x509.Certificate
	for _, c := range chain[1:] {
		if c.IsCA && leaf.CheckSignatureFrom(c) == nil {
			ca = c
			break
		}
	}
	if ca == nil {
		return nil, "", fmt.Errorf("agent: the server's certificate is not signed by a CA it presents; give --ca FILE")
	}
	fp := api.Fingerprint(ca.Raw)
	if want := api.NormalizeFingerprint(a.cfg.CAFingerprint); want != "" {
		if want != fp {
			return nil, "", fmt.Errorf("agent: the server's CA has fingerprint %s, not the pinned %s: refusing to enroll", fp, want)
		}
	} else {
		a.log.Warn("trusting the server's CA on first use; compare its fingerprint with the server's", "ca_fingerprint", fp)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: u.Hostname(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, "", fmt.Errorf("agent: server certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), fp, nil
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err == nil {
		f.Sync()
		f.Close()
	}
	return os.Rename(tmp, path)
}

// Run heartbeats, reports inventory and runs jobs until ctx ends or the
// server refuses the agent.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	interval, err := a.report(ctx)
	if err != nil {
		return err
	}
	if a.cfg.Interval > 0 {
		interval = a.cfg.Interval
	}
	var wg sync.WaitGroup
	for i := 0; i < a.cfg.Jobs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.jobLoop(ctx, cancel)
		}()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-t.C:
		}
		if _, err := a.report(ctx); err != nil {
			if errors.Is(err, ErrRefused) {
				cancel(err)
				break loop
			}
			a.log.Warn("report", "err", err)
		}
	}
	wg.Wait()
	if err := context.Cause(ctx); errors.Is(err, ErrRefused) {
		return err
	}
	return nil
}

// refused maps a 401/403 to ErrRefused.
func refused(err error) error {
	if s := api.StatusOf(err); s == http.StatusUnauthorized || s == http.StatusForbidden {
		return fmt.Errorf("%w: %v", ErrRefused, err)
	}
	return err
}

// report sends a heartbeat and the inventory; it returns the server's
// interval.
func (a *Agent) report(ctx context.Context) (time.Duration, error) {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	host, _ := os.Hostname()
	var hb api.HeartbeatResponse
	if _, err := a.client.Do(rctx, http.MethodPost, api.Prefix+"/agent/heartbeat",
		api.Heartbeat{Version: a.cfg.Version, Hostname: host, Driver: a.cfg.Driver.Name()}, &hb); err != nil {
		a.metrics.heartbeat(false, time.Now())
		return 0, refused(fmt.Errorf("heartbeat: %w", err))
	}
	a.metrics.heartbeat(true, time.Now())
	interval, err := time.ParseDuration(hb.Interval)
	if err != nil || interval <= 0 {
		interval = 30 * time.Second
	}
	vols := append(append([]catalog.SharedVolume(nil), a.cfg.Volumes...), hb.Volumes...)
	vms, err := a.cfg.Driver.Inventory(rctx)
	a.mu.Lock()
	a.node, a.volumes, a.invErr = hb.Node, vols, err
	if err == nil {
		a.vms = vms
		a.metrics.vms.Store(int64(len(vms)))
	}
	a.mu.Unlock()
	if err != nil {
		return interval, fmt.Errorf("inventory: %w", err)
	}
	inv := api.Inventory{VMs: make([]api.InventoryVM, 0, len(vms))}
	for _, v := range vms {
		inv.VMs = append(inv.VMs, a.describe(v, vols))
	}
	if _, err := a.client.Do(rctx, http.MethodPost, api.Prefix+"/agent/inventory", inv, nil); err != nil {
		return interval, refused(fmt.Errorf("inventory: %w", err))
	}
	return interval, nil
}

// describe adds the volume and a stable UUID to a driver's VM.
func (a *Agent) describe(v VM, vols []catalog.SharedVolume) api.InventoryVM {
	out := api.InventoryVM{UUID: v.UUID, Name: v.Name, Path: v.Path, State: v.State, Files: v.Files}
	if out.State == "" {
		out.State = catalog.VMUnknown
	}
	out.VolumeID = volumeOf(vols, v)
	if out.UUID == "" {
		seed := "node\x00" + a.cfg.Name + "\x00" + v.Path
		if out.VolumeID != "" {
			seed = "volume\x00" + out.VolumeID + "\x00" + v.Name
		}
		h := sha256.Sum256([]byte(seed))
		x := hex.EncodeToString(h[:16])
		out.UUID = x[:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
	}
	return out
}

// volumeOf is the shared volume the VM's disks (or its path) sit under:
// the longest matching volume path.
func volumeOf(vols []catalog.SharedVolume, v VM) string {
	paths := append([]string{v.Path}, v.Files...)
	best, bestLen := "", 0
	for _, p := range paths {
		for _, vol := range vols {
			root := strings.TrimSuffix(vol.Path, "/")
			if (p == root || strings.HasPrefix(p, root+"/")) && len(root) > bestLen {
				best, bestLen = vol.VolumeID, len(root)
			}
		}
	}
	return best
}

// VMs is the last inventory.
func (a *Agent) VMs() []VM {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]VM(nil), a.vms...)
}

// Name is the node's name; Server is the server's URL (remembered from
// enrollment when the configuration did not give it).
func (a *Agent) Name() string   { return a.cfg.Name }
func (a *Agent) Server() string { return a.base }

// Node is the node as the server last described it.
func (a *Agent) Node() catalog.Node {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.node
}
