package catalog

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Job kinds.
const (
	KindBackup   = "backup"
	KindRecovery = "recovery"
	KindVerify   = "verify"
	KindPrune    = "prune"
	KindGC       = "gc"
	KindTape     = "tape"
	// KindVerifyBoot boots a point as a throwaway VM on a node's
	// hypervisor and records the verdict (recovery.VerifyBoot).
	KindVerifyBoot = "verify-boot"
)

// Job states. queued → running → succeeded | failed | canceled; a queued
// job may be canceled directly; a deferred job goes back to queued.
const (
	JobQueued    = "queued"
	JobRunning   = "running"
	JobSucceeded = "succeeded"
	JobFailed    = "failed"
	JobCanceled  = "canceled"
)

var jobKinds = map[string]bool{KindBackup: true, KindRecovery: true, KindVerify: true, KindPrune: true, KindGC: true, KindTape: true, KindVerifyBoot: true}

// Job is one unit of work.
type Job struct {
	ID    int64  `json:"id"`
	Kind  string `json:"kind"`
	State string `json:"state"`
	// VMID and VMName: the VM the job is about (VMName stays when the VM
	// row is deleted).
	VMID   int64  `json:"vm_id,omitempty"`
	VMName string `json:"vm_name,omitempty"`
	// TargetNodeID pins the job to a node (a restore's target host). When
	// 0, a job with a VM runs on the VM's owner at claim time and a job
	// without one runs on the server.
	TargetNodeID int64 `json:"target_node_id,omitempty"`
	// NodeID is who claimed the job.
	NodeID int64 `json:"node_id,omitempty"`
	// VolumeID is the shared volume the job works on ("" for none).
	VolumeID string `json:"volume_id,omitempty"`
	GroupID  int64  `json:"group_id,omitempty"`
	// Params is what the job is asked to do (JSON).
	Params          json.RawMessage `json:"params,omitempty"`
	Progress        float64         `json:"progress"`
	Bytes           int64           `json:"bytes"`
	Attempts        int             `json:"attempts"`
	CancelRequested bool            `json:"cancel_requested,omitempty"`
	// NotBefore holds a deferred job back until then.
	NotBefore time.Time       `json:"not_before,omitzero"`
	Created   time.Time       `json:"created"`
	Started   time.Time       `json:"started,omitzero"`
	Finished  time.Time       `json:"finished,omitzero"`
	Updated   time.Time       `json:"updated"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     string          `json:"error,omitempty"`
}

// Done reports whether the job reached a final state.
func (j *Job) Done() bool {
	return j.State == JobSucceeded || j.State == JobFailed || j.State == JobCanceled
}

// jobCols are unqualified: RETURNING clauses use them too.
const jobCols = `id, kind, state, vm_id, vm_name, target_node_id, node_id, volume_id, group_id,
	params, progress, bytes, attempts, cancel_requested, not_before, created_at, started_at,
	finished_at, updated_at, result, error`

func scanJob(s interface{ Scan(...any) error }) (Job, error) {
	var j Job
	var vm, target, node, group, created, started, finished, updated sql.NullInt64
	var params, result string
	var cancel int
	var notBefore int64
	err := s.Scan(&j.ID, &j.Kind, &j.State, &vm, &j.VMName, &target, &node, &j.VolumeID, &group,
		&params, &j.Progress, &j.Bytes, &j.Attempts, &cancel, &notBefore, &created, &started,
		&finished, &updated, &result, &j.Error)
	j.VMID, j.TargetNodeID, j.NodeID, j.GroupID = vm.Int64, target.Int64, node.Int64, group.Int64
	j.Created, j.Started, j.Finished, j.Updated = nt(created), nt(started), nt(finished), nt(updated)
	if notBefore != 0 {
		j.NotBefore = time.Unix(0, notBefore).UTC()
	}
	j.CancelRequested = cancel != 0
	if params != "" {
		j.Params = json.RawMessage(params)
	}
	if result != "" {
		j.Result = json.RawMessage(result)
	}
	return j, err
}

func scanJobs(rows *sql.Rows) ([]Job, error) {
	defer rows.Close()
	var out []Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, rows.Err()
}

func jsonText(m json.RawMessage) (string, error) {
	if len(m) == 0 {
		return "", nil
	}
	if !json.Valid(m) {
		return "", fmt.Errorf("%w: not valid JSON", ErrInvalid)
	}
	return string(m), nil
}

// CreateJob queues a job. When it names a VM by ID, its name and volume are
// filled from the VM unless given.
func (c *Catalog) CreateJob(ctx context.Context, j Job) (Job, error) {
	js, err := c.CreateJobs(ctx, []Job{j})
	if err != nil {
		return j, err
	}
	return js[0], nil
}

// CreateJobs queues jobs in one transaction (a scheduling round's backups):
// all or none.
func (c *Catalog) CreateJobs(ctx context.Context, jobs []Job) ([]Job, error) {
	params := make([]string, len(jobs))
	for i, j := range jobs {
		if !jobKinds[j.Kind] {
			return nil, fmt.Errorf("catalog: create job: %w: kind %q", ErrInvalid, j.Kind)
		}
		p, err := jsonText(j.Params)
		if err != nil {
			return nil, fmt.Errorf("catalog: create %s job: params: %w", j.Kind, err)
		}
		params[i] = p
	}
	now := c.now().UnixNano()
	out := make([]Job, len(jobs))
	err := c.tx(ctx, func(tx *Tx) error {
		for i, j := range jobs {
			if j.VMID != 0 && (j.VMName == "" || j.VolumeID == "") {
				var name, vol string
				if err := tx.QueryRow(ctx, `SELECT name, volume_id FROM vms WHERE id = ?`, j.VMID).Scan(&name, &vol); err != nil {
					return fmt.Errorf("%s job for VM %d: %w", j.Kind, j.VMID, err)
				}
				if j.VMName == "" {
					j.VMName = name
				}
				if j.VolumeID == "" {
					j.VolumeID = vol
				}
			}
			var err error
			out[i], err = scanJob(tx.QueryRow(ctx, `INSERT INTO jobs (kind, state, vm_id, vm_name, target_node_id, volume_id, group_id,
				params, created_at, updated_at, not_before) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING `+jobCols,
				j.Kind, ni(j.VMID), j.VMName, ni(j.TargetNodeID), j.VolumeID, ni(j.GroupID), params[i], now, now, unixOr0(j.NotBefore)))
			if err != nil {
				return fmt.Errorf("%s job %q: %w", j.Kind, j.VMName, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, wrap(err, "create jobs")
	}
	return out, nil
}

func unixOr0(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// GetJob reads a job.
func (c *Catalog) GetJob(ctx context.Context, id int64) (Job, error) {
	j, err := scanJob(c.queryRow(ctx, `SELECT `+jobCols+` FROM jobs j WHERE j.id = ?`, id))
	return j, wrap(err, "get job %d", id)
}

// JobFilter narrows ListJobs; zero fields match everything.
type JobFilter struct {
	Kinds    []string
	States   []string
	VMID     int64
	VMName   string
	NodeID   int64 // claimed by
	VolumeID string
	GroupID  int64
	// BeforeID pages backwards: jobs with a smaller ID.
	BeforeID int64
	Limit    int // default 100
}

// ListJobs lists jobs, newest first.
func (c *Catalog) ListJobs(ctx context.Context, f JobFilter) ([]Job, error) {
	var where []string
	var args []any
	if len(f.Kinds) > 0 {
		where = append(where, "j.kind IN ("+in(len(f.Kinds))+")")
		for _, k := range f.Kinds {
			args = append(args, k)
		}
	}
	if len(f.States) > 0 {
		where = append(where, "j.state IN ("+in(len(f.States))+")")
		for _, s := range f.States {
			args = append(args, s)
		}
	}
	if f.VMID != 0 {
		where, args = append(where, "j.vm_id = ?"), append(args, f.VMID)
	}
	if f.VMName != "" {
		where, args = append(where, "j.vm_name = ?"), append(args, f.VMName)
	}
	if f.NodeID != 0 {
		where, args = append(where, "j.node_id = ?"), append(args, f.NodeID)
	}
	if f.VolumeID != "" {
		where, args = append(where, "j.volume_id = ?"), append(args, f.VolumeID)
	}
	if f.GroupID != 0 {
		where, args = append(where, "j.group_id = ?"), append(args, f.GroupID)
	}
	if f.BeforeID != 0 {
		where, args = append(where, "j.id < ?"), append(args, f.BeforeID)
	}
	q := `SELECT ` + jobCols + ` FROM jobs j`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	if f.Limit <= 0 {
		f.Limit = 100
	}
	q += " ORDER BY j.id DESC LIMIT " + strconv.Itoa(f.Limit)
	rows, err := c.query(ctx, q, args...)
	if err != nil {
		return nil, wrap(err, "list jobs")
	}
	js, err := scanJobs(rows)
	return js, wrap(err, "list jobs")
}

// eligible is the condition for a queued job node ? (twice; 0 = the
// server) may run now (?): pinned to it, or about a VM it owns that is not
// migrating, or (for the server) about neither a node nor a VM.
const eligible = `j.state = 'queued' AND j.not_before <= ? AND (
	j.target_node_id = ?
	OR (j.target_node_id IS NULL AND j.vm_id IS NOT NULL AND EXISTS (
		SELECT 1 FROM vms v WHERE v.id = j.vm_id AND v.owner_node_id = ? AND v.state <> 'migrating'))
	OR (j.target_node_id IS NULL AND j.vm_id IS NULL AND CAST(? AS BIGINT) = 0))`

func eligibleArgs(now, node int64) []any { return []any{now, node, node, node} }

// NextJobs lists, oldest first, the queued jobs node nodeID (0: the
// server) may claim now.
func (c *Catalog) NextJobs(ctx context.Context, nodeID int64, limit int) ([]Job, error) {
	return c.nextJobs(ctx, nodeID, 0, limit)
}

func (c *Catalog) nextJobs(ctx context.Context, nodeID, afterID int64, limit int) ([]Job, error) {
	if limit <= 0 {
		limit = 10
	}
	args := append(eligibleArgs(c.now().UnixNano(), nodeID), afterID)
	rows, err := c.query(ctx, `SELECT `+jobCols+` FROM jobs j WHERE `+eligible+` AND j.id > ? ORDER BY j.id LIMIT `+strconv.Itoa(limit), args...)
	if err != nil {
		return nil, wrap(err, "next jobs for node %d", nodeID)
	}
	js, err := scanJobs(rows)
	return js, wrap(err, "next jobs for node %d", nodeID)
}

// ClaimJob makes a queued job running on node nodeID (0: the server). One
// conditional UPDATE does it, so of concurrent claimers exactly one wins;
// the others get ErrConflict. It applies no limits: the caller decided.
func (c *Catalog) ClaimJob(ctx context.Context, id, nodeID int64) (Job, error) {
	var j Job
	err := c.tx(ctx, func(tx *Tx) error {
		var err error
		j, err = c.claim(ctx, tx, id, nodeID, false)
		return err
	})
	return j, err
}

// claim runs the conditional UPDATE; with check, the job must still be
// eligible for the node (its VM may have moved since it was listed).
func (c *Catalog) claim(ctx context.Context, tx *Tx, id, nodeID int64, check bool) (Job, error) {
	now := c.now().UnixNano()
	q := `UPDATE jobs AS j SET state = 'running', node_id = ?, started_at = ?, updated_at = ?, attempts = attempts + 1
		WHERE j.id = ? AND j.state = 'queued'`
	args := []any{ni(nodeID), now, now, id}
	if check {
		q += ` AND ` + eligible
		args = append(args, eligibleArgs(now, nodeID)...)
	}
	j, err := scanJob(tx.QueryRow(ctx, q+` RETURNING `+jobCols, args...))
	if errors.Is(err, sql.ErrNoRows) {
		return j, fmt.Errorf("catalog: claim job %d: %w: no longer queued", id, ErrConflict)
	}
	return j, wrap(err, "claim job %d", id)
}

// Limits caps how many jobs run at once when claiming with ClaimNext;
// zero means no limit.
type Limits struct {
	// PerVolume: backups running at once on one shared volume.
	PerVolume int
	// PerNode: backups running at once on one node.
	PerNode int
	// PerKind: jobs of a kind running at once anywhere ("recovery": 8).
	PerKind map[string]int
}

// ClaimNext claims the oldest queued job node nodeID (0: the server) may
// run within the limits, or returns ErrNotFound when there is none. Limits
// hold under concurrency on both databases: a claim that is subject to one
// first updates a claim_locks row (the node's, the kind's, then the
// volume's, always in that order), which serializes the claims sharing it
// until commit, and only then counts the running jobs.
func (c *Catalog) ClaimNext(ctx context.Context, nodeID int64, lim Limits) (Job, error) {
	const page = 32
	full := map[string]bool{} // limits found reached during this call
	var after int64
	for {
		cands, err := c.nextJobs(ctx, nodeID, after, page)
		if err != nil {
			return Job{}, err
		}
		j, err := c.claimFirst(ctx, nodeID, lim, cands, full)
		if err == nil || !errors.Is(err, ErrNotFound) || len(cands) < page {
			return j, err
		}
		after = cands[len(cands)-1].ID
	}
}

// claimFirst claims the first candidate within the limits.
func (c *Catalog) claimFirst(ctx context.Context, nodeID int64, lim Limits, cands []Job, full map[string]bool) (Job, error) {
next:
	for _, cand := range cands {
		checks := limitChecks(cand, nodeID, lim)
		for _, ch := range checks {
			if full[ch.lock] {
				continue next
			}
		}
		var j Job
		var reached string
		err := c.tx(ctx, func(tx *Tx) error {
			var err error
			reached = ""
			for _, ch := range checks {
				if _, err := tx.Exec(ctx, `INSERT INTO claim_locks (name, n) VALUES (?, 1)
					ON CONFLICT (name) DO UPDATE SET n = claim_locks.n + 1`, ch.lock); err != nil {
					return err
				}
				var n int
				if err := tx.QueryRow(ctx, ch.count, ch.arg).Scan(&n); err != nil {
					return err
				}
				if n >= ch.max {
					reached = ch.lock
					return nil
				}
			}
			j, err = c.claim(ctx, tx, cand.ID, nodeID, true)
			return err
		})
		switch {
		case err == nil && reached != "":
			full[reached] = true
		case err == nil:
			return j, nil
		case errors.Is(err, ErrConflict):
		default:
			return Job{}, wrap(err, "claim next job for node %d", nodeID)
		}
	}
	return Job{}, fmt.Errorf("catalog: claim next job for node %d: %w", nodeID, ErrNotFound)
}

type limitCheck struct {
	lock  string
	max   int
	count string
	arg   any
}

// limitChecks lists the limits a claim of j by nodeID is subject to, in
// lock order.
func limitChecks(j Job, nodeID int64, lim Limits) []limitCheck {
	var checks []limitCheck
	if j.Kind == KindBackup && lim.PerNode > 0 {
		checks = append(checks, limitCheck{"node:" + strconv.FormatInt(nodeID, 10), lim.PerNode,
			`SELECT COUNT(*) FROM jobs WHERE state = 'running' AND kind = 'backup' AND node_id = ?`, nodeID})
	}
	if n := lim.PerKind[j.Kind]; n > 0 {
		checks = append(checks, limitCheck{"kind:" + j.Kind, n,
			`SELECT COUNT(*) FROM jobs WHERE state = 'running' AND kind = ?`, j.Kind})
	}
	if j.Kind == KindBackup && lim.PerVolume > 0 && j.VolumeID != "" {
		checks = append(checks, limitCheck{"volume:" + j.VolumeID, lim.PerVolume,
			`SELECT COUNT(*) FROM jobs WHERE state = 'running' AND kind = 'backup' AND volume_id = ?`, j.VolumeID})
	}
	return checks
}

// Running counts running jobs, for the scheduler and metrics.
type Running struct {
	// ByVolume and ByNode count running backups.
	ByVolume map[string]int `json:"by_volume"`
	ByNode   map[int64]int  `json:"by_node"`
	ByKind   map[string]int `json:"by_kind"`
}

// RunningCounts counts running jobs by volume, node and kind.
func (c *Catalog) RunningCounts(ctx context.Context) (Running, error) {
	r := Running{ByVolume: map[string]int{}, ByNode: map[int64]int{}, ByKind: map[string]int{}}
	rows, err := c.query(ctx, `SELECT kind, volume_id, node_id, COUNT(*) FROM jobs WHERE state = 'running'
		GROUP BY kind, volume_id, node_id`)
	if err != nil {
		return r, wrap(err, "count running jobs")
	}
	defer rows.Close()
	for rows.Next() {
		var kind, vol string
		var node sql.NullInt64
		var n int
		if err := rows.Scan(&kind, &vol, &node, &n); err != nil {
			return r, wrap(err, "count running jobs")
		}
		r.ByKind[kind] += n
		if kind == KindBackup {
			if vol != "" {
				r.ByVolume[vol] += n
			}
			r.ByNode[node.Int64] += n
		}
	}
	return r, wrap(rows.Err(), "count running jobs")
}

// RunningOnVolume lists the running jobs on a shared volume.
func (c *Catalog) RunningOnVolume(ctx context.Context, volumeID string) ([]Job, error) {
	rows, err := c.query(ctx, `SELECT `+jobCols+` FROM jobs j WHERE j.state = 'running' AND j.volume_id = ? ORDER BY j.id`, volumeID)
	if err != nil {
		return nil, wrap(err, "running jobs on volume %s", volumeID)
	}
	js, err := scanJobs(rows)
	return js, wrap(err, "running jobs on volume %s", volumeID)
}

// SetJobProgress records a running job's progress (clamped to 0..1) and
// bytes. It returns whether a cancel was requested, so the agent stops.
// A job not running is ErrConflict.
func (c *Catalog) SetJobProgress(ctx context.Context, id int64, progress float64, bytes int64) (cancel bool, err error) {
	progress = min(max(progress, 0), 1)
	var flag int
	err = c.retry(ctx, func() error {
		return c.w.QueryRowContext(ctx, c.rebind(`UPDATE jobs SET progress = ?, bytes = ?, updated_at = ?
			WHERE id = ? AND state = 'running' RETURNING cancel_requested`),
			progress, bytes, c.now().UnixNano(), id).Scan(&flag)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return false, c.notRunning(ctx, "set progress of", id)
	}
	return flag != 0, wrap(err, "set progress of job %d", id)
}

func (c *Catalog) notRunning(ctx context.Context, what string, id int64) error {
	j, err := c.GetJob(ctx, id)
	if err != nil {
		return err
	}
	return fmt.Errorf("catalog: %s job %d: %w: job is %s", what, id, ErrConflict, j.State)
}

// FinishJob ends a running job as succeeded, failed or canceled, with its
// result (JSON) and error text. A job already finished is ErrConflict.
func (c *Catalog) FinishJob(ctx context.Context, id int64, state string, result json.RawMessage, errText string) error {
	if state != JobSucceeded && state != JobFailed && state != JobCanceled {
		return fmt.Errorf("catalog: finish job %d: %w: state %q", id, ErrInvalid, state)
	}
	res, err := jsonText(result)
	if err != nil {
		return fmt.Errorf("catalog: finish job %d: result: %w", id, err)
	}
	now := c.now().UnixNano()
	r, err := c.exec(ctx, `UPDATE jobs SET state = ?, result = ?, error = ?, finished_at = ?, updated_at = ?,
		progress = CASE WHEN ? = 'succeeded' THEN 1 ELSE progress END
		WHERE id = ? AND state = 'running'`, state, res, errText, now, now, state, id)
	if err != nil {
		return wrap(err, "finish job %d", id)
	}
	if affected(r) == 0 {
		return c.notRunning(ctx, "finish", id)
	}
	return nil
}

// CancelJob cancels a queued job at once, or asks a running one to stop
// (its agent sees that in SetJobProgress's answer and finishes it as
// canceled). It returns the job as it now is; a finished job is ErrConflict.
func (c *Catalog) CancelJob(ctx context.Context, id int64) (Job, error) {
	var j Job
	now := c.now().UnixNano()
	err := c.tx(ctx, func(tx *Tx) error {
		r, err := tx.Exec(ctx, `UPDATE jobs SET state = 'canceled', finished_at = ?, updated_at = ?
			WHERE id = ? AND state = 'queued'`, now, now, id)
		if err != nil {
			return err
		}
		if affected(r) == 0 {
			if r, err = tx.Exec(ctx, `UPDATE jobs SET cancel_requested = 1, updated_at = ?
				WHERE id = ? AND state = 'running'`, now, id); err != nil {
				return err
			}
			if affected(r) == 0 {
				return errNotRunning
			}
		}
		j, err = scanJob(tx.QueryRow(ctx, `SELECT `+jobCols+` FROM jobs WHERE id = ?`, id))
		return err
	})
	if errors.Is(err, errNotRunning) {
		return j, c.notRunning(ctx, "cancel", id)
	}
	return j, wrap(err, "cancel job %d", id)
}

// DeferJob puts a running job back in the queue until until, with the
// reason in its log: a VM caught mid-migration is retried, not failed. The
// job's claim is cleared, so it goes to whichever node owns the VM then.
func (c *Catalog) DeferJob(ctx context.Context, id int64, until time.Time, reason string) error {
	now := c.now()
	err := c.tx(ctx, func(tx *Tx) error {
		r, err := tx.Exec(ctx, `UPDATE jobs SET state = 'queued', node_id = NULL, started_at = NULL, progress = 0, bytes = 0,
			not_before = ?, updated_at = ? WHERE id = ? AND state = 'running'`, unixOr0(until), now.UnixNano(), id)
		if err != nil {
			return err
		}
		if affected(r) == 0 {
			return errNotRunning
		}
		_, err = tx.Exec(ctx, `INSERT INTO job_logs (job_id, logged_at, level, message) VALUES (?, ?, 'info', ?)`,
			id, now.UnixNano(), "deferred until "+until.UTC().Format(time.RFC3339)+": "+reason)
		return err
	})
	if errors.Is(err, errNotRunning) {
		return c.notRunning(ctx, "defer", id)
	}
	return wrap(err, "defer job %d", id)
}

var errNotRunning = errors.New("job not running")

// FailStaleJobs fails running jobs not updated since before: their agent
// died or lost the server. It returns how many it failed.
func (c *Catalog) FailStaleJobs(ctx context.Context, before time.Time, reason string) (int64, error) {
	now := c.now().UnixNano()
	r, err := c.exec(ctx, `UPDATE jobs SET state = 'failed', error = ?, finished_at = ?, updated_at = ?
		WHERE state = 'running' AND updated_at < ?`, reason, now, now, before.UnixNano())
	if err != nil {
		return 0, wrap(err, "fail stale jobs")
	}
	return affected(r), nil
}

// PurgeJobs deletes jobs (and their logs) finished before before.
func (c *Catalog) PurgeJobs(ctx context.Context, before time.Time) (int64, error) {
	r, err := c.exec(ctx, `DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?`, before.UnixNano())
	if err != nil {
		return 0, wrap(err, "purge jobs")
	}
	return affected(r), nil
}

// LogLine is one line of a job's log.
type LogLine struct {
	ID      int64     `json:"id"`
	JobID   int64     `json:"job_id"`
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Message string    `json:"message"`
}

// AddJobLog appends lines to a job's log (level "info" when empty).
func (c *Catalog) AddJobLog(ctx context.Context, jobID int64, level string, lines ...string) error {
	if level == "" {
		level = "info"
	}
	now := c.now().UnixNano()
	var err error
	if len(lines) == 1 {
		_, err = c.exec(ctx, `INSERT INTO job_logs (job_id, logged_at, level, message) VALUES (?, ?, ?, ?)`, jobID, now, level, lines[0])
	} else {
		err = c.tx(ctx, func(tx *Tx) error {
			for _, l := range lines {
				if _, err := tx.Exec(ctx, `INSERT INTO job_logs (job_id, logged_at, level, message) VALUES (?, ?, ?, ?)`, jobID, now, level, l); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return wrap(err, "add to log of job %d", jobID)
}

// JobLog reads a job's log lines after afterID (0: from the start), at most
// limit (default 1000).
func (c *Catalog) JobLog(ctx context.Context, jobID, afterID int64, limit int) ([]LogLine, error) {
	if limit <= 0 {
		limit = 1000
	}
	rows, err := c.query(ctx, `SELECT id, job_id, logged_at, level, message FROM job_logs
		WHERE job_id = ? AND id > ? ORDER BY id LIMIT `+strconv.Itoa(limit), jobID, afterID)
	if err != nil {
		return nil, wrap(err, "read log of job %d", jobID)
	}
	defer rows.Close()
	var out []LogLine
	for rows.Next() {
		var l LogLine
		var t sql.NullInt64
		if err := rows.Scan(&l.ID, &l.JobID, &t, &l.Level, &l.Message); err != nil {
			return nil, wrap(err, "read log of job %d", jobID)
		}
		l.Time = nt(t)
		out = append(out, l)
	}
	return out, wrap(rows.Err(), "read log of job %d", jobID)
}
