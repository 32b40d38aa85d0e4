// Package api holds what the server, its agents and the CLI say to each
// other over HTTPS: request and response bodies, the error body, name
// validation both sides apply, and a small client. docs/api/openapi.yaml
// describes the same endpoints.
//
// Two kinds of caller exist. Operators (the CLI) send
// "Authorization: Bearer <admin token>". Agents enroll once with a
// one-time token and from then on present a client certificate signed by
// the server's CA (mutual TLS); the server maps the certificate's
// SHA-256 fingerprint to an enrolled node.
package api

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"time"

	"lifeboat/catalog"
	"lifeboat/repo"
)

// Prefix is the path every endpoint but /metrics lives under.
const Prefix = "/api/v1"

// MaxBody caps every JSON request body.
const MaxBody = 1 << 20

// Error is every 4xx/5xx body.
type Error struct {
	Error string `json:"error"`
	// Code is a stable word: bad_request, unauthorized, forbidden,
	// not_found, conflict, too_large, not_a_vm, expired, internal …
	Code string `json:"code"`
}

// Status is GET /api/v1/status.
type Status struct {
	Version       string          `json:"version"`
	Started       time.Time       `json:"started"`
	CAFingerprint string          `json:"ca_fingerprint"`
	Repository    repo.Config     `json:"repository"`
	Catalog       string          `json:"catalog"` // sqlite or postgres
	Stats         catalog.Stats   `json:"stats"`
	Limits        SchedulerLimits `json:"limits"`
}

// SchedulerLimits are the serialization limits in force.
type SchedulerLimits struct {
	PerVolume     int `json:"per_volume"`
	PerNode       int `json:"per_node"`
	MaxRecoveries int `json:"max_recoveries"`
}

// ---- enrollment -------------------------------------------------------------

// TokenRequest is POST /api/v1/enrollment-tokens.
type TokenRequest struct {
	// TTL is a Go duration ("1h"); default 24h, at most 30 days.
	TTL     string `json:"ttl,omitempty"`
	Note    string `json:"note,omitempty"`
	Cluster string `json:"cluster,omitempty"` // cluster name the node joins
}

// TokenResponse carries the token, shown this once.
type TokenResponse struct {
	Token         string    `json:"token"`
	ID            int64     `json:"id"`
	Expires       time.Time `json:"expires"`
	CAFingerprint string    `json:"ca_fingerprint"`
}

// EnrollRequest is POST /api/v1/enroll (no auth but the token).
type EnrollRequest struct {
	Token    string `json:"token"`
	Name     string `json:"name"`
	Hostname string `json:"hostname"`
	// CSR is a PEM "CERTIFICATE REQUEST" for an ECDSA or Ed25519 key.
	CSR string `json:"csr"`
}

// EnrollResponse gives the agent its certificate.
type EnrollResponse struct {
	Node        catalog.Node `json:"node"`
	Certificate string       `json:"certificate"` // PEM
	CA          string       `json:"ca"`          // PEM
}

// ---- agent reports ----------------------------------------------------------

// Heartbeat is POST /api/v1/agent/heartbeat.
type Heartbeat struct {
	Version  string `json:"version"`
	Hostname string `json:"hostname"`
	Driver   string `json:"driver,omitempty"`
}

// HeartbeatResponse tells the agent its node and the shared volumes of
// its cluster, so it can say which volume each VM sits on.
type HeartbeatResponse struct {
	Node    catalog.Node           `json:"node"`
	Volumes []catalog.SharedVolume `json:"volumes"`
	// Interval is how often the server wants heartbeats (Go duration).
	Interval string `json:"interval"`
}

// Inventory is POST /api/v1/agent/inventory: every VM the host holds.
type Inventory struct {
	VMs []InventoryVM `json:"vms"`
}

// InventoryVM is one VM with its files and volume.
type InventoryVM struct {
	UUID     string   `json:"uuid"`
	Name     string   `json:"name"`
	Path     string   `json:"path,omitempty"`
	VolumeID string   `json:"volume_id,omitempty"`
	State    string   `json:"state"`
	Files    []string `json:"files,omitempty"`
}

// ---- jobs ---------------------------------------------------------------------

// BackupParams are a backup job's params.
type BackupParams struct {
	FullRead bool   `json:"full_read,omitempty"`
	Group    string `json:"group,omitempty"`
	// Reason: "schedule", "full-schedule", "run", "manual".
	Reason string `json:"reason,omitempty"`
	// NoOfflineFallback: the VM's group forbids an offline backup when
	// an online one is not possible.
	NoOfflineFallback bool `json:"no_offline_fallback,omitempty"`
}

// BackupResult is what an agent reports when a backup succeeds.
type BackupResult struct {
	Point   string     `json:"point"`
	Stats   repo.Stats `json:"stats"`
	Seconds float64    `json:"seconds"`
}

// RestoreRequest is POST /api/v1/restores; it becomes a recovery job
// pinned to Node.
type RestoreRequest struct {
	Point string `json:"point"`
	// Node is the agent (node name or ID) that writes the files.
	Node string `json:"node"`
	// Target is an absolute folder on that host.
	Target    string `json:"target"`
	Format    string `json:"format,omitempty"`
	Merge     bool   `json:"merge,omitempty"`
	Overwrite bool   `json:"overwrite,omitempty"`
}

// RestoreParams are a recovery job's params.
type RestoreParams struct {
	Point     string `json:"point"`
	Target    string `json:"target"`
	Format    string `json:"format,omitempty"`
	Merge     bool   `json:"merge,omitempty"`
	Overwrite bool   `json:"overwrite,omitempty"`
}

// RestoreResult is what an agent reports when a restore succeeds.
type RestoreResult struct {
	Files   map[string]string `json:"files"`
	Bytes   int64             `json:"bytes"`
	Seconds float64           `json:"seconds"`
}

// BackupRequest is POST /api/v1/backups: one backup now.
type BackupRequest struct {
	VM       string `json:"vm"`
	FullRead bool   `json:"full_read,omitempty"`
}

// JobRequest is POST /api/v1/jobs for the server's own jobs.
type JobRequest struct {
	Kind   string          `json:"kind"` // verify, prune, gc
	Params json.RawMessage `json:"params,omitempty"`
}

// PruneParams: a group's retention (Group), or an explicit policy.
type PruneParams struct {
	Group  string       `json:"group,omitempty"`
	Policy *repo.Policy `json:"policy,omitempty"`
	DryRun bool         `json:"dry_run,omitempty"`
}

// GCParams is a gc job's params.
type GCParams struct {
	Grace string `json:"grace,omitempty"` // Go duration, default 1h
}

// JobDetail is GET /api/v1/jobs/{id}.
type JobDetail struct {
	catalog.Job
	Log []catalog.LogLine `json:"log"`
}

// Progress is POST /api/v1/agent/jobs/{id}/progress.
type Progress struct {
	Progress float64 `json:"progress"`
	Bytes    int64   `json:"bytes"`
}

// ProgressResponse tells the agent whether to stop.
type ProgressResponse struct {
	Cancel bool `json:"cancel"`
}

// LogLines is POST /api/v1/agent/jobs/{id}/log.
type LogLines struct {
	Level string   `json:"level,omitempty"`
	Lines []string `json:"lines"`
}

// Finish is POST /api/v1/agent/jobs/{id}/finish.
type Finish struct {
	State  string          `json:"state"` // succeeded, failed, canceled
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// Defer is POST /api/v1/agent/jobs/{id}/defer: the VM is not here (it
// moved, or is migrating); the job goes back to the queue and follows it.
type Defer struct {
	Reason  string `json:"reason"`
	Seconds int    `json:"seconds,omitempty"`
}

// ---- groups -------------------------------------------------------------------

// Group is a protection group as the API shows and takes it.
type Group struct {
	ID        int64    `json:"id,omitempty"`
	Name      string   `json:"name"`
	FullTimes []string `json:"full_times,omitempty"`
	TimeZone  string   `json:"time_zone,omitempty"`
	// Incremental is a Go duration from 15m to 24h, or "" for none.
	Incremental     string `json:"incremental,omitempty"`
	RetentionDays   int    `json:"retention_days,omitempty"`
	RetentionCount  int    `json:"retention_count,omitempty"`
	OfflineFallback *bool  `json:"offline_fallback,omitempty"`
	// VerifyBoot: each new point of a member is verify-booted on the
	// node that took it.
	VerifyBoot bool      `json:"verify_boot,omitempty"`
	Members    []string  `json:"members"`
	Created    time.Time `json:"created,omitzero"`
	Updated    time.Time `json:"updated,omitzero"`
}

// GroupFromCatalog converts for output.
func GroupFromCatalog(g catalog.Group) Group {
	off := g.OfflineFallback
	out := Group{ID: g.ID, Name: g.Name, FullTimes: g.FullTimes, TimeZone: g.TimeZone,
		RetentionDays: g.RetentionDays, RetentionCount: g.RetentionCount, OfflineFallback: &off, VerifyBoot: g.VerifyBoot,
		Members: g.Members, Created: g.Created, Updated: g.Updated}
	if g.Incremental > 0 {
		out.Incremental = g.Incremental.String()
	}
	if out.Members == nil {
		out.Members = []string{}
	}
	return out
}

// Members is POST /api/v1/groups/{id}/members.
type Members struct {
	// Members are VM names, or paths of VMs (a VM folder or image), which
	// the server resolves to names and checks against the shared-volume
	// rule.
	Members []string `json:"members"`
}

// ProtectRequest is POST /api/v1/protect: protect what is at Path.
type ProtectRequest struct {
	Path  string `json:"path"`
	Group string `json:"group"`
}

// RunResponse lists the jobs a run created.
type RunResponse struct {
	Jobs []catalog.Job `json:"jobs"`
}

// ClusterRequest is POST /api/v1/clusters.
type ClusterRequest struct {
	Name      string `json:"name"`
	HAManager string `json:"ha_manager,omitempty"`
}

// VolumeRequest is POST /api/v1/clusters/{id}/volumes.
type VolumeRequest struct {
	Path     string `json:"path"`
	VolumeID string `json:"volume_id"`
}

// ---- validation -----------------------------------------------------------------

// CheckName accepts names of nodes, groups and clusters: 1 to 128 of
// [A-Za-z0-9._-], starting with a letter or digit.
func CheckName(what, s string) error {
	if s == "" || len(s) > 128 {
		return fmt.Errorf("%s name must be 1 to 128 characters", what)
	}
	for i, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || (i > 0 && (c == '.' || c == '_' || c == '-'))
		if !ok {
			return fmt.Errorf("%s name %q: character %q not allowed (use letters, digits, '.', '_', '-')", what, s, c)
		}
	}
	return nil
}

// CheckVMName accepts a VM name: 1 to 255 printable characters, no path
// separators, not "." or "..". Hypervisors allow spaces and most
// punctuation in VM names; nothing here can steer a path.
func CheckVMName(s string) error {
	if s == "" || len(s) > 255 {
		return fmt.Errorf("VM name must be 1 to 255 characters")
	}
	if s == "." || s == ".." || strings.TrimSpace(s) != s {
		return fmt.Errorf("VM name %q is not allowed", s)
	}
	for _, c := range s {
		if c < 0x20 || c == 0x7f || c == '/' || c == '\\' {
			return fmt.Errorf("VM name %q: character %q not allowed", s, c)
		}
	}
	return nil
}

// CheckAbsPath accepts a clean absolute path (no "..", no NUL): where a
// restore writes on an agent's host.
func CheckAbsPath(what, p string) error {
	if p == "" || !strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) || len(p) > 4096 {
		return fmt.Errorf("%s %q must be an absolute path", what, p)
	}
	if path.Clean(p) != p {
		return fmt.Errorf("%s %q is not a clean path", what, p)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return fmt.Errorf("%s %q: '..' not allowed", what, p)
		}
	}
	return nil
}

// RecoveryRequest is POST /api/v1/recoveries/preflight and POST
// /api/v1/recoveries: one recovery method run by an agent. The agent
// checks everything (the preflight) before it writes a byte, and again
// when the job runs.
type RecoveryRequest struct {
	// Method is original (overwrite the VM in place), vm (as a VM on a
	// host), folder (copy to a folder) or tape (copy to tape).
	Method string `json:"method"`
	Point  string `json:"point"`
	// Node is the agent (node name or ID) that runs the recovery: the
	// target host for vm and folder. For original it may be empty: the
	// server picks the node that runs the VM now, or the point's host.
	Node string `json:"node,omitempty"`
	// Dir is the target folder on Node (vm: the VM's final location;
	// folder: the copy).
	Dir               string `json:"dir,omitempty"`
	Name              string `json:"name,omitempty"`
	NewIdentity       bool   `json:"new_identity,omitempty"`
	HA                bool   `json:"ha,omitempty"`
	HAResource        string `json:"ha_resource,omitempty"`
	DiscardSavedState bool   `json:"discard_saved_state,omitempty"`
	// Chain is "" (the method's default), "keep" or "merge".
	Chain string `json:"chain,omitempty"`
	// Library is the tape library's folder on the server (method tape,
	// which the server runs itself: it holds the repository).
	Library string `json:"library,omitempty"`
}

// RecoveryCheck is one preflight check.
type RecoveryCheck struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// RecoveryDisk is one disk a recovery writes.
type RecoveryDisk struct {
	File   string `json:"file"`
	Path   string `json:"path"`
	Format string `json:"format"`
	Merged bool   `json:"merged,omitempty"`
	Bytes  int64  `json:"bytes"`
}

// RecoveryPlan is the preflight's verdict (200 from
// /recoveries/preflight, whether OK or refused). A refusal has OK false,
// a Code such as LB-32579, the Message and the operator's Advice.
type RecoveryPlan struct {
	OK      bool            `json:"ok"`
	Code    string          `json:"code,omitempty"`
	Message string          `json:"message,omitempty"`
	Advice  string          `json:"advice,omitempty"`
	Method  string          `json:"method"`
	Point   string          `json:"point"`
	Node    string          `json:"node"`
	VM      string          `json:"vm,omitempty"`
	Dir     string          `json:"dir,omitempty"`
	Checks  []RecoveryCheck `json:"checks"`
	Notes   []string        `json:"notes,omitempty"`
	Disks   []RecoveryDisk  `json:"disks,omitempty"`
}

// RecoveryParams are a recovery job's params when it runs a method;
// PreflightOnly jobs check and report a RecoveryPlan without writing.
type RecoveryParams struct {
	Recovery      RecoveryRequest `json:"recovery"`
	PreflightOnly bool            `json:"preflight_only,omitempty"`
	// SharedVolumes are the roots of the node's cluster's shared volumes,
	// refused as targets.
	SharedVolumes []string `json:"shared_volumes,omitempty"`
}

// RecoveryResult is what an agent reports when a recovery job succeeds:
// the plan it checked and, unless PreflightOnly, what it did.
type RecoveryResult struct {
	Plan    RecoveryPlan      `json:"plan"`
	VM      string            `json:"vm,omitempty"`
	Files   map[string]string `json:"files,omitempty"`
	Bytes   int64             `json:"bytes,omitempty"`
	Running bool              `json:"running,omitempty"`
	HA      bool              `json:"ha,omitempty"`
	Seconds float64           `json:"seconds,omitempty"`
}

// ItemVolume is a volume of a point's disk (GET
// /api/v1/points/{id}/items without path).
type ItemVolume struct {
	Disk   string `json:"disk"`
	Index  int    `json:"index"`
	FS     string `json:"fs,omitempty"`
	Label  string `json:"label,omitempty"`
	Offset int64  `json:"offset"`
	Size   int64  `json:"size"`
}

// ItemEntry is a file or folder inside a point's filesystem.
type ItemEntry struct {
	Name    string    `json:"name"`
	Path    string    `json:"path"`
	IsDir   bool      `json:"is_dir,omitempty"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime"`
	// Link is a symbolic link's target; Invalid why a name cannot be
	// extracted.
	Link    string `json:"link,omitempty"`
	Invalid string `json:"invalid,omitempty"`
}

// ItemList is GET /api/v1/points/{id}/items?disk=D&volume=N&path=P:
// the volumes of the point's disks (Path empty and no volume given) or the
// entries of one folder.
type ItemList struct {
	Point   string       `json:"point"`
	Disk    string       `json:"disk,omitempty"`
	Volume  int          `json:"volume"`
	Path    string       `json:"path"`
	Volumes []ItemVolume `json:"volumes,omitempty"`
	Entries []ItemEntry  `json:"entries,omitempty"`
}

// Refuse marks the plan refused.
func (p *RecoveryPlan) Refuse(code, message, advice string) {
	p.OK, p.Code, p.Message, p.Advice = false, code, message, advice
}

// Check records one check's outcome.
func (p *RecoveryPlan) Check(name string, ok bool, detail string) {
	p.Checks = append(p.Checks, RecoveryCheck{Name: name, OK: ok, Detail: detail})
}

// TapeWriteParams are a tape job's params (POST /api/v1/jobs with kind
// "tape"): copy a point from the server's repository to a tape library
// the server reaches (a virtual library's folder), and record the
// cartridges and where the point is on them in the tape catalog.
type TapeWriteParams struct {
	Point   string `json:"point"`
	Library string `json:"library"`
	// Overwrite reuses cartridges that hold data; Plaintext allows
	// copying an encrypted repository's chunks (tapes hold plaintext).
	Overwrite bool `json:"overwrite,omitempty"`
	Plaintext bool `json:"plaintext,omitempty"`
}

// GroupUpdate is PATCH /api/v1/groups/{group}: the settings given change,
// the others stay. Members, when given, replace the group's members (VMs
// left out are no longer protected by it; their points stay).
type GroupUpdate struct {
	FullTimes       *[]string `json:"full_times,omitempty"`
	TimeZone        *string   `json:"time_zone,omitempty"`
	Incremental     *string   `json:"incremental,omitempty"`
	RetentionDays   *int      `json:"retention_days,omitempty"`
	RetentionCount  *int      `json:"retention_count,omitempty"`
	OfflineFallback *bool     `json:"offline_fallback,omitempty"`
	VerifyBoot      *bool     `json:"verify_boot,omitempty"`
	Members         *[]string `json:"members,omitempty"`
}
