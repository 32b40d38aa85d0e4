package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"lifeboat/api"
	"lifeboat/backup"
	"lifeboat/catalog"
	"lifeboat/disk"
	"lifeboat/repo"
	"lifeboat/repo/storage/remote"
	"lifeboat/restore"
)

// jobLoop long-polls for jobs and runs them one at a time.
func (a *Agent) jobLoop(ctx context.Context, stop context.CancelCauseFunc) {
	backoff := time.Second
	for ctx.Err() == nil {
		pctx, cancel := context.WithTimeout(ctx, a.cfg.Wait+30*time.Second)
		var j catalog.Job
		noJob, err := a.client.Do(pctx, http.MethodGet, api.Prefix+"/agent/jobs/next?wait="+a.cfg.Wait.String(), nil, &j)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if err := refused(err); errors.Is(err, ErrRefused) {
				a.log.Error("the server refused this agent", "err", err)
				stop(err)
				return
			}
			a.log.Warn("poll for jobs", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 30*time.Second)
			continue
		}
		backoff = time.Second
		if noJob {
			continue
		}
		a.runJob(ctx, j)
	}
}

// jobRun reports one job's progress and log.
type jobRun struct {
	a      *Agent
	job    catalog.Job
	cancel context.CancelFunc

	mu          sync.Mutex
	last        time.Time
	done, total int64
	canceled    bool
}

func (r *jobRun) path(what string) string {
	return api.Prefix + "/agent/jobs/" + strconv.FormatInt(r.job.ID, 10) + "/" + what
}

func (r *jobRun) logf(level, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.a.log.Info("job log", "job", r.job.ID, "level", level, "msg", msg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := r.a.client.Do(ctx, http.MethodPost, r.path("log"), api.LogLines{Level: level, Lines: []string{msg}}, nil); err != nil {
		r.a.log.Warn("send job log", "job", r.job.ID, "err", err)
	}
}

// progress sends at most one update a second; the answer may ask the
// job to stop.
func (r *jobRun) progress(done, total int64) {
	r.mu.Lock()
	r.a.metrics.progressed(r.job.Kind, done-r.done)
	r.done, r.total = done, total
	if time.Since(r.last) < time.Second && done < total {
		r.mu.Unlock()
		return
	}
	r.last = time.Now()
	r.mu.Unlock()
	r.send(done, total)
}

func (r *jobRun) send(done, total int64) {
	frac := 0.0
	if total > 0 {
		frac = min(float64(done)/float64(total), 1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var resp api.ProgressResponse
	if _, err := r.a.client.Do(ctx, http.MethodPost, r.path("progress"), api.Progress{Progress: frac, Bytes: done}, &resp); err != nil {
		r.a.log.Warn("send progress", "job", r.job.ID, "err", err)
		return
	}
	if resp.Cancel {
		r.mu.Lock()
		r.canceled = true
		r.mu.Unlock()
		r.cancel()
	}
}

func (r *jobRun) finish(state string, result any, errText string) {
	var raw json.RawMessage
	if result != nil {
		raw, _ = json.Marshal(result)
	}
	for attempt := 0; attempt < 5; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := r.a.client.Do(ctx, http.MethodPost, r.path("finish"), api.Finish{State: state, Result: raw, Error: errText}, nil)
		cancel()
		if err == nil || api.StatusOf(err) >= 400 && api.StatusOf(err) < 500 {
			if err != nil {
				r.a.log.Error("finish job", "job", r.job.ID, "err", err)
			}
			return
		}
		r.a.log.Warn("finish job, retrying", "job", r.job.ID, "err", err)
		time.Sleep(time.Duration(attempt+1) * time.Second)
	}
}

func (r *jobRun) deferJob(reason string, seconds int) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := r.a.client.Do(ctx, http.MethodPost, r.path("defer"), api.Defer{Reason: reason, Seconds: seconds}, nil); err != nil {
		r.a.log.Error("defer job", "job", r.job.ID, "err", err)
	}
}

// heartbeat keeps a running job fresh on the server even when progress
// does not move (a long hash of a sparse region, a slow restore).
func (r *jobRun) heartbeat(ctx context.Context) {
	t := time.NewTicker(20 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.mu.Lock()
			stale := time.Since(r.last) > 15*time.Second
			done, total := r.done, r.total
			r.mu.Unlock()
			if stale {
				r.send(done, total)
			}
		}
	}
}

func (a *Agent) runJob(ctx context.Context, j catalog.Job) {
	jctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &jobRun{a: a, job: j, cancel: cancel}
	start, outcome := time.Now(), "deferred"
	a.metrics.jobStarted(j.Kind)
	defer func() { a.metrics.jobFinished(j.Kind, outcome, time.Since(start)) }()
	a.log.Info("job started", "job", j.ID, "kind", j.Kind, "vm", j.VMName)
	go r.heartbeat(jctx)
	var result any
	var err error
	switch j.Kind {
	case catalog.KindBackup:
		result, err = a.backup(jctx, r)
	case catalog.KindRecovery:
		if rp, ok := recoveryParams(j.Params); ok {
			result, err = a.recover(jctx, r, rp)
		} else {
			result, err = a.restore(jctx, r)
		}
	case catalog.KindVerifyBoot:
		result, err = a.verifyBoot(jctx, r)
	default:
		err = fmt.Errorf("this agent does not run %s jobs", j.Kind)
	}
	var d *deferral
	switch {
	case errors.As(err, &d):
		r.logf("info", "%s", d.reason)
		r.deferJob(d.reason, d.seconds)
		a.log.Info("job deferred", "job", j.ID, "reason", d.reason)
	case err != nil && (r.canceled || ctx.Err() != nil):
		outcome = catalog.JobCanceled
		r.finish(catalog.JobCanceled, nil, "canceled: "+err.Error())
		a.log.Info("job canceled", "job", j.ID)
	case err != nil:
		r.logf("error", "%v", err)
		outcome = catalog.JobFailed
		r.finish(catalog.JobFailed, nil, err.Error())
		a.log.Error("job failed", "job", j.ID, "err", err)
	default:
		outcome = catalog.JobSucceeded
		r.finish(catalog.JobSucceeded, result, "")
		a.log.Info("job succeeded", "job", j.ID, "kind", j.Kind, "vm", j.VMName)
	}
}

// deferral sends a job back to the queue.
type deferral struct {
	reason  string
	seconds int
}

func (d *deferral) Error() string { return d.reason }

// openRepo opens the server's repository through the remote backend.
func (a *Agent) openRepo(ctx context.Context) (*repo.Repository, *remote.Backend, error) {
	b := remote.New(remote.Options{Base: a.base + api.Prefix + "/agent/repo", HTTP: a.client.HTTP})
	r, err := repo.Open(ctx, b, a.cfg.Password)
	if err != nil {
		return nil, nil, err
	}
	return r, b, nil
}

func (a *Agent) backup(ctx context.Context, run *jobRun) (any, error) {
	j := run.job
	var p api.BackupParams
	if len(j.Params) > 0 {
		if err := json.Unmarshal(j.Params, &p); err != nil {
			return nil, fmt.Errorf("job params: %w", err)
		}
	}
	vms, err := a.cfg.Driver.Inventory(ctx)
	if err != nil {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	var vm *VM
	for i := range vms {
		if vms[i].Name == j.VMName {
			vm = &vms[i]
		}
	}
	if vm == nil {
		return nil, &deferral{fmt.Sprintf("VM %s is not on node %s (moved?): the job waits for its new owner", j.VMName, a.cfg.Name), 15}
	}
	prep, err := a.cfg.Driver.Prepare(ctx, *vm, PrepareOptions{FullRead: p.FullRead, OfflineFallback: !p.NoOfflineFallback})
	if d := a.elsewhere(j.VMName, err); d != nil {
		return nil, d
	}
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if prep.Release != nil {
			prep.Release(context.WithoutCancel(ctx), ok)
		}
	}()
	r, rb, err := a.openRepo(ctx)
	if err != nil {
		return nil, err
	}
	defer a.metrics.sending(rb)()
	start := time.Now()
	opts := backup.Options{Name: j.VMName, Host: a.cfg.Name, FullRead: p.FullRead, Progress: run.progress}
	var pt *repo.Point
	if prep.Run != nil {
		run.logf("info", "backing up %s through %s on %s", j.VMName, a.cfg.Driver.Name(), a.cfg.Name)
		pt, err = prep.Run(ctx, r, opts)
		if d := a.elsewhere(j.VMName, err); d != nil {
			return nil, d
		}
	} else {
		run.logf("info", "backing up %s (%d files, %s) on %s", j.VMName, len(prep.Source.Files), prep.Consistency, a.cfg.Name)
		opts.Consistency, opts.Changed, opts.Notes = prep.Consistency, prep.Changed, prep.Notes
		pt, err = backup.Run(ctx, r, prep.Source, opts)
	}
	if err != nil {
		return nil, err
	}
	ok = true
	var st repo.Stats
	for _, f := range pt.Files {
		st.Add(f.Stats)
	}
	a.metrics.pointStats(st)
	calls, queries, objs, sent := rb.Counters()
	run.logf("info", "point %s (%s): read %d bytes, reused %d, %d of %d chunks new (%d bytes); %d chunk look-ups in %d queries, %d objects (%d bytes) sent in batches",
		pt.ID, pt.Consistency, st.BytesRead, st.BytesReused, st.NewChunks, st.Chunks, st.NewBytes, calls, queries, objs, sent)
	for _, n := range pt.Notes {
		run.logf("info", "point %s: %s", pt.ID, n)
	}
	return api.BackupResult{Point: pt.ID, Stats: st, Seconds: time.Since(start).Seconds()}, nil
}

// elsewhere turns a driver's ErrNotHere or ErrMigrating into a deferral:
// the job goes back to the queue and follows the VM.
func (a *Agent) elsewhere(vm string, err error) *deferral {
	switch {
	case errors.Is(err, ErrNotHere):
		return &deferral{fmt.Sprintf("VM %s left node %s: the job follows it (%v)", vm, a.cfg.Name, err), 15}
	case errors.Is(err, ErrMigrating):
		// Live migrations take seconds: retry soon, on whichever node
		// owns the VM then.
		return &deferral{fmt.Sprintf("VM %s is migrating: retrying after the move (%v)", vm, err), 5}
	}
	return nil
}

func (a *Agent) restore(ctx context.Context, run *jobRun) (any, error) {
	var p api.RestoreParams
	if err := json.Unmarshal(run.job.Params, &p); err != nil {
		return nil, fmt.Errorf("job params: %w", err)
	}
	if err := api.CheckAbsPath("target", p.Target); err != nil {
		return nil, err
	}
	if root := a.cfg.RestoreRoot; root != "" {
		root = filepath.Clean(root)
		if p.Target != root && !strings.HasPrefix(p.Target, root+"/") {
			return nil, fmt.Errorf("target %s is outside this agent's restore root %s", p.Target, root)
		}
	}
	opts := restore.Options{MergeChain: p.Merge, Overwrite: p.Overwrite, Progress: run.progress}
	if p.Format != "" {
		f, err := disk.ParseFormat(p.Format)
		if err != nil {
			return nil, err
		}
		opts.Format = f
	}
	r, _, err := a.openRepo(ctx)
	if err != nil {
		return nil, err
	}
	pt, err := r.LoadPoint(ctx, p.Point)
	if err != nil {
		return nil, err
	}
	run.logf("info", "restoring point %s of %s into %s on %s", pt.ID, pt.Name, p.Target, a.cfg.Name)
	start := time.Now()
	res, err := restore.Run(ctx, r, pt, p.Target, opts)
	if err != nil {
		return nil, err
	}
	return api.RestoreResult{Files: res.Files, Bytes: res.Bytes, Seconds: time.Since(start).Seconds()}, nil
}
