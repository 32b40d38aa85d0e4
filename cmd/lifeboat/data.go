package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"lifeboat/backup"
	"lifeboat/disk"
	"lifeboat/hypervisor/libvirt"
	"lifeboat/repo"
	"lifeboat/restore"
)

func cmdBackup(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	var rf repoFlags
	rf.register(fs, true)
	name := fs.String("name", "", "name of what is protected (VM or image name)")
	changed := fs.String("changed", "", "JSON change map since the previous point: [[offset,length],…] for an image, or {\"path\": [[offset,length],…]} per file")
	fullRead := fs.Bool("full-read", false, "read every file even if the previous point holds it unchanged")
	uri := fs.String("libvirt", "", "back up a VM where it runs: the libvirt URI of its host (qemu:///system, qemu:///session?socket=…)")
	vm := fs.String("vm", "", "with --libvirt: the VM to back up (online when it runs, through a checkpoint and NBD)")
	offline := fs.Bool("offline", false, "with --vm: save the VM's state and back it up stopped; it resumes afterwards")
	host := fs.Bool("host", false, "bare-metal backup of this host: --disk for each system disk, --config for configuration (default: libvirt, corosync, pacemaker, identity)")
	var disks, configs listFlag
	fs.Var(&disks, "disk", "with --host: a system disk (block device or image file); repeatable")
	fs.Var(&configs, "config", "with --host: a configuration file or folder; repeatable")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *host {
		if len(pos) != 0 || len(disks) == 0 {
			return usagef("usage: lifeboat backup --repo DIR --host --disk DEV|IMAGE [--disk …] [--config PATH …] [--name NAME]")
		}
		if *name == "" {
			*name, _ = os.Hostname()
		}
		if len(configs) == 0 {
			configs = backup.DefaultHostConfig()
		}
		src, err := backup.ScanHost(ctx, backup.HostOptions{Disks: disks, Config: configs})
		if err != nil {
			return err
		}
		r, err := rf.open(ctx, e)
		if err != nil {
			return err
		}
		bar := newProgress(e, "backup host "+*name)
		start := time.Now()
		pt, err := backup.Run(ctx, r, src, backup.Options{Name: *name, FullRead: *fullRead, Progress: bar.update})
		bar.done()
		if err != nil {
			return err
		}
		return reportPoint(e, rf.json, pt, start)
	}
	if *vm != "" {
		if len(pos) != 0 || *uri == "" {
			return usagef("usage: lifeboat backup --repo DIR --libvirt URI --vm NAME [--offline] [--name NAME]")
		}
		return backupVM(ctx, e, &rf, *uri, *vm, backup.VMOptions{Options: backup.Options{Name: *name, FullRead: *fullRead}, Offline: *offline})
	}
	if len(pos) != 1 {
		return usagef("usage: lifeboat backup --repo DIR --name NAME SOURCE")
	}
	if *name == "" {
		return usagef("--name is required")
	}
	r, err := rf.open(ctx, e)
	if err != nil {
		return err
	}
	src, err := backup.Scan(ctx, pos[0])
	if err != nil {
		return err
	}
	opts := backup.Options{Name: *name, FullRead: *fullRead}
	if *changed != "" {
		if opts.Changed, err = readChangeMap(*changed, src); err != nil {
			return err
		}
	}
	bar := newProgress(e, "backup "+*name)
	opts.Progress = bar.update
	start := time.Now()
	pt, err := backup.Run(ctx, r, src, opts)
	bar.done()
	if err != nil {
		return err
	}
	return reportPoint(e, rf.json, pt, start)
}

func reportPoint(e *env, asJSON bool, pt *repo.Point, start time.Time) error {
	var st repo.Stats
	for _, f := range pt.Files {
		st.Add(f.Stats)
	}
	if asJSON {
		return json.NewEncoder(e.stdout).Encode(map[string]any{"point": pt.ID, "consistency": pt.Consistency, "notes": pt.Notes, "stats": st, "seconds": time.Since(start).Seconds()})
	}
	fmt.Fprintf(e.stdout, "point %s (%s): %d files, read %s, reused %s, %d new chunks (%s stored) in %.1fs\n",
		pt.ID, pt.Consistency, len(pt.Files), human(st.BytesRead), human(st.BytesReused), st.NewChunks, human(st.NewBytes), time.Since(start).Seconds())
	for _, n := range pt.Notes {
		fmt.Fprintf(e.stdout, "  note: %s\n", n)
	}
	return nil
}

func backupVM(ctx context.Context, e *env, rf *repoFlags, uri, vm string, opts backup.VMOptions) error {
	r, err := rf.open(ctx, e)
	if err != nil {
		return err
	}
	drv, err := libvirt.Open(ctx, libvirt.Options{URI: uri, ThawGuard: newThawGuard()})
	if err != nil {
		return err
	}
	defer drv.Close()
	bar := newProgress(e, "backup "+vm)
	opts.Progress = bar.update
	start := time.Now()
	pt, err := backup.RunVM(ctx, r, drv, vm, opts)
	bar.done()
	if err != nil {
		return err
	}
	return reportPoint(e, rf.json, pt, start)
}

// readChangeMap accepts a bare list for a single-file source.
// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func readChangeMap(path string, src *backup.Source) (map[string][]disk.Extent, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read change map: %w", err)
	}
	toExt := func(pairs [][2]int64) ([]disk.Extent, error) {
		out := make([]disk.Extent, 0, len(pairs))
		for i, p := range pairs {
			if p[0] < 0 || p[1] <= 0 {
				return nil, fmt.Errorf("change map %s: entry %d [%d,%d] is not an offset and a positive length", path, i, p[0], p[1])
			}
			out = append(out, disk.Extent{Offset: p[0], Length: p[1], Kind: disk.Data})
		}
		return out, nil
	}
	var list [][2]int64
	if err := json.Unmarshal(data, &list); err == nil {
		if len(src.Files) == 0 {
			return nil, fmt.Errorf("change map %s: source has no files", path)
		}
		ext, err := toExt(list)
		if err != nil {
			return nil, err
		}
		return map[string][]disk.Extent{src.Files[0].Path: ext}, nil
	}
	var byPath map[string][][2]int64
	if err := json.Unmarshal(data, &byPath); err != nil {
		return nil, fmt.Errorf("change map %s: want [[offset,length],…] or {\"path\": [[offset,length],…]}: %w", path, err)
	}
	out := map[string][]disk.Extent{}
	for p, pairs := range byPath {
		ext, err := toExt(pairs)
		if err != nil {
			return nil, err
		}
		out[p] = ext
	}
	return out, nil
}

type pointJSON struct {
	ID          string          `json:"id"`
	Name        string          `json:"name"`
	Kind        string          `json:"kind"`
	Time        time.Time       `json:"time"`
	Host        string          `json:"host"`
	Consistency string          `json:"consistency"`
	Files       []fileJSON      `json:"files"`
	Config      json.RawMessage `json:"config,omitempty"`
	Notes       []string        `json:"notes,omitempty"`
}

type fileJSON struct {
	Path   string      `json:"path"`
	Role   string      `json:"role"`
	Format disk.Format `json:"format,omitempty"`
	Size   int64       `json:"size"`
	Parent string      `json:"parent,omitempty"`
}

func cmdPoints(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("points", flag.ContinueOnError)
	var rf repoFlags
	rf.register(fs, true)
	name := fs.String("name", "", "only points of this name")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	r, err := rf.open(ctx, e)
	if err != nil {
		return err
	}
	pts, errs, err := r.Points(ctx)
	if err != nil {
		return err
	}
	for id, err := range errs {
		e.log.Warn("point does not load", "point", id, "err", err)
	}
	out := []pointJSON{}
	for _, p := range pts {
		if *name != "" && p.Name != *name {
			continue
		}
		pj := pointJSON{ID: p.ID, Name: p.Name, Kind: p.Kind, Time: p.Time, Host: p.Host, Consistency: p.Consistency, Files: []fileJSON{}, Config: p.Config, Notes: p.Notes}
		for _, f := range p.Files {
			pj.Files = append(pj.Files, fileJSON{Path: f.Path, Role: f.Role, Format: f.Format(), Size: f.Size, Parent: f.Parent})
		}
		out = append(out, pj)
	}
	if rf.json {
		return json.NewEncoder(e.stdout).Encode(out)
	}
	tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tTIME\tHOST\tCONSISTENCY\tFILES")
	for _, p := range out {
		var names []string
		for _, f := range p.Files {
			names = append(names, f.Path)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.Name, p.Time.Local().Format("2006-01-02 15:04:05"), p.Host, p.Consistency, strings.Join(names, ", "))
	}
	return tw.Flush()
}

func cmdRestore(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	var rf repoFlags
	rf.register(fs, true)
	point := fs.String("point", "", "point ID")
	to := fs.String("to", "", "target folder")
	format := fs.String("format", "", "convert disks to raw, qcow2, vhd or vhdx")
	merge := fs.Bool("merge-chain", false, "flatten differencing chains into one disk each")
	overwrite := fs.Bool("overwrite", false, "replace files that exist in the target folder")
	file := fs.String("file", "", "with --to-device: the point's disk to write (e.g. disks/sda)")
	device := fs.String("to-device", "", "write one disk onto a block device or into an image file (host bare-metal restore)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *device != "" {
		if *point == "" || *file == "" {
			return usagef("usage: lifeboat restore --repo DIR --point ID --file DISK --to-device DEV|IMAGE")
		}
		r, err := rf.open(ctx, e)
		if err != nil {
			return err
		}
		p, err := r.LoadPoint(ctx, *point)
		if err != nil {
			return err
		}
		bar := newProgress(e, "restore "+*file)
		start := time.Now()
		n, err := restore.ToDevice(ctx, r, p, *file, *device, bar.update)
		bar.done()
		if err != nil {
			return err
		}
		if rf.json {
			return json.NewEncoder(e.stdout).Encode(map[string]any{"file": *file, "target": *device, "bytes": n})
		}
		fmt.Fprintf(e.stdout, "restored %s onto %s (%s) in %.1fs\n", *file, *device, human(n), time.Since(start).Seconds())
		return nil
	}
	if *point == "" || *to == "" {
		return usagef("usage: lifeboat restore --repo DIR --point ID --to DIR [--format raw|qcow2|vhd|vhdx] [--merge-chain]")
	}
	opts := restore.Options{MergeChain: *merge, Overwrite: *overwrite}
	if *format != "" {
		f, err := disk.ParseFormat(*format)
		if err != nil {
			return usageError{err}
		}
		opts.Format = f
	}
	r, err := rf.open(ctx, e)
	if err != nil {
		return err
	}
	p, err := r.LoadPoint(ctx, *point)
	if err != nil {
		return err
	}
	bar := newProgress(e, "restore "+p.Name)
	opts.Progress = bar.update
	start := time.Now()
	res, err := restore.Run(ctx, r, p, *to, opts)
	bar.done()
	if err != nil {
		return err
	}
	if rf.json {
		return json.NewEncoder(e.stdout).Encode(res)
	}
	var keys []string
	for k := range res.Files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(e.stdout, "%s -> %s\n", k, res.Files[k])
	}
	fmt.Fprintf(e.stdout, "restored %d files (%s) in %.1fs\n", len(res.Files), human(res.Bytes), time.Since(start).Seconds())
	return nil
}

func cmdVerify(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	var rf repoFlags
	rf.register(fs, true)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	r, err := rf.open(ctx, e)
	if err != nil {
		return err
	}
	bar := newProgress(e, "verify")
	rep, err := r.Verify(ctx, func(done, total int) { bar.update(int64(done), int64(total)) })
	bar.done()
	if err != nil {
		return err
	}
	if rf.json {
		if err := json.NewEncoder(e.stdout).Encode(rep); err != nil {
			return err
		}
	} else {
		for _, p := range rep.Problems {
			fmt.Fprintf(e.stdout, "BAD %s: %s\n    affects points: %s\n", p.Object, p.Error, strings.Join(p.Points, ", "))
		}
		fmt.Fprintln(e.stdout, rep.Summary())
	}
	if !rep.OK {
		return fmt.Errorf("%w: %d bad objects affect %d points", repo.ErrVerify, len(rep.Problems), len(rep.Affected))
	}
	return nil
}

func cmdPrune(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("prune", flag.ContinueOnError)
	var rf repoFlags
	rf.register(fs, true)
	var p repo.Policy
	fs.IntVar(&p.Last, "keep-last", 0, "keep the N newest points of each name")
	fs.IntVar(&p.Hourly, "keep-hourly", 0, "keep the newest point of each of the last N hours")
	fs.IntVar(&p.Daily, "keep-daily", 0, "… days")
	fs.IntVar(&p.Weekly, "keep-weekly", 0, "… weeks")
	fs.IntVar(&p.Monthly, "keep-monthly", 0, "… months")
	fs.IntVar(&p.Yearly, "keep-yearly", 0, "… years")
	dry := fs.Bool("dry-run", false, "only say what would be removed")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if p.Empty() {
		return usagef("give at least one --keep-* rule")
	}
	r, err := rf.open(ctx, e)
	if err != nil {
		return err
	}
	res, err := r.Prune(ctx, p, *dry)
	if err != nil {
		return err
	}
	if rf.json {
		return json.NewEncoder(e.stdout).Encode(res)
	}
	verb := "removed"
	if *dry {
		verb = "would remove"
	}
	for _, id := range res.Remove {
		fmt.Fprintf(e.stdout, "%s %s\n", verb, id)
	}
	fmt.Fprintf(e.stdout, "kept %d points, %s %d (run gc to free their data)\n", len(res.Keep), verb, len(res.Remove))
	return nil
}

func cmdGC(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("gc", flag.ContinueOnError)
	var rf repoFlags
	rf.register(fs, true)
	grace := fs.Duration("grace", time.Hour, "keep unreferenced objects younger than this (protects backups in flight)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	r, err := rf.open(ctx, e)
	if err != nil {
		return err
	}
	res, err := r.GC(ctx, *grace)
	if err != nil {
		return err
	}
	if rf.json {
		return json.NewEncoder(e.stdout).Encode(res)
	}
	fmt.Fprintf(e.stdout, "deleted %d chunks and %d indexes (%s); %d live chunks; %d unreferenced kept inside the grace period\n",
		res.DeletedChunks, res.DeletedIndexes, human(res.DeletedBytes), res.LiveChunks, res.Young)
	return nil
}
