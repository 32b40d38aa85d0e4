package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
)

// cmdPointRecover is `lifeboat point recover`: a recovery method run by an
// agent through the server. The server asks the agent for the preflight
// first and stops at a refusal; --dry-run stops after it either way.
func cmdPointRecover(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("point recover", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	var req api.RecoveryRequest
	fs.StringVar(&req.Method, "method", "", "original (overwrite the VM in place), vm (as a VM on a host) or folder (copy to a folder)")
	fs.StringVar(&req.Node, "node", "", "the agent's node that runs it: the target host (vm, folder); for original, default: the VM's owner")
	fs.StringVar(&req.Dir, "to", "", "absolute target folder on that node (vm: the VM's final location)")
	fs.StringVar(&req.Name, "name", "", "vm: the recovered VM's name")
	fs.BoolVar(&req.NewIdentity, "new-identity", false, "vm: new UUID, new MACs and a name with a suffix")
	fs.BoolVar(&req.HA, "ha", false, "vm: register the VM with the cluster's HA manager")
	fs.StringVar(&req.HAResource, "ha-resource", "", "the VM's HA resource ID (default: its name)")
	fs.BoolVar(&req.DiscardSavedState, "discard-saved-state", false, "vm: boot cold even on the source host")
	keep := fs.Bool("keep-chain", false, "keep differencing chains as they are")
	merge := fs.Bool("merge-chain", false, "merge differencing chains")
	dry := fs.Bool("dry-run", false, "run the preflight only")
	wait := fs.Bool("wait", true, "wait for the job to finish")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || req.Method == "" {
		return usagef("usage: lifeboat point recover ID --method original|vm|folder [--node NODE] [--to DIR] [--ha] [--new-identity] [--dry-run]")
	}
	req.Point = pos[0]
	switch {
	case *keep && *merge:
		return usagef("--keep-chain and --merge-chain exclude each other")
	case *keep:
		req.Chain = "keep"
	case *merge:
		req.Chain = "merge"
	}
	var plan api.RecoveryPlan
	if err := cf.quiet(ctx, e, http.MethodPost, api.Prefix+"/recoveries/preflight", req, &plan); err != nil {
		return err
	}
	if !cf.json {
		printAPIPlan(e, plan)
	}
	if !plan.OK {
		if cf.json {
			writeJSONOut(e, map[string]any{"plan": plan})
		}
		return fmt.Errorf("%s: %s; %s", plan.Code, plan.Message, plan.Advice)
	}
	if *dry {
		if cf.json {
			return writeJSONOut(e, map[string]any{"plan": plan})
		}
		fmt.Fprintln(e.stdout, "preflight passed (dry run: nothing was changed)")
		return nil
	}
	var j catalog.Job
	if err := cf.quiet(ctx, e, http.MethodPost, api.Prefix+"/recoveries", req, &j); err != nil {
		return err
	}
	if !*wait {
		if cf.json {
			return writeJSONOut(e, map[string]any{"plan": plan, "job": j})
		}
		fmt.Fprintf(e.stdout, "queued recovery job %d on %s\n", j.ID, plan.Node)
		return nil
	}
	d, err := waitJobAPI(ctx, e, &cf, j.ID, "recover "+req.Point)
	if err != nil {
		return err
	}
	if cf.json {
		writeJSONOut(e, map[string]any{"plan": plan, "job": d})
	} else if d.State == catalog.JobSucceeded {
		fmt.Fprintf(e.stdout, "recovery job %d succeeded: %s\n", d.ID, d.Result)
	}
	if d.State != catalog.JobSucceeded {
		return fmt.Errorf("recovery job %d %s: %s", d.ID, d.State, d.Error)
	}
	return nil
}

func printAPIPlan(e *env, p api.RecoveryPlan) {
	fmt.Fprintf(e.stdout, "preflight of %s recovery of point %s (VM %s) on node %s:\n", p.Method, p.Point, p.VM, p.Node)
	for _, c := range p.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(e.stdout, "  %s %s: %s\n", mark, c.Name, c.Detail)
	}
	for _, d := range p.Disks {
		fmt.Fprintf(e.stdout, "  disk %s -> %s (%s, %s)\n", d.File, d.Path, d.Format, human(d.Bytes))
	}
	for _, n := range p.Notes {
		fmt.Fprintf(e.stdout, "  note: %s\n", n)
	}
	if !p.OK {
		fmt.Fprintf(e.stdout, "refused %s: %s\n  advice: %s\n", p.Code, p.Message, p.Advice)
	}
}

// cmdPointItems is `lifeboat point items ID [PATH]`: item-level browsing
// through the server (no repository access needed here).
func cmdPointItems(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("point items", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	diskName := fs.String("disk", "", "disk file of the point (default: its only disk)")
	volume := fs.Int("volume", -1, "volume index (default: the only one with a filesystem)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 || len(pos) > 2 {
		return usagef("usage: lifeboat point items ID [PATH] [--disk D] [--volume N]")
	}
	q := itemQuery(*diskName, *volume, pos[1:])
	var out api.ItemList
	if err := cf.quiet(ctx, e, http.MethodGet, api.Prefix+"/points/"+url.PathEscape(pos[0])+"/items?"+q.Encode(), nil, &out); err != nil {
		return err
	}
	if cf.json {
		return writeJSONOut(e, out)
	}
	var rows [][]string
	if out.Entries == nil {
		for _, v := range out.Volumes {
			rows = append(rows, []string{v.Disk, strconv.Itoa(v.Index), v.FS, v.Label, human(v.Size)})
		}
		return table(e, "DISK\tVOLUME\tFS\tLABEL\tSIZE", rows)
	}
	for _, en := range out.Entries {
		kind := "-"
		if en.IsDir {
			kind = "d"
		} else if en.Link != "" {
			kind = "l"
		}
		rows = append(rows, []string{kind, strconv.FormatInt(en.Size, 10), en.ModTime.Format("2006-01-02 15:04"), en.Name})
	}
	return table(e, "T\tSIZE\tMODIFIED\tNAME", rows)
}

func itemQuery(diskName string, volume int, path []string) url.Values {
	q := url.Values{}
	if diskName != "" {
		q.Set("disk", diskName)
	}
	if volume >= 0 {
		q.Set("volume", strconv.Itoa(volume))
	}
	if len(path) > 0 {
		q.Set("path", path[0])
	}
	return q
}

// cmdPointDownload is `lifeboat point download ID PATH --out FILE.tar`.
func cmdPointDownload(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("point download", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	diskName := fs.String("disk", "", "disk file of the point (default: its only disk)")
	volume := fs.Int("volume", -1, "volume index (default: the only one with a filesystem)")
	outPath := fs.String("out", "", "tar file to write")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 || *outPath == "" {
		return usagef("usage: lifeboat point download ID PATH --out FILE.tar [--disk D] [--volume N]")
	}
	c, err := cf.client(e)
	if err != nil {
		return err
	}
	q := itemQuery(*diskName, *volume, pos[1:])
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+api.Prefix+"/points/"+url.PathEscape(pos[0])+"/items/download?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var ae api.Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		if jsonErr := json.Unmarshal(b, &ae); jsonErr == nil && ae.Error != "" {
			return fmt.Errorf("download: %s (%d)", ae.Error, resp.StatusCode)
		}
		return fmt.Errorf("download: HTTP %d", resp.StatusCode)
	}
	dir := filepath.Dir(*outPath)
	f, err := os.CreateTemp(dir, ".lifeboat-download-*")
	if err != nil {
		return err
	}
	n, err := io.Copy(f, resp.Body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), *outPath)
	}
	if err != nil {
		os.Remove(f.Name())
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("download of %s broke off after %d bytes: nothing written", pos[1], n)
		}
		return fmt.Errorf("download: %w", err)
	}
	if cf.json {
		return writeJSONOut(e, map[string]any{"file": *outPath, "bytes": n})
	}
	fmt.Fprintf(e.stdout, "wrote %s (%s)\n", *outPath, human(n))
	return nil
}

// quiet runs one request without printing its answer (commands that make
// several calls print one JSON document at the end).
func (f *clientFlags) quiet(ctx context.Context, e *env, method, path string, in, out any) error {
	c, err := f.client(e)
	if err != nil {
		return err
	}
	_, err = c.Do(ctx, method, path, in, out)
	return err
}

func writeJSONOut(e *env, v any) error { return json.NewEncoder(e.stdout).Encode(v) }

// cmdPointTape is `lifeboat point tape ID --library DIR`: copy a point to
// tape through the server (recovery method 4), which records the
// cartridges in its tape catalog.
func cmdPointTape(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("point tape", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	var p api.TapeWriteParams
	fs.StringVar(&p.Library, "library", "", "the tape library's folder on the server (made by `lifeboat tape library-create`)")
	fs.BoolVar(&p.Overwrite, "overwrite", false, "reuse cartridges that hold data")
	fs.BoolVar(&p.Plaintext, "plaintext", false, "allow copying an encrypted repository's data to tape in plaintext")
	wait := fs.Bool("wait", true, "wait for the job to finish")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || p.Library == "" {
		return usagef("usage: lifeboat point tape ID --library DIR [--overwrite] [--plaintext]")
	}
	p.Point = pos[0]
	params, err := json.Marshal(p)
	if err != nil {
		return err
	}
	var j catalog.Job
	if err := cf.quiet(ctx, e, http.MethodPost, api.Prefix+"/jobs", api.JobRequest{Kind: catalog.KindTape, Params: params}, &j); err != nil {
		return err
	}
	if !*wait {
		if cf.json {
			return writeJSONOut(e, j)
		}
		fmt.Fprintf(e.stdout, "queued tape job %d\n", j.ID)
		return nil
	}
	d, err := waitJobAPI(ctx, e, &cf, j.ID, "tape write "+p.Point)
	if err != nil {
		return err
	}
	if cf.json {
		writeJSONOut(e, d)
	} else if d.State == catalog.JobSucceeded {
		fmt.Fprintf(e.stdout, "tape job %d wrote point %s to %s\n", d.ID, p.Point, p.Library)
	}
	if d.State != catalog.JobSucceeded {
		return fmt.Errorf("tape job %d %s: %s", d.ID, d.State, d.Error)
	}
	return nil
}

// waitJobAPI polls a job until it is done, with a progress bar.
func waitJobAPI(ctx context.Context, e *env, cf *clientFlags, id int64, label string) (api.JobDetail, error) {
	bar := newProgress(e, label)
	defer bar.done()
	var d api.JobDetail
	for {
		if err := cf.quiet(ctx, e, http.MethodGet, api.Prefix+"/jobs/"+strconv.FormatInt(id, 10), nil, &d); err != nil {
			return d, err
		}
		bar.update(int64(d.Progress*1000), 1000)
		if d.Done() {
			return d, nil
		}
		select {
		case <-ctx.Done():
			return d, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
